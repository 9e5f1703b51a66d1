"""Read-only queries for evidence curves, diagnosis, substation KPIs and refunds (SQL lives here).

Series are aggregated from ``readings`` with quality 0 only (and the room thermometer's calibration
offset, R18), not from ``readings_hourly``: the hourly view's mean includes non-good samples, and
evidence must show exactly what compliance counted.
"""
from __future__ import annotations

import datetime as dt
from typing import NamedTuple, Sequence

import psycopg
from psycopg.rows import dict_row

_OFFSET = """CASE WHEN (s.calibration_valid_from IS NULL OR r.time >= s.calibration_valid_from)
                   AND (s.calibration_valid_to IS NULL OR r.time < s.calibration_valid_to)
                  THEN s.calibration_offset ELSE 0 END"""


class Statement(NamedTuple):
    """A read statement not yet sent: several go to the server in one round trip with run_all."""
    sql: str
    params: tuple
    dicts: bool = False           # rows as dicts (dict_row) rather than tuples


def run(conn: psycopg.Connection, stmt: Statement) -> list:
    """The statement's rows."""
    with conn.cursor(row_factory=dict_row) if stmt.dicts else conn.cursor() as cur:
        return cur.execute(stmt.sql, stmt.params).fetchall()


def run_all(conn: psycopg.Connection, stmts: Sequence[Statement]) -> list[list]:
    """Each statement's rows, all sent in one go (psycopg's pipeline mode, one Sync at the end).

    Why: an evidence curve needs half a dozen small independent reads. One after another they cost a
    round trip each, and under load each round trip is also a wait for the GIL when the response comes
    back (measured: the curve handler spent most of its samples in psycopg's wait, not in the server).
    The server runs them in order either way, in the caller's transaction."""
    with conn.pipeline():
        curs = [(conn.cursor(row_factory=dict_row) if s.dicts else conn.cursor()).execute(s.sql, s.params)
                for s in stmts]
    out = [c.fetchall() for c in curs]
    for c in curs:
        c.close()
    return out


def household_context(conn: psycopg.Connection, household_id: int) -> dict | None:
    """Household with its place in the network, region, weather station and design values."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("""
            SELECT h.id, h.code, h.floor, h.area_m2, h.heating_status, h.billing_method, h.placement_class,
                   u.id AS unit_id, u.code AS unit_code, b.id AS building_id, b.code AS building_code, b.floors,
                   s.id AS substation_id, s.code AS substation_code, s.name AS substation_name, s.heating_type,
                   s.design_supply_c, s.design_return_c, s.design_flow_m3h, co.region_code, co.code AS company_code,
                   ws.code AS station_code, ws.design_outdoor_temp_c
              FROM household h JOIN unit u ON u.id = h.unit_id JOIN building b ON b.id = u.building_id
              JOIN community c ON c.id = b.community_id JOIN substation s ON s.id = c.substation_id
              JOIN branch br ON br.id = s.branch_id JOIN company co ON co.id = br.company_id
              LEFT JOIN weather_station ws ON ws.code = s.weather_station_code
             WHERE h.id = %s""", (household_id,)).fetchone()


def household_id_by_code(conn: psycopg.Connection, code: str) -> int | None:
    row = conn.execute("SELECT id FROM household WHERE code = %s", (code,)).fetchone()
    return row[0] if row else None


def substation_context(conn: psycopg.Connection, substation_id: int) -> dict | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("""
            SELECT s.id, s.code, s.name, s.heating_type, s.design_supply_c, s.design_return_c, s.design_flow_m3h,
                   co.region_code, ws.code AS station_code, ws.design_outdoor_temp_c
              FROM substation s JOIN branch br ON br.id = s.branch_id JOIN company co ON co.id = br.company_id
              LEFT JOIN weather_station ws ON ws.code = s.weather_station_code WHERE s.id = %s""",
                           (substation_id,)).fetchone()


def household_rooms_stmt(household_id: int) -> Statement:
    """Rooms with their room thermometers (sensor ids and device ids)."""
    return Statement("""
            SELECT r.id, r.code, r.room_type, r.area_m2, r.counts_for_compliance,
                   coalesce(array_agg(s.id ORDER BY s.id) FILTER (WHERE s.id IS NOT NULL), '{}') AS sensor_ids,
                   coalesce(array_agg(DISTINCT s.device_id) FILTER (WHERE s.id IS NOT NULL), '{}') AS device_ids
              FROM room r LEFT JOIN sensor s ON s.room_id = r.id AND s.metric = 'room_temp'
             WHERE r.household_id = %s GROUP BY r.id ORDER BY r.id""", (household_id,), dicts=True)


def room_buckets_stmt(household_id: int, start: dt.datetime, end: dt.datetime, bucket_s: int,
                      origin: dt.datetime) -> Statement:
    """(room_id, bucket start, mean ℃, min ℃, max ℃, n) of valid samples, offset applied."""
    return Statement(f"""
        SELECT s.room_id, date_bin(make_interval(secs => %s), r.time, %s) AS bucket,
               avg(r.value + {_OFFSET}), min(r.value + {_OFFSET}), max(r.value + {_OFFSET}), count(*)
          FROM readings r JOIN sensor s ON s.id = r.sensor_id
         WHERE s.household_id = %s AND s.metric = 'room_temp' AND s.room_id IS NOT NULL AND r.quality = 0
           AND r.time >= %s AND r.time < %s
         GROUP BY 1, 2 ORDER BY 1, 2""", (bucket_s, origin, household_id, start, end))


def substation_buckets(conn: psycopg.Connection, substation_id: int, metrics: Sequence[str], start: dt.datetime,
                       end: dt.datetime, bucket_s: int, origin: dt.datetime) -> list[tuple]:
    """(metric, bucket start, mean, min, max, n) of good samples of the substation's points."""
    return run(conn, substation_buckets_stmt(substation_id, metrics, start, end, bucket_s, origin))


def substation_buckets_stmt(substation_id: int, metrics: Sequence[str], start: dt.datetime, end: dt.datetime,
                            bucket_s: int, origin: dt.datetime) -> Statement:
    return Statement("""
        SELECT s.metric, date_bin(make_interval(secs => %s), r.time, %s) AS bucket,
               avg(r.value), min(r.value), max(r.value), count(*)
          FROM readings r JOIN sensor s ON s.id = r.sensor_id
         WHERE s.substation_id = %s AND s.metric = ANY(%s) AND r.quality = 0 AND r.time >= %s AND r.time < %s
         GROUP BY 1, 2 ORDER BY 1, 2""", (bucket_s, origin, substation_id, list(metrics), start, end))


def outdoor_buckets_stmt(substation_id: int, station_code: str | None, start: dt.datetime, end: dt.datetime,
                         bucket_s: int, origin: dt.datetime) -> Statement:
    """(bucket, mean ℃) of outdoor thermometers at the substation or the weather station."""
    return Statement("""
        SELECT date_bin(make_interval(secs => %s), r.time, %s) AS bucket, avg(r.value)
          FROM readings r JOIN sensor s ON s.id = r.sensor_id
         WHERE s.metric = 'outdoor_temp' AND (s.substation_id = %s OR s.weather_station_code = %s)
           AND r.quality = 0 AND r.time >= %s AND r.time < %s
         GROUP BY 1 ORDER BY 1""", (bucket_s, origin, substation_id, station_code, start, end))


def weather_days_stmt(station_code: str | None, day_from: dt.date, day_to: dt.date) -> Statement:
    """Daily outdoor means of the station (no rows without a station)."""
    return Statement("""SELECT day, mean_c, source FROM weather_daily WHERE station_code = %s
                        AND day BETWEEN %s AND %s ORDER BY day""", (station_code, day_from, day_to), dicts=True)


def household_gaps_stmt(household_id: int, substation_id: int, start: dt.datetime, end: dt.datetime) -> Statement:
    """Known device outages overlapping [start, end) (an open gap has ended_at NULL) of the household's
    room thermometers and of its substation's devices: (device_id, started_at, ended_at, reason).
    By household id, so it needs no earlier read of the rooms and goes in the curve's one round trip."""
    return Statement("""SELECT device_id, started_at, ended_at, reason FROM device_gap
                         WHERE device_id IN (SELECT device_id FROM sensor
                                              WHERE (household_id = %s AND metric = 'room_temp' AND room_id IS NOT NULL)
                                                 OR substation_id = %s)
                           AND started_at < %s AND (ended_at IS NULL OR ended_at > %s)
                         ORDER BY started_at""", (household_id, substation_id, end, start), dicts=True)


def raw_room_samples(conn: psycopg.Connection, household_id: int, start: dt.datetime, end: dt.datetime) -> list[tuple]:
    """Every stored room sample of the household in [start, end) — all qualities — for the evidence hash:
    (sensor key, time, value, quality, offset applied), ordered by (key, time)."""
    return conn.execute(f"""
        SELECT s.key, r.time, r.value, r.quality, {_OFFSET}
          FROM readings r JOIN sensor s ON s.id = r.sensor_id
         WHERE s.household_id = %s AND s.metric = 'room_temp' AND r.time >= %s AND r.time < %s
         ORDER BY s.key, r.time""", (household_id, start, end)).fetchall()


def substation_households(conn: psycopg.Connection, substation_id: int) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("""
            SELECT h.id, h.code, h.floor, h.placement_class, h.heating_status, u.id AS unit_id, b.id AS building_id
              FROM household h JOIN unit u ON u.id = h.unit_id JOIN building b ON b.id = u.building_id
              JOIN community c ON c.id = b.community_id WHERE c.substation_id = %s ORDER BY h.id""",
                           (substation_id,)).fetchall()


def household_daily_means(conn: psycopg.Connection, household_ids: Sequence[int], start: dt.datetime,
                          end: dt.datetime) -> dict[int, tuple[float, int]]:
    """Mean ℃ of valid counted-room samples per household over [start, end): {id: (mean, n)}."""
    rows = conn.execute(f"""
        SELECT s.household_id, avg(r.value + {_OFFSET}), count(*)
          FROM readings r JOIN sensor s ON s.id = r.sensor_id JOIN room rm ON rm.id = s.room_id
         WHERE s.household_id = ANY(%s) AND s.metric = 'room_temp' AND rm.counts_for_compliance AND r.quality = 0
           AND r.time >= %s AND r.time < %s GROUP BY 1""", (list(household_ids), start, end)).fetchall()
    return {r[0]: (float(r[1]), int(r[2])) for r in rows}


def household_hourly_means(conn: psycopg.Connection, household_ids: Sequence[int], start: dt.datetime,
                           end: dt.datetime) -> list[tuple]:
    """(household_id, hour, mean ℃) of valid counted-room samples (for correlation with neighbours)."""
    return conn.execute(f"""
        SELECT s.household_id, date_trunc('hour', r.time), avg(r.value + {_OFFSET})
          FROM readings r JOIN sensor s ON s.id = r.sensor_id JOIN room rm ON rm.id = s.room_id
         WHERE s.household_id = ANY(%s) AND s.metric = 'room_temp' AND rm.counts_for_compliance AND r.quality = 0
           AND r.time >= %s AND r.time < %s GROUP BY 1, 2 ORDER BY 1, 2""",
                        (list(household_ids), start, end)).fetchall()


def substation_compliance_counts(conn: psycopg.Connection, substation_id: int, day_from: dt.date,
                                 day_to: dt.date) -> list[dict]:
    """Household/day status counts by placement class (R17, R20) for households served by the substation."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("""
            SELECT h.placement_class, v.status, count(*) AS n
              FROM compliance_household_day v JOIN household h ON h.id = v.household_id
              JOIN unit u ON u.id = h.unit_id JOIN building b ON b.id = u.building_id
              JOIN community c ON c.id = b.community_id
             WHERE c.substation_id = %s AND v.day BETWEEN %s AND %s
             GROUP BY 1, 2""", (substation_id, day_from, day_to)).fetchall()


def stoppage_days_many(conn: psycopg.Connection, household_ids: Sequence[int], day_from: dt.date,
                       day_to: dt.date, tz: str) -> dict[int, list[dt.date]]:
    """household → sorted local days in [day_from, day_to] on which a supplier-side outage (ticket
    type 'incident' linked to the household's substation, unit or building, or to the household)
    was open; households without such a day are absent. An incident still open runs to ``day_to``;
    a cancelled one never happened. 报停 households (heating_status 'stopped', R29) are left out: they
    expect no heat, so an outage takes nothing from them (compliance exempts them the same way, and
    ticketing links only heated households to an incident). Used only as the default source of
    stoppage days for refunds; callers may pass their own (R25 is computed by policy upstream).

    Set-based for any number of households (dunning asks for 5 000 at a time), in two queries: the
    incidents overlapping the window (few rows), then — only if there are any — the households of
    the batch they reach, by equality on the network keys. One SQL joining households to incidents
    on an OR of four keys made PostgreSQL estimate a cost high enough to JIT-compile it for every
    batch (~0.5 s each, even with no incident at all).
    """
    ids = sorted(set(household_ids))
    if not ids:
        return {}
    incidents = [r for r in conn.execute("""
        SELECT household_id, unit_id, building_id, substation_id,
               greatest((reported_at AT TIME ZONE %(tz)s)::date, %(d0)s::date),
               least(coalesce((closed_at AT TIME ZONE %(tz)s)::date, %(d1)s::date), %(d1)s::date)
          FROM ticket
         WHERE type = 'incident' AND status <> 'cancelled'
           AND (reported_at AT TIME ZONE %(tz)s)::date <= %(d1)s::date
           AND (closed_at IS NULL OR (closed_at AT TIME ZONE %(tz)s)::date >= %(d0)s::date)""",
                                         {"tz": tz, "d0": day_from, "d1": day_to}).fetchall() if r[4] <= r[5]]
    if not incidents:
        return {}
    # network key (0 household, 1 unit, 2 building, 3 substation) → value → [(first day, last day)]
    spans: list[dict[int, list[tuple[dt.date, dt.date]]]] = [{}, {}, {}, {}]
    for row in incidents:
        for k in range(4):
            if row[k] is not None:
                spans[k].setdefault(row[k], []).append((row[4], row[5]))
    out: dict[int, list[dt.date]] = {}
    for hid, *keys in conn.execute("""
            SELECT h.id, h.unit_id, u.building_id, c.substation_id
              FROM household h JOIN unit u ON u.id = h.unit_id JOIN building b ON b.id = u.building_id
              JOIN community c ON c.id = b.community_id
             WHERE h.id = ANY(%s) AND h.heating_status <> 'stopped'
               AND (h.id = ANY(%s) OR h.unit_id = ANY(%s) OR u.building_id = ANY(%s) OR c.substation_id = ANY(%s))""",
                                   (ids, *[list(spans[k]) for k in range(4)])).fetchall():
        days: set[dt.date] = set()
        for k, value in enumerate([hid, *keys]):
            for first, last in spans[k].get(value, ()):
                days.update(first + dt.timedelta(days=n) for n in range((last - first).days + 1))
        out[hid] = sorted(days)
    return out
