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
