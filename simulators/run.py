"""``python -m simulators``: the simulated city — thermometers over MQTT, substations over Modbus TCP and OPC UA.

    python -m simulators [--scenario FILE|NAME] [--seed N] [--households N] [--backfill-days D] [--speed X]
                         [--export-csv PATH] [--export-weather PATH] [--export-only]
                         [--mqtt-url URL] [--modbus-port P] [--opcua-port P] [--no-mqtt] [--no-modbus] [--no-opcua]

What it does, in order:
1. builds the city from ``--seed``/``--households`` (simulators/city.py) and the scenario (default: normal);
2. optionally writes the households CSV (``heatdesk import households``) and the official-weather CSV
   (``heatdesk import weather``) — with ``--export-only`` it stops there (``heatdesk up`` does this first);
3. spins the thermal model up and, with ``--backfill-days D``, publishes the D days before the start with
   their own timestamps as fast as the broker takes them;
4. serves the substations: the Modbus TCP server (S01/S02 as unit ids 1/2) and the OPC UA server (S03/S04),
   both fed by the thermal model through the provider ``values(device_id, now)``;
5. publishes every thermometer live every sample interval (R16: 20 min simulated), ``--speed`` simulated
   seconds per wall second, until SIGTERM/SIGINT (or the scenario's duration, or ``--exit-after``).

Live readings carry wall-clock timestamps (ingest compares them with arrival time); acceleration only makes
the physics run faster — a pump failure of 8 h plays out in 8 min at ``--speed 60``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from simulators.city import DEFAULT_HOUSEHOLDS, City, generate_city
from simulators.scenario import ResolvedScenario, Scenario, ScenarioError, load_scenario, normal
from simulators.thermal import ThermalModel
from simulators.weather import OutdoorModel, write_weather_csv

log = logging.getLogger("simulators")
TZ8 = timezone(timedelta(hours=8))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simulators", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default=None, help="scenario file or name in simulators/scenarios (default normal)")
    p.add_argument("--seed", type=int, default=7, help="city and weather seed (default 7)")
    p.add_argument("--households", type=int, default=DEFAULT_HOUSEHOLDS,
                   help=f"households over the four substations (default {DEFAULT_HOUSEHOLDS})")
    p.add_argument("--backfill-days", type=float, default=0.0, help="publish this many past days first")
    p.add_argument("--speed", type=float, default=None, help="simulated seconds per wall second (default: scenario)")
    p.add_argument("--sample-interval", type=float, default=None, help="thermometer sampling, simulated seconds "
                                                                       "(default: scenario, 1200)")
    p.add_argument("--export-csv", type=Path, default=None, help="write the households CSV here")
    p.add_argument("--export-weather", type=Path, default=None, help="write the official daily-mean CSV here")
    p.add_argument("--weather-days", type=int, default=30, help="days of official weather to export (default 30)")
    p.add_argument("--export-only", action="store_true", help="write the CSV files and exit")
    p.add_argument("--mqtt-url", default=None, help="broker (default HEATDESK_MQTT_URL or mqtt://127.0.0.1:1883)")
    p.add_argument("--topic-root", default=None, help="MQTT topic root (default HEATDESK_TOPIC_ROOT or heatdesk)")
    p.add_argument("--modbus-port", type=int, default=None, help="default HEATDESK_MODBUS_PORT or 15020")
    p.add_argument("--opcua-port", type=int, default=None, help="default HEATDESK_OPCUA_PORT or 14840")
    p.add_argument("--devices", type=Path, default=None, help="devices.yaml (default: settings.devices_file)")
    p.add_argument("--no-mqtt", action="store_true")
    p.add_argument("--no-modbus", action="store_true")
    p.add_argument("--no-opcua", action="store_true")
    p.add_argument("--stats-file", type=Path, default=None, help="write what was published (JSON) here")
    p.add_argument("--exit-after", type=float, default=None, help="stop after this many wall seconds of live mode")
    return p


class SimClock:
    """Wall time ↔ simulated time: sim = sim0 + (wall − wall0) × speed."""

    def __init__(self, sim0: float, wall0: float, speed: float):
        self.sim0, self.wall0, self.speed = sim0, wall0, speed

    def sim(self, wall: float) -> float:
        return self.sim0 + (wall - self.wall0) * self.speed

    def wall(self, sim: float) -> float:
        return self.wall0 + (sim - self.sim0) / self.speed


class SubstationProvider:
    """The Modbus/OPC UA servers' provider: ``values(device_id, now)`` from the thermal model.

    ``device_id`` is a devices.yaml id (``S01-plc``, ``S03-scada``) or a substation code; ``now`` the server's
    wall-clock time, mapped to simulated time by the shared clock."""

    def __init__(self, model: ThermalModel, clock: SimClock, device_substations: dict[str, str]):
        self.model, self.clock, self.map = model, clock, device_substations

    def __call__(self, device_id: str, now: datetime | float | None = None) -> dict[str, float]:
        code = self.map.get(device_id, device_id)
        if code not in self.model.sub_codes:
            raise KeyError(f"device {device_id}: no substation {code!r} in the simulated city "
                           f"(have {self.model.sub_codes})")
        wall = now.timestamp() if isinstance(now, datetime) else time.time() if now is None else float(now)
        self.model.advance_to(self.clock.sim(wall))
        return self.model.substation_values(code)


def sensor_meta(model: ThermalModel) -> list[tuple[str, str, str]]:
    return [(h.substation_code, h.code, r.sensor_vendor or "") for h, r in model.sensors]


def export(city: City, outdoor: OutdoorModel, args, sim_start: float) -> None:
    if args.export_csv:
        city.write_households_csv(args.export_csv)
        print(f"households CSV: {args.export_csv} ({len(city.households)} households, "
              f"{sum(len(h.rooms) for h in city.households)} rooms, {len(city.sensors())} thermometers)", flush=True)
    if args.export_weather:
        last = datetime.fromtimestamp(sim_start, TZ8).date() - timedelta(days=1)
        days = max(args.weather_days, int(args.backfill_days) + 1)
        first = last - timedelta(days=days - 1)
        write_weather_csv(args.export_weather, outdoor, first, last, station_code=city.station_code,
                          station_name=city.station_name, design_outdoor_temp_c=city.design_outdoor_temp_c)
        print(f"weather CSV: {args.export_weather} ({first} … {last}, station {city.station_code})", flush=True)


def _device_substations(devices_path: Path | None) -> tuple[object, dict[str, str]]:
    from adapters.config import load_devices
    from core.config import get_settings

    devices = load_devices(devices_path or get_settings().devices_file)
    return devices, {d.id: d.substation for d in devices.devices if getattr(d, "substation", None)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        scenario: Scenario = load_scenario(args.scenario) if args.scenario else normal()
    except ScenarioError as e:
        print(f"simulators: {e}", file=sys.stderr)
        return 2
    try:
        city = generate_city(args.seed, args.households)
    except ValueError as e:
        print(f"simulators: {e}", file=sys.stderr)
        return 2
    wall0 = time.time()
    sim_start = scenario.start.timestamp() if scenario.start else float(int(wall0))
    speed = args.speed or scenario.speed
    interval = args.sample_interval or scenario.sample_interval

    # the thermal model's sensor list fixes the order the scenario's masks use
    probe = ThermalModel(city, OutdoorModel(args.seed))
    resolved = ResolvedScenario(scenario, sim_start, sensor_keys=probe.sensor_keys, sensor_meta=sensor_meta(probe),
                                seed=args.seed)
    outdoor = OutdoorModel(args.seed, cold_snaps=resolved.cold_snaps())
    model = ThermalModel(city, outdoor, pump_on=resolved.pump_on)
    export(city, outdoor, args, sim_start)
    if args.export_only:
        return 0

    stop = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    print(f"city: seed {args.seed}, {len(city.households)} households in {len(city.substations)} substations, "
          f"{len(model.sensor_keys)} thermometers; scenario {scenario.name}: {scenario.description}", flush=True)
    for line in resolved.describe():
        print(f"  fault {line}", flush=True)

    backfill_s = max(0.0, args.backfill_days) * 86400.0
    model.reset(sim_start - backfill_s)
    publisher = None
    modbus = opcua = None
    try:
        if not args.no_mqtt:
            from simulators.mqtt_publisher import MqttPublisher

            url = args.mqtt_url or os.environ.get("HEATDESK_MQTT_URL") or "mqtt://127.0.0.1:1883"
            publisher = MqttPublisher(city, model, resolved, url, topic_root=args.topic_root,
                                      sample_interval_s=interval)
            try:
                publisher.connect()
            except (ConnectionError, OSError) as e:
                print(f"simulators: MQTT broker {url}: {e}", file=sys.stderr)
                publisher = None
                return 1
            print(f"MQTT: {url} topic root {publisher.root}/ (vendor A room/…/state, B gw/…/up, C raw/…/temperature)",
                  flush=True)
            if backfill_s:
                t = time.monotonic()
                publisher.backfill(sim_start - backfill_s, sim_start, progress=True, stop=stop)
                publisher.flush(600.0)
                s = publisher.stats.summary()
                print(f"backfill: {args.backfill_days:g} days, {s['readings']} readings in {s['messages']} messages "
                      f"in {time.monotonic() - t:.1f} s (vendor C not backfilled: {s['not_backfilled_vendor_c']})",
                      flush=True)
                _write_stats(args.stats_file, publisher)
        else:
            model.advance_to(sim_start)

        if stop.is_set():
            return 0
        # after the backfill, live: wall time maps to simulated time from here on
        wall_live = time.time()
        clock = SimClock(sim_start, wall_live, speed)
        devices, dev_subs = _device_substations(args.devices)
        provider = SubstationProvider(model, clock, dev_subs)
        if not args.no_modbus and devices.by_protocol("modbus"):
            from simulators.modbus_server import start_modbus_server

            port = args.modbus_port or int(os.environ.get("HEATDESK_MODBUS_PORT", "15020"))
            modbus = start_modbus_server(devices, "127.0.0.1", port, provider)
            units = ", ".join(f"{d.id}→unit {d.unit_id}" for d in devices.by_protocol("modbus"))
            print(f"Modbus TCP: 127.0.0.1:{port} ({units})", flush=True)
        if not args.no_opcua and devices.by_protocol("opcua"):
            from simulators.opcua_server import start_opcua_server

            port = args.opcua_port or int(os.environ.get("HEATDESK_OPCUA_PORT", "14840"))
            opcua = start_opcua_server(devices, port, provider)
            print(f"OPC UA: opc.tcp://127.0.0.1:{port}/heatdesk/ "
                  f"({', '.join(d.id for d in devices.by_protocol('opcua'))})", flush=True)
        print(f"simulators running: speed ×{speed:g}, sampling every {interval:g} s simulated "
              f"({max(interval / speed, 1.0):.1f} s wall); SIGTERM stops", flush=True)
        _live(publisher, model, clock, interval, stop, resolved.end, args.exit_after)
    finally:
        if modbus is not None:
            modbus.stop()
        if opcua is not None:
            opcua.stop()
        if publisher is not None:
            publisher.close()
            _write_stats(args.stats_file, publisher)
            print(f"published: {json.dumps(publisher.stats.summary(), ensure_ascii=False)}", flush=True)
    return 0


def _live(publisher, model: ThermalModel, clock: SimClock, interval: float, stop: threading.Event,
          end_sim: float | None, exit_after: float | None) -> None:
    """Tick every ``interval`` simulated seconds, at least 1 s of wall time apart. A sample is stamped with
    its scheduled wall time, so stamps stay ≥ 1 s apart and vendor A's second-resolution timestamps never
    repeat; ticks missed while the process was busy are skipped, not burst (devices do not catch up)."""
    step = max(interval, clock.speed * 1.0)
    k = 1
    wall_end = clock.wall0 + exit_after if exit_after is not None else None
    while not stop.is_set():
        t_sim = clock.sim0 + k * step
        if end_sim is not None and t_sim > end_sim:
            break
        due = clock.wall(t_sim)
        if wall_end is not None and due > wall_end:
            stop.wait(max(0.0, wall_end - time.time()))
            break
        if stop.wait(max(0.0, due - time.time())):
            break
        if publisher is not None:
            publisher.live_tick(t_sim, due)
        else:
            model.advance_to(t_sim)
        behind = int((clock.sim(time.time()) - clock.sim0) // step)
        if behind > k + 1:
            log.warning("live mode is %d samples behind; skipping them", behind - k - 1)
        k = max(k + 1, behind)


def _write_stats(path: Path | None, publisher) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(publisher.stats.as_dict(), ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
