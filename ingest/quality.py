"""Quality stage: plausibility, possibility and stuck values, per devices.yaml `ranges`.

* outside ``plausible`` → stored with quality OUT_OF_RANGE (kept as evidence, not counted by
  analytics);
* outside ``possible`` → not a measurement at all: a rejection ``out_of_possible_range``;
* NaN / ±inf → rejection (adapters normally catch these first; this is the backstop for every
  protocol);
* the same value for longer than ``stuck_after_s`` → STALE (a frozen sensor must not look alive,
  field-lessons.md "Stale data", thingsboard-gateway#2065).

A quality the adapter already set (CLOCK_SKEW, DEVICE_ERROR, UNCERTAIN) is kept: a reading has one
quality and the adapter's finding is the more specific one.

State (last value and since when per sensor) lives in memory in the single ingest thread; after a
restart the stuck clock starts again, so a stuck sensor is flagged at most stuck_after_s late.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime

from adapters.base import Delivery, Reading, Rejection
from adapters.config import MetricRange
from core.quality import Quality


@dataclass(slots=True)
class _Stuck:
    value: float
    since: datetime
    last: datetime


class QualityStage:
    def __init__(self, ranges: dict[str, MetricRange], *, max_sensors: int = 1_000_000):
        self.ranges = dict(ranges)
        self._state: dict[str, _Stuck] = {}
        self._max_sensors = max_sensors

    def check(self, r: Reading) -> Reading | Rejection:
        """One reading → the reading with its quality, or a rejection."""
        v = r.value
        if not math.isfinite(v):
            return self._reject(r, "nan" if math.isnan(v) else "infinite", f"value {v}")
        rng = self.ranges.get(r.meta.metric)
        if rng is None:
            return r
        plo, phi = rng.possible
        if v < plo or v > phi:
            return self._reject(r, "out_of_possible_range",
                                f"{r.meta.metric} {v:g} {r.meta.unit} outside possible range [{plo:g}, {phi:g}]")
        q = r.quality
        if q == Quality.GOOD:
            lo, hi = rng.plausible
            if v < lo or v > hi:
                q = Quality.OUT_OF_RANGE
        if rng.stuck_after_s is not None:
            st = self._state.get(r.sensor)
            if st is None:
                if len(self._state) >= self._max_sensors:
                    self._state.clear()          # bounded memory; only delays stuck detection
                self._state[r.sensor] = _Stuck(v, r.ts, r.ts)
            elif r.ts >= st.last:                # late data does not move the clock
                if v != st.value:
                    st.value, st.since = v, r.ts
                elif q == Quality.GOOD and (r.ts - st.since).total_seconds() > rng.stuck_after_s:
                    q = Quality.STALE
                st.last = r.ts
        return r if q == r.quality else replace(r, quality=q)

    def apply(self, delivery: Delivery) -> Delivery:
        """Checked copy of a delivery (same ack, same upstream_retains)."""
        if not delivery.readings:
            return delivery
        if len(delivery.readings) == 1 and not delivery.rejects:      # one thermometer message
            r = delivery.readings[0]
            out = self.check(r)
            if out is r:
                return delivery
            if isinstance(out, Reading):
                return Delivery(readings=[out], ack=delivery.ack, upstream_retains=delivery.upstream_retains)
            return Delivery(rejects=[out], ack=delivery.ack, upstream_retains=delivery.upstream_retains)
        readings: list[Reading] = []
        rejects: list[Rejection] = list(delivery.rejects)
        changed = False
        for r in delivery.readings:
            out = self.check(r)
            if out is r:
                readings.append(r)
            else:
                changed = True
                (readings if isinstance(out, Reading) else rejects).append(out)
        if not changed:
            return delivery
        return Delivery(readings=readings, rejects=rejects, ack=delivery.ack,
                        upstream_retains=delivery.upstream_retains)

    @staticmethod
    def _reject(r: Reading, reason: str, detail: str) -> Rejection:
        m = r.meta
        return Rejection(source=m.protocol, device_id=m.device_id, address=r.sensor,
                         payload=repr(r.value).encode(), reason=reason,
                         detail=f"device {m.device_id} sensor {r.sensor} at {r.ts.isoformat()}: {detail}")
