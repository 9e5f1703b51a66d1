"""The notification outbox: producers enqueue inside their transaction, the dispatcher sends later.

Contract used by ticketing and dunning::

    enqueue(conn, *, idempotency_key, household_id, channel, template, context, source) -> int | None

returns the new outbox id, or ``None`` when a message with that key already exists (safe to run twice).
The template is rendered at enqueue time (so a broken template fails the producer, not the
dispatcher hours later); personal fields stay as placeholders until sending (R57–R60).
"""
from __future__ import annotations

import json
import logging
from datetime import date, datetime
from decimal import Decimal

from notify import templates

log = logging.getLogger(__name__)

CHANNELS = ("sms", "wechat", "email", "letter", "console")
SOURCES = ("dunning", "ticketing")
STATUSES = ("pending", "sending", "sent", "delivered", "failed")


def _json_default(value):
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    raise TypeError(f"context value of type {type(value).__name__} is not JSON-serialisable")


_INSERT = """INSERT INTO notify_outbox (idempotency_key, household_id, channel, template_id, template_version,
                                        context, subject, body, source, next_attempt_at, max_attempts)
             VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, COALESCE(%s, '-infinity'::timestamptz), %s)
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING id"""


def _prepare(idempotency_key: str, household_id: int | None, channel: str, template: str, context: dict,
             source: str, not_before: datetime | None, max_attempts: int) -> tuple:
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {CHANNELS}")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    if not idempotency_key:
        raise ValueError("idempotency_key must not be empty")
    if any(k in context for k in templates.PERSONAL):
        raise ValueError("personal fields (name, address) must not be passed in context; "
                         "they are decrypted from pii at send time")
    tpl = templates.load_template(template, context.get("segment"))
    rendered = templates.render(tpl, context)
    return (idempotency_key, household_id, channel, rendered.template_id, rendered.version,
            json.dumps(context, default=_json_default, ensure_ascii=False), rendered.subject, rendered.body,
            source, not_before, max_attempts)


def enqueue_many(conn, items: list[dict]) -> list[int | None]:
    """Batch form of :func:`enqueue` (same keyword names per item), one pipelined round trip.

    Returns ids in input order (None where the key already existed). All items are rendered and
    validated before anything is written.
    """
    params = [_prepare(i["idempotency_key"], i["household_id"], i["channel"], i["template"], i["context"],
                       i["source"], i.get("not_before"), i.get("max_attempts", 5)) for i in items]
    if not params:
        return []
    out: list[int | None] = []
    with conn.cursor() as cur:
        cur.executemany(_INSERT, params, returning=True)
        while True:
            row = cur.fetchone()
            out.append(row[0] if row else None)
            if not cur.nextset():
                break
    return out


def enqueue(conn, *, idempotency_key: str, household_id: int | None, channel: str, template: str,
            context: dict, source: str, not_before: datetime | None = None,
            max_attempts: int = 5) -> int | None:
    """Render `template` (segment variant from ``context['segment']``) and queue one message.

    `not_before` delays the first attempt (dunning send windows); ``None`` means as soon as possible.
    Raises ValueError for an unknown channel/source and TemplateError for a template problem.
    """
    row = conn.execute(_INSERT, _prepare(idempotency_key, household_id, channel, template, context, source,
                                         not_before, max_attempts)).fetchone()
    return row[0] if row else None


def add_event(conn, outbox_id: int, kind: str, detail: dict, at: datetime | None = None) -> None:
    conn.execute("INSERT INTO notify_event (outbox_id, at, kind, detail) VALUES (%s, COALESCE(%s, now()), %s, %s::jsonb)",
                 (outbox_id, at, kind, json.dumps(detail, default=_json_default, ensure_ascii=False)))


#: provider status words → our status. Anything else is recorded but changes nothing.
DELIVERED_WORDS = {"delivered", "delivrd", "success", "read", "signed"}
FAILED_WORDS = {"failed", "undeliv", "undelivered", "rejected", "bounced", "expired", "returned"}


def record_delivery(conn, *, provider: str, provider_id: str, status: str, at: datetime,
                    proof: str | None = None, detail: dict | None = None) -> int | None:
    """A delivery-status callback (SMS report, WeChat event, SMTP bounce, letter receipt).

    Returns the outbox id it applied to, or None for an unknown message (logged). Idempotent:
    a repeated callback only adds an event. A late 'failed' never overrides 'delivered'.
    """
    row = conn.execute("SELECT id, status FROM notify_outbox WHERE provider = %s AND provider_id = %s",
                       (provider, provider_id)).fetchone()
    if row is None:
        log.warning("delivery callback for unknown message %s/%s (%s)", provider, provider_id, status)
        return None
    outbox_id, current = row
    word = status.strip().lower()
    add_event(conn, outbox_id, "callback", {"status": status, "proof": proof, **(detail or {})}, at)
    if word in DELIVERED_WORDS:
        conn.execute("""UPDATE notify_outbox SET status = 'delivered', delivery_status = %s,
                               delivered_at = COALESCE(delivered_at, %s),
                               delivery_proof = COALESCE(%s, delivery_proof), updated_at = now()
                        WHERE id = %s""", (status, at, proof, outbox_id))
    elif word in FAILED_WORDS and current != "delivered":
        conn.execute("""UPDATE notify_outbox SET status = 'failed', delivery_status = %s, failed_at = %s,
                               updated_at = now() WHERE id = %s""", (status, at, outbox_id))
    else:
        conn.execute("UPDATE notify_outbox SET delivery_status = %s, updated_at = now() WHERE id = %s",
                     (status, outbox_id))
    return outbox_id


def record_letter_proof(conn, outbox_id: int, *, proof: str, at: datetime) -> None:
    """Staff record the proof of a delivered paper letter (催缴通知书, R36/R39): receipt or mail number."""
    row = conn.execute("SELECT channel, provider, provider_id FROM notify_outbox WHERE id = %s", (outbox_id,)).fetchone()
    if row is None:
        raise ValueError(f"no outbox message {outbox_id}")
    if not proof:
        raise ValueError("a delivery proof reference is required")
    add_event(conn, outbox_id, "proof", {"proof": proof}, at)
    conn.execute("""UPDATE notify_outbox SET status = 'delivered', delivery_status = 'signed', delivery_proof = %s,
                           delivered_at = COALESCE(delivered_at, %s), updated_at = now() WHERE id = %s""",
                 (proof, at, outbox_id))


def store_address(conn, cipher, household_id: int, channel: str, address: str) -> None:
    """Upsert a household's e-mail address or WeChat openid, encrypted (R57–R59)."""
    if channel not in ("email", "wechat"):
        raise ValueError("only email and wechat addresses are stored here; phones live in pii.household_contact")
    from core.pii import KEY_VERSION
    conn.execute("""INSERT INTO pii.notify_address (household_id, channel, address_enc, key_version)
                    VALUES (%s, %s, %s, %s)
                    ON CONFLICT (household_id, channel) DO UPDATE SET address_enc = EXCLUDED.address_enc,
                        key_version = EXCLUDED.key_version, updated_at = now()""",
                 (household_id, channel, cipher.encrypt(address), KEY_VERSION))
