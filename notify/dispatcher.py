"""Deliver queued messages: claim due rows, decrypt the recipient, send, record, back off.

At-least-once with a lease: a claimed row is marked ``sending`` with ``next_attempt_at = now + lease``
and committed before the network call, so a dispatcher that dies mid-send leaves a row another run
picks up after the lease (the gateway's ``ref``/Message-ID lets the provider de-duplicate).
The dispatcher commits on its connection: do not call it inside a caller's transaction.
"""
from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta
from typing import Mapping

from core.pii import FieldCipher, mask_address, mask_name, mask_phone
from notify import outbox
from notify.senders import Message, PermanentSendError, Sender, TransientSendError
from notify.templates import fill_personal

log = logging.getLogger(__name__)


def backoff(attempts: int, *, base_s: float, max_s: float) -> timedelta:
    """Exponential: base × 2^(attempts−1), capped (attempts counts the one that just failed)."""
    return timedelta(seconds=min(max_s, base_s * (2 ** max(0, attempts - 1))))


def _default_cipher() -> FieldCipher | None:
    from core.config import get_settings
    key = get_settings().field_key_hex
    return FieldCipher(key) if key else None


def _claim(conn, channels: list[str], now: datetime, limit: int, lease: timedelta) -> list[tuple]:
    rows = conn.execute(
        """UPDATE notify_outbox o SET status = 'sending', attempts = o.attempts + 1,
                  next_attempt_at = %(lease_until)s, updated_at = now()
           WHERE o.id IN (SELECT id FROM notify_outbox
                          WHERE status IN ('pending', 'sending') AND next_attempt_at <= %(now)s
                            AND channel = ANY(%(channels)s)
                          ORDER BY next_attempt_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
           RETURNING o.id, o.household_id, o.channel, o.template_id, o.template_version, o.subject, o.body,
                     o.context, o.attempts, o.max_attempts""",
        {"now": now, "lease_until": now + lease, "channels": channels, "limit": limit},
    ).fetchall()
    conn.commit()
    return sorted(rows)


def _personal(conn, cipher: FieldCipher, household_id: int | None, channel: str) -> tuple[dict, str | None]:
    """Decrypt name/address and the channel's recipient (phone, e-mail, openid, postal address)."""
    if household_id is None:
        return {}, None
    row = conn.execute("SELECT name_enc, phone_enc, address_enc FROM pii.household_contact WHERE household_id = %s",
                       (household_id,)).fetchone()
    name_enc, phone_enc, address_enc = row if row else (None, None, None)
    personal = {"name": cipher.decrypt(name_enc), "address": cipher.decrypt(address_enc)}
    if channel == "sms":
        recipient = cipher.decrypt(phone_enc)
    elif channel == "letter":
        recipient = personal["address"]
    elif channel in ("email", "wechat"):
        r = conn.execute("SELECT address_enc FROM pii.notify_address WHERE household_id = %s AND channel = %s",
                         (household_id, channel)).fetchone()
        recipient = cipher.decrypt(r[0]) if r else None
    else:
        recipient = None
    return personal, recipient


def _masked_recipient(channel: str, recipient: str | None) -> str | None:
    if recipient is None:
        return None
    if channel == "sms":
        return mask_phone(recipient)
    if channel == "letter":
        return mask_address(recipient)
    if channel == "email" and "@" in recipient:
        user, dom = recipient.split("@", 1)
        return user[:1] + "***@" + dom
    return recipient[:4] + "***"


def deliver_pending(conn, senders: Mapping[str, Sender], now: datetime, *, cipher: FieldCipher | None = None,
                    limit: int = 500, backoff_base_s: float = 60.0, backoff_max_s: float = 6 * 3600.0,
                    lease_s: float = 300.0) -> dict[str, int]:
    """Send every due message whose channel has a sender; returns counts by outcome.

    `senders` maps channel → sender (e.g. ``{"sms": SmsHttpSender(...), "letter": FileSender(...)}``).
    Messages for channels without a sender stay pending. Outcomes: sent, delivered, retry, failed.
    """
    cipher = cipher if cipher is not None else _default_cipher()
    if cipher is None:
        # refuse up front: failing every message permanently for a configuration gap would lose them
        raise RuntimeError("no field key configured (HEATDESK_FIELD_KEY_HEX): recipients cannot be decrypted")
    counts: Counter[str] = Counter()
    channels = sorted(senders)
    if not channels:
        return dict(counts)
    lease = timedelta(seconds=lease_s)
    while True:
        batch = _claim(conn, channels, now, min(limit - sum(counts.values()), 100), lease)
        if not batch:
            break
        for (oid, hh, channel, template_id, version, subject, body, context, attempts, max_attempts) in batch:
            sender = senders[channel]
            try:
                personal, recipient = _personal(conn, cipher, hh, channel)
                masked = {"name": mask_name(personal.get("name")), "address": mask_address(personal.get("address"))}
                evidence_body = fill_personal(body, masked)
                evidence_subject = fill_personal(subject, masked) if subject else None
                if sender.needs_personal_data:
                    msg = Message(oid, hh, channel, template_id, version, recipient,
                                  fill_personal(subject, personal) if subject else None,
                                  fill_personal(body, personal), context)
                else:
                    msg = Message(oid, hh, channel, template_id, version, _masked_recipient(channel, recipient),
                                  evidence_subject, evidence_body, context)
                result = sender.send(msg)
            except TransientSendError as e:
                if attempts >= max_attempts:
                    _fail(conn, oid, now, str(e), attempts)
                    counts["failed"] += 1
                else:
                    nxt = now + backoff(attempts, base_s=backoff_base_s, max_s=backoff_max_s)
                    conn.execute("""UPDATE notify_outbox SET status = 'pending', next_attempt_at = %s, last_error = %s,
                                           updated_at = now() WHERE id = %s""", (nxt, str(e)[:500], oid))
                    outbox.add_event(conn, oid, "retry", {"attempt": attempts, "error": str(e)[:500],
                                                          "next_attempt_at": nxt}, now)
                    counts["retry"] += 1
                log.info("outbox %s attempt %s failed (transient): %s", oid, attempts, e)
            except PermanentSendError as e:
                _fail(conn, oid, now, str(e), attempts)
                counts["failed"] += 1
                log.warning("outbox %s failed permanently: %s", oid, e)
            else:
                status = "delivered" if result.delivered else "sent"
                conn.execute(
                    """UPDATE notify_outbox SET status = %s, provider = %s, provider_id = %s, sent_at = %s,
                              delivered_at = CASE WHEN %s THEN %s END, body = %s, subject = %s,
                              last_error = NULL, updated_at = now() WHERE id = %s""",
                    (status, result.provider, result.provider_id, now, result.delivered, now, evidence_body,
                     evidence_subject, oid))
                outbox.add_event(conn, oid, "sent", {"attempt": attempts, "provider": result.provider,
                                                     "provider_id": result.provider_id,
                                                     "to": _masked_recipient(channel, recipient)}, now)
                counts[status] += 1
            conn.commit()
        if sum(counts.values()) >= limit:
            break
    return dict(counts)


def _fail(conn, oid: int, now: datetime, error: str, attempts: int) -> None:
    conn.execute("""UPDATE notify_outbox SET status = 'failed', failed_at = %s, last_error = %s, updated_at = now()
                    WHERE id = %s""", (now, error[:500], oid))
    outbox.add_event(conn, oid, "failed", {"attempt": attempts, "error": error[:500]}, now)
