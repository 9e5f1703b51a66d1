"""Sender plugins, one per channel kind: SMS gateway and WeChat template messages over HTTP (httpx),
e-mail over SMTP (smtplib), and file/console senders for letters and the demo.

The contract is small: ``send(message) -> SendResult``; raise :class:`TransientSendError` for
anything worth retrying (timeouts, 5xx, rate limits) and :class:`PermanentSendError` for anything
that will never work (no recipient, 4xx, rejected address). The dispatcher owns retries.
"""
from __future__ import annotations

import json
import logging
import smtplib
import socket
import sys
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol, TextIO

import httpx

log = logging.getLogger(__name__)


class TransientSendError(Exception):
    """Retry later (network error, timeout, HTTP 5xx/429, SMTP 4xx)."""


class PermanentSendError(Exception):
    """Retrying will not help (no recipient, HTTP 4xx, SMTP 5xx, WeChat user not subscribed)."""


@dataclass(frozen=True)
class Message:
    outbox_id: int
    household_id: int | None
    channel: str
    template_id: str
    template_version: int
    recipient: str | None          # phone / e-mail / openid / postal address (decrypted), None if unknown
    subject: str | None
    body: str                      # with personal fields filled in (or masked for senders that must not see them)
    context: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SendResult:
    provider: str
    provider_id: str | None
    delivered: bool = False        # true when sending itself proves delivery (console); else wait for a callback


class Sender(Protocol):
    name: str
    #: False → the dispatcher gives this sender the masked evidence copy, never decrypted data.
    needs_personal_data: bool

    def send(self, message: Message) -> SendResult: ...


def _require_recipient(message: Message, what: str) -> str:
    if not message.recipient:
        raise PermanentSendError(f"household {message.household_id} has no {what}")
    return message.recipient


def _http_errors(resp: httpx.Response, provider: str) -> None:
    if resp.status_code == 429 or resp.status_code >= 500:
        raise TransientSendError(f"{provider}: HTTP {resp.status_code}")
    if resp.status_code >= 400:
        raise PermanentSendError(f"{provider}: HTTP {resp.status_code} {resp.text[:200]}")


class SmsHttpSender:
    """A generic SMS gateway: POST JSON ``{phone, sign, content, ref}`` → ``{"message_id": ...}``.

    Delivery reports arrive later on the callback endpoint as (message_id, status).
    """
    needs_personal_data = True

    def __init__(self, url: str, *, api_key: str, sign: str, timeout_s: float = 5.0, name: str = "sms_http",
                 client: httpx.Client | None = None):
        self.url, self.api_key, self.sign, self.name = url, api_key, sign, name
        self._client = client or httpx.Client(timeout=timeout_s)

    def send(self, message: Message) -> SendResult:
        phone = _require_recipient(message, "mobile phone")
        try:
            resp = self._client.post(self.url, headers={"Authorization": f"Bearer {self.api_key}"},
                                     json={"phone": phone, "sign": self.sign, "content": message.body,
                                           "ref": str(message.outbox_id)})
        except httpx.HTTPError as e:
            raise TransientSendError(f"{self.name}: {type(e).__name__}: {e}") from e
        _http_errors(resp, self.name)
        try:
            mid = resp.json()["message_id"]
        except (ValueError, KeyError) as e:
            raise TransientSendError(f"{self.name}: unexpected response {resp.text[:200]!r}") from e
        return SendResult(self.name, str(mid))


class WeChatTemplateSender:
    """WeChat official-account template message (POST /cgi-bin/message/template/send).

    `template_map` maps our template ids to the WeChat template id approved for the account;
    the message text goes into the ``first``/``remark`` keywords.
    """
    needs_personal_data = True
    #: errcodes worth retrying: -1 system busy, 45009 API rate limit, 42001 token expired (refreshed upstream)
    TRANSIENT_ERRCODES = {-1, 45009, 42001}

    def __init__(self, api_base: str, *, access_token: str, template_map: dict[str, str], default_template: str,
                 timeout_s: float = 5.0, name: str = "wechat", client: httpx.Client | None = None):
        self.api_base, self.access_token, self.name = api_base.rstrip("/"), access_token, name
        self.template_map, self.default_template = template_map, default_template
        self._client = client or httpx.Client(timeout=timeout_s)

    def send(self, message: Message) -> SendResult:
        openid = _require_recipient(message, "WeChat openid")
        payload = {
            "touser": openid,
            "template_id": self.template_map.get(message.template_id, self.default_template),
            "data": {"first": {"value": message.subject or ""}, "remark": {"value": message.body}},
        }
        try:
            resp = self._client.post(f"{self.api_base}/cgi-bin/message/template/send",
                                     params={"access_token": self.access_token}, json=payload)
        except httpx.HTTPError as e:
            raise TransientSendError(f"{self.name}: {type(e).__name__}: {e}") from e
        _http_errors(resp, self.name)
        data = resp.json()
        code = data.get("errcode", 0)
        if code in self.TRANSIENT_ERRCODES:
            raise TransientSendError(f"{self.name}: errcode {code} {data.get('errmsg')}")
        if code != 0:
            raise PermanentSendError(f"{self.name}: errcode {code} {data.get('errmsg')}")
        return SendResult(self.name, str(data["msgid"]))


class SmtpSender:
    """E-mail over SMTP (smtplib); the Message-ID is the provider id bounces are matched on."""
    needs_personal_data = True

    def __init__(self, host: str, port: int, *, from_addr: str, username: str | None = None,
                 password: str | None = None, starttls: bool = False, timeout_s: float = 10.0, name: str = "smtp"):
        self.host, self.port, self.from_addr = host, port, from_addr
        self.username, self.password, self.starttls = username, password, starttls
        self.timeout_s, self.name = timeout_s, name

    def send(self, message: Message) -> SendResult:
        to = _require_recipient(message, "e-mail address")
        msg = EmailMessage()
        msg["From"], msg["To"] = self.from_addr, to
        msg["Subject"] = message.subject or "通知"
        domain = self.from_addr.rsplit("@", 1)[-1]
        msg_id = f"<heatdesk-{message.outbox_id}@{domain}>"
        msg["Message-ID"] = msg_id
        msg.set_content(message.body, charset="utf-8")
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                if self.starttls:
                    smtp.starttls()
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as e:
            codes = [c for c, _ in e.recipients.values()]
            if all(400 <= c < 500 for c in codes):
                raise TransientSendError(f"{self.name}: recipient deferred {codes}") from e
            raise PermanentSendError(f"{self.name}: recipient refused {codes}") from e
        except smtplib.SMTPResponseException as e:
            if 400 <= e.smtp_code < 500:
                raise TransientSendError(f"{self.name}: {e.smtp_code} {e.smtp_error!r}") from e
            raise PermanentSendError(f"{self.name}: {e.smtp_code} {e.smtp_error!r}") from e
        except (smtplib.SMTPException, OSError, socket.timeout) as e:
            raise TransientSendError(f"{self.name}: {type(e).__name__}: {e}") from e
        return SendResult(self.name, msg_id)


class FileSender:
    """Appends one JSON line per message: the print queue for letters (催缴通知书) or a demo sink.

    Letters are not 'delivered' until staff record the proof (notify.outbox.record_letter_proof).
    """
    def __init__(self, path: Path, *, name: str = "file", needs_personal_data: bool = True):
        self.path, self.name, self.needs_personal_data = Path(path), name, needs_personal_data
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def send(self, message: Message) -> SendResult:
        line = {"outbox_id": message.outbox_id, "household_id": message.household_id, "channel": message.channel,
                "template": f"{message.template_id}@v{message.template_version}", "to": message.recipient,
                "subject": message.subject, "body": message.body}
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
        except OSError as e:
            raise TransientSendError(f"{self.name}: {e}") from e
        return SendResult(self.name, f"{self.name}-{message.outbox_id}")


class ConsoleSender:
    """Prints the masked evidence copy (demo); printing is its own delivery."""
    needs_personal_data = False

    def __init__(self, stream: TextIO | None = None, *, name: str = "console"):
        self.stream, self.name = stream, name

    def send(self, message: Message) -> SendResult:
        out = self.stream or sys.stdout
        out.write(f"[{message.channel} #{message.outbox_id} → household {message.household_id}] "
                  f"{message.subject or ''}\n{message.body}\n")
        return SendResult(self.name, f"console-{message.outbox_id}", delivered=True)
