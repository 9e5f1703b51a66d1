"""Outdoor temperature for the demo city (Tianjin), as a pure function of time and seed.

T(t) = seasonal normal(day of year) + synoptic anomaly(t) + diurnal cycle(local hour) + small noise
       [+ cold snap override while one is active]

- Seasonal: Tianjin monthly normal means (℃, 1991–2020 order of magnitude), interpolated between
  mid-months; over the heating season (Nov 15 – Mar 15) that runs from about +5 ℃ to −4 ℃ and back.
- Synoptic: a sum of slow sinusoids (periods 2.7–11 days, seeded phases) with ~3 K spread: the cold
  and warm spells that move daily means around.
- Diurnal: ±3.5 K, warmest at 14:00 and coldest at 02:00 local (Asia/Shanghai, UTC+8).
- Noise: fast sinusoids (0.3 K), so the curve is not perfectly smooth.
- Cold snap: blends the daily mean towards a target (e.g. −25 ℃) with linear ramps, keeping the diurnal
  cycle.

Being stateless (no random walk to integrate) is the point: backfill, live mode, the Modbus/OPC UA
providers and the official daily-mean CSV all evaluate the same function and agree exactly, in any
order, for any time range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import numpy as np

LOCAL_OFFSET_S = 8 * 3600          # Asia/Shanghai has no DST
#: Tianjin monthly normal mean temperature, ℃, January … December
TIANJIN_MONTHLY_MEAN_C = (-3.4, -0.4, 6.0, 14.0, 20.5, 24.8, 26.8, 26.0, 21.6, 14.3, 5.2, -1.5)
_MID_MONTH_DOY = np.array([15.5, 45.0, 74.5, 105.0, 135.5, 166.0, 196.5, 227.5, 258.0, 288.5, 319.0, 349.5])


@dataclass(frozen=True)
class ColdSnap:
    """Daily mean pulled to ``target_c`` between ``start`` and ``end`` (epoch s), ramping over ``ramp_s``."""
    start: float
    end: float
    target_c: float
    ramp_s: float = 6 * 3600.0


@dataclass
class OutdoorModel:
    seed: int = 7
    monthly_mean_c: tuple[float, ...] = TIANJIN_MONTHLY_MEAN_C
    diurnal_amplitude_k: float = 3.5
    synoptic_std_k: float = 3.0
    noise_k: float = 0.3
    cold_snaps: list[ColdSnap] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 0x0D7])
        self._syn_period = rng.uniform(2.7, 11.0, 5) * 86400.0
        self._syn_phase = rng.uniform(0, 2 * math.pi, 5)
        # equal amplitudes a with std of a sum of n sinusoids = a·sqrt(n/2)
        self._syn_amp = np.full(5, self.synoptic_std_k / math.sqrt(5 / 2))
        self._noise_period = rng.uniform(0.6, 3.0, 4) * 3600.0
        self._noise_phase = rng.uniform(0, 2 * math.pi, 4)
        self._noise_amp = np.full(4, self.noise_k / math.sqrt(4 / 2))

    # -- components --------------------------------------------------------------------------
    def seasonal(self, t: np.ndarray) -> np.ndarray:
        xs = np.concatenate([_MID_MONTH_DOY - 365.2425, _MID_MONTH_DOY, _MID_MONTH_DOY + 365.2425])
        ys = np.tile(np.asarray(self.monthly_mean_c, dtype=float), 3)
        return np.interp(day_of_year(t), xs, ys)

    def diurnal(self, t: np.ndarray) -> np.ndarray:
        hour = ((np.asarray(t, dtype=float) + LOCAL_OFFSET_S) % 86400.0) / 3600.0
        return self.diurnal_amplitude_k * np.cos(2 * math.pi * (hour - 14.0) / 24.0)

    def synoptic(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=float)[..., None]
        return (self._syn_amp * np.sin(2 * math.pi * t / self._syn_period + self._syn_phase)).sum(-1)

    def noise(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=float)[..., None]
        return (self._noise_amp * np.sin(2 * math.pi * t / self._noise_period + self._noise_phase)).sum(-1)

    def snap_weight(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(weight 0…1, target ℃) of the strongest cold snap at each time."""
        t = np.asarray(t, dtype=float)
        w = np.zeros_like(t)
        target = np.zeros_like(t)
        for s in self.cold_snaps:
            up = np.clip((t - s.start) / s.ramp_s, 0, 1)
            down = np.clip((s.end - t) / s.ramp_s, 0, 1)
            ws = np.minimum(up, down)
            better = ws > w
            w = np.where(better, ws, w)
            target = np.where(better, s.target_c, target)
        return w, target

    # -- the model ---------------------------------------------------------------------------
    def temperature(self, t) -> np.ndarray:
        """Outdoor air temperature, ℃, at epoch seconds ``t`` (scalar or array)."""
        t = np.asarray(t, dtype=float)
        mean = self.seasonal(t) + self.synoptic(t)
        w, target = self.snap_weight(t)
        mean = (1 - w) * mean + w * target
        return mean + self.diurnal(t) + self.noise(t)

    def at(self, when: datetime) -> float:
        return float(self.temperature(when.timestamp()))

    def daily_mean(self, day: date, samples_per_day: int = 24 * 6) -> float:
        """Mean of the local day (Asia/Shanghai), ℃, rounded to 0.1 as the bureau publishes it."""
        start = datetime(day.year, day.month, day.day, tzinfo=timezone(timedelta(hours=8))).timestamp()
        t = start + (np.arange(samples_per_day) + 0.5) * 86400.0 / samples_per_day
        return round(float(self.temperature(t).mean()), 1)

    def daily_means(self, first: date, last: date) -> list[tuple[date, float]]:
        out = []
        d = first
        while d <= last:
            out.append((d, self.daily_mean(d)))
            d += timedelta(days=1)
        return out


def day_of_year(t) -> np.ndarray:
    """Local (UTC+8) day of year, 0-based and fractional, for epoch seconds ``t``."""
    local = np.floor(np.asarray(t, dtype=float) + LOCAL_OFFSET_S).astype("int64").astype("datetime64[s]")
    return (local - local.astype("datetime64[Y]")).astype("timedelta64[s]").astype(float) / 86400.0


def write_weather_csv(path, model: OutdoorModel, first: date, last: date, *, station_code: str = "TJ",
                      station_name: str = "天津", design_outdoor_temp_c: float = -7.0) -> None:
    """The official-daily-mean CSV that `heatdesk import weather` reads (ingest/weather.py)."""
    from pathlib import Path

    lines = ["station_code,station_name,design_outdoor_temp_c,day,mean_c"]
    for d, m in model.daily_means(first, last):
        lines.append(f"{station_code},{station_name},{design_outdoor_temp_c:g},{d.isoformat()},{m:.1f}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
