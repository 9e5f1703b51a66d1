"""Ingest status per device and recent rejects, read from what ingest stored."""
from __future__ import annotations

from tests.api_support import api, api_city  # noqa: F401  (fixtures)


def test_device_list_has_status_and_last_hour_counts(api):
    items = {d["device_id"]: d for d in api.get("/devices", "at_engineer").json()["items"]}
    t = items["therm-AT-H11"]
    assert t["connected"] is True and t["readings_last_hour"] == 4 and t["rejects_last_hour"] == 1
    s = items["AT-S1"]
    assert s["connected"] is False and s["last_error"] == "timeout"
    # disconnected first: what needs attention is on top
    assert next(iter(items)) == "AT-S1"
    only_modbus = api.get("/devices", "at_engineer", params={"protocol": "modbus"}).json()["items"]
    assert [d["device_id"] for d in only_modbus] == ["AT-S1"]
    assert api.get("/devices", "at_engineer", params={"protocol": "smtp"}).status_code == 422


def test_device_detail_has_counters_sensors_and_bounded_window(api):
    d = api.get("/devices/therm-AT-H11", "at_engineer").json()
    assert d["status"]["protocol"] == "mqtt" and d["readings"] == 4 and d["rejects"] == 1
    assert {s["key"] for s in d["sensors"]} == {"room:AT-H11:living:room_temp", "room:AT-H11:bedroom1:room_temp"}
    assert api.get("/devices/therm-AT-H11", "at_engineer", params={"minutes": 24 * 60 + 1}).status_code == 422
    assert api.get("/devices/no-such-device", "at_engineer").status_code == 404


def test_rejects_show_reason_detail_and_payload_preview(api):
    body = api.get("/rejects", "at_engineer", params={"device_id": "therm-AT-H11"}).json()
    [rej] = body["items"]
    assert rej["reason"] == "out_of_range" and rej["detail"] == "room_temp 99 ℃"
    assert rej["payload_preview"] == '{"t": 99}' and rej["payload_bytes"] == 9
    assert {(s["source"], s["reason"]) for s in body["summary"]} == {("mqtt", "out_of_range")}
    # at most 7 days of rejects per request
    r = api.get("/rejects", "at_engineer", params={"from": "2026-01-01T00:00:00Z", "to": "2026-01-09T00:00:00Z"})
    assert r.status_code == 422 and r.json()["code"] == "range_too_long"
