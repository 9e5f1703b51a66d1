"""Analytics routes (api/routes/curves.py, compliance.py, substations.py) against the api test city."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests.api_support import api, api_city  # noqa: F401  (fixtures)


def _ids(api):
    return api.city.ids


def test_curve_json_png_and_scope(api):
    hid = _ids(api)["AT-H11"]
    r = api.get(f"/households/{hid}/curve", "at_agent")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["range"]["bucket_s"] == 1800 and {x["code"] for x in body["rooms"]} == {"living", "bedroom1"}
    assert any(v is not None for x in body["rooms"] for v in x["mean"])
    assert body["days"][-1]["threshold_c"] == 18.0 and "ETag" in r.headers
    png = api.get(f"/households/{hid}/curve", "at_agent", params={"format": "png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    assert api.get(f"/households/{hid}/curve", "at_customer").status_code == 200         # own household
    assert api.get(f"/households/{_ids(api)['AT-H12']}/curve", "at_customer").status_code == 404
    assert api.get(f"/households/{_ids(api)['AT-H21']}/curve", "at_agent").status_code == 403   # other branch
    assert api.get(f"/households/{_ids(api)['AX-H1']}/curve", "at_agent").status_code == 404    # other company
    assert api.get(f"/households/{hid}/curve").status_code == 401


@pytest.mark.parametrize("params, code", [
    ({"from": "2026-01-01T00:00:00+08:00", "to": "2026-06-01T00:00:00+08:00"}, "range_too_long"),
    ({"from": "2026-01-05T00:00:00+08:00", "to": "2026-01-01T00:00:00+08:00"}, "range_inverted"),
    ({"bucket": "10"}, "validation_error"),
    ({"format": "gif"}, "validation_error"),
])
def test_curve_bad_parameters_are_4xx(api, params, code):
    r = api.get(f"/households/{_ids(api)['AT-H11']}/curve", "at_agent", params=params)
    assert r.status_code == 422 and r.json()["code"] == code


def test_evidence_pack_and_verify(api):
    hid = _ids(api)["AT-H11"]
    r = api.get(f"/households/{hid}/evidence.pdf", "at_agent")
    assert r.status_code == 200 and r.content[:5] == b"%PDF-"
    manifest = {"samples_sha256": r.headers["X-Evidence-Samples-SHA256"],
                "result_sha256": r.headers["X-Evidence-Result-SHA256"], "start": r.headers["X-Evidence-Start"],
                "end": r.headers["X-Evidence-End"], "timezone": "Asia/Shanghai", "n_samples": 4, "code_version": "x"}
    v = api.post(f"/households/{hid}/evidence/verify", "at_agent", json=manifest)
    assert v.status_code == 200 and v.json()["samples_match"] is True
    bad = api.post(f"/households/{hid}/evidence/verify", "at_agent", json={**manifest, "samples_sha256": "0" * 64})
    assert bad.json()["ok"] is False
    assert api.post(f"/households/{hid}/evidence/verify", "at_agent", json={"start": "x"}).status_code == 422


def test_compliance_days_and_summary(api):
    hid = _ids(api)["AT-H11"]
    today = datetime.now(timezone(timedelta(hours=8))).date()
    params = {"from": (today - timedelta(days=3)).isoformat(), "to": today.isoformat()}
    r = api.get(f"/households/{hid}/compliance", "at_agent", params=params)
    assert r.status_code == 200, r.text
    days = r.json()["days"]
    assert days[-1]["status"] == "non_compliant" and len(days[-1]["rooms"]) == 2
    s = api.get(f"/households/{hid}/compliance/summary", "at_agent", params=params).json()
    assert (s["non_compliant"], s["rate"]) == (1, 0.0)
    too_long = api.get(f"/households/{hid}/compliance", "at_agent", params={"from": "2024-01-01", "to": "2026-01-01"})
    assert too_long.status_code == 422 and too_long.json()["code"] == "range_too_long"
    assert api.get(f"/households/{hid}/compliance", "at_agent", params={"from": "x", "to": "y"}).status_code == 422


def test_refund_route_needs_finance_scope(api):
    hid = _ids(api)["AT-H11"]
    params = {"season": 2025, "season_fee": 2212.5}
    assert api.get(f"/households/{hid}/refund", "at_engineer", params=params).status_code == 403
    r = api.get(f"/households/{hid}/refund", "at_finance", params=params)
    assert r.status_code == 200 and r.json()["policy"] == "tianjin v1" and r.json()["statutory_days"] == 121


def test_substation_kpis_series_and_diagnosis(api):
    sid = _ids(api)["AT-S1"]
    k = api.get(f"/substations/{sid}/kpis", "at_engineer")
    assert k.status_code == 200, k.text
    assert k.json()["substation"]["code"] == "AT-S1" and "alarms" in k.json()
    s = api.get(f"/substations/{sid}/series", "at_engineer")
    assert s.status_code == 200 and s.json()["bucket_s"] == 1800
    assert api.get(f"/substations/{sid}/kpis", "at_customer").status_code == 403
    assert api.get(f"/substations/{_ids(api)['AX-S1']}/kpis", "at_engineer").status_code == 404
    d = api.get(f"/households/{_ids(api)['AT-H11']}/diagnosis", "at_agent")
    assert d.status_code == 200 and d.json()["blame"] in {"household", "building", "substation", "none", "unknown"}
    assert d.json()["text_zh"] and d.json()["text_en"]
    assert api.get(f"/households/{_ids(api)['AT-H11']}/diagnosis", "at_customer").status_code == 403
