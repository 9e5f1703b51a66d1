"""The MQTT adapter's own I/O path (adapters/mqtt.py: _ReadBufferedSocket, read bursts, coalesced
PUBACKs): the bytes paho reads are the bytes sent, PUBACKs go out in few writes and all reach the
broker in order, and buffered PUBACKs never outlive their connection. Real sockets, real Mosquitto."""
from __future__ import annotations

import socket
import struct

import paho.mqtt.client as mqtt

from adapters.mqtt import RECV_CHUNK, _IngestClient, _ReadBufferedSocket
from tests.helpers import wait_for
from tests.test_adapters_mqtt import client_id, make, publish  # noqa: F401 (client_id: a fixture)


def _pair() -> tuple[_ReadBufferedSocket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    return _ReadBufferedSocket(a), b


def test_buffered_reads_return_the_stream_in_order():
    r, w = _pair()
    try:
        packets = [bytes([0x30, 3]) + b"abc", bytes([0x30, 1]) + b"z", bytes([0x40, 2, 0, 7])]
        w.sendall(b"".join(packets))
        wait_for(lambda: r.pending() > 0 or _readable(r), 5)
        got = []
        for p in packets:                       # as paho reads: command, length, body
            cmd = r.recv(1)
            ln = r.recv(1)
            body = r.recv(ln[0])
            got.append(cmd + ln + body)
        assert got == packets
        assert r.pending() == 0
        try:
            r.recv(1)
            raise AssertionError("an empty non-blocking socket must raise BlockingIOError")
        except BlockingIOError:
            pass
        w.close()
        wait_for(lambda: _readable(r), 5)
        assert r.recv(1) == b""                 # EOF passes through: paho treats it as connection lost
    finally:
        r.close()


def test_buffered_reads_report_what_they_hold_and_serve_short_reads():
    r, w = _pair()
    try:
        data = bytes(range(256)) * (2 * RECV_CHUNK // 256 + 1)
        w.sendall(data[:100])
        wait_for(lambda: _readable(r), 5)
        assert r.recv(1) == data[:1]
        assert r.pending() == 99                # held in the buffer, not in the kernel: select can't see it
        assert r.recv(500) == data[1:100]       # a short read, as a socket would give
        assert r.pending() == 0
    finally:
        r.close()
        w.close()


def _record_calls(obj, name: str, record) -> list:
    """Replace obj.<name> by a wrapper that appends record(*args) to the returned list, then calls it."""
    calls: list = []
    real = getattr(obj, name)

    def wrapper(*args):
        calls.append(record(*args))
        return real(*args)

    setattr(obj, name, wrapper)
    return calls


def _readable(sock) -> bool:
    import select
    return bool(select.select([sock], [], [], 0)[0])


def test_pubacks_are_coalesced_and_all_applied(topic_prefix, mqtt_url, tmp_path, client_id):
    """2 000 messages acked one by one go out in far fewer socket writes, and the broker applies every
    one of them: the same session, resumed, gets nothing back."""
    ad, sink = make(topic_prefix, mqtt_url, tmp_path, client_id)
    writes = _record_calls(ad.connections[0].client, "_sock_send", len)
    ad.start()
    try:
        wait_for(ad.is_subscribed, 10)
        publish(mqtt_url, topic_prefix, 2000)
        wait_for(lambda: len(sink.deliveries) == 2000, 20)
        before = len(writes)
        for d in sink.deliveries:
            d.ack()
        assert ad.connections[0].ack_barrier(5), "broker applied the PUBACKs"
        ack_writes = len(writes) - before
    finally:
        ad.stop()
    assert ack_writes <= 200, f"{ack_writes} socket writes for 2000 PUBACKs"

    ad2, sink2 = make(topic_prefix, mqtt_url, tmp_path, client_id)
    ad2.start()
    try:
        wait_for(ad2.is_subscribed, 10)
        publish(mqtt_url, topic_prefix, 3, start=5000)      # a marker: the session goes on
        wait_for(lambda: len(sink2.deliveries) >= 3, 10)
        assert len(sink2.deliveries) == 3, "acked messages came back"
        for d in sink2.deliveries:
            d.ack()
    finally:
        ad2.stop()


def test_buffered_pubacks_do_not_outlive_their_connection(topic_prefix, mqtt_url, tmp_path, client_id):
    """PUBACKs still buffered when the connection is replaced carry the old connection's packet ids:
    reconnect() drops them, and the broker re-sends those messages on the new connection."""
    ad, sink = make(topic_prefix, mqtt_url, tmp_path, client_id)
    conn = ad.connections[0]
    mids = _record_calls(conn, "_make_ack", lambda mid, qos: mid)
    ad.start()
    try:
        wait_for(ad.is_subscribed, 10)
        publish(mqtt_url, topic_prefix, 10)
        wait_for(lambda: len(sink.deliveries) == 10, 10)
        client = conn.client
        client.loop_stop()                      # the network thread is gone: acks stay buffered
        for mid in mids[:10]:
            client.ack(mid, 1)
        assert len(client._acks) == 4 * 10
        sent = _record_calls(client, "_sock_send", bytes)
        client.reconnect()
        assert len(client._acks) == 0
        # the new connection starts with its CONNECT, not with the old connection's PUBACKs
        assert sent and sent[0][0] & 0xF0 == mqtt.CONNECT, [b[:1] for b in sent]
        client.loop_start()
        wait_for(lambda: len(sink.deliveries) >= 20, 15, message="re-sent after the reconnect")
        for d in sink.deliveries[10:]:
            d.ack()
        assert ad.connections[0].ack_barrier(5)
    finally:
        ad.stop()


def test_ack_without_a_connection_is_refused():
    """No socket: the PUBACK is not buffered for some later connection (the broker re-sends instead)."""
    ic = _IngestClient(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    assert ic.ack(1, 1) == mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
    assert len(ic._acks) == 0


def test_ack_many_buffers_the_same_bytes_as_acking_one_by_one():
    """ingest acks a batch's PUBACKs in one call (adapters.base.GroupAck): same bytes, same order."""
    a, b = socket.socketpair()
    try:
        one, many = (_IngestClient(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                   manual_ack=True) for _ in range(2))
        for ic in (one, many):
            ic._sock = a                          # "connected": acks are buffered, not refused
        mids = [1, 2, 300, 65535, 7]
        for mid in mids:
            one.ack(mid, 1)
        assert many.ack_many(mids) == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        assert bytes(many._acks) == bytes(one._acks) == b"".join(struct.pack("!BBH", 0x40, 2, m) for m in mids)
        assert many.ack_many([]) == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and len(many._acks) == 20
        for ic in (one, many):
            ic._sock = None
        assert many.ack_many([9]) == mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN and len(many._acks) == 20
    finally:
        a.close()
        b.close()


def test_dispatch_leaves_no_cyclic_garbage(topic_prefix, mqtt_url, tmp_path, client_id):
    """paho's stock dispatch builds a self-referencing closure per message (MQTTMatcher.iter_match):
    ~6 objects only the cycle collector frees. Ours dispatches without it when no per-topic callback
    exists: 500 messages leave (almost) nothing for the collector."""
    import gc

    ad, sink = make(topic_prefix, mqtt_url, tmp_path, client_id)
    ad.start()
    try:
        wait_for(ad.is_subscribed, 10)
        gc.collect()
        gc.disable()
        try:
            publish(mqtt_url, topic_prefix, 500)
            wait_for(lambda: len(sink.deliveries) == 500, 10)
            found = gc.collect()
        finally:
            gc.enable()
        for d in sink.deliveries:
            d.ack()
        assert ad.connections[0].ack_barrier(5)
    finally:
        ad.stop()
    assert found < 300, f"{found} objects of cyclic garbage after 500 messages"


def test_per_topic_callbacks_still_dispatch(topic_prefix, mqtt_url, tmp_path, client_id):
    """A client with a message_callback_add filter goes through paho's own dispatch."""
    ad, sink = make(topic_prefix, mqtt_url, tmp_path, client_id)
    got = []
    ad.connections[0].client.message_callback_add(f"{topic_prefix}/room/+/living/state",
                                                  lambda c, u, m: got.append(m.topic))
    ad.start()
    try:
        wait_for(ad.is_subscribed, 10)
        publish(mqtt_url, topic_prefix, 3)
        wait_for(lambda: len(got) == 3, 10)
        assert len(sink.deliveries) == 0        # paho: a filtered callback replaces on_message
    finally:
        ad.stop()
