"""Evidence curves and packs through the real database (gaps stay gaps; hashes prove recomputation)."""
from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from analytics.evidence import (EvidenceError, SharedSeriesCache, build_pack, canonical_samples, choose_bucket,
                                household_curve, render_curve, verify_pack_hash)
from analytics.job import run_compliance
from tests.test_analytics_support import add_household, add_substation_sensor, day_series, local, make_site, write_series

D1 = dt.date(2026, 1, 10)
D2 = dt.date(2026, 1, 11)


@pytest.fixture
def curve_db(fresh_db_url):
    with psycopg.connect(fresh_db_url) as conn:
        site = make_site(conn)
        hid = add_household(conn, site, "H1")
        for m in ("supply_temp_2", "return_temp_2", "outdoor_temp"):
            add_substation_sensor(conn, site, m)
        for day, living in ((D1, 19.0), (D2, 17.2)):
            ts = day_series(day)
            write_series(conn, site.sensors[("H1", "living")], ts, living)
            # bedroom: nothing between 06:00 and 09:00 on D1 (a device gap)
            bed_ts = [t for t in ts if not (day == D1 and local(D1, 360) <= t < local(D1, 540))]
            write_series(conn, site.sensors[("H1", "bed1")], bed_ts, 18.5)
            write_series(conn, site.sub_sensors["supply_temp_2"], day_series(day, 15), 55.0)
            write_series(conn, site.sub_sensors["return_temp_2"], day_series(day, 15), 40.0)
            write_series(conn, site.sub_sensors["outdoor_temp"], day_series(day, 15), -2.0)
        conn.execute("INSERT INTO device_gap (device_id, started_at, ended_at, reason) VALUES (%s, %s, %s, 'offline')",
                     (f"th-{site.prefix}-H1-bed1", local(D1, 360), local(D1, 540)))
        conn.execute("INSERT INTO weather_daily VALUES (%s, %s, -2.5, 'official'), (%s, %s, -3.0, 'official')",
                     (site.station, D1, site.station, D2))
        conn.commit()
        run_compliance(conn, D1, D2)
        yield conn, site, hid


@pytest.mark.parametrize("span, bucket", [
    (dt.timedelta(hours=6), 300), (dt.timedelta(days=2), 300), (dt.timedelta(days=3), 1800),
    (dt.timedelta(days=30), 3600), (dt.timedelta(days=92), 14400), (dt.timedelta(days=200), 86400),
])
def test_bucket_from_span(span, bucket):
    assert choose_bucket(span) == bucket


def test_curve_has_gaps_as_none_and_day_verdicts(curve_db):
    conn, site, hid = curve_db
    c = household_curve(conn, hid, local(D1), local(D2 + dt.timedelta(days=1)), bucket_s=1800)
    assert c["range"]["bucket_s"] == 1800 and len(c["times"]) == 96
    bed = next(r for r in c["rooms"] if r["code"] == "bed1")
    living = next(r for r in c["rooms"] if r["code"] == "living")
    # 06:00–09:00 on D1 = buckets 12..17: no samples and a device_gap row → None, never interpolated
    assert bed["mean"][11] == 18.5 and bed["mean"][12:18] == [None] * 6 and bed["mean"][18] == 18.5
    assert living["mean"][12] == 19.0
    assert c["gaps"][0]["reason"] == "offline"
    assert c["substation"]["supply_temp_2"][0] == 55.0 and c["substation"]["return_temp_2"][0] == 40.0
    assert c["outdoor"]["mean_c"][0] == -2.0 and c["outdoor"]["design_c"] == -7.0
    assert [d["status"] for d in c["days"]] == ["compliant", "non_compliant"]
    assert c["days"][1]["refund_ratio"] == pytest.approx(0.10) and c["days"][1]["threshold_c"] == 18.0
    assert c["policy"]["code"] == "tianjin" and "R19" in c["policy"]["citation"]
    import orjson
    orjson.dumps(c)   # JSON-able


def test_shared_series_cache_gives_the_same_curve_and_is_not_edited_by_gaps(curve_db):
    conn, site, hid = curve_db
    start, end = local(D1), local(D2 + dt.timedelta(days=1))
    plain = household_curve(conn, hid, start, end, bucket_s=1800)
    # a substation outage blanks the substation series of this curve only
    conn.execute("INSERT INTO device_gap (device_id, started_at, ended_at, reason) VALUES (%s, %s, %s, 'offline')",
                 (f"{site.prefix}-S01", local(D2, 0), local(D2, 60)))
    cache = SharedSeriesCache(ttl_s=60)
    first = household_curve(conn, hid, start, end, bucket_s=1800, shared=cache)
    second = household_curve(conn, hid, start, end, bucket_s=1800, shared=cache)
    assert (cache.misses, cache.hits) == (1, 1)
    assert first == second and first["rooms"] == plain["rooms"] and first["outdoor"] == plain["outdoor"]
    assert first["substation"]["supply_temp_2"][48:50] == [None, None]               # blanked in the answer …
    assert plain["substation"]["supply_temp_2"][48] == 55.0
    cached_sub, _outdoor = next(iter(cache._items.values()))[1]
    assert cached_sub["supply_temp_2"] == plain["substation"]["supply_temp_2"]      # … not in the cache
    conn.rollback()


def test_shared_series_cache_expires_and_stays_bounded(monkeypatch):
    import analytics.evidence as ev
    clock = [1000.0]
    monkeypatch.setattr(ev.time, "monotonic", lambda: clock[0])
    cache = SharedSeriesCache(ttl_s=30, max_entries=4)
    assert cache.peek(("a",)) is None
    cache.put(("a",), "x")
    assert cache.peek(("a",)) == "x"
    clock[0] += 23
    assert cache.peek(("a",)) == "x"                   # fresh for at least 0.8 × ttl …
    clock[0] += 8
    assert cache.peek(("a",)) is None                  # … and gone after ttl (31 s old)
    assert (cache.hits, cache.misses) == (2, 2)
    for k in range(10):
        cache.put((k,), k)
    assert len(cache._items) <= 4


def test_shared_series_cache_spreads_expiry_of_entries_filled_together(monkeypatch):
    import analytics.evidence as ev
    monkeypatch.setattr(ev.time, "monotonic", lambda: 1000.0)
    cache = SharedSeriesCache(ttl_s=100, max_entries=1000)
    for k in range(200):
        cache.put((k,), k)
    expiries = sorted(exp - 1000.0 for exp, _v in cache._items.values())
    assert 80 <= expiries[0] and expiries[-1] <= 100 and expiries[-1] - expiries[0] > 15


@pytest.mark.parametrize("start, end, message", [
    (local(D2), local(D1), "after"),
    (local(D1), local(D1) + dt.timedelta(days=93), "92"),
])
def test_curve_rejects_bad_ranges(curve_db, start, end, message):
    conn, site, hid = curve_db
    with pytest.raises(EvidenceError, match=message):
        household_curve(conn, hid, start, end)


def test_curve_unknown_household(curve_db):
    conn, _, _ = curve_db
    with pytest.raises(EvidenceError, match="unknown household"):
        household_curve(conn, 999999, local(D1), local(D2))


def test_render_png_svg_and_pack_verify(curve_db, tmp_path):
    conn, site, hid = curve_db
    c = household_curve(conn, hid, local(D1), local(D2 + dt.timedelta(days=1)))
    png = render_curve(c, "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    (tmp_path / "curve.png").write_bytes(png)
    assert b"<svg" in render_curve(c, "svg")[:500]
    pdf, manifest = build_pack(conn, hid, local(D1), local(D2 + dt.timedelta(days=1)))
    assert pdf[:5] == b"%PDF-" and manifest["samples_sha256"].encode() in pdf
    assert manifest["stored_matches_recomputed"] is True
    assert manifest["n_samples"] == 2 * 288 + 2 * 288 - 36
    assert verify_pack_hash(conn, manifest)["ok"] is True
    # one stored sample changes → the pack no longer proves the same data
    conn.execute("UPDATE readings SET value = value - 3 WHERE sensor_id = %s AND time = %s",
                 (site.sensors[("H1", "living")], local(D2, 600)))
    v = verify_pack_hash(conn, manifest)
    assert v["ok"] is False and v["samples_match"] is False
    conn.rollback()


def test_canonical_serialisation_is_order_independent():
    t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    rows = [("b", t, 18.1, 0, 0.0), ("a", t + dt.timedelta(seconds=1), 0.1 + 0.2, 2, 0.5)]
    assert canonical_samples(rows) == canonical_samples(rows[::-1])
    assert canonical_samples(rows).decode().splitlines()[0] == "a\t1767225601000000\t0.30000000000000004\t2\t0.5"


def _syncs(conn: psycopg.Connection, fn) -> int:
    """How many protocol Sync messages (≈ round trips) ``fn()`` sends: libpq's trace of the connection."""
    import tempfile
    with tempfile.TemporaryFile("w+") as f:
        conn.pgconn.trace(f.fileno())
        try:
            fn()
        finally:
            conn.pgconn.untrace()
        f.seek(0)
        return sum(1 for line in f if "\tF\t" in line and line.rstrip().endswith("Sync"))


def test_run_all_answers_as_run_does_in_one_round_trip(curve_db):
    from analytics import queries as Q
    from analytics import store
    conn, site, hid = curve_db
    start, end = local(D1), local(D2 + dt.timedelta(days=1))
    sub_id = Q.household_context(conn, hid)["substation_id"]
    stmts = [Q.household_rooms_stmt(hid), Q.room_buckets_stmt(hid, start, end, 1800, local(D1)),
             Q.household_gaps_stmt(hid, sub_id, start, end), store.room_days_stmt(hid, D1, D2),
             Q.weather_days_stmt(site.station, D1, D2), Q.weather_days_stmt(None, D1, D2)]
    one_by_one = [Q.run(conn, s) for s in stmts]
    together: list = []
    assert _syncs(conn, lambda: together.extend(Q.run_all(conn, stmts))) == 1
    assert together == one_by_one and all(one_by_one[:5]) and one_by_one[5] == []
    with pytest.raises(psycopg.errors.UndefinedTable):          # an error surfaces, the rest is not half-read
        Q.run_all(conn, [stmts[0], Q.Statement("SELECT * FROM no_such_table", ())])
    conn.rollback()
    assert Q.run_all(conn, stmts[:1]) == one_by_one[:1]


def test_curve_reads_in_two_round_trips_cached_or_not(curve_db):
    conn, site, hid = curve_db
    start, end = local(D1), local(D2 + dt.timedelta(days=1))
    cache = SharedSeriesCache(ttl_s=60)
    curves: list = []
    for _ in range(2):                    # a miss of the shared series, then a hit: household context + one batch
        assert _syncs(conn, lambda: curves.append(household_curve(conn, hid, start, end, shared=cache))) == 2
    assert (cache.misses, cache.hits) == (1, 1) and curves[0] == curves[1]
    assert _syncs(conn, lambda: household_curve(conn, hid, start, end)) == 2
