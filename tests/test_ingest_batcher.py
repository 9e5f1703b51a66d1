"""ingest/batcher.py: flush on size or age, with an injected clock."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from adapters.base import Delivery, Reading, Rejection, SensorMeta
from core.quality import Quality
from ingest.batcher import Batcher

META = SensorMeta(metric="room_temp", unit="C", protocol="mqtt", device_id="d")
TS = datetime(2026, 11, 23, tzinfo=timezone.utc)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def delivery(n_readings: int, n_rejects: int = 0) -> Delivery:
    return Delivery(readings=[Reading(f"k{i}", TS, 20.0, Quality.GOOD, META) for i in range(n_readings)],
                    rejects=[Rejection("mqtt", "d", "t", b"x", "nan") for _ in range(n_rejects)])


# steps: (advance seconds, rows in the delivery added (None: add nothing), expect due after the step)
@pytest.mark.parametrize("max_rows, max_age, steps", [
    (10, 1.0, [(0, 3, False), (0.5, 3, False), (0.49, None, False), (0.01, None, True)]),   # age from first add
    (10, 1.0, [(0, 4, False), (0, 5, False), (0, 1, True)]),                                 # size reached exactly
    (10, 1.0, [(0, 25, True)]),                                                              # one big delivery
    (10, 1.0, [(5.0, None, False), (0, 1, False), (0.99, None, False), (0.01, None, True)]), # idle time not counted
    (10, 0.0, [(0, 1, True)]),                                                               # age 0: flush at once
])
def test_due_on_size_or_age(max_rows, max_age, steps):
    clock = Clock()
    b = Batcher(max_rows, max_age, clock)
    for adv, rows, want in steps:
        clock.t += adv
        if rows is not None:
            b.add(delivery(rows))
        assert b.due() is want, (adv, rows)


def test_take_resets_and_keeps_whole_deliveries():
    clock = Clock()
    b = Batcher(5, 1.0, clock)
    d1, d2 = delivery(3), delivery(2, 2)
    b.add(d1)
    b.add(d2)
    assert b.rows == 7 and b.due()
    batch = b.take()
    assert batch.deliveries == [d1, d2] and batch.rows == 7
    assert len(list(batch.readings())) == 5 and len(list(batch.rejects())) == 2
    assert b.pending == 0 and not b.due() and b.time_until_due() is None
    clock.t += 10
    b.add(delivery(1))
    assert not b.due() and b.time_until_due() == pytest.approx(1.0)


def test_time_until_due_counts_down():
    clock = Clock()
    b = Batcher(100, 2.0, clock)
    b.add(delivery(1))
    clock.t += 0.5
    assert b.time_until_due() == pytest.approx(1.5)
    clock.t += 5
    assert b.time_until_due() == 0.0


def test_bad_limits_refused():
    with pytest.raises(ValueError):
        Batcher(0, 1.0)
