"""ingest/quality.py: plausible/possible ranges, NaN, stuck values — by table."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from adapters.base import Delivery, Reading, Rejection, SensorMeta
from adapters.config import MetricRange
from core.quality import Quality
from ingest.quality import QualityStage

RANGES = {
    "room_temp": MetricRange(plausible=(5, 35), possible=(-40, 70), stuck_after_s=3600),
    "supply_temp_2": MetricRange(plausible=(15, 95), possible=(-10, 150)),
}
T0 = datetime(2026, 11, 23, tzinfo=timezone.utc)


def rd(value, metric="room_temp", sensor="s1", at=0.0, q=Quality.GOOD):
    return Reading(sensor, T0 + timedelta(seconds=at), value,
                   q, SensorMeta(metric=metric, unit="C", protocol="modbus", device_id="S01-plc", point="p"))


@pytest.mark.parametrize("value, metric, q_in, expect", [
    (21.0, "room_temp", Quality.GOOD, Quality.GOOD),
    (5.0, "room_temp", Quality.GOOD, Quality.GOOD),                      # bounds are inclusive
    (35.0, "room_temp", Quality.GOOD, Quality.GOOD),
    (4.9, "room_temp", Quality.GOOD, Quality.OUT_OF_RANGE),
    (45.0, "room_temp", Quality.GOOD, Quality.OUT_OF_RANGE),
    (-40.0, "room_temp", Quality.GOOD, Quality.OUT_OF_RANGE),
    (-40.1, "room_temp", Quality.GOOD, "out_of_possible_range"),
    (70.5, "room_temp", Quality.GOOD, "out_of_possible_range"),
    (float("nan"), "room_temp", Quality.GOOD, "nan"),
    (float("inf"), "room_temp", Quality.GOOD, "infinite"),
    (float("-inf"), "unknown_metric", Quality.GOOD, "infinite"),
    (1e9, "unknown_metric", Quality.GOOD, Quality.GOOD),                 # no range configured: no judgement
    (45.0, "room_temp", Quality.CLOCK_SKEW, Quality.CLOCK_SKEW),         # the adapter's finding is kept
    (100.0, "supply_temp_2", Quality.GOOD, Quality.OUT_OF_RANGE),
    (-11.0, "supply_temp_2", Quality.GOOD, "out_of_possible_range"),
])
def test_ranges(value, metric, q_in, expect):
    out = QualityStage(RANGES).check(rd(value, metric, q=q_in))
    if isinstance(expect, str):
        assert isinstance(out, Rejection) and out.reason == expect
        assert out.device_id == "S01-plc" and "s1" in out.detail
    else:
        assert isinstance(out, Reading) and out.quality == expect


@pytest.mark.parametrize("series, expect", [
    # (seconds, value) → qualities; stuck after 3600 s of the same value
    ([(0, 20.0), (1800, 20.0), (3600, 20.0), (3601, 20.0), (7200, 20.0)],
     [0, 0, 0, 2, 2]),
    ([(0, 20.0), (3000, 20.0), (3500, 20.1), (7000, 20.1), (7101, 20.1)],
     [0, 0, 0, 0, 2]),                                                    # a change restarts the clock
    ([(0, 20.0), (4000, 20.0), (100, 20.0), (4100, 20.5)],
     [0, 2, 0, 0]),                                                       # late data does not move the clock
])
def test_stuck_values(series, expect):
    qs = QualityStage(RANGES)
    got = [int(qs.check(rd(v, at=t)).quality) for t, v in series]
    assert got == expect


def test_stuck_state_is_per_sensor():
    qs = QualityStage(RANGES)
    qs.check(rd(20.0, sensor="a", at=0))
    assert qs.check(rd(20.0, sensor="b", at=5000)).quality == Quality.GOOD
    assert qs.check(rd(20.0, sensor="a", at=5000)).quality == Quality.STALE


def test_apply_keeps_ack_and_moves_rejections():
    acked = []
    d = Delivery(readings=[rd(21.0), rd(99.0, sensor="s2"), rd(float("nan"), sensor="s3")],
                 rejects=[Rejection("mqtt", "d", "t", b"", "malformed_json")], ack=lambda: acked.append(1),
                 upstream_retains=True)
    out = QualityStage(RANGES).apply(d)
    assert [r.sensor for r in out.readings] == ["s1"]
    assert sorted(j.reason for j in out.rejects) == ["malformed_json", "nan", "out_of_possible_range"]
    assert out.upstream_retains is True
    out.ack()
    assert acked == [1]


@pytest.mark.parametrize("value, readings, reasons, quality", [
    (21.0, 1, [], Quality.GOOD),                       # unchanged: the same delivery object comes back
    (3.0, 1, [], Quality.OUT_OF_RANGE),                # implausible: kept with its quality
    (99.0, 0, ["out_of_possible_range"], None),         # impossible: a rejection
    (float("inf"), 0, ["infinite"], None),
])
def test_apply_single_reading_delivery(value, readings, reasons, quality):
    """The one-reading delivery (a thermometer's message) takes a shorter path: same outcomes."""
    ack = object()
    d = Delivery(readings=[rd(value)], ack=ack, upstream_retains=True)
    out = QualityStage(RANGES).apply(d)
    assert len(out.readings) == readings and [j.reason for j in out.rejects] == reasons
    assert out.ack is ack and out.upstream_retains is True
    if quality is not None:
        assert out.readings[0].quality == quality
    assert (out is d) == (quality == Quality.GOOD)
