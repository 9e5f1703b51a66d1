"""adapters/payload.py: topic patterns and payload decoding, by tables of real-market formats,
plus property tests: arbitrary bytes never raise — always readings or a rejection with a reason."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.config import DevicesConfigError, PayloadMapping, load_devices
from adapters.payload import SubscriptionDecoder, compile_path, compile_topic, decoders_for_device
from core.quality import Quality

ROOT = Path(__file__).resolve().parent.parent
ARRIVAL = datetime(2026, 11, 23, 0, 0, 30, tzinfo=timezone.utc)        # 08:00:30 in Shanghai
CST = timezone(timedelta(hours=8))


# -- topics -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern, filt, topic, captures", [
    ("hd/room/{household}/{room}/state", "hd/room/+/+/state", "hd/room/H1/living/state",
     {"household": "H1", "room": "living"}),
    ("hd/room/{household}/{room}/state", "hd/room/+/+/state", "hd/room/H1/living/other", None),
    ("hd/room/{household}/{room}/state", "hd/room/+/+/state", "hd/room/H1/state", None),
    ("hd/{household}_{room}/t", "hd/+/t", "hd/S01-C1-0301_bed1/t", {"household": "S01-C1-0301", "room": "bed1"}),
    ("hd/{household}_{room}/t", "hd/+/t", "hd/nounderscore/t", None),
    ("zigbee2mqtt/th_{household}_{room}", "zigbee2mqtt/+", "zigbee2mqtt/th_H7_kitchen",
     {"household": "H7", "room": "kitchen"}),
    ("hd/+/{household}/#", "hd/+/+/#", "hd/x/H2/a/b/c", {"household": "H2"}),
    ("hd/+/{household}/#", "hd/+/+/#", "hd/x/H2", {"household": "H2"}),          # '#' matches the parent
    ("tele/{household}/SENSOR", "tele/+/SENSOR", "tele/H3/SENSOR", {"household": "H3"}),
    ("#", "#", "any/thing", {}),
    ("hd/{household}/state", "hd/+/state", "hd//state", None),                   # empty capture
])
def test_topic_patterns(pattern, filt, topic, captures):
    tp = compile_topic(pattern)
    assert tp.filter == filt
    assert tp.match(topic) == captures


@pytest.mark.parametrize("bad", ["a/#/b", "a/b+/c", "a/{x}/{x}", "a/{x", ""])
def test_bad_topic_patterns_are_config_errors(bad):
    with pytest.raises(DevicesConfigError):
        compile_topic(bad)


@pytest.mark.parametrize("path, steps", [
    ("temp", ("temp",)), ("data[0].v", ("data", 0, "v")), ("DS18B20.Temperature", ("DS18B20", "Temperature")),
    ("a[1][2].b", ("a", 1, 2, "b")), ("[0]", (0,)), ("a.b.c", ("a", "b", "c")),
])
def test_paths(path, steps):
    assert compile_path(path) == steps


# -- the three vendor profiles of devices.yaml ------------------------------------------------------

@pytest.fixture(scope="module")
def vendor():
    cfg = load_devices(ROOT / "devices.yaml", env={"HEATDESK_TOPIC_ROOT": "hd"})
    dev = cfg.by_protocol("mqtt")[0]
    a, b, c = decoders_for_device(dev, cfg)
    return {"a": a, "b": b, "c": c}


def test_vendor_a_iso_with_offset(vendor):
    out = vendor["a"].decode("hd/room/H1/living/state",
                             b'{"temp": 21.4, "ts": "2026-11-23T08:00:00+08:00", "bat": 87}', ARRIVAL)
    assert out.rejects == []
    (r,) = out.readings
    assert r.sensor == "room:H1:living:room_temp"
    assert r.value == 21.4 and r.quality == Quality.GOOD
    assert r.ts == datetime(2026, 11, 23, 0, 0, tzinfo=timezone.utc)
    assert (r.meta.household_code, r.meta.room_code, r.meta.metric, r.meta.unit) == ("H1", "living", "room_temp", "C")


def test_vendor_b_batch_epoch_ms_scaled(vendor):
    t = int(datetime(2026, 11, 23, 0, 0, tzinfo=timezone.utc).timestamp() * 1000)
    msg = orjson.dumps({"dev": "gw-17", "data": [{"room": "living", "t": t, "v": 214},
                                                  {"room": "bed1", "t": t, "v": 198},
                                                  {"room": "bed2", "t": t, "v": "err"},
                                                  {"t": t, "v": 200}]})
    out = vendor["b"].decode("hd/gw/H9/up", msg, ARRIVAL)
    got = {r.sensor: round(r.value, 6) for r in out.readings}
    assert got == {"room:H9:living:room_temp": 21.4, "room:H9:bed1:room_temp": 19.8}
    assert sorted(j.reason for j in out.rejects) == ["missing_field", "not_a_number"]
    assert all("room-thermometers" in j.detail and "hd/gw/H9/up" in j.detail for j in out.rejects)
    assert any("item 2" in j.detail and "'v'" in j.detail for j in out.rejects)


def test_vendor_c_plain_fahrenheit_uses_arrival_time(vendor):
    out = vendor["c"].decode("hd/raw/H1/bed1/temperature", b" 70.7\n", ARRIVAL)
    (r,) = out.readings
    assert round(r.value, 3) == round((70.7 - 32) * 5 / 9, 3)
    assert r.ts == ARRIVAL and r.quality == Quality.GOOD
    retained = vendor["c"].decode("hd/raw/H1/bed1/temperature", b"70.7", ARRIVAL, retained=True)
    assert retained.readings[0].quality == Quality.UNCERTAIN      # a retained value has unknown age


# -- more formats, as tables ---------------------------------------------------------------------------

def _dec(mapping: dict, topic="t/{household}/{room}", key="room:{household}:{room}:{metric}") -> SubscriptionDecoder:
    return SubscriptionDecoder(device_id="dev1", topic=topic, mapping=PayloadMapping.model_validate(mapping),
                               sensor_key=key)


ZIGBEE = {"fields": [{"path": "temperature", "metric": "room_temp"},
                     {"path": "humidity", "metric": "humidity", "unit": "raw", "optional": True}]}
TASMOTA = {"fields": [{"path": "DS18B20.Temperature"}], "timestamp": {"path": "Time"}}
NESTED = {"fields": [{"path": "data[0].v"}], "timestamp": {"path": "data[0].t", "format": "auto"}}
KELVIN = {"fields": [{"path": "t", "unit": "K"}]}
SCALED = {"fields": [{"path": "raw", "scale": 0.01, "offset": -10}]}
EPOCH_S = {"fields": [{"path": "t"}], "timestamp": {"path": "ts", "format": "epoch_s"}}
MULTIROOM = {"fields": [{"path": "living", "room": "living"}, {"path": "bed", "room": "bed1", "optional": True}]}
NUMBER = {"format": "number", "fields": [{"metric": "room_temp"}]}
ITEMS_ROOM = {"items": "rooms", "room_path": "id", "fields": [{"path": "t"}], "timestamp": {"path": "ts"}}

NOW_S = int(ARRIVAL.timestamp())

CASES = [
    # name, mapping, topic, payload, expected readings {key: value} or None, expected reject reasons
    ("zigbee2mqtt no timestamp", ZIGBEE, "t/H1/living", b'{"temperature":21.3,"humidity":40,"battery":90}',
     {"room:H1:living:room_temp": 21.3, "room:H1:living:humidity": 40.0}, []),
    ("zigbee2mqtt optional absent", ZIGBEE, "t/H1/living", b'{"temperature":21.3,"linkquality":80}',
     {"room:H1:living:room_temp": 21.3}, []),
    ("zigbee2mqtt required absent", ZIGBEE, "t/H1/living", b'{"humidity":40}', {}, ["missing_field"]),
    ("tasmota local time", TASMOTA, "t/H1/living", b'{"Time":"2026-11-23T08:00:00","DS18B20":{"Temperature":21.4}}',
     {"room:H1:living:room_temp": 21.4}, []),
    ("tasmota sensor missing", TASMOTA, "t/H1/living", b'{"Time":"2026-11-23T08:00:00","AM2301":{"Temperature":21}}',
     {}, ["missing_field"]),
    ("nested array index", NESTED, "t/H1/bed1", orjson.dumps({"data": [{"v": 19.5, "t": NOW_S}]}),
     {"room:H1:bed1:room_temp": 19.5}, []),
    ("nested index out of range", NESTED, "t/H1/bed1", b'{"data": []}', {}, ["missing_field"]),
    ("kelvin", KELVIN, "t/H1/living", b'{"t": 294.15}', {"room:H1:living:room_temp": 21.0}, []),
    ("scale and offset", SCALED, "t/H1/living", b'{"raw": 3140}', {"room:H1:living:room_temp": 21.4}, []),
    ("numeric string value", SCALED, "t/H1/living", b'{"raw": "3140"}', {"room:H1:living:room_temp": 21.4}, []),
    ("boolean is not a number", KELVIN, "t/H1/living", b'{"t": true}', {}, ["not_a_number"]),
    ("null is not a number", KELVIN, "t/H1/living", b'{"t": null}', {}, ["not_a_number"]),
    ("object is not a number", KELVIN, "t/H1/living", b'{"t": {"v": 1}}', {}, ["not_a_number"]),
    ("string NaN", KELVIN, "t/H1/living", b'{"t": "NaN"}', {}, ["nan"]),
    ("string inf", KELVIN, "t/H1/living", b'{"t": "inf"}', {}, ["infinite"]),
    ("huge overflows", {"fields": [{"path": "raw", "scale": 10}]}, "t/H1/living", b'{"raw": 1e308}', {},
     ["infinite"]),
    ("malformed json", KELVIN, "t/H1/living", b'{"t": 21', {}, ["malformed_json"]),
    ("json NaN literal", KELVIN, "t/H1/living", b'{"t": NaN}', {}, ["malformed_json"]),
    ("top level array", KELVIN, "t/H1/living", b'[1,2]', {}, ["missing_field"]),
    ("epoch seconds", EPOCH_S, "t/H1/living", orjson.dumps({"t": 20, "ts": NOW_S}), {"room:H1:living:room_temp": 20.0}, []),
    ("epoch garbage", EPOCH_S, "t/H1/living", b'{"t": 20, "ts": "yesterday"}', {}, ["bad_timestamp"]),
    ("epoch negative", EPOCH_S, "t/H1/living", b'{"t": 20, "ts": -5}', {}, ["bad_timestamp"]),
    ("epoch absurd", EPOCH_S, "t/H1/living", b'{"t": 20, "ts": 1e300}', {}, ["bad_timestamp"]),
    ("iso garbage", TASMOTA, "t/H1/living", b'{"Time":"23/11/2026","DS18B20":{"Temperature":21.4}}', {},
     ["bad_timestamp"]),
    ("multi-room fixed rooms", MULTIROOM, "t/H1/ignored", b'{"living": 21, "bed": 19}',
     {"room:H1:living:room_temp": 21.0, "room:H1:bed1:room_temp": 19.0}, []),
    ("items with room_path", ITEMS_ROOM, "t/H1/x",
     orjson.dumps({"ts": NOW_S, "rooms": [{"id": "living", "t": 21}, {"id": 2, "t": 20}, {"id": "a b", "t": 1},
                                          {"id": True, "t": 1}]}),
     {"room:H1:living:room_temp": 21.0, "room:H1:2:room_temp": 20.0}, ["unknown_room", "unknown_room"]),
    ("items not an array", ITEMS_ROOM, "t/H1/x", b'{"rooms": {"id": 1}}', {}, ["not_an_array"]),
    ("items missing", ITEMS_ROOM, "t/H1/x", b'{"room": []}', {}, ["missing_field"]),
    ("items empty is nothing", ITEMS_ROOM, "t/H1/x", b'{"rooms": []}', {}, []),
    ("plain number", NUMBER, "t/H1/living", b"21.5", {"room:H1:living:room_temp": 21.5}, []),
    ("plain number garbage", NUMBER, "t/H1/living", b"hot", {}, ["not_a_number"]),
    ("plain number not utf-8", NUMBER, "t/H1/living", b"\xff\xfe", {}, ["bad_encoding"]),
    ("plain number empty", NUMBER, "t/H1/living", b"", {}, ["not_a_number"]),
    ("topic mismatch", KELVIN, "other/H1/living/x", b'{"t": 1}', {}, ["topic_mismatch"]),
]


@pytest.mark.parametrize("name, mapping, topic, payload, want, reasons", CASES, ids=[c[0] for c in CASES])
def test_payload_table(name, mapping, topic, payload, want, reasons):
    out = _dec(mapping).decode(topic, payload, ARRIVAL)
    assert {r.sensor: round(r.value, 6) for r in out.readings} == want
    assert sorted(j.reason for j in out.rejects) == sorted(reasons)
    for j in out.rejects:
        assert j.device_id == "dev1" and j.address == topic and j.payload == payload
        assert "dev1" in j.detail and topic in j.detail


@pytest.mark.parametrize("ts, fmt, expect_utc, quality", [
    ("2026-11-23T08:00:00+08:00", "iso8601", datetime(2026, 11, 23, 0, 0), Quality.GOOD),
    ("2026-11-23T00:00:00Z", "auto", datetime(2026, 11, 23, 0, 0), Quality.GOOD),
    ("2026-11-23T08:00:00", "auto", datetime(2026, 11, 23, 0, 0), Quality.GOOD),          # naive → Shanghai
    ("2026-11-23 08:00:00.250", "auto", datetime(2026, 11, 23, 0, 0, 0, 250000), Quality.GOOD),
    (NOW_S - 30, "auto", datetime(2026, 11, 23, 0, 0), Quality.GOOD),                    # epoch s
    ((NOW_S - 30) * 1000, "auto", datetime(2026, 11, 23, 0, 0), Quality.GOOD),          # epoch ms
    ((NOW_S - 30) * 1000, "epoch_ms", datetime(2026, 11, 23, 0, 0), Quality.GOOD),
    (str(NOW_S - 30), "auto", datetime(2026, 11, 23, 0, 0), Quality.GOOD),               # numeric string
    # Past timestamps are buffered uploads (R16: gateways upload hourly) or backfills: good.
    ("2026-11-23T00:00:00", "auto", datetime(2026, 11, 22, 16, 0), Quality.GOOD),        # 8 h in the past
    (NOW_S - 3600, "epoch_s", datetime(2026, 11, 22, 23, 0, 30), Quality.GOOD),
    # Ahead of arrival beyond max_skew_s, or older than max_age_s: the device clock is wrong.
    ("2026-11-23T16:00:00", "auto", datetime(2026, 11, 23, 8, 0), Quality.CLOCK_SKEW),  # device 8 h ahead
    (NOW_S + 3600, "epoch_s", datetime(2026, 11, 23, 1, 0, 30), Quality.CLOCK_SKEW),
    (NOW_S - 40 * 86400, "epoch_s", datetime(2026, 10, 14, 0, 0, 30), Quality.CLOCK_SKEW),
])
def test_timestamps_and_clock_skew(ts, fmt, expect_utc, quality):
    d = _dec({"fields": [{"path": "t"}], "timestamp": {"path": "ts", "format": fmt, "max_skew_s": 300}})
    out = d.decode("t/H1/living", orjson.dumps({"t": 20, "ts": ts}), ARRIVAL)
    assert out.rejects == []
    (r,) = out.readings
    assert r.ts == expect_utc.replace(tzinfo=timezone.utc)        # payload time kept even when skewed
    assert r.quality == quality


def test_sensor_key_needing_room_without_one_is_a_config_error():
    with pytest.raises(DevicesConfigError, match="room"):
        _dec({"fields": [{"path": "t"}]}, topic="t/{household}")


def test_key_template_with_captures_and_device():
    d = _dec({"fields": [{"path": "t", "metric": "supply_temp_2"}]}, topic="plant/{substation}/sensor",
             key="{device}/{substation}/{metric}")
    (r,) = d.decode("plant/S01/sensor", b'{"t": 60}', ARRIVAL).readings
    assert r.sensor == "dev1/S01/supply_temp_2" and r.meta.substation_code == "S01"


# -- properties: nothing raises ----------------------------------------------------------------------------

DECODERS = [_dec(m) for m in (ZIGBEE, TASMOTA, NESTED, KELVIN, SCALED, EPOCH_S, MULTIROOM, NUMBER, ITEMS_ROOM)]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(
        st.sampled_from(["t", "v", "ts", "Time", "data", "rooms", "id", "temperature", "humidity", "DS18B20",
                         "Temperature", "raw", "living", "bed", "x"]), children, max_size=6),
    max_leaves=30)


def _check(out, topic):
    assert isinstance(out.readings, list) and isinstance(out.rejects, list)
    for r in out.readings:
        assert r.ts.tzinfo is not None and r.value == r.value and abs(r.value) != float("inf")
    for j in out.rejects:
        assert j.reason and j.address == topic


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=200), which=st.integers(0, len(DECODERS) - 1))
def test_arbitrary_bytes_never_raise(payload, which):
    _check(DECODERS[which].decode("t/H1/living", payload, ARRIVAL), "t/H1/living")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=json_values, which=st.integers(0, len(DECODERS) - 1), retained=st.booleans())
def test_arbitrary_json_never_raises(doc, which, retained):
    payload = orjson.dumps(doc)
    out = DECODERS[which].decode("t/H1/living", payload, ARRIVAL, retained=retained)
    _check(out, "t/H1/living")
    assert out.readings or out.rejects or payload in (b"[]",) or DECODERS[which].mapping.items \
        or any(f.optional for f in DECODERS[which].mapping.fields)


@settings(max_examples=200, deadline=None)
@given(topic=st.text(max_size=40))
def test_arbitrary_topics_never_raise(topic):
    _check(DECODERS[0].decode(topic, b'{"temperature": 20}', ARRIVAL), topic)
