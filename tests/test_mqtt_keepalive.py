"""The MQTT adapter's keep-alive under load, through real Mosquitto (no mocks).

Under sustained overload the broker queues our PINGRESP behind every PUBLISH it has queued for us
(measured on Mosquitto 2.0.11: 12 s growing to 105 s with the backlog), and stock paho-mqtt 2.2.0 sends a
PINGREQ every keep-alive period however many PUBACKs it writes, then drops a connection whose PINGRESP
is late although data never stopped ("Keep alive timeout" every 60–90 s, docs/ingest.md). These
tests use a 1 s keep-alive and a slow sink so the same situation arises in seconds, and check that a
dead broker is still detected.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import adapters.mqtt as mqtt_adapter
from adapters.base import Delivery, DeviceEvent
from core.broker import PrivateBroker
from tests.helpers import wait_for
from tests.test_adapters_mqtt import forget_session, make, publish


class SlowSink:
    """A sink whose submit takes `delay` s in paho's network thread (a slow consumer); acks at once
    or keeps the acks for later."""

    def __init__(self, delay: float, ack_now: bool):
        self.delay, self.ack_now = delay, ack_now
        self.deliveries: list[Delivery] = []
        self.events: list[DeviceEvent] = []
        self.lock = threading.Lock()

    def submit(self, delivery: Delivery) -> None:
        time.sleep(self.delay)
        with self.lock:
            self.deliveries.append(delivery)
        if self.ack_now and delivery.ack:
            delivery.ack()

    def device_event(self, event: DeviceEvent) -> None:
        self.events.append(event)


@pytest.fixture
def keepalive_1s(monkeypatch):
    monkeypatch.setattr(mqtt_adapter, "KEEPALIVE_S", 1)


def _adapter(topic_prefix, mqtt_url, tmp_path, cid, sink, protocol="5"):
    ad, _ = make(topic_prefix, mqtt_url, tmp_path, cid, protocol=protocol)
    ad.sink = sink
    return ad


def test_pingresp_queued_behind_data_does_not_drop_the_connection(topic_prefix, mqtt_url, tmp_path, keepalive_1s):
    """1500 messages reach a consumer that takes 5 ms each and acks none until the end: PINGREQs go out
    (nothing else is sent) and their PINGRESP waits behind the unread PUBLISH packets for seconds —
    several keep-alive periods. Data keeps arriving, so the connection stays up; nothing is re-sent."""
    cid = f"t-ka-{os.getpid()}-{time.monotonic_ns() % 10**8}"
    sink = SlowSink(0.005, ack_now=False)
    ad = _adapter(topic_prefix, mqtt_url, tmp_path, cid, sink)
    ad.start()
    try:
        wait_for(ad.is_subscribed, 10, message="subscribed")
        publish(mqtt_url, topic_prefix, 1500)
        wait_for(lambda: len(sink.deliveries) >= 1500, 30, message="1500 deliveries")
        for d in list(sink.deliveries):
            d.ack()
        assert ad.connections[0].ack_barrier(5), "broker applied the PUBACKs"
        health = ad.counters()
    finally:
        ad.stop()
        forget_session(mqtt_url, f"{cid}-thermo")
    assert health["pings_sent"] >= 1
    assert health["pingresp_max_wait_s"] > mqtt_adapter.KEEPALIVE_S, health   # the situation did arise
    assert health["disconnects"] == 0 and health["keepalive_timeouts"] == 0, health
    assert len(sink.deliveries) == 1500                                       # no reconnect, no re-sends
    assert [e.kind for e in sink.events].count("connected") == 1


def test_no_pingreq_while_pubacks_flow(topic_prefix, mqtt_url, tmp_path, keepalive_1s):
    """PUBACKs are control packets: while they go out the client must not need PINGREQs
    (MQTT-3.1.2-20; paho 2.2.0 pings every keep-alive regardless, paho #813)."""
    cid = f"t-ka-{os.getpid()}-{time.monotonic_ns() % 10**8}"
    sink = SlowSink(0.002, ack_now=True)
    ad = _adapter(topic_prefix, mqtt_url, tmp_path, cid, sink)
    ad.start()
    try:
        wait_for(ad.is_subscribed, 10, message="subscribed")
        pub = threading.Thread(target=publish, args=(mqtt_url, topic_prefix, 1500))
        pub.start()
        wait_for(lambda: len(sink.deliveries) >= 1, 10, message="first delivery")
        pings_at_first = ad.counters()["pings_sent"]
        t0 = time.monotonic()
        wait_for(lambda: len(sink.deliveries) >= 1500, 30, message="1500 deliveries")
        flow_s = time.monotonic() - t0
        pings_during = ad.counters()["pings_sent"] - pings_at_first
        pub.join(10)
        health = ad.counters()
    finally:
        ad.stop()
        forget_session(mqtt_url, f"{cid}-thermo")
    assert flow_s > 2 * mqtt_adapter.KEEPALIVE_S, f"flow too short to show anything ({flow_s:.1f} s)"
    assert pings_during == 0, f"{pings_during} PINGREQs in {flow_s:.1f} s of PUBACK traffic"
    assert health["disconnects"] == 0


def test_silent_broker_is_still_detected(topic_prefix, tmp_path, keepalive_1s):
    """Liveness is not given up: a broker that stops answering (SIGSTOP) is declared dead by the
    client's keep-alive — PINGREQ after a silent keep-alive period, "Keep alive timeout" after another."""
    broker = PrivateBroker(tmp_path / "mqtt")
    broker.start()          # mosquitto, or the amqtt subprocess (MQTT 3.1.1) on a machine without it
    cid = f"t-ka-{os.getpid()}-{time.monotonic_ns() % 10**8}"
    ad = _adapter(topic_prefix, broker.url, tmp_path, cid, SlowSink(0.0, ack_now=True),
                  protocol="5" if broker.kind == "mosquitto" else "3.1.1")
    ad.start()
    try:
        wait_for(ad.is_subscribed, 10, message="subscribed")
        os.kill(broker.proc.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: ad.counters()["keepalive_timeouts"] >= 1, 8, message="keep-alive timeout")
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        wait_for(ad.is_subscribed, 15, message="reconnected and subscribed")
    finally:
        ad.stop()
        broker.stop()
