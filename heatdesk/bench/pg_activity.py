"""What else the PostgreSQL server did while a benchmark phase ran.

Why: the ingest bench's end-to-end phase (c) runs against a server it shares — the machine's
PostgreSQL in CI and here. On one machine (c) swung between 15 and 23 k readings/s while the
protocol and database ceilings held steady, and nothing in the JSON could say whether the bench or
the server had changed. A run now carries its own witness: the checkpoints that ran during the
phase (``pg_stat_bgwriter``), the WAL the whole server wrote (``pg_current_wal_lsn``), and what
other backends were doing, sampled twice a second from ``pg_stat_activity`` (autovacuum workers and
active queries in the server's other databases; the watch connects to the bench's own database,
whose sessions are the ones under test).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import psycopg

_COUNTERS = """SELECT checkpoints_timed, checkpoints_req, buffers_checkpoint, checkpoint_write_time,
                      checkpoint_sync_time, buffers_backend, pg_current_wal_lsn() - '0/0'::pg_lsn
               FROM pg_stat_bgwriter"""
_OTHERS = """SELECT count(*) FILTER (WHERE backend_type = 'autovacuum worker'),
                    count(*) FILTER (WHERE backend_type = 'client backend' AND state = 'active'
                                     AND datname IS DISTINCT FROM current_database()),
                    count(*) FILTER (WHERE wait_event_type = 'IO' AND pid <> pg_backend_pid())
             FROM pg_stat_activity"""


@dataclass
class ServerActivity:
    """Counters before and after a phase, plus the busiest moments of other sessions during it."""
    checkpoints: int = 0
    checkpoint_buffers: int = 0
    checkpoint_write_ms: float = 0.0
    checkpoint_sync_ms: float = 0.0
    backend_buffer_writes: int = 0
    wal_mb: float = 0.0
    autovacuum_workers_max: int = 0
    other_active_max: int = 0
    io_waits_max: int = 0
    samples: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["wal_mb"] = round(self.wal_mb, 1)
        d["errors"] = self.errors[:3]
        return d


class ActivityWatch:
    """``with ActivityWatch(url) as w: …`` (or ``w = ActivityWatch(url).start()`` … ``w.stop()``), then
    ``w.result``; ``url`` is the database under test.

    Sessions in that database are the bench's own and are not counted as the server's other work.
    One extra connection, one small query every ``interval_s``."""

    def __init__(self, url: str, *, interval_s: float = 0.5):
        self.url = url
        self.interval_s = interval_s
        self.result = ServerActivity()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._before: tuple | None = None

    def __enter__(self) -> "ActivityWatch":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "ActivityWatch":
        try:
            self._conn = psycopg.connect(self.url, autocommit=True, application_name="hdbench-watch")
            self._before = self._conn.execute(_COUNTERS).fetchone()
        except psycopg.Error as e:          # a witness must never fail the measurement it watches
            self._conn = None
            self.result.errors.append(f"{type(e).__name__}: {e}".strip())
            return self
        self._thread = threading.Thread(target=self._sample, name="pg-activity", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        r = self.result
        while not self._stop.wait(self.interval_s):
            try:
                av, active, io = self._conn.execute(_OTHERS).fetchone()
            except psycopg.Error as e:
                r.errors.append(f"{type(e).__name__}: {e}".strip())
                return
            r.samples += 1
            r.autovacuum_workers_max = max(r.autovacuum_workers_max, av)
            r.other_active_max = max(r.other_active_max, active)
            r.io_waits_max = max(r.io_waits_max, io)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._conn is None:
            return
        try:
            after = self._conn.execute(_COUNTERS).fetchone()
        except psycopg.Error as e:
            self.result.errors.append(f"{type(e).__name__}: {e}".strip())
            after = None
        finally:
            self._conn.close()
        if after is not None and self._before is not None:
            b, a, r = self._before, after, self.result
            r.checkpoints = (a[0] - b[0]) + (a[1] - b[1])
            r.checkpoint_buffers = a[2] - b[2]
            r.checkpoint_write_ms = float(a[3] - b[3])
            r.checkpoint_sync_ms = float(a[4] - b[4])
            r.backend_buffer_writes = a[5] - b[5]
            r.wal_mb = float(a[6] - b[6]) / 1e6


def percentiles_ms(durations_s: list[float]) -> dict:
    """p50 / p95 / max in ms and how many exceeded 100 ms — the commit-time summary of a phase."""
    if not durations_s:
        return {"count": 0}
    xs = sorted(durations_s)

    def at(q: float) -> float:
        return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 1)

    return {"count": len(xs), "p50_ms": at(0.50), "p95_ms": at(0.95), "max_ms": round(xs[-1] * 1000, 1),
            "over_100ms": sum(1 for x in xs if x > 0.1), "total_s": round(sum(xs), 2)}

