"""The ingest process: adapters → IngestService → PostgreSQL, rollups every minute, a status file.

`python -m ingest` and `heatdesk ingest` both end here. Shutdown order (SIGTERM/SIGINT): drain
what is queued (commit, ack), stop the adapters, flush what they handed over last, stop.
"""
from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from apscheduler.schedulers.background import BackgroundScheduler

from adapters.base import Adapter
from adapters.config import DevicesConfigError, load_devices
from adapters.registry import ADAPTERS, adapter_class
from core.config import Settings
from core.db import make_pool
from ingest.rollup import refresh_rollups
from ingest.service import IngestService
from ingest.status import write_status_file

log = logging.getLogger(__name__)
logging.getLogger("apscheduler").setLevel(logging.WARNING)   # one line per job run is noise
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)   # one line per reconnect attempt; we log the outage once

STATUS_EVERY_S = 2.0


def resolve_url(settings: Settings, explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    if settings.database_url:
        return settings.database_url
    f = Path(settings.data_dir) / "database_url"
    return f.read_text().strip() if f.exists() else None


class _RollupJob:
    """Scheduled refresh; a database outage is logged once, not every minute."""

    def __init__(self, url: str, tz: str):
        self.url, self.tz = url, tz
        self.failing = False

    def __call__(self) -> None:
        try:
            n = refresh_rollups(self.url, timezone=self.tz)
        except psycopg.OperationalError as e:
            if not self.failing:
                log.warning("rollup refresh skipped, database unreachable: %s", str(e).strip().splitlines()[0])
            self.failing = True
            return
        if self.failing:
            log.info("rollup refresh running again")
        self.failing = False
        if n:
            log.info("rollup: refreshed %d dirty sensor-hours", n)


def start_adapters(config, service, settings: Settings) -> list[Adapter]:
    """Every protocol of the registry that has devices; a missing adapter module is logged clearly."""
    started: list[Adapter] = []
    for protocol in ADAPTERS:
        devices = config.by_protocol(protocol)
        if not devices:
            continue
        try:
            cls = adapter_class(protocol)
        except ModuleNotFoundError as e:
            log.error("protocol %s: adapter module not available (%s) — %d device(s) NOT read: %s", protocol, e,
                      len(devices), ", ".join(d.id for d in devices))
            continue
        adapter = cls(devices, service, config=config, settings=settings)
        adapter.start()
        log.info("protocol %s: %d device(s) started", protocol, len(devices))
        started.append(adapter)
    return started


def run_ingest(settings: Settings, *, database_url: str | None = None, stop: threading.Event | None = None,
               rollup_every_s: float = 60.0) -> int:
    stop = stop or threading.Event()
    url = resolve_url(settings, database_url)
    if not url:
        log.error("no database: set HEATDESK_DATABASE_URL or run `heatdesk up`")
        return 2
    try:
        config = load_devices(settings.devices_file)
    except (DevicesConfigError, OSError) as e:
        log.error("%s", e)
        return 2
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    pool = make_pool(url, min_size=1, max_size=4, name="ingest", timeout=3.0)
    service = IngestService(pool, settings=settings, ranges=dict(config.ranges))
    service.start()
    try:
        adapters = start_adapters(config, service, settings)
    except DevicesConfigError as e:
        log.error("%s", e)
        service.stop()
        pool.close()
        return 2
    scheduler = BackgroundScheduler(timezone=settings.timezone)
    scheduler.add_job(_RollupJob(url, settings.timezone), "interval", seconds=rollup_every_s, max_instances=1,
                      coalesce=True, id="rollup",
                      next_run_time=datetime.now(timezone.utc) + timedelta(seconds=min(5.0, rollup_every_s)))
    scheduler.start()

    def status() -> dict:
        st = service.status()
        st["adapters"] = {a.protocol: len(a.devices) for a in adapters}
        st["pid"] = os.getpid()
        return st

    rc = 0
    try:
        while not stop.wait(STATUS_EVERY_S):
            write_status_file(data_dir, status())
            if service.fatal is not None:
                rc = 1
                break
        write_status_file(data_dir, status())
    finally:
        log.info("stopping: draining the pipeline")
        if not service.drain(5.0):
            # outage or backlog: don't let a submitter blocked on a full lane keep an adapter from stopping
            # (MQTT messages not taken stay un-acked at the broker; the last polls may be refused and logged)
            log.warning("pipeline not drained (database down or backlog); closing intake")
            service.close_intake()
        for a in reversed(adapters):
            try:
                a.stop()
            except Exception:
                log.exception("adapter %s did not stop cleanly", a.protocol)
        service.stop()
        scheduler.shutdown(wait=False)
        write_status_file(data_dir, {**status(), "stopped": True})
        pool.close()
        log.info("stopped")
    return rc
