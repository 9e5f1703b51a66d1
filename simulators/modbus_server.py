"""A Modbus TCP simulator of substation controllers, built from devices.yaml.

One pymodbus TCP server serves every Modbus device of a devices file as its own unit id (S01-plc
unit 1, S02-plc unit 2, … on one port, like a gateway in front of an RS-485 line). Each unit's
registers follow the device's map (register type, address_base, byte/word order, scale/offset) and
are encoded with ``adapters.codec.encode``, so the simulator and the adapter share one codec.

Values come from a *provider* ``values(device_id, now) -> {point_name: value}`` called every
``update_interval_s`` (default: the shortest poll interval of the served devices). The city
simulator plugs its coupled thermal model in there; :func:`default_provider` gives plausible values
for standalone use. A point missing from the provider's answer is looked up by its metric name,
else keeps its previous value (0 before the first one).

Fault switches per unit, for tests (``set_fault``): ``delay_s`` (+ random ``delay_jitter_s``) answers
late, so late answers can be reproduced (pymodbus#2777); ``offline`` answers nothing at all;
``exception_code`` answers a Modbus exception. ``set_raw`` serves raw register words regardless of the
provider (e.g. NaN patterns), ``request_count`` counts requests received per unit.

Run it:
  * in a background thread: ``handle = start_modbus_server(devices_file, host, port, provider)``,
    ``handle.stop()``;
  * inside an existing asyncio loop: ``sim = ModbusSimulator(...)``, ``await sim.start()``, ``await sim.stop()``;
  * by hand: ``python -m simulators.modbus_server --port 15020 [--devices devices.yaml]``.

The simulator only answers reads (FC 3/4): writes get exception 1 — heatdesk never writes to
controllers (R53: EEPROM write cycles are limited).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
import signal
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from adapters.codec import encode
from adapters.config import DevicesFile, ModbusDevice, ModbusMap, load_devices
from core.config import DEFAULT_DEVICES_FILE

log = logging.getLogger(__name__)

Provider = Callable[[str, datetime], Mapping[str, float]]

#: register space per unit: one block from offset 0 to the end of the highest mapped point
_TOP_ADDRESS = 65535


def default_provider(device_id: str, now: datetime) -> dict[str, float]:
    """Plausible substation values (R45/R46 ranges), varying slowly with the time of day.

    Secondary supply ≈ 50 ℃ / return ≈ 40 ℃, primary ≈ 95/55 ℃, 0.45/0.25 MPa, flow ≈ 80 m³/h,
    heat power = flow · ΔT · 1.163 kW per (m³/h·K). Each device gets a small fixed offset so two
    substations are told apart.
    """
    seed = sum(device_id.encode()) % 17
    hour = now.hour + now.minute / 60 + now.second / 3600
    outdoor = -3.0 - 4.0 * math.cos((hour - 15) / 24 * 2 * math.pi)      # coldest around 03:00
    load = (18.0 - outdoor) / (18.0 + 7.0)                                 # 1.0 at design outdoor −7 ℃ (R6)
    supply_2 = 40.0 + 14.0 * load + 0.3 * seed
    return_2 = supply_2 - 8.0 - 3.0 * load
    flow_2 = 70.0 + 15.0 * load + seed
    supply_1 = 70.0 + 35.0 * load
    return_1 = 40.0 + 15.0 * load
    return {
        "supply_temp_1": round(supply_1, 1), "return_temp_1": round(return_1, 1),
        "supply_temp_2": round(supply_2, 1), "return_temp_2": round(return_2, 1),
        "supply_pressure_2": 0.45, "return_pressure_2": 0.25,
        "outdoor_temp": round(outdoor, 1), "pump_status": 1.0, "pump_freq": round(38.0 + 6.0 * load, 1),
        "valve_pos": round(40.0 + 40.0 * load, 1), "flow_2": flow_2,
        "heat_power": flow_2 * (supply_2 - return_2) * 1.163,
    }


@dataclass
class UnitFaults:
    """Fault switches of one unit; change them any time, from any thread."""
    delay_s: float = 0.0               # every answer is late by this much …
    delay_jitter_s: float = 0.0        # … plus uniform(0, jitter)
    offline: bool = False              # no answer at all (the TCP connection stays open)
    exception_code: int | None = None  # answer every read with this Modbus exception code


@dataclass
class _Unit:
    device: ModbusDevice
    map: ModbusMap
    image: list[int]                                   # words served, index = protocol offset
    faults: UnitFaults = field(default_factory=UnitFaults)
    raw: dict[int, int] = field(default_factory=dict)  # protocol offset → word, overrides the provider
    requests: int = 0
    complaints: set[str] = field(default_factory=set)  # provider problems already logged


class ModbusSimulator:
    """The server and its units; all methods except start/stop may be called from any thread."""

    def __init__(self, devices: DevicesFile | str | Path = DEFAULT_DEVICES_FILE, *, host: str = "127.0.0.1",
                 port: int = 15020, provider: Provider | None = None, update_interval_s: float | None = None,
                 device_ids: set[str] | None = None):
        cfg = devices if isinstance(devices, DevicesFile) else load_devices(devices)
        self.host, self.port = host, port
        self.provider: Provider = provider or default_provider
        self.units: dict[int, _Unit] = {}
        self._by_device: dict[str, _Unit] = {}
        for dev in cfg.by_protocol("modbus"):
            if device_ids is not None and dev.id not in device_ids:
                continue
            if dev.unit_id in self.units:
                raise ValueError(f"devices {self.units[dev.unit_id].device.id} and {dev.id} both use unit id "
                                 f"{dev.unit_id}; one simulator serves each unit id once")
            mmap = cfg.modbus_map(dev)
            size = max(p.address - mmap.address_base + p.size for p in mmap.points)
            unit = _Unit(dev, mmap, [0] * size)
            self.units[dev.unit_id] = unit
            self._by_device[dev.id] = unit
        if not self.units:
            raise ValueError("no Modbus devices to serve")
        self.update_interval_s = update_interval_s or min(u.device.poll_interval_s for u in self.units.values())
        self._server: ModbusTcpServer | None = None
        self._updater: asyncio.Task | None = None
        self._rng = random.Random()

    # -- controls (thread-safe: plain assignments) --------------------------------------------
    def unit(self, device_id: str) -> _Unit:
        try:
            return self._by_device[device_id]
        except KeyError:
            raise KeyError(f"device {device_id!r} is not served (have {sorted(self._by_device)})") from None

    def set_fault(self, device_id: str, *, delay_s: float = 0.0, delay_jitter_s: float = 0.0, offline: bool = False,
                  exception_code: int | None = None) -> None:
        """Replace the unit's faults (call with no keywords to clear them)."""
        self.unit(device_id).faults = UnitFaults(delay_s, delay_jitter_s, offline, exception_code)

    def set_raw(self, device_id: str, words: Mapping[int, int]) -> None:
        """Serve these words (protocol offset → 0..65535) instead of the provider's values."""
        unit = self.unit(device_id)
        for off, w in words.items():
            if not 0 <= off < len(unit.image) or not 0 <= w <= 0xFFFF:
                raise ValueError(f"device {device_id}: offset {off} / word {w} outside the map or 0..65535")
        unit.raw = dict(words)

    def clear_raw(self, device_id: str) -> None:
        self.unit(device_id).raw = {}

    def request_count(self, device_id: str) -> int:
        return self.unit(device_id).requests

    def registers(self, device_id: str) -> list[int]:
        """The words a read would return now (provider values with raw overrides applied)."""
        unit = self.unit(device_id)
        image = list(unit.image)
        for off, w in unit.raw.items():
            image[off] = w
        return image

    # -- values ----------------------------------------------------------------------------------
    def refresh(self, now: datetime | None = None) -> None:
        """Ask the provider for every unit's values and encode them into the registers."""
        now = now or datetime.now(timezone.utc)
        for unit in self.units.values():
            self._refresh_unit(unit, now)

    def _refresh_unit(self, unit: _Unit, now: datetime) -> None:
        dev, mmap = unit.device, unit.map
        try:
            values = self.provider(dev.id, now)
        except Exception as e:  # noqa: BLE001 — a provider bug must not take the server down; logged once
            self._complain(unit, "provider", f"device {dev.id}: provider failed ({e!r}); keeping previous values")
            return
        unit.complaints.discard("provider")
        for p in mmap.points:
            value = values.get(p.name, values.get(p.metric))
            if value is None:
                self._complain(unit, f"missing:{p.name}", f"device {dev.id}: provider gave no value for point "
                               f"{p.name}; keeping the previous one")
                continue
            try:
                words = encode(float(value), p.type, mmap.byte_order, mmap.word_order, p.scale, p.offset)
            except (ValueError, TypeError) as e:
                self._complain(unit, f"encode:{p.name}", f"device {dev.id} point {p.name}: {e}; keeping the "
                               f"previous value")
                continue
            off = p.address - mmap.address_base
            unit.image[off:off + len(words)] = words

    @staticmethod
    def _complain(unit: _Unit, key: str, message: str) -> None:
        if key not in unit.complaints:
            unit.complaints.add(key)
            log.warning("%s", message)

    async def _update_forever(self) -> None:
        loop = asyncio.get_running_loop()
        t0, k = loop.time(), 0
        while True:
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * self.update_interval_s - loop.time()))
            self.refresh()

    # -- serving ---------------------------------------------------------------------------------
    def _sim_device(self, unit: _Unit) -> SimDevice:
        async def action(function_code: int, start_address: int, address: int, count: int,
                         registers: list[int], set_values) -> ExcCodes | None:
            faults = unit.faults
            if faults.offline:
                raise NoSuchIdException(f"unit {unit.device.unit_id} is offline")   # server stays silent
            if faults.delay_s or faults.delay_jitter_s:
                await asyncio.sleep(faults.delay_s + self._rng.uniform(0.0, faults.delay_jitter_s))
            if faults.exception_code is not None:
                return ExcCodes(faults.exception_code)
            if set_values is not None:
                return ExcCodes.ILLEGAL_FUNCTION
            image, raw = unit.image, unit.raw
            for a in range(address, address + count):
                registers[a - start_address] = raw.get(a, image[a])
            return None

        words = SimData(0, values=[0] * len(unit.image), datatype=DataType.REGISTERS)
        # the other register type holds one register at the top of the address space, so reading the
        # map with the wrong function code answers exception 2 as a real controller would
        other = SimData(_TOP_ADDRESS, values=[0], datatype=DataType.REGISTERS)
        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        holding, inputs = (words, other) if unit.map.register_type == "holding" else (other, words)
        return SimDevice(unit.device.unit_id, simdata=(bits, list(bits), [holding], [inputs]), action=action)

    @staticmethod
    def _silent_device() -> SimDevice:
        """pymodbus sends requests for unknown unit ids to unit 0: answer nothing, like an absent slave."""
        async def action(*_args) -> ExcCodes | None:
            raise NoSuchIdException("no such unit")

        return SimDevice(0, simdata=[SimData(0, values=[0], datatype=DataType.REGISTERS)], action=action)

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending and (unit := self.units.get(pdu.dev_id)) is not None:
            unit.requests += 1
        return pdu

    async def start(self) -> None:
        self.refresh()
        devices = [self._sim_device(u) for u in self.units.values()]
        if 0 not in self.units:
            devices.append(self._silent_device())
        self._server = ModbusTcpServer(devices,
                                       address=(self.host, self.port), ignore_missing_devices=True,
                                       trace_pdu=self._trace_pdu)
        await self._server.serve_forever(background=True)
        self._updater = asyncio.create_task(self._update_forever(), name="modbus-sim-update")
        log.info("Modbus simulator on %s:%d serving %s", self.host, self.port,
                 ", ".join(f"{u.device.id}=unit {uid}" for uid, u in sorted(self.units.items())))

    async def stop(self) -> None:
        if self._updater is not None:
            self._updater.cancel()
            await asyncio.gather(self._updater, return_exceptions=True)
            self._updater = None
        if self._server is not None:
            await self._server.shutdown()
            self._server = None


class ModbusServerHandle:
    """A simulator running in its own thread and event loop."""

    def __init__(self, simulator: ModbusSimulator):
        self.simulator = simulator
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"modbus-sim:{simulator.port}", daemon=True)

    @property
    def port(self) -> int:
        return self.simulator.port

    def __getattr__(self, name: str):
        # set_fault, set_raw, clear_raw, request_count, registers, refresh, unit … of the simulator
        if name.startswith("_") or name == "simulator":
            raise AttributeError(name)
        return getattr(self.simulator, name)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                await self.simulator.start()
            except BaseException as e:
                self._error = e
                self._started.set()
                raise
            self._started.set()
            try:
                await self._stop.wait()
            finally:
                await self.simulator.stop()

        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 — reported to the starting thread
            self._error = self._error or e
            self._started.set()

    def start(self, timeout: float = 10.0) -> "ModbusServerHandle":
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"Modbus simulator on port {self.port} did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"Modbus simulator on port {self.port} failed to start: {self._error}") from self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)


def start_modbus_server(devices_file: DevicesFile | str | Path = DEFAULT_DEVICES_FILE, host: str = "127.0.0.1",
                        port: int = 15020, provider: Provider | None = None, **kwargs) -> ModbusServerHandle:
    """Start the simulator in a background thread; returns once it listens. ``handle.stop()`` ends it.

    ``kwargs`` go to :class:`ModbusSimulator` (``update_interval_s``, ``device_ids``).
    """
    return ModbusServerHandle(ModbusSimulator(devices_file, host=host, port=port, provider=provider,
                                              **kwargs)).start()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simulators.modbus_server",
                                 description="Modbus TCP simulator of the substation controllers in devices.yaml")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=15020)
    ap.add_argument("--devices", default=str(DEFAULT_DEVICES_FILE), help="devices file (default: devices.yaml)")
    ap.add_argument("--update-interval", type=float, default=None,
                    help="seconds between provider updates (default: the shortest poll interval)")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sim = ModbusSimulator(args.devices, host=args.host, port=args.port, update_interval_s=args.update_interval)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await sim.start()
        try:
            await stop.wait()
        finally:
            await sim.stop()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
