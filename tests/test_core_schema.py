"""The schema applies idempotently and the plain-PostgreSQL path has its rollup surface."""
from __future__ import annotations

from core.db import apply_schema, timescaledb_available


def test_schema_applies_twice_and_records_version(fresh_db_url):
    first = apply_schema(fresh_db_url)
    second = apply_schema(fresh_db_url)
    assert first == second
    assert first["version"] >= 1


def test_readings_unique_key_dedupes(db):
    db.execute("INSERT INTO readings (time, sensor_id, value) VALUES ('2026-11-20T00:00Z', 999001, 18.5)")
    db.execute("INSERT INTO readings (time, sensor_id, value) VALUES ('2026-11-20T00:00Z', 999001, 18.5) "
               "ON CONFLICT DO NOTHING")
    n = db.execute("SELECT count(*) FROM readings WHERE sensor_id = 999001").fetchone()[0]
    assert n == 1


def test_hourly_view_exists_on_either_path(db):
    has_ts = timescaledb_available(db)
    kind = db.execute("SELECT relkind FROM pg_class WHERE relname = 'readings_hourly'").fetchone()[0]
    assert kind == "v"
    rollup_backing = db.execute("SELECT pg_get_viewdef('readings_hourly')").fetchone()[0]
    assert ("readings_hourly_cagg" in rollup_backing) == has_ts
