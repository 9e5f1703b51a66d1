"""Customer messages on dispatch and on resolution, through the shared outbox (notify.outbox).

The outbox row is written in the same transaction as the ticket event, with the idempotency key
``ticket:<id>:event:<event id>:<channel>``: re-running a job or retrying a request never sends twice, and
a second dispatch (二次派单) is a new event, so it is a new message. Personal fields (name) are filled by
the sender from pii at send time (R57–R60); we pass only the ticket number, times and the result.
"""
from __future__ import annotations

from datetime import datetime

from notify.outbox import enqueue

from ticketing.policy import company_policy, local_day


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
