"""Batcher: collect deliveries until `max_rows` rows or `max_age_s` seconds, whichever first.

Pure: no threads, no I/O; the clock is injected (``clock() -> float`` seconds, monotonic) so tests
drive time by hand. A batch keeps whole deliveries (never splits one) because a delivery is the
unit of acknowledgement: one MQTT message is acked when all of its readings are committed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from adapters.base import Delivery, DeviceEvent, Reading, Rejection


@dataclass(slots=True)
class Batch:
    deliveries: list[Delivery] = field(default_factory=list)
    events: list[DeviceEvent] = field(default_factory=list)
    rows: int = 0

    def add(self, d: Delivery) -> None:
        self.deliveries.append(d)
        self.rows += len(d.readings) + len(d.rejects)

    def readings(self) -> Iterator[Reading]:
        for d in self.deliveries:
            yield from d.readings

    def rejects(self) -> Iterator[Rejection]:
        for d in self.deliveries:
            yield from d.rejects

    def __len__(self) -> int:
        return len(self.deliveries)

    @property
    def empty(self) -> bool:
        return not self.deliveries and not self.events


class Batcher:
    def __init__(self, max_rows: int, max_age_s: float, clock: Callable[[], float] = time.monotonic):
        if max_rows < 1 or max_age_s < 0:
            raise ValueError(f"batcher needs max_rows >= 1 and max_age_s >= 0, got {max_rows}, {max_age_s}")
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.clock = clock
        self._batch = Batch()
        self._started: float | None = None

    def add(self, delivery: Delivery) -> None:
        if self._started is None:
            self._started = self.clock()
        self._batch.add(delivery)

    @property
    def rows(self) -> int:
        return self._batch.rows

    @property
    def pending(self) -> int:
        """Deliveries waiting in the open batch."""
        return len(self._batch)

    def due(self) -> bool:
        if self._started is None:
            return False
        return self._batch.rows >= self.max_rows or self.clock() - self._started >= self.max_age_s

    def time_until_due(self) -> float | None:
        """Seconds until the age limit; 0 when due; None when empty (nothing to wait for)."""
        if self._started is None:
            return None
        if self._batch.rows >= self.max_rows:
            return 0.0
        return max(0.0, self.max_age_s - (self.clock() - self._started))

    def take(self) -> Batch:
        """The open batch (possibly empty); a new one starts."""
        b, self._batch, self._started = self._batch, Batch(), None
        return b
