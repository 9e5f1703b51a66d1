"""Fault tests (issue "Telemetry spine"): what a device sent and the broker or device delivered is
neither lost nor double-counted when ingest is killed or the database goes away."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import psycopg

from adapters.base import Delivery, Reading, SensorMeta
from adapters.config import parse_devices
from adapters.mqtt import MqttAdapter, parse_broker_url
from core.config import Settings
from core.db import apply_schema, ensure_database, make_pool
from core.quality import Quality
from ingest.service import IngestService
from ingest.status import collect_status, read_status_file, write_status_file
from tests.helpers import wait_for
from tests.test_adapters_mqtt import forget_session

ROOT = Path(__file__).resolve().parent.parent
DEVICES = """
version: 1
ranges:
  room_temp: {plausible: [5, 35], possible: [-40, 70], stuck_after_s: 21600}
profiles:
  a_json:
    format: json
    fields: [{path: temp, metric: room_temp}]
    timestamp: {path: ts, format: epoch_ms}
devices:
  - id: thermo
    protocol: mqtt
    subscriptions:
      - topic: "${HEATDESK_TOPIC_ROOT}/room/{household}/{room}/state"
        payload: a_json
"""
BASE_MS = int(datetime.now(timezone.utc).timestamp() * 1000) - 3_600_000


class Publisher(threading.Thread):
    """Publishes `n` distinct readings (QoS 1) at `rate`/s; `sent` counts broker-acknowledged ones."""

    def __init__(self, mqtt_url: str, prefix: str, n: int, rate: float, first: int = 0):
        super().__init__(daemon=True)
        self.host, self.port, _ = parse_broker_url(mqtt_url)
        self.prefix, self.n, self.rate, self.first = prefix, n, rate, first
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.connect(self.host, self.port)
        c.loop_start()
        t0 = time.monotonic()
        for i in range(self.first, self.first + self.n):
            if self.stop.is_set():
                break
            # 20 households; one reading per message, each (sensor, time) distinct
            info = c.publish(f"{self.prefix}/room/H{i % 20}/living/state",
                             orjson.dumps({"temp": 20.0 + (i % 7) / 10, "ts": BASE_MS + i * 1000}), qos=1)
            info.wait_for_publish(10)
            self.sent += 1
            lag = t0 + (i - self.first + 1) / self.rate - time.monotonic()
            if lag > 0:
                self.stop.wait(lag)
        c.disconnect()
        c.loop_stop()


def count(url: str, sql: str = "SELECT count(*) FROM readings") -> int:
    try:
        with psycopg.connect(url, connect_timeout=2) as c:
            return c.execute(sql).fetchone()[0]
    except psycopg.OperationalError:
        return -1


def test_kill_9_mid_stream_loses_and_duplicates_nothing(fresh_db_url, mqtt_url, topic_prefix, tmp_path):
    devices = tmp_path / "devices.yaml"
    devices.write_text(DEVICES)
    cid = f"t-kill-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, HEATDESK_DATABASE_URL=fresh_db_url, HEATDESK_MQTT_URL=mqtt_url,
               HEATDESK_DEVICES_FILE=str(devices), HEATDESK_DATA_DIR=str(tmp_path / "data"),
               HEATDESK_TOPIC_ROOT=topic_prefix, HEATDESK_MQTT_CLIENT_ID=cid, HEATDESK_BATCH_MAX_AGE_S="0.2",
               PYTHONUNBUFFERED="1")
    log = open(tmp_path / "ingest.log", "ab")

    def spawn() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "ingest"], cwd=ROOT, env=env, stdout=log, stderr=log)

    def connected() -> bool:
        return count(fresh_db_url, "SELECT count(*) FROM device_status WHERE device_id = 'thermo' AND connected") == 1

    proc = spawn()
    try:
        wait_for(connected, 20, message="ingest connected")
        # the session and its subscription exist now; from here the broker keeps everything for us
        # 250/s: while ingest is down (~2 s) the broker queues ~500 for the offline session — under
        # Mosquitto's default max_queued_messages (1000), beyond which it drops (docs/ingest.md)
        pub = Publisher(mqtt_url, topic_prefix, n=2000, rate=250)
        pub.start()
        wait_for(lambda: count(fresh_db_url) >= 500, 20, message="first readings committed")
        proc.send_signal(signal.SIGKILL)                      # kill -9 mid-stream, between commits and acks
        proc.wait(10)
        mid = count(fresh_db_url)
        assert mid < 2000, "the kill must land mid-stream"
        proc = spawn()
        pub.join(30)
        assert not pub.is_alive() and pub.sent == 2000
        wait_for(lambda: count(fresh_db_url) >= 2000, 30, message="all readings after restart")
        wait_for(lambda: read_status_file(tmp_path / "data") is not None, 10)
        assert read_status_file(tmp_path / "data")["db_ok"] is True
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert count(fresh_db_url) == 2000                    # none lost, none duplicated
        assert count(fresh_db_url, "SELECT count(DISTINCT (sensor_id, time)) FROM readings") == 2000
        assert count(fresh_db_url, "SELECT sum(readings)::int FROM ingest_counter") >= 2000   # re-sent copies counted
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        log.close()
        forget_session(mqtt_url, f"{cid}-thermo")


def test_database_down_30s_mid_ingest_mqtt_held_polled_spooled(private_pg, mqtt_url, topic_prefix, tmp_path):
    url = ensure_database(private_pg.url, "hd_fault")
    apply_schema(url)
    cid = f"t-pgdown-{uuid.uuid4().hex[:8]}"
    cfg = parse_devices(DEVICES, env={"HEATDESK_TOPIC_ROOT": topic_prefix})
    settings = Settings(database_url=url, mqtt_url=mqtt_url, mqtt_client_id=cid, data_dir=tmp_path,
                        batch_max_age_s=0.2, mqtt_session_expiry_s=600)
    pool = make_pool(url, min_size=1, max_size=2, name="t-fault", timeout=3)
    svc = IngestService(pool, settings=settings, ranges=dict(cfg.ranges), db_timeout=1.0)
    svc.start()
    ad = MqttAdapter(cfg.by_protocol("mqtt"), svc, config=cfg, settings=settings)
    ad.start()
    wait_for(ad.is_subscribed, 10)

    # polled deliveries (as a Modbus poll would make): 4 points every 50 ms, nobody upstream keeps them
    polled_sent = 0
    stop_polls = threading.Event()
    plc = {p: SensorMeta(metric="supply_temp_2", unit="C", protocol="modbus", device_id="S01-plc", point=p,
                         substation_code="S01") for p in ("p1", "p2", "p3", "p4")}
    t_base = datetime.now(timezone.utc) - timedelta(hours=1)

    def poller() -> None:
        nonlocal polled_sent
        i = 0
        while not stop_polls.is_set():
            ts = t_base + timedelta(seconds=i)
            svc.submit(Delivery(readings=[Reading(f"S01-plc/{p}", ts, 60.0 + i % 5, Quality.GOOD, m)
                                          for p, m in plc.items()], upstream_retains=False))
            polled_sent += 4
            i += 1
            stop_polls.wait(0.05)

    poll_thread = threading.Thread(target=poller, daemon=True)
    pub = Publisher(mqtt_url, topic_prefix, n=100_000, rate=100)
    try:
        poll_thread.start()
        pub.start()
        wait_for(lambda: count(url) >= 200, 15, message="flowing before the outage")
        private_pg.stop()
        t_down = time.monotonic()
        peak = {"spool": 0, "unacked": 0}

        def outage_observed() -> bool:
            write_status_file(tmp_path, svc.status())
            st = collect_status(None, tmp_path)              # what `heatdesk status` shows without a database
            peak["spool"] = max(peak["spool"], st["backlog"]["spool_bytes"])
            peak["unacked"] = max(peak["unacked"], st["backlog"]["unacked"])
            assert st["backlog"]["db_ok"] is False or time.monotonic() - t_down < 5
            return time.monotonic() - t_down >= 30

        wait_for(outage_observed, 40, interval=0.5, message="30 s outage")
        assert peak["spool"] > 0, "polled data must be spooled to disk during the outage"
        assert peak["unacked"] > 1000, "MQTT messages must be held un-acked during the outage"
        assert list((tmp_path / "spool").glob("seg-*.spool"))
        private_pg.start()
        wait_for(lambda: svc.status()["db_ok"], 30, message="recovered")
        stop_polls.set()
        pub.stop.set()
        poll_thread.join(5)
        pub.join(10)
        expected = pub.sent + polled_sent
        wait_for(lambda: count(url) == expected, 30, message=f"{expected} readings")
        assert svc.drain(10)
        st = svc.status()
        assert st["spool_bytes"] == 0 and st["unacked"] == 0 and st["replayed_segments"] >= 1
        assert not list((tmp_path / "spool").glob("seg-*.spool"))    # deleted only after commit
        assert count(url, "SELECT count(*) FROM readings r JOIN sensor s ON s.id = r.sensor_id "
                          "WHERE s.device_id = 'S01-plc'") == polled_sent
        assert count(url, "SELECT count(*) FROM readings r JOIN sensor s ON s.id = r.sensor_id "
                          "WHERE s.device_id = 'thermo'") == pub.sent
    finally:
        stop_polls.set()
        pub.stop.set()
        ad.stop()
        svc.stop()
        pool.close()
        forget_session(mqtt_url, f"{cid}-thermo")
