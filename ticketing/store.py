"""Tickets in the database: create (with 催单重单 duplicate linking), transitions, history, attachments.

Every write happens on the caller's connection and transaction (the API commits per request, jobs per
run), so a ticket and its history event are committed together or not at all. The history table
``ticket_event`` is append-only: nothing here updates or deletes an event.

Time is always injected (``now``): rule code never reads the wall clock.
"""
from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from psycopg.rows import dict_row

from core.config import get_settings
from ticketing import notifications
from ticketing.model import (ACTIVE, HOUSEHOLD_TYPES, OPEN, Channel, CreateResult, InvalidTransition,
                             Status, TicketNotFound, TicketType, TicketValidationError)
from ticketing.policy import company_policy, local_day, parse_duration, policy_for
from ticketing.workflow import EVENT_ONLY, next_status, revisit_action

log = logging.getLogger(__name__)

#: categories that mean the customer disputes money (dunning pauses late fees, R35)
DISPUTE_CATEGORIES = frozenset({"refund_dispute", "billing_dispute"})
#: categories of a low-temperature complaint (R27 refund clock)
LOW_TEMP_CATEGORIES = frozenset({"low_temp", "no_heat"})

_TICKET_COLS = """t.id, t.no, t.type, t.channel, t.status, t.priority, t.category, t.household_id, t.unit_id,
    t.building_id, t.community_id, t.substation_id, t.company_id, t.sensor_id, t.description,
    t.low_temperature, t.reported_at, t.created_at, t.updated_at, t.resolved_at, t.closed_at, t.parent_id,
    t.link_kind, t.assignee_id, t.station_id, t.dispatch_round, t.urge_count, t.satisfaction, t.cancel_reason,
    t.user_caused, t.external_ref, t.auto_key"""


def _json(data: dict) -> str:
    return json.dumps(data, ensure_ascii=False, default=str)


def add_event(conn, ticket_id: int, *, at: datetime, actor: str, action: str, from_status: str | None = None,
              to_status: str | None = None, data: dict | None = None) -> int:
    """Append one history row (who, when, what); returns its id."""
    row = conn.execute(
        """INSERT INTO ticket_event (ticket_id, at, actor, action, from_status, to_status, data)
           VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb) RETURNING id""",
        (ticket_id, at, actor, action, from_status, to_status, _json(data or {}))).fetchone()
    return row[0]


# ------------------------------------------------------------------------------------------ location


def resolve_location(conn, *, household_id: int | None = None, unit_id: int | None = None,
                     building_id: int | None = None, substation_id: int | None = None) -> dict:
    """Fill unit/building/community/substation/company from the most specific id given."""
    return _locate(conn, household_id=household_id, unit_id=unit_id, building_id=building_id,
                   substation_id=substation_id)[0]


def _locate(conn, *, household_id: int | None = None, unit_id: int | None = None, building_id: int | None = None,
            substation_id: int | None = None) -> tuple[dict, tuple[str, str] | None]:
    """resolve_location's dict and the company's (region_code, code) from the same statement (ticket creation
    needs both; one round trip fewer on the agent's path)."""
    if household_id is not None:
        sql = """SELECT h.id AS household_id, u.id AS unit_id, b.id AS building_id, c.id AS community_id,
                        s.id AS substation_id, br.company_id
                   FROM household h JOIN unit u ON u.id = h.unit_id JOIN building b ON b.id = u.building_id
                   JOIN community c ON c.id = b.community_id JOIN substation s ON s.id = c.substation_id
                   JOIN branch br ON br.id = s.branch_id WHERE h.id = %s"""
        key, what = household_id, "household"
    elif unit_id is not None:
        sql = """SELECT NULL::integer AS household_id, u.id AS unit_id, b.id AS building_id, c.id AS community_id,
                        s.id AS substation_id, br.company_id
                   FROM unit u JOIN building b ON b.id = u.building_id
                   JOIN community c ON c.id = b.community_id JOIN substation s ON s.id = c.substation_id
                   JOIN branch br ON br.id = s.branch_id WHERE u.id = %s"""
        key, what = unit_id, "unit"
    elif building_id is not None:
        sql = """SELECT NULL::integer AS household_id, NULL::integer AS unit_id, b.id AS building_id,
                        c.id AS community_id, s.id AS substation_id, br.company_id
                   FROM building b JOIN community c ON c.id = b.community_id
                   JOIN substation s ON s.id = c.substation_id JOIN branch br ON br.id = s.branch_id
                  WHERE b.id = %s"""
        key, what = building_id, "building"
    elif substation_id is not None:
        sql = """SELECT NULL::integer AS household_id, NULL::integer AS unit_id, NULL::integer AS building_id,
                        NULL::integer AS community_id, s.id AS substation_id, br.company_id
                   FROM substation s JOIN branch br ON br.id = s.branch_id WHERE s.id = %s"""
        key, what = substation_id, "substation"
    else:
        return {"household_id": None, "unit_id": None, "building_id": None, "community_id": None,
                "substation_id": None, "company_id": None}, None
    sql = sql.replace("br.company_id", "br.company_id, co.region_code AS _region, co.code AS _company", 1).replace(
        "JOIN branch br ON br.id = s.branch_id", "JOIN branch br ON br.id = s.branch_id JOIN company co ON co.id = br.company_id")
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(sql, (key,)).fetchone()
    if row is None:
        raise TicketValidationError(f"{what} {key} does not exist")
    company = (row.pop("_region"), row.pop("_company"))
    return row, company


def _ticket_no(conn, now: datetime) -> str:
    local = now.astimezone(ZoneInfo(get_settings().timezone))
    seq = conn.execute("SELECT nextval('ticket_no_seq')").fetchone()[0]
    return f"GD{local:%Y%m%d}-{seq:06d}"


# ------------------------------------------------------------------------------------------ create


def create_ticket(conn, *, type: str, channel: str, actor: str, now: datetime,
                  household_id: int | None = None, unit_id: int | None = None, building_id: int | None = None,
                  substation_id: int | None = None, sensor_id: int | None = None, priority: int = 3,
                  description: str = "", category: str | None = None, low_temperature: bool = False,
                  reported_at: datetime | None = None, external_ref: str | None = None,
                  auto_key: str | None = None, link_duplicates: bool = True) -> CreateResult:
    """Open a ticket, or — when an open ticket of the same type already covers the same scope within the
    policy window — record this call as a duplicate linked into it and count a 催办 (urge) there.

    Both tickets keep their own history (the call is a ``merged`` ticket whose parent is the open one).
    ``reported_at`` is when the customer reported (R27 refund clock); it defaults to ``now``.
    """
    try:
        ttype, chan = TicketType(type), Channel(channel)
    except ValueError as e:
        raise TicketValidationError(str(e)) from None
    if not isinstance(priority, int) or not 1 <= priority <= 4:
        raise TicketValidationError(f"priority must be 1 (urgent) … 4 (low), got {priority!r}")
    if now.tzinfo is None or (reported_at is not None and reported_at.tzinfo is None):
        raise TicketValidationError("times must be timezone-aware")
    reported_at = reported_at or now
    if reported_at > now + timedelta(minutes=5):
        raise TicketValidationError("reported_at is in the future")
    if ttype in HOUSEHOLD_TYPES and household_id is None and unit_id is None and building_id is None:
        raise TicketValidationError(f"a {ttype.value} ticket needs a household, unit or building")
    if chan is Channel.HOTLINE_12345 and not external_ref:
        raise TicketValidationError("a 12345 ticket needs the hotline's reference number (external_ref)")
    low_temperature = bool(low_temperature or category in LOW_TEMP_CATEGORIES)
    loc, company = _locate(conn, household_id=household_id, unit_id=unit_id, building_id=building_id,
                           substation_id=substation_id)
    if substation_id is not None and loc["substation_id"] not in (None, substation_id):
        raise TicketValidationError(f"substation {substation_id} does not serve the given household/unit/building")
    loc["substation_id"] = loc["substation_id"] or substation_id

    if link_duplicates:
        # automatic callers (telemetry, the dunning gate) link to ANY open ticket of the same type and scope,
        # however old: the database allows one open auto ticket per household and type (schema.sql).
        # A customer's call never merges into an auto ticket: the customer's report starts its own R27
        # refund clock at its own reported_at.
        policy = policy_for(company[0], company[1], local_day(now)) if company else company_policy(
            conn, loc["company_id"], local_day(now))
        original = _find_duplicate(conn, ttype.value, loc, now, policy, any_age=chan is Channel.AUTO)
        if original is not None:
            return _record_duplicate(conn, original, ttype.value, chan.value, actor, now, loc, priority,
                                     description, category, low_temperature, reported_at, external_ref)

    # The ticket, its number and its 'create' event in one statement (numbering as _ticket_no; issue 4's
    # creation latency is mostly round trips), returning the row the API answers with.
    event = {"type": ttype.value, "channel": chan.value, "priority": priority, "category": category,
             "reported_at": reported_at.isoformat(), "external_ref": external_ref, "low_temperature": low_temperature}
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"""WITH n AS (SELECT nextval('ticket_no_seq') AS seq),
                     t AS (INSERT INTO ticket (no, type, channel, status, priority, household_id, unit_id, building_id,
                                               community_id, substation_id, company_id, sensor_id, description,
                                               category, low_temperature, reported_at, created_at, updated_at,
                                               external_ref, auto_key)
                           SELECT 'GD' || %(day)s || '-' || CASE WHEN n.seq < 1000000 THEN lpad(n.seq::text, 6, '0')
                                                                 ELSE n.seq::text END,
                                  %(type)s, %(channel)s, 'new', %(priority)s, %(household_id)s, %(unit_id)s,
                                  %(building_id)s, %(community_id)s, %(substation_id)s, %(company_id)s, %(sensor_id)s,
                                  %(description)s, %(category)s, %(low_temperature)s, %(reported_at)s, %(now)s,
                                  %(now)s, %(external_ref)s, %(auto_key)s FROM n
                           RETURNING *),
                     e AS (INSERT INTO ticket_event (ticket_id, at, actor, action, to_status, data)
                           SELECT id, %(now)s, %(actor)s, 'create', 'new', %(event)s::jsonb FROM t)
                SELECT {_TICKET_COLS} FROM t""",
            {"day": f"{now.astimezone(ZoneInfo(get_settings().timezone)):%Y%m%d}", "type": ttype.value,
             "channel": chan.value, "priority": priority, "household_id": loc["household_id"],
             "unit_id": loc["unit_id"], "building_id": loc["building_id"], "community_id": loc["community_id"],
             "substation_id": loc["substation_id"], "company_id": loc["company_id"], "sensor_id": sensor_id,
             "description": description, "category": category, "low_temperature": low_temperature,
             "reported_at": reported_at, "now": now, "external_ref": external_ref, "auto_key": auto_key,
             "actor": actor, "event": _json(event)}).fetchone()
    return CreateResult(ticket_id=row["id"], no=row["no"], ticket=row)


def _scope_key(ttype: str, loc: dict, policy: dict) -> tuple[str, int] | None:
    scopes = policy["duplicates"]["scope"]
    scope = scopes.get(ttype, scopes.get("default", "household"))
    order = {"household": ["household_id", "unit_id", "building_id"], "unit": ["unit_id", "building_id"],
             "building": ["building_id"], "substation": ["substation_id"]}[scope]
    for col in order:
        if loc.get(col) is not None:
            return col, loc[col]
    return None


def _find_duplicate(conn, ttype: str, loc: dict, now: datetime, policy: dict, any_age: bool = False) -> dict | None:
    key = _scope_key(ttype, loc, policy)
    if key is None:
        return None
    col, value = key
    # serialise concurrent calls about the same scope so two "originals" are never created
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"ticket-dup:{ttype}:{col}:{value}",))
    window = parse_duration(policy["duplicates"]["window"], where="duplicates.window")
    statuses = sorted(ACTIVE | {Status.RESOLVED})
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"""SELECT {_TICKET_COLS} FROM ticket t
                 WHERE t.{col} = %s AND t.type = %s AND t.status = ANY(%s) AND t.reported_at >= %s
                   AND (%s OR t.channel <> 'auto')
                 ORDER BY t.reported_at LIMIT 1 FOR UPDATE""",
            (value, ttype, statuses, datetime.min.replace(tzinfo=now.tzinfo) if any_age else now - window,
             any_age)).fetchone()


def _record_duplicate(conn, original: dict, ttype: str, channel: str, actor: str, now: datetime, loc: dict,
                      priority: int, description: str, category: str | None, low_temperature: bool,
                      reported_at: datetime, external_ref: str | None) -> CreateResult:
    no = _ticket_no(conn, now)
    tid = conn.execute(
        """INSERT INTO ticket (no, type, channel, status, priority, household_id, unit_id, building_id,
                               community_id, substation_id, company_id, description, category, low_temperature,
                               reported_at, created_at, updated_at, external_ref, parent_id, link_kind)
           VALUES (%s, %s, %s, 'merged', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'duplicate')
           RETURNING id""",
        (no, ttype, channel, priority, loc["household_id"], loc["unit_id"], loc["building_id"],
         loc["community_id"], loc["substation_id"], loc["company_id"], description, category, low_temperature,
         reported_at, now, now, external_ref, original["id"])).fetchone()[0]
    add_event(conn, tid, at=now, actor=actor, action="create", to_status="new",
              data={"type": ttype, "channel": channel, "reported_at": reported_at.isoformat()})
    add_event(conn, tid, at=now, actor=actor, action="merge", from_status="new", to_status="merged",
              data={"into": original["id"], "into_no": original["no"]})
    # the open ticket: one more 催办; a low-temperature call keeps the earliest reported_at (R27)
    urge = conn.execute(
        """UPDATE ticket SET urge_count = urge_count + 1, low_temperature = low_temperature OR %s,
                  priority = LEAST(priority, %s), updated_at = %s
            WHERE id = %s RETURNING urge_count""",
        (low_temperature, priority, now, original["id"])).fetchone()[0]
    add_event(conn, original["id"], at=now, actor=actor, action="urge", from_status=original["status"],
              to_status=original["status"],
              data={"call_ticket_id": tid, "call_no": no, "channel": channel, "description": description,
                    "external_ref": external_ref, "urge_count": urge})
    return CreateResult(ticket_id=tid, no=no, merged_into=original["id"], urge_count=urge)


# ------------------------------------------------------------------------------------------ read


def get_ticket(conn, ticket_id: int, *, with_events: bool = False) -> dict:
    """The ticket row as a dict (+ ``events`` oldest first); raises TicketNotFound."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {_TICKET_COLS} FROM ticket t WHERE t.id = %s", (ticket_id,)).fetchone()
    if row is None:
        raise TicketNotFound(f"ticket {ticket_id} not found")
    if with_events:
        row["events"] = history(conn, ticket_id)
        row["duplicates"] = [r["id"] for r in _children(conn, ticket_id, "duplicate")]
    return row


def _children(conn, ticket_id: int, kind: str) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT id, no, status FROM ticket WHERE parent_id = %s AND link_kind = %s ORDER BY id",
                           (ticket_id, kind)).fetchall()


def history(conn, ticket_id: int) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("""SELECT id, at, actor, action, from_status, to_status, data FROM ticket_event
                               WHERE ticket_id = %s ORDER BY at, id""", (ticket_id,)).fetchall()


def ticket_scope(conn, ticket_id: int) -> dict:
    """Who may see a ticket: its household, substation, branch and company (for object-level checks)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("""SELECT t.id, t.household_id, t.substation_id, t.company_id, t.assignee_id, s.branch_id
                               FROM ticket t LEFT JOIN substation s ON s.id = t.substation_id
                              WHERE t.id = %s""", (ticket_id,)).fetchone()
    if row is None:
        raise TicketNotFound(f"ticket {ticket_id} not found")
    return row


def list_tickets(conn, *, status: list[str] | None = None, type: str | None = None,
                 household_id: int | None = None, community_id: int | None = None,
                 substation_id: int | None = None, company_ids: list[int] | None = None,
                 branch_ids: list[int] | None = None, include_unplaced: bool = True,
                 assignee_id: int | None = None, open_only: bool = False, since: datetime | None = None,
                 until: datetime | None = None, limit: int = 50, offset: int = 0) -> list[dict]:
    """Tickets newest first, filtered (every filter indexed or narrow); ``limit`` ≤ 500.

    ``branch_ids`` limits to tickets of substations in those branches; tickets without a substation
    (platform incidents) are included only with ``include_unplaced``.
    """
    where, params = [], []
    if branch_ids is not None:
        where.append("(t.substation_id IN (SELECT id FROM substation WHERE branch_id = ANY(%s))"
                     + (" OR t.substation_id IS NULL)" if include_unplaced else ")"))
        params.append(list(branch_ids))
    for col, val in (("t.type", type), ("t.household_id", household_id), ("t.community_id", community_id),
                     ("t.substation_id", substation_id), ("t.assignee_id", assignee_id)):
        if val is not None:
            where.append(f"{col} = %s")
            params.append(val)
    if status:
        where.append("t.status = ANY(%s)")
        params.append(list(status))
    if open_only:
        where.append("t.status = ANY(%s)")
        params.append(sorted(OPEN))
    if company_ids is not None:
        where.append("t.company_id = ANY(%s)")
        params.append(list(company_ids))
    if since is not None:
        where.append("t.reported_at >= %s")
        params.append(since)
    if until is not None:
        where.append("t.reported_at < %s")
        params.append(until)
    sql = f"SELECT {_TICKET_COLS} FROM ticket t"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY t.reported_at DESC, t.id DESC LIMIT %s OFFSET %s"
    params += [min(max(1, limit), 500), max(0, offset)]
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params).fetchall()


# ------------------------------------------------------------------------------------------ transitions


def _lock(conn, ticket_id: int) -> dict:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {_TICKET_COLS} FROM ticket t WHERE t.id = %s FOR UPDATE", (ticket_id,)).fetchone()
    if row is None:
        raise TicketNotFound(f"ticket {ticket_id} not found")
    return row


def transition(conn, ticket_id: int, action: str, *, actor: str, now: datetime,
               data: dict[str, Any] | None = None) -> dict:
    """Apply one workflow action (ticketing/workflow.py TRANSITIONS / EVENT_ONLY) and audit it.

    Raises InvalidTransition (→ 409), TicketValidationError (→ 422), TicketNotFound (→ 404).
    Returns the updated ticket with ``event_id`` of the history row written.
    """
    data = dict(data or {})
    t = _lock(conn, ticket_id)
    to = next_status(t["status"], action, t["type"], t["channel"], data, ticket_id)
    sets: dict[str, Any] = {"status": to.value, "updated_at": now}
    if action in ("dispatch", "claim", "reassign"):
        sets["assignee_id"] = int(data["technician_id"])
        if data.get("station_id") is not None:
            sets["station_id"] = int(data["station_id"])
        if action != "reassign":
            sets["dispatch_round"] = t["dispatch_round"] + 1
            data["dispatch_round"] = t["dispatch_round"] + 1
            if t["status"] == Status.REOPENED:
                data["second_dispatch"] = True      # 二次派单
    elif action == "decline":
        sets["assignee_id"] = None
    elif action == "resolve":
        if t["type"] == "temp_test" and t["status"] == Status.ON_SITE and not conn.execute(
                "SELECT 1 FROM temp_test WHERE ticket_id = %s LIMIT 1", (ticket_id,)).fetchone():
            raise TicketValidationError("record the 测温 first (measured, or user refused — R11/R12), then resolve")
        sets["resolved_at"] = now
        if data.get("user_caused"):
            sets["user_caused"] = data["user_caused"]        # R10 finding
    elif action in ("revisit", "revisit_dissatisfied"):
        sets["satisfaction"] = data["satisfaction"]
    elif action == "cancel":
        sets["cancel_reason"] = data["reason"]
    elif action == "escalate_external":
        sets["external_ref"] = data["external_ref"]
    elif action in ("close", "auto_close"):
        sets["closed_at"] = now
    elif action == "urge":
        sets["urge_count"] = t["urge_count"] + 1
    elif action in ("pause", "resume"):
        _check_pause(conn, t, action, data, now)
    cols = ", ".join(f"{k} = %s" for k in sets)
    conn.execute(f"UPDATE ticket SET {cols} WHERE id = %s", (*sets.values(), ticket_id))
    event_id = add_event(conn, ticket_id, at=now, actor=actor, action=action, from_status=t["status"],
                         to_status=to.value, data=data)
    updated = {**t, **sets, "event_id": event_id}
    if action in ("dispatch", "claim"):
        notifications.on_dispatch(conn, updated, event_id, now, data)
    elif action == "resolve":
        notifications.on_resolve(conn, updated, event_id, now, data)
    return updated


def _check_pause(conn, t: dict, action: str, data: dict, now: datetime) -> None:
    """Pause codes stop the SLA clocks (ticketing/sla.py); only policy codes, never twice in a row."""
    if action == "pause":
        codes = company_policy(conn, t["company_id"], local_day(now))["sla"]["pause_codes"]
        if data.get("code") not in codes:
            raise TicketValidationError(f"pause code must be one of {', '.join(codes)}, got {data.get('code')!r}")
    last = conn.execute("""SELECT action FROM ticket_event WHERE ticket_id = %s AND action IN ('pause', 'resume')
                           ORDER BY at DESC, id DESC LIMIT 1""", (t["id"],)).fetchone()
    paused = bool(last and last[0] == "pause")
    if action == "pause" and paused:
        raise InvalidTransition(t["id"], t["status"], action, ["resume"], "the SLA clock is already paused")
    if action == "resume" and not paused:
        raise InvalidTransition(t["id"], t["status"], action, ["pause"], "the SLA clock is not paused")


# convenience wrappers (the API and dunning call these) ---------------------------------------------


def accept(conn, ticket_id: int, *, actor: str, now: datetime) -> dict:
    return transition(conn, ticket_id, "accept", actor=actor, now=now)


def arrive(conn, ticket_id: int, *, actor: str, now: datetime, lat: float | None = None,
           lon: float | None = None) -> dict:
    return transition(conn, ticket_id, "arrive", actor=actor, now=now, data={"lat": lat, "lon": lon})


def resolve(conn, ticket_id: int, *, actor: str, now: datetime, resolution: str,
            user_caused: str | None = None) -> dict:
    """``user_caused``: an R10 finding code (covered_radiator, altered_installation, drew_water, other_device)."""
    return transition(conn, ticket_id, "resolve", actor=actor, now=now,
                      data={"resolution": resolution, "user_caused": user_caused})


def revisit(conn, ticket_id: int, *, actor: str, now: datetime, satisfaction: int, comment: str = "") -> dict:
    """回访: satisfaction 1–5; ≤ 2 reopens the ticket for a second dispatch (二次派单)."""
    if not isinstance(satisfaction, int) or isinstance(satisfaction, bool) or not 1 <= satisfaction <= 5:
        raise TicketValidationError(f"satisfaction must be an integer 1–5, got {satisfaction!r}")
    return transition(conn, ticket_id, revisit_action(satisfaction), actor=actor, now=now,
                      data={"satisfaction": satisfaction, "comment": comment})


def close(conn, ticket_id: int, *, actor: str, now: datetime) -> dict:
    return transition(conn, ticket_id, "close", actor=actor, now=now)


def cancel(conn, ticket_id: int, *, actor: str, now: datetime, reason: str) -> dict:
    return transition(conn, ticket_id, "cancel", actor=actor, now=now, data={"reason": reason})


def escalate_external(conn, ticket_id: int, *, actor: str, now: datetime, external_ref: str,
                      body: str = "12345") -> dict:
    """R28: the customer went to 12345 / the heating authority / a third-party lab."""
    return transition(conn, ticket_id, "escalate_external", actor=actor, now=now,
                      data={"external_ref": external_ref, "body": body})


def pause_clock(conn, ticket_id: int, *, actor: str, now: datetime, code: str, note: str = "") -> dict:
    return transition(conn, ticket_id, "pause", actor=actor, now=now, data={"code": code, "note": note})


def resume_clock(conn, ticket_id: int, *, actor: str, now: datetime, note: str = "") -> dict:
    return transition(conn, ticket_id, "resume", actor=actor, now=now, data={"note": note})


def urge(conn, ticket_id: int, *, actor: str, now: datetime, channel: str = "phone", note: str = "") -> dict:
    """催办 on an open ticket without a new call record."""
    return transition(conn, ticket_id, "urge", actor=actor, now=now, data={"channel": channel, "note": note})


def add_note(conn, ticket_id: int, *, actor: str, now: datetime, text: str) -> dict:
    if not text.strip():
        raise TicketValidationError("a note needs text")
    return transition(conn, ticket_id, "note", actor=actor, now=now, data={"text": text})


def reply(conn, ticket_id: int, *, actor: str, now: datetime, text: str) -> dict:
    """Written answer to a 投诉/咨询 (stops the R26 reply clock)."""
    if not text.strip():
        raise TicketValidationError("a reply needs text")
    return transition(conn, ticket_id, "reply", actor=actor, now=now, data={"text": text})


# ------------------------------------------------------------------------------------------ attachments

ATTACHMENT_KINDS = ("photo", "audio", "signature", "document")


def add_attachment(conn, ticket_id: int, *, kind: str, content_type: str, data: bytes, actor: str,
                   now: datetime, filename: str = "") -> dict:
    """Store a photo / audio / signature image as bytea with its SHA-256; size and type per policy."""
    t = _lock(conn, ticket_id)
    next_status(t["status"], "attach", t["type"], t["channel"], {}, ticket_id)
    policy = company_policy(conn, t["company_id"], local_day(now))["attachments"]
    if kind not in ATTACHMENT_KINDS:
        raise TicketValidationError(f"attachment kind must be one of {', '.join(ATTACHMENT_KINDS)}")
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype not in policy["content_types"]:
        raise TicketValidationError(f"content type {content_type!r} not accepted; "
                                    f"allowed: {', '.join(policy['content_types'])}")
    if not data:
        raise TicketValidationError("attachment is empty")
    if len(data) > int(policy["max_bytes"]):
        raise TicketValidationError(f"attachment is {len(data)} bytes; the limit is {policy['max_bytes']}")
    digest = hashlib.sha256(data).hexdigest()
    aid = conn.execute(
        """INSERT INTO ticket_attachment (ticket_id, kind, filename, content_type, size_bytes, sha256, data,
                                          uploaded_by, uploaded_at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
        (ticket_id, kind, filename[:200], ctype, len(data), digest, data, actor, now)).fetchone()[0]
    meta = {"id": aid, "ticket_id": ticket_id, "kind": kind, "filename": filename[:200], "content_type": ctype,
            "size_bytes": len(data), "sha256": digest, "uploaded_by": actor, "uploaded_at": now}
    add_event(conn, ticket_id, at=now, actor=actor, action="attach", from_status=t["status"],
              to_status=t["status"], data={k: v for k, v in meta.items() if k != "uploaded_at"})
    return meta


def list_attachments(conn, ticket_id: int) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("""SELECT id, ticket_id, kind, filename, content_type, size_bytes, sha256, uploaded_by,
                                     uploaded_at FROM ticket_attachment WHERE ticket_id = %s ORDER BY id""",
                           (ticket_id,)).fetchall()


def get_attachment(conn, ticket_id: int, attachment_id: int) -> dict:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("""SELECT id, ticket_id, kind, filename, content_type, size_bytes, sha256, data
                               FROM ticket_attachment WHERE id = %s AND ticket_id = %s""",
                          (attachment_id, ticket_id)).fetchone()
    if row is None:
        raise TicketNotFound(f"attachment {attachment_id} of ticket {ticket_id} not found")
    row["data"] = bytes(row["data"])
    return row


# ------------------------------------------------------------------------------------------ for dunning


def open_tickets_for_household(conn, household_id: int) -> list[dict]:
    """Non-terminal tickets of a household, newest first."""
    return list_tickets(conn, household_id=household_id, open_only=True, limit=100)


def has_open_low_temperature_complaint(conn, household_id: int) -> bool:
    """True while a low-temperature 投诉/报修/测温 of this household still awaits work (R27, R35 pause)."""
    row = conn.execute(
        """SELECT EXISTS (SELECT 1 FROM ticket WHERE household_id = %s AND status = ANY(%s)
                           AND channel <> 'auto' AND (low_temperature OR type = 'temp_test'))""",
        (household_id, sorted(ACTIVE))).fetchone()
    return bool(row[0])


def has_open_refund_dispute(conn, household_id: int) -> bool:
    """True while the household disputes money: an active ticket of a dispute category, or a 测温/
    low-temperature ticket escalated outside the company (R28: 12345, authority, third-party lab)."""
    row = conn.execute(
        """SELECT EXISTS (SELECT 1 FROM ticket WHERE household_id = %s AND status = ANY(%s)
                           AND (category = ANY(%s)
                                OR (status = 'escalated_external' AND (low_temperature OR type = 'temp_test'))))""",
        (household_id, sorted(ACTIVE), sorted(DISPUTE_CATEGORIES))).fetchone()
    return bool(row[0])


def request_temp_test(conn, household_id: int, *, actor: str, now: datetime, channel: str = "phone",
                      description: str = "", reported_at: datetime | None = None,
                      external_ref: str | None = None) -> CreateResult:
    """Open a 测温 ticket (or link to the open one: the call then counts as 催办). Starts the R27 clock."""
    return create_ticket(conn, type="temp_test", channel=channel, actor=actor, now=now, household_id=household_id,
                         description=description, category="low_temp", low_temperature=True,
                         reported_at=reported_at, external_ref=external_ref, priority=2)


def link_record(conn, ticket_id: int, *, kind: str, ref: str, actor: str, now: datetime) -> int:
    """Record that another module's record (e.g. kind='dunning_case', ref='123') concerns this ticket."""
    if not kind or not ref:
        raise TicketValidationError("link needs kind and ref")
    t = get_ticket(conn, ticket_id)
    return add_event(conn, ticket_id, at=now, actor=actor, action="link", from_status=t["status"],
                     to_status=t["status"], data={"kind": kind, "ref": str(ref)})


def tickets_linked_to(conn, *, kind: str, ref: str) -> list[int]:
    rows = conn.execute("""SELECT DISTINCT ticket_id FROM ticket_event WHERE action = 'link'
                            AND data->>'kind' = %s AND data->>'ref' = %s ORDER BY ticket_id""",
                        (kind, str(ref))).fetchall()
    return [r[0] for r in rows]


__all__ = ["create_ticket", "get_ticket", "history", "list_tickets", "transition", "accept", "arrive", "resolve",
           "revisit", "close", "cancel", "escalate_external", "pause_clock", "resume_clock", "urge", "add_note",
           "reply", "add_attachment", "list_attachments", "get_attachment", "open_tickets_for_household",
           "has_open_low_temperature_complaint", "has_open_refund_dispute", "request_temp_test", "link_record",
           "tickets_linked_to", "add_event", "resolve_location", "ticket_scope", "EVENT_ONLY"]
