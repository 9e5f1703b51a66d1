"""Dispatch: the chosen technician and the recorded reasons; manual, 改派, 抢单; SLA job idempotency."""
from __future__ import annotations

from datetime import timedelta

import pytest

from tests.test_ticketing_support import T0, city, tconn, tdb_url  # noqa: F401  (fixtures)
from ticketing import dispatch, store
from ticketing.dispatch import NoCandidate, rank
from ticketing.model import InvalidTransition, TicketValidationError
from ticketing.policy import policy_for
from ticketing.sla import run_sla_checks

B_LAT, B_LON = 39.10, 117.20          # building S01-C1-B1 (tests/test_ticketing_support.py)


def _station(conn, city, code, community):
    sid = conn.execute("INSERT INTO repair_station (company_id, code, name) VALUES (%s, %s, %s) RETURNING id",
                       (city.company, code, code)).fetchone()[0]
    conn.execute("INSERT INTO station_area (station_id, community_id) VALUES (%s, %s)", (sid, city.communities[community]))
    return sid


def _tech(conn, station, code, skills, lat=B_LAT, lon=B_LON, on_duty=True, max_load=6):
    tid = conn.execute("""INSERT INTO technician (station_id, code, name, skills, lat, lon, location_at, max_load)
                          VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
                       (station, code, code, list(skills), lat, lon, T0 - timedelta(minutes=5), max_load)).fetchone()[0]
    start = T0 - timedelta(hours=4) if on_duty else T0 + timedelta(hours=4)
    conn.execute("INSERT INTO technician_shift VALUES (%s, %s, %s)", (tid, start, start + timedelta(hours=8)))
    return tid


@pytest.fixture
def crew(tconn, city):
    rs1 = _station(tconn, city, "RS1", "S01-C1")
    rs2 = _station(tconn, city, "RS2", "S02-C1")
    return {
        "rs1": rs1, "rs2": rs2,
        "A": _tech(tconn, rs1, "A", ["repair", "temp_test"]),
        "B": _tech(tconn, rs2, "B", ["repair"]),                            # other station's area
        "C": _tech(tconn, rs1, "C", ["valve"]),                             # lacks the skill
        "D": _tech(tconn, rs1, "D", ["repair"], on_duty=False),             # off shift
        "E": _tech(tconn, rs1, "E", ["repair"], max_load=0),                # full
    }


def _repair(conn, city, hh="S01-C1-B1-U1-0101", priority=3, **kw):
    return store.create_ticket(conn, type="repair", channel="phone", actor="agent", now=T0,
                               household_id=city.households[hh], priority=priority, **kw).ticket_id


def test_auto_dispatch_picks_area_skill_and_records_why(tconn, city, crew):
    tid = _repair(tconn, city)
    ranked = dispatch.candidates(tconn, tid, T0)
    assert [c.code for c in ranked] == ["A", "C", "B"]                 # D off duty, E at max load
    assert ranked[0].components == {"area": 40.0, "skill": 25.0, "distance": 20.0, "load": 15.0}
    assert ranked[1].components["skill"] == 0.0 and ranked[2].components["area"] == 0.0
    t = dispatch.auto_dispatch(tconn, tid, now=T0)
    assert t["assignee_id"] == crew["A"] and t["status"] == "dispatched" and t["station_id"] == crew["rs1"]
    ev = store.history(tconn, tid)[-1]
    assert ev["action"] == "dispatch" and ev["data"]["mode"] == "auto" and ev["data"]["score"] == 100.0
    assert ev["data"]["components"]["area"] == 40.0 and "本站辖区" in ev["data"]["reasons"]
    assert [r["technician_id"] for r in ev["data"]["runners_up"]] == [crew["C"], crew["B"]]


def test_load_and_distance_change_the_choice(tconn, city, crew):
    # A is busy with 5 orders: load score 15 × (1 − 5/6) = 2.5; C (no skill) 75 vs A 87.5 → still A
    for k in range(5):
        other = store.create_ticket(tconn, type="inquiry", channel="phone", actor="a", now=T0,
                                    household_id=city.households["S02-C1-B1-U1-0101"],
                                    description=f"q{k}", link_duplicates=False).ticket_id
        dispatch.assign(tconn, other, crew["A"], actor="d", now=T0)
    tid = _repair(tconn, city)
    best = dispatch.candidates(tconn, tid, T0)[0]
    assert best.code == "A" and best.load == 5 and best.components["load"] == 2.5
    # move A 6 km away: distance 20 × (1 − 6/10) = 8 → A 75.5 < C 75? no: 40+25+8+2.5 = 75.5 > 75
    tconn.execute("UPDATE technician SET lat = %s WHERE id = %s", (B_LAT + 6 / 111.2, crew["A"]))
    ranked = dispatch.candidates(tconn, tid, T0)
    assert ranked[0].code == "A" and ranked[0].score == pytest.approx(75.5, abs=0.1)
    # a stale location is not used: distance 0, reason says so → C wins
    tconn.execute("UPDATE technician SET location_at = %s WHERE id = %s", (T0 - timedelta(hours=5), crew["A"]))
    ranked = dispatch.candidates(tconn, tid, T0)
    assert ranked[0].code == "C" and "位置未知" in ranked[1].reasons


def test_urgent_tickets_weigh_distance_more():
    pol = policy_for("tianjin", "HD", T0.date())
    near = {"id": 1, "code": "near", "name": "n", "station_id": 1, "skills": ["repair"], "lat": 39.10, "lon": 117.20,
            "location_fresh": True, "load": 0, "max_load": 6, "owns_area": False}
    # the area owner is 9.5 km away with 5 of 6 orders open
    owner = {**near, "id": 2, "code": "owner", "lat": 39.10 + 9.5 / 111.2, "owns_area": True, "load": 5}
    normal = {"type": "repair", "priority": 3, "lat": 39.10, "lon": 117.20}
    r = rank(normal, [near, owner], pol)
    assert [(c.code, c.score) for c in r] == [("owner", 68.5), ("near", 60.0)]
    # priority 1: distance weighs ×1.5 → the nearby technician (20 × 1.5 = 30) gets there first
    r = rank({**normal, "priority": 1}, [near, owner], pol)
    assert [(c.code, c.score) for c in r] == [("near", 70.0), ("owner", 69.0)]
    assert r[0].components["distance"] == 30.0


def test_no_candidate_is_a_clear_error(tconn, city):
    tid = _repair(tconn, city)
    with pytest.raises(NoCandidate):
        dispatch.auto_dispatch(tconn, tid, now=T0)


def test_reassign_claim_and_pool(tconn, city, crew):
    tid = _repair(tconn, city)
    dispatch.assign(tconn, tid, crew["A"], actor="d", now=T0)
    with pytest.raises(TicketValidationError):
        dispatch.reassign(tconn, tid, crew["C"], actor="d", now=T0, reason="")
    t = dispatch.reassign(tconn, tid, crew["C"], actor="d", now=T0, reason="A 请假")
    assert t["assignee_id"] == crew["C"] and t["status"] == "dispatched"
    ev = store.history(tconn, tid)[-1]
    assert ev["action"] == "reassign" and ev["data"]["previous_technician_id"] == crew["A"]
    # 抢单 from the pool: only the station owning the area
    t2 = _repair(tconn, city, hh="S01-C1-B1-U1-0301", category="leak", link_duplicates=False)
    assert t2 in [p["id"] for p in dispatch.pool(tconn, crew["A"], T0)]
    assert t2 not in [p["id"] for p in dispatch.pool(tconn, crew["B"], T0)]
    with pytest.raises(TicketValidationError, match="area"):
        dispatch.claim(tconn, t2, crew["B"], actor="B", now=T0)
    with pytest.raises(TicketValidationError, match="on duty"):
        dispatch.claim(tconn, t2, crew["D"], actor="D", now=T0)
    t = dispatch.claim(tconn, t2, crew["A"], actor="A", now=T0)
    assert t["status"] == "accepted" and t["assignee_id"] == crew["A"]
    with pytest.raises(InvalidTransition):
        dispatch.claim(tconn, t2, crew["A"], actor="A", now=T0)


def test_sla_job_raises_each_notice_once(tconn, city, crew):
    tid = _repair(tconn, city, category="leak")             # arrive 30 min, ack 10 min
    s1 = run_sla_checks(tconn, T0 + timedelta(minutes=25))
    acts = [e["action"] for e in store.history(tconn, tid)]
    assert acts.count("sla_warning") == 2 and acts.count("sla_breach") == 1      # ack breached; arrive warned
    s2 = run_sla_checks(tconn, T0 + timedelta(minutes=26))
    assert s2["warning"] == 0 and s2["breach"] == 0 and s1["breach"] == 1
    run_sla_checks(tconn, T0 + timedelta(minutes=61))     # arrive at 203 % → breach + full ladder
    ev = [e for e in store.history(tconn, tid) if e["action"] in ("sla_breach", "sla_escalate")]
    assert sorted((e["data"]["clock"], e["data"]["level"]) for e in ev) == sorted([
        ("ack", "breach"), ("ack", "team_lead"), ("ack", "station_head"), ("ack", "service_center"),
        ("arrive", "breach"), ("arrive", "team_lead"), ("arrive", "station_head"), ("arrive", "service_center")])


def test_sla_job_deems_a_late_temp_test_where_the_region_says_so(tconn, city):
    # Weihai (R12): no 测温 within the 24 h arrive clock → the days are deemed < 14 ℃
    hh = city.households["S01-C1-B1-U1-0101"]
    tid = store.request_temp_test(tconn, hh, actor="agent", now=T0).ticket_id
    run_sla_checks(tconn, T0 + timedelta(hours=25))
    assert tconn.execute("SELECT count(*) FROM temp_test").fetchone()[0] == 0      # tianjin: not deemed
    tconn.execute("UPDATE company SET region_code = 'weihai' WHERE id = %s", (city.company,))
    out = run_sla_checks(tconn, T0 + timedelta(hours=25, minutes=1))
    assert out["deemed_late"] == 1
    assert run_sla_checks(tconn, T0 + timedelta(hours=26))["deemed_late"] == 0     # once
    rows = tconn.execute("SELECT day, basis FROM confirmed_noncompliant_day WHERE household_id = %s ORDER BY day",
                         (hh,)).fetchall()
    assert [r[1] for r in rows] == ["deemed_below_14", "deemed_below_14"]           # 12-10 and 12-11 (local)
    assert store.history(tconn, tid)[-1]["action"] in ("sla_escalate", "sla_breach", "temp_test")


def test_scheduler_registers_idempotent_jobs(tdb_url):
    from apscheduler.schedulers.background import BackgroundScheduler

    from ticketing.auto import schedule_auto_tickets

    sched = BackgroundScheduler(timezone="Asia/Shanghai")
    sched.start(paused=True)
    try:
        _check_jobs(sched, tdb_url, schedule_auto_tickets)
    finally:
        sched.shutdown(wait=False)


def _check_jobs(sched, tdb_url, schedule_auto_tickets):
    jobs = schedule_auto_tickets(sched, tdb_url, auto_every_s=120, sla_every_s=30)
    assert [j.id for j in jobs] == ["ticketing.auto_tickets", "ticketing.sla_checks"]
    assert jobs[0].max_instances == 1 and jobs[0].coalesce
    schedule_auto_tickets(sched, tdb_url)                                           # replace, not duplicate
    assert len(sched.get_jobs()) == 2
    # the job bodies run against a real database (empty: nothing to open)
    assert jobs[0].func(*jobs[0].args, T0)["incidents_opened"] == 0
    assert jobs[1].func(*jobs[1].args, T0)["tickets"] == 0
