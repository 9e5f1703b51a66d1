"""Fixtures for the api tests: a small two-company city with users for every role.

Layout (codes are unique to this module, so it can live in any database):

    company AT (滨海热力测试)  branch AT-B1 → substation AT-S1 → community 海景花园 → 3号楼 → 2单元 → households AT-H11, AT-H12
                               branch AT-B2 → substation AT-S2 → community 河畔家园 → 1号楼 → 1单元 → household AT-H21
    company AX (另一家热力)     branch AX-B1 → substation AX-S1 → community 远方小区 → 1号楼 → 1单元 → household AX-H1

Users ``at_<role>`` are scoped to AT-B1 except ``at_admin`` and ``at_auditor`` (whole company AT);
``at_b2_agent`` is scoped to AT-B2; ``ax_agent`` belongs to company AX; ``at_customer`` is the
customer of AT-H11. Every password is ``pw-<username>-123``.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.auth import STAFF_ROLES, create_user
from core.config import Settings
from core.db import clone_database, drop_database
from core.pii import FieldCipher, store_contact

FIELD_KEY = "11" * 16 + "22" * 16
TOKEN_SECRET = "test-token-secret-" + "x" * 20

CONTACTS = {
    "AT-H11": ("张伟", "13812345678", "天津市滨海新区海景花园3号楼2单元502"),
    "AT-H12": ("李秀英", "13987654321", "天津市滨海新区海景花园3号楼2单元601"),
    "AT-H21": ("王芳", "13600001111", "天津市滨海新区河畔家园1号楼1单元101"),
    "AX-H1": ("赵磊", "13500002222", "北京市远方小区1号楼1单元101"),
}


@dataclass
class City:
    url: str
    ids: dict[str, int] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)


def password(username: str) -> str:
    return f"pw-{username}-123"



def seed_city(url: str, *, now: datetime | None = None) -> City:
    now = now or datetime.now(timezone.utc)
    city = City(url=url)
    cipher = FieldCipher(FIELD_KEY)
    with psycopg.connect(url) as conn:
        ids = city.ids

        def one(sql, params):
            return conn.execute(sql, params).fetchone()[0]

        conn.execute("INSERT INTO weather_station (code, name, design_outdoor_temp_c) VALUES ('ATW', '天津', -7) "
                     "ON CONFLICT DO NOTHING")
        for co, co_name, branches in (("AT", "滨海热力测试", [("AT-B1", "AT-S1", "海景花园", 3, 2, ["AT-H11", "AT-H12"]),
                                                          ("AT-B2", "AT-S2", "河畔家园", 1, 1, ["AT-H21"])]),
                                      ("AX", "另一家热力", [("AX-B1", "AX-S1", "远方小区", 1, 1, ["AX-H1"])])):
            ids[co] = one("INSERT INTO company (code, name, region_code) VALUES (%s, %s, 'tianjin') RETURNING id",
                          (co, co_name))
            for b_code, s_code, c_name, b_no, u_no, households in branches:
                ids[b_code] = one("INSERT INTO branch (company_id, code, name) VALUES (%s, %s, %s) RETURNING id",
                                  (ids[co], b_code, b_code + "分公司"))
                ids[s_code] = one(
                    """INSERT INTO substation (branch_id, code, name, weather_station_code, design_flow_m3h)
                       VALUES (%s, %s, %s, 'ATW', 40) RETURNING id""", (ids[b_code], s_code, s_code + "换热站"))
                comm = one("INSERT INTO community (substation_id, code, name) VALUES (%s, %s, %s) RETURNING id",
                           (ids[s_code], s_code + "-C1", c_name))
                bld = one("INSERT INTO building (community_id, code, name, floors) VALUES (%s, %s, %s, 6) RETURNING id",
                          (comm, s_code + "-C1-B", f"{b_no}号楼"))
                unit = one("INSERT INTO unit (building_id, code, name) VALUES (%s, %s, %s) RETURNING id",
                           (bld, s_code + "-C1-B-U", f"{u_no}单元"))
                for i, h_code in enumerate(households):
                    floor = int(CONTACTS[h_code][2][-3:-2]) if CONTACTS[h_code][2][-3].isdigit() else 1
                    hid = one("""INSERT INTO household (unit_id, code, floor, area_m2) VALUES (%s, %s, %s, 88.5)
                                 RETURNING id""", (unit, h_code, floor))
                    ids[h_code] = hid
                    store_contact(conn, cipher, hid, *CONTACTS[h_code])
                    for r_code, r_type in (("living", "living_room"), ("bedroom1", "bedroom")):
                        rid = one("""INSERT INTO room (household_id, code, room_type, area_m2, counts_for_compliance)
                                     VALUES (%s, %s, %s, 15, true) RETURNING id""", (hid, r_code, r_type))
                        sid = one("""INSERT INTO sensor (key, metric, unit, protocol, device_id, household_code,
                                                         room_code, household_id, room_id)
                                     VALUES (%s, 'room_temp', '℃', 'mqtt', %s, %s, %s, %s, %s) RETURNING id""",
                                  (f"room:{h_code}:{r_code}:room_temp", f"therm-{h_code}", h_code, r_code, hid, rid))
                        conn.execute("INSERT INTO readings (time, sensor_id, value) VALUES (%s, %s, %s), (%s, %s, %s)",
                                     (now - timedelta(minutes=40), sid, 19.5, now - timedelta(minutes=20), sid, 19.8))
                    conn.execute("""INSERT INTO device_status (device_id, protocol, last_seen, connected)
                                    VALUES (%s, 'mqtt', %s, true)""", (f"therm-{h_code}", now))
                    conn.execute("""INSERT INTO ingest_counter (device_id, protocol, minute, readings, rejects)
                                    VALUES (%s, 'mqtt', date_trunc('minute', %s::timestamptz), 4, 1)""",
                                 (f"therm-{h_code}", now))
                    conn.execute("""INSERT INTO rejects (received_at, source, device_id, address, payload, reason, detail)
                                    VALUES (%s, 'mqtt', %s, 'heatdesk/x', %s, 'out_of_range', 'room_temp 99 ℃')""",
                                 (now - timedelta(minutes=5), f"therm-{h_code}", b'{"t": 99}'))
                # a substation device
                conn.execute("""INSERT INTO sensor (key, metric, unit, protocol, device_id, point, substation_code,
                                                    substation_id)
                                VALUES (%s, 'supply_temp_2', '℃', 'modbus', %s, 'supply_temp_2', %s, %s)""",
                             (f"{s_code}/supply_temp_2", s_code, s_code, ids[s_code]))
                conn.execute("""INSERT INTO device_status (device_id, protocol, last_seen, connected, last_error)
                                VALUES (%s, 'modbus', %s, false, 'timeout')""", (s_code, now - timedelta(minutes=9)))
        # an unknown device (no sensor): only company-wide callers see it
        conn.execute("""INSERT INTO rejects (received_at, source, device_id, address, reason)
                        VALUES (%s, 'mqtt', 'ghost-1', 'heatdesk/ghost', 'unknown_device')""", (now,))
        conn.execute("""INSERT INTO compliance_day (household_id, room_id, day, mean_c, stat_c, threshold_c, coverage,
                                                    status, policy_code, policy_version, code_version)
                        SELECT r.household_id, r.id, (%s AT TIME ZONE 'Asia/Shanghai')::date - 1, 17.2, 17.2, 18, 0.98,
                               'non_compliant', 'tianjin', 1, 'test' FROM room r WHERE r.household_id = %s""",
                     (now, ids["AT-H11"]))
        users = city.users
        for role in STAFF_ROLES:
            company_wide = role in ("admin", "auditor")
            users[f"at_{role}"] = create_user(conn, username=f"at_{role}", role=role, company_id=ids["AT"],
                                              password=password(f"at_{role}"),
                                              branch_ids=None if company_wide else [ids["AT-B1"]])
        users["at_b2_agent"] = create_user(conn, username="at_b2_agent", role="agent", company_id=ids["AT"],
                                           password=password("at_b2_agent"), branch_ids=[ids["AT-B2"]])
        users["ax_agent"] = create_user(conn, username="ax_agent", role="agent", company_id=ids["AX"],
                                        password=password("ax_agent"))
        users["at_customer"] = create_user(conn, username="at_customer", role="customer", company_id=ids["AT"],
                                           password=password("at_customer"), household_id=ids["AT-H11"])
    return city


def settings_for(url: str) -> Settings:
    return Settings(database_url=url, token_secret=TOKEN_SECRET, field_key_hex=FIELD_KEY)


class Api:
    """A TestClient plus per-user bearer tokens (logged in once)."""

    def __init__(self, client: TestClient, city: City):
        self.client = client
        self.city = city
        self._tokens: dict[str, str] = {}

    def token(self, username: str) -> str:
        if username not in self._tokens:
            r = self.client.post("/auth/login", json={"username": username, "password": password(username)})
            assert r.status_code == 200, r.text
            self._tokens[username] = r.json()["access_token"]
        return self._tokens[username]

    def h(self, username: str | None) -> dict:
        return {"Authorization": f"Bearer {self.token(username)}"} if username else {}

    def get(self, path: str, user: str | None = None, **kw):
        return self.client.get(path, headers={**self.h(user), **kw.pop("headers", {})}, **kw)

    def post(self, path: str, user: str | None = None, **kw):
        return self.client.post(path, headers={**self.h(user), **kw.pop("headers", {})}, **kw)


_SHARED: dict[str, City] = {}


@pytest.fixture(scope="session")
def api_city(pg_server_url, template_db):
    """A seeded database shared by read-only api tests (a clone of the schema template).

    Test modules import this fixture, which makes one fixture definition per module; the city is
    seeded once per session all the same (argon2 hashing of a dozen users is the slow part).
    """
    if template_db in _SHARED:
        yield _SHARED[template_db]
        return
    name = f"hd_api_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = clone_database(pg_server_url, template_db, name)
    _SHARED[template_db] = city = seed_city(url)
    yield city
    _SHARED.pop(template_db, None)
    drop_database(pg_server_url, name)


@pytest.fixture(scope="session")
def api(api_city):
    from api.app import create_app

    app = create_app(settings_for(api_city.url))
    with TestClient(app) as client:
        yield Api(client, api_city)


@pytest.fixture
def fresh_api(fresh_db_url):
    """A seeded per-test database and its client, for tests that write."""
    from api.app import create_app

    city = seed_city(fresh_db_url)
    app = create_app(settings_for(fresh_db_url))
    with TestClient(app) as client:
        yield Api(client, city)
