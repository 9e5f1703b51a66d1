"""The ticket, screen-pop and report routers end to end (real app, real database, tokens per role)."""
from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import psycopg
from openpyxl import load_workbook

from api.auth import create_user
from tests.api_support import fresh_api, password  # noqa: F401  (fixture)


def _technician(api, code="AT-T1", username="at_tech1"):
    """Set up a crew through the API (station, technician, shift); the technician's login by SQL."""
    ids = api.city.ids
    now = datetime.now(timezone.utc)
    with psycopg.connect(api.city.url) as conn:
        comm = conn.execute("SELECT id FROM community WHERE substation_id = %s", (ids["AT-S1"],)).fetchone()[0]
        other = conn.execute("SELECT id FROM community WHERE substation_id = %s", (ids["AX-S1"],)).fetchone()[0]
    r = api.post("/repair-stations", "at_dispatcher", json={"code": code + "-RS", "name": "一站", "community_ids": [other]})
    assert r.status_code == 404                                      # another company's community
    r = api.post("/repair-stations", "at_dispatcher", json={"code": code + "-RS", "name": "一站", "community_ids": [comm]})
    assert r.status_code == 201, r.text
    r = api.post("/technicians", "at_dispatcher", json={"station_id": r.json()["id"], "code": code, "name": "李师傅",
                                                         "skills": ["repair", "service", "temp_test"]})
    assert r.status_code == 201, r.text
    tid = r.json()["id"]
    shift = {"starts_at": (now - timedelta(hours=2)).isoformat(), "ends_at": (now + timedelta(hours=6)).isoformat()}
    assert api.post(f"/technicians/{tid}/shifts", "at_dispatcher", json=shift).status_code == 201
    assert api.post(f"/technicians/{tid}/shifts", "at_dispatcher", json=shift).status_code == 422      # overlap
    with psycopg.connect(api.city.url) as conn:
        create_user(conn, username=username, role="technician", company_id=ids["AT"], password=password(username),
                    branch_ids=[ids["AT-B1"]], technician_id=tid)
    assert api.post(f"/technicians/{tid}/location", username, json={"lat": 39.1, "lon": 117.2}).status_code == 204
    board = api.get("/technicians", "at_dispatcher").json()["items"]
    assert [(t["code"], t["on_duty"], t["load"]) for t in board] == [(code, True, 0)]
    return tid


def test_ticket_lifecycle_over_http(fresh_api):
    api, ids = fresh_api, fresh_api.city.ids
    body = {"type": "repair", "household_id": ids["AT-H11"], "category": "no_heat", "description": "暖气不热"}
    r = api.post("/tickets", "at_agent", json=body)
    assert r.status_code == 201, r.text
    tid = r.json()["ticket"]["id"]
    assert r.json()["duplicate_of"] is None
    # the same call again is a 催单 on the open ticket
    r = api.post("/tickets", "at_agent", json={**body, "channel": "wechat"})
    assert r.status_code == 201 and r.json()["duplicate_of"] == tid and r.json()["urge_count"] == 1
    # object-level access: another company → 404, another branch → 403
    assert api.get(f"/tickets/{tid}", "ax_agent").status_code == 404
    assert api.get(f"/tickets/{tid}", "at_b2_agent").status_code == 403
    assert api.post("/tickets", "at_b2_agent", json=body).status_code == 403
    # nobody on duty yet → automatic dispatch is a conflict with a clear message
    r = api.post(f"/tickets/{tid}/dispatch", "at_dispatcher", json={})
    assert r.status_code == 409 and "technician" in r.json()["detail"]
    tech = _technician(api)
    r = api.get(f"/tickets/{tid}/candidates", "at_dispatcher")
    assert r.status_code == 200 and r.json()["items"][0]["technician_id"] == tech
    r = api.post(f"/tickets/{tid}/dispatch", "at_dispatcher", json={})
    assert r.status_code == 200 and r.json()["assignee_id"] == tech
    assert api.post(f"/tickets/{tid}/dispatch", "at_agent", json={}).status_code == 403     # no tickets:assign
    assert api.post(f"/tickets/{tid}/accept", "at_tech1").status_code == 200
    assert api.post(f"/tickets/{tid}/arrive", "at_tech1", json={"lat": 39.1, "lon": 117.2}).status_code == 200
    png = b"\x89PNG\r\n\x1a\n0000"
    r = api.post(f"/tickets/{tid}/attachments", "at_tech1", files={"file": ("radiator.png", png, "image/png")},
                 data={"kind": "photo"})
    assert r.status_code == 201, r.text
    aid = r.json()["id"]
    r = api.post(f"/tickets/{tid}/attachments", "at_tech1", files={"file": ("x.exe", b"MZ", "application/x-msdownload")})
    assert r.status_code == 422
    r = api.get(f"/tickets/{tid}/attachments/{aid}", "at_agent")
    assert r.status_code == 200 and r.content == png and r.headers["content-type"] == "image/png"
    r = api.post(f"/tickets/{tid}/resolve", "at_tech1", json={"resolution": "排气"})
    assert r.status_code == 200 and r.json()["status"] == "resolved"
    r = api.post(f"/tickets/{tid}/close", "at_agent")
    assert r.status_code == 409 and "revisit" in r.json()["detail"]                       # 回访 first
    r = api.post(f"/tickets/{tid}/revisit", "at_agent", json={"satisfaction": 1, "comment": "还是冷"})
    assert r.status_code == 200 and r.json()["status"] == "reopened"
    r = api.post(f"/tickets/{tid}/revisit", "at_agent", json={"satisfaction": 9})
    assert r.status_code == 422
    r = api.get(f"/tickets/{tid}", "at_agent")
    t = r.json()
    assert [e["action"] for e in t["events"]][:3] == ["create", "urge", "dispatch"]
    assert {c["clock"] for c in t["sla"]} == {"ack", "arrive", "resolve"}
    assert t["refund_clock"]["days_from"] == "report" and len(t["attachments"]) == 1
    # the customer sees the own ticket, not another household's
    assert api.get(f"/tickets/{tid}", "at_customer").status_code == 200
    r = api.post("/tickets", "at_customer", json={"type": "inquiry", "channel": "app", "household_id": ids["AT-H12"]})
    assert r.status_code == 403
    r = api.post("/tickets", "at_customer", json={"type": "inquiry", "channel": "app", "household_id": ids["AT-H11"]})
    assert r.status_code == 201
    with psycopg.connect(api.city.url) as conn:
        n = conn.execute("SELECT count(*) FROM notify_outbox WHERE source = 'ticketing'").fetchone()[0]
    assert n == 2                                       # dispatch + resolution
    # lists are scoped: the other branch's agent sees none of AT-B1's tickets
    r = api.get("/tickets", "at_agent", params={"status": ["reopened", "merged"]})
    assert r.status_code == 200 and sorted(t["status"] for t in r.json()["items"]) == ["merged", "reopened"]
    assert api.get("/tickets", "at_b2_agent").json()["items"] == []
    # a unit-level ticket (no household) is checked against the unit's substation
    with psycopg.connect(api.city.url) as conn:
        unit_b2 = conn.execute("SELECT unit_id FROM household WHERE id = %s", (ids["AT-H21"],)).fetchone()[0]
    assert api.post("/tickets", "at_agent", json={"type": "repair", "unit_id": unit_b2}).status_code == 403
    assert api.post("/tickets", "at_b2_agent", json={"type": "repair", "unit_id": unit_b2}).status_code == 201


def test_screen_pop_reports_and_temp_test(fresh_api):
    api, ids = fresh_api, fresh_api.city.ids
    r = api.post("/tickets", "at_agent", json={"type": "complaint", "household_id": ids["AT-H11"],
                                              "category": "low_temp", "description": "室温低"})
    assert r.status_code == 201
    api.post("/tickets", "at_agent", json={"type": "repair", "household_id": ids["AT-H12"], "category": "leak"})
    r = api.get("/screenpop", "at_agent", params={"phone": "+86 138-1234-5678"})
    assert r.status_code == 200, r.text
    pop = r.json()
    assert pop["matched"] == 1
    card = pop["households"][0]
    assert card["household"]["code"] == "AT-H11" and card["contact"]["phone"] == "13812345678"
    assert [t["type"] for t in card["open_tickets"]] == ["complaint"]
    assert [t["type"] for t in card["same_unit_open_tickets"]] == ["repair"]       # the neighbour's leak
    assert card["compliance"]["latest"]["status"] == "non_compliant"
    assert card["compliance"]["curve_url"].endswith(f"/households/{ids['AT-H11']}/curve")
    assert api.get("/screenpop", "ax_agent", params={"phone": "13812345678"}).json()["matched"] == 0
    assert api.get("/screenpop", "at_customer", params={"phone": "13812345678"}).status_code == 403
    # reports
    r = api.get("/reports/tickets", "at_supervisor")
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["tickets"] == 2 and rep["by_type"] == {"complaint": 1, "repair": 1}
    assert rep["completion_rate_pct"] == 0.0
    s1 = [c for c in rep["complaint_rate"] if c["substation"] == "AT-S1"]
    assert s1 and s1[-1]["complaints"] == 1 and float(s1[-1]["rate_permille"]) == 500.0      # 1 of 2 households
    assert rep["open_by_community"][0]["open_tickets"] == 2
    r = api.get("/reports/tickets.csv", "at_supervisor", params={"table": "by_type"})
    assert r.status_code == 200 and r.content.decode("utf-8-sig").splitlines()[1:] == ["complaint,1", "repair,1"]
    r = api.get("/reports/tickets.xlsx", "at_supervisor")
    wb = load_workbook(io.BytesIO(r.content))
    assert "汇总" in wb.sheetnames and wb["按类型"]["A2"].value == "complaint"
    assert api.get("/reports/tickets", "at_agent").status_code == 403

    # 测温 over HTTP: on site, both signatures, a below-standard result confirms refund days (R13)
    tech = _technician(api)
    r = api.post("/tickets", "at_agent", json={"type": "temp_test", "household_id": ids["AT-H12"]})
    tid = r.json()["ticket"]["id"]
    assert api.post(f"/tickets/{tid}/dispatch", "at_dispatcher", json={"technician_id": tech}).status_code == 200
    assert api.post(f"/tickets/{tid}/accept", "at_tech1").status_code == 200
    assert api.post(f"/tickets/{tid}/arrive", "at_tech1", json={}).status_code == 200
    sig = [api.post(f"/tickets/{tid}/attachments", "at_tech1", files={"file": (f"{w}.png", w.encode(), "image/png")},
                    data={"kind": "signature"}).json()["id"] for w in ("staff", "user")]
    now = datetime.now(timezone.utc)
    test = {"measured_at": now.isoformat(), "readings": [16.1, 16.2, 16.3], "height_m": 1.2, "points": 1,
            "stability_ok": True, "instrument_id": "TH-1", "calibration_cert": "C-1",
            "calibration_expiry": (now + timedelta(days=100)).date().isoformat(),
            "staff_signature_id": sig[0], "user_signature_id": sig[1]}
    assert api.post(f"/tickets/{tid}/temp-tests", "at_tech1", json={**test, "user_signature_id": None}).status_code == 422
    r = api.post(f"/tickets/{tid}/temp-tests", "at_tech1", json=test)
    assert r.status_code == 201, r.text
    assert r.json()["result_c"] == 16.2 and r.json()["below_standard"] is True
    day = r.json()["confirmed_days"][0]
    r = api.get(f"/households/{ids['AT-H12']}/confirmed-noncompliant-days", "at_agent",
                params={"from": day, "to": day})
    assert [d["measured_c"] for d in r.json()["items"]] == [16.2]
    assert api.get(f"/households/{ids['AT-H12']}/confirmed-noncompliant-days", "ax_agent",
                   params={"from": day, "to": day}).status_code == 404
