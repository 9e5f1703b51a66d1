"""Scenarios: what happens to the simulated city, as data (simulators/scenarios/*.yaml).

A scenario is a start, an optional duration, a time acceleration for live mode, a sampling interval and
a list of timed faults with targets::

    name: pump_failure
    start: now            # now (default) = when live mode begins, after any backfill; or an ISO 8601 time
    speed: 60             # simulated seconds per wall-clock second in live mode (--speed overrides)
    sample_interval: 20m  # thermometer sampling (R16: ≤ 20 min)
    faults:
      - kind: pump_failure
        at: 10m           # offset from start (negative = in the backfilled past) or an ISO 8601 time
        duration: 8h
        targets: {substations: [S02]}

Fault kinds and their parameters:

- ``cold_snap``        ``target_c`` (daily mean, ℃), ``ramp`` (default 6h): outdoor model (R6 exemptions)
- ``pump_failure``     targets.substations: circulation pump off → flow ≈ 0, supply collapses (thermal model)
- ``sensor_offline``   targeted thermometers publish nothing
- ``stuck_value``      targeted thermometers repeat the value they had when the fault began
- ``duplicates``       ``probability`` (default 1): a targeted message is published twice (QoS 1 redelivery)
- ``malformed``        ``probability``: a targeted message is replaced by bytes ingest must reject
- ``clock_skew``       ``offset`` (e.g. 2h or -15m): payload timestamps of targeted thermometers are off

Targets: ``substations``, ``households``, ``sensors`` (``room:{household}:{room}:room_temp``) and
``vendors`` (A/B/C) select thermometers (union; none listed = all), then ``share`` keeps a seeded fraction
of them. Durations: ``90s``, ``20m``, ``8h``, ``2d``, ``1h30m`` or a number of seconds.

Time: with ``start: now`` the scenario begins when live mode does; a negative ``at`` puts a fault into the
backfilled past, where readings carry their true (simulated = real) timestamps. With an absolute ``start``
the city simulates that date: backfilled readings carry those simulated timestamps, while live readings
are always stamped with wall-clock time (ingest compares them with arrival) and ``speed`` only makes the
physics run faster.

Validation happens at load; an error names the file, the fault and the field.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from simulators.weather import ColdSnap

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
FaultKind = Literal["cold_snap", "pump_failure", "sensor_offline", "stuck_value", "duplicates", "malformed",
                    "clock_skew"]
SENSOR_FAULTS = ("sensor_offline", "stuck_value", "duplicates", "malformed", "clock_skew")

_DUR = re.compile(r"^\s*(-)?\s*((?:\d+(?:\.\d+)?\s*[dhms]\s*)+)$")
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


class ScenarioError(ValueError):
    """A scenario file is invalid; the message names the file, the fault and the field."""


def parse_duration(v) -> float:
    """'8h', '1h30m', '-2d', '90s', 3600 → seconds."""
    if isinstance(v, bool):
        raise ValueError(f"{v!r} is not a duration")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        m = _DUR.match(v)
        if m:
            total = sum(float(n) * _UNIT_S[u] for n, u in _PART.findall(m.group(2)))
            return -total if m.group(1) else total
    raise ValueError(f"{v!r} is not a duration (e.g. 90s, 20m, 8h, 2d, 1h30m)")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Targets(_Model):
    substations: tuple[str, ...] = ()
    households: tuple[str, ...] = ()
    sensors: tuple[str, ...] = ()
    vendors: tuple[Literal["A", "B", "C"], ...] = ()
    share: float | None = Field(default=None, gt=0, le=1)

    @property
    def empty(self) -> bool:
        return not (self.substations or self.households or self.sensors or self.vendors)


class Fault(_Model):
    kind: FaultKind
    #: seconds from the scenario start, or an absolute time
    at: float | datetime = 0.0
    duration: float
    targets: Targets = Targets()
    target_c: float | None = Field(default=None, ge=-60, le=30)
    ramp: float = 6 * 3600.0
    probability: float = Field(default=1.0, gt=0, le=1)
    offset: float | None = None

    @field_validator("at", mode="before")
    @classmethod
    def _at(cls, v):
        if isinstance(v, datetime):
            if v.tzinfo is None:
                raise ValueError("an absolute time needs an offset, e.g. 2026-12-15T06:00:00+08:00")
            return v
        if isinstance(v, str) and ("T" in v or "-" in v[1:]) and not _DUR.match(v):
            d = datetime.fromisoformat(v)
            if d.tzinfo is None:
                raise ValueError("an absolute time needs an offset, e.g. 2026-12-15T06:00:00+08:00")
            return d
        return parse_duration(v)

    @field_validator("duration", "ramp", "offset", mode="before")
    @classmethod
    def _dur(cls, v):
        return None if v is None else parse_duration(v)

    @model_validator(mode="after")
    def _kind(self) -> "Fault":
        if self.duration <= 0:
            raise ValueError(f"duration must be positive, got {self.duration:g} s")
        if self.kind == "cold_snap" and self.target_c is None:
            raise ValueError("cold_snap needs target_c (daily mean, ℃)")
        if self.kind == "pump_failure" and not self.targets.substations:
            raise ValueError("pump_failure needs targets.substations")
        if self.kind == "clock_skew" and not self.offset:
            raise ValueError("clock_skew needs a non-zero offset (e.g. 2h or -15m)")
        if self.kind in ("cold_snap", "pump_failure") and (self.targets.households or self.targets.sensors or
                                                           self.targets.vendors or self.targets.share):
            raise ValueError(f"{self.kind} targets substations (pump) or the whole city (cold snap), not sensors")
        return self


class Scenario(_Model):
    name: str
    description: str = ""
    #: None = "now": the moment live mode begins (after any backfill)
    start: datetime | None = None
    duration: float | None = None
    speed: float = Field(default=1.0, gt=0, le=100000)
    sample_interval: float = 1200.0
    faults: tuple[Fault, ...] = ()

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, v):
        if v is None or v == "now":
            return None
        d = v if isinstance(v, datetime) else datetime.fromisoformat(str(v))
        if d.tzinfo is None:
            raise ValueError("start needs an offset, e.g. 2026-12-15T00:00:00+08:00")
        return d

    @field_validator("duration", "sample_interval", mode="before")
    @classmethod
    def _dur(cls, v):
        return None if v is None else parse_duration(v)

    @field_validator("sample_interval")
    @classmethod
    def _si(cls, v):
        if not 1 <= v <= 86400:
            raise ValueError(f"sample_interval must be 1 s … 1 d, got {v:g} s")
        return v


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; a bare name (``pump_failure``) is looked up in scenarios/."""
    p = Path(path)
    if not p.exists() and not p.suffix and (SCENARIO_DIR / f"{p.name}.yaml").exists():
        p = SCENARIO_DIR / f"{p.name}.yaml"
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ScenarioError(f"{p}: cannot read: {e}") from None
    except yaml.YAMLError as e:
        raise ScenarioError(f"{p}: not valid YAML: {e}") from None
    return parse_scenario(data, source=str(p))


def parse_scenario(data: dict, source: str = "scenario") -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = list(err["loc"])
            where = ""
            if loc[:1] == ["faults"] and len(loc) > 1 and isinstance(loc[1], int):
                kind = ""
                try:
                    kind = f" ({data['faults'][loc[1]].get('kind')})"
                except (KeyError, IndexError, TypeError, AttributeError):
                    pass
                where = f"fault #{loc[1] + 1}{kind}" + (f" {'.'.join(map(str, loc[2:]))}" if loc[2:] else "")
            else:
                where = ".".join(map(str, loc))
            lines.append(f"{source}: {where}: {err['msg'].removeprefix('Value error, ')}")
        raise ScenarioError("\n".join(dict.fromkeys(lines))) from None


def normal() -> Scenario:
    return Scenario(name="normal", description="normal operation, no faults")


@dataclass(frozen=True)
class Window:
    fault: Fault
    start: float            # epoch s
    end: float

    def active(self, t: float) -> bool:
        return self.start <= t < self.end


class ResolvedScenario:
    """A scenario placed on the time axis (``t0`` = its start, epoch s) and bound to the city's sensors.

    Everything here is a pure function of (scenario, t0, sensor keys, seed): backfill and live mode make
    the same decisions for the same sample time.
    """

    def __init__(self, scenario: Scenario, t0: float, *, sensor_keys: list[str] | None = None,
                 sensor_meta: list[tuple[str, str, str]] | None = None, seed: int = 7):
        self.scenario, self.t0, self.seed = scenario, t0, seed
        self.windows: list[Window] = []
        for f in scenario.faults:
            start = f.at.timestamp() if isinstance(f.at, datetime) else t0 + f.at
            self.windows.append(Window(f, start, start + f.duration))
        self.sensor_keys = sensor_keys or []
        #: per sensor (substation, household, vendor)
        self.sensor_meta = sensor_meta or []
        self._masks = [self._mask(w.fault.targets, i) for i, w in enumerate(self.windows)]

    @property
    def end(self) -> float | None:
        return None if self.scenario.duration is None else self.t0 + self.scenario.duration

    # -- physics ----------------------------------------------------------------------------------
    def cold_snaps(self) -> list[ColdSnap]:
        return [ColdSnap(w.start, w.end, float(w.fault.target_c), w.fault.ramp)
                for w in self.windows if w.fault.kind == "cold_snap"]

    def pump_on(self, substation: str, t: float) -> bool:
        return not any(w.fault.kind == "pump_failure" and substation in w.fault.targets.substations and w.active(t)
                       for w in self.windows)

    # -- thermometers ---------------------------------------------------------------------------
    def _mask(self, targets: Targets, salt: int) -> np.ndarray:
        n = len(self.sensor_keys)
        if targets.empty:
            m = np.ones(n, dtype=bool)
        else:
            m = np.zeros(n, dtype=bool)
            for i, key in enumerate(self.sensor_keys):
                sub, hh, vendor = self.sensor_meta[i]
                m[i] = (sub in targets.substations or hh in targets.households or key in targets.sensors
                        or vendor in targets.vendors)
        if targets.share is not None:
            # a seeded, stable choice: the same sensors for the same seed, whatever else is in the file
            score = np.array([_unit_hash(self.seed, salt, k) for k in self.sensor_keys])
            m &= score < targets.share
        return m

    def sensor_mask(self, kind: str, t: float) -> np.ndarray:
        """Sensors affected by faults of ``kind`` at time ``t``."""
        m = np.zeros(len(self.sensor_keys), dtype=bool)
        for w, mask in zip(self.windows, self._masks):
            if w.fault.kind == kind and w.active(t):
                m |= mask
        return m

    def windows_of(self, kind: str, t: float) -> list[tuple[Window, np.ndarray]]:
        return [(w, m) for w, m in zip(self.windows, self._masks) if w.fault.kind == kind and w.active(t)]

    def clock_offset(self, t: float) -> np.ndarray:
        off = np.zeros(len(self.sensor_keys))
        for w, m in self.windows_of("clock_skew", t):
            off = np.where(m, float(w.fault.offset), off)
        return off

    def message_probability(self, kind: str, t: float) -> np.ndarray:
        """Per sensor, the probability that a message carrying it is hit by ``kind`` (duplicates/malformed)."""
        p = np.zeros(len(self.sensor_keys))
        for w, m in self.windows_of(kind, t):
            p = np.where(m, np.maximum(p, w.fault.probability), p)
        return p

    def describe(self) -> list[str]:
        out = []
        for w, m in zip(self.windows, self._masks):
            f = w.fault
            if f.kind == "cold_snap":
                what = f"outdoor daily mean → {f.target_c:g} ℃"
            elif f.kind == "pump_failure":
                what = f"pump off at {', '.join(f.targets.substations)}"
            else:
                what = f"{f.kind} on {int(m.sum())} thermometer(s)"
                if f.kind in ("duplicates", "malformed"):
                    what += f", p={f.probability:g}"
                if f.kind == "clock_skew":
                    what += f", offset {f.offset:+g} s"
            out.append(f"{_iso(w.start)} … {_iso(w.end)}  {what}")
        return out


def _iso(t: float) -> str:
    from datetime import timedelta, timezone
    return datetime.fromtimestamp(t, timezone(timedelta(hours=8))).isoformat(timespec="minutes")


def _unit_hash(seed: int, salt: int, key: str) -> float:
    h = hashlib.blake2b(f"{seed}:{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2 ** 64
