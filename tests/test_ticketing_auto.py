"""Tickets from telemetry: one incident for a substation fault (households linked, no per-household
storm), one auto 测温 per cold household, closing only after recovery, sensor-offline maintenance.
Readings are inserted directly with SQL (no ingest)."""
from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from tests.test_ticketing_support import T0, build_city
from ticketing import store
from ticketing.auto import run_auto_tickets

NOW = T0


def _sensor(conn, key, metric, *, substation=None, household=None, room=None, device="dev"):
    return conn.execute("""INSERT INTO sensor (key, metric, protocol, device_id, substation_id, household_id, room_id)
                           VALUES (%s, %s, 'modbus', %s, %s, %s, %s) RETURNING id""",
                        (key, metric, device, substation, household, room)).fetchone()[0]


def _series(conn, sensor, start, end, value, step="10 minutes", quality=0):
    conn.execute("""INSERT INTO readings (time, sensor_id, value, quality)
                    SELECT g, %s, %s, %s FROM generate_series(%s::timestamptz, %s::timestamptz, %s::interval) g
                    ON CONFLICT DO NOTHING""", (sensor, value, quality, start, end, step))


@pytest.fixture
def world(fresh_db_url):
    with psycopg.connect(fresh_db_url) as conn:
        city = build_city(conn)
        w = {"city": city, "supply": {}, "pump": {}, "room": {}}
        for s, sid in city.substations.items():
            w["supply"][s] = _sensor(conn, f"{s}-PLC/supply_temp_2", "supply_temp_2", substation=sid, device=f"{s}-PLC")
            w["pump"][s] = _sensor(conn, f"{s}-PLC/pump_status", "pump_status", substation=sid, device=f"{s}-PLC")
        for code, hid in city.households.items():
            w["room"][code] = _sensor(conn, f"room:{code}:living:room_temp", "room_temp", household=hid,
                                      room=city.rooms[code], device=f"th-{code}")
        conn.commit()
        w["conn"] = conn
        yield w


def _count(conn, sql, *args):
    return conn.execute(sql, args).fetchone()[0]


def test_supply_collapse_opens_one_incident_and_closes_after_recovery(world):
    conn, city = world["conn"], world["city"]
    s01 = [c for c in city.households if c.startswith("S01")]
    # 24 h of normal secondary supply, then S01 collapses in the last hour; S02 stays normal
    for s in ("S01", "S02"):
        _series(conn, world["supply"][s], NOW - timedelta(hours=25), NOW - timedelta(hours=1), 60.0)
        _series(conn, world["pump"][s], NOW - timedelta(hours=2), NOW, 1.0)
    _series(conn, world["supply"]["S01"], NOW - timedelta(minutes=50), NOW, 22.0)
    _series(conn, world["supply"]["S02"], NOW - timedelta(minutes=50), NOW, 61.0)
    # S01 rooms cold for 8 h; one S02 household cold without any substation fault; the others warm
    for code in s01:
        _series(conn, world["room"][code], NOW - timedelta(hours=8), NOW, 15.0, step="20 minutes")
    _series(conn, world["room"]["S02-C1-B1-U1-0101"], NOW - timedelta(hours=8), NOW, 16.0, step="20 minutes")
    for code in ("S02-C1-B1-U1-0201", "S02-C1-B1-U1-0301"):
        _series(conn, world["room"][code], NOW - timedelta(hours=8), NOW, 20.5, step="20 minutes")
    conn.commit()

    first = run_auto_tickets(conn, NOW)
    conn.commit()
    assert first["incidents_opened"] == 1 and first["households_linked"] == 3
    assert first["temp_tests_opened"] == 1 and first["suppressed_by_incident"] == 3
    assert first["households_notified"] == 3             # outage notice to each affected household (R26)
    for minutes in (5, 10, 30):                                   # the scheduler polls again and again
        again = run_auto_tickets(conn, NOW + timedelta(minutes=minutes))
        conn.commit()
        assert again["incidents_opened"] == 0 and again["temp_tests_opened"] == 0
    incidents = conn.execute("SELECT id, substation_id, status, priority FROM ticket WHERE type = 'incident'").fetchall()
    assert len(incidents) == 1
    inc_id, sub, status, prio = incidents[0]
    assert sub == city.substations["S01"] and status == "new" and prio == 1
    linked = {r[0] for r in conn.execute("SELECT household_id FROM ticket_household WHERE ticket_id = %s", (inc_id,))}
    assert linked == {city.households[c] for c in s01}
    # no per-household tickets for the incident's households; exactly one for the cold S02 household
    per_hh = conn.execute("SELECT household_id FROM ticket WHERE type = 'temp_test'").fetchall()
    assert per_hh == [(city.households["S02-C1-B1-U1-0101"],)]
    fault = [e for e in store.history(conn, inc_id) if e["action"] == "fault"]
    assert fault[0]["data"]["findings"][0]["rule"] == "supply_collapse"

    # supply restored at NOW, rooms warm up only an hour later
    later = NOW + timedelta(hours=4, minutes=30)
    for s in ("S01", "S02"):
        _series(conn, world["supply"][s], NOW + timedelta(minutes=10), later, 60.0)
        _series(conn, world["pump"][s], NOW + timedelta(minutes=10), later, 1.0)
    for code in city.households:
        _series(conn, world["room"][code], NOW + timedelta(minutes=20), NOW + timedelta(hours=1), 15.5, step="20 minutes")
        _series(conn, world["room"][code], NOW + timedelta(hours=1, minutes=20), NOW + timedelta(hours=4, minutes=30),
                19.5, step="20 minutes")
    conn.commit()
    # supply is back but the rooms are still cold in the last hour: the incident stays open
    mid = run_auto_tickets(conn, NOW + timedelta(hours=1, minutes=30))
    conn.commit()
    assert mid["incidents_closed"] == 0 and mid["temp_tests_opened"] == 0
    assert _count(conn, "SELECT count(*) FROM ticket WHERE type = 'incident' AND status = 'new'") == 1
    # rooms warm for the incident's recovery window (1 h) → the incident closes; the household's auto 测温
    # needs 3 warm hours (low_temp.recover_hours) and stays open a little longer
    done = run_auto_tickets(conn, NOW + timedelta(hours=3))
    conn.commit()
    assert done["incidents_closed"] == 1 and done["temp_tests_closed"] == 0
    notices = conn.execute("""SELECT household_id, body FROM notify_outbox WHERE idempotency_key LIKE %s
                              ORDER BY id""", (f"ticket:{inc_id}:incident_%",)).fetchall()
    assert sorted(h for h, _ in notices) == sorted([city.households[c] for c in s01] * 2)
    assert sum("已恢复" in b for _, b in notices) == 3
    close_ev = store.history(conn, inc_id)[-1]
    assert close_ev["action"] == "auto_close" and close_ev["data"]["reason"] == "recovered"
    done = run_auto_tickets(conn, NOW + timedelta(hours=4, minutes=25))
    conn.commit()
    assert done["temp_tests_closed"] == 1 and done["incidents_closed"] == 0
    assert _count(conn, "SELECT count(*) FROM ticket WHERE status <> 'closed'") == 0
    after = run_auto_tickets(conn, NOW + timedelta(hours=4, minutes=30))
    conn.commit()
    assert sum(v for k, v in after.items() if k.endswith(("opened", "closed"))) == 0


def test_pump_stop_and_offline_device_and_sensor_maintenance(world):
    conn, city = world["conn"], world["city"]
    for s in ("S01", "S02"):
        _series(conn, world["supply"][s], NOW - timedelta(hours=25), NOW, 60.0)
    _series(conn, world["pump"]["S01"], NOW - timedelta(hours=2), NOW - timedelta(minutes=30), 1.0)
    _series(conn, world["pump"]["S01"], NOW - timedelta(minutes=20), NOW, 0.0)          # pump stopped
    _series(conn, world["pump"]["S02"], NOW - timedelta(hours=2), NOW, 1.0)
    # a third substation device whose gateway is offline (device_status) and silent for 2 h
    conn.execute("""INSERT INTO device_status (device_id, protocol, last_seen, connected, last_error)
                    VALUES ('S02-RTU', 'opcua', %s, false, 'timeout')""", (NOW - timedelta(hours=2),))
    rtu = _sensor(conn, "S02-RTU/flow_2", "flow_2", substation=city.substations["S02"], device="S02-RTU")
    _series(conn, rtu, NOW - timedelta(hours=20), NOW - timedelta(hours=2), 30.0)
    # room sensors warm; one has been silent for 13 h
    for code in city.households:
        end = NOW - timedelta(hours=13) if code == "S02-C1-B1-U1-0301" else NOW
        _series(conn, world["room"][code], NOW - timedelta(hours=20), end, 20.0, step="20 minutes")
    conn.commit()
    out = run_auto_tickets(conn, NOW)
    conn.commit()
    assert out["incidents_opened"] == 2 and out["maintenance_opened"] == 1
    rules = {}
    for tid, sub in conn.execute("SELECT id, substation_id FROM ticket WHERE type = 'incident'").fetchall():
        ev = [e for e in store.history(conn, tid) if e["action"] == "fault"][0]
        rules[sub] = {f["rule"] for f in ev["data"]["findings"]}
    assert rules == {city.substations["S01"]: {"pump_stop"}, city.substations["S02"]: {"device_silent"}}
    m = conn.execute("SELECT sensor_id, household_id, status FROM ticket WHERE type = 'maintenance'").fetchall()
    assert m == [(world["room"]["S02-C1-B1-U1-0301"], city.households["S02-C1-B1-U1-0301"], "new")]
    assert run_auto_tickets(conn, NOW + timedelta(minutes=5))["maintenance_opened"] == 0
    conn.commit()
    # the sensor reports again → the maintenance ticket closes
    _series(conn, world["room"]["S02-C1-B1-U1-0301"], NOW + timedelta(minutes=10), NOW + timedelta(minutes=30), 20.0)
    conn.commit()
    back = run_auto_tickets(conn, NOW + timedelta(minutes=30))
    conn.commit()
    assert back["maintenance_closed"] == 1


def test_many_silent_sensors_raise_one_platform_incident(world):
    conn, city = world["conn"], world["city"]
    for code in city.households:                      # every room sensor went silent 13 h ago
        _series(conn, world["room"][code], NOW - timedelta(hours=30), NOW - timedelta(hours=13), 20.0, step="20 minutes")
    conn.commit()
    out = run_auto_tickets(conn, NOW)
    conn.commit()
    assert out["platform_incidents_opened"] == 1 and out["maintenance_opened"] == 0
    assert run_auto_tickets(conn, NOW + timedelta(minutes=5))["platform_incidents_opened"] == 0
    assert _count(conn, "SELECT count(*) FROM ticket") == 1


def test_nothing_opens_off_season_and_open_auto_tickets_end_with_the_season(world):
    conn, city = world["conn"], world["city"]
    summer = NOW.replace(month=7)                      # 2026-07-10: outside Tianjin's 11-15 … 03-15 season
    for s in ("S01", "S02"):
        _series(conn, world["supply"][s], summer - timedelta(hours=25), summer, 25.0)     # plant off
        _series(conn, world["pump"][s], summer - timedelta(hours=2), summer, 0.0)
    for code in city.households:
        _series(conn, world["room"][code], summer - timedelta(hours=8), summer, 16.0, step="20 minutes")
    conn.commit()
    out = run_auto_tickets(conn, summer)
    assert sum(v for k, v in out.items() if k.endswith("opened")) == 0
    assert _count(conn, "SELECT count(*) FROM ticket") == 0
    conn.rollback()
    # an auto 测温 left open at the end of the season is closed with that reason
    hh = city.households["S01-C1-B1-U1-0101"]
    tid = store.create_ticket(conn, type="temp_test", channel="auto", actor="auto", now=NOW.replace(month=3, day=14),
                              household_id=hh, link_duplicates=False).ticket_id
    out = run_auto_tickets(conn, NOW.replace(month=3, day=20))
    assert out["temp_tests_closed"] == 1
    assert store.history(conn, tid)[-1]["data"]["reason"] == "season_ended"
