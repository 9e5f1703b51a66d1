"""`heatdesk up` from nothing: private PostgreSQL and broker, simulators, ingest, jobs and API.

The issue's "done when": readings from all three protocols arrive within a minute, `heatdesk status`
shows each device, the API answers, and Ctrl-C stops everything cleanly.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent


def _status(env: dict) -> dict | None:
    r = subprocess.run([sys.executable, "-m", "heatdesk.cli", "status", "--json"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return None
    try:
        return json.loads(r.stdout)
    except json.JSONDecodeError:
        return None


def _devices_with_readings(status: dict | None) -> set[str]:
    """Devices whose readings reached the database (status JSON: protocols → devices → figures)."""
    if not status:
        return set()
    return {dev for proto in status.get("protocols", {}).values() for dev, fig in proto["devices"].items()
            if fig.get("last_seen") and fig.get("readings_last_minute", 0) > 0}


def test_up_runs_the_whole_system_on_private_servers(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEATDESK_")}
    env.update(HEATDESK_DATA_DIR=str(tmp_path / "hd"), PYTHONUNBUFFERED="1")
    log = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "heatdesk.cli", "up", "--backfill-days", "0.25",
                             "--households", "40", "--port", "0"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        up_log = lambda: (tmp_path / "up.log").read_text(errors="replace")  # noqa: E731
        wait_for(lambda: "heatdesk is running" in up_log() or proc.poll() is not None, timeout=120,
                 message="heatdesk up to print its addresses")
        assert proc.poll() is None, up_log()
        base = next(line.split()[-1] for line in up_log().splitlines() if "API docs" in line).rsplit("/", 1)[0]
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
            assert r.status == 200
        want = {"room-thermometers", "S01-plc", "S02-plc", "S03-scada", "S04-scada"}
        got = wait_for(lambda: want <= _devices_with_readings(_status(env)) and _status(env), timeout=60,
                       message="readings from MQTT, Modbus and OPC UA devices")
        assert {"mqtt", "modbus", "opcua"} <= set(got["protocols"])
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert code == 0, (tmp_path / "up.log").read_text(errors="replace")[-3000:]
    assert "stopped." in (tmp_path / "up.log").read_text()
