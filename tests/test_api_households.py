"""Households: search within scope, the card, masking by role and the PII access log (R55–R60)."""
from __future__ import annotations

import psycopg
import pytest

from tests.api_support import api, api_city, fresh_api  # noqa: F401  (fixtures)


def _log_rows(url, household_id, username, request_id=None):
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT fields, masked, purpose, request_id FROM pii_access_log WHERE household_id = %s AND username = %s "
            "AND (%s::text IS NULL OR request_id = %s) ORDER BY id",
            (household_id, username, request_id, request_id)).fetchall()


def test_search_by_phone_uses_blind_index_and_masks(api):
    r = api.get("/households", "at_agent", params={"phone": "+86 138-1234-5678"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "phone"
    assert [i["code"] for i in body["items"]] == ["AT-H11"]
    c = body["items"][0]["contact"]
    assert c == {"name": "张*", "phone": "138****5678", "address": "天津市滨海新区海景花园3号楼****", "masked": True}


def test_free_text_query_guesses_the_kind(api):
    assert api.get("/households", "at_agent", params={"q": "13812345678"}).json()["kind"] == "phone"
    r = api.get("/households", "at_agent", params={"q": "AT-H1"}).json()
    assert r["kind"] == "code" and [i["code"] for i in r["items"]] == ["AT-H11", "AT-H12"]
    r = api.get("/households", "at_agent", params={"code": "AT-H1"}).json()
    assert [i["code"] for i in r["items"]] == ["AT-H11", "AT-H12"]
    r = api.get("/households", "at_agent", params={"q": "海景花园3号楼2单元601"}).json()
    assert r["kind"] == "address"
    assert [i["code"] for i in r["items"]] == ["AT-H12"]
    r = api.get("/households", "at_agent", params={"q": "李秀英"}).json()
    assert r["kind"] == "name" and [i["code"] for i in r["items"]] == ["AT-H12"]


def test_exact_name_is_found_by_index_beyond_the_partial_scan(api, monkeypatch):
    import api.queries as q
    monkeypatch.setattr(q, "NAME_SCAN_MAX", 0)            # the decrypting scan reaches nobody
    r = api.get("/households", "at_agent", params={"name": "李秀英"}).json()
    assert [i["code"] for i in r["items"]] == ["AT-H12"]   # exact full name: the blind index
    r = api.get("/households", "at_agent", params={"name": "李 秀英"}).json()
    assert [i["code"] for i in r["items"]] == ["AT-H12"]   # normalised like the stored index
    r = api.get("/households", "at_agent", params={"name": "秀英"}).json()
    assert r["items"] == [] and r["truncated"] is True     # partial names need the scan, and say so


def test_search_never_leaves_the_callers_branch(api):
    # 王芳 lives in branch AT-B2: the B1 agent cannot find her by any key, the B2 agent can.
    for params in ({"phone": "13600001111"}, {"name": "王芳"}, {"code": "AT-H21"}, {"address": "河畔家园1号楼"}):
        assert api.get("/households", "at_agent", params=params).json()["items"] == [], params
        assert [i["code"] for i in api.get("/households", "at_b2_agent", params=params).json()["items"]] == ["AT-H21"]
    # another company's household is invisible even to a company-wide admin
    assert api.get("/households", "at_admin", params={"phone": "13500002222"}).json()["items"] == []


@pytest.mark.parametrize("params", [{}, {"q": "  "}, {"phone": "138", "name": "x"}])
def test_search_needs_exactly_one_key(api, params):
    r = api.get("/households", "at_agent", params=params)
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("limit, status", [(0, 422), (1, 200), (200, 200), (201, 422)])
def test_page_size_is_bounded(api, limit, status):
    assert api.get("/households", "at_agent", params={"code": "AT", "limit": limit}).status_code == status


@pytest.mark.parametrize("role, clear", [
    ("agent", True), ("supervisor", True), ("dispatcher", True), ("finance", True),
    ("technician", False),      # no ticket of this household is assigned to him (see the test below)
    ("engineer", False), ("auditor", False), ("admin", False),
])
def test_card_contact_is_masked_unless_the_role_needs_it(api, role, clear):
    hid = api.city.ids["AT-H11"]
    user = f"at_{role}"
    r = api.get(f"/households/{hid}", user)
    assert r.status_code == 200, r.text
    card = r.json()
    if clear:
        assert card["contact"] == {"name": "张伟", "phone": "13812345678",
                                   "address": "天津市滨海新区海景花园3号楼2单元502", "masked": False}
    else:
        assert card["contact"]["phone"] == "138****5678" and card["contact"]["masked"] is True
        assert "12345678" not in r.text and "张伟" not in r.text
    rows = [row for row in _log_rows(api.city.url, hid, user, r.headers["x-request-id"]) if row[0] != ["hardship"]]
    assert len(rows) == 1
    fields, masked, purpose, request_id = rows[0]
    assert fields == ["name", "phone", "address"] and masked is (not clear) and purpose == "household_card"
    assert request_id == r.headers["x-request-id"]


def test_card_shows_hierarchy_rooms_sensors_verdicts(api):
    hid = api.city.ids["AT-H11"]
    card = api.get(f"/households/{hid}", "at_agent").json()
    assert (card["company_code"], card["branch_code"], card["substation_code"]) == ("AT", "AT-B1", "AT-S1")
    assert (card["community"], card["building"], card["unit"], card["floor"]) == ("海景花园", "3号楼", "2单元", 5)
    assert [r["code"] for r in card["rooms"]] == ["bedroom1", "living"]
    s = card["rooms"][1]["sensors"][0]
    assert s["metric"] == "room_temp" and s["last_value"] == pytest.approx(19.8) and s["device_connected"] is True
    assert card["daily_verdicts"][0]["status"] == "non_compliant"
    assert card["heating_status"] == "active"


def test_search_reads_are_logged_as_masked(api):
    hid = api.city.ids["AT-H11"]
    r = api.get("/households", "at_agent", params={"phone": "13812345678"})
    rows = _log_rows(api.city.url, hid, "at_agent", r.headers["x-request-id"])
    assert [row[:3] for row in rows] == [(["name", "phone", "address"], True, "household_search:phone")]


def test_customer_sees_only_own_household(api):
    ids = api.city.ids
    r = api.get("/self/household", "at_customer")
    assert r.status_code == 200 and r.json()["code"] == "AT-H11"
    assert r.json()["contact"]["phone"] == "13812345678"       # their own data, in clear
    assert api.get(f"/households/{ids['AT-H11']}", "at_customer").status_code == 200
    assert api.get(f"/households/{ids['AT-H12']}", "at_customer").status_code == 404
    assert api.get("/households", "at_customer", params={"code": "AT"}).status_code == 403
    assert api.get("/self/household", "at_agent").status_code == 403


def test_pii_access_log_is_for_auditors(api):
    hid = api.city.ids["AT-H12"]
    r = api.get(f"/households/{hid}", "at_finance")
    rid = r.headers["x-request-id"]
    log = api.get("/pii-access-log", "at_auditor", params={"household_id": hid, "limit": 200}).json()["items"]
    mine = sorted((i["username"], i["purpose"], i["masked"], i["fields"]) for i in log if i["request_id"] == rid)
    # finance reads the contact and (sensitive, R57) the hardship status: both logged
    assert mine == [("at_finance", "household_card", False, ["hardship"]),
                    ("at_finance", "household_card", False, ["name", "phone", "address"])]
    assert api.get("/pii-access-log", "at_agent").status_code == 403
    # the other company's auditor scope does not reach AT's log
    assert api.get("/pii-access-log", "ax_agent").status_code == 403


def test_customer_sees_own_bill_only(api):
    city = api.city
    with psycopg.connect(city.url) as conn:
        for code, amount in (("AT-H11", "2124.00"), ("AT-H12", "999.00")):
            conn.execute("""INSERT INTO dunning_bill (household_id, season, period_start, period_end, due_date, amount,
                                                      tariff_code)
                            VALUES (%s, '2026-2027', '2026-11-15', '2027-03-15', '2026-11-30', %s, 'tj-res')
                            ON CONFLICT DO NOTHING""", (city.ids[code], amount))
    r = api.get("/self/bill", "at_customer")
    assert r.status_code == 200, r.text
    [season] = r.json()["seasons"]
    assert season["season"] == "2026-2027" and float(season["outstanding"]) == 2124.0
    assert r.json()["reminders"] == []
    assert api.get("/self/bill", "at_finance").status_code == 403


def test_scope_lists_branches_and_substations_in_scope(api):
    s = api.get("/auth/scope", "at_agent").json()
    assert [b["code"] for b in s["branches"]] == ["AT-B1"]
    assert [x["code"] for x in s["substations"]] == ["AT-S1"]
    assert [x["code"] for x in api.get("/auth/scope", "at_admin").json()["substations"]] == ["AT-S1", "AT-S2"]
    assert api.get("/auth/scope", "at_customer").status_code == 403


def test_hardship_status_only_for_finance_and_logged(api):
    from core.pii import FieldCipher
    from tests.api_support import FIELD_KEY

    hid = api.city.ids["AT-H12"]
    with psycopg.connect(api.city.url) as conn:
        conn.execute("""INSERT INTO pii.dunning_hardship (household_id, category_enc, valid_from, expires_on, verified_by)
                        VALUES (%s, %s, '2026-01-01', '2027-12-31', 'street office') ON CONFLICT DO NOTHING""",
                     (hid, FieldCipher(FIELD_KEY).encrypt("dibao")))
    r = api.get(f"/households/{hid}", "at_finance")
    assert r.json()["hardship"]["category"] == "dibao" and r.json()["hardship"]["on_record"] is True
    rows = _log_rows(api.city.url, hid, "at_finance", r.headers["x-request-id"])
    assert ["hardship"] in [row[0] for row in rows]
    for role in ("agent", "supervisor", "auditor", "admin", "engineer"):
        body = api.get(f"/households/{hid}", f"at_{role}").json()
        assert "hardship" not in body and "dibao" not in str(body), role


def test_technician_sees_contact_only_of_households_he_visits(fresh_api):
    ids = fresh_api.city.ids
    with psycopg.connect(fresh_api.city.url) as conn:
        st = conn.execute("INSERT INTO repair_station (company_id, code, name) VALUES (%s, 'RS', '站') RETURNING id",
                          (ids["AT"],)).fetchone()[0]
        tech = conn.execute("INSERT INTO technician (station_id, code, name) VALUES (%s, 'T1', '周') RETURNING id",
                            (st,)).fetchone()[0]
        conn.execute("UPDATE app_user SET technician_id = %s WHERE username = 'at_technician'", (tech,))
        conn.execute("""INSERT INTO ticket (no, type, channel, status, household_id, company_id, assignee_id)
                        VALUES ('T-1', 'repair', 'phone', 'dispatched', %s, %s, %s)""", (ids["AT-H11"], ids["AT"], tech))
    visit = fresh_api.get(f"/households/{ids['AT-H11']}", "at_technician").json()["contact"]
    other = fresh_api.get(f"/households/{ids['AT-H12']}", "at_technician").json()["contact"]
    assert visit["phone"] == "13812345678" and visit["masked"] is False
    assert other["phone"] == "139****4321" and other["masked"] is True
    with psycopg.connect(fresh_api.city.url) as conn:
        conn.execute("UPDATE ticket SET status = 'closed' WHERE no = 'T-1'")
    assert fresh_api.get(f"/households/{ids['AT-H11']}", "at_technician").json()["contact"]["masked"] is True
