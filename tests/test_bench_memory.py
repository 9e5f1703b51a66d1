"""heatdesk.bench.memory: the memory breakdown the ingest benchmark's live run reports."""
from __future__ import annotations

from heatdesk.bench import memory


def test_sample_sees_python_objects_in_pymalloc_and_a_large_buffer_in_malloc():
    before = memory.sample()
    objects = [(i, str(i)) for i in range(200_000)]          # small objects: pymalloc
    grown = memory.sample()
    assert grown["pymalloc_blocks"] - before["pymalloc_blocks"] >= 200_000
    # (whether new arenas are needed depends on the free pools the process already has: in a long
    # test run there were enough, so only consistency is checked — blocks of ≥ 16 B fit the arenas)
    assert grown["pymalloc_arenas"] * 2**20 >= grown["pymalloc_blocks"] * 16
    buf = bytearray(64 * 2**20)                               # one large block: glibc mmaps it
    big = memory.sample()
    assert big["malloc_mmap_mb"] - grown["malloc_mmap_mb"] >= 60
    del objects, buf
    after = memory.sample()
    assert after["malloc_mmap_mb"] < big["malloc_mmap_mb"] and after["pymalloc_blocks"] < grown["pymalloc_blocks"]


def test_pymalloc_arenas_follows_the_interpreters_own_count():
    """In a fresh interpreter (no free pools left over from other tests) 300 000 small objects need
    new arenas, and the count read off sys._debugmallocstats() shows them."""
    import subprocess
    import sys

    from core.config import PROJECT_ROOT
    out = subprocess.run([sys.executable, "-c", "from heatdesk.bench import memory as m\n"
                          "a = m.pymalloc_arenas()\nx = [(i, str(i)) for i in range(300_000)]\n"
                          "print(a, m.pymalloc_arenas())"], capture_output=True, text=True, cwd=PROJECT_ROOT,
                         check=True).stdout.split()
    before, after = int(out[0]), int(out[1])
    assert 0 < before and after >= before + 20          # ≥ 20 MiB of tuples and strings
