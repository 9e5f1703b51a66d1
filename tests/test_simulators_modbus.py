"""simulators/modbus_server.py: what a plain pymodbus client sees on the wire."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from pymodbus.client import AsyncModbusTcpClient

from adapters.codec import decode, encode, resolution
from adapters.config import load_devices, parse_devices
from simulators.modbus_server import ModbusSimulator, default_provider, start_modbus_server
from tests.helpers import free_port, wait_for

POINTS = ["supply_temp_1", "return_temp_1", "supply_temp_2", "return_temp_2", "supply_pressure_2",
          "return_pressure_2", "outdoor_temp", "pump_status", "pump_freq", "valve_pos", "flow_2", "heat_power"]


def read(port: int, unit: int, address: int, count: int, *, fc: int = 3, timeout: float = 1.0):
    """Registers, or ("exception", code), or "timeout" — one request on a fresh connection."""
    async def go():
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=timeout + 1, retries=0, reconnect_delay=0)
        assert await client.connect()
        try:
            call = client.read_holding_registers if fc == 3 else client.read_input_registers
            rr = await asyncio.wait_for(call(address, count=count, device_id=unit), timeout)
        except asyncio.TimeoutError:
            return "timeout"
        finally:
            client.close()
        return ("exception", rr.exception_code) if rr.isError() else list(rr.registers)
    return asyncio.run(go())


@pytest.fixture
def cfg(project_root, monkeypatch):
    monkeypatch.setenv("HEATDESK_MODBUS_PORT", str(free_port()))
    return load_devices(project_root / "devices.yaml")


def _fixed(values_by_device):
    return lambda device_id, now: values_by_device[device_id]


def test_serves_s01_and_s02_maps_as_units_1_and_2(cfg):
    port = cfg.by_protocol("modbus")[0].port
    s01 = dict(zip(POINTS, [96.5, 51.2, 49.8, 40.3, 0.45, 0.26, -6.9, 1, 41.5, 62.5, 80.75, 950.25]))
    s02 = {**s01, "supply_temp_2": 55.1, "outdoor_temp": 2.3}
    handle = start_modbus_server(cfg, port=port, provider=_fixed({"S01-plc": s01, "S02-plc": s02}))
    try:
        mmap = cfg.profiles["substation_modbus_v1"]
        for unit, expected in ((1, s01), (2, s02)):
            words = read(port, unit, 0, 14)                       # documented 1..14, address_base 1
            assert isinstance(words, list) and len(words) == 14
            for p in mmap.points:
                off = p.address - 1
                got = decode(words[off:off + p.size], p.type, mmap.byte_order, mmap.word_order, p.scale, p.offset)
                assert got == pytest.approx(expected[p.name], abs=resolution(p.type, p.scale) / 2 + 1e-6), p.name
        # hand check of R49/R53 encoding: 49.8 ℃ ×0.1 → 498 at documented address 3; 80.75 float32 low word first
        words = read(port, 1, 0, 14)
        assert words[2] == 498 and words[10:12] == [0x8000, 0x42A1]
        assert handle.request_count("S01-plc") == 2 and handle.request_count("S02-plc") == 1
    finally:
        handle.stop()


def test_wrong_register_type_and_unmapped_addresses_answer_exception_2(cfg):
    port = cfg.by_protocol("modbus")[0].port
    handle = start_modbus_server(cfg, port=port)
    try:
        assert read(port, 1, 0, 14, fc=4) == ("exception", 2)       # the map is holding registers
        assert read(port, 1, 10, 10) == ("exception", 2)            # runs past the end of the map
        assert read(port, 9, 0, 1, timeout=0.3) == "timeout"        # unknown unit: silence, like a dead slave
    finally:
        handle.stop()


def test_provider_values_are_refreshed_every_interval(cfg):
    port = cfg.by_protocol("modbus")[0].port
    values = {"S01-plc": dict.fromkeys(POINTS, 1.0), "S02-plc": dict.fromkeys(POINTS, 1.0)}
    calls: list[datetime] = []

    def provider(device_id, now):
        calls.append(now)
        return values[device_id]

    handle = start_modbus_server(cfg, port=port, provider=provider, update_interval_s=0.05)
    try:
        assert read(port, 1, 2, 1) == [10]
        values["S01-plc"] = {**values["S01-plc"], "supply_temp_2": 57.3}
        wait_for(lambda: read(port, 1, 2, 1) == [573], 5)
        assert read(port, 2, 2, 1) == [10]
        assert all(c.tzinfo is not None for c in calls)
    finally:
        handle.stop()


def test_fault_switches(cfg):
    port = cfg.by_protocol("modbus")[0].port
    handle = start_modbus_server(cfg, port=port)
    try:
        handle.set_fault("S01-plc", exception_code=4)
        assert read(port, 1, 0, 14) == ("exception", 4)
        assert isinstance(read(port, 2, 0, 14), list)               # faults are per unit
        handle.set_fault("S01-plc", offline=True)
        assert read(port, 1, 0, 14, timeout=0.3) == "timeout"
        handle.set_fault("S01-plc", delay_s=0.3)
        t0 = time.monotonic()
        assert isinstance(read(port, 1, 0, 14), list)
        assert time.monotonic() - t0 >= 0.3
        handle.set_fault("S01-plc", delay_s=0.5)
        assert read(port, 1, 0, 14, timeout=0.2) == "timeout"      # a late answer
        handle.set_fault("S01-plc")
        t0 = time.monotonic()
        assert isinstance(read(port, 1, 0, 14), list) and time.monotonic() - t0 < 0.3
    finally:
        handle.stop()


def test_raw_words_override_the_provider_and_writes_are_refused(cfg):
    port = cfg.by_protocol("modbus")[0].port
    handle = start_modbus_server(cfg, port=port)
    try:
        handle.set_raw("S02-plc", {10: 0x0000, 11: 0x7FC0})        # flow_2 = NaN (low word first)
        assert read(port, 2, 10, 2) == [0x0000, 0x7FC0]
        assert handle.registers("S02-plc")[10:12] == [0x0000, 0x7FC0]
        with pytest.raises(ValueError):
            handle.set_raw("S02-plc", {14: 1})                      # outside the map
        with pytest.raises(ValueError):
            handle.set_raw("S02-plc", {0: 70000})
        handle.clear_raw("S02-plc")
        assert read(port, 2, 10, 2) != [0x0000, 0x7FC0]

        async def write() -> int:
            client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0, reconnect_delay=0)
            await client.connect()
            try:
                return (await client.write_register(0, 5, device_id=1)).exception_code
            finally:
                client.close()
        assert asyncio.run(write()) == 1
    finally:
        handle.stop()


def test_provider_problems_are_logged_once_and_old_values_kept(cfg, caplog):
    port = cfg.by_protocol("modbus")[0].port
    state = {"fail": False}

    def provider(device_id, now):
        if state["fail"]:
            raise RuntimeError("thermal model diverged")
        return {p: 1.0 for p in POINTS if p != "valve_pos"} | {"outdoor_temp": 1e6}   # cannot be int16 ×0.1

    caplog.set_level(logging.WARNING, logger="simulators.modbus_server")
    sim = ModbusSimulator(cfg, port=port, provider=provider)
    sim.refresh()
    sim.refresh()
    state["fail"] = True
    sim.refresh()
    sim.refresh()
    msgs = [r.getMessage() for r in caplog.records]
    assert len([m for m in msgs if "valve_pos" in m and "S01-plc" in m]) == 1
    assert len([m for m in msgs if "outdoor_temp" in m and "S01-plc" in m and "1000000" in m]) == 1
    assert len([m for m in msgs if "thermal model diverged" in m and "S01-plc" in m]) == 1
    assert sim.registers("S01-plc")[2] == 10                        # last good value still served


def test_config_errors():
    base = {"profiles": {"m": {"points": [{"name": "a", "metric": "x", "address": 0}]}}}
    two = parse_devices(yaml.safe_dump({**base, "devices": [
        {"id": "a", "protocol": "modbus", "host": "h", "unit_id": 1, "map": "m"},
        {"id": "b", "protocol": "modbus", "host": "h", "unit_id": 1, "map": "m"}]}))
    with pytest.raises(ValueError, match="a and b both use unit id 1"):
        ModbusSimulator(two)
    with pytest.raises(ValueError, match="no Modbus devices"):
        ModbusSimulator(parse_devices(yaml.safe_dump(base)))
    assert list(ModbusSimulator(two, device_ids={"b"}).units) == [1]


def test_default_provider_is_plausible_and_encodable(cfg):
    ranges = cfg.ranges
    mmap = cfg.profiles["substation_modbus_v1"]
    start = datetime(2026, 1, 15, tzinfo=timezone.utc)
    for h in range(0, 48, 3):
        for dev in ("S01-plc", "S02-plc"):
            v = default_provider(dev, start + timedelta(hours=h))
            assert set(v) == set(POINTS)
            assert 45 <= v["supply_temp_2"] <= 60 and 35 <= v["return_temp_2"] < v["supply_temp_2"]
            assert v["supply_temp_1"] > v["supply_temp_2"] and 60 <= v["flow_2"] <= 100
            for p in mmap.points:
                lo, hi = ranges[p.metric].plausible if p.metric in ranges else (-1e9, 1e9)
                assert lo <= v[p.name] <= hi, (p.name, v[p.name])
                encode(v[p.name], p.type, mmap.byte_order, mmap.word_order, p.scale, p.offset)
    assert default_provider("S01-plc", start) != default_provider("S02-plc", start)


def test_runs_inside_an_existing_event_loop(cfg):
    port = cfg.by_protocol("modbus")[0].port

    async def go():
        sim = ModbusSimulator(cfg, port=port)
        await sim.start()
        try:
            client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0, reconnect_delay=0)
            await client.connect()
            rr = await client.read_holding_registers(0, count=14, device_id=2)
            client.close()
            return list(rr.registers)
        finally:
            await sim.stop()

    assert len(asyncio.run(go())) == 14


def test_command_line(project_root):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "simulators.modbus_server", "--port", str(port),
                             "--devices", str(project_root / "devices.yaml"), "--log-level", "WARNING"],
                            cwd=project_root, env={**os.environ, "HEATDESK_MODBUS_PORT": str(port)})
    try:
        def answered():
            try:
                return read(port, 1, 0, 14, timeout=0.5)
            except (AssertionError, OSError):
                return None
        words = wait_for(lambda: isinstance(answered(), list) and answered(), 15, interval=0.1)
        assert 400 <= words[2] <= 650                              # supply_temp_2 ×0.1 from the default provider
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
