"""heatdesk.bench.pg_activity: the witness of what the shared PostgreSQL server did during a bench phase."""
from __future__ import annotations

import threading

import psycopg

from heatdesk.bench.pg_activity import ActivityWatch, percentiles_ms


def _sleep_in(url: str, seconds: float) -> threading.Thread:
    def run() -> None:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("SELECT pg_sleep(%s)", (seconds,))
    t = threading.Thread(target=run)
    t.start()
    return t


def test_counts_other_databases_work_and_a_checkpoint_but_not_the_bench_databases_own(fresh_db_url, pg_server_url):
    with ActivityWatch(fresh_db_url, interval_s=0.1) as own:
        _sleep_in(fresh_db_url, 0.6).join()             # the bench's own session: not "other work"
    assert own.result.samples >= 3 and own.result.errors == []
    assert own.result.other_active_max == 0

    with ActivityWatch(fresh_db_url, interval_s=0.1) as other:
        t = _sleep_in(pg_server_url, 0.6)               # another database on the same server
        with psycopg.connect(pg_server_url, autocommit=True) as c:
            c.execute("CREATE TEMP TABLE w AS SELECT g FROM generate_series(1, 1000) g")
            c.execute("CHECKPOINT")
        t.join()
    r = other.result
    assert r.other_active_max >= 1
    assert r.checkpoints >= 1
    assert r.wal_mb >= 0
    assert set(r.as_dict()) >= {"checkpoints", "wal_mb", "autovacuum_workers_max", "other_active_max", "io_waits_max"}


def test_an_unreachable_server_is_recorded_not_raised():
    with ActivityWatch("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1") as w:
        pass
    assert w.result.samples == 0 and w.result.errors and w.result.checkpoints == 0


def test_percentiles_ms():
    assert percentiles_ms([]) == {"count": 0}
    p = percentiles_ms([0.01] * 90 + [0.2] * 10)
    assert p["count"] == 100 and p["p50_ms"] == 10.0 and p["p95_ms"] == 200.0 and p["max_ms"] == 200.0
    assert p["over_100ms"] == 10 and p["total_s"] == 2.9
