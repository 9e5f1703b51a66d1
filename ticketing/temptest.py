"""Manual temperature tests 测温 (R11–R13, R18) and the refund days they confirm.

A test stores its protocol (R11): protocol id, height, points, stability check, every reading, the
instrument, its calibration certificate and expiry, and both signatures (R12: signature images are
ticket attachments). The result is the mean of the readings plus the instrument correction, at 0.1 ℃.

- Below the threshold → the household's days are **confirmed non-compliant** (R13) in
  ``confirmed_noncompliant_day`` (read by dunning refunds), from the report day (or the test day,
  per region: ``refund_clock.days_from``, R27) through the test day.
- R12 deemed results: the user refuses → deemed compliant (no refund day); the company is late or keeps
  no record → every day from the report to ``now`` is deemed < 14 ℃ (basis ``deemed_below_14``).
- The IoT room sensor's value at the same time is stored beside the manual one; |manual − IoT| above the
  policy tolerance flags calibration drift (R18).
"""
from __future__ import annotations

import json
import logging
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from psycopg.rows import dict_row

from core.config import get_settings
from ticketing import store
from ticketing.model import InvalidTransition, TicketValidationError
from ticketing.policy import company_policy, local_day, parse_duration

log = logging.getLogger(__name__)

#: plausible indoor readings (℃); outside → a typing error, refused
READING_RANGE = (-10.0, 40.0)


def _tz() -> ZoneInfo:
    return ZoneInfo(get_settings().timezone)


def _ticket_for_test(conn, ticket_id: int, statuses: tuple[str, ...]) -> dict:
    t = store.get_ticket(conn, ticket_id)
    if t["household_id"] is None or not (t["type"] == "temp_test" or t["low_temperature"]):
        raise TicketValidationError(f"ticket {ticket_id} is not a household 测温 / low-temperature ticket")
    if t["status"] not in statuses:
        raise InvalidTransition(ticket_id, t["status"], "temp_test", [], f"a test is recorded in status {', '.join(statuses)}")
    return t


def threshold_for(conn, household_id: int, day: date, policy: dict) -> float:
    """The day's compliance threshold from analytics (compliance_day) when present, else policy (R1, R2)."""
    row = conn.execute("SELECT max(threshold_c) FROM compliance_day WHERE household_id = %s AND day = %s",
                       (household_id, day)).fetchone()
    return float(row[0]) if row and row[0] is not None else float(policy["threshold_c"])


def iot_value_at(conn, household_id: int, room_id: int | None, at: datetime, window: timedelta) -> tuple[int, float] | None:
    """The good-quality room sensor sample nearest ``at`` within ``window`` (calibration offset applied, R18)."""
    row = conn.execute(
        """SELECT s.id, r.value + CASE WHEN (s.calibration_valid_from IS NULL OR s.calibration_valid_from <= r.time)
                                        AND (s.calibration_valid_to IS NULL OR s.calibration_valid_to > r.time)
                                       THEN s.calibration_offset ELSE 0 END
             FROM sensor s JOIN readings r ON r.sensor_id = s.id
            WHERE s.household_id = %s AND s.metric = 'room_temp' AND (%s::int IS NULL OR s.room_id = %s)
              AND r.quality = 0 AND r.time BETWEEN %s AND %s
            ORDER BY abs(extract(epoch FROM r.time - %s)) LIMIT 1""",
        (household_id, room_id, room_id, at - window, at + window, at)).fetchone()
    return (row[0], float(row[1])) if row else None


def _check_signature(conn, ticket_id: int, attachment_id: int | None, who: str) -> None:
    if attachment_id is None:
        raise TicketValidationError(f"the {who} signature is required (R12: both parties sign)")
    row = conn.execute("SELECT kind FROM ticket_attachment WHERE id = %s AND ticket_id = %s",
                       (attachment_id, ticket_id)).fetchone()
    if row is None or row[0] != "signature":
        raise TicketValidationError(f"{who} signature {attachment_id} is not a signature attachment of ticket {ticket_id}")


def _days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def _confirm_days(conn, t: dict, first: date, last: date, measured_c: float | None, basis: str,
                  test_id: int) -> list[date]:
    days = _days(first, last)
    inserted = []
    for d in days:
        row = conn.execute(
            """INSERT INTO confirmed_noncompliant_day (household_id, day, ticket_id, measured_c, basis, temp_test_id)
               VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (household_id, day) DO NOTHING RETURNING day""",
            (t["household_id"], d, t["id"], measured_c, basis, test_id)).fetchone()
        if row:
            inserted.append(row[0])
    return inserted


def record_temp_test(conn, ticket_id: int, *, actor: str, now: datetime, measured_at: datetime,
                     readings: list[float], height_m: float, points: int, stability_ok: bool,
                     instrument_id: str, calibration_cert: str, calibration_expiry: date,
                     staff_signature_id: int | None, user_signature_id: int | None,
                     protocol_id: str | None = None, room_id: int | None = None,
                     instrument_correction_c: float = 0.0) -> dict:
    """Record a measured 测温 on site; returns the test with ``confirmed_days`` and the drift comparison."""
    t = _ticket_for_test(conn, ticket_id, ("on_site",))
    policy = company_policy(conn, t["company_id"], measured_at.astimezone(_tz()).date())
    tp = policy["temp_test"]
    protocol_id = protocol_id or tp["default_protocol"]
    proto = tp["protocols"].get(protocol_id)
    if proto is None:
        raise TicketValidationError(f"unknown protocol {protocol_id!r}; known: {', '.join(tp['protocols'])}")
    lo, hi = proto["height_m"]
    if not lo - 1e-9 <= height_m <= hi + 1e-9:
        raise TicketValidationError(f"protocol {protocol_id}: height must be {lo}–{hi} m, got {height_m}")
    if points < int(proto["min_points"]):
        raise TicketValidationError(f"protocol {protocol_id}: at least {proto['min_points']} points, got {points}")
    if len(readings) < int(proto["min_readings"]):
        raise TicketValidationError(f"protocol {protocol_id}: at least {proto['min_readings']} readings, got {len(readings)}")
    if any(not READING_RANGE[0] <= float(r) <= READING_RANGE[1] for r in readings):
        raise TicketValidationError(f"readings must be within {READING_RANGE[0]}–{READING_RANGE[1]} ℃: {readings}")
    if not stability_ok:
        raise TicketValidationError("the reading was not stable: wait until the display is stable, then record (R11)")
    if measured_at.tzinfo is None or measured_at > now + timedelta(minutes=5):
        raise TicketValidationError("measured_at must be timezone-aware and not in the future")
    if calibration_expiry < measured_at.astimezone(_tz()).date():
        raise TicketValidationError(f"instrument {instrument_id} calibration expired on {calibration_expiry}")
    if not instrument_id or not calibration_cert:
        raise TicketValidationError("instrument id and calibration certificate number are required")
    _check_signature(conn, ticket_id, staff_signature_id, "staff")
    _check_signature(conn, ticket_id, user_signature_id, "user")
    if room_id is not None:
        ok = conn.execute("SELECT 1 FROM room WHERE id = %s AND household_id = %s", (room_id, t["household_id"])).fetchone()
        if not ok:
            raise TicketValidationError(f"room {room_id} is not in household {t['household_id']}")

    tz = _tz()
    day = measured_at.astimezone(tz).date()
    result = round(sum(float(r) for r in readings) / len(readings) + instrument_correction_c, 1)
    threshold = threshold_for(conn, t["household_id"], day, policy)
    below = result < threshold
    iot = iot_value_at(conn, t["household_id"], room_id, measured_at, parse_duration(tp["iot_window"]))
    drift = round(result - iot[1], 2) if iot else None
    drift_flag = None if drift is None else abs(drift) > float(tp["drift_tolerance_c"])
    test_id = conn.execute(
        """INSERT INTO temp_test (ticket_id, household_id, room_id, outcome, measured_at, protocol_id, height_m,
                                  points, stability_ok, readings, result_c, threshold_c, below_standard,
                                  instrument_id, instrument_correction_c, calibration_cert, calibration_expiry,
                                  staff_signature_id, user_signature_id, iot_sensor_id, iot_value_c, drift_c,
                                  drift_flag, recorded_by, created_at)
           VALUES (%s, %s, %s, 'measured', %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                   %s, %s, %s, %s, %s, %s) RETURNING id""",
        (ticket_id, t["household_id"], room_id, measured_at, protocol_id, height_m, points, stability_ok,
         json.dumps([float(r) for r in readings]), result, threshold, below, instrument_id,
         instrument_correction_c, calibration_cert, calibration_expiry, staff_signature_id, user_signature_id,
         iot[0] if iot else None, iot[1] if iot else None, drift, drift_flag, actor, now)).fetchone()[0]
    confirmed: list[date] = []
    if below:
        first = t["reported_at"].astimezone(tz).date() if policy["refund_clock"]["days_from"] == "report" else day
        confirmed = _confirm_days(conn, t, min(first, day), day, result, "measured", test_id)
    data = {"temp_test_id": test_id, "outcome": "measured", "result_c": result, "threshold_c": threshold,
            "below_standard": below, "confirmed_days": [d.isoformat() for d in confirmed],
            "iot_value_c": iot[1] if iot else None, "drift_c": drift, "drift_flag": drift_flag,
            "protocol_id": protocol_id}
    store.transition(conn, ticket_id, "temp_test", actor=actor, now=now, data=data)
    if drift_flag:
        log.warning("calibration drift: household %s sensor %s manual %.1f ℃ vs IoT %.1f ℃",
                    t["household_id"], iot[0], result, iot[1])
    return {"id": test_id, **data}


def record_user_refused(conn, ticket_id: int, *, actor: str, now: datetime, note: str = "",
                        staff_signature_id: int | None = None) -> dict:
    """R12: the user refuses the test or the signature without reason → the day is deemed compliant."""
    t = _ticket_for_test(conn, ticket_id, ("on_site",))
    if not note.strip():
        raise TicketValidationError("record what the user refused (note)")
    if staff_signature_id is not None:
        _check_signature(conn, ticket_id, staff_signature_id, "staff")
    policy = company_policy(conn, t["company_id"], local_day(now))
    day = now.astimezone(_tz()).date()
    test_id = conn.execute(
        """INSERT INTO temp_test (ticket_id, household_id, outcome, measured_at, threshold_c, below_standard, deemed,
                                  staff_signature_id, recorded_by, created_at)
           VALUES (%s, %s, 'user_refused', %s, %s, false, 'compliant', %s, %s, %s) RETURNING id""",
        (ticket_id, t["household_id"], now, threshold_for(conn, t["household_id"], day, policy),
         staff_signature_id, actor, now)).fetchone()[0]
    data = {"temp_test_id": test_id, "outcome": "user_refused", "deemed": "compliant", "note": note}
    store.transition(conn, ticket_id, "temp_test", actor=actor, now=now, data=data)
    return {"id": test_id, **data}


def record_company_late(conn, ticket_id: int, *, actor: str, now: datetime, note: str = "") -> dict:
    """R12: the company did not test in time / kept no record → days from the report through today are
    deemed < 14 ℃ (confirmed non-compliant, ``measured_c`` NULL, basis ``deemed_below_14``)."""
    t = _ticket_for_test(conn, ticket_id, ("new", "dispatched", "accepted", "on_site", "escalated_external"))
    policy = company_policy(conn, t["company_id"], local_day(now))
    tz = _tz()
    day = now.astimezone(tz).date()
    test_id = conn.execute(
        """INSERT INTO temp_test (ticket_id, household_id, outcome, measured_at, threshold_c, below_standard, deemed,
                                  recorded_by, created_at)
           VALUES (%s, %s, 'company_late', %s, %s, true, 'below_14', %s, %s) RETURNING id""",
        (ticket_id, t["household_id"], now, threshold_for(conn, t["household_id"], day, policy), actor, now)).fetchone()[0]
    confirmed = _confirm_days(conn, t, t["reported_at"].astimezone(tz).date(), day, None, "deemed_below_14", test_id)
    data = {"temp_test_id": test_id, "outcome": "company_late", "deemed": "below_14",
            "deemed_below_c": float(policy["temp_test"]["deemed_below_c"]),
            "confirmed_days": [d.isoformat() for d in confirmed], "note": note}
    store.transition(conn, ticket_id, "temp_test", actor=actor, now=now, data=data)
    return {"id": test_id, **data}


def confirmed_days(conn, household_id: int, start: date, end: date) -> list[dict]:
    """Confirmed non-compliant days of a household in [start, end] (dunning refunds read these)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("""SELECT household_id, day, ticket_id, measured_c, basis, temp_test_id
                                FROM confirmed_noncompliant_day WHERE household_id = %s AND day BETWEEN %s AND %s
                               ORDER BY day""", (household_id, start, end)).fetchall()


def tests_for_ticket(conn, ticket_id: int) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("""SELECT id, outcome, measured_at, protocol_id, height_m, points, stability_ok, readings,
                                     result_c, threshold_c, below_standard, deemed, instrument_id, calibration_cert,
                                     calibration_expiry, iot_value_c, drift_c, drift_flag, recorded_by
                                FROM temp_test WHERE ticket_id = %s ORDER BY measured_at, id""", (ticket_id,)).fetchall()
