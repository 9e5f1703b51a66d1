"""Shared builders for the ticketing tests: a tiny city inserted directly with SQL (no ingest).

Imported by tests/test_ticketing_*.py; holds no tests itself.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import psycopg
import pytest

T0 = datetime(2026, 12, 10, 2, 0, tzinfo=timezone.utc)     # 10:00 Asia/Shanghai, in season


@dataclass
class City:
    company: int
    substations: dict[str, int] = field(default_factory=dict)
    communities: dict[str, int] = field(default_factory=dict)
    buildings: dict[str, int] = field(default_factory=dict)
    units: dict[str, int] = field(default_factory=dict)
    households: dict[str, int] = field(default_factory=dict)
    rooms: dict[str, int] = field(default_factory=dict)


def build_city(conn, *, substations=("S01", "S02"), households_per_unit=3, region="tianjin") -> City:
    """Company HD; per substation one community, one building (with coordinates), one unit, N households,
    each with a living room counted for compliance."""
    company = conn.execute("INSERT INTO company (code, name, region_code) VALUES ('HD', '滨海热力', %s) RETURNING id",
                           (region,)).fetchone()[0]
    branch = conn.execute("INSERT INTO branch (company_id, code, name) VALUES (%s, 'B1', '一分公司') RETURNING id",
                          (company,)).fetchone()[0]
    city = City(company)
    for i, s in enumerate(substations):
        sid = conn.execute("INSERT INTO substation (branch_id, code, name) VALUES (%s, %s, %s) RETURNING id",
                           (branch, s, f"{s}站")).fetchone()[0]
        city.substations[s] = sid
        c = conn.execute("INSERT INTO community (substation_id, code, name) VALUES (%s, %s, %s) RETURNING id",
                         (sid, f"{s}-C1", f"{s}小区")).fetchone()[0]
        city.communities[f"{s}-C1"] = c
        b = conn.execute("""INSERT INTO building (community_id, code, name, floors, lat, lon)
                            VALUES (%s, %s, %s, 6, %s, %s) RETURNING id""",
                         (c, f"{s}-C1-B1", "1号楼", 39.10 + 0.05 * i, 117.20)).fetchone()[0]
        city.buildings[f"{s}-C1-B1"] = b
        u = conn.execute("INSERT INTO unit (building_id, code, name) VALUES (%s, %s, '1单元') RETURNING id",
                         (b, f"{s}-C1-B1-U1")).fetchone()[0]
        city.units[f"{s}-C1-B1-U1"] = u
        for k in range(households_per_unit):
            code = f"{s}-C1-B1-U1-{k + 1:02d}01"
            h = conn.execute("INSERT INTO household (unit_id, code, floor, area_m2) VALUES (%s, %s, %s, 88) RETURNING id",
                             (u, code, k + 1)).fetchone()[0]
            city.households[code] = h
            r = conn.execute("""INSERT INTO room (household_id, code, room_type, counts_for_compliance)
                                VALUES (%s, 'living', 'living_room', true) RETURNING id""", (h,)).fetchone()[0]
            city.rooms[code] = r
    return city


@pytest.fixture(scope="module")
def tdb_url(pg_server_url, template_db):
    """One database per test module, cloned from the schema template (like ``fresh_db_url``); each test
    works inside a transaction that is rolled back (``tconn``), so every test starts from an empty
    schema without paying ~1.5 s for a new database per test."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from core.db import drop_database

    name = f"hd_tk_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    params = conninfo_to_dict(pg_server_url)
    with psycopg.connect(make_conninfo(**{**params, "dbname": "postgres"}), autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            psycopg.sql.Identifier(name), psycopg.sql.Identifier(template_db)))
    yield make_conninfo(**{**params, "dbname": name})
    drop_database(pg_server_url, name)


@pytest.fixture
def tconn(tdb_url):
    """A connection whose work is rolled back after the test (nothing is ever committed)."""
    with psycopg.connect(tdb_url) as conn:
        yield conn
        conn.rollback()


@pytest.fixture
def city(tconn) -> City:
    return build_city(tconn)
