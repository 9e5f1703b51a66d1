"""Database side of compliance: load samples and context, upsert compliance_day (SQL lives here).

The numbers are computed by analytics/compliance.py (pure numpy); this module only feeds it and
stores its output. Readings are fetched with ``COPY … TO STDOUT (FORMAT binary)`` and decoded with
one ``np.frombuffer`` (fixed-width tuples), so loading a season of 5-minute samples stays fast.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import psycopg
from psycopg import sql

from analytics.policy import PolicyTable, default_table
from analytics.queries import Statement, run

log = logging.getLogger(__name__)

_PG_EPOCH_US = 946_684_800_000_000   # 2000-01-01 in Unix µs (timestamptz binary epoch)


def code_version() -> str:
    """Version of the compliance code: release tag + sha256 prefix of the core and policy modules.

    Stored in every compliance_day row and evidence pack, so a changed rule implementation is
    visible even when the release tag was not bumped.
    """
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in ("compliance.py", "policy.py", "store.py", "job.py"):
        h.update((here / name).read_bytes())
    return "analytics-1.0+" + h.hexdigest()[:12]


# ------------------------------------------------------------------------------------- context


@dataclass
class HouseholdInfo:
    id: int
    code: str
    region_code: str
    heating_status: str
    billing_method: str
    placement_class: str
    area_m2: float
    station_code: str | None
    design_outdoor_c: float | None
    substation_id: int


@dataclass
class RoomInfo:
    id: int
    household_id: int
    code: str
    room_type: str
    area_m2: float | None
    counts: bool


_HOUSEHOLD_SQL = """
SELECT h.id, h.code, co.region_code, h.heating_status, h.billing_method, h.placement_class, h.area_m2,
       ws.code AS station_code, ws.design_outdoor_temp_c, s.id AS substation_id
  FROM household h
  JOIN unit u ON u.id = h.unit_id
  JOIN building b ON b.id = u.building_id
  JOIN community c ON c.id = b.community_id
  JOIN substation s ON s.id = c.substation_id
  JOIN branch br ON br.id = s.branch_id
  JOIN company co ON co.id = br.company_id
  LEFT JOIN weather_station ws ON ws.code = s.weather_station_code
"""


def load_households(conn: psycopg.Connection, household_ids: Sequence[int] | None = None,
                    codes: Sequence[str] | None = None) -> list[HouseholdInfo]:
    """Households with the context compliance needs (region, 报停, billing, design outdoor ℃)."""
    where, params = [], []
    if household_ids is not None:
        where.append("h.id = ANY(%s)")
        params.append(list(household_ids))
    if codes is not None:
        where.append("h.code = ANY(%s)")
        params.append(list(codes))
    q = _HOUSEHOLD_SQL + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY h.id"
    return [HouseholdInfo(*row) for row in conn.execute(q, params).fetchall()]


def load_rooms(conn: psycopg.Connection, household_ids: Sequence[int]) -> list[RoomInfo]:
    """Counted rooms (R4) that have at least one room thermometer (sensor.room_id), by household."""
    rows = conn.execute("""
        SELECT r.id, r.household_id, r.code, r.room_type, r.area_m2, r.counts_for_compliance
          FROM room r
         WHERE r.household_id = ANY(%s) AND r.counts_for_compliance
           AND EXISTS (SELECT 1 FROM sensor s WHERE s.room_id = r.id AND s.metric = 'room_temp')
         ORDER BY r.household_id, r.id""", (list(household_ids),)).fetchall()
    return [RoomInfo(*row) for row in rows]


def load_weather(conn: psycopg.Connection, station_codes: Iterable[str], day_from: dt.date,
                 day_to: dt.date) -> dict[tuple[str, dt.date], tuple[float, str]]:
    """Official (or sensor) daily outdoor means: {(station, day): (mean ℃, source)} (R6)."""
    rows = conn.execute("""
        SELECT station_code, day, mean_c, source FROM weather_daily
         WHERE station_code = ANY(%s) AND day BETWEEN %s AND %s""",
                        (list(set(station_codes)), day_from, day_to)).fetchall()
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


def load_user_caused(conn: psycopg.Connection, household_ids: Sequence[int], day_from: dt.date,
                     day_to: dt.date, tz: str) -> dict[int, list[tuple[dt.date, dt.date]]]:
    """R10: per household, [first, last] local days covered by a ticket with a user-caused finding.

    A finding covers the days from the ticket's report until it is closed (the cause was removed);
    an open ticket covers up to ``day_to``.
    """
    rows = conn.execute("""
        SELECT household_id, (reported_at AT TIME ZONE %s)::date,
               coalesce((closed_at AT TIME ZONE %s)::date, %s::date)
          FROM ticket
         WHERE user_caused IS NOT NULL AND user_caused <> '' AND household_id = ANY(%s)
           AND (reported_at AT TIME ZONE %s)::date <= %s
           AND (closed_at IS NULL OR (closed_at AT TIME ZONE %s)::date >= %s)""",
                        (tz, tz, day_to, list(household_ids), tz, day_to, tz, day_from)).fetchall()
    out: dict[int, list[tuple[dt.date, dt.date]]] = {}
    for hid, a, b in rows:
        out.setdefault(hid, []).append((a, b))
    return out


# ------------------------------------------------------------------------------------- samples

@dataclass
class Samples:
    """Room-temperature samples sorted by (room, time). time: epoch s; value ℃ raw; offset ℃ (R18)."""

    room_id: np.ndarray
    t: np.ndarray
    value: np.ndarray
    quality: np.ndarray
    offset: np.ndarray

    def __len__(self) -> int:
        return int(self.t.size)


class _BinReader:
    """Minimal reader of PostgreSQL binary COPY tuples (int4, timestamptz[], float8[], int2[] columns)."""

    _ELEM = {kind: np.dtype([("len", ">i4"), ("x", ">" + kind)]) for kind in ("i8", "f8", "i2")}

    def __init__(self, buf: bytes):
        if buf[:11] != b"PGCOPY\n\xff\r\n\x00":
            raise ValueError("not a PostgreSQL binary COPY stream")
        self.buf = memoryview(buf)
        self.pos = 19 + int.from_bytes(buf[15:19], "big")

    def _i(self, n: int) -> int:
        v = int.from_bytes(self.buf[self.pos:self.pos + n], "big", signed=True)
        self.pos += n
        return v

    def rows(self):
        while True:
            nf = self._i(2)
            if nf == -1:
                return
            yield [self._field() for _ in range(nf)]

    def _field(self):
        n = self._i(4)
        if n == -1:
            return None
        start = self.pos
        self.pos += n
        return self.buf[start:start + n]

    @classmethod
    def array(cls, field, kind: str) -> np.ndarray:
        """Elements of a one-dimensional array without NULLs: kind 'i8' (timestamptz), 'f8', 'i2'."""
        b = bytes(field)
        ndim = int.from_bytes(b[0:4], "big")
        if ndim == 0:
            return np.zeros(0, dtype={"i8": np.int64, "f8": np.float64, "i2": np.int16}[kind])
        if ndim != 1 or int.from_bytes(b[4:8], "big") != 0:
            raise ValueError("expected a one-dimensional array without NULLs")
        n = int.from_bytes(b[12:16], "big")
        return np.frombuffer(b, dtype=cls._ELEM[kind], count=n, offset=20)["x"]


def load_room_samples(conn: psycopg.Connection, room_ids: Sequence[int], start: dt.datetime,
                      end: dt.datetime) -> Samples:
    """Room-temperature samples of ``room_ids`` with start ≤ time < end, sorted by (room, time).

    One row per sensor comes back through a binary COPY with the samples as arrays (the readings are
    read in (sensor_id, time) index order, so PostgreSQL does not sort); the arrays are decoded with
    np.frombuffer. Per-row transfer cost ~1.5 µs in Python, this ~0.05 µs. The calibration offset is
    the sensor's when the sample lies in its validity window (NULL bounds unbounded), else 0 (R18).
    All quality codes are returned; the core keeps quality 0 only.
    """
    sensors = conn.execute("""SELECT id, room_id, calibration_offset, calibration_valid_from, calibration_valid_to
                                FROM sensor WHERE metric = 'room_temp' AND room_id = ANY(%s)""",
                           (list(int(r) for r in room_ids),)).fetchall()
    empty = Samples(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0, np.int16), np.zeros(0))
    if not sensors:
        return empty
    meta = {s[0]: s for s in sensors}
    q = sql.SQL("""
        COPY (SELECT sensor_id, array_agg(time), array_agg(value), array_agg(quality)
                FROM (SELECT sensor_id, time, value, quality FROM readings
                       WHERE sensor_id = ANY({sids}) AND time >= {start} AND time < {end}
                       ORDER BY sensor_id, time) o
               GROUP BY sensor_id) TO STDOUT (FORMAT binary)""").format(
        sids=sql.Literal(sorted(meta)), start=sql.Literal(start), end=sql.Literal(end))
    chunks = []
    with conn.cursor() as cur:
        with cur.copy(q) as copy:
            for data in copy:
                chunks.append(bytes(data))
    parts = []
    for sid_f, t_f, v_f, q_f in _BinReader(b"".join(chunks)).rows():
        sid = int.from_bytes(bytes(sid_f), "big", signed=True)
        t = (_BinReader.array(t_f, "i8").astype(np.int64) + _PG_EPOCH_US) / 1e6
        v = _BinReader.array(v_f, "f8").astype(np.float64)
        qq = _BinReader.array(q_f, "i2").astype(np.int16)
        if t.size > 1 and not (np.diff(t) >= 0).all():      # the aggregate kept input order; verify it
            o = np.argsort(t, kind="stable")
            t, v, qq = t[o], v[o], qq[o]
        _, room_id, off, vf, vt = meta[sid]
        o_arr = np.full(t.size, float(off))
        if vf is not None:
            o_arr[t < vf.timestamp()] = 0.0
        if vt is not None:
            o_arr[t >= vt.timestamp()] = 0.0
        parts.append((room_id, sid, t, v, qq, o_arr))
    if not parts:
        return empty
    parts.sort(key=lambda p: (p[0], p[1]))
    room = np.concatenate([np.full(p[2].size, p[0], dtype=np.int64) for p in parts])
    t = np.concatenate([p[2] for p in parts])
    v = np.concatenate([p[3] for p in parts])
    qq = np.concatenate([p[4] for p in parts])
    o_arr = np.concatenate([p[5] for p in parts])
    rooms_seen = [p[0] for p in parts]
    if len(set(rooms_seen)) != len(rooms_seen):     # several thermometers in one room: merge by time
        o = np.lexsort((t, room))
        room, t, v, qq, o_arr = room[o], t[o], v[o], qq[o], o_arr[o]
    return Samples(room_id=room, t=t, value=v, quality=qq, offset=o_arr)


# ------------------------------------------------------------------------------------- writing


#: Columns written per room/day, in this order (rows are tuples: the job builds millions of them).
DAY_COLUMNS = ("household_id", "room_id", "day", "mean_c", "min_c", "max_c", "stat_c", "threshold_c",
               "minutes_below", "degree_hours_below", "coverage", "status", "reason", "refund_ratio",
               "policy_code", "policy_version", "code_version", "n_samples", "statistic", "placement_class")


def upsert_days(conn: psycopg.Connection, rows: list[tuple], computed_at: dt.datetime) -> int:
    """Idempotent upsert of compliance_day rows (tuples in DAY_COLUMNS order).

    COPY into a temp table, then INSERT … ON CONFLICT DO UPDATE: a recompute replaces the verdict,
    the policy version and the code version of the same (household, room, day).
    """
    if not rows:
        return 0
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS _cd_load (LIKE compliance_day INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    conn.execute("TRUNCATE _cd_load")
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in DAY_COLUMNS)
    with conn.cursor() as cur:
        with cur.copy(sql.SQL("COPY _cd_load ({}) FROM STDIN").format(cols)) as copy:
            for r in rows:
                copy.write_row(r)
    updates = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
                                 for c in DAY_COLUMNS if c not in ("household_id", "room_id", "day"))
    conn.execute(sql.SQL("""
        INSERT INTO compliance_day ({cols}, computed_at) SELECT {cols}, %s FROM _cd_load
        ON CONFLICT (household_id, room_id, day) DO UPDATE SET {updates}, computed_at = EXCLUDED.computed_at
    """).format(cols=cols, updates=updates), (computed_at,))
    return len(rows)


def delete_days(conn: psycopg.Connection, household_ids: Sequence[int], day_from: dt.date, day_to: dt.date,
                keep_rooms: Sequence[int]) -> int:
    """Remove rows of rooms that no longer count (room re-typed, sensor removed) in the recomputed range."""
    cur = conn.execute("""DELETE FROM compliance_day WHERE household_id = ANY(%s) AND day BETWEEN %s AND %s
                          AND NOT (room_id = ANY(%s))""", (list(household_ids), day_from, day_to, list(keep_rooms)))
    return cur.rowcount


def mirror_policies(conn: psycopg.Connection, table: PolicyTable | None = None) -> int:
    """Copy the policy table into region_policy (C1) so SQL readers see the same numbers."""
    table = table or default_table()
    n = 0
    for p in table.all():
        conn.execute("""
            INSERT INTO region_policy (code, version, name, effective_from, effective_to, threshold_c, body, digest)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (code, version) DO UPDATE SET name = EXCLUDED.name, effective_from = EXCLUDED.effective_from,
              effective_to = EXCLUDED.effective_to, threshold_c = EXCLUDED.threshold_c, body = EXCLUDED.body,
              digest = EXCLUDED.digest, loaded_at = now()""",
                     (p.code, p.version, p.name, p.effective_from, p.effective_to, p.threshold_c,
                      json.dumps(p.to_dict(), ensure_ascii=False), table.digest))
        n += 1
    return n


# ------------------------------------------------------------------------------------- dirty queue


def take_dirty(conn: psycopg.Connection, before_day: dt.date, limit: int = 5000
               ) -> tuple[dict[int, list[dt.date]], dt.datetime]:
    """Dirty (household, day) marks for complete days (day < ``before_day``), oldest first.

    Returns the marks and the snapshot time; ``clear_dirty`` later deletes only marks not re-marked
    since (marked_at ≤ snapshot), so late data arriving during a recompute is not lost.
    """
    snap = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    rows = conn.execute("""SELECT household_id, day FROM compliance_dirty WHERE day < %s
                           ORDER BY marked_at, household_id, day LIMIT %s""", (before_day, limit)).fetchall()
    out: dict[int, list[dt.date]] = {}
    for hid, day in rows:
        out.setdefault(hid, []).append(day)
    return out, snap


def clear_dirty(conn: psycopg.Connection, marks: dict[int, list[dt.date]], snapshot: dt.datetime) -> int:
    hids = [h for h, days in marks.items() for _ in days]
    days = [d for _, ds in marks.items() for d in ds]
    if not hids:
        return 0
    cur = conn.execute("""DELETE FROM compliance_dirty c USING unnest(%s::int[], %s::date[]) AS m(h, d)
                          WHERE c.household_id = m.h AND c.day = m.d AND c.marked_at <= %s""",
                       (hids, days, snapshot))
    return cur.rowcount


def mark_dirty(conn: psycopg.Connection, household_id: int, days: Iterable[dt.date]) -> None:
    """Mark days for recomputation (ticketing calls this after a user-caused finding, R10)."""
    conn.execute("""INSERT INTO compliance_dirty (household_id, day) SELECT %s, d FROM unnest(%s::date[]) d
                    ON CONFLICT (household_id, day) DO UPDATE SET marked_at = now()""",
                 (household_id, list(days)))


def record_run(conn: psycopg.Connection, *, kind: str, day_from: dt.date | None, day_to: dt.date | None,
               started_at: dt.datetime, households: int, room_days: int, counts: dict, policy_digest: str) -> int:
    row = conn.execute("""
        INSERT INTO compliance_run (started_at, finished_at, kind, day_from, day_to, households, room_days, counts,
                                    code_version, policy_digest)
        VALUES (%s, clock_timestamp(), %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
                       (started_at, kind, day_from, day_to, households, room_days, json.dumps(counts),
                        code_version(), policy_digest)).fetchone()
    return row[0]


# ------------------------------------------------------------------------------------- readers (contract)


def household_days(conn: psycopg.Connection, household_id: int, day_from: dt.date, day_to: dt.date) -> list[dict]:
    """Household/day verdicts (view compliance_household_day) for ticketing, dunning and the API."""
    return run(conn, household_days_stmt(household_id, day_from, day_to))


def household_days_stmt(household_id: int, day_from: dt.date, day_to: dt.date) -> Statement:
    return Statement("""SELECT household_id, day, status, worst_stat_c, refund_ratio, min_coverage
                          FROM compliance_household_day WHERE household_id = %s AND day BETWEEN %s AND %s
                         ORDER BY day""", (household_id, day_from, day_to), dicts=True)


def room_days(conn: psycopg.Connection, household_id: int, day_from: dt.date, day_to: dt.date) -> list[dict]:
    """Per room/day rows of compliance_day, with the room code and type."""
    return run(conn, room_days_stmt(household_id, day_from, day_to))


def room_days_stmt(household_id: int, day_from: dt.date, day_to: dt.date) -> Statement:
    return Statement("""
            SELECT cd.*, r.code AS room_code, r.room_type, r.area_m2 AS room_area_m2
              FROM compliance_day cd JOIN room r ON r.id = cd.room_id
             WHERE cd.household_id = %s AND cd.day BETWEEN %s AND %s ORDER BY cd.day, r.code""",
                     (household_id, day_from, day_to), dicts=True)


__all__ = ["code_version", "HouseholdInfo", "RoomInfo", "Samples", "DAY_COLUMNS", "load_households", "load_rooms",
           "load_weather", "load_user_caused", "load_room_samples", "upsert_days", "delete_days",
           "mirror_policies", "take_dirty", "clear_dirty", "mark_dirty", "record_run", "household_days", "room_days"]
