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
* on_message is tiny and never raises (#867, #328): decode (pure, adapters/payload.py) → submit;
* keep-alive that survives overload (``_IngestClient``): traffic counts as keep-alive, and a
  PINGRESP queued behind PUBLISH data is late, not lost (docs/ingest.md, "Keep-alive under
  sustained overload").

Acks are tagged with the connection generation: after a reconnect the broker re-sends every
un-acked message with its old packet id, and an ack from the previous connection could otherwise
acknowledge an unrelated message that reused the id. Stale acks are dropped; the re-sent copy is
committed again (ON CONFLICT DO NOTHING) and acked on the current connection.
"""
from __future__ import annotations

import logging
import struct
import threading
import time
from datetime import datetime, timezone
from typing import Callable, Sequence
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from adapters.base import Adapter, Delivery, DeviceEvent, GroupAck, Rejection
from adapters.config import DevicesConfigError, MqttDevice
from adapters.payload import MAX_REJECT_PAYLOAD, SubscriptionDecoder, decoders_for_device

log = logging.getLogger(__name__)

#: QoS 1 messages the broker may send before our PUBACKs: four 5 000-row batches, enough to keep a
#: batch committing while the next fills. Below the MQTT 5 maximum (65 535) so that a reconnect's
#: redeliveries on top of held originals stay far below ingest's 100 000-delivery lane. Note: it
#: does NOT bound what a PINGRESP waits behind — measured on Mosquitto 2.0.11 with a consumer that
#: acks, ~5 MB (~55 000 PUBLISH) sat unread on the socket with ReceiveMaximum 2 000 as with 20 000;
#: _IngestClient handles that.
RECEIVE_MAXIMUM = 20_000
KEEPALIVE_S = 30
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30


#: a PUBACK's first two bytes (type, remaining length 2) above its 16-bit packet id, as one big-endian word
_PUBACK_HEAD = (mqtt.PUBACK << 24) | (2 << 16)

#: packets handled per read event, and the time they may take, before the loop services writes
#: (PUBACKs) and keep-alive again — a consumer that blocks in on_message must still ping in time
READ_BURST = 512
READ_BURST_S = 0.05
#: bytes asked of the kernel per recv() (paho asks 1, 1 and the body length for every packet)
RECV_CHUNK = 65536


class _ReadBufferedSocket:
    """A connected socket (plain or TLS) whose ``recv`` fetches up to RECV_CHUNK bytes at once.

    paho 2.2.0 reads each packet with at least three ``recv`` calls (the command byte, every byte of
    the remaining length, then the body), one packet per ``select``. Here the small reads are served
    from one large read. ``pending()`` reports the buffered bytes: paho's loop already asks it of TLS
    sockets and then neither blocks in ``select`` nor skips the read, so buffered packets are never
    left waiting for the kernel to signal new data. Everything else is the wrapped socket's.
    """

    __slots__ = ("_sock", "_buf", "_pos")

    def __init__(self, sock):
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            data = self._sock.recv(max(n, RECV_CHUNK))      # BlockingIOError / b"" (EOF) as the socket's
            if len(data) <= n:
                return data
            self._buf, self._pos = data, n
            return data[:n]
        end = min(pos + n, len(buf))
        self._pos = end
        return buf[pos:end]

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self._buf) - self._pos + (inner() if inner is not None else 0)

    def send(self, data) -> int:
        return self._sock.send(data)

    def fileno(self) -> int:
        return self._sock.fileno()

    def __getattr__(self, name: str):
        if name in _ReadBufferedSocket.__slots__:   # not set yet: no recursion through self._sock
            raise AttributeError(name)
        return getattr(self._sock, name)


_PROPERTIES_SLOT = mqtt.MQTTMessage.properties        # the slot paho's MQTTMessage keeps them in


class _ReceivedV5Message(mqtt.MQTTMessage):
    """An MQTT 5 PUBLISH that carried no properties: its (empty) ``Properties`` object is made when
    first asked for, as paho would have made it up front — we never ask."""
    __slots__ = ()

    @property
    def properties(self) -> Properties:
        props = _PROPERTIES_SLOT.__get__(self)
        if props is None:
            props = Properties(PacketTypes.PUBLISH)
            _PROPERTIES_SLOT.__set__(self, props)
        return props

    @properties.setter
    def properties(self, value: Properties | None) -> None:
        _PROPERTIES_SLOT.__set__(self, value)


def decode_plain_publish(command: int, packet: bytes | bytearray, protocol: int) -> mqtt.MQTTMessage | None:
    """The common PUBLISH — QoS 0 or 1, a topic name, and in MQTT 5 no properties — decoded straight
    into paho's message type; None for anything else (QoS 2, properties, an empty topic or a topic
    alias, a truncated packet), which paho's own ``decode_publish`` then handles, errors included.

    Why: paho 2.2.0 builds and parses a ``Properties`` object for every MQTT 5 PUBLISH through
    ``struct`` formats made per call — 12 µs a message here, a third of the network thread's time
    at the protocol ceiling (py-spy, ``heatdesk bench ingest``), and the thread is what limits both
    the ceiling and end-to-end ingest. Thermometers send no properties."""
    qos = (command & 0x06) >> 1
    n = len(packet)
    if qos > 1 or n < 2:
        return None
    slen = (packet[0] << 8) | packet[1]
    pos = 2 + slen
    if slen == 0:
        return None
    mid = 0
    if qos:
        if n < pos + 2:
            return None
        mid = (packet[pos] << 8) | packet[pos + 1]
        pos += 2
    if protocol == mqtt.MQTTv5:
        if n <= pos or packet[pos] != 0:       # property length 0 is the single byte 0x00
            return None
        pos += 1
        msg: mqtt.MQTTMessage = _ReceivedV5Message(mid, bytes(packet[2:2 + slen]))
    else:
        if n < pos:
            return None
        msg = mqtt.MQTTMessage(mid, bytes(packet[2:2 + slen]))
    msg.dup = bool(command & 0x08)
    msg.qos = qos
    msg.retain = bool(command & 0x01)
    msg.payload = bytes(packet[pos:])
    return msg


class _IngestClient(mqtt.Client):
    """paho's Client with a keep-alive that does not kill a busy connection, and cheaper I/O.

    paho-mqtt 2.2.0 (pinned in pyproject.toml; this overrides private methods ``_sock_send``,
    ``_send_pingreq``, ``_handle_pingresp``, ``_create_socket``, ``_packet_queue``, ``_packet_write``,
    ``_handle_publish`` and ``_handle_on_message`` and the public ``loop_misc``, ``loop_read``, ``ack``
    and ``reconnect``, guarded by tests/test_mqtt_keepalive.py, tests/test_mqtt_io.py,
    tests/test_mqtt_publish_decode.py and tests/test_adapters_mqtt.py) has two behaviours that together
    dropped our connection every 60–90 s whenever the publisher outran us (docs/ingest.md):

    1. ``_packet_write`` returns from inside its loop before refreshing ``_last_msg_out``, so a
       PINGREQ goes out every keep-alive period however many PUBACKs we send (paho #813; MQTT-3.1.2-20
       says PINGREQ only "in the absence of sending any other Control Packets"). Fixed here by
       counting every successful socket write as outgoing activity (``_sock_send``).
    2. ``loop_misc`` closes the connection when a PINGRESP is not *processed* within the keep-alive,
       even while PUBLISH packets keep arriving. Under overload the broker queues the PINGRESP behind
       everything it has queued for us — measured 12 s growing to 105 s as the backlog grew, at
       6.5 k/s — so a slow consumer looked dead although bytes never stopped (cf. paho.mqtt.c #570, "premature
       PINGRESP not received"). Whether stock paho then disconnects or re-pings is a race (an
       iteration landing between ``_check_keepalive``'s clock read and ``_send_pingreq`` setting
       ``_ping_t``, a window widened when the ingest thread holds the GIL), hence "every 60–90 s"
       rather than on every late PINGRESP. Here a link is dead only when a PINGREQ is outstanding
       and *nothing* has arrived for a keep-alive period — paho's own rule in ``_check_keepalive``;
       the "PINGRESP late although data flows" rule is dropped (``loop_misc``).

    A dead broker or a half-open link is still detected: no bytes for a keep-alive → PINGREQ → no
    bytes for another keep-alive → "Keep alive timeout" and reconnect. The broker's side is kept as
    well: it hears a packet from us (PUBACK or PINGREQ) at least every keep-alive period.

    I/O (measured with py-spy on ``heatdesk bench ingest``'s protocol phase, stock paho: ~7 system calls
    per message — three ``recv``, a ``select``, a wake-up byte on the socket pair and its read for every
    PUBACK, and one ``send`` per PUBACK — which was most of the network thread's time):

    * reads go through ``_ReadBufferedSocket`` and ``loop_read`` handles up to READ_BURST packets per
      read event instead of one;
    * ``ack`` (QoS 1) appends the 4-byte PUBACK to a buffer and wakes the network thread only when the
      buffer was empty; the thread sends the whole buffer in one write (``_packet_write``). Any other
      packet queued (SUBSCRIBE of the ack barrier, DISCONNECT) first moves the buffered PUBACKs ahead
      of itself, so the order the broker sees is the order we acked in; a reconnect discards them with
      paho's own queue (their packet ids belong to the old connection);
    * a PUBLISH without MQTT 5 properties is decoded without paho's ``Properties`` parser
      (``decode_plain_publish``; tests/test_mqtt_publish_decode.py checks it against paho's decoder).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pings_sent = 0
        self.pingresp_max_wait_s = 0.0     # longest PINGREQ → PINGRESP seen (how deep the broker's queue was)
        self._acks = bytearray()           # PUBACKs not yet handed to paho's outgoing queue
        self._acks_lock = threading.Lock()

    # -- reads ------------------------------------------------------------------------------------------
    def _create_socket(self):
        sock = super()._create_socket()
        return sock if self._transport == "websockets" else _ReadBufferedSocket(sock)

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        """Handle the packets already received, up to READ_BURST or READ_BURST_S (paho: one per call)."""
        until = time.monotonic() + READ_BURST_S
        for _ in range(READ_BURST):
            if self._sock is None:
                return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == mqtt.MQTTErrorCode.MQTT_ERR_AGAIN or time.monotonic() > until:
                break
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        """paho's PUBLISH handling for QoS 0/1 without paho's property decoding (decode_plain_publish);
        every other PUBLISH goes through paho's own."""
        msg = decode_plain_publish(self._in_packet["command"], self._in_packet["packet"], self._protocol)
        if msg is None:
            return super()._handle_publish()
        if self.on_log is not None or self._logger is not None:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received PUBLISH (d%d, q%d, r%d, m%d), %r, ...  (%d bytes)",
                           msg.dup, msg.qos, msg.retain, msg.mid, msg._topic, len(msg.payload))
        msg.timestamp = mqtt.time_func()
        self._handle_on_message(msg)
        if msg.qos == 1 and not self._manual_ack:
            return self._send_puback(msg.mid)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        """paho's dispatch without its topic-filter lookup when no per-topic callback exists (we never add
        one). ``MQTTMatcher.iter_match`` builds a self-referencing closure for every message: ~6 objects of
        cyclic garbage per PUBLISH (measured with gc.DEBUG_SAVEALL: 122 282 objects for 20 000
        messages), which only the cycle collector can free — the main cause of the collector's load."""
        root = self._on_message_filtered._root
        if root._children or root._content is not None:
            return super()._handle_on_message(message)
        with self._callback_mutex:
            on_message = self.on_message
        if on_message:
            with self._in_callback_mutex:
                try:
                    on_message(self, self._userdata, message)
                except Exception as err:
                    self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                    if not self.suppress_exceptions:
                        raise

    # -- PUBACKs ----------------------------------------------------------------------------------------
    def ack(self, mid: int, qos: int) -> mqtt.MQTTErrorCode:
        if qos != 1 or not self._manual_ack:
            return super().ack(mid, qos)
        return self._buffer_acks(struct.pack("!BBH", mqtt.PUBACK, 2, mid))

    def ack_many(self, mids: list[int]) -> mqtt.MQTTErrorCode:
        """``ack(mid, 1)`` for each of ``mids``, in order, under one lock and one buffer append (QoS 1 with
        manual acks, as _Connection makes its clients)."""
        if not mids:
            return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        return self._buffer_acks(struct.pack(f"!{len(mids)}I", *[_PUBACK_HEAD | mid for mid in mids]))

    def _buffer_acks(self, pubacks: bytes) -> mqtt.MQTTErrorCode:
        """Append PUBACK packets to the buffer the network thread sends; wake it if the buffer was empty."""
        if self._sock is None:
            return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN     # the broker re-sends them on the next connection
        with self._acks_lock:
            wake = not self._acks
            self._acks += pubacks
        if wake:
            w = self._sockpairW
            if w is not None:
                try:
                    w.send(b"0")
                except (BlockingIOError, OSError):
                    pass                   # a wake-up byte is already waiting, or the loop is gone
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _move_acks(self) -> None:
        with self._acks_lock:
            if not self._acks:
                return
            acks, self._acks = self._acks, bytearray()
            # one PUBACK-typed packet carrying many: paho's write path does nothing after a PUBACK
            self._out_packet.append({"command": mqtt.PUBACK, "mid": 0, "qos": 0, "pos": 0,
                                     "to_process": len(acks), "packet": acks, "info": None})

    def _packet_queue(self, command, packet, mid, qos, info=None) -> mqtt.MQTTErrorCode:
        self._move_acks()                  # PUBACKs acked before this packet go out before it
        return super()._packet_queue(command, packet, mid, qos, info)

    def _packet_write(self) -> mqtt.MQTTErrorCode:
        self._move_acks()
        return super()._packet_write()

    def reconnect(self) -> mqtt.MQTTErrorCode:
        with self._acks_lock:
            self._acks = bytearray()       # packet ids of the old connection: never valid on the new one
        return super().reconnect()

    # -- keep-alive -------------------------------------------------------------------------------------

    def _sock_send(self, buf: bytes | bytearray) -> int:
        n = super()._sock_send(buf)
        if n > 0:
            with self._msgtime_mutex:
                self._last_msg_out = mqtt.time_func()
        return n

    def _send_pingreq(self) -> mqtt.MQTTErrorCode:
        pending = self._ping_t
        rc = super()._send_pingreq()
        if pending:
            self._ping_t = pending        # a PINGREQ was already outstanding: measure from the first one
        self.pings_sent += 1
        return rc

    def _handle_pingresp(self) -> mqtt.MQTTErrorCode:
        if self._ping_t:
            self.pingresp_max_wait_s = max(self.pingresp_max_wait_s, mqtt.time_func() - self._ping_t)
        return super()._handle_pingresp()

    def loop_misc(self) -> mqtt.MQTTErrorCode:
        """paho's loop_misc without the "PINGRESP overdue" disconnect: ``_check_keepalive`` sends
        PINGREQs and closes the link after a keep-alive period of silence with a PINGREQ outstanding."""
        if self._sock is None:
            return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
        self._check_keepalive()
        if self._sock is None:
            return mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS


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


class _Ack(GroupAck):
    """The PUBACK of one QoS 1 message, born in connection generation ``gen``; ingest acks a batch's
    worth together through ``group`` (_Connection._ack_group)."""
    __slots__ = ("group", "gen", "mid")

    def __init__(self, group, gen: int, mid: int):
        self.group, self.gen, self.mid = group, gen, mid


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
        self._ack_group = self._ack_many  # one bound method: ingest groups acks by its identity
        self.connected = False
        self._fail_reported = False
        self.received = 0
        self.stale_acks = 0               # acks dropped because the connection changed since the message
        self.disconnects = 0              # unexpected disconnects (each followed by a reconnect)
        self.keepalive_timeouts = 0       # of which paho's client-side "Keep alive timeout"
        #: set when the broker granted every subscription of this connection (cleared on disconnect)
        self.subscribed = threading.Event()

        self._tls = tls
        # MQTT 3.1.1 when configured (settings.mqtt_protocol): `heatdesk up` does so for the embedded amqtt
        # broker, which does not answer an MQTT 5 CONNECT at all (so there is nothing to fall back on)
        self.protocol = mqtt.MQTTv311 if adapter.settings.mqtt_protocol == "3.1.1" else mqtt.MQTTv5
        self.client = self._new_client()

    def _new_client(self) -> "_IngestClient":
        v5 = self.protocol == mqtt.MQTTv5
        # 3.1.1 has no clean_start/SessionExpiry: clean_session=False is its persistent session
        c = _IngestClient(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                          protocol=self.protocol, manual_ack=True, **({} if v5 else {"clean_session": False}))
        if self.device.username:
            c.username_pw_set(self.device.username, self.device.password)
        if self._tls:
            c.tls_set()
        c.reconnect_delay_set(min_delay=RECONNECT_MIN_S, max_delay=RECONNECT_MAX_S)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        return c

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = int(self.adapter.settings.mqtt_session_expiry_s)
            props.ReceiveMaximum = RECEIVE_MAXIMUM
            # clean_start=False even on the first connect: a restarted ingest resumes its session
            self.client.connect_async(self.host, self.port, keepalive=KEEPALIVE_S, clean_start=False,
                                      properties=props)
        else:
            self.client.connect_async(self.host, self.port, keepalive=KEEPALIVE_S)
        self.client.loop_start()

    def _subscribe(self, client) -> None:
        # QoS 1; retain_handling=1 (MQTT 5): retained messages only when the subscription is new, not on
        # every reconnect (a retained value re-sent on each reconnect would look like a fresh measurement).
        # MQTT 3.1.1 has no such option: a re-sent retained value is a duplicate the unique key drops.
        if self.protocol == mqtt.MQTTv5:
            opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
            client.subscribe([(f, opts) for f in self.filters])
        else:
            client.subscribe([(f, 1) for f in self.filters])

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
        self._subscribe(self.client)
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
        self._subscribe(client)
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
                self.disconnects += 1
                if str(reason_code) == "Keep alive timeout":
                    self.keepalive_timeouts += 1
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
        if qos == 1:
            return _Ack(self._ack_group, self._gen, mid)
        gen = self._gen
        client = self.client

        def ack() -> None:                 # QoS 2 (never asked for: we subscribe at QoS 1)
            with self._gen_lock:
                if gen != self._gen:
                    self.stale_acks += 1
                    return
                rc = client.ack(mid, qos)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                log.debug("device %s: PUBACK %d not sent (%s); the broker will re-send", self.device.id, mid, rc)

        return ack

    def _ack_many(self, acks: list[_Ack]) -> int:
        """PUBACK every ack of the current connection generation, in order. Older ones are stale: the
        connection they came on is gone and the broker re-sends those messages, whose copies are
        committed again (ON CONFLICT DO NOTHING) and acked on this connection."""
        with self._gen_lock:
            gen = self._gen
            mids = [a.mid for a in acks if a.gen == gen]
            self.stale_acks += len(acks) - len(mids)
            rc = self.client.ack_many(mids)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            log.debug("device %s: %d PUBACKs not sent (%s); the broker will re-send", self.device.id, len(mids), rc)
        return len(acks)

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

    def counters(self) -> dict:
        """Connection health summed over devices (bench and status): unexpected disconnects, of which
        client-side keep-alive timeouts, PINGREQs sent and the longest PINGRESP wait."""
        cs = self.connections
        return {"disconnects": sum(c.disconnects for c in cs),
                "keepalive_timeouts": sum(c.keepalive_timeouts for c in cs),
                "stale_acks": sum(c.stale_acks for c in cs),
                "pings_sent": sum(c.client.pings_sent for c in cs),
                "pingresp_max_wait_s": round(max((c.client.pingresp_max_wait_s for c in cs), default=0.0), 1)}

    def is_subscribed(self) -> bool:
        """Connected and every subscription granted: from now on the broker keeps our messages."""
        return all(c.subscribed.is_set() for c in self.connections)
