"""来电弹屏 (screen pop): everything an agent needs when a phone rings, in one call.

phone → household(s) through the SM3-HMAC blind index (core.pii.FieldCipher.phone_index on
pii.household_contact.phone_index; the number itself is never stored or searched in clear), then per
household: place and serving substation, heating status, account/arrears (only when the dunning tables
exist), latest compliance with a link to the curve, open and recent tickets, open tickets of the same
unit (a neighbour already reported the leak), the substation's state (open incident, devices, latest
secondary supply temperature) and recent notes.

Personal data (name, address) is NOT returned here: the API adds it through api.privacy.contact_view,
which masks by role and logs the read (R55–R60). A handful of indexed queries per household.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from psycopg.rows import dict_row

from core.pii import FieldCipher, normalise_phone
from ticketing.model import OPEN
from ticketing.store import has_open_low_temperature_complaint, has_open_refund_dispute

#: households shown for one number (a shared landline can serve several flats)
MAX_HOUSEHOLDS = 5
RECENT_TICKETS_DAYS = 90

_TICKET_SUMMARY = """id, no, type, channel, status, priority, category, reported_at, closed_at, urge_count,
                     low_temperature, assignee_id, parent_id"""


def households_by_phone(conn, cipher: FieldCipher, phone: str) -> list[int]:
    digits = normalise_phone(phone)
    if len(digits) < 7:
        return []
    rows = conn.execute("""SELECT household_id FROM pii.household_contact WHERE phone_index = %s
                            ORDER BY household_id LIMIT %s""", (cipher.phone_index(digits), MAX_HOUSEHOLDS)).fetchall()
    return [r[0] for r in rows]


def _table_exists(conn, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


def _account(conn, household_id: int, have_dunning: bool) -> dict | None:
    """Bills minus payments per season, from the dunning ledger when it is installed."""
    if not have_dunning:
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT b.season, b.amount AS billed, b.due_date,
                      coalesce((SELECT sum(p.amount) FROM dunning_payment p
                                 WHERE p.household_id = b.household_id AND p.season = b.season), 0) AS paid
                 FROM dunning_bill b WHERE b.household_id = %s ORDER BY b.season DESC LIMIT 3""",
            (household_id,)).fetchall()
    for r in rows:
        r["outstanding"] = r["billed"] - r["paid"]
    return {"seasons": rows, "arrears": sum((r["outstanding"] for r in rows if r["outstanding"] > 0), 0)}


def household_view(conn, household_id: int, now: datetime, *, have_dunning: bool | None = None) -> dict | None:
    """The screen-pop card of one household (no personal data); None if it does not exist."""
    if have_dunning is None:
        have_dunning = _table_exists(conn, "dunning_bill") and _table_exists(conn, "dunning_payment")
    with conn.cursor(row_factory=dict_row) as cur:
        hh = cur.execute(
            """SELECT h.id, h.code, h.floor, h.area_m2, h.heating_status, h.billing_method, h.segment,
                      h.placement_class, u.id AS unit_id, u.name AS unit, b.id AS building_id, b.name AS building,
                      c.id AS community_id, c.name AS community, s.id AS substation_id, s.code AS substation_code,
                      s.name AS substation, br.company_id
                 FROM household h JOIN unit u ON u.id = h.unit_id JOIN building b ON b.id = u.building_id
                 JOIN community c ON c.id = b.community_id JOIN substation s ON s.id = c.substation_id
                 JOIN branch br ON br.id = s.branch_id WHERE h.id = %s""", (household_id,)).fetchone()
        if hh is None:
            return None
        compliance = cur.execute(
            """SELECT day, status, worst_stat_c, refund_ratio, min_coverage FROM compliance_household_day
                WHERE household_id = %s AND day >= %s ORDER BY day DESC LIMIT 7""",
            (household_id, (now - timedelta(days=14)).date())).fetchall()
        open_t = cur.execute(f"""SELECT {_TICKET_SUMMARY} FROM ticket WHERE household_id = %s AND status = ANY(%s)
                                   ORDER BY reported_at DESC LIMIT 20""", (household_id, sorted(OPEN))).fetchall()
        recent = cur.execute(f"""SELECT {_TICKET_SUMMARY} FROM ticket WHERE household_id = %s AND NOT (status = ANY(%s))
                                   AND reported_at >= %s ORDER BY reported_at DESC LIMIT 10""",
                             (household_id, sorted(OPEN), now - timedelta(days=RECENT_TICKETS_DAYS))).fetchall()
        same_unit = cur.execute(
            f"""SELECT {_TICKET_SUMMARY}, household_id FROM ticket
                 WHERE status = ANY(%s) AND (unit_id = %s OR (building_id = %s AND household_id IS NULL))
                   AND (household_id IS DISTINCT FROM %s) ORDER BY reported_at DESC LIMIT 10""",
            (sorted(OPEN), hh["unit_id"], hh["building_id"], household_id)).fetchall()
        incidents = cur.execute(
            f"""SELECT {_TICKET_SUMMARY}, description FROM ticket t
                 WHERE t.type = 'incident' AND t.status = ANY(%s)
                   AND (t.substation_id = %s
                        OR EXISTS (SELECT 1 FROM ticket_household th WHERE th.ticket_id = t.id AND th.household_id = %s))
                 ORDER BY reported_at DESC LIMIT 5""", (sorted(OPEN), hh["substation_id"], household_id)).fetchall()
        devices = cur.execute(
            """SELECT d.device_id, d.connected, d.last_seen, d.last_error FROM device_status d
                WHERE d.device_id IN (SELECT DISTINCT device_id FROM sensor WHERE substation_id = %s
                                       AND household_id IS NULL)
                ORDER BY d.device_id""", (hh["substation_id"],)).fetchall()
        supply = cur.execute(
            """SELECT r.time, r.value, r.quality FROM sensor s JOIN readings r ON r.sensor_id = s.id
                WHERE s.substation_id = %s AND s.metric = 'supply_temp_2' AND r.time <= %s AND r.time >= %s
                ORDER BY r.time DESC LIMIT 1""", (hh["substation_id"], now, now - timedelta(hours=6))).fetchone()
        notes = cur.execute(
            """SELECT e.at, e.actor, e.ticket_id, e.data->>'text' AS text FROM ticket_event e
                WHERE e.action = 'note' AND e.ticket_id IN (SELECT id FROM ticket WHERE household_id = %s)
                ORDER BY e.at DESC LIMIT 5""", (household_id,)).fetchall()
        confirmed = cur.execute(
            """SELECT count(*) AS days, max(day) AS last_day FROM confirmed_noncompliant_day WHERE household_id = %s
                  AND day >= %s""", (household_id, (now - timedelta(days=200)).date())).fetchone()
    return {
        "household": hh,
        "heating_status": hh["heating_status"],
        "flags": {"open_low_temperature_complaint": has_open_low_temperature_complaint(conn, household_id),
                  "open_refund_dispute": has_open_refund_dispute(conn, household_id),
                  "in_open_incident": bool(incidents)},
        "account": _account(conn, household_id, have_dunning),
        "compliance": {"latest": compliance[0] if compliance else None, "recent_days": compliance,
                       "curve_url": f"/households/{household_id}/curve",
                       "confirmed_noncompliant_days": confirmed},
        "open_tickets": open_t,
        "recent_tickets": recent,
        "same_unit_open_tickets": same_unit,
        "substation": {"id": hh["substation_id"], "code": hh["substation_code"], "name": hh["substation"],
                       "open_incidents": incidents, "devices": devices, "latest_supply_temp_2": supply},
        "notes": notes,
    }


def screen_pop(conn, cipher: FieldCipher, phone: str, now: datetime, branch_ids: list[int] | None = None) -> dict:
    """The caller's household(s) by phone number; ``branch_ids`` limits to the agent's data scope."""
    ids = households_by_phone(conn, cipher, phone)
    if branch_ids is not None and ids:
        rows = conn.execute(
            """SELECT h.id FROM household h JOIN unit u ON u.id = h.unit_id JOIN building b ON b.id = u.building_id
                 JOIN community c ON c.id = b.community_id JOIN substation s ON s.id = c.substation_id
                WHERE h.id = ANY(%s) AND s.branch_id = ANY(%s)""", (ids, list(branch_ids))).fetchall()
        allowed = {r[0] for r in rows}
        ids = [i for i in ids if i in allowed]
    have_dunning = _table_exists(conn, "dunning_bill") and _table_exists(conn, "dunning_payment")
    cards = [c for c in (household_view(conn, i, now, have_dunning=have_dunning) for i in ids) if c is not None]
    return {"matched": len(cards), "households": cards}
