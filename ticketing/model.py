"""Ticket vocabulary: types, channels, statuses, the errors the API maps to HTTP codes.

The Chinese names are the words agents and customers use (domain.md §3); the English codes are what
the database stores (schema.sql ``ticket.type`` / ``ticket.channel`` CHECK constraints).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class TicketType(StrEnum):
    REPAIR = "repair"            # 报修: leak, cold radiator, air lock (窝风)
    COMPLAINT = "complaint"      # 投诉
    INQUIRY = "inquiry"          # 咨询
    TEMP_TEST = "temp_test"      # 测温 (R11–R13)
    STOP_HEAT = "stop_heat"      # 报停 (R29)
    RESUME_HEAT = "resume_heat"  # 复热 (R30)
    VALVE = "valve"              # 开关栓
    INSPECTION = "inspection"    # 稽查
    INCIDENT = "incident"        # substation / network fault affecting many households (auto)
    MAINTENANCE = "maintenance"  # sensor or device maintenance (auto)


TYPE_ZH: dict[str, str] = {
    "repair": "报修", "complaint": "投诉", "inquiry": "咨询", "temp_test": "测温", "stop_heat": "报停",
    "resume_heat": "复热", "valve": "开关栓", "inspection": "稽查", "incident": "故障", "maintenance": "维护",
}


class Channel(StrEnum):
    PHONE = "phone"                  # 电话
    WECHAT = "wechat"                # 微信
    HOTLINE_12345 = "hotline_12345"  # 12345 government hotline (R28)
    WALK_IN = "walk_in"              # 现场
    APP = "app"
    AUTO = "auto"                    # opened by telemetry (ticketing/auto.py)


CHANNEL_ZH: dict[str, str] = {"phone": "电话", "wechat": "微信", "hotline_12345": "12345", "walk_in": "现场",
                              "app": "APP", "auto": "自动"}


class Status(StrEnum):
    NEW = "new"
    DISPATCHED = "dispatched"
    ACCEPTED = "accepted"
    ON_SITE = "on_site"
    RESOLVED = "resolved"
    REVISITED = "revisited"            # 回访 done, satisfied
    REOPENED = "reopened"              # 回访 dissatisfied → waits for 二次派单
    CLOSED = "closed"
    CANCELLED = "cancelled"
    ESCALATED_EXTERNAL = "escalated_external"   # R28: 12345 / authority / third-party lab
    MERGED = "merged"                  # duplicate call linked into an open ticket (催单重单)


STATUS_ZH: dict[str, str] = {
    "new": "待派单", "dispatched": "已派单", "accepted": "已接单", "on_site": "已到场", "resolved": "已处理",
    "revisited": "已回访", "reopened": "待二次派单", "closed": "已关闭", "cancelled": "已取消",
    "escalated_external": "外部升级", "merged": "已合并",
}

#: Terminal statuses: nothing happens to these tickets any more.
TERMINAL = frozenset({Status.CLOSED, Status.CANCELLED, Status.MERGED})
#: Work is still owed to the customer (SLA clocks may run, duplicates link here, dunning asks about these).
ACTIVE = frozenset({Status.NEW, Status.DISPATCHED, Status.ACCEPTED, Status.ON_SITE, Status.REOPENED,
                    Status.ESCALATED_EXTERNAL})
#: Not terminal (resolved / revisited tickets still await 回访 or closing).
OPEN = frozenset(s for s in Status if s not in TERMINAL)

#: Who a household/unit ticket must be about; incidents and maintenance are about a substation/sensor.
HOUSEHOLD_TYPES = frozenset({TicketType.REPAIR, TicketType.COMPLAINT, TicketType.INQUIRY, TicketType.TEMP_TEST,
                             TicketType.STOP_HEAT, TicketType.RESUME_HEAT, TicketType.VALVE,
                             TicketType.INSPECTION})


class TicketError(Exception):
    """Base class of ticketing errors; ``code`` is a short machine reason for API responses."""
    code = "ticket_error"


class TicketNotFound(TicketError):
    """→ HTTP 404."""
    code = "not_found"


class InvalidTransition(TicketError):
    """The workflow table does not allow this action in this status (→ HTTP 409)."""
    code = "invalid_transition"

    def __init__(self, ticket_id: int | None, status: str, action: str, allowed: list[str], detail: str = ""):
        self.ticket_id, self.status, self.action, self.allowed = ticket_id, status, action, allowed
        msg = (f"ticket {ticket_id}: action '{action}' is not allowed in status '{status}'"
               f" (allowed: {', '.join(allowed) or 'none'})")
        super().__init__(msg + (f"; {detail}" if detail else ""))


class TicketValidationError(TicketError):
    """Bad input (missing reason, satisfaction out of range, attachment too large …) → HTTP 422."""
    code = "invalid_input"


@dataclass(frozen=True)
class Event:
    """One row of the append-only history (ticket_event)."""
    at: datetime
    actor: str
    action: str
    from_status: str | None = None
    to_status: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CreateResult:
    """What `store.create_ticket` did: a new ticket, or a duplicate linked into an open one (催单)."""
    ticket_id: int
    no: str
    merged_into: int | None = None     # the open ticket this call was linked to, if a duplicate
    urge_count: int = 0
    ticket: dict | None = field(default=None, compare=False, repr=False)   # the new row, when at hand

    @property
    def is_duplicate(self) -> bool:
        return self.merged_into is not None
