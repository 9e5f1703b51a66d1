"""MQTT adapter: paho-mqtt 2.x, MQTT 5, QoS 1, persistent session, ack after the database commit.

What the peers got wrong and how this module avoids it (field-lessons.md, MQTT):

* stable client id and ``clean_start=False`` from the very first connect, SessionExpiryInterval
  longer than the longest outage → the broker keeps our subscriptions and queues while we are
  away (telegraf#797, paho.mqtt.c#429);
* ``manual_ack=True``: a message is PUBACKed only when ingest calls ``Delivery.ack`` after COMMIT
  (paho PR #753). A consumer that dies before the commit gets the message again on reconnect;
* a large ReceiveMaximum (CONNECT property) so thousands of un-acked QoS 1 messages can be in
  flight while a batch commits — otherwise the broker stops after a handful (Mosquitto's
  ``max_inflight_messages`` default is 20; for MQTT 5 clients Mosquitto uses the client's
  ReceiveMaximum instead, measured in tests/test_adapters_mqtt.py);
* subscriptions are (re)made in on_connect, so they survive auto-reconnect (#573);
* on_message is tiny and never raises (#867, #328): decode (pure, adapters/payload.py) → submit.

Acks are tagged with the connection generation: after a reconnect the broker re-sends every
un-acked message with its old packet id, and an ack from the previous connection could otherwise
acknowledge an unrelated message that reused the id. Stale acks are dropped; the re-sent copy is
committed again (ON CONFLICT DO NOTHING) and acked on the current connection.
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from typing import Callable, Sequence
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from adapters.base import Adapter, Delivery, DeviceEvent, Rejection
from adapters.config import DevicesConfigError, MqttDevice
from adapters.payload import MAX_REJECT_PAYLOAD, SubscriptionDecoder, decoders_for_device

log = logging.getLogger(__name__)

#: QoS 1 messages the broker may send before our PUBACKs: four 5 000-row batches, enough to keep a
#: batch committing while the next fills. Deliberately well below the MQTT 5 maximum (65 535): the
#: window is also the queue a PINGRESP waits behind, and with ingest's lanes bounded at 100 000 a
#: reconnect's redeliveries on top of held originals must never fill them and block on_message inside
#: paho's network loop (keep-alive timeouts under sustained overload, docs/ingest.md).
RECEIVE_MAXIMUM = 20_000
KEEPALIVE_S = 30
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """mqtt://host:port → (host, port, tls). mqtts:// uses TLS (default port 8883)."""
    if "://" not in url:
        url = "mqtt://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise DevicesConfigError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
    tls = parts.scheme in ("mqtts", "ssl")
    if not parts.hostname:
        raise DevicesConfigError(f"broker URL {url!r} has no host")
    return parts.hostname, parts.port or (8883 if tls else 1883), tls


class _Connection:
    """One paho client for one devices.yaml MQTT device (one broker session)."""

    def __init__(self, adapter: "MqttAdapter", device: MqttDevice):
        self.adapter = adapter
        self.device = device
        settings = adapter.settings
        url = device.broker or settings.mqtt_url
        if not url:
            raise DevicesConfigError(f"device {device.id}: no broker (set `broker:` or HEATDESK_MQTT_URL)")
        self.host, self.port, tls = parse_broker_url(url)
        self.client_id = device.client_id or f"{settings.mqtt_client_id}-{device.id}"
        self.decoders: list[SubscriptionDecoder] = decoders_for_device(device, adapter.config)
        prefix = f"$share/{device.share_group}/" if device.share_group else ""
        self.filters = list(dict.fromkeys(prefix + d.topic.filter for d in self.decoders))
        self._gen = 0                     # connection generation; acks carry the one they were born in
        self._gen_lock = threading.Lock()
        self.connected = False
        self._fail_reported = False
        self.received = 0
        self.stale_acks = 0               # acks dropped because the connection changed since the message
        #: set when the broker granted every subscription of this connection (cleared on disconnect)
        self.subscribed = threading.Event()

        c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        protocol=mqtt.MQTTv5, manual_ack=True)
        if device.username:
            c.username_pw_set(device.username, device.password)
        if tls:
            c.tls_set()
        c.reconnect_delay_set(min_delay=RECONNECT_MIN_S, max_delay=RECONNECT_MAX_S)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self.client = c

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(self.adapter.settings.mqtt_session_expiry_s)
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        # clean_start=False even on the first connect: a restarted ingest resumes its session
        self.client.connect_async(self.host, self.port, keepalive=KEEPALIVE_S, clean_start=False, properties=props)
        self.client.loop_start()

    def stop(self, barrier_timeout: float = 2.0) -> None:
        with self._gen_lock:
            self._gen += 1                # acks arriving after this point are dropped (redelivered later)
        if self.connected and not self.ack_barrier(barrier_timeout):
            log.warning("device %s: no SUBACK within %.0f s at stop; un-flushed acks will be re-sent",
                        self.device.id, barrier_timeout)
        self.client.disconnect()          # normal DISCONNECT: the session (expiry from CONNECT) is kept
        self.client.loop_stop()
        self.connected = False

    def ack_barrier(self, timeout: float = 2.0) -> bool:
        """Return once the broker has applied every PUBACK sent so far (False on timeout).

        Re-SUBSCRIBE (idempotent; retain_handling=1 sends no retained copies) and wait for the SUBACK:
        the broker handles a connection's packets in order. Without it, a restart that reconnects at
        once can take over the session before Mosquitto has read our last PUBACKs, and those messages
        come back (measured on Mosquitto 2.0.11 under load: 297 of 300 re-sent) — duplicates only, but
        avoidable."""
        self.subscribed.clear()
        opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        self.client.subscribe([(f, opts) for f in self.filters])
        return self.subscribed.wait(timeout)

    # -- callbacks (paho network thread: short, never raise) -----------------------------------------
    def _event(self, kind: str, detail: str = "") -> None:
        try:
            self.adapter.sink.device_event(DeviceEvent(device_id=self.device.id, protocol="mqtt", kind=kind,
                                                       at=datetime.now(timezone.utc), detail=detail))
        except Exception:  # the sink is ingest; a failure there must not kill the network thread
            log.exception("device %s: sink refused a device event", self.device.id)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("device %s: broker %s:%s refused connection: %s", self.device.id, self.host, self.port,
                        reason_code)
            self._event("error", f"connect refused: {reason_code}")
            return
        self.connected = True
        self._fail_reported = False
        session = getattr(flags, "session_present", False)
        log.info("device %s: connected to %s:%s as %s (session present: %s)", self.device.id, self.host, self.port,
                 self.client_id, session)
        # QoS 1; retain_handling=1: retained messages only when the subscription is new, not on every
        # reconnect (a retained value re-sent on each reconnect would look like a fresh measurement).
        opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        client.subscribe([(f, opts) for f in self.filters])
        self._event("connected", f"{self.host}:{self.port} client_id={self.client_id} session_present={session}")

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        bad = [str(rc) for rc in reason_codes if rc.is_failure]
        if bad:
            log.error("device %s: subscription refused: %s", self.device.id, bad)
            self._event("error", f"subscription refused: {bad}")
        else:
            self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._gen_lock:
            self._gen += 1
        self.subscribed.clear()
        was = self.connected
        self.connected = False
        if was:
            if self.adapter._stopping.is_set():
                log.info("device %s: disconnected", self.device.id)
            else:
                log.warning("device %s: disconnected from %s:%s: %s (reconnecting)", self.device.id, self.host,
                            self.port, reason_code)
            self._event("disconnected", str(reason_code))

    def _on_connect_fail(self, client, userdata) -> None:
        # logged once per outage (ARCHITECTURE.md): the next log line is the successful reconnect
        if not self._fail_reported:
            self._fail_reported = True
            log.warning("device %s: cannot reach broker %s:%s (retrying)", self.device.id, self.host, self.port)
            self._event("error", f"cannot reach broker {self.host}:{self.port}")

    def _make_ack(self, mid: int, qos: int) -> Callable[[], None] | None:
        if qos == 0:
            return None
        gen = self._gen
        client = self.client

        def ack() -> None:
            with self._gen_lock:
                if gen != self._gen:
                    self.stale_acks += 1   # connection changed: the broker re-sends, that copy is acked
                    return
                rc = client.ack(mid, qos)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                log.debug("device %s: PUBACK %d not sent (%s); the broker will re-send", self.device.id, mid, rc)

        return ack

    def _on_message(self, client, userdata, msg) -> None:
        try:
            arrival = datetime.now(timezone.utc)
            self.received += 1
            topic = msg.topic
            payload = msg.payload
            for dec in self.decoders:
                caps = dec.topic.match(topic)
                if caps is not None:
                    out = dec.decode(topic, payload, arrival, retained=bool(msg.retain), captures=caps)
                    delivery = Delivery(readings=out.readings, rejects=out.rejects,
                                        ack=self._make_ack(msg.mid, msg.qos), upstream_retains=True)
                    break
            else:
                delivery = Delivery(rejects=[Rejection(
                    source="mqtt", device_id=self.device.id, address=topic, payload=bytes(payload[:MAX_REJECT_PAYLOAD]),
                    reason="topic_mismatch",
                    detail=f"device {self.device.id} topic {topic}: no subscription pattern matches")],
                    ack=self._make_ack(msg.mid, msg.qos), upstream_retains=True)
            self.adapter.sink.submit(delivery)
        except Exception:
            # Not swallowed: logged, and the message stays un-acked so the broker re-sends it after
            # the next reconnect. Raising here would make paho stall on this message (#867).
            log.exception("device %s: message on %s not handed to ingest", self.device.id, msg.topic)


class MqttAdapter(Adapter):
    """All MQTT devices of devices.yaml: one client (one broker session) per device entry."""
    protocol = "mqtt"

    def __init__(self, devices: Sequence, sink, *, config, settings):
        super().__init__(devices, sink, config=config, settings=settings)
        self.connections = [_Connection(self, d) for d in self.devices]

    def start(self) -> None:
        for c in self.connections:
            c.start()

    def stop(self) -> None:
        self._stopping.set()
        for c in self.connections:
            c.stop()

    def is_connected(self) -> bool:
        return all(c.connected for c in self.connections)

    def is_subscribed(self) -> bool:
        """Connected and every subscription granted: from now on the broker keeps our messages."""
        return all(c.subscribed.is_set() for c in self.connections)
