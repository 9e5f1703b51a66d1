"""Writer: one batch → one durable transaction → then the acks.

In ONE transaction:
  1. register sensor keys seen for the first time (link household/room/substation by code when
     those rows exist), cache key → id — the cache is updated only after COMMIT;
  2. COPY (binary) the readings into a temp staging table, then
     ``INSERT INTO readings SELECT ... ON CONFLICT DO NOTHING`` (QoS 1 is at-least-once: the
     database deduplicates, paho.mqtt.python#733);
  3. mark (sensor, hour) in readings_dirty (rollups, compliance recompute);
  4. insert rejects;
  5. add per device/minute counters (ingest_counter);
  6. apply device events to device_status / device_gap.
COMMIT with the server's durable setting (we never set synchronous_commit=off: a "committed"
transaction could vanish in a crash after we acked upstream), THEN call every delivery's ack.

Errors: ``DatabaseDown`` (connection lost, server restarting, pool timeout) is for the service to
handle (hold/spool and retry). Any other database error propagates: the service isolates the
poison delivery.
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

import psycopg
from psycopg_pool import ConnectionPool

from adapters.base import Delivery, DeviceEvent, GroupAck, Reading, Rejection
from ingest.batcher import Batch

log = logging.getLogger(__name__)

STAGE_DDL = ("CREATE TEMP TABLE IF NOT EXISTS _hd_stage (time timestamptz NOT NULL, sensor_id integer NOT NULL, "
             "value double precision NOT NULL, quality smallint NOT NULL) ON COMMIT DELETE ROWS")

REGISTER_SQL = """
INSERT INTO sensor (key, metric, unit, protocol, device_id, point, household_code, room_code, substation_code,
                    weather_station_code, household_id, room_id, substation_id)
SELECT k.key, k.metric, k.unit, k.protocol, k.device_id, k.point, k.household_code, k.room_code,
       k.substation_code, k.weather_station_code, h.id, r.id, COALESCE(s.id, c.substation_id)
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
            %s::text[], %s::text[])
     AS k(key, metric, unit, protocol, device_id, point, household_code, room_code, substation_code,
          weather_station_code)
LEFT JOIN household h ON h.code = k.household_code
LEFT JOIN room r ON r.household_id = h.id AND r.code = k.room_code
LEFT JOIN substation s ON s.code = k.substation_code
LEFT JOIN unit u ON u.id = h.unit_id
LEFT JOIN building b ON b.id = u.building_id
LEFT JOIN community c ON c.id = b.community_id
ORDER BY k.key
ON CONFLICT (key) DO UPDATE SET
    household_id  = COALESCE(sensor.household_id, EXCLUDED.household_id),
    room_id       = COALESCE(sensor.room_id, EXCLUDED.room_id),
    substation_id = COALESCE(sensor.substation_id, EXCLUDED.substation_id)
RETURNING key, id
"""

MERGE_SQL = ("INSERT INTO readings (time, sensor_id, value, quality) "
             "SELECT time, sensor_id, value, quality FROM _hd_stage ON CONFLICT DO NOTHING")

DIRTY_SQL = ("INSERT INTO readings_dirty (sensor_id, hour) "
             "SELECT DISTINCT sensor_id, date_trunc('hour', time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' "
             "FROM _hd_stage ON CONFLICT DO NOTHING")

COUNTER_SQL = """
INSERT INTO ingest_counter (device_id, protocol, minute, readings, rejects)
SELECT d, p, date_trunc('minute', now()), r, j FROM unnest(%s::text[], %s::text[], %s::int[], %s::int[]) AS t(d, p, r, j)
ON CONFLICT (device_id, minute) DO UPDATE SET readings = ingest_counter.readings + EXCLUDED.readings,
                                              rejects = ingest_counter.rejects + EXCLUDED.rejects
"""

SEEN_SQL = """
INSERT INTO device_status (device_id, protocol, last_seen, updated_at)
SELECT d, p, LEAST(t, now()), now() FROM unnest(%s::text[], %s::text[], %s::timestamptz[]) AS x(d, p, t)
ON CONFLICT (device_id) DO UPDATE SET last_seen = GREATEST(device_status.last_seen, EXCLUDED.last_seen),
                                      updated_at = now()
"""

UNKNOWN_DEVICE = "unknown"


class DatabaseDown(Exception):
    """The database cannot be reached now; the batch was not written (nothing committed)."""


@dataclass(slots=True)
class WriteStats:
    readings: int = 0          # rows offered
    inserted: int = 0          # rows new to the table
    rejects: int = 0
    new_sensors: int = 0
    events: int = 0
    acked: int = 0

    @property
    def duplicates(self) -> int:
        return self.readings - self.inserted


def _text(s: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL; topics and details come from the outside world."""
    return s.replace("\x00", "\\0") if s and "\x00" in s else s


class Writer:
    def __init__(self, pool: ConnectionPool, *, timeout: float = 5.0):
        self.pool = pool
        self.timeout = timeout
        self._ids: dict[str, int] = {}
        self._staged: "weakref.WeakSet[psycopg.Connection]" = weakref.WeakSet()

    def sensor_id(self, key: str) -> int | None:
        return self._ids.get(key)

    def write(self, batch: Batch, *, ack: bool = True) -> WriteStats:
        """Commit `batch`, then ack its deliveries. Raises DatabaseDown when the server is unreachable."""
        try:
            stats, new_ids, staged_conn = self._transaction(batch)
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            # OperationalError covers connection loss, admin shutdown and psycopg_pool.PoolTimeout
            raise DatabaseDown(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from e
        self._ids.update(new_ids)
        if staged_conn is not None:
            self._staged.add(staged_conn)       # the temp table exists on it (committed)
        if ack:
            stats.acked = ack_all(batch.deliveries)
        return stats

    def ping(self) -> None:
        """Raise DatabaseDown unless a pooled connection answers."""
        try:
            with self.pool.connection(timeout=self.timeout) as conn:
                conn.execute("SELECT 1")
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            raise DatabaseDown(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from e

    # ----------------------------------------------------------------------------------------------
    def _transaction(self, batch: Batch):
        readings = [r for d in batch.deliveries for r in d.readings]
        rejects = [j for d in batch.deliveries for j in d.rejects]
        stats = WriteStats(readings=len(readings), rejects=len(rejects), events=len(batch.events))
        staged_conn = None
        with self.pool.connection(timeout=self.timeout) as conn:
            try:
                new_ids = self._register(conn, readings)
                stats.new_sensors = len(new_ids)
                ids = self._ids
                if readings:
                    with conn.cursor() as cur:
                        if conn not in self._staged:
                            cur.execute(STAGE_DDL)
                        staged_conn = conn
                        with cur.copy("COPY _hd_stage (time, sensor_id, value, quality) FROM STDIN (FORMAT BINARY)") as cp:
                            cp.set_types(["timestamptz", "int4", "float8", "int2"])
                            write_row = cp.write_row
                            for r in readings:
                                sid = ids.get(r.sensor)
                                if sid is None:
                                    sid = new_ids[r.sensor]
                                write_row((r.ts, sid, r.value, int(r.quality)))
                        cur.execute(MERGE_SQL)
                        stats.inserted = cur.rowcount
                        cur.execute(DIRTY_SQL)
                if rejects:
                    self._rejects(conn, rejects)
                self._counters(conn, readings, rejects)
                if batch.events:
                    apply_events(conn, batch.events)
                conn.commit()
            except BaseException:
                # the pool would roll back too; explicit so a half-written batch is never committed
                if not conn.closed:
                    try:
                        conn.rollback()
                    except psycopg.Error:
                        pass                 # connection already broken; the pool discards it
                raise
        return stats, new_ids, staged_conn

    def _register(self, conn: psycopg.Connection, readings: list[Reading]) -> dict[str, int]:
        missing: dict[str, Reading] = {}
        ids = self._ids
        for r in readings:
            if r.sensor not in ids and r.sensor not in missing:
                missing[r.sensor] = r
        if not missing:
            return {}
        cols: list[list] = [[] for _ in range(10)]
        for key in sorted(missing):           # sorted: concurrent workers lock sensor rows in one order
            m = missing[key].meta
            for i, v in enumerate((key, m.metric, m.unit, m.protocol, m.device_id, m.point, m.household_code,
                                   m.room_code, m.substation_code, m.weather_station_code)):
                cols[i].append(_text(v))
        rows = conn.execute(REGISTER_SQL, cols).fetchall()
        return {k: i for k, i in rows}

    @staticmethod
    def _rejects(conn: psycopg.Connection, rejects: list[Rejection]) -> None:
        with conn.cursor() as cur:
            with cur.copy("COPY rejects (source, device_id, address, payload, reason, detail) "
                          "FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["text", "text", "text", "bytea", "text", "text"])
                for j in rejects:
                    cp.write_row((_text(j.source), _text(j.device_id), _text(j.address), bytes(j.payload),
                                  _text(j.reason), _text(j.detail)))

    @staticmethod
    def _counters(conn: psycopg.Connection, readings: list[Reading], rejects: list[Rejection]) -> None:
        counts: dict[tuple[str, str], list[int]] = {}
        seen: dict[tuple[str, str], datetime] = {}
        for r in readings:
            k = (r.meta.device_id, r.meta.protocol)
            c = counts.get(k)
            if c is None:
                counts[k] = [1, 0]
                seen[k] = r.ts
            else:
                c[0] += 1
                if r.ts > seen[k]:
                    seen[k] = r.ts
        for j in rejects:
            k = (j.device_id or UNKNOWN_DEVICE, j.source)
            counts.setdefault(k, [0, 0])[1] += 1
        if not counts:
            return
        keys = sorted(counts)
        conn.execute(COUNTER_SQL, ([_text(k[0]) for k in keys], [k[1] for k in keys],
                                   [counts[k][0] for k in keys], [counts[k][1] for k in keys]))
        if seen:
            sk = sorted(seen)
            conn.execute(SEEN_SQL, ([_text(k[0]) for k in sk], [k[1] for k in sk], [seen[k] for k in sk]))


def apply_events(conn: psycopg.Connection, events: Iterable[DeviceEvent]) -> None:
    """device_status / device_gap from adapter events, in the order they happened."""
    for e in events:
        dev, detail = _text(e.device_id), _text(e.detail)
        if e.kind == "connected":
            conn.execute("""INSERT INTO device_status (device_id, protocol, connected, updated_at)
                            VALUES (%s, %s, true, %s)
                            ON CONFLICT (device_id) DO UPDATE SET connected = true, updated_at = EXCLUDED.updated_at""",
                         (dev, e.protocol, e.at))
        elif e.kind in ("disconnected", "error"):
            conn.execute("""INSERT INTO device_status (device_id, protocol, connected, last_error, error_count, updated_at)
                            VALUES (%s, %s, false, %s, %s, %s)
                            ON CONFLICT (device_id) DO UPDATE SET connected = false, last_error = EXCLUDED.last_error,
                                error_count = device_status.error_count + EXCLUDED.error_count,
                                updated_at = EXCLUDED.updated_at""",
                         (dev, e.protocol, f"{e.kind}: {detail}" if detail else e.kind,
                          1 if e.kind == "error" else 0, e.at))
        elif e.kind == "gap_start":
            conn.execute("""INSERT INTO device_gap (device_id, started_at, reason) VALUES (%s, %s, %s)
                            ON CONFLICT (device_id, started_at) DO NOTHING""", (dev, e.at, detail or "gap"))
        elif e.kind == "gap_end":
            conn.execute("""UPDATE device_gap SET ended_at = %s
                            WHERE device_id = %s AND ended_at IS NULL AND started_at <= %s""", (e.at, dev, e.at))
        else:
            log.warning("device %s: unknown event kind %r ignored", e.device_id, e.kind)


def ack_all(deliveries: Iterable[Delivery]) -> int:
    """Call every delivery's ack, in order; consecutive acks of one adapter group (adapters.base.GroupAck)
    in one call. An ack that fails is logged: the data is committed, the upstream re-sends and the
    database deduplicates."""
    n = 0
    group = None
    run: list[GroupAck] = []
    for d in deliveries:
        a = d.ack
        if a is None:
            continue
        g = a.group if isinstance(a, GroupAck) else None
        if g is not group:
            n += _ack_run(group, run)
            group, run = g, []
        if g is not None:
            run.append(a)
            continue
        try:
            a()
            n += 1
        except Exception:
            log.exception("ack failed after commit (upstream will re-send; duplicates are dropped)")
    return n + _ack_run(group, run)


def _ack_run(group, run: list) -> int:
    if not run:
        return 0
    try:
        return group(run)
    except Exception:
        log.exception("%d acks failed after commit (upstream will re-send; duplicates are dropped)", len(run))
        return 0

