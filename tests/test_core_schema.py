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


def test_plain_path_key_covers_value_and_quality_for_index_only_curves(db):
    """A new plain-PostgreSQL database gets UNIQUE (sensor_id, time) INCLUDE (value, quality): the curve's
    and the verdicts' scans of one sensor then never touch the scattered heap pages (issue 6)."""
    definition = db.execute("SELECT pg_get_indexdef('readings_sensor_time_key'::regclass)").fetchone()[0]
    if timescaledb_available(db):
        # per-sensor compression gives that path its locality; its key stays plain
        assert "INCLUDE" not in definition, definition
        return
    assert definition.endswith("(sensor_id, \"time\") INCLUDE (value, quality)"), definition
    db.execute("INSERT INTO readings (time, sensor_id, value) SELECT '2026-11-20T00:00Z'::timestamptz "
               "+ make_interval(mins => g), 999002, 18 FROM generate_series(1, 2000) g")
    db.execute("ANALYZE readings")
    db.execute("SET LOCAL enable_seqscan = off")
    db.execute("SET LOCAL enable_bitmapscan = off")
    plan = "\n".join(r[0] for r in db.execute(
        "EXPLAIN SELECT avg(value) FROM readings WHERE sensor_id = 999002 AND quality = 0 "
        "AND time >= '2026-11-20T00:00Z' AND time < '2026-11-21T00:00Z'").fetchall())
    assert "Index Only Scan using readings_sensor_time_key" in plan, plan


def test_filled_table_keeps_its_key_with_a_notice(fresh_db_url):
    """Rebuilding the key of a filled table would lock ingest: apply_schema leaves it and says so."""
    import psycopg
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE readings DROP CONSTRAINT readings_sensor_time_key, "
                     "ADD CONSTRAINT readings_sensor_time_key UNIQUE (sensor_id, time)")
        conn.execute("INSERT INTO readings (time, sensor_id, value) VALUES (now(), 1, 18)")
    apply_schema(fresh_db_url)
    with psycopg.connect(fresh_db_url) as conn:
        definition = conn.execute("SELECT pg_get_indexdef('readings_sensor_time_key'::regclass)").fetchone()[0]
    assert "INCLUDE" not in definition
