"""Helpers for the end-to-end scenario test (tests/test_e2e_pump_failure.py).

Kept apart so the test reads as the story it tells: the calendar it picks, the devices file the ingest
process reads, the substation history it writes through ingest, and the simulator's own ground truth.
Nothing here decides an expected result from what the pipeline produced.
"""
from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import yaml

from adapters.base import Delivery, Reading, SensorMeta
from adapters.config import DevicesFile
from core.config import DEFAULT_DEVICES_FILE
from core.quality import Quality
from simulators.city import City
from simulators.thermal import ThermalModel

TZ = ZoneInfo("Asia/Shanghai")


def local_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), TZ)


@dataclass(frozen=True)
class Calendar:
    """The days of the story, all in the past and inside one heating season.

    ``days[0]`` is a normal day, ``days[1]`` the whole local day the pump is off, then recovery days;
    ``as_of`` (the day after the last backfilled day) is the day dunning's first ladder step arrives.
    """
    season_year: int
    days: tuple[dt.date, ...]
    as_of: dt.date

    @property
    def start(self) -> dt.datetime:
        return local_midnight(self.days[0])

    @property
    def end(self) -> dt.datetime:
        return local_midnight(self.as_of)


def pick_calendar(today: dt.date, *, first_step_offset_days: int, due_date, season_contains, outdoor_mean,
                  design_outdoor_c: float, n_days: int = 4) -> Calendar:
    """The latest season whose first dunning step (due date + offset, from the dunning policy) lies before
    ``today`` and whose ``n_days`` preceding days are all in the statutory season and warmer than the
    design outdoor temperature (an R6 extreme-cold day would make every verdict 'exempt')."""
    for year in range(today.year, today.year - 6, -1):
        as_of = due_date(year) + dt.timedelta(days=first_step_offset_days)
        if as_of >= today:
            continue
        days = tuple(as_of - dt.timedelta(days=k) for k in range(n_days, 0, -1))
        if all(season_contains(d) for d in days) and all(outdoor_mean(d) >= design_outdoor_c for d in days):
            return Calendar(year, days, as_of)
    raise AssertionError(f"no usable heating-season window found before {today}")


def ingest_devices_yaml(max_age_s: float) -> str:
    """devices.yaml reduced to the room thermometers (the MQTT device and its three payload profiles),
    with payload timestamps accepted as good up to ``max_age_s`` before their arrival.

    Why: the story replays days of a past season (the dunning ladder's calendar decides which), older
    than the shipped ``timestamp.max_age_s`` (35 days); beyond it the MQTT adapter stores a reading with
    quality clock_skew and analytics ignores it. The knob is the documented one for backfills.
    The substations are not in this file: their history is written through ingest by the test
    (see ``substation_deliveries``), their live servers are not part of this story.
    """
    doc = yaml.safe_load(DEFAULT_DEVICES_FILE.read_text(encoding="utf-8"))
    mqtt = [d for d in doc["devices"] if d["protocol"] == "mqtt"]
    used = {s["payload"] for d in mqtt for s in d["subscriptions"] if isinstance(s["payload"], str)}
    profiles = {}
    for name in used:
        p = copy.deepcopy(doc["profiles"][name])
        if "timestamp" in p:
            p["timestamp"]["max_age_s"] = float(max_age_s)
        profiles[name] = p
    return yaml.safe_dump({"version": doc["version"], "ranges": doc["ranges"], "profiles": profiles,
                           "devices": mqtt}, allow_unicode=True, sort_keys=False)


def substation_points(config: DevicesFile) -> list[tuple[object, list]]:
    """(device, points) for every Modbus and OPC UA substation device of devices.yaml."""
    out = []
    for dev in config.by_protocol("modbus"):
        out.append((dev, list(config.modbus_map(dev).points)))
    for dev in config.by_protocol("opcua"):
        out.append((dev, list(config.opcua_nodes(dev).nodes)))
    return out


@dataclass
class GroundTruth:
    """What the simulator's own thermal model says, sampled while writing the substation history."""
    times: np.ndarray                 # epoch s
    room_c: np.ndarray                # (time, sensor) room temperature without noise, ℃
    sensor_keys: list[str]


def substation_deliveries(model: ThermalModel, config: DevicesFile, start: dt.datetime, end: dt.datetime,
                          step_s: float) -> tuple[list[Delivery], GroundTruth]:
    """One delivery per device and poll, like the Modbus/OPC UA adapters hand to ingest, from the same
    thermal model the MQTT publisher used (same city, seed and scenario: the model is deterministic).

    Also samples the model's room temperatures at the same instants (the oracle for recovery days)."""
    devices = substation_points(config)
    model.reset(start.timestamp())
    out: list[Delivery] = []
    times, rooms = [], []
    t = start.timestamp()
    while t < end.timestamp():
        model.advance_to(t)
        ts = dt.datetime.fromtimestamp(t, dt.timezone.utc)
        for dev, points in devices:
            values = model.substation_values(dev.substation)
            readings = []
            for p in points:
                meta = SensorMeta(metric=p.metric, unit=p.unit, protocol=dev.protocol, device_id=dev.id,
                                  point=p.name, substation_code=dev.substation,
                                  weather_station_code=dev.weather_station)
                readings.append(Reading(sensor=dev.sensor_key.format(device=dev.id, point=p.name, metric=p.metric),
                                        ts=ts, value=float(values[p.metric]), quality=Quality.GOOD, meta=meta))
            out.append(Delivery(readings=readings, upstream_retains=False))
        with model.lock:
            times.append(t)
            rooms.append(model.T[model.sensor_h] + model.sensor_offset)
        t += step_s
    return out, GroundTruth(np.array(times), np.array(rooms), list(model.sensor_keys))


def truth_daily_means(truth: GroundTruth, days: tuple[dt.date, ...]) -> dict[tuple[str, dt.date], float]:
    """Noise-free daily mean per room sensor key and local day, ℃ (equal-interval samples)."""
    out = {}
    for d in days:
        a, b = local_midnight(d).timestamp(), local_midnight(d + dt.timedelta(days=1)).timestamp()
        sel = (truth.times >= a) & (truth.times < b)
        means = truth.room_c[sel].mean(axis=0)
        for k, m in zip(truth.sensor_keys, means):
            out[(k, d)] = float(m)
    return out


def write_scenario(path: Path, *, start: dt.datetime, fault_start: dt.datetime, fault_hours: float,
                   substations: list[str], sample_interval: str = "20m") -> dict:
    """A pump-failure scenario placed in the past (absolute times), written as the simulator reads it."""
    data = {"name": "e2e_pump_failure", "description": "pump off for whole local day(s), backfilled",
            "start": start.isoformat(), "speed": 1, "sample_interval": sample_interval,
            "faults": [{"kind": "pump_failure", "at": fault_start.isoformat(), "duration": f"{fault_hours:g}h",
                        "targets": {"substations": list(substations)}}]}
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return data


def counted_sensor_rooms(city: City) -> dict[str, list[str]]:
    """household code → room codes that count for compliance (R4) and have a thermometer."""
    return {h.code: [r.code for r in h.rooms if r.counts_for_compliance and r.sensor_vendor]
            for h in city.households}
