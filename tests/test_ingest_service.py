"""IngestService in-process against the real broker and database: the pipeline commits, then acks
(a restarted consumer with the same client id gets nothing again), malformed payloads end in
`rejects` with reasons, device events reach device_status, status reports per device."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import orjson
import psycopg
import pytest

from adapters.base import CollectingSink, Delivery, Reading, SensorMeta
from adapters.config import parse_devices
from adapters.mqtt import MqttAdapter
from core.config import Settings
from core.db import make_pool
from core.quality import Quality
from ingest.service import IngestService, ServiceStopped
from ingest.status import collect_status, format_status, write_status_file
from tests.helpers import wait_for
from tests.test_adapters_mqtt import forget_session, publish

DEVICES = """
version: 1
ranges:
  room_temp: {plausible: [5, 35], possible: [-40, 70], stuck_after_s: 21600}
profiles:
  a_json:
    format: json
    fields: [{path: temp, metric: room_temp}]
    timestamp: {path: ts, format: auto}
  c_number:
    format: number
    fields: [{metric: room_temp, unit: F}]
devices:
  - id: thermo
    protocol: mqtt
    subscriptions:
      - topic: "${HEATDESK_TOPIC_ROOT}/room/{household}/{room}/state"
        payload: a_json
      - topic: "${HEATDESK_TOPIC_ROOT}/raw/{household}/{room}/temperature"
        payload: c_number
"""


@pytest.fixture
def rig(fresh_db_url, mqtt_url, topic_prefix, tmp_path):
    cid = f"t-{uuid.uuid4().hex[:8]}"
    cfg = parse_devices(DEVICES, env={"HEATDESK_TOPIC_ROOT": topic_prefix})
    settings = Settings(database_url=fresh_db_url, mqtt_url=mqtt_url, mqtt_client_id=cid, data_dir=tmp_path,
                        batch_max_age_s=0.1, mqtt_session_expiry_s=300)
    pool = make_pool(fresh_db_url, min_size=1, max_size=2, name="t-ingest")
    svc = IngestService(pool, settings=settings, ranges=dict(cfg.ranges))
    svc.start()
    ad = MqttAdapter(cfg.by_protocol("mqtt"), svc, config=cfg, settings=settings)
    ad.start()
    wait_for(ad.is_subscribed, 10, message="adapter subscribed")
    yield {"svc": svc, "ad": ad, "cfg": cfg, "settings": settings, "url": fresh_db_url}
    svc.drain(5)
    ad.stop()
    svc.stop()
    pool.close()
    forget_session(mqtt_url, f"{cid}-thermo")


def q(url, sql):
    with psycopg.connect(url) as c:
        return c.execute(sql).fetchall()


def test_commit_then_ack_nothing_redelivered(rig, mqtt_url, topic_prefix):
    publish(mqtt_url, topic_prefix, 300)
    wait_for(lambda: q(rig["url"], "SELECT count(*) FROM readings")[0][0] == 300, 15, message="300 readings")
    assert rig["svc"].drain(5)
    assert rig["svc"].totals["acked"] >= 300
    conn = rig["ad"].connections[0]
    diag = {"stale_acks": conn.stale_acks, "received": conn.received, "totals": dict(rig["svc"].totals)}
    rig["ad"].stop()
    # same client id again: the broker has nothing un-acked for us
    again = CollectingSink(auto_ack=False)
    ad2 = MqttAdapter(rig["cfg"].by_protocol("mqtt"), again, config=rig["cfg"], settings=rig["settings"])
    ad2.start()
    try:
        wait_for(ad2.is_subscribed, 10)
        publish(mqtt_url, topic_prefix, 1, start=5000)          # a marker behind any redelivery
        wait_for(lambda: len(again.deliveries) >= 1, 10)
        assert len(again.deliveries) == 1, diag
        again.deliveries[0].ack()
    finally:
        ad2.stop()


MALFORMED = [
    ("room/H1/living/state", b"{not json", "malformed_json"),
    ("room/H1/living/state", b'{"temp": "warm", "ts": 1795000000}', "not_a_number"),
    ("room/H1/living/state", b'{"ts": 1795000000}', "missing_field"),
    ("room/H1/living/state", b'{"temp": 20, "ts": "soon"}', "bad_timestamp"),
    ("room/H1/living/state", b'{"temp": 500, "ts": 1795000000}', "out_of_possible_range"),
    ("raw/H1/living/temperature", b"NaN", "nan"),
    ("raw/H1/living/temperature", b"\xff\xfe", "bad_encoding"),
]


def test_malformed_payloads_end_in_rejects_with_reasons(rig, mqtt_url, topic_prefix):
    import paho.mqtt.client as mqtt
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", int(mqtt_url.rsplit(":", 1)[1]))
    c.loop_start()
    for sub, payload, _ in MALFORMED:
        c.publish(f"{topic_prefix}/{sub}", payload, qos=1).wait_for_publish(5)
    c.publish(f"{topic_prefix}/raw/H1/living/temperature", b"70.7", qos=1).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()
    wait_for(lambda: q(rig["url"], "SELECT count(*) FROM rejects")[0][0] == len(MALFORMED), 15)
    rows = q(rig["url"], "SELECT reason, device_id, address, payload, detail FROM rejects ORDER BY id")
    assert sorted(r[0] for r in rows) == sorted(m[2] for m in MALFORMED)
    for reason, dev, address, payload, detail in rows:
        assert dev == "thermo" and detail
        if reason == "out_of_possible_range":          # found by the quality stage, after decoding
            assert address == "room:H1:living:room_temp" and bytes(payload) == b"500.0"
        else:
            assert address.startswith(topic_prefix) and bytes(payload) in {m[1] for m in MALFORMED}
    assert q(rig["url"], "SELECT round(value::numeric, 2) FROM readings") == [(pytest.approx(21.5, abs=0.01),)]
    wait_for(lambda: q(rig["url"], "SELECT sum(rejects)::int FROM ingest_counter")[0][0] == len(MALFORMED), 5)


def test_events_and_status(rig, mqtt_url, topic_prefix, tmp_path):
    now = datetime.now(timezone.utc)
    publish(mqtt_url, topic_prefix, 10, payload=orjson.dumps({"temp": 21.0, "ts": now.isoformat()}))
    meta = SensorMeta(metric="supply_temp_2", unit="C", protocol="modbus", device_id="S01-plc", point="supply_temp_2",
                      substation_code="S01")
    rig["svc"].submit(Delivery(readings=[Reading("S01-plc/supply_temp_2", now - timedelta(seconds=i), 60.0,
                                                 Quality.GOOD, meta) for i in range(5)]))
    wait_for(lambda: q(rig["url"], "SELECT count(*) FROM readings")[0][0] == 12, 10)   # 7 sensors share one ts + 5
    assert rig["svc"].drain(5)
    write_status_file(tmp_path, rig["svc"].status())
    with psycopg.connect(rig["url"]) as conn:
        st = collect_status(conn, tmp_path)
    assert st["database"]["ok"]
    thermo = st["protocols"]["mqtt"]["devices"]["thermo"]
    assert thermo["connected"] is True and thermo["readings_last_minute"] == 10 and thermo["last_seen"]
    assert st["protocols"]["modbus"]["devices"]["S01-plc"]["readings_last_minute"] == 5
    assert st["backlog"]["spool_bytes"] == 0 and st["backlog"]["db_ok"] is True
    text = format_status(st)
    assert "thermo" in text and "S01-plc" in text
    down = collect_status(None, tmp_path)                 # database unreachable: backlog still shown
    assert down["database"]["ok"] is False and down["backlog"]["spool_bytes"] == 0


# -- without the broker: poison deliveries, the spool bound, the pool in backoff ---------------------------

def plc_delivery(i: int, value: float = 60.0, ack=None) -> Delivery:
    meta = SensorMeta(metric="supply_temp_2", unit="C", protocol="modbus", device_id="S01-plc", point="supply_temp_2",
                      substation_code="S01")
    ts = datetime(2026, 11, 23, tzinfo=timezone.utc) + timedelta(seconds=i)
    return Delivery(readings=[Reading("S01-plc/supply_temp_2", ts, value, Quality.GOOD, meta)], ack=ack)


def test_poison_delivery_becomes_a_reject_and_the_rest_is_stored(fresh_db_url, tmp_path):
    with psycopg.connect(fresh_db_url) as c:      # a value this database refuses (not a connection problem)
        c.execute("ALTER TABLE readings ADD CONSTRAINT test_poison CHECK (value < 100)")
    settings = Settings(database_url=fresh_db_url, data_dir=tmp_path, batch_max_age_s=0.05)
    pool = make_pool(fresh_db_url, min_size=1, max_size=2, name="t-poison")
    svc = IngestService(pool, settings=settings)
    acked = []
    try:
        svc.start()
        for i in range(10):
            svc.submit(plc_delivery(i, 120.0 if i == 4 else 60.0, ack=lambda i=i: acked.append(i)))
        wait_for(lambda: sorted(acked) == list(range(10)), 10, message="all acked")
    finally:
        svc.stop()
        pool.close()
    assert q(fresh_db_url, "SELECT count(*) FROM readings")[0][0] == 9
    (reason, detail), = q(fresh_db_url, "SELECT reason, detail FROM rejects")
    assert reason == "write_error" and "test_poison" in detail


def test_spool_bound_blocks_submitters_and_drops_nothing(tmp_path):
    from tests.helpers import free_port
    from ingest.spool import Spool, decode_record
    import threading

    down = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    settings = Settings(database_url=down, data_dir=tmp_path, batch_max_age_s=0.01, spool_max_bytes=3000)
    pool = make_pool(down, min_size=0, max_size=1, name="t-down")
    svc = IngestService(pool, settings=settings, polled_queue=5, db_timeout=0.2)
    submitted = []
    stop = threading.Event()

    def feed():
        i = 0
        while not stop.is_set():
            try:
                svc.submit(plc_delivery(i))
            except ServiceStopped:
                return                                      # refused at close: never counted as taken
            submitted.append(i)
            i += 1

    svc.start()
    t = threading.Thread(target=feed, daemon=True)
    t.start()
    try:
        wait_for(lambda: svc.spool.bytes >= 3000, 20, message="spool full")
        wait_for(lambda: svc.status()["queue_polled"] == 5, 10, message="lane full: ingest stopped taking")
        n, size = len(submitted), svc.spool.bytes
        # the submitter is blocked in submit(): neither the count nor the spool grows while it is full
        # (the spool may exceed its bound by the one record that crossed it)
        wait_for(lambda: svc.status()["queue_polled"] == 5 and len(submitted) == n and svc.spool.bytes == size,
                 2, message="blocked")
        assert t.is_alive() and svc.status()["db_ok"] is False
    finally:
        stop.set()
        svc.close_intake()
        svc.stop()
        pool.close()
        t.join(5)
    # everything taken is on disk (or was still in the lane at close: the submitter got it back blocked)
    sp = Spool(tmp_path / "spool", 10**9)
    on_disk = sorted(r.ts for s in sp.segments() for rec in sp.read_segment(s) for r in decode_record(rec)[0].readings)
    # every accepted delivery is on disk: the 5 left in the lane were spooled by stop()
    assert len(on_disk) == len(submitted) and len(set(on_disk)) == len(on_disk)


def test_pool_in_reconnect_backoff_is_replaced(fresh_db_url, tmp_path, monkeypatch):
    from ingest.writer import DatabaseDown

    settings = Settings(database_url=fresh_db_url, data_dir=tmp_path)
    pool = make_pool(fresh_db_url, min_size=1, max_size=2, name="t-backoff")
    svc = IngestService(pool, settings=settings)
    real_ping = svc.writer.ping
    calls = []

    def ping():                       # the old pool: still "backing off", gives no connection
        calls.append(svc.writer.pool)
        if svc.writer.pool is pool:
            raise DatabaseDown("couldn't get a connection after 1.00 sec")
        real_ping()

    monkeypatch.setattr(svc.writer, "ping", ping)
    try:
        svc._probe()
        assert svc.writer.pool is not pool and svc._own_pools == [svc.writer.pool]
        assert calls[0] is pool and calls[-1] is svc.writer.pool
    finally:
        svc.stop()
        pool.close()
