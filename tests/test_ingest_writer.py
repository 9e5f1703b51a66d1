"""ingest/writer.py and ingest/rollup.py against a real PostgreSQL: one transaction, idempotent,
acks only after the commit is visible, sensor registration and linking, counters, events, rollups."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from adapters.base import Delivery, DeviceEvent, GroupAck, Reading, Rejection, SensorMeta
from core.db import make_pool
from core.quality import Quality
from ingest.batcher import Batch
from ingest.rollup import refresh_rollups
from ingest.writer import DatabaseDown, Writer, ack_all
from tests.helpers import free_port

T0 = datetime(2026, 11, 23, 0, 0, tzinfo=timezone.utc)


def meta(h="H1", room="living", device="room-thermometers"):
    return SensorMeta(metric="room_temp", unit="C", protocol="mqtt", device_id=device, point="temp",
                      household_code=h, room_code=room)


def reading(i, h="H1", room="living", q=Quality.GOOD):
    return Reading(f"room:{h}:{room}:room_temp", T0 + timedelta(minutes=i), 20.0 + i / 10, q, meta(h, room))


@pytest.fixture
def pool(fresh_db_url):
    p = make_pool(fresh_db_url, min_size=1, max_size=2, name="test-writer")
    yield p
    p.close()


def count(url, sql="SELECT count(*) FROM readings"):
    with psycopg.connect(url) as c:
        return c.execute(sql).fetchone()[0]


def test_same_batch_twice_no_duplicates_and_ack_after_commit(pool, fresh_db_url):
    seen_at_ack = []

    def ack():   # runs after commit: another connection must already see the rows
        seen_at_ack.append(count(fresh_db_url))

    def batch():
        return Batch([Delivery(readings=[reading(i) for i in range(50)], ack=ack, upstream_retains=True),
                      Delivery(readings=[reading(i, h="H2") for i in range(50)], ack=ack, upstream_retains=True)])

    w = Writer(pool)
    s1 = w.write(batch())
    assert (s1.readings, s1.inserted, s1.acked, s1.new_sensors) == (100, 100, 2, 2)
    assert seen_at_ack == [100, 100]
    s2 = Writer(pool).write(batch())                 # a fresh writer (restart): cache empty, keys exist
    assert (s2.inserted, s2.duplicates) == (0, 100)
    assert count(fresh_db_url) == 100
    assert count(fresh_db_url, "SELECT count(*) FROM sensor") == 2
    assert count(fresh_db_url, "SELECT count(*) FROM readings_dirty") == 2       # 2 sensors, hour 00:00


def test_duplicates_inside_one_batch(pool, fresh_db_url):
    r = reading(1)
    Writer(pool).write(Batch([Delivery(readings=[r, r, r])]))
    assert count(fresh_db_url) == 1


def test_registration_links_household_room_substation(pool, fresh_db_url):
    with psycopg.connect(fresh_db_url) as c:
        c.execute("""
            INSERT INTO company (code, name) VALUES ('HDW', '滨海热力');
            INSERT INTO branch (company_id, code, name) SELECT id, 'BW1', '一分公司' FROM company WHERE code = 'HDW';
            INSERT INTO substation (branch_id, code, name) SELECT id, 'SW1', '一号站' FROM branch WHERE code = 'BW1';
            INSERT INTO community (substation_id, code, name) SELECT id, 'CW1', '小区' FROM substation WHERE code = 'SW1';
            INSERT INTO building (community_id, code, name) SELECT id, 'BDW1', '1号楼' FROM community WHERE code = 'CW1';
            INSERT INTO unit (building_id, code, name) SELECT id, 'UW1', '1单元' FROM building WHERE code = 'BDW1';
            INSERT INTO household (unit_id, code, area_m2) SELECT id, 'HW-0301', 88 FROM unit WHERE code = 'UW1';
            INSERT INTO room (household_id, code, room_type, counts_for_compliance)
                SELECT id, 'living', 'living_room', true FROM household WHERE code = 'HW-0301';
        """)
    plc = SensorMeta(metric="supply_temp_2", unit="C", protocol="modbus", device_id="SW1-plc", point="supply_temp_2",
                     substation_code="SW1")
    Writer(pool).write(Batch([Delivery(readings=[
        reading(0, h="HW-0301", room="living"), reading(0, h="HW-0301", room="bed9"), reading(0, h="NOPE"),
        Reading("SW1-plc/supply_temp_2", T0, 60.0, Quality.GOOD, plc)])]))
    with psycopg.connect(fresh_db_url) as c:
        rows = dict((k, (h is not None, r is not None, s is not None)) for k, h, r, s in c.execute(
            "SELECT key, household_id, room_id, substation_id FROM sensor").fetchall())
    assert rows == {"room:HW-0301:living:room_temp": (True, True, True),     # substation via the building chain
                    "room:HW-0301:bed9:room_temp": (True, False, True),      # unknown room: household still linked
                    "room:NOPE:living:room_temp": (False, False, False),
                    "SW1-plc/supply_temp_2": (False, False, True)}


def test_rejects_counters_and_events_in_the_same_transaction(pool, fresh_db_url):
    at = datetime.now(timezone.utc)
    b = Batch([Delivery(readings=[reading(i) for i in range(3)],
                        rejects=[Rejection("mqtt", "room-thermometers", "hd/room/H1/x/state", b"{bad\x00",
                                           "malformed_json", "device room-thermometers: bad\x00json")])],
              events=[DeviceEvent("room-thermometers", "mqtt", "connected", at),
                      DeviceEvent("S01-plc", "modbus", "gap_start", at - timedelta(seconds=30), "timeout"),
                      DeviceEvent("S01-plc", "modbus", "error", at - timedelta(seconds=30), "timeout"),
                      DeviceEvent("S01-plc", "modbus", "gap_end", at)])
    Writer(pool).write(b)
    with psycopg.connect(fresh_db_url) as c:
        assert c.execute("SELECT reason, payload FROM rejects").fetchall() == [("malformed_json", b"{bad\x00")]
        assert c.execute("SELECT device_id, protocol, readings, rejects FROM ingest_counter").fetchall() == \
            [("room-thermometers", "mqtt", 3, 1)]
        st = dict((d, (conn, err, n, seen is not None)) for d, conn, err, n, seen in c.execute(
            "SELECT device_id, connected, last_error, error_count, last_seen FROM device_status").fetchall())
        assert st["room-thermometers"] == (True, None, 0, True)
        assert st["S01-plc"] == (False, "error: timeout", 1, False)
        gap = c.execute("SELECT reason, ended_at - started_at FROM device_gap").fetchall()
        assert gap == [("timeout", timedelta(seconds=30))]


def test_failed_transaction_commits_nothing_and_does_not_ack(pool, fresh_db_url):
    acked = []
    with psycopg.connect(fresh_db_url) as c:     # a poison value this database refuses
        c.execute("ALTER TABLE readings ADD CONSTRAINT test_poison CHECK (value < 1000)")
    bad = Reading("room:H1:living:room_temp", T0, 5000.0, Quality.GOOD, meta())
    w = Writer(pool)
    with pytest.raises(psycopg.errors.CheckViolation):
        w.write(Batch([Delivery(readings=[reading(1), reading(2, h="H5")]),
                       Delivery(readings=[bad], rejects=[Rejection("mqtt", "d", "t", b"", "x")],
                                ack=lambda: acked.append(1))]), )
    assert acked == []
    assert count(fresh_db_url) == 0 and count(fresh_db_url, "SELECT count(*) FROM sensor") == 0
    assert count(fresh_db_url, "SELECT count(*) FROM rejects") == 0
    # the id cache was not polluted by the rolled-back registration
    w.write(Batch([Delivery(readings=[reading(1)])]))
    assert count(fresh_db_url) == 1


def test_database_down_is_reported_as_such():
    p = make_pool(f"postgresql://postgres@127.0.0.1:{free_port()}/x", min_size=0, max_size=1, name="down")
    try:
        with pytest.raises(DatabaseDown):
            Writer(p, timeout=1.0).write(Batch([Delivery(readings=[reading(0)])]))
    finally:
        p.close()


def test_rollup_refreshes_dirty_hours_and_late_data(pool, fresh_db_url):
    w = Writer(pool)
    w.write(Batch([Delivery(readings=[reading(i) for i in range(0, 120, 10)])]))       # 00:00..01:50
    assert refresh_rollups(fresh_db_url) == 2
    q = "SELECT bucket, count, round(mean::numeric, 3) FROM readings_hourly ORDER BY bucket"
    with psycopg.connect(fresh_db_url) as c:
        first = c.execute(q).fetchall()
    assert [r[1] for r in first] == [6, 6]
    assert count(fresh_db_url, "SELECT count(*) FROM readings_dirty") == 0
    assert refresh_rollups(fresh_db_url) == 0
    late = Reading("room:H1:living:room_temp", T0 + timedelta(minutes=5), 30.0, Quality.OUT_OF_RANGE, meta())
    w.write(Batch([Delivery(readings=[late])]))
    assert refresh_rollups(fresh_db_url) == 1
    with psycopg.connect(fresh_db_url) as c:
        rows = c.execute("SELECT count, good_count FROM readings_hourly ORDER BY bucket").fetchall()
    assert rows == [(7, 6), (6, 6)]


def test_ack_all_groups_consecutive_group_acks_in_order_and_keeps_plain_callables():
    """adapters.base.GroupAck: one group call per run of one group's acks, the order kept across groups
    and plain callables; a failing group is logged, not raised (the data is committed already)."""
    calls: list = []

    class A(GroupAck):
        __slots__ = ("group", "n")

        def __init__(self, group, n):
            self.group, self.n = group, n

    def g1(acks):
        calls.append(("g1", [a.n for a in acks]))
        return len(acks)

    def g2(acks):
        calls.append(("g2", [a.n for a in acks]))
        return len(acks)

    def broken(acks):
        raise RuntimeError("socket gone")

    def plain():
        calls.append(("plain", None))

    ds = [Delivery(ack=A(g1, 1)), Delivery(ack=A(g1, 2)), Delivery(), Delivery(ack=A(g2, 3)),
          Delivery(ack=plain), Delivery(ack=A(g1, 4)), Delivery(ack=A(broken, 5)), Delivery(ack=A(g1, 6))]
    assert ack_all(ds) == 6              # the broken group's ack is not counted
    assert calls == [("g1", [1, 2]), ("g2", [3]), ("plain", None), ("g1", [4]), ("g1", [6])]
    calls.clear()
    A(g2, 7)()                           # called on its own, a GroupAck acks itself through its group
    assert calls == [("g2", [7])]
