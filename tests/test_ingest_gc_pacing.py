"""ingest/gc_pacing.py: the ingest process collects cycles on a clock, not per few hundred allocations."""
from __future__ import annotations

import gc

import pytest

from ingest.gc_pacing import GcPacer, pace_gc
from tests.helpers import wait_for


class _Node:
    def __init__(self):
        self.me = self          # a reference cycle: only the collector frees it


def test_pacer_turns_automatic_collection_off_and_collects_on_its_clock():
    was = gc.isenabled()
    pacer = GcPacer(interval_s=0.2).start()
    try:
        assert not gc.isenabled()
        assert gc.get_freeze_count() > 0                 # the start-up heap is not walked again
        for _ in range(1000):
            _Node()
        wait_for(lambda: pacer.collections >= 1 and pacer.collected >= 1000, 5, message="a paced collection")
        st = pacer.stats()
        assert st["collections"] >= 1 and st["cyclic_objects"] >= 1000 and st["seconds"] >= 0
    finally:
        pacer.stop()
    assert gc.isenabled() == was and gc.get_freeze_count() == 0


def test_pacer_needs_a_positive_interval_or_zero_for_cpythons_own(monkeypatch):
    with pytest.raises(ValueError):
        GcPacer(interval_s=-1)
    monkeypatch.setenv("HEATDESK_GC_INTERVAL_S", "0")
    was = gc.isenabled()
    pacer = pace_gc()
    try:
        assert pacer.interval_s == 0 and gc.isenabled() == was and gc.get_freeze_count() == 0
    finally:
        pacer.stop()
    assert gc.isenabled() == was


_FRAGMENTED_HEAP = """
import sys
from heatdesk.bench.memory import rss_mb
from ingest.gc_pacing import GcPacer
blocks = [bytearray(2000) for _ in range(20000)]        # ~40 MB from glibc's heap (not mmapped)
keep = blocks[::1000] + [blocks[-1]]                    # survivors spread over it, one at the top
del blocks
before = rss_mb()
GcPacer(interval_s=1, trim=sys.argv[1] == "trim").collect_now()
print(before - rss_mb())
"""


@pytest.mark.parametrize("trim", [True, False])
def test_a_paced_collection_gives_freed_heap_pages_back(trim, project_root):
    """glibc keeps freed memory between live chunks in its heap: RSS stays up although nothing uses it
    (seen in the 10-min live bench as glibc's free-but-held bytes growing while bytes in use stayed
    flat). malloc_trim after the paced collection returns those pages. In a fresh interpreter, so the
    heap holds only what the test made."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FRAGMENTED_HEAP, "trim" if trim else "keep"], cwd=project_root,
                         capture_output=True, text=True, check=True).stdout
    returned_mb = float(out)
    if trim:
        assert returned_mb > 20, returned_mb
    else:
        assert returned_mb < 5, returned_mb


def test_trim_is_on_by_default_and_can_be_turned_off(monkeypatch):
    assert GcPacer(interval_s=1).stats()["malloc_trim"] is True
    monkeypatch.setenv("HEATDESK_MALLOC_TRIM", "0")
    pacer = pace_gc(1.0)
    try:
        assert pacer.stats()["malloc_trim"] is False
    finally:
        pacer.stop()
