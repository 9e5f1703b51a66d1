"""Modbus polling ceiling: how many full-map polls per second one adapter process sustains.

Starts the Modbus simulator as a subprocess (``python -m simulators.modbus_server``) serving
``n_devices`` units of the substation_modbus_v1 map on one port, runs the real ``ModbusAdapter``
against it with a poll interval far below what it can reach (so every device polls back to back),
and counts polls that delivered a full map to a counting sink (no database: this is the protocol
ceiling, ingest is measured by ``heatdesk bench ingest``). One poll = one device's whole map read.

CPU is reported for both processes (user+system seconds per wall second; 1.0 = one core busy):
the adapter is one asyncio thread, so its figure shows how close it is to its one-core ceiling.

    heatdesk bench modbus [--n DEVICES] [--duration SECONDS] [--json]
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from adapters.base import Delivery, DeviceEvent
from adapters.config import load_devices
from adapters.modbus import ModbusAdapter
from core.config import DEFAULT_DEVICES_FILE, PROJECT_ROOT, Settings

PROFILE = "substation_modbus_v1"


class _CountingSink:
    """Counts full-map polls per device; keeps nothing (a long run must not grow memory)."""

    def __init__(self, points_per_poll: int):
        self.points = points_per_poll
        self.polls = 0
        self.readings = 0
        self.rejects = 0
        self._lock = threading.Lock()

    def submit(self, delivery: Delivery) -> None:
        with self._lock:
            self.readings += len(delivery.readings)
            self.rejects += len(delivery.rejects)
            if len(delivery.readings) == self.points:
                self.polls += 1

    def device_event(self, event: DeviceEvent) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _write_devices(path: Path, n: int, port: int, poll_interval_s: float) -> None:
    profile = load_devices(DEFAULT_DEVICES_FILE).profiles[PROFILE].model_dump(mode="json", exclude_defaults=True)
    devices = [{"id": f"B{i:03d}-plc", "protocol": "modbus", "host": "127.0.0.1", "port": port, "unit_id": i,
                "map": PROFILE, "substation": f"B{i:03d}", "poll_interval_s": poll_interval_s, "timeout_s": 2}
               for i in range(1, n + 1)]
    path.write_text(yaml.safe_dump({"version": 1, "profiles": {PROFILE: profile}, "devices": devices}),
                    encoding="utf-8")


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Modbus simulator exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"Modbus simulator did not listen on {port} within {timeout} s")


def measure(n_devices: int = 20, seconds: float = 10.0, warmup_s: float = 2.0) -> dict:
    """Run the measurement; returns the figures (polls/s, readings/s, CPU of both processes)."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="hd-bench-modbus-") as tmp:
        devices_file = Path(tmp) / "devices.yaml"
        _write_devices(devices_file, n_devices, port, poll_interval_s=0.0001)
        cfg = load_devices(devices_file)
        points = len(cfg.modbus_map(cfg.devices[0]).points)
        proc = subprocess.Popen([sys.executable, "-m", "simulators.modbus_server", "--port", str(port),
                                 "--devices", str(devices_file), "--update-interval", "1", "--log-level", "WARNING"],
                                cwd=PROJECT_ROOT)
        try:
            _wait_listening(port, proc)
            sink = _CountingSink(points)
            adapter = ModbusAdapter(cfg.by_protocol("modbus"), sink, config=cfg, settings=Settings())
            adapter.start()
            try:
                time.sleep(warmup_s)
                polls0, readings0, rejects0 = sink.polls, sink.readings, sink.rejects
                cpu0, srv0, t0 = time.process_time(), _cpu_seconds(proc.pid), time.monotonic()
                time.sleep(seconds)
                polls1, readings1, rejects1 = sink.polls, sink.readings, sink.rejects
                cpu1, srv1, t1 = time.process_time(), _cpu_seconds(proc.pid), time.monotonic()
            finally:
                adapter.stop()
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    wall = t1 - t0
    stats = adapter.stats()
    per_device = [s.good_polls for s in stats.values()]
    return {
        "devices": n_devices,
        "seconds": round(wall, 2),
        "polls_per_s": round((polls1 - polls0) / wall, 1),
        "readings_per_s": round((readings1 - readings0) / wall, 1),
        "rejects": rejects1 - rejects0,
        "adapter_cpu_cores": round((cpu1 - cpu0) / wall, 2),
        "simulator_cpu_cores": round((srv1 - srv0) / wall, 2),
        "per_device_polls_min_max": [min(per_device), max(per_device)] if per_device else [],
        "cpu_count": os.cpu_count(),
    }


def measure_polls_per_s(n_devices: int = 20, seconds: float = 10.0) -> float:
    return measure(n_devices, seconds)["polls_per_s"]


def run(args) -> dict:
    n = getattr(args, "n", None) or 20
    seconds = getattr(args, "duration", None) or 10.0
    result = measure(n, seconds)
    print(f"modbus: {result['polls_per_s']:.0f} polls/s ({result['readings_per_s']:.0f} readings/s) over "
          f"{result['devices']} devices for {result['seconds']} s; adapter CPU {result['adapter_cpu_cores']:.2f} "
          f"cores, simulator CPU {result['simulator_cpu_cores']:.2f} cores; target ≥ 500 polls/s")
    return result
