"""heatdesk.bench.memory: the memory breakdown the ingest benchmark's live run reports."""
from __future__ import annotations

from heatdesk.bench import memory


def test_sample_sees_python_objects_in_pymalloc_arenas_and_a_large_buffer_in_malloc():
    before = memory.sample()
    objects = [(i, str(i)) for i in range(200_000)]          # small objects: pymalloc
    grown = memory.sample()
    assert grown["pymalloc_blocks"] - before["pymalloc_blocks"] >= 200_000
    assert grown["pymalloc_arenas"] > before["pymalloc_arenas"]
    assert grown["rss_mb"] > before["rss_mb"]
    buf = bytearray(64 * 2**20)                               # one large block: glibc mmaps it
    big = memory.sample()
    assert big["malloc_mmap_mb"] - grown["malloc_mmap_mb"] >= 60
    del objects, buf
    after = memory.sample()
    assert after["malloc_mmap_mb"] < big["malloc_mmap_mb"] and after["pymalloc_blocks"] < grown["pymalloc_blocks"]


def test_pymalloc_arenas_reads_the_interpreters_own_count():
    n = memory.pymalloc_arenas()
    assert isinstance(n, int) and n > 0
