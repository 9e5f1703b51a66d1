"""api/routes/dunning.py and payments.py: thin handlers over dunning (preview, balance, payments)."""
from __future__ import annotations

import psycopg

from dunning import ledger
from tests.api_support import fresh_api  # noqa: F401  (fixture)


def _bills(api):
    with psycopg.connect(api.city.url) as conn:
        ledger.generate_bills(conn, "AT", 2026)
        conn.commit()


def test_payment_intake_is_idempotent_and_scoped(fresh_api):
    api = fresh_api
    _bills(api)
    hid = api.city.ids["AT-H11"]
    body = {"household_id": hid, "amount": "800.00", "channel": "alipay", "external_id": "ALI-20261201-1",
            "paid_at": "2026-12-01T10:00:00+08:00"}
    r = api.post("/payments", "at_finance", json=body)
    assert r.status_code == 201, r.text
    pid = r.json()["payment_id"]
    again = api.post("/payments", "at_finance", json=body)
    assert again.status_code == 200 and again.json() == {"payment_id": pid, "duplicate": True}
    assert api.post("/payments", "at_finance", json={**body, "amount": "801.00"}).status_code == 409
    assert api.post("/payments", "at_agent", json=body).status_code == 403            # no dunning:write
    other = api.post("/payments", "at_finance", json={**body, "household_id": api.city.ids["AX-H1"],
                                                       "external_id": "X"})
    assert other.status_code == 404                                                   # other company
    bad = api.post("/payments", "at_finance", json={**body, "channel": "property_fee", "external_id": "Y"})
    assert bad.status_code == 422
    b = api.get(f"/households/{hid}/dunning/balance", "at_finance", params={"season": "2026-2027"})
    assert b.status_code == 200 and b.json()["paid"] == "800.00"


def test_preview_returns_decision_with_reasons_and_writes_nothing(fresh_api):
    api = fresh_api
    _bills(api)
    hid = api.city.ids["AT-H12"]
    r = api.get(f"/households/{hid}/dunning/preview", "at_agent", params={"as_of": "2027-01-07"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["step"] == "second" and body["action"] in ("send", "hold")
    assert body["late_fee_label"] == "违约金" and "compliance" in body["evidence"]
    assert set(body["cutoff_checks"]) >= {"individually_valved", "no_hardship", "formal_notice_delivered_with_proof"}
    with psycopg.connect(api.city.url) as conn:
        assert conn.execute("SELECT count(*) FROM dunning_decision").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM notify_outbox").fetchone()[0] == 0
    assert api.get(f"/households/{hid}/dunning/preview", "at_customer").status_code == 403
    assert api.get(f"/households/{hid}/dunning/decisions", "at_agent").json()["decisions"] == []


def test_case_handling_endpoints_change_the_gate(fresh_api):
    api = fresh_api
    _bills(api)
    hid = api.city.ids["AT-H11"]
    day = {"as_of": "2027-01-15"}                                          # D+15: the 催缴通知书 step
    assert api.get(f"/households/{hid}/dunning/preview", "at_finance", params=day).json()["step"] == "formal"
    # hardship (sensitive): finance only; encrypted at rest; the gate then skips the consequence step
    h = {"category": "dibao", "doc_ref": "民政-2026-17", "valid_from": "2026-10-01", "expires_on": "2027-09-30"}
    assert api.client.put(f"/households/{hid}/dunning/hardship", json=h, headers=api.h("at_agent")).status_code == 403
    r = api.client.put(f"/households/{hid}/dunning/hardship", json=h, headers=api.h("at_finance"))
    assert r.status_code == 200, r.text
    p = api.get(f"/households/{hid}/dunning/preview", "at_finance", params=day).json()
    assert (p["action"], p["reasons"]) == ("skip", ["hardship_no_consequence"])
    with psycopg.connect(api.city.url) as conn:
        raw = conn.execute("SELECT category_enc, doc_ref_enc FROM pii.dunning_hardship").fetchone()
        assert b"dibao" not in bytes(raw[0]) and "民政".encode() not in bytes(raw[1])
    # a dispute holds the second household
    h2 = api.city.ids["AT-H12"]
    d = api.post(f"/households/{h2}/dunning/disputes", "at_finance", json={"season": "2026-2027", "kind": "bill"})
    assert d.status_code == 201
    p2 = api.get(f"/households/{h2}/dunning/preview", "at_finance", params=day).json()
    assert p2["action"] == "hold" and "open_dispute" in p2["reasons"]
    assert api.post(f"/dunning/disputes/{d.json()['dispute_id']}/resolve", "at_finance").status_code == 200
    assert api.post(f"/dunning/disputes/{d.json()['dispute_id']}/resolve", "at_finance").status_code == 409
    # instalments are validated (R32: first part ≥ 30 %)
    bad = {"season": "2026-2027", "total": "100.00", "parts": [{"due_date": "2027-01-20", "amount": "10.00"},
                                                                {"due_date": "2027-02-20", "amount": "45.00"},
                                                                {"due_date": "2027-03-20", "amount": "45.00"}]}
    r = api.post(f"/households/{h2}/dunning/instalment-plans", "at_finance", json=bad)
    assert r.status_code == 422 and "30%" in r.text
