"""The `heatdesk` command.

Subcommands come from the packages themselves: every package with a ``cli.py`` (or the modules
listed in PLUGINS) exposes ``register_cli(subparsers)``. This module adds the ones that span the
whole system: ``up``, ``db init``, ``simulate`` and ``bench``. The API and the simulators are
started as subprocesses, never imported (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path

from core.config import get_settings

log = logging.getLogger("heatdesk")

#: modules that add subcommands; a missing one is reported by `heatdesk --help`, not a crash
PLUGINS = ["ingest.cli", "ingest.import_cli", "analytics.cli", "ticketing.cli", "dunning.cli"]

#: benchmark name → module with run(args) -> dict
BENCHES = {
    "ingest": "heatdesk.bench.ingest",
    "modbus": "heatdesk.bench.modbus",
    "compliance": "heatdesk.bench.compliance",
    "api": "heatdesk.bench.api",
    "dunning": "heatdesk.bench.dunning",
}


def resolve_database_url(explicit: str | None) -> str | None:
    """--database-url, else HEATDESK_DATABASE_URL, else the URL of the running `heatdesk up`."""
    if explicit:
        return explicit
    settings = get_settings()
    if settings.database_url:
        return settings.database_url
    f = settings.data_dir / "database_url"
    if f.exists():
        return f.read_text().strip()
    return None


def _cmd_db_init(args: argparse.Namespace) -> int:
    from core.db import apply_schema

    if not args.database_url:
        print("heatdesk db init: no database. Set HEATDESK_DATABASE_URL, pass --database-url, or run `heatdesk up`.",
              file=sys.stderr)
        return 2
    info = apply_schema(args.database_url)
    path = "TimescaleDB (hypertable, compression, continuous aggregate)" if info["timescaledb"] else \
        "plain PostgreSQL (BRIN on time, hourly rollup table kept by heatdesk's scheduler)"
    print(f"schema version {info['version']} applied on {path}")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from heatdesk.up import run_up

    return run_up(args)


def _cmd_simulate(args: argparse.Namespace) -> int:
    import subprocess

    cmd = [sys.executable, "-m", "simulators", *args.sim_args]
    return subprocess.call(cmd)


def _cmd_bench(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHES[args.bench])
    result = module.run(args)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, default=str))
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, list[str]]:
    parser = argparse.ArgumentParser(prog="heatdesk", description="heatdesk: district-heating data service")
    parser.add_argument("--database-url", default=None, help="PostgreSQL URL (default: HEATDESK_DATABASE_URL or "
                        "the running `heatdesk up` instance)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = sub.add_parser("up", help="run the whole system (private PostgreSQL and broker unless configured)")
    up.add_argument("--seed", type=int, default=7, help="city generator seed")
    up.add_argument("--households", type=int, default=None, help="size of the simulated city")
    up.add_argument("--backfill-days", type=float, default=3, help="publish this many past days on start")
    up.add_argument("--speed", type=float, default=60.0,
                    help="simulated seconds per real second for live data: thermometers sample every 20 simulated "
                         "minutes, so 60 gives a reading every 20 s; live timestamps stay wall-clock (the physics "
                         "runs faster), history with its own timestamps comes from --backfill-days")
    up.add_argument("--port", type=int, default=None, help="API port (default 8080 or a free one)")
    up.add_argument("--scenario", default=None, help="scenario file for the simulators")
    up.add_argument("--no-simulators", action="store_true", help="real devices only")
    up.add_argument("--exit-after", type=float, default=None, help=argparse.SUPPRESS)
    up.set_defaults(func=_cmd_up)

    db = sub.add_parser("db", help="database commands")
    dbsub = db.add_subparsers(dest="db_command", metavar="DB_COMMAND", required=True)
    init = dbsub.add_parser("init", help="apply schema.sql (idempotent)")
    init.set_defaults(func=_cmd_db_init)

    sim = sub.add_parser("simulate", help="run the simulators (python -m simulators …)")
    sim.add_argument("sim_args", nargs=argparse.REMAINDER, help="arguments for python -m simulators")
    sim.set_defaults(func=_cmd_simulate)

    bench = sub.add_parser("bench", help="benchmarks (figures and ratios, not pass/fail)")
    bench.add_argument("bench", choices=sorted(BENCHES))
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--n", type=int, default=None, help="readings / items (benchmark-specific default)")
    bench.add_argument("--duration", type=float, default=None, help="seconds (memory-flatness runs)")
    bench.add_argument("--rows", type=int, default=None, help="rows to store for query benchmarks")
    bench.add_argument("--households", type=int, default=None)
    bench.add_argument("--accounts", type=int, default=None)
    bench.add_argument("--concurrency", type=int, default=50)
    bench.add_argument("--think-ms", type=float, default=None,
                       help="api: mean think time between a client's requests (default 1000; 0 = closed loop)")
    bench.add_argument("--keep-db", action="store_true",
                       help="api: keep the built city database and reuse it (12 h) on the next run")
    bench.add_argument("--pg-shared-buffers", default=None, metavar="SIZE",
                       help="api, compliance, dunning: run on a private PostgreSQL with this shared_buffers "
                            "(e.g. 6GB) instead of the machine's server")
    bench.set_defaults(func=_cmd_bench)

    missing = []
    for name in PLUGINS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and (e.name == name or name.startswith(e.name + ".")):
                missing.append(name)
                continue
            raise
        module.register_cli(sub)
    return parser, missing


def main(argv: list[str] | None = None) -> int:
    parser, missing = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        if missing:
            print(f"\n(not available in this build: {', '.join(missing)})")
        return 2
    args.database_url = resolve_database_url(args.database_url)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
