"""来电弹屏 (screen pop): everything an agent needs when a phone rings, in one call.

phone → household(s) through the SM3-HMAC blind index (core.pii.FieldCipher.phone_index on
pii.household_contact.phone_index; the number itself is never stored or searched in clear), then per
household: place and serving substation, heating status, account/arrears (only when the dunning tables
exist), latest compliance with a link to the curve, open and recent tickets, open tickets of the same
unit (a neighbour already reported the leak), the substation's state (open incident, devices, latest
secondary supply temperature) and recent notes.

Personal data (name, address) is NOT returned here: the API adds it through api.privacy.contact_view,
which masks by role and logs the read (R55–R60). One statement builds all cards (see _CARD_SQL).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from core.pii import FieldCipher, normalise_phone
from ticketing.model import ACTIVE, OPEN
from ticketing.store import DISPUTE_CATEGORIES

#: households shown for one number (a shared landline can serve several flats)
MAX_HOUSEHOLDS = 5
RECENT_TICKETS_DAYS = 90

_TICKET_SUMMARY = """id, no, type, channel, status, priority, category, reported_at, closed_at, urge_count,
                     low_temperature, assignee_id, parent_id"""


#: dunning tables seen on a database (they are never dropped, so only "present" is remembered)
_DUNNING_SEEN: set[tuple] = set()


def _have_dunning(conn) -> bool:
    """Whether the dunning ledger is installed (ticketing does not require it); asked once per database."""
    key = (conn.info.host, conn.info.port, conn.info.dbname)
    if key in _DUNNING_SEEN:
        return True
    ok = conn.execute("SELECT to_regclass('dunning_bill') IS NOT NULL AND to_regclass('dunning_payment') IS NOT NULL"
                      ).fetchone()[0]
    if ok:
        _DUNNING_SEEN.add(key)
    return bool(ok)


def _tickets_json(where: str, limit: int, extra: str = "") -> str:
    return f"""(SELECT coalesce(json_agg(x ORDER BY x.reported_at DESC), '[]') FROM (
                   SELECT {_TICKET_SUMMARY}{extra} FROM ticket t WHERE {where}
                    ORDER BY reported_at DESC LIMIT {limit}) x)"""


# One statement builds every card: a screen pop is on the agent's screen while the phone rings, and a
# statement per section (16 round trips) cost more than the queries themselves (issue 4's p95 target).
# Every sub-select is an indexed lookup (ticket (household_id, status), (unit_id, …), (status, type);
# readings (sensor_id, time)); the output shape is household_view's, documented in the module docstring.
_CARD_SQL = f"""
WITH hh AS (
    SELECT h.id, h.code, h.floor, h.area_m2, h.heating_status, h.billing_method, h.segment, h.placement_class,
           u.id AS unit_id, u.name AS unit, b.id AS building_id, b.name AS building, c.id AS community_id,
           c.name AS community, s.id AS substation_id, s.code AS substation_code, s.name AS substation, br.company_id
      FROM household h JOIN unit u ON u.id = h.unit_id JOIN building b ON b.id = u.building_id
      JOIN community c ON c.id = b.community_id JOIN substation s ON s.id = c.substation_id
      JOIN branch br ON br.id = s.branch_id
     WHERE h.id = ANY(%(ids)s)
)
SELECT hh.id, json_build_object(
    'household', row_to_json(hh),
    'compliance', (SELECT coalesce(json_agg(v ORDER BY v.day DESC), '[]') FROM (
                      SELECT day, status, worst_stat_c, refund_ratio, min_coverage FROM compliance_household_day
                       WHERE household_id = hh.id AND day >= %(since_day)s ORDER BY day DESC LIMIT 7) v),
    'open_tickets', {_tickets_json("t.household_id = hh.id AND t.status = ANY(%(open)s)", 20)},
    'recent_tickets', {_tickets_json("t.household_id = hh.id AND NOT (t.status = ANY(%(open)s)) "
                                     "AND t.reported_at >= %(recent_since)s", 10)},
    'same_unit_open_tickets', {_tickets_json(
        "t.status = ANY(%(open)s) AND (t.unit_id = hh.unit_id OR (t.building_id = hh.building_id "
        "AND t.household_id IS NULL)) AND t.household_id IS DISTINCT FROM hh.id", 10, ", household_id")},
    'incidents', {_tickets_json(
        "t.type = 'incident' AND t.status = ANY(%(open)s) AND (t.substation_id = hh.substation_id OR EXISTS "
        "(SELECT 1 FROM ticket_household th WHERE th.ticket_id = t.id AND th.household_id = hh.id))", 5,
        ", description")},
    'devices', (SELECT coalesce(json_agg(d ORDER BY d.device_id), '[]') FROM (
                   SELECT d.device_id, d.connected, d.last_seen, d.last_error FROM device_status d
                    WHERE d.device_id IN (SELECT device_id FROM sensor WHERE substation_id = hh.substation_id
                                            AND household_id IS NULL)) d),
    'supply', (SELECT row_to_json(r) FROM (
                   SELECT r.time, r.value, r.quality
                     FROM sensor s CROSS JOIN LATERAL (
                          SELECT time, value, quality FROM readings WHERE sensor_id = s.id
                             AND time <= %(now)s AND time >= %(supply_since)s ORDER BY time DESC LIMIT 1) r
                    WHERE s.substation_id = hh.substation_id AND s.metric = 'supply_temp_2'
                    ORDER BY r.time DESC LIMIT 1) r),
    'notes', (SELECT coalesce(json_agg(n ORDER BY n.at DESC), '[]') FROM (
                 SELECT e.at, e.actor, e.ticket_id, e.data->>'text' AS text FROM ticket_event e
                  WHERE e.action = 'note' AND e.ticket_id IN (SELECT id FROM ticket WHERE household_id = hh.id)
                  ORDER BY e.at DESC LIMIT 5) n),
    'confirmed', (SELECT row_to_json(x) FROM (
                     SELECT count(*) AS days, max(day) AS last_day FROM confirmed_noncompliant_day
                      WHERE household_id = hh.id AND day >= %(confirmed_since)s) x),
    'low_temp_open', EXISTS (SELECT 1 FROM ticket WHERE household_id = hh.id AND status = ANY(%(active)s)
                             AND channel <> 'auto' AND (low_temperature OR type = 'temp_test')),
    'dispute_open', EXISTS (SELECT 1 FROM ticket WHERE household_id = hh.id AND status = ANY(%(active)s)
                            AND (category = ANY(%(dispute)s)
                                 OR (status = 'escalated_external' AND (low_temperature OR type = 'temp_test'))))
    {{account}}
) FROM hh ORDER BY hh.id"""

# Bills minus payments for the last three seasons (only when the dunning ledger is installed).
_ACCOUNT_SQL = """, 'account', (SELECT coalesce(json_agg(a ORDER BY a.season DESC), '[]') FROM (
                      SELECT b.season, b.amount::text AS billed, b.due_date,
                             coalesce((SELECT sum(p.amount) FROM dunning_payment p
                                        WHERE p.household_id = b.household_id AND p.season = b.season), 0)::text AS paid
                        FROM dunning_bill b WHERE b.household_id = hh.id ORDER BY b.season DESC LIMIT 3) a)"""


def _account(seasons: list[dict] | None) -> dict | None:
    if seasons is None:
        return None
    for r in seasons:
        r["billed"], r["paid"] = Decimal(r["billed"]), Decimal(r["paid"])     # exact: sent as text
        r["outstanding"] = r["billed"] - r["paid"]
    return {"seasons": seasons, "arrears": sum((r["outstanding"] for r in seasons if r["outstanding"] > 0), Decimal(0))}


def cards(conn, household_ids: list[int], now: datetime, *, have_dunning: bool | None = None) -> dict[int, dict]:
    """{household_id: screen-pop card} (no personal data) for the households that exist, in one statement."""
    if not household_ids:
        return {}
    if have_dunning is None:
        have_dunning = _have_dunning(conn)
    sql = _CARD_SQL.replace("{account}", _ACCOUNT_SQL if have_dunning else "")
    rows = conn.execute(sql, {
        "ids": list(household_ids), "now": now, "since_day": (now - timedelta(days=14)).date(),
        "open": sorted(OPEN), "active": sorted(ACTIVE), "dispute": sorted(DISPUTE_CATEGORIES),
        "recent_since": now - timedelta(days=RECENT_TICKETS_DAYS), "supply_since": now - timedelta(hours=6),
        "confirmed_since": (now - timedelta(days=200)).date()}).fetchall()
    out = {}
    for hid, c in rows:
        hh, compliance, incidents = c["household"], c["compliance"], c["incidents"]
        out[hid] = {
            "household": hh,
            "heating_status": hh["heating_status"],
            "flags": {"open_low_temperature_complaint": c["low_temp_open"], "open_refund_dispute": c["dispute_open"],
                      "in_open_incident": bool(incidents)},
            "account": _account(c.get("account")) if have_dunning else None,
            "compliance": {"latest": compliance[0] if compliance else None, "recent_days": compliance,
                           "curve_url": f"/households/{hid}/curve",
                           "confirmed_noncompliant_days": c["confirmed"]},
            "open_tickets": c["open_tickets"],
            "recent_tickets": c["recent_tickets"],
            "same_unit_open_tickets": c["same_unit_open_tickets"],
            "substation": {"id": hh["substation_id"], "code": hh["substation_code"], "name": hh["substation"],
                           "open_incidents": incidents, "devices": c["devices"], "latest_supply_temp_2": c["supply"]},
            "notes": c["notes"],
        }
    return out


def household_view(conn, household_id: int, now: datetime, *, have_dunning: bool | None = None) -> dict | None:
    """The screen-pop card of one household (no personal data); None if it does not exist."""
    return cards(conn, [household_id], now, have_dunning=have_dunning).get(household_id)


def screen_pop(conn, cipher: FieldCipher, phone: str, now: datetime, branch_ids: list[int] | None = None) -> dict:
    """The caller's household(s) by phone number; ``branch_ids`` limits to the agent's data scope."""
    digits = normalise_phone(phone)
    if len(digits) < 7:
        return {"matched": 0, "households": []}
    # blind-index lookup and the agent's scope in one statement
    rows = conn.execute(
        """SELECT pc.household_id FROM pii.household_contact pc
             JOIN household h ON h.id = pc.household_id JOIN unit u ON u.id = h.unit_id
             JOIN building b ON b.id = u.building_id JOIN community c ON c.id = b.community_id
             JOIN substation s ON s.id = c.substation_id
            WHERE pc.phone_index = %s AND (%s::int[] IS NULL OR s.branch_id = ANY(%s::int[]))
            ORDER BY pc.household_id LIMIT %s""",
        (cipher.phone_index(digits), branch_ids, branch_ids, MAX_HOUSEHOLDS)).fetchall()
    ids = [r[0] for r in rows]
    found = cards(conn, ids, now)
    return {"matched": len(found), "households": [found[i] for i in ids if i in found]}
