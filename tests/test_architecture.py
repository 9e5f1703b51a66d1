"""The import rules of docs/ARCHITECTURE.md, checked on the source.

Data flows one way: devices.yaml → adapters → ingest → database → analytics → ticketing / dunning → api.
Adapters know nothing of the database, analytics nothing of protocols, nothing imports api/,
simulators/ or heatdesk/, and there are no import cycles between modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["core", "adapters", "ingest", "analytics", "notify", "ticketing", "dunning", "api", "simulators",
            "heatdesk"]

ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "adapters": {"core"},
    "ingest": {"adapters", "core"},
    "analytics": {"core"},
    "notify": {"core"},
    "ticketing": {"analytics", "notify", "core"},
    "dunning": {"ticketing", "analytics", "notify", "core"},
    "api": {"ticketing", "dunning", "analytics", "notify", "ingest", "adapters", "core"},
    "simulators": {"adapters", "core"},
    "heatdesk": {"core", "adapters", "ingest", "analytics", "notify", "ticketing", "dunning"},
}
#: third-party libraries that only one package may import (each protocol library lives in one module)
PRIVATE_LIBS = {
    "paho": {"adapters/mqtt.py", "simulators", "heatdesk/bench", "tests"},
    "pymodbus": {"adapters/modbus.py", "simulators", "heatdesk/bench", "tests"},
    "asyncua": {"adapters/opcua.py", "simulators", "tests"},
    "psycopg": {"core", "ingest", "analytics", "notify", "ticketing", "dunning", "api", "heatdesk", "tests"},
}


def _modules() -> list[Path]:
    files = []
    for pkg in PACKAGES:
        files += [p for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts]
    return files


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _owner(path: Path) -> str:
    return path.relative_to(ROOT).parts[0]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_data_flow(path: Path):
    owner = _owner(path)
    bad = sorted({name for name in _imports(path)
                  if name.split(".")[0] in PACKAGES and name.split(".")[0] != owner
                  and name.split(".")[0] not in ALLOWED[owner]})
    assert not bad, f"{path.relative_to(ROOT)} ({owner}) may not import {bad}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_protocol_and_database_libraries_stay_in_their_modules(path: Path):
    rel = str(path.relative_to(ROOT))
    for lib, allowed in PRIVATE_LIBS.items():
        if any(n == lib or n.startswith(lib + ".") for n in _imports(path)):
            assert any(rel == a or rel.startswith(a + "/") or rel.startswith(a) for a in allowed), \
                f"{rel} imports {lib}, which belongs to {sorted(allowed)}"


def test_no_import_cycles_between_modules():
    """Module-level graph over our own modules; any strongly connected component > 1 is a cycle."""
    files = _modules()
    modname = {p: ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in files}
    known = set(modname.values())
    graph: dict[str, set[str]] = {m: set() for m in known}
    for p, m in modname.items():
        for name in _imports(p):
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != m and not m.startswith(name + ".") and name.split(".")[0] in PACKAGES:
                if not (name == name.split(".")[0] and m.startswith(name)):  # package __init__ of itself
                    graph[m].add(name)
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    import sys
    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            strong(v)
    assert not cycles, f"import cycles: {cycles}"
