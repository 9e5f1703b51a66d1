"""ingest/spool.py: durable append, ordered replay, torn and corrupt frames, the size bound."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from adapters.base import Delivery, DeviceEvent, Reading, Rejection, SensorMeta
from core.quality import Quality
from ingest.spool import Spool, decode_record, encode_record


def test_append_and_replay_in_order_across_segments(tmp_path):
    sp = Spool(tmp_path, max_bytes=10**9, segment_bytes=100)
    recs = [f"record-{i:03d}".encode() * 3 for i in range(20)]
    for r in recs:
        sp.append(r)
    sp.seal()
    segs = sp.segments()
    assert len(segs) > 3                                    # rolled over
    got = [rec for seg in segs for rec in sp.read_segment(seg)]
    assert got == recs
    total = sp.bytes
    assert total == sum(p.stat().st_size for p in segs)
    for seg in segs:
        sp.remove(seg)
    assert sp.bytes == 0 and not sp and sp.segments() == []


def test_reopen_finds_earlier_segments(tmp_path):
    sp = Spool(tmp_path, max_bytes=10**9)
    sp.append(b"a")
    sp.append(b"b")
    sp.close()
    again = Spool(tmp_path, max_bytes=10**9)
    assert again.bytes > 0
    again.append(b"c")                                     # goes to a new segment after the old ones
    again.seal()
    assert [r for s in again.segments() for r in again.read_segment(s)] == [b"a", b"b", b"c"]


@pytest.mark.parametrize("damage, expect_records", [
    ("flip_payload_byte_of_second", 1),        # CRC mismatch: first record kept, rest quarantined
    ("truncate_last_frame", 2),                # torn write at the end: earlier records kept
    ("garbage_tail", 3),                       # a partial header after the last record
])
def test_corruption_is_quarantined_not_dropped(tmp_path, damage, expect_records):
    sp = Spool(tmp_path, max_bytes=10**9)
    for i in range(3):
        sp.append(f"payload-{i}".encode() * 4)
    sp.seal()
    (seg,) = sp.segments()
    data = bytearray(seg.read_bytes())
    frame = len(data) // 3
    if damage == "flip_payload_byte_of_second":
        data[frame + 12] ^= 0xFF
    elif damage == "truncate_last_frame":
        data = data[:-5]
    else:
        data += b"\x00\x00\x01"
    seg.write_bytes(bytes(data))
    sp2 = Spool(tmp_path, max_bytes=10**9)
    got = sp2.read_segment(seg)
    assert got == [f"payload-{i}".encode() * 4 for i in range(expect_records)]
    bad = seg.with_suffix(".spool.corrupt")
    assert bad.exists() and bad.stat().st_size > 0
    assert sp2.corrupt_bytes == bad.stat().st_size
    assert sp2.bytes == seg.stat().st_size                 # what remains is exactly the good part


def test_corrupt_segment_does_not_stop_later_segments(tmp_path):
    sp = Spool(tmp_path, max_bytes=10**9, segment_bytes=10)
    for i in range(3):
        sp.append(f"r{i}".encode())
    sp.seal()
    first, second, third = sp.segments()
    raw = bytearray(second.read_bytes())
    raw[-1] ^= 0x55
    second.write_bytes(bytes(raw))
    out = [r for s in sp.segments() for r in sp.read_segment(s)]
    assert out == [b"r0", b"r2"]


def test_has_room_bound(tmp_path):
    sp = Spool(tmp_path, max_bytes=100)
    while sp.has_room():
        sp.append(b"x" * 30)
    assert 100 <= sp.bytes < 100 + 38                      # overshoot at most one frame


def test_record_codec_roundtrip():
    meta = SensorMeta(metric="supply_temp_2", unit="C", protocol="modbus", device_id="S01-plc", point="supply_temp_2",
                      substation_code="S01", weather_station_code="TJ")
    ts = datetime(2026, 11, 23, 1, 2, 3, 456789, tzinfo=timezone.utc)
    d = Delivery(readings=[Reading("S01-plc/supply_temp_2", ts, 61.5, Quality.OUT_OF_RANGE, meta)],
                 rejects=[Rejection("modbus", "S01-plc", "127.0.0.1:15020/1/3", b"\x00\xff", "out_of_possible_range",
                                    "device S01-plc: 999")])
    ev = DeviceEvent("S01-plc", "modbus", "gap_start", ts, "timeout")
    back, evs = decode_record(encode_record([d], [ev]))
    assert list(back.readings) == list(d.readings)
    assert list(back.rejects) == list(d.rejects)
    assert evs == [ev]
    assert back.ack is None and back.upstream_retains is False
