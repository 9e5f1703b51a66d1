"""The ticket state machine as a TABLE (one row per allowed move), and a pure check against it.

new → dispatched → accepted → on_site → resolved → revisited (回访, satisfaction 1–5) → closed.
A dissatisfied 回访 (satisfaction ≤ ``DISSATISFIED_MAX``) reopens the ticket for a second dispatch
(二次派单). Cancel needs a reason; escalation to 12345 / the authority needs the external reference (R28).
Anything not in the table is refused with `InvalidTransition` (the API answers 409).

Actions that do not move the status (note, urge 催办, pause/resume of SLA clocks, attachments) are events
only; they are listed in ``EVENT_ONLY`` with the statuses in which they are accepted.
"""
from __future__ import annotations

from dataclasses import dataclass

from ticketing.model import ACTIVE, OPEN, InvalidTransition, Status, TicketType, TicketValidationError

#: 回访 satisfaction at or below this reopens the ticket (二次派单).
DISSATISFIED_MAX = 2

#: Types a phone agent may answer without a site visit (咨询, 投诉 answered in writing, R26 reply clock).
DESK_TYPES = frozenset({TicketType.INQUIRY, TicketType.COMPLAINT})
#: Types without a customer to call back (回访 makes no sense): closed straight after resolution.
NO_REVISIT_TYPES = frozenset({TicketType.INCIDENT, TicketType.MAINTENANCE})


@dataclass(frozen=True)
class Transition:
    action: str
    from_status: Status
    to_status: Status
    types: frozenset[str] | None = None       # None = every type
    channels: frozenset[str] | None = None    # None = every channel
    requires: tuple[str, ...] = ()           # keys that must be present (non-empty) in the event data
    note: str = ""


S = Status
_CUSTOMER = frozenset(TicketType) - NO_REVISIT_TYPES
_PRE_SITE = (S.NEW, S.REOPENED)

TRANSITIONS: tuple[Transition, ...] = (
    # dispatch (派单) / 二次派单 after a dissatisfied 回访, or after the external escalation came back
    Transition("dispatch", S.NEW, S.DISPATCHED, requires=("technician_id",)),
    Transition("dispatch", S.REOPENED, S.DISPATCHED, requires=("technician_id",), note="二次派单"),
    Transition("dispatch", S.ESCALATED_EXTERNAL, S.DISPATCHED, requires=("technician_id",)),
    # 抢单: a technician takes a pooled ticket and accepts it in one step
    Transition("claim", S.NEW, S.ACCEPTED, requires=("technician_id",)),
    Transition("claim", S.REOPENED, S.ACCEPTED, requires=("technician_id",)),
    # 改派 (reassign) before arrival
    Transition("reassign", S.DISPATCHED, S.DISPATCHED, requires=("technician_id", "reason")),
    Transition("reassign", S.ACCEPTED, S.DISPATCHED, requires=("technician_id", "reason")),
    Transition("decline", S.DISPATCHED, S.NEW, requires=("reason",), note="technician refuses the order"),
    Transition("accept", S.DISPATCHED, S.ACCEPTED),
    Transition("arrive", S.ACCEPTED, S.ON_SITE),
    Transition("resolve", S.ON_SITE, S.RESOLVED, requires=("resolution",)),
    # desk types may be answered without a visit (R26 reply clock)
    Transition("resolve", S.NEW, S.RESOLVED, types=DESK_TYPES, requires=("resolution",)),
    Transition("resolve", S.ACCEPTED, S.RESOLVED, types=DESK_TYPES, requires=("resolution",)),
    Transition("resolve", S.REOPENED, S.RESOLVED, types=DESK_TYPES, requires=("resolution",)),
    Transition("resolve", S.ESCALATED_EXTERNAL, S.RESOLVED, requires=("resolution",)),
    # 回访
    Transition("revisit", S.RESOLVED, S.REVISITED, types=_CUSTOMER, requires=("satisfaction",)),
    Transition("revisit_dissatisfied", S.RESOLVED, S.REOPENED, types=_CUSTOMER, requires=("satisfaction",),
               note="satisfaction ≤ DISSATISFIED_MAX"),
    Transition("close", S.REVISITED, S.CLOSED),
    Transition("close", S.RESOLVED, S.CLOSED, types=NO_REVISIT_TYPES),
    # cancel with reason, before the work is done
    *(Transition("cancel", s, S.CANCELLED, requires=("reason",))
      for s in (S.NEW, S.DISPATCHED, S.ACCEPTED, S.ON_SITE, S.REOPENED)),
    # R28: the customer went to 12345 / the authority / a lab
    *(Transition("escalate_external", s, S.ESCALATED_EXTERNAL, requires=("external_ref",))
      for s in (S.NEW, S.DISPATCHED, S.ACCEPTED, S.ON_SITE, S.RESOLVED, S.REOPENED)),
    # auto tickets close themselves once telemetry shows recovery (ticketing/auto.py)
    *(Transition("auto_close", s, S.CLOSED, channels=frozenset({"auto"}), requires=("reason",))
      for s in (S.NEW, S.DISPATCHED, S.ACCEPTED, S.ON_SITE, S.RESOLVED, S.REOPENED)),
    # a repeat call linked into an open ticket (催单重单); only at creation
    Transition("merge", S.NEW, S.MERGED, requires=("into",)),
)

#: Event-only actions: allowed statuses (status does not change).
EVENT_ONLY: dict[str, frozenset[Status]] = {
    "note": OPEN | {S.CLOSED, S.CANCELLED},
    "urge": ACTIVE | {S.RESOLVED},                 # 催办: repeat call on an open ticket
    "pause": frozenset({S.DISPATCHED, S.ACCEPTED, S.ON_SITE}),   # SLA pause codes (customer_absent …)
    "resume": frozenset({S.DISPATCHED, S.ACCEPTED, S.ON_SITE}),
    "attach": OPEN | {S.CLOSED},
    "reply": ACTIVE | {S.RESOLVED},                # written answer sent (R26 reply clock)
    "temp_test": frozenset({S.ON_SITE, S.ACCEPTED, S.DISPATCHED, S.NEW, S.ESCALATED_EXTERNAL}),
    "link_incident": ACTIVE,
    "notify": OPEN | {S.CLOSED},
}

_INDEX: dict[tuple[str, Status], list[Transition]] = {}
for _t in TRANSITIONS:
    _INDEX.setdefault((_t.action, _t.from_status), []).append(_t)

ACTIONS = frozenset(t.action for t in TRANSITIONS)


def allowed_actions(status: str, ticket_type: str, channel: str = "phone") -> list[str]:
    """Actions (status-moving and event-only) accepted for a ticket in ``status``."""
    st = Status(status)
    moves = sorted({t.action for t in TRANSITIONS if t.from_status == st and _applies(t, ticket_type, channel)})
    events = sorted(a for a, sts in EVENT_ONLY.items() if st in sts)
    return moves + events


def _applies(t: Transition, ticket_type: str, channel: str) -> bool:
    return (t.types is None or ticket_type in t.types) and (t.channels is None or channel in t.channels)


def next_status(status: str, action: str, ticket_type: str, channel: str, data: dict | None = None,
                ticket_id: int | None = None) -> Status:
    """The status after ``action``; raises `InvalidTransition` (→ 409) or `TicketValidationError` (→ 422).

    Pure: the store calls it inside the transaction that locked the ticket row.
    """
    data = data or {}
    st = Status(status)
    if action in EVENT_ONLY:
        if st not in EVENT_ONLY[action]:
            raise InvalidTransition(ticket_id, status, action, allowed_actions(status, ticket_type, channel))
        return st
    candidates = [t for t in _INDEX.get((action, st), []) if _applies(t, ticket_type, channel)]
    if not candidates:
        raise InvalidTransition(ticket_id, status, action, allowed_actions(status, ticket_type, channel))
    t = candidates[0]
    missing = [k for k in t.requires if data.get(k) in (None, "", [])]
    if missing:
        raise TicketValidationError(f"action '{action}' needs {', '.join(missing)}")
    if action in ("revisit", "revisit_dissatisfied"):
        sat = data["satisfaction"]
        if not isinstance(sat, int) or isinstance(sat, bool) or not 1 <= sat <= 5:
            raise TicketValidationError(f"satisfaction must be an integer 1–5, got {sat!r}")
        if (sat <= DISSATISFIED_MAX) != (action == "revisit_dissatisfied"):
            raise TicketValidationError(f"satisfaction {sat} does not match action '{action}'")
    return t.to_status


def revisit_action(satisfaction: int) -> str:
    """Which 回访 action a satisfaction score means."""
    return "revisit_dissatisfied" if satisfaction <= DISSATISFIED_MAX else "revisit"
