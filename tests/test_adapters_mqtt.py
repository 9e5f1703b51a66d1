"""adapters/mqtt.py against the real broker: decode on arrival, QoS 1 with manual acks, the session
resumed under the same client id, and the broker honouring our ReceiveMaximum."""
from __future__ import annotations

import uuid

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters.base import CollectingSink
from adapters.config import parse_devices
from adapters.mqtt import MqttAdapter, parse_broker_url
from core.config import Settings
from tests.helpers import wait_for

DEVICES = """
version: 1
profiles:
  a_json:
    format: json
    fields: [{{path: temp, metric: room_temp}}]
    timestamp: {{path: ts, format: epoch_s}}
devices:
  - id: thermo
    protocol: mqtt
    {extra}
    subscriptions:
      - topic: "${{HEATDESK_TOPIC_ROOT}}/room/{{household}}/{{room}}/state"
        payload: a_json
"""


def make(topic_prefix, mqtt_url, tmp_path, client_id, extra="", protocol="5"):
    cfg = parse_devices(DEVICES.format(extra=extra), env={"HEATDESK_TOPIC_ROOT": topic_prefix})
    settings = Settings(mqtt_url=mqtt_url, mqtt_client_id=client_id, data_dir=tmp_path, mqtt_session_expiry_s=300,
                        mqtt_protocol=protocol)
    sink = CollectingSink(auto_ack=False)
    return MqttAdapter(cfg.by_protocol("mqtt"), sink, config=cfg, settings=settings), sink


def publish(mqtt_url, topic_prefix, n, start=0, payload=None):
    host, port, _ = parse_broker_url(mqtt_url)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect(host, port)
    c.loop_start()
    infos = [c.publish(f"{topic_prefix}/room/H{i % 7}/living/state",
                       payload if payload is not None else orjson.dumps({"temp": 20.0, "ts": 1_795_000_000 + i}), qos=1)
             for i in range(start, start + n)]
    for i in infos:
        i.wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def forget_session(mqtt_url, client_id):
    """Remove the persistent session this test created on the shared broker."""
    host, port, _ = parse_broker_url(mqtt_url)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    c.connect(host, port, clean_start=True, properties=props)
    c.disconnect()


@pytest.fixture
def client_id(mqtt_url):
    cid = f"t-{uuid.uuid4().hex[:8]}"
    yield cid
    forget_session(mqtt_url, f"{cid}-thermo")


def test_receives_decodes_and_reports_connection(topic_prefix, mqtt_url, tmp_path, client_id):
    ad, sink = make(topic_prefix, mqtt_url, tmp_path, client_id)
    ad.start()
    try:
        wait_for(ad.is_subscribed, 10, message="subscribed")
        wait_for(lambda: len(sink.events) >= 1, 5)
        publish(mqtt_url, topic_prefix, 20)
        publish(mqtt_url, topic_prefix, 1, payload=b"{oops")
        wait_for(lambda: len(sink.deliveries) == 21, 10, message="21 deliveries")
        keys = {r.sensor for r in sink.readings}
        assert keys == {f"room:H{i}:living:room_temp" for i in range(7)}
        assert [j.reason for j in sink.rejects] == ["malformed_json"]
        assert all(d.upstream_retains and d.ack is not None for d in sink.deliveries)
    finally:
        ad.stop()
    kinds = [e.kind for e in sink.events]
    assert kinds[0] == "connected" and kinds[-1] == "disconnected"
    assert ad.connections[0].client_id == f"{client_id}-thermo"


def test_broker_honours_receive_maximum(topic_prefix, mqtt_url, tmp_path, client_id):
    """Mosquitto's default max_inflight_messages is 20: a v3.1.1 or a v5 client without ReceiveMaximum
    gets 20 un-acked QoS 1 messages and then nothing until it acks. With our ReceiveMaximum all of
    them arrive while none is acked — which is what lets a batch of thousands commit before its acks."""
    ad, sink = make(topic_prefix, mqtt_url, tmp_path, client_id)
    ad.start()
    try:
        wait_for(ad.is_subscribed, 10)
        publish(mqtt_url, topic_prefix, 1500)
        wait_for(lambda: len(sink.deliveries) == 1500, 15, message="1500 un-acked in flight")
    finally:
        ad.stop()


def test_unacked_messages_are_redelivered_to_the_same_client_id(topic_prefix, mqtt_url, tmp_path, client_id):
    """A consumer that dies before its commit (no ack, no DISCONNECT) gets exactly the un-acked
    messages again when it reconnects with the same client id; acked ones are not re-sent."""
    ad, sink = make(topic_prefix, mqtt_url, tmp_path, client_id)
    ad.start()
    wait_for(ad.is_subscribed, 10)
    publish(mqtt_url, topic_prefix, 40)
    wait_for(lambda: len(sink.deliveries) == 40, 10)
    for d in sink.deliveries[:25]:               # "committed": acked
        d.ack()
    acked = {r.ts for d in sink.deliveries[:25] for r in d.readings}
    # die: stop the network loop and drop the socket without DISCONNECT
    conn = ad.connections[0]
    assert conn.ack_barrier(5), "broker applied the 25 acks"      # then die before acking the rest
    conn.client.loop_stop()
    conn.client.socket().close()

    ad2, sink2 = make(topic_prefix, mqtt_url, tmp_path, client_id)
    ad2.start()
    try:
        wait_for(lambda: len(sink2.deliveries) >= 15, 15, message="redelivery")
        publish(mqtt_url, topic_prefix, 5, start=1000)           # and the session goes on
        wait_for(lambda: len(sink2.deliveries) >= 20, 10)
        redelivered = {r.ts for d in sink2.deliveries for r in d.readings}
        assert len(sink2.deliveries) == 20
        assert not (redelivered & acked)
        all_first = {r.ts for d in sink.deliveries for r in d.readings}
        assert (all_first - acked) <= redelivered
        for d in sink2.deliveries:
            d.ack()
    finally:
        ad2.stop()


def test_shared_subscription_group(topic_prefix, mqtt_url, tmp_path, client_id):
    ad, sink = make(topic_prefix, mqtt_url, tmp_path, client_id, extra="share_group: ingest")
    assert ad.connections[0].filters == [f"$share/ingest/{topic_prefix}/room/+/+/state"]
    ad.start()
    try:
        wait_for(ad.is_subscribed, 10)
        wait_for(lambda: any(e.kind == "connected" for e in sink.events), 5)
        publish(mqtt_url, topic_prefix, 30)
        wait_for(lambda: len(sink.readings) == 30, 10)
        for d in sink.deliveries:
            d.ack()
    finally:
        ad.stop()


@pytest.mark.parametrize("url, expect", [
    ("mqtt://127.0.0.1:1883", ("127.0.0.1", 1883, False)),
    ("mqtt://broker", ("broker", 1883, False)),
    ("mqtts://broker", ("broker", 8883, True)),
    ("10.0.0.5:1884", ("10.0.0.5", 1884, False)),
])
def test_broker_urls(url, expect):
    assert parse_broker_url(url) == expect


def test_mqtt_311_against_the_embedded_amqtt_broker(topic_prefix, tmp_path):
    """The embedded amqtt broker (a machine without mosquitto; `heatdesk up` then sets
    HEATDESK_MQTT_PROTOCOL=3.1.1) speaks MQTT 3.1.1 only: QoS 1 deliveries, acked after commit."""
    import socket
    import subprocess
    import sys

    from tests.helpers import free_port
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "core.amqtt_broker", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"mqtt://127.0.0.1:{port}"

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, 20, message="amqtt listening")
        ad, sink = make(topic_prefix, url, tmp_path, f"t-{uuid.uuid4().hex[:8]}", protocol="3.1.1")
        ad.start()
        try:
            wait_for(ad.is_subscribed, 20, message="subscribed over MQTT 3.1.1")
            assert ad.connections[0].protocol == mqtt.MQTTv311
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
            c.connect("127.0.0.1", port)
            c.loop_start()
            for i in range(5):
                c.publish(f"{topic_prefix}/room/H{i}/living/state",
                          orjson.dumps({"temp": 20.5, "ts": 1_795_000_000 + i}), qos=1).wait_for_publish(10)
            c.disconnect()
            c.loop_stop()
            wait_for(lambda: len(sink.deliveries) == 5, 10, message="5 deliveries")
            assert {r.sensor for r in sink.readings} == {f"room:H{i}:living:room_temp" for i in range(5)}
            for d in sink.deliveries:
                d.ack()
            assert ad.connections[0].ack_barrier(5)
        finally:
            ad.stop()
        assert [e.kind for e in sink.events][0] == "connected"
    finally:
        proc.terminate()
        proc.wait(10)
