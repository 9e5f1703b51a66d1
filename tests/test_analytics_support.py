"""Helpers for the analytics tests (no tests here): a small site written straight into the database, no ingest."""
from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

import numpy as np
import psycopg

TZ = dt.timezone(dt.timedelta(hours=8))


def local(day: dt.date, minutes: float = 0.0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=TZ) + dt.timedelta(minutes=minutes)


@dataclass
class Site:
    prefix: str
    company_id: int
    substation_id: int
    station: str
    households: dict[str, int] = field(default_factory=dict)      # code → id
    rooms: dict[tuple[str, str], int] = field(default_factory=dict)  # (household code, room) → room id
    sensors: dict[tuple[str, str], int] = field(default_factory=dict)
    sub_sensors: dict[str, int] = field(default_factory=dict)      # metric → sensor id
    unit_id: int = 0


def make_site(conn: psycopg.Connection, *, region: str = "tianjin", design_outdoor_c: float = -7.0,
              prefix: str | None = None) -> Site:
    p = prefix or "T" + uuid.uuid4().hex[:6].upper()
    cid = conn.execute("INSERT INTO company (code, name, region_code) VALUES (%s, %s, %s) RETURNING id",
                       (p, f"{p} 热力", region)).fetchone()[0]
    bid = conn.execute("INSERT INTO branch (company_id, code, name) VALUES (%s, %s, %s) RETURNING id",
                       (cid, p + "-B1", "一分公司")).fetchone()[0]
    station = p + "WS"
    conn.execute("INSERT INTO weather_station (code, name, design_outdoor_temp_c) VALUES (%s, %s, %s)",
                 (station, "站", design_outdoor_c))
    sid = conn.execute("""INSERT INTO substation (branch_id, code, name, weather_station_code, design_flow_m3h)
                          VALUES (%s, %s, %s, %s, 40) RETURNING id""", (bid, p + "-S01", "一号站", station)).fetchone()[0]
    comm = conn.execute("INSERT INTO community (substation_id, code, name) VALUES (%s, %s, %s) RETURNING id",
                        (sid, p + "-C1", "小区")).fetchone()[0]
    bld = conn.execute("INSERT INTO building (community_id, code, name, floors) VALUES (%s, %s, %s, 6) RETURNING id",
                       (comm, p + "-B01", "1号楼")).fetchone()[0]
    unit = conn.execute("INSERT INTO unit (building_id, code, name) VALUES (%s, %s, %s) RETURNING id",
                        (bld, p + "-U1", "1单元")).fetchone()[0]
    return Site(prefix=p, company_id=cid, substation_id=sid, station=station, unit_id=unit)


def add_household(conn, site: Site, code: str, *, rooms=(("living", "living_room", 20.0, True),
                                                        ("bed1", "bedroom", 12.0, True)),
                  heating_status: str = "active", billing_method: str = "area", area_m2: float = 80.0,
                  placement_class: str = "normal", floor: int = 3) -> int:
    full = f"{site.prefix}-{code}"
    hid = conn.execute("""INSERT INTO household (unit_id, code, floor, area_m2, heating_status, billing_method,
                                                 placement_class) VALUES (%s,%s,%s,%s,%s,%s,%s) RETURNING id""",
                       (site.unit_id, full, floor, area_m2, heating_status, billing_method, placement_class)).fetchone()[0]
    site.households[code] = hid
    for rcode, rtype, area, counts in rooms:
        rid = conn.execute("""INSERT INTO room (household_id, code, room_type, area_m2, counts_for_compliance)
                              VALUES (%s,%s,%s,%s,%s) RETURNING id""", (hid, rcode, rtype, area, counts)).fetchone()[0]
        site.rooms[(code, rcode)] = rid
        sens = conn.execute("""INSERT INTO sensor (key, metric, unit, protocol, device_id, household_code, room_code,
                                                   household_id, room_id)
                               VALUES (%s, 'room_temp', '℃', 'mqtt', %s, %s, %s, %s, %s) RETURNING id""",
                            (f"room:{full}:{rcode}:room_temp", f"th-{full}-{rcode}", full, rcode, hid, rid)).fetchone()[0]
        site.sensors[(code, rcode)] = sens
    return hid


def add_substation_sensor(conn, site: Site, metric: str) -> int:
    sid = conn.execute("""INSERT INTO sensor (key, metric, unit, protocol, device_id, point, substation_code,
                                              substation_id) VALUES (%s, %s, '', 'modbus', %s, %s, %s, %s) RETURNING id""",
                       (f"{site.prefix}-S01/{metric}", metric, f"{site.prefix}-S01", metric, f"{site.prefix}-S01",
                        site.substation_id)).fetchone()[0]
    site.sub_sensors[metric] = sid
    return sid


def write_series(conn, sensor_id: int, times: list[dt.datetime] | np.ndarray, values, quality=0) -> None:
    """COPY samples into readings (ingest is not involved)."""
    values = np.broadcast_to(np.asarray(values, dtype=float), (len(times),))
    q = np.broadcast_to(np.asarray(quality), (len(times),))
    with conn.cursor() as cur:
        with cur.copy("COPY readings (time, sensor_id, value, quality) FROM STDIN") as copy:
            for t, v, qq in zip(times, values, q):
                copy.write_row((t, sensor_id, float(v), int(qq)))


def day_series(day: dt.date, step_min: float = 5.0, start_min: float = 0.0, end_min: float = 1440.0):
    return [local(day, m) for m in np.arange(start_min, end_min, step_min)]
