"""Hourly rollups for the hours ingest marked dirty (readings_dirty), on both database paths.

* plain PostgreSQL: recompute ``readings_hourly_rollup`` rows for the dirty (sensor, hour) pairs
  from ``readings`` (late data included) in one transaction that also consumes the dirty marks;
* TimescaleDB: ``CALL refresh_continuous_aggregate('readings_hourly_cagg', from, to)`` over the
  dirty window — a procedure that cannot run inside a transaction, hence an autocommit connection.
  Our scheduler drives the refresh (no timescale policy), so both paths behave the same.

Consuming a dirty mark also marks the household's local day (settings.timezone) in
``compliance_dirty`` for room sensors linked to a household, so that analytics recomputes days
whose readings changed (readings_dirty's second purpose, schema.sql).

Concurrency with the writer: the dirty rows are deleted first (READ COMMITTED), then the aggregate
is computed by a later statement that sees every reading committed before that delete; a write
committed later re-marks its hour and the next run picks it up.
"""
from __future__ import annotations

import logging
from datetime import timedelta

import psycopg

from core.db import timescaledb_enabled

log = logging.getLogger(__name__)

#: dirty marks consumed per run (bounds one transaction; the next minute takes the rest)
MAX_MARKS = 200_000

PLAIN_SQL = """
WITH taken AS (
    DELETE FROM readings_dirty
    WHERE (sensor_id, hour) IN (SELECT sensor_id, hour FROM readings_dirty ORDER BY hour LIMIT %(limit)s
                                FOR UPDATE SKIP LOCKED)
    RETURNING sensor_id, hour
)
SELECT sensor_id, hour FROM taken
"""

RECOMPUTE_SQL = """
WITH d AS (SELECT * FROM unnest(%(sid)s::int[], %(hour)s::timestamptz[]) AS t(sensor_id, hour)),
agg AS (
    SELECT d.sensor_id, d.hour AS bucket, avg(r.value) AS mean, min(r.value) AS min, max(r.value) AS max,
           count(*)::integer AS count, (count(*) FILTER (WHERE r.quality = 0))::integer AS good_count
    FROM d JOIN readings r ON r.sensor_id = d.sensor_id AND r.time >= d.hour AND r.time < d.hour + interval '1 hour'
    GROUP BY d.sensor_id, d.hour
)
INSERT INTO readings_hourly_rollup (sensor_id, bucket, mean, min, max, count, good_count)
SELECT * FROM agg
ON CONFLICT (sensor_id, bucket) DO UPDATE SET mean = EXCLUDED.mean, min = EXCLUDED.min, max = EXCLUDED.max,
    count = EXCLUDED.count, good_count = EXCLUDED.good_count
"""

COMPLIANCE_SQL = """
INSERT INTO compliance_dirty (household_id, day)
SELECT DISTINCT s.household_id, (d.hour AT TIME ZONE %(tz)s)::date
FROM unnest(%(sid)s::int[], %(hour)s::timestamptz[]) AS d(sensor_id, hour)
JOIN sensor s ON s.id = d.sensor_id
WHERE s.household_id IS NOT NULL AND s.metric = 'room_temp'
ON CONFLICT (household_id, day) DO UPDATE SET marked_at = now()
"""


def refresh_rollups(url: str, *, timezone: str = "Asia/Shanghai", limit: int = MAX_MARKS) -> int:
    """Refresh the hourly rollup for dirty hours; returns the number of (sensor, hour) marks consumed."""
    with psycopg.connect(url, autocommit=False) as conn:
        ts = timescaledb_enabled(conn)
        rows = conn.execute(PLAIN_SQL, {"limit": limit}).fetchall()
        if not rows:
            conn.rollback()
            return 0
        params = {"sid": [r[0] for r in rows], "hour": [r[1] for r in rows], "tz": timezone}
        if not ts:
            conn.execute(RECOMPUTE_SQL, params)
        conn.execute(COMPLIANCE_SQL, params)
        if ts:
            # Refresh first, then commit the consumed marks: if the refresh fails the marks come back.
            lo = min(params["hour"])
            hi = max(params["hour"]) + timedelta(hours=1)
            with psycopg.connect(url, autocommit=True) as ac:
                ac.execute("CALL refresh_continuous_aggregate('readings_hourly_cagg', %s::timestamptz, %s::timestamptz)",
                           (lo, hi))
        conn.commit()
    log.debug("rollup: %d dirty (sensor, hour) marks refreshed (timescaledb=%s)", len(rows), ts)
    return len(rows)
