"""notify: outbox idempotency, templates, senders against local HTTP/SMTP servers, retries with backoff,
delivery callbacks, and personal data decrypted only at send time."""
from __future__ import annotations

import email
import email.policy
import io
import json
import socketserver
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from core.pii import FieldCipher, new_key_hex, store_contact
from notify import outbox, templates
from notify.dispatcher import backoff, deliver_pending
from notify.senders import ConsoleSender, FileSender, SmsHttpSender, SmtpSender, WeChatTemplateSender
from tests.helpers import free_port

NOW = datetime(2026, 12, 1, 1, 0, tzinfo=timezone.utc)
CTX = {"season": "2026-2027", "account_no": "T-0001", "amount_due": Decimal("2500.00"),
       "bill_amount": Decimal("2500.00"), "due_date": datetime(2026, 12, 31).date(), "refund_amount": Decimal("0"),
       "late_fee": Decimal("0"), "payment_methods": "微信/支付宝/营业厅", "service_phone": "022-96116",
       "company_name": "滨海热力"}


# --- local servers ------------------------------------------------------------------------------

class Gateway:
    """An SMS gateway + WeChat API on one local HTTP server; `fail_next` makes it answer 503."""
    def __init__(self):
        self.requests: list[dict] = []
        self.fail_next = 0
        gw = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                gw.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                if gw.fail_next > 0:
                    gw.fail_next -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                if self.path.startswith("/cgi-bin/message/template/send"):
                    out = {"errcode": 0, "errmsg": "ok", "msgid": 900000 + len(gw.requests)}
                elif body.get("phone") == "10000000000":
                    self.send_response(400)
                    self.end_headers()
                    return
                else:
                    out = {"message_id": f"sms-{len(gw.requests)}"}
                data = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), H)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class TinySmtp:
    """Enough SMTP (RFC 5321 subset) for smtplib: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""
    def __init__(self, reject: set[str] = frozenset()):
        self.messages: list[dict] = []
        smtp = self

        class H(socketserver.StreamRequestHandler):
            def w(self, line: str):
                self.wfile.write((line + "\r\n").encode())

            def handle(self):
                self.w("220 tiny ESMTP")
                rcpt, mail_from = [], None
                while line := self.rfile.readline():
                    cmd = line.decode().strip()
                    verb = cmd.split(" ", 1)[0].upper()
                    if verb == "EHLO":
                        self.w("250-tiny")
                        self.w("250 8BITMIME")
                    elif verb == "HELO":
                        self.w("250 tiny")
                    elif verb == "MAIL":
                        mail_from, rcpt = cmd[10:].strip("<> "), []
                        self.w("250 OK")
                    elif verb == "RCPT":
                        addr = cmd[8:].strip("<> ").split(">")[0]
                        if addr in reject:
                            self.w("550 no such user")
                        else:
                            rcpt.append(addr)
                            self.w("250 OK")
                    elif verb == "DATA":
                        self.w("354 end with .")
                        data = b""
                        while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                            data += chunk[1:] if chunk.startswith(b"..") else chunk
                        smtp.messages.append({"from": mail_from, "to": rcpt, "data": data})
                        self.w("250 queued")
                    elif verb in ("RSET", "NOOP"):
                        self.w("250 OK")
                    elif verb == "QUIT":
                        self.w("221 bye")
                        return
                    else:
                        self.w("502 not implemented")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", free_port()), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def gateway():
    g = Gateway()
    yield g
    g.server.shutdown()


@pytest.fixture
def smtp_server():
    s = TinySmtp(reject={"nobody@example.cn"})
    yield s
    s.server.shutdown()


@pytest.fixture
def seeded(fresh_db_url):
    """A household with an encrypted contact; returns (conn, cipher, household_id)."""
    cipher = FieldCipher(new_key_hex())
    conn = psycopg.connect(fresh_db_url)
    conn.execute("INSERT INTO company (code, name, region_code) VALUES ('HD', '滨海热力', 'tianjin')")
    conn.execute("INSERT INTO branch (company_id, code, name) VALUES (1, 'B1', 'b')")
    conn.execute("INSERT INTO substation (branch_id, code, name) VALUES (1, 'S01', 's')")
    conn.execute("INSERT INTO community (substation_id, code, name) VALUES (1, 'C1', 'c')")
    conn.execute("INSERT INTO building (community_id, code, name) VALUES (1, 'B01', 'b')")
    conn.execute("INSERT INTO unit (building_id, code, name) VALUES (1, 'U1', 'u')")
    hh = conn.execute("INSERT INTO household (unit_id, code, area_m2) VALUES (1, 'T-0001', 100) RETURNING id").fetchone()[0]
    store_contact(conn, cipher, hh, "张三丰", "13812345678", "和平区幸福里3号楼2单元301室")
    outbox.store_address(conn, cipher, hh, "email", "zhang@example.cn")
    outbox.store_address(conn, cipher, hh, "wechat", "oWX-openid-123")
    conn.commit()
    yield conn, cipher, hh
    conn.close()


# --- templates ----------------------------------------------------------------------------------

@pytest.mark.parametrize("staff, jinja", [
    ("欠{欠费金额}元", "欠{{ amount_due }}元"),
    ("{户主姓名}您好", "{{ name }}您好"),
    ("{% if late_fee|float > 0 %}{违约金}{% endif %}", "{% if late_fee|float > 0 %}{{ late_fee }}{% endif %}"),
    ("{{ already_jinja }}", "{{ already_jinja }}"),
])
def test_staff_placeholders_map_to_jinja(staff, jinja):
    assert templates.staff_to_jinja(staff) == jinja


def test_unknown_placeholder_is_a_load_error():
    with pytest.raises(templates.TemplateError, match="未知字段|unknown placeholder"):
        templates.parse_template("x", "{# version: 1 #}\n{银行卡号}")


def test_every_shipped_template_loads_and_renders_without_personal_data():
    for tid in templates.all_template_ids():
        tpl = templates.load_template(tid)
        ctx = {v: "1.00" for v in templates.PLACEHOLDERS.values() if v not in templates.PERSONAL}
        ctx.update(instalment_seq=1, refund_days=3, offset_amount="0", payout_amount="1.00")
        out = templates.render(tpl, ctx)
        assert "{{" not in out.body and tpl.version >= 1


def test_segment_variant_is_chosen_and_falls_back():
    assert templates.load_template("dunning.formal", "non_residential").template_id == "dunning.formal.non_residential"
    assert templates.load_template("dunning.formal", "large").template_id == "dunning.formal"


def test_missing_context_variable_fails_at_enqueue(seeded):
    conn, _, hh = seeded
    with pytest.raises(templates.TemplateError, match="amount_due"):
        outbox.enqueue(conn, idempotency_key="k-missing", household_id=hh, channel="sms", template="dunning.notice",
                       context={k: v for k, v in CTX.items() if k != "amount_due"}, source="dunning")


def test_personal_fields_are_refused_in_context(seeded):
    conn, _, hh = seeded
    with pytest.raises(ValueError, match="personal"):
        outbox.enqueue(conn, idempotency_key="k-pii", household_id=hh, channel="sms", template="dunning.notice",
                       context={**CTX, "name": "张三丰"}, source="dunning")


# --- outbox + dispatcher ------------------------------------------------------------------------

def test_enqueue_is_idempotent_on_key(seeded):
    conn, _, hh = seeded
    first = outbox.enqueue(conn, idempotency_key="dun:1:notice:2026", household_id=hh, channel="sms",
                           template="dunning.notice", context=CTX, source="dunning")
    again = outbox.enqueue(conn, idempotency_key="dun:1:notice:2026", household_id=hh, channel="sms",
                           template="dunning.notice", context=CTX, source="dunning")
    assert isinstance(first, int) and again is None
    body = conn.execute("SELECT body FROM notify_outbox WHERE id = %s", (first,)).fetchone()[0]
    assert "{户主姓名}" in body and "张三丰" not in body and "2500.00" in body and "2026年12月31日" in body


def test_sms_and_wechat_over_http_and_phone_decrypted_only_at_send(seeded, gateway):
    conn, cipher, hh = seeded
    sms_id = outbox.enqueue(conn, idempotency_key="a1", household_id=hh, channel="sms", template="dunning.notice",
                            context=CTX, source="dunning")
    wx_id = outbox.enqueue(conn, idempotency_key="a2", household_id=hh, channel="wechat", template="dunning.friendly",
                           context=CTX, source="dunning")
    conn.commit()
    senders = {"sms": SmsHttpSender(gateway.url + "/sms/send", api_key="k", sign="滨海热力"),
               "wechat": WeChatTemplateSender(gateway.url, access_token="tok", template_map={}, default_template="TPL1")}
    counts = deliver_pending(conn, senders, NOW, cipher=cipher)
    assert counts == {"sent": 2}
    sms_req = next(r for r in gateway.requests if r["path"] == "/sms/send")
    assert sms_req["body"]["phone"] == "13812345678" and sms_req["body"]["content"].startswith("张三丰您好")
    assert sms_req["auth"] == "Bearer k"
    wx_req = next(r for r in gateway.requests if r["path"].startswith("/cgi-bin"))
    assert wx_req["body"]["touser"] == "oWX-openid-123" and "access_token=tok" in wx_req["path"]
    row = conn.execute("SELECT status, provider_id, body FROM notify_outbox WHERE id = %s", (sms_id,)).fetchone()
    assert row[0] == "sent" and row[1].startswith("sms-")
    assert row[2].startswith("张**您好") and "13812345678" not in row[2]     # evidence copy is masked
    # the delivery report arrives later
    assert outbox.record_delivery(conn, provider="sms_http", provider_id=row[1], status="DELIVRD",
                                  at=NOW + timedelta(minutes=1)) == sms_id
    assert conn.execute("SELECT status FROM notify_outbox WHERE id = %s", (sms_id,)).fetchone()[0] == "delivered"
    # a late failure report never overrides delivered
    outbox.record_delivery(conn, provider="sms_http", provider_id=row[1], status="UNDELIV", at=NOW + timedelta(minutes=2))
    assert conn.execute("SELECT status FROM notify_outbox WHERE id = %s", (sms_id,)).fetchone()[0] == "delivered"
    assert conn.execute("SELECT status FROM notify_outbox WHERE id = %s", (wx_id,)).fetchone()[0] == "sent"


def test_transient_failures_retry_with_exponential_backoff_then_fail(seeded, gateway):
    conn, cipher, hh = seeded
    oid = outbox.enqueue(conn, idempotency_key="r1", household_id=hh, channel="sms", template="dunning.notice",
                         context=CTX, source="dunning", max_attempts=3)
    conn.commit()
    senders = {"sms": SmsHttpSender(gateway.url + "/sms/send", api_key="k", sign="s")}
    gateway.fail_next = 10
    assert deliver_pending(conn, senders, NOW, cipher=cipher, backoff_base_s=60) == {"retry": 1}
    nxt = conn.execute("SELECT next_attempt_at, status FROM notify_outbox WHERE id = %s", (oid,)).fetchone()
    assert nxt == (NOW + timedelta(seconds=60), "pending")
    # not due yet → nothing happens
    assert deliver_pending(conn, senders, NOW + timedelta(seconds=59), cipher=cipher) == {}
    assert deliver_pending(conn, senders, NOW + timedelta(seconds=60), cipher=cipher, backoff_base_s=60) == {"retry": 1}
    nxt = conn.execute("SELECT next_attempt_at FROM notify_outbox WHERE id = %s", (oid,)).fetchone()[0]
    assert nxt == NOW + timedelta(seconds=60 + 120)
    assert deliver_pending(conn, senders, NOW + timedelta(seconds=180), cipher=cipher) == {"failed": 1}
    assert conn.execute("SELECT status, attempts FROM notify_outbox WHERE id = %s", (oid,)).fetchone() == ("failed", 3)
    kinds = [r[0] for r in conn.execute("SELECT kind FROM notify_event WHERE outbox_id = %s ORDER BY id", (oid,))]
    assert kinds == ["retry", "retry", "failed"]


def test_transient_then_success(seeded, gateway):
    conn, cipher, hh = seeded
    outbox.enqueue(conn, idempotency_key="r2", household_id=hh, channel="sms", template="dunning.notice",
                   context=CTX, source="dunning")
    conn.commit()
    senders = {"sms": SmsHttpSender(gateway.url + "/sms/send", api_key="k", sign="s")}
    gateway.fail_next = 1
    assert deliver_pending(conn, senders, NOW, cipher=cipher) == {"retry": 1}
    assert deliver_pending(conn, senders, NOW + timedelta(hours=1), cipher=cipher) == {"sent": 1}


def test_permanent_failures_do_not_retry(seeded, gateway):
    conn, cipher, hh = seeded
    store_contact(conn, cipher, hh, "张三丰", "10000000000", None)   # the gateway rejects this number with 400
    oid = outbox.enqueue(conn, idempotency_key="p1", household_id=hh, channel="sms", template="dunning.notice",
                         context=CTX, source="dunning")
    conn.commit()
    senders = {"sms": SmsHttpSender(gateway.url + "/sms/send", api_key="k", sign="s")}
    assert deliver_pending(conn, senders, NOW, cipher=cipher) == {"failed": 1}
    assert conn.execute("SELECT attempts, last_error FROM notify_outbox WHERE id = %s", (oid,)).fetchone()[1].startswith("sms_http: HTTP 400")


def test_email_over_smtp_and_refused_recipient(seeded, smtp_server):
    conn, cipher, hh = seeded
    oid = outbox.enqueue(conn, idempotency_key="e1", household_id=hh, channel="email", template="dunning.formal",
                         context=CTX, source="dunning")
    conn.commit()
    senders = {"email": SmtpSender("127.0.0.1", smtp_server.port, from_addr="billing@binhai-heat.cn")}
    assert deliver_pending(conn, senders, NOW, cipher=cipher) == {"sent": 1}
    [m] = smtp_server.messages
    assert m["to"] == ["zhang@example.cn"]
    parsed = email.message_from_bytes(m["data"], policy=email.policy.default)
    assert "催缴通知书" in str(parsed["Subject"])
    text = parsed.get_content()
    assert "张三丰" in text and "和平区幸福里3号楼2单元301室" in text
    assert conn.execute("SELECT provider_id FROM notify_outbox WHERE id = %s", (oid,)).fetchone()[0] == \
        f"<heatdesk-{oid}@binhai-heat.cn>"
    outbox.store_address(conn, cipher, hh, "email", "nobody@example.cn")
    oid2 = outbox.enqueue(conn, idempotency_key="e2", household_id=hh, channel="email", template="dunning.notice",
                          context=CTX, source="dunning")
    conn.commit()
    assert deliver_pending(conn, senders, NOW, cipher=cipher) == {"failed": 1}
    assert "550" in conn.execute("SELECT last_error FROM notify_outbox WHERE id = %s", (oid2,)).fetchone()[0]


def test_letter_to_file_needs_proof_and_console_sees_only_masked_data(seeded, tmp_path):
    conn, cipher, hh = seeded
    letter = outbox.enqueue(conn, idempotency_key="l1", household_id=hh, channel="letter", template="dunning.formal",
                            context=CTX, source="dunning")
    outbox.enqueue(conn, idempotency_key="c1", household_id=hh, channel="console", template="dunning.notice",
                   context=CTX, source="ticketing")
    conn.commit()
    out = io.StringIO()
    counts = deliver_pending(conn, {"letter": FileSender(tmp_path / "letters.jsonl"), "console": ConsoleSender(out)},
                             NOW, cipher=cipher)
    assert counts == {"sent": 1, "delivered": 1}
    line = json.loads((tmp_path / "letters.jsonl").read_text(encoding="utf-8"))
    assert line["to"] == "和平区幸福里3号楼2单元301室" and "张三丰" in line["body"]
    assert "张**" in out.getvalue() and "张三丰" not in out.getvalue()
    assert conn.execute("SELECT status FROM notify_outbox WHERE id = %s", (letter,)).fetchone()[0] == "sent"
    outbox.record_letter_proof(conn, letter, proof="EMS-1180001", at=NOW + timedelta(days=2))
    assert conn.execute("SELECT status, delivery_proof FROM notify_outbox WHERE id = %s", (letter,)).fetchone() == \
        ("delivered", "EMS-1180001")


def test_channel_without_sender_stays_pending(seeded):
    conn, cipher, hh = seeded
    oid = outbox.enqueue(conn, idempotency_key="w1", household_id=hh, channel="wechat", template="dunning.notice",
                         context=CTX, source="dunning")
    conn.commit()
    assert deliver_pending(conn, {"console": ConsoleSender(io.StringIO())}, NOW, cipher=cipher) == {}
    assert conn.execute("SELECT status FROM notify_outbox WHERE id = %s", (oid,)).fetchone()[0] == "pending"


def test_not_before_delays_first_attempt(seeded):
    conn, cipher, hh = seeded
    outbox.enqueue(conn, idempotency_key="nb", household_id=hh, channel="console", template="dunning.notice",
                   context=CTX, source="dunning", not_before=NOW + timedelta(hours=2))
    conn.commit()
    s = {"console": ConsoleSender(io.StringIO())}
    assert deliver_pending(conn, s, NOW, cipher=cipher) == {}
    assert deliver_pending(conn, s, NOW + timedelta(hours=2), cipher=cipher) == {"delivered": 1}


@pytest.mark.parametrize("attempts, expected_s", [(1, 60), (2, 120), (3, 240), (10, 3600)])
def test_backoff_table(attempts, expected_s):
    assert backoff(attempts, base_s=60, max_s=3600) == timedelta(seconds=expected_s)


def test_enqueue_many_matches_enqueue_and_is_idempotent(seeded):
    conn, _, hh = seeded
    items = [{"idempotency_key": f"m{i}", "household_id": hh, "channel": "sms", "template": "dunning.notice",
              "context": CTX, "source": "dunning"} for i in range(3)]
    ids = outbox.enqueue_many(conn, items)
    assert len(set(ids)) == 3 and all(isinstance(i, int) for i in ids)
    again = outbox.enqueue_many(conn, items[:2] + [{**items[2], "idempotency_key": "m3"}])
    assert again[:2] == [None, None] and isinstance(again[2], int)
    one = outbox.enqueue(conn, idempotency_key="single", household_id=hh, channel="sms", template="dunning.notice",
                         context=CTX, source="dunning")
    bodies = {r[0] for r in conn.execute("SELECT body FROM notify_outbox WHERE id = ANY(%s)", ([ids[0], one],))}
    assert len(bodies) == 1
    with pytest.raises(ValueError, match="unknown channel"):
        outbox.enqueue_many(conn, [{**items[0], "idempotency_key": "bad", "channel": "fax"}])


def test_missing_field_key_refuses_instead_of_failing_messages(seeded, monkeypatch):
    conn, _, hh = seeded
    oid = outbox.enqueue(conn, idempotency_key="nokey", household_id=hh, channel="console", template="dunning.notice",
                         context=CTX, source="dunning")
    conn.commit()
    monkeypatch.setattr("notify.dispatcher._default_cipher", lambda: None)
    with pytest.raises(RuntimeError, match="field key"):
        deliver_pending(conn, {"console": ConsoleSender(io.StringIO())}, NOW)
    assert conn.execute("SELECT status, attempts FROM notify_outbox WHERE id = %s", (oid,)).fetchone() == ("pending", 0)
