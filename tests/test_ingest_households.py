"""Household register and official weather import, against real PostgreSQL."""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from datetime import date

import psycopg
import pytest

from core.pii import FieldCipher, new_key_hex
from ingest.households import import_households
from ingest.weather import import_weather
from simulators.city import HOUSEHOLD_COLUMNS, generate_city
from simulators.weather import OutdoorModel, write_weather_csv

TABLES = ("company", "branch", "substation", "community", "building", "unit", "household", "room",
          "pii.household_contact")


@pytest.fixture(scope="module")
def city():
    return generate_city(11, 48)


@pytest.fixture
def cipher():
    return FieldCipher(new_key_hex())


@pytest.fixture
def csv_path(tmp_path, city):
    return city.write_households_csv(tmp_path / "households.csv")


def _counts(conn) -> dict[str, int]:
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def _rows(city) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(city.households_csv())))


def _write(path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HOUSEHOLD_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def test_import_is_complete_and_idempotent(fresh_db_url, csv_path, cipher, city):
    n_rooms = sum(len(h.rooms) for h in city.households)
    with psycopg.connect(fresh_db_url) as conn:
        first = import_households(conn, csv_path, cipher)
        conn.commit()
        assert not first.errors
        assert first.rows == first.rows_imported == n_rooms
        assert first.created["household"] == len(city.households) and first.created["room"] == n_rooms
        after_first = _counts(conn)
        assert after_first == {"company": 1, "branch": 1, "substation": 4,
                               "community": sum(len(s.communities) for s in city.substations),
                               "building": sum(len(c.buildings) for s in city.substations for c in s.communities),
                               "unit": len({h.unit_code for h in city.households}),
                               "household": len(city.households), "room": n_rooms,
                               "pii.household_contact": len(city.households)}

        second = import_households(conn, csv_path, cipher)
        conn.commit()
        assert not second.errors and second.rows_imported == n_rooms
        assert second.created == {} and second.updated == {}            # nothing new, nothing rewritten
        assert second.unchanged["household"] == len(city.households)
        assert _counts(conn) == after_first

        h = city.households[0]
        row = conn.execute("""SELECT h.floor, h.area_m2, h.heating_status, h.placement_class, h.individually_valved,
                                     u.code, b.code, b.floors, c.code, s.code, s.heating_type, s.weather_station_code,
                                     co.code, co.region_code
                              FROM household h JOIN unit u ON u.id = h.unit_id JOIN building b ON b.id = u.building_id
                              JOIN community c ON c.id = b.community_id JOIN substation s ON s.id = c.substation_id
                              JOIN branch br ON br.id = s.branch_id JOIN company co ON co.id = br.company_id
                              WHERE h.code = %s""", (h.code,)).fetchone()
        floors = next(b.floors for s in city.substations for c in s.communities for b in c.buildings
                      if b.code == h.building_code)
        assert row == (h.floor, h.area_m2, h.heating_status, h.placement_class, h.individually_valved, h.unit_code,
                       h.building_code, floors, h.community_code, h.substation_code,
                       city.substation(h.substation_code).spec.heating_type, "TJ", "HD", "tianjin")
        rooms = conn.execute("""SELECT r.code, r.room_type, r.counts_for_compliance FROM room r
                                JOIN household h ON h.id = r.household_id WHERE h.code = %s ORDER BY r.code""",
                             (h.code,)).fetchall()
        assert rooms == sorted((r.code, r.room_type, r.counts_for_compliance) for r in h.rooms)
        assert conn.execute("SELECT name, design_outdoor_temp_c FROM weather_station WHERE code = 'TJ'").fetchone() \
            == ("天津", -7.0)                                                        # R6


def test_contacts_are_encrypted_and_findable_by_blind_index(fresh_db_url, csv_path, cipher, city):
    h = city.households[5]
    with psycopg.connect(fresh_db_url) as conn:
        import_households(conn, csv_path, cipher)
        conn.commit()
        dump = "\n".join(r[0] for r in conn.execute("SELECT t::text FROM pii.household_contact t"))
        raw = b"".join(bytes(b) for r in conn.execute(
            "SELECT name_enc, phone_enc, address_enc FROM pii.household_contact") for b in r if b)
        for hh in city.households:
            assert hh.contact_phone not in dump and hh.contact_phone.encode() not in raw
            assert hh.contact_name.encode() not in raw and hh.contact_address.encode() not in raw
        # nothing personal leaks into the household table either (R60)
        hdump = "\n".join(r[0] for r in conn.execute("SELECT t::text FROM household t"))
        assert h.contact_phone not in hdump and h.contact_name not in hdump
        found = conn.execute("""SELECT h.code, c.name_enc, c.phone_enc, c.address_enc
                                FROM pii.household_contact c JOIN household h ON h.id = c.household_id
                                WHERE c.phone_index = %s""", (cipher.phone_index("+86 " + h.contact_phone),)).fetchall()
        assert [f[0] for f in found] == [h.code]
        assert (cipher.decrypt(found[0][1]), cipher.decrypt(found[0][2]), cipher.decrypt(found[0][3])) == \
            (h.contact_name, h.contact_phone, h.contact_address)


def test_reimport_updates_in_place(fresh_db_url, tmp_path, csv_path, cipher, city):
    target = city.households[3]
    rows = _rows(city)
    for r in rows:
        if r["household_code"] == target.code:
            r["heating_status"] = "报停"                       # Chinese value accepted
            r["area_m2"] = "99.5"
            r["contact_phone"] = "13900001111"
    changed = tmp_path / "changed.csv"
    _write(changed, rows)
    with psycopg.connect(fresh_db_url) as conn:
        import_households(conn, csv_path, cipher)
        before = _counts(conn)
        s = import_households(conn, changed, cipher)
        conn.commit()
        assert not s.errors and s.updated == {"household": 1} and s.created == {}
        assert _counts(conn) == before
        assert conn.execute("SELECT heating_status, area_m2 FROM household WHERE code = %s",
                            (target.code,)).fetchone() == ("stopped", 99.5)
        hid = conn.execute("""SELECT c.household_id FROM pii.household_contact c
                              WHERE phone_index = %s""", (cipher.phone_index("13900001111"),)).fetchone()
        assert hid is not None


def test_bad_rows_are_reported_by_line_and_column_and_the_rest_imported(fresh_db_url, tmp_path, cipher, city):
    rows = _rows(city)
    victims = {}
    # CSV line numbers: header is line 1, rows[i] is line i + 2
    rows[0]["area_m2"] = "lots"; victims[2] = "area_m2"                          # noqa: E702
    rows[5]["room_type"] = "garage"; victims[7] = "room_type"                    # noqa: E702
    rows[9]["household_code"] = ""; victims[11] = "household_code"                # noqa: E702
    rows[12]["contact_phone"] = "1380013800138000"; victims[14] = "contact_phone"  # noqa: E702
    rows[15]["design_return_c"] = "90"; victims[17] = "design_return_c"           # noqa: E702
    # a later row of a household that disagrees with its first row
    first = next(i for i in range(20, len(rows)) if rows[i]["household_code"] != rows[i - 1]["household_code"])
    later = first + 1
    assert rows[later]["household_code"] == rows[first]["household_code"]
    rows[later]["unit_code"] = rows[later]["unit_code"] + "X"
    victims[later + 2] = "unit_code"
    bad = tmp_path / "bad.csv"
    _write(bad, rows)
    with psycopg.connect(fresh_db_url) as conn:
        s = import_households(conn, bad, cipher)
        conn.commit()
        got = {e.line: e.column for e in s.errors}
        assert got == victims, s.errors
        assert all(e.message for e in s.errors)
        phone_error = next(str(e) for e in s.errors if e.column == "contact_phone")
        assert "1380013800138000" not in phone_error and "138*" in phone_error       # masked (R60)
        assert s.rows_imported == len(rows) - len(victims)
        n_rooms = conn.execute("SELECT count(*) FROM room").fetchone()[0]
        assert n_rooms == len(rows) - len(victims)
        assert "line 2 column area_m2: 'lots' is not a number" in str(s)


def test_a_household_the_database_refuses_does_not_stop_the_others(fresh_db_url, cipher, csv_path, city):
    # a rule only the database knows (here a test-only CHECK): the batch falls back to one savepoint per
    # household, so exactly the refused households' lines are reported
    big = [h for h in city.households if h.area_m2 >= 115]
    assert 0 < len(big) < len(city.households)
    with psycopg.connect(fresh_db_url) as conn:
        conn.execute("ALTER TABLE household ADD CONSTRAINT test_small_flats CHECK (area_m2 < 115)")
        conn.commit()
        s = import_households(conn, csv_path, cipher)
        conn.commit()
        refused_lines = {e.line for e in s.errors}
        assert len(refused_lines) == sum(len(h.rooms) for h in big)
        assert all("test_small_flats" in e.message or "check constraint" in e.message for e in s.errors)
        assert conn.execute("SELECT count(*) FROM household").fetchone()[0] == len(city.households) - len(big)
        assert s.rows_imported == s.rows - len(refused_lines)
        assert conn.execute("SELECT count(*) FROM pii.household_contact").fetchone()[0] == \
            len(city.households) - len(big)


def test_missing_required_column_is_one_clear_error(fresh_db_url, tmp_path, cipher):
    p = tmp_path / "short.csv"
    p.write_text("household_code,area_m2\n0101,80\n", encoding="utf-8")
    with psycopg.connect(fresh_db_url) as conn:
        s = import_households(conn, p, cipher)
        assert s.rows_imported == 0 and len(s.errors) == 1
        assert s.errors[0].line == 1 and "company_code" in s.errors[0].message


def test_existing_sensors_are_linked(fresh_db_url, csv_path, cipher, city):
    h, room = next((h, r) for h, r in city.sensors())
    key = f"room:{h.code}:{room.code}:room_temp"
    with psycopg.connect(fresh_db_url) as conn:
        conn.execute("""INSERT INTO sensor (key, metric, unit, protocol, device_id, household_code, room_code)
                        VALUES (%s, 'room_temp', 'C', 'mqtt', 'room-thermometers', %s, %s)""", (key, h.code, room.code))
        conn.execute("""INSERT INTO sensor (key, metric, unit, protocol, device_id, point, substation_code)
                        VALUES ('S02-plc/supply_temp_2', 'supply_temp_2', 'C', 'modbus', 'S02-plc', 'supply_temp_2',
                                'S02')""")
        conn.execute("""INSERT INTO sensor (key, metric, unit, protocol, device_id, household_code, room_code)
                        VALUES ('room:9999999999:living:room_temp', 'room_temp', 'C', 'mqtt', 'room-thermometers',
                                '9999999999', 'living')""")
        conn.commit()
        s = import_households(conn, csv_path, cipher)
        conn.commit()
        assert s.sensors_linked >= 4
        linked = conn.execute("""SELECT h.code, r.code, st.code FROM sensor s JOIN household h ON h.id = s.household_id
                                 JOIN room r ON r.id = s.room_id JOIN substation st ON st.id = s.substation_id
                                 WHERE s.key = %s""", (key,)).fetchone()
        assert linked == (h.code, room.code, h.substation_code)
        assert conn.execute("""SELECT st.code FROM sensor s JOIN substation st ON st.id = s.substation_id
                               WHERE s.key = 'S02-plc/supply_temp_2'""").fetchone() == ("S02",)
        assert conn.execute("""SELECT household_id, room_id FROM sensor
                               WHERE key = 'room:9999999999:living:room_temp'""").fetchone() == (None, None)


# --- official weather ------------------------------------------------------------------------------

def test_weather_import_upserts_official_daily_means(fresh_db_url, tmp_path):
    p = tmp_path / "weather.csv"
    model = OutdoorModel(7)
    write_weather_csv(p, model, date(2026, 12, 1), date(2026, 12, 10))
    with psycopg.connect(fresh_db_url) as conn:
        s = import_weather(conn, p)
        conn.commit()
        assert not s.errors and s.days_written == 10 and s.stations == ["TJ"]
        assert conn.execute("SELECT name, design_outdoor_temp_c FROM weather_station WHERE code = 'TJ'").fetchone() \
            == ("天津", -7.0)
        got = dict(conn.execute("SELECT day, mean_c FROM weather_daily WHERE station_code = 'TJ' AND source = 'official'"))
        assert got == {d: m for d, m in model.daily_means(date(2026, 12, 1), date(2026, 12, 10))}
        again = import_weather(conn, p)
        assert again.days_written == 0 and again.days_unchanged == 10
        # a correction from the bureau replaces the value; bad rows are named, the rest imported
        p2 = tmp_path / "fix.csv"
        p2.write_text("station_code,day,mean_c\nTJ,2026-12-01,-8.5\nTJ,2026-13-01,1.0\nTJ,2026-12-02,warm\n"
                      "XX,2026-12-02,1.0\n", encoding="utf-8")
        fix = import_weather(conn, p2)
        conn.commit()
        assert fix.days_written == 1
        assert [(e.line, e.column) for e in fix.errors] == [(3, "day"), (4, "mean_c"), (5, "station_code")]
        assert conn.execute("SELECT mean_c FROM weather_daily WHERE day = '2026-12-01'").fetchone() == (-8.5,)


# --- CLI -------------------------------------------------------------------------------------------

def _cli(project_root, data_dir, db_url, *args, key: str | None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEATDESK_")}
    env["HEATDESK_DATA_DIR"] = str(data_dir)
    if key:
        env["HEATDESK_FIELD_KEY_HEX"] = key
    return subprocess.run([sys.executable, "-m", "heatdesk.cli", "--database-url", db_url, "import", *args],
                          cwd=project_root, env=env, capture_output=True, text=True, timeout=120)


def test_cli_imports_and_refuses_without_key(fresh_db_url, csv_path, tmp_path, project_root, city):
    r = _cli(project_root, tmp_path, fresh_db_url, "households", str(csv_path), key=None)
    assert r.returncode == 2 and "HEATDESK_FIELD_KEY_HEX" in r.stderr
    r = _cli(project_root, tmp_path, fresh_db_url, "households", str(csv_path), key=new_key_hex())
    assert r.returncode == 0, r.stderr
    assert f"{sum(len(h.rooms) for h in city.households)}/" in r.stdout
    w = tmp_path / "w.csv"
    write_weather_csv(w, OutdoorModel(7), date(2026, 12, 1), date(2026, 12, 3))
    r = _cli(project_root, tmp_path, fresh_db_url, "weather", str(w), key=None)
    assert r.returncode == 0, r.stderr
    with psycopg.connect(fresh_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM household").fetchone()[0] == len(city.households)
        assert conn.execute("SELECT count(*) FROM weather_daily").fetchone()[0] == 3
