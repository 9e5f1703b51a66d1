"""`python -m heatdesk.jobs`: the scheduled work of a running heatdesk (APScheduler).

- compliance: late-data days every 5 min, yesterday for all households nightly (analytics.job);
- tickets: proactive tickets from telemetry every 5 min, SLA checks every minute (ticketing.auto);
- dunning: the daily reminder run per company at the configured local time (dunning.job);
- outbox: deliver due messages every 30 s through the configured senders (notify).

Rollups of readings are refreshed by the ingest process itself (ingest/rollup.py), next to the
writer that marks the dirty hours. Senders: without gateway configuration every channel goes to
a file under .heatdesk/outbox/ (the demo), so nothing pretends to have been sent by SMS.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import threading
from pathlib import Path
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from core.config import get_settings
from core.db import connect

log = logging.getLogger("heatdesk.jobs")

CHANNELS = ("sms", "wechat", "email", "letter", "console")


def demo_senders(out_dir: Path) -> dict:
    """File senders per channel: the demo's 'delivery' is a line in .heatdesk/outbox/<channel>.log."""
    from notify.senders import FileSender

    out_dir.mkdir(parents=True, exist_ok=True)
    return {ch: FileSender(out_dir / f"{ch}.log", name=f"file_{ch}") for ch in CHANNELS}


def configured_senders(out_dir: Path) -> dict:
    """Real gateways where configured (HEATDESK_SMS_URL / HEATDESK_SMS_KEY / HEATDESK_SMS_SIGN,
    HEATDESK_SMTP_HOST / HEATDESK_SMTP_FROM), file senders for the rest."""
    from notify.senders import SmsHttpSender, SmtpSender

    senders = demo_senders(out_dir)
    if os.environ.get("HEATDESK_SMS_URL"):
        senders["sms"] = SmsHttpSender(os.environ["HEATDESK_SMS_URL"], api_key=os.environ.get("HEATDESK_SMS_KEY", ""),
                                       sign=os.environ.get("HEATDESK_SMS_SIGN", "heatdesk"))
    if os.environ.get("HEATDESK_SMTP_HOST"):
        senders["email"] = SmtpSender(os.environ["HEATDESK_SMTP_HOST"], int(os.environ.get("HEATDESK_SMTP_PORT", "25")),
                                      from_addr=os.environ.get("HEATDESK_SMTP_FROM", "noreply@heatdesk.local"))
    return senders


def deliver_outbox(db_url: str, senders: dict) -> dict:
    from notify.dispatcher import deliver_pending

    with connect(db_url) as conn:
        counts = deliver_pending(conn, senders, dt.datetime.now(dt.timezone.utc))
        conn.commit()
    if counts:
        log.info("outbox: %s", counts)
    return counts


def dunning_daily(db_url: str) -> list[dict]:
    """One dunning run per company for today's local date (safe to run twice: outbox keys)."""
    from dunning.job import run

    tz = ZoneInfo(get_settings().timezone)
    now = dt.datetime.now(dt.timezone.utc)
    results = []
    with connect(db_url) as conn:
        companies = [r[0] for r in conn.execute("SELECT code FROM company ORDER BY code").fetchall()]
        for code in companies:
            summary = run(conn, code, now.astimezone(tz).date(), now=now)
            results.append(summary.as_dict())
            log.info("dunning %s: %s", code, summary.as_dict())
    return results


def build_scheduler(db_url: str, data_dir: Path, *, dunning_at: str = "09:00") -> BackgroundScheduler:
    from analytics.job import schedule_compliance
    from ticketing.auto import schedule_auto_tickets

    tz = ZoneInfo(get_settings().timezone)
    scheduler = BackgroundScheduler(timezone=tz)
    schedule_compliance(scheduler, db_url)
    schedule_auto_tickets(scheduler, db_url)
    hh, mm = (int(x) for x in dunning_at.split(":"))
    scheduler.add_job(dunning_daily, CronTrigger(hour=hh, minute=mm, timezone=tz), args=[db_url],
                      id="dunning.daily", name="dunning: daily run per company", replace_existing=True,
                      coalesce=True, max_instances=1, misfire_grace_time=3600)
    scheduler.add_job(deliver_outbox, IntervalTrigger(seconds=30, timezone=tz),
                      args=[db_url, configured_senders(data_dir / "outbox")], id="notify.deliver",
                      name="outbox: deliver due messages", replace_existing=True, coalesce=True, max_instances=1)
    return scheduler


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    db_url = settings.database_url or (settings.data_dir / "database_url").read_text().strip()
    scheduler = build_scheduler(db_url, Path(settings.data_dir))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    scheduler.start()
    for job in scheduler.get_jobs():
        log.info("scheduled %s (%s), next %s", job.id, job.name, job.next_run_time)
    stop.wait()
    scheduler.shutdown(wait=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
