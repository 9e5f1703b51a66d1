"""Quality codes carried by every stored sample (readings.quality, smallint).

A value we did not measure is never stored as measured (field-lessons.md, "Stale data"):
analytics counts only ``GOOD`` samples; everything else stays visible for evidence.
"""
from __future__ import annotations

from enum import IntEnum


class Quality(IntEnum):
    GOOD = 0
    OUT_OF_RANGE = 1      # outside the plausibility range configured for the metric
    STALE = 2             # repeated/stuck value beyond the stuck-value window
    DEVICE_ERROR = 3      # device reported an error status / bad OPC UA status code
    CLOCK_SKEW = 4        # payload timestamp implausibly far from arrival time
    UNCERTAIN = 5         # OPC UA "uncertain" status, or first value read after a gap
    SUBSTITUTED = 6       # value not measured (never counted by analytics)

    @property
    def label(self) -> str:
        return self.name.lower()


COUNTABLE = frozenset({Quality.GOOD})
