"""Messages from ticketing through the shared outbox (notify.outbox): customers and staff.

Customers hear on dispatch and on resolution. The outbox row is written in the same transaction as the
ticket event, with the idempotency key ``ticket:<id>:event:<event id>:<channel>``: re-running a job or
retrying a request never sends twice, and a second dispatch (二次派单) is a new event, so it is a new
message. Personal fields (name) are filled by the sender from pii at send time (R57–R60); we pass only the
ticket number, times and the result.

Staff hear about SLA levels (``on_sla_level``, called by ticketing.sla when it raises a level for the
first time): a warning goes to the assignee, a breach to the assignee and the station's team lead, each
escalation level to whoever holds it. Who holds what is policy data (``sla.notify.levels``) resolved from
the dispatch tables (technician roles per repair station) and staff logins (app_user roles per company).
The key ``ticket:<id>:sla:<clock>:<level>:<recipient>:<channel>`` makes each (level, recipient) one
message however often the job runs. Staff messages carry no household: the outbox would otherwise
address the customer. They name the ticket, its type and a building-level place — never the customer's
name, phone or flat (the household code spells out building/unit/room, i.e. the address, R55/R60); the
full record is one click away behind the ticket's access control.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from notify.outbox import enqueue, enqueue_many

from ticketing.model import TYPE_ZH
from ticketing.policy import SlaLevelNotify, company_policy, local_day, sla_notify_levels

log = logging.getLogger(__name__)


def _channel(ticket: dict) -> str:
    # a WeChat customer is answered on WeChat; everyone else by SMS (the sender resolves the address)
    return "wechat" if ticket["channel"] == "wechat" else "sms"


def _base_context(conn, ticket: dict, now: datetime) -> dict:
    policy = company_policy(conn, ticket["company_id"], local_day(now))
    return {"ticket_no": ticket["no"], "service_phone": policy["service_phone"]}


def on_dispatch(conn, ticket: dict, event_id: int, now: datetime, data: dict) -> int | None:
    """工单受理/测温预约 message; returns the outbox id (None if already queued or no household)."""
    if ticket.get("household_id") is None:
        return None
    ctx = _base_context(conn, ticket, now)
    template = "ticket.received"
    if ticket["type"] == "temp_test" and data.get("appointment_at"):
        template = "ticket.temp_test"
        ctx["appointment_time"] = datetime.fromisoformat(str(data["appointment_at"]))
    channel = _channel(ticket)
    return enqueue(conn, idempotency_key=f"ticket:{ticket['id']}:event:{event_id}:{channel}",
                   household_id=ticket["household_id"], channel=channel, template=template, context=ctx,
                   source="ticketing")


def on_resolve(conn, ticket: dict, event_id: int, now: datetime, data: dict) -> int | None:
    """工单处理结果 message with the resolution text."""
    if ticket.get("household_id") is None:
        return None
    ctx = {**_base_context(conn, ticket, now), "resolution": data.get("resolution") or "已处理"}
    channel = _channel(ticket)
    return enqueue(conn, idempotency_key=f"ticket:{ticket['id']}:event:{event_id}:{channel}",
                   household_id=ticket["household_id"], channel=channel, template="ticket.resolved",
                   context=ctx, source="ticketing")


# ------------------------------------------------------------------------------------------ staff: SLA levels

#: clock names as staff say them (ticketing/sla.py CLOCKS)
CLOCK_ZH: dict[str, str] = {"ack": "响应", "arrive": "到场", "resolve": "办结", "reply": "答复"}


@dataclass(frozen=True)
class StaffRecipient:
    """One person (or fixed mailbox) an SLA message goes to.

    ``kind``: technician | user | address. ``ref``: technician.id / app_user.id / the address name in
    ``sla.notify.addresses``. Only ids and codes are carried (no staff names): the staff inbox resolves
    them, and an id is what the idempotency key can rely on when a name or address changes.
    """
    kind: str
    ref: str
    role: str                       # the policy role that selected this recipient (assignee, station:team_lead …)
    code: str | None = None         # technician code, shown in the console / file log
    address: str | None = None      # kind address: the configured address itself

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.ref}"

    def as_context(self) -> dict:
        out: dict = {"kind": self.kind, "ref": self.ref, "role": self.role}
        if self.code:
            out["code"] = self.code
        if self.address:
            out["address"] = self.address
        return out


@dataclass(frozen=True)
class SlaTicket:
    """What SLA staff messages and recipient look-ups need from a ticket — nothing personal."""
    id: int
    no: str
    type: str
    company_id: int | None
    branch_id: int | None
    assignee_id: int | None
    assignee_code: str | None
    station_ids: tuple[int, ...]    # the responsible repair station(s); see load_sla_ticket
    place: str                      # building-level: 小区 + 楼, or the substation for network tickets


@dataclass(frozen=True)
class SlaNotice:
    """The outcome of telling people about one raised level, recorded on the SLA ticket event."""
    level: str
    recipients: tuple[StaffRecipient, ...]
    unheld: tuple[str, ...]         # roles of the level that nobody holds (or no address configured)
    queued: int                     # new outbox rows (0 when every key already existed)

    def as_event_data(self) -> dict:
        return {"notified": [r.key for r in self.recipients], "unheld": list(self.unheld)}


def load_sla_ticket(conn, ticket_id: int) -> SlaTicket:
    """The ticket as staff messages see it, with its responsible station(s).

    The station is the assignee's (their team lead is who answers for them), else the one recorded at
    dispatch, else — for a ticket nobody has taken yet — every station of the company owning its
    building or community (or, for a network ticket, any community of its substation): an unanswered
    ack clock is exactly when the area's team lead must hear.
    """
    row = conn.execute(
        """SELECT t.no, t.type, t.company_id, t.assignee_id, te.code, coalesce(te.station_id, t.station_id),
                  t.building_id, t.community_id, t.substation_id, s.branch_id, b.name, c.name, s.name
             FROM ticket t
             LEFT JOIN technician te ON te.id = t.assignee_id
             LEFT JOIN building b ON b.id = t.building_id
             LEFT JOIN community c ON c.id = t.community_id
             LEFT JOIN substation s ON s.id = t.substation_id
            WHERE t.id = %s""", (ticket_id,)).fetchone()
    if row is None:
        raise LookupError(f"ticket {ticket_id} does not exist")
    (no, ttype, company, assignee, code, station, building, community, substation, branch,
     building_name, community_name, substation_name) = row
    if station is not None:
        stations: tuple[int, ...] = (station,)
    else:
        stations = tuple(r[0] for r in conn.execute(
            """SELECT DISTINCT a.station_id FROM station_area a JOIN repair_station rs ON rs.id = a.station_id
                WHERE (%(company)s::int IS NULL OR rs.company_id = %(company)s::int)
                  AND (a.building_id = %(building)s::int OR a.community_id = %(community)s::int
                       OR (%(building)s::int IS NULL AND %(community)s::int IS NULL
                           AND a.community_id IN (SELECT id FROM community WHERE substation_id = %(substation)s::int)))
                ORDER BY 1""",
            {"company": company, "building": building, "community": community, "substation": substation}))
    if community_name or building_name:
        place = "".join(p for p in (community_name, building_name) if p)
    else:
        place = substation_name or "未关联位置"
    return SlaTicket(ticket_id, no, ttype, company, branch, assignee, code, stations, place)


def holders(conn, ticket: SlaTicket, role: str, policy: dict) -> list[StaffRecipient]:
    """Who holds one policy role for this ticket (see policy.yaml ``sla.notify``); [] when nobody does.

    Inactive technicians and disabled or service logins never hold a role: a message to someone who
    has left is a message to nobody, and must show up as unheld instead.
    """
    kind, _, arg = role.partition(":")
    if kind == "assignee":
        if ticket.assignee_id is None:
            return []
        rows = conn.execute("SELECT id, code FROM technician WHERE id = %s AND active",
                            (ticket.assignee_id,)).fetchall()
        return [StaffRecipient("technician", str(i), role, code) for i, code in rows]
    if kind == "station":
        if not ticket.station_ids:
            return []
        rows = conn.execute("""SELECT id, code FROM technician WHERE station_id = ANY(%s) AND role = %s AND active
                                ORDER BY id""", (list(ticket.station_ids), arg)).fetchall()
        return [StaffRecipient("technician", str(i), role, code) for i, code in rows]
    if kind == "company":
        if ticket.company_id is None:
            return []
        # a branch-scoped supervisor answers only for their branches (app_user_scope, NULL branch = all)
        rows = conn.execute(
            """SELECT u.id FROM app_user u
                WHERE u.company_id = %(company)s AND u.role = %(role)s AND u.active AND NOT u.is_service
                  AND (NOT EXISTS (SELECT 1 FROM app_user_scope s WHERE s.user_id = u.id)
                       OR EXISTS (SELECT 1 FROM app_user_scope s WHERE s.user_id = u.id
                                     AND s.company_id = %(company)s
                                     AND (s.branch_id IS NULL OR s.branch_id = %(branch)s::int)))
                ORDER BY u.id""", {"company": ticket.company_id, "role": arg, "branch": ticket.branch_id}).fetchall()
        return [StaffRecipient("user", str(r[0]), role) for r in rows]
    if kind == "address":
        address = (policy["sla"]["notify"].get("addresses") or {}).get(arg)
        return [StaffRecipient("address", arg, role, address=str(address))] if address else []
    raise ValueError(f"unknown recipient role {role!r}")      # policy.sla_notify_levels refuses these first


def resolve_recipients(roles: Iterable[str], lookup: Callable[[str], list[StaffRecipient]]
                       ) -> tuple[list[StaffRecipient], list[str]]:
    """Holders of ``roles`` in order, each person once (the assignee may also be the team lead), and the
    roles nobody holds. A role whose holders were already reached through an earlier role is held."""
    out: list[StaffRecipient] = []
    seen: set[str] = set()
    unheld: list[str] = []
    for role in roles:
        found = lookup(role)
        if not found:
            unheld.append(role)
        for r in found:
            if r.key not in seen:
                seen.add(r.key)
                out.append(r)
    return out, unheld


def format_duration(value: timedelta) -> str:
    """'45分钟', '2小时30分钟', '3天' — how a dispatcher reads a clock (days only from two days up)."""
    minutes = max(0, int(round(value.total_seconds() / 60)))
    days, rest = divmod(minutes, 1440) if minutes >= 2 * 1440 else (0, minutes)
    hours, mins = divmod(rest, 60)
    parts = [f"{days}天" if days else "", f"{hours}小时" if hours else "", f"{mins}分钟" if mins else ""]
    return "".join(parts) or "0分钟"


def sla_context(ticket: SlaTicket, spec: SlaLevelNotify, recipient: StaffRecipient, *, clock: str,
                elapsed: timedelta, limit: timedelta, due_at: datetime | None, tz: ZoneInfo) -> dict:
    """Template variables of one SLA staff message (ticket.sla_* templates); JSON-safe, nothing personal."""
    return {
        "ticket_no": ticket.no, "ticket_id": ticket.id, "ticket_type": TYPE_ZH.get(ticket.type, ticket.type),
        "place": ticket.place, "clock": clock, "clock_label": CLOCK_ZH.get(clock, clock),
        "level": spec.level, "level_label": spec.label,
        "elapsed": format_duration(elapsed), "limit": format_duration(limit),
        "elapsed_minutes": round(elapsed.total_seconds() / 60, 1), "limit_minutes": limit.total_seconds() / 60,
        "share_pct": int(elapsed / limit * 100) if limit else 0,
        "due_at": due_at.astimezone(tz) if due_at is not None else None,
        "assignee": ticket.assignee_code or "未派单",
        "recipient_role": recipient.role, "recipient": recipient.as_context(),
    }


def on_sla_level(conn, ticket: SlaTicket, *, clock: str, level: str, elapsed: timedelta, limit: timedelta,
                 due_at: datetime | None, policy: dict, now: datetime, tz: ZoneInfo) -> SlaNotice:
    """Queue one message per holder of ``level`` for this clock, in the caller's transaction.

    Called once per (ticket, clock, level) — ticket_sla_notice is the guard — and the idempotency keys
    make a repeat harmless anyway. Roles nobody holds are returned (and logged) so the caller records
    them on the ticket event: an escalation that reaches nobody must be visible, not silent.
    """
    spec = sla_notify_levels(policy)[level]
    channel = policy["sla"]["notify"]["channel"]
    recipients, unheld = resolve_recipients(spec.to, lambda role: holders(conn, ticket, role, policy))
    items = [{"idempotency_key": f"ticket:{ticket.id}:sla:{clock}:{level}:{r.key}:{channel}",
              "household_id": None, "channel": channel, "template": spec.template, "source": "ticketing",
              "context": sla_context(ticket, spec, r, clock=clock, elapsed=elapsed, limit=limit, due_at=due_at,
                                     tz=tz)}
             for r in recipients]
    ids = enqueue_many(conn, items)
    if unheld:
        log.warning("ticket %s %s/%s at %s: nobody holds %s%s", ticket.no, clock, level, now.isoformat(),
                    ", ".join(unheld), "" if recipients else " — nobody was notified")
    return SlaNotice(level, tuple(recipients), tuple(unheld), sum(1 for i in ids if i is not None))
