"""IngestService: the Sink adapters submit to, and the one thread that drives the pipeline

    submit() → bounded lanes → quality stage → batcher → writer (one transaction) → acks

Backpressure instead of loss (field-lessons.md, "Database"):

* Two bounded lanes: deliveries whose upstream keeps the data until acked (MQTT QoS 1,
  ``upstream_retains=True``) and polled deliveries (Modbus, OPC UA). ``submit`` blocks when its
  lane is full.
* Database down: retained deliveries are *held* un-acked in memory up to ``max_unacked``; past
  that the thread stops taking them, the lane fills and the adapter's callback blocks — the broker
  keeps the backlog. Polled deliveries are appended to the on-disk spool (fsync) and only then
  acked; when the spool reaches ``settings.spool_max_bytes`` the thread stops taking them and
  their submitters block. Nothing is dropped.
* Recovery: held deliveries are committed (then acked), then the spool is replayed in order and a
  segment is deleted only after its records are committed.

All pipeline state (quality state, batcher, held list) belongs to the one ingest thread; the
lanes and the event list are the only structures shared with adapter threads.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import psycopg
from psycopg_pool import ConnectionPool

from adapters.base import Delivery, DeviceEvent, Rejection
from adapters.config import MetricRange
from core.config import Settings
from core.db import make_pool
from ingest.batcher import Batch, Batcher
from ingest.quality import QualityStage
from ingest.spool import Spool, SpoolError, decode_record, encode_record
from ingest.writer import DatabaseDown, Writer, ack_all

log = logging.getLogger(__name__)

RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0


class ServiceStopped(RuntimeError):
    """submit() after stop(): the delivery was not taken (an MQTT message stays un-acked)."""


class _Lanes:
    """Two bounded FIFO lanes under one condition variable."""

    def __init__(self, retained_max: int, polled_max: int):
        self.cv = threading.Condition()
        self.retained: deque[Delivery] = deque()
        self.polled: deque[Delivery] = deque()
        self.retained_max = retained_max
        self.polled_max = polled_max
        self.closed = False

    def put(self, d: Delivery) -> None:
        lane, cap = (self.retained, self.retained_max) if d.upstream_retains else (self.polled, self.polled_max)
        with self.cv:
            while len(lane) >= cap and not self.closed:
                self.cv.wait(0.5)                 # backpressure: the submitter waits for room
            if self.closed:
                raise ServiceStopped("ingest is stopped")
            lane.append(d)
            if len(self.retained) + len(self.polled) == 1:
                self.cv.notify_all()              # the taker only sleeps on empty lanes: wake it once

    def take(self, max_items: int, timeout: float, *, retained: bool = True, polled: bool = True) -> list[Delivery]:
        with self.cv:
            if not ((retained and self.retained) or (polled and self.polled)) and timeout > 0:
                self.cv.wait(timeout)
            full_before = len(self.retained) >= self.retained_max or len(self.polled) >= self.polled_max
            out: list[Delivery] = []
            # alternate so neither kind starves the other
            while len(out) < max_items:
                moved = False
                if retained and self.retained:
                    out.append(self.retained.popleft())
                    moved = True
                if polled and self.polled and len(out) < max_items:
                    out.append(self.polled.popleft())
                    moved = True
                if not moved:
                    break
            if full_before:
                self.cv.notify_all()              # submitters only sleep on a full lane
            return out

    def sizes(self) -> tuple[int, int]:
        return len(self.retained), len(self.polled)

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify_all()


class IngestService:
    """A Sink (adapters/base.py). start() runs the pipeline thread; stop() flushes and ends it."""

    def __init__(self, pool: ConnectionPool, *, settings: Settings, ranges: dict[str, MetricRange] | None = None,
                 spool_dir: Path | None = None, clock: Callable[[], float] = time.monotonic,
                 max_unacked: int = 100_000, polled_queue: int = 10_000, db_timeout: float = 3.0):
        self.settings = settings
        self.clock = clock
        self.writer = Writer(pool, timeout=db_timeout)
        self.quality = QualityStage(ranges or {})
        self.batcher = Batcher(settings.batch_max_rows, settings.batch_max_age_s, clock)
        self._spool_batcher = Batcher(settings.batch_max_rows, settings.batch_max_age_s, clock)
        self.spool = Spool(spool_dir or Path(settings.data_dir) / "spool", settings.spool_max_bytes)
        self.max_unacked = max_unacked
        self._lanes = _Lanes(retained_max=max_unacked, polled_max=polled_queue)
        self._events: deque[DeviceEvent] = deque()
        self._events_lock = threading.Lock()
        self._held: deque[Delivery] = deque()
        self._outage_since: float | None = None
        self._outage_wall: datetime | None = None
        self._next_retry = 0.0
        self._backoff = RETRY_MIN_S
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = False
        self._own_pools: list[ConnectionPool] = []      # pools made here to replace a backing-off one
        self.fatal: BaseException | None = None
        self.last_error: str | None = None
        self.totals = Counter()

    # -- Sink ------------------------------------------------------------------------------------------
    def submit(self, delivery: Delivery) -> None:
        self._lanes.put(delivery)

    def device_event(self, event: DeviceEvent) -> None:
        with self._events_lock:
            self._events.append(event)
        with self._lanes.cv:
            self._lanes.cv.notify_all()

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ingest-writer", daemon=True)
        self._thread.start()

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is committed and acked (False on timeout/outage)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle():
                return True
            if self.fatal is not None:
                return False
            time.sleep(0.02)
        return self.idle()

    def idle(self) -> bool:
        r, p = self._lanes.sizes()
        return (r == 0 and p == 0 and self.batcher.pending == 0 and not self._busy and not self._held
                and self._outage_since is None and not self._events)

    def close_intake(self) -> None:
        """Refuse further submissions (ServiceStopped) and release submitters blocked on a full lane —
        used at shutdown during an outage so an adapter's network thread can be joined. What is already
        queued is still handled by stop()."""
        self._lanes.close()

    def stop(self, timeout: float = 15.0) -> None:
        """Flush what is queued and end the thread. In an outage, polled data is spooled and held MQTT
        messages stay un-acked (the broker re-sends them to the next run)."""
        self._stopping.set()
        with self._lanes.cv:
            self._lanes.cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("ingest thread did not stop within %.0f s", timeout)
        self._lanes.close()
        self.spool.close()
        for p in self._own_pools:
            p.close()

    # -- status ----------------------------------------------------------------------------------------
    def status(self) -> dict:
        r, p = self._lanes.sizes()
        held = list(self._held)
        per_device: Counter = Counter()
        for d in held:
            dev = (d.readings[0].meta.device_id if d.readings else d.rejects[0].device_id if d.rejects else None)
            per_device[dev or "unknown"] += 1
        return {
            "queue_depth": r + p,
            "queue_retained": r,
            "queue_polled": p,
            "batch_pending": self.batcher.pending,
            "unacked": r + len(held) + self.batcher.pending,
            "unacked_by_device": dict(per_device),
            "held": len(held),
            "spool_bytes": self.spool.bytes,
            "spool_segments": len(self.spool.segments(include_active=True)),
            "spool_corrupt_bytes": self.spool.corrupt_bytes,
            "db_ok": self._outage_since is None,
            "outage_since": self._outage_wall.isoformat() if self._outage_wall else None,
            "last_error": self.last_error,
            "fatal": repr(self.fatal) if self.fatal else None,
            **{k: v for k, v in self.totals.items()},
        }

    # -- the pipeline thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            if self.spool:
                log.info("spool holds %d bytes from an earlier outage: replaying", self.spool.bytes)
                self._try_replay()
            while True:
                if self._outage_since is not None:
                    self._outage_step()
                else:
                    self._normal_step()
                if self._stopping.is_set() and self._settled():
                    break
        except BaseException as e:  # a bug: record it so the runner exits non-zero (the broker keeps data)
            self.fatal = e
            log.critical("ingest pipeline stopped by an unexpected error", exc_info=True)

    def _settled(self) -> bool:
        r, p = self._lanes.sizes()
        if self._outage_since is not None:
            # on stop in an outage: everything polled is on disk; retained stays un-acked upstream
            return p == 0 and self._spool_batcher.pending == 0 and not self._events
        return r == 0 and p == 0 and self.batcher.pending == 0 and not self._events

    def _pop_events(self) -> list[DeviceEvent]:
        with self._events_lock:
            ev = list(self._events)
            self._events.clear()
        return ev

    def _normal_step(self) -> None:
        wait = self.batcher.time_until_due()
        timeout = 0.0 if self._stopping.is_set() else (0.2 if wait is None else min(wait, 0.2))
        room = max(1, self.settings.batch_max_rows - self.batcher.rows)
        for d in self._lanes.take(min(room, 2000), timeout):
            self.batcher.add(self.quality.apply(d))
        if self.batcher.due() or (self._stopping.is_set() and self.batcher.pending) or \
                (self._events and self.batcher.pending == 0):
            self._flush()

    def _flush(self) -> None:
        batch = self.batcher.take()
        batch.events = self._pop_events()
        if batch.empty:
            return
        self._busy = True
        try:
            self._write(batch)
        except DatabaseDown as e:
            self._enter_outage(batch, e)
        except psycopg.Error as e:
            self._isolate(batch, e)
        finally:
            self._busy = False

    def _write(self, batch: Batch, *, ack: bool = True) -> None:
        st = self.writer.write(batch, ack=ack)
        t = self.totals
        t["batches"] += 1
        t["readings"] += st.readings
        t["inserted"] += st.inserted
        t["duplicates"] += st.duplicates
        t["rejects"] += st.rejects
        t["acked"] += st.acked
        t["last_commit_unix"] = int(time.time())

    # -- poison batches ----------------------------------------------------------------------------------
    def _isolate(self, batch: Batch, err: psycopg.Error) -> None:
        """A non-connection error: write deliveries one by one, turn the one that fails into a reject."""
        log.error("batch of %d deliveries failed (%s); writing them one by one", len(batch), err)
        self.last_error = f"{type(err).__name__}: {err}"
        todo = deque(batch.deliveries)
        events = batch.events
        while todo:
            d = todo.popleft()
            try:
                self._write(Batch([d], rows=len(d.readings) + len(d.rejects)))
                continue
            except DatabaseDown as e:
                todo.appendleft(d)
                self._enter_outage(Batch(list(todo), events), e)
                return
            except psycopg.Error as e2:
                bad = d
                err2 = e2
            first = bad.readings[0] if bad.readings else None
            rej = Rejection(source=first.meta.protocol if first else "ingest",
                            device_id=first.meta.device_id if first else None,
                            address=first.sensor if first else "",
                            payload=repr([(r.sensor, r.ts.isoformat(), r.value) for r in bad.readings][:50]).encode(),
                            reason="write_error", detail=f"{type(err2).__name__}: {err2}"[:1000])
            try:
                self._write(Batch([Delivery(rejects=[rej, *bad.rejects], ack=bad.ack,
                                            upstream_retains=bad.upstream_retains)], rows=1))
            except DatabaseDown as e:
                todo.appendleft(bad)
                self._enter_outage(Batch(list(todo), events), e)
                return
        if events:
            try:
                self._write(Batch(events=events))
            except DatabaseDown as e:
                self._enter_outage(Batch(events=events), e)
            except psycopg.Error:
                log.exception("device events could not be written and are dropped (status only, no data)")

    # -- outage -------------------------------------------------------------------------------------------
    def _enter_outage(self, batch: Batch, err: Exception) -> None:
        if self._outage_since is None:
            self._outage_since = self.clock()
            self._outage_wall = datetime.now(timezone.utc)
            self._backoff = RETRY_MIN_S
            log.error("database unreachable (%s): holding MQTT messages un-acked, spooling polled data to %s",
                      err, self.spool.dir)
        self.last_error = f"database unreachable: {err}"
        self._next_retry = self.clock() + self._backoff
        for d in batch.deliveries:
            if d.upstream_retains:
                self._held.append(d)
            else:
                self._spool_batcher.add(d)
        with self._events_lock:
            self._events.extendleft(reversed(batch.events))
        self._spool_pending(force=True)

    def _spool_pending(self, force: bool = False) -> None:
        if not (force or self._spool_batcher.due() or (self._events and self._spool_batcher.pending == 0)):
            return
        events = self._pop_events()
        batch = self._spool_batcher.take()
        if not batch.deliveries and not events:
            return
        try:
            self.spool.append(encode_record(batch.deliveries, events))
        except OSError as e:
            # cannot spool (disk full?): keep them in memory un-acked and stop taking polled data
            log.error("spool write failed (%s); polled data waits in memory", e)
            self.last_error = f"spool write failed: {e}"
            for d in batch.deliveries:
                self._spool_batcher.add(d)
            with self._events_lock:
                self._events.extendleft(reversed(events))
            return
        self.totals["spooled_records"] += 1
        ack_all(batch.deliveries)

    def _outage_step(self) -> None:
        now = self.clock()
        if now >= self._next_retry:
            try:
                self._recover()
                return
            except DatabaseDown as e:
                self.last_error = f"database unreachable: {e}"
                self._backoff = min(self._backoff * 2, RETRY_MAX_S)
                self._next_retry = self.clock() + self._backoff
            except psycopg.Error as e:
                log.error("recovery write failed (%s); retrying", e)
                self.last_error = f"{type(e).__name__}: {e}"
                self._next_retry = self.clock() + self._backoff
        take_retained = len(self._held) < self.max_unacked
        # at stop, what is already queued goes to disk even past the bound (at most one lane): never dropped
        take_polled = (self.spool.has_room() or self._stopping.is_set()) and \
            self._spool_batcher.pending < self._lanes.polled_max
        timeout = 0.0 if self._stopping.is_set() else max(0.0, min(0.2, self._next_retry - self.clock()))
        items = self._lanes.take(2000, timeout, retained=take_retained, polled=take_polled)
        if not items and timeout == 0.0 and not self._stopping.is_set():
            time.sleep(0.05)               # both lanes closed to us (bounds reached): wait for the database
        for d in items:
            d = self.quality.apply(d)
            if d.upstream_retains:
                self._held.append(d)
            else:
                self._spool_batcher.add(d)
        self._spool_pending(force=self._stopping.is_set())

    def _probe(self) -> None:
        """Raise DatabaseDown unless the database answers through the pool.

        psycopg_pool retries a lost connection with exponential backoff (1, 2, 4, 8, 16, 32 s …): after a
        30 s outage its next attempt can be half a minute after the server is back. So when the pool
        cannot give a connection but a direct connection works, the pool is replaced (core.db.make_pool,
        same settings) instead of waiting out its backoff."""
        try:
            self.writer.ping()
            return
        except DatabaseDown:
            pool = self.writer.pool
            try:
                psycopg.connect(pool.conninfo, connect_timeout=2).close()
            except psycopg.OperationalError as e:
                raise DatabaseDown(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from e
        log.info("database answers but the connection pool is still backing off: replacing the pool")
        new = make_pool(pool.conninfo, min_size=pool.min_size, max_size=pool.max_size, name=pool.name,
                        timeout=pool.timeout)
        self.writer.pool = new
        self._own_pools.append(new)
        # the old pool belongs to whoever made it; closing it here only stops its reconnect attempts
        threading.Thread(target=pool.close, kwargs={"timeout": 5.0}, daemon=True, name="old-pool-close").start()
        self.writer.ping()

    def _recover(self) -> None:
        self._probe()
        rows = self.settings.batch_max_rows
        while self._held:
            chunk = Batch()
            while self._held and chunk.rows < rows:
                chunk.add(self._held.popleft())
            try:
                self._write(chunk)
            except (DatabaseDown, psycopg.Error):
                self._held.extendleft(reversed(chunk.deliveries))
                raise
        self._spool_pending(force=True)
        self._replay()
        took = self.clock() - (self._outage_since or self.clock())
        log.warning("database back after %.1f s: held messages committed and acked, spool replayed", took)
        self._outage_since = None
        self._outage_wall = None
        self.last_error = None

    def _try_replay(self) -> None:
        try:
            self._replay()
        except DatabaseDown as e:
            self._enter_outage(Batch(), e)

    def _replay(self) -> None:
        """Spooled records → database, in order; a segment is deleted after its last commit."""
        self.spool.seal()
        rows = self.settings.batch_max_rows
        for seg in self.spool.segments():
            acc = Batch()
            for rec in self.spool.read_segment(seg):
                try:
                    d, evs = decode_record(rec)
                except (SpoolError, ValueError, KeyError, TypeError) as e:
                    # intact frame (CRC ok) we cannot read: keep it as evidence in rejects
                    d, evs = Delivery(rejects=[Rejection(source="ingest", device_id=None, address=str(seg.name),
                                                         payload=rec[:16384], reason="spool_undecodable",
                                                         detail=str(e)[:500])]), []
                acc.add(d)
                acc.events.extend(evs)
                if acc.rows >= rows:
                    self._write(acc, ack=False)
                    acc = Batch()
            if not acc.empty:
                self._write(acc, ack=False)
            self.spool.remove(seg)
            self.totals["replayed_segments"] += 1
