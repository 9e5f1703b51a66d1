"""Garbage collection on a clock instead of on every few hundred allocations, for the ingest process.

Why: ingest holds every un-acked MQTT delivery until its batch commits — up to ReceiveMaximum
(20 000) deliveries, each a handful of container objects — so CPython's allocation-driven collector
keeps finding the same survivors and promoting them, and full collections walk them again and again.
Measured with ``heatdesk bench ingest``'s end-to-end phase (200 000 readings, gc.callbacks timing):
about 2.0–2.4 s of collection in a 12–15 s drain (3 870 young, 350 middle, 32 full collections),
against 0.15 s in the protocol-ceiling phase where each message dies at once. Reference counting
frees everything that is not in a cycle whatever the collector does; the collector only exists for
cycles, and a cycle can as well wait a few seconds.

Measured alternatives (``heatdesk bench ingest --json``, c/min(a, b), two runs each): CPython's own
collector 0.57 / 0.61; frozen start-up heap with thresholds raised to (100 000, 50, 50) 0.69 / 0.58;
paced as below 0.76 / 0.725.

So: one collection at start-up, then ``gc.freeze()`` (the start-up heap — modules, classes, the
configuration — is never walked again), automatic collection off, and a full ``gc.collect()`` every
``interval_s`` from a daemon thread. Memory held by cyclic garbage is bounded by what the process
makes in one interval (~350 objects per 10 s in the bench). The RSS steps first seen in 10-minute live
runs (66 → 72 and 66.6 → 79 MB) are not cyclic garbage: with the memory breakdown the bench now
reports, each step came with a new high of un-acked deliveries held by the service (8–12 k usually,
18 k once at 475 s: pymalloc 33 → 39 arenas), while glibc's bytes in use and the number of live
Python blocks stayed flat — high-water marks of a queue that ReceiveMaximum bounds (docs/ingest.md, "Throughput").

After each paced collection glibc's ``malloc_trim(0)`` gives the heap's free pages back
(``HEATDESK_MALLOC_TRIM=0`` turns it off). Why: a 10-minute live run after the ack and decode changes
of 2026-11-23 (docs/ingest.md, "Throughput, third pass") showed glibc's heap growing 13.1 → 16.7 MB
at ~0.4 MB/min while its bytes in use stayed at 9.8–9.9 MB and pymalloc at 30 arenas: freed memory
between live chunks that free() never returns, so RSS rose with it. The trim costs about a
millisecond every 10 s (``trim_seconds`` in the stats).

Only the ingest process (``python -m ingest``) and the ingest benchmark pace their collector; nothing
else imports this.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 10.0


def _malloc_trim():
    """glibc's ``malloc_trim`` or None (another libc)."""
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


class GcPacer:
    """Runs ``gc.collect()`` every ``interval_s``; ``stop()`` gives automatic collection back."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S, *, trim: bool = True):
        if interval_s < 0:
            raise ValueError("interval_s must be positive (or 0: CPython's own collector)")
        self.interval_s = interval_s
        self.collections = 0
        self.collected = 0            # unreachable objects found (cyclic garbage)
        self.seconds = 0.0            # time spent collecting
        self.max_pause_s = 0.0
        self.trim = _malloc_trim() if trim else None
        self.trim_seconds = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._was_enabled = gc.isenabled()

    def start(self) -> "GcPacer":
        if self.interval_s == 0:
            log.info("garbage collection: CPython's own (HEATDESK_GC_INTERVAL_S=0)")
            return self
        gc.collect()
        gc.freeze()
        gc.disable()
        self._thread = threading.Thread(target=self._run, name="gc-pacer", daemon=True)
        self._thread.start()
        log.info("garbage collection paced: every %.0f s (%d start-up objects frozen)", self.interval_s,
                 gc.get_freeze_count())
        return self

    def collect_now(self) -> int:
        t0 = time.perf_counter()
        found = gc.collect()
        pause = time.perf_counter() - t0
        self.collections += 1
        self.collected += found
        self.seconds += pause
        self.max_pause_s = max(self.max_pause_s, pause)
        if self.trim is not None:
            t1 = time.perf_counter()
            self.trim(0)                  # give the heap's free pages back (see the module docstring)
            self.trim_seconds += time.perf_counter() - t1
        return found

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.collect_now()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join(5)
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()

    def stats(self) -> dict:
        return {"interval_s": self.interval_s, "collections": self.collections, "cyclic_objects": self.collected,
                "seconds": round(self.seconds, 3), "max_pause_ms": round(self.max_pause_s * 1000, 1),
                "malloc_trim": self.trim is not None, "trim_seconds": round(self.trim_seconds, 3)}


def pace_gc(interval_s: float | None = None) -> GcPacer:
    """Start pacing this process's collector (see the module docstring). The interval defaults to
    ``HEATDESK_GC_INTERVAL_S`` or DEFAULT_INTERVAL_S; 0 leaves CPython's collector as it is."""
    if interval_s is None:
        interval_s = float(os.environ.get("HEATDESK_GC_INTERVAL_S", DEFAULT_INTERVAL_S))
    return GcPacer(interval_s, trim=os.environ.get("HEATDESK_MALLOC_TRIM", "1") != "0").start()
