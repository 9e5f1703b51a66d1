"""测温: protocol checks (R11), confirmed refund days (R13, R27 days_from), deemed results (R12) and the
comparison with the IoT sensor (R18 calibration drift)."""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from tests.test_ticketing_support import T0, city, tconn, tdb_url  # noqa: F401  (fixtures)
from ticketing import store, temptest
from ticketing.model import InvalidTransition, TicketValidationError

HH = "S01-C1-B1-U1-0101"


def _on_site_test(conn, city, reported=T0 - timedelta(days=2)):
    hh = city.households[HH]
    res = store.request_temp_test(conn, hh, actor="agent", now=reported, reported_at=reported)
    tech = conn.execute("""INSERT INTO repair_station (code, name) VALUES ('RS', 'RS') RETURNING id""").fetchone()[0]
    tech = conn.execute("INSERT INTO technician (station_id, code, name) VALUES (%s, 'T', 'T') RETURNING id",
                        (tech,)).fetchone()[0]
    store.transition(conn, res.ticket_id, "dispatch", actor="d", now=T0 - timedelta(hours=2), data={"technician_id": tech})
    store.accept(conn, res.ticket_id, actor="T", now=T0 - timedelta(hours=2))
    store.arrive(conn, res.ticket_id, actor="T", now=T0 - timedelta(minutes=30))
    sig = {who: store.add_attachment(conn, res.ticket_id, kind="signature", content_type="image/png",
                                     data=f"sig-{who}".encode(), actor="T", now=T0)["id"] for who in ("staff", "user")}
    return res.ticket_id, sig


def _iot(conn, city, value, offset=0.0):
    hh = city.households[HH]
    sid = conn.execute("""INSERT INTO sensor (key, metric, protocol, device_id, household_id, room_id, calibration_offset)
                          VALUES (%s, 'room_temp', 'mqtt', 'dev', %s, %s, %s) RETURNING id""",
                       (f"room:{HH}:living:room_temp", hh, city.rooms[HH], offset)).fetchone()[0]
    for m in range(-60, 61, 10):
        conn.execute("INSERT INTO readings (time, sensor_id, value, quality) VALUES (%s, %s, %s, 0)",
                     (T0 + timedelta(minutes=m), sid, value))
    return sid


def _record(conn, tid, sig, readings, **kw):
    args = dict(actor="T", now=T0, measured_at=T0, readings=readings, height_m=1.2, points=1, stability_ok=True,
                instrument_id="TH-07", calibration_cert="JJG-2026-118", calibration_expiry=date(2027, 6, 30),
                staff_signature_id=sig["staff"], user_signature_id=sig["user"], room_id=None)
    args.update(kw)
    return temptest.record_temp_test(conn, tid, **args)


def test_below_standard_confirms_days_from_the_report_and_flags_drift(tconn, city):
    tid, sig = _on_site_test(tconn, city)
    _iot(tconn, city, 17.0, offset=0.2)                      # IoT says 17.2 ℃ after calibration offset
    out = _record(tconn, tid, sig, [15.8, 15.9, 16.0])
    assert out["result_c"] == 15.9 and out["below_standard"] is True and out["threshold_c"] == 18.0
    assert out["iot_value_c"] == pytest.approx(17.2) and out["drift_c"] == pytest.approx(-1.3)
    assert out["drift_flag"] is True
    # Tianjin counts from the report day (2026-12-08 local) through the test day
    rows = temptest.confirmed_days(tconn, city.households[HH], date(2026, 12, 1), date(2026, 12, 31))
    assert [(r["day"], r["measured_c"], r["basis"], r["ticket_id"]) for r in rows] == [
        (date(2026, 12, d), 15.9, "measured", tid) for d in (8, 9, 10)]
    ev = store.history(tconn, tid)[-1]
    assert ev["action"] == "temp_test" and ev["data"]["confirmed_days"] == ["2026-12-08", "2026-12-09", "2026-12-10"]
    assert ev["to_status"] == "on_site"


def test_compliant_result_confirms_nothing_and_small_drift_is_fine(tconn, city):
    tid, sig = _on_site_test(tconn, city)
    with pytest.raises(TicketValidationError, match="record the 测温 first"):
        store.resolve(tconn, tid, actor="T", now=T0, resolution="测温合格")
    _iot(tconn, city, 18.2)
    out = _record(tconn, tid, sig, [18.3, 18.4, 18.5], instrument_correction_c=0.1)
    assert out["result_c"] == 18.5 and out["below_standard"] is False and out["drift_flag"] is False
    assert temptest.confirmed_days(tconn, city.households[HH], date(2026, 12, 1), date(2026, 12, 31)) == []
    assert store.resolve(tconn, tid, actor="T", now=T0, resolution="测温合格 18.5 ℃")["status"] == "resolved"


def test_no_iot_sensor_means_no_drift_verdict(tconn, city):
    tid, sig = _on_site_test(tconn, city)
    out = _record(tconn, tid, sig, [17.0])
    assert out["iot_value_c"] is None and out["drift_flag"] is None and out["below_standard"] is True


def test_luoyang_counts_from_the_test_day(tconn, city):
    tconn.execute("UPDATE company SET region_code = 'luoyang' WHERE id = %s", (city.company,))
    tid, sig = _on_site_test(tconn, city)
    _record(tconn, tid, sig, [15.0, 15.0, 15.0], protocol_id="db11_745_m1", height_m=1.4)
    rows = temptest.confirmed_days(tconn, city.households[HH], date(2026, 12, 1), date(2026, 12, 31))
    assert [r["day"] for r in rows] == [date(2026, 12, 10)]


@pytest.mark.parametrize("override,match", [
    ({"user_signature_id": None}, "user signature"),
    ({"staff_signature_id": None}, "staff signature"),
    ({"calibration_expiry": date(2026, 12, 9)}, "expired"),
    ({"height_m": 1.6}, "height"),
    ({"stability_ok": False}, "stable"),
    ({"readings": []}, "readings"),
    ({"readings": [180.0]}, "within"),
    ({"protocol_id": "db11_745_m1", "height_m": 1.4, "readings": [15.0, 15.1]}, "at least 3 readings"),
    ({"protocol_id": "nope"}, "unknown protocol"),
])
def test_protocol_violations_are_refused(tconn, city, override, match):
    tid, sig = _on_site_test(tconn, city)
    with pytest.raises(TicketValidationError, match=match):
        override = dict(override)
        _record(tconn, tid, sig, override.pop("readings", [15.0]), **override)
    assert tconn.execute("SELECT count(*) FROM temp_test").fetchone()[0] == 0


def test_photo_is_not_a_signature(tconn, city):
    tid, sig = _on_site_test(tconn, city)
    photo = store.add_attachment(tconn, tid, kind="photo", content_type="image/jpeg", data=b"jpg", actor="T", now=T0)
    with pytest.raises(TicketValidationError, match="not a signature"):
        _record(tconn, tid, sig, [15.0], user_signature_id=photo["id"])


def test_test_needs_the_technician_on_site(tconn, city):
    res = store.request_temp_test(tconn, city.households[HH], actor="agent", now=T0)
    with pytest.raises(InvalidTransition):
        _record(tconn, res.ticket_id, {"staff": None, "user": None}, [15.0])


def test_deemed_results(tconn, city):
    # R12: the user refuses → deemed compliant, no refund days
    tid, sig = _on_site_test(tconn, city)
    out = temptest.record_user_refused(tconn, tid, actor="T", now=T0, note="用户拒绝入户测温",
                                       staff_signature_id=sig["staff"])
    assert out["deemed"] == "compliant"
    assert temptest.confirmed_days(tconn, city.households[HH], date(2026, 12, 1), date(2026, 12, 31)) == []
    # R12: the company never tested → every day from the report is deemed < 14 ℃
    other = city.households["S01-C1-B1-U1-0201"]
    res = store.request_temp_test(tconn, other, actor="agent", now=T0 - timedelta(days=3),
                                  reported_at=T0 - timedelta(days=3))
    out = temptest.record_company_late(tconn, res.ticket_id, actor="supervisor", now=T0)
    assert out["deemed"] == "below_14" and out["deemed_below_c"] == 14.0
    rows = temptest.confirmed_days(tconn, other, date(2026, 12, 1), date(2026, 12, 31))
    assert [(r["day"], r["measured_c"], r["basis"]) for r in rows] == [
        (date(2026, 12, d), None, "deemed_below_14") for d in (7, 8, 9, 10)]
