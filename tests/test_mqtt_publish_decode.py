"""adapters.mqtt.decode_plain_publish against paho's own PUBLISH decoder.

The fast path must give exactly what paho gives for the packets it takes, and hand every other packet
(QoS 2, MQTT 5 properties, empty topic, truncated) back to paho by returning None."""
from __future__ import annotations

import struct

import paho.mqtt.client as mqtt
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters.mqtt import decode_plain_publish

V5, V311 = mqtt.MQTTv5, mqtt.MQTTv311


def _publish(topic: bytes, qos: int, mid: int, payload: bytes, *, v5: bool, props: bytes = b"\x00",
             dup: bool = False, retain: bool = False) -> tuple[int, bytearray]:
    command = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if qos else b"")
    return command, bytearray(body + (props if v5 else b"") + payload)


def _same_as_paho(command: int, packet: bytearray, protocol: int) -> None:
    msg = decode_plain_publish(command, packet, protocol)
    assert msg is not None
    ref = _packet.decode_publish(command, bytes(packet), protocol)
    assert (msg.mid, msg._topic, msg.payload, msg.qos, msg.dup, msg.retain) == \
        (ref.mid, ref.topic, ref.payload, ref.qos, ref.dup, ref.retain)
    assert type(msg.payload) is bytes and type(msg._topic) is bytes
    if protocol == V5:
        assert isinstance(msg.properties, Properties) and msg.properties.json() == ref.properties.json()
    else:
        assert msg.properties is None and ref.properties is None


@settings(max_examples=300, deadline=None)
@given(topic=st.binary(min_size=1, max_size=300), qos=st.sampled_from([0, 1]), mid=st.integers(1, 65535),
       payload=st.binary(max_size=500), v5=st.booleans(), dup=st.booleans(), retain=st.booleans())
def test_matches_paho_for_every_plain_publish(topic, qos, mid, payload, v5, dup, retain):
    command, packet = _publish(topic, qos, mid, payload, v5=v5, dup=dup, retain=retain)
    _same_as_paho(command, packet, V5 if v5 else V311)


def test_a_thermometer_reading():
    command, packet = _publish(b"hd/room/B0001/living/state", 1, 4711, b'{"temp": 18.3}', v5=True)
    msg = decode_plain_publish(command, packet, V5)
    assert (msg.topic, msg.mid, msg.qos, msg.payload) == ("hd/room/B0001/living/state", 4711, 1, b'{"temp": 18.3}')
    _same_as_paho(command, packet, V5)


def test_properties_qos2_empty_topic_and_truncated_packets_go_to_paho():
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = 60
    with_props = props.pack()
    assert with_props != b"\x00"
    assert decode_plain_publish(*_publish(b"t", 1, 1, b"x", v5=True, props=with_props), V5) is None
    assert decode_plain_publish(*_publish(b"t", 2, 1, b"x", v5=True), V5) is None
    assert decode_plain_publish(*_publish(b"", 1, 1, b"x", v5=True), V5) is None    # topic alias / v3 error
    command, packet = _publish(b"topic", 1, 1, b"", v5=True)
    for cut in range(len(packet)):                 # every truncation short of the property byte
        assert decode_plain_publish(command, packet[:cut], V5) is None
    command, packet = _publish(b"topic", 1, 1, b"", v5=False)
    for cut in range(len(packet) - 1):
        assert decode_plain_publish(command, packet[:cut], V311) is None


@settings(max_examples=300, deadline=None)
@given(command=st.integers(0x30, 0x3F), packet=st.binary(max_size=64), v5=st.booleans())
def test_arbitrary_bytes_are_either_handed_back_or_decoded_as_paho_does(command, packet, v5):
    protocol = V5 if v5 else V311
    msg = decode_plain_publish(command, bytearray(packet), protocol)
    if msg is not None:
        _same_as_paho(command, bytearray(packet), protocol)
