"""OPC UA simulator: exact node ids (R54), values from the provider, restart on the same port, CLI."""
from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from asyncua import Client, ua

from adapters.config import load_devices
from simulators.opcua_server import DefaultProvider, plan_nodes, start_opcua_server
from tests.helpers import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent


def _devices(port: int):
    return load_devices(ROOT / "devices.yaml", env={"HEATDESK_OPCUA_PORT": str(port)})


def fixed_provider(device_id: str, now: datetime) -> dict[str, float]:
    base = {"S03-scada": 100.0, "S04-scada": 200.0}[device_id]
    return {name: base + i for i, name in enumerate(
        ["supply_temp_1", "return_temp_1", "supply_temp_2", "return_temp_2", "supply_pressure_2",
         "return_pressure_2", "outdoor_temp", "pump_status", "flow_2", "heat_power"])}


async def _read(endpoint: str, node_ids: list[str]) -> list[ua.DataValue]:
    client = Client(endpoint, timeout=4)
    await client.connect()
    try:
        return await client.read_attributes([client.get_node(n) for n in node_ids])
    finally:
        await client.disconnect()


async def _browse(endpoint: str) -> tuple[list[str], dict[str, list[str]]]:
    client = Client(endpoint, timeout=4)
    await client.connect()
    try:
        ns = await client.get_namespace_array()
        out = {}
        for folder in await client.nodes.objects.get_children():
            if folder.nodeid.NamespaceIndex != 2:
                continue
            out[(await folder.read_browse_name()).Name] = sorted(
                c.nodeid.to_string() for c in await folder.get_children())
        return ns, out
    finally:
        await client.disconnect()


@pytest.fixture(scope="module")
def sim():
    """One server for the tests that do not stop it (a start costs ~1 s of CPU)."""
    port = free_port()
    handle = start_opcua_server(_devices(port), port, fixed_provider)
    yield handle
    handle.stop()


def test_serves_exact_chinese_string_node_ids_in_namespace_2_per_substation(sim):
    port = sim.port
    cfg = _devices(port)
    assert sim.endpoint == f"opc.tcp://127.0.0.1:{port}/heatdesk/"
    ns, folders = asyncio.run(_browse(sim.endpoint))
    assert ns[2] == "urn:heatdesk:simulator"
    want = {dev.substation: sorted(n.node_id for n in cfg.opcua_nodes(dev).nodes)
            for dev in cfg.by_protocol("opcua")}
    assert folders == want
    assert "ns=2;s=S03.二次供水温度" in folders["S03"]
    ids = [n.node_id for dev in cfg.by_protocol("opcua") for n in cfg.opcua_nodes(dev).nodes]
    values = asyncio.run(_read(sim.endpoint, ids))
    expected = [fixed_provider(dev.id, datetime.now(timezone.utc))[n.name]
                for dev in cfg.by_protocol("opcua") for n in cfg.opcua_nodes(dev).nodes]
    assert [dv.Value.Value for dv in values] == expected
    assert all(dv.Value.VariantType == ua.VariantType.Double and dv.StatusCode.is_good() for dv in values)
    assert all(dv.SourceTimestamp is not None for dv in values)


def test_values_follow_the_provider_every_tick_with_source_timestamps():
    port = free_port()
    cfg = _devices(port)

    def moving(device_id: str, now: datetime) -> dict[str, float]:
        return {"supply_temp_2": round(now.timestamp() % 1000, 6)}

    sim = start_opcua_server(cfg, port, moving, interval_s=0.2)
    try:
        first = asyncio.run(_read(sim.endpoint, ["ns=2;s=S03.二次供水温度"]))[0]
        wait_for(lambda: sim.ticks >= 3, timeout=5)
        second = asyncio.run(_read(sim.endpoint, ["ns=2;s=S03.二次供水温度"]))[0]
        assert second.SourceTimestamp > first.SourceTimestamp
        for dv in (first, second):
            assert dv.Value.Value == round(dv.SourceTimestamp.timestamp() % 1000, 6)
        # points the provider does not return keep their value and are not reported as written
        assert set(sim.last_values("S03-scada")) == {"supply_temp_2"}
    finally:
        sim.stop()


def test_stop_and_restart_on_the_same_port():
    port = free_port()
    cfg = _devices(port)
    sim = start_opcua_server(cfg, port, fixed_provider)
    sim.stop()
    sim = start_opcua_server(cfg, port, fixed_provider)
    try:
        dv = asyncio.run(_read(sim.endpoint, ["ns=2;s=S04.热功率"]))[0]
        assert dv.Value.Value == fixed_provider("S04-scada", datetime.now(timezone.utc))["heat_power"]
    finally:
        sim.stop()


def test_second_server_on_a_taken_port_fails_with_a_clear_error(sim):
    with pytest.raises(RuntimeError, match=str(sim.port)):
        start_opcua_server(_devices(sim.port), sim.port, fixed_provider)


def test_faults_serve_bad_and_uncertain_status_until_cleared(sim):
    try:
        sim.set_fault("S03-scada", "supply_temp_2", "BadSensorFailure")
        sim.set_fault("S03-scada", "return_temp_2", "UncertainLastUsableValue", 41.5)
        node_ids = ["ns=2;s=S03.二次供水温度", "ns=2;s=S03.二次回水温度"]

        def faulted():
            bad, unc = asyncio.run(_read(sim.endpoint, node_ids))
            return bad.StatusCode.is_bad() and unc.StatusCode.is_uncertain() and (bad, unc)

        bad, unc = wait_for(faulted, timeout=5)
        assert bad.StatusCode.value == ua.StatusCodes.BadSensorFailure and bad.Value.Value is None
        assert unc.Value.Value == 41.5
        sim.clear_fault("S03-scada", "supply_temp_2")
        wait_for(lambda: asyncio.run(_read(sim.endpoint, node_ids[:1]))[0].StatusCode.is_good(), timeout=5)
        with pytest.raises(KeyError):
            sim.set_fault("S03-scada", "no_such_point")
        with pytest.raises(ValueError, match="status code"):
            sim.set_fault("S03-scada", "supply_temp_2", "BadWhatever")
    finally:
        sim.clear_fault("S03-scada", "supply_temp_2")
        sim.clear_fault("S03-scada", "return_temp_2")


def test_default_provider_is_plausible_for_every_point_all_day():
    cfg = _devices(14840)
    provider = DefaultProvider(cfg)
    start = datetime(2026, 12, 15, tzinfo=timezone.utc)
    for dev in cfg.by_protocol("opcua"):
        points = {n.name: n.metric for n in cfg.opcua_nodes(dev).nodes}
        for h in range(0, 24 * 60, 17):
            values = provider(dev.id, start + timedelta(minutes=h))
            assert set(values) == set(points)
            for name, v in values.items():
                lo, hi = cfg.ranges[points[name]].plausible
                assert math.isfinite(v) and lo <= v <= hi, (dev.id, name, v, (lo, hi))
            assert values["supply_temp_2"] > values["return_temp_2"]
            assert values["supply_temp_1"] > values["supply_temp_2"]
            dt = values["supply_temp_2"] - values["return_temp_2"]
            assert values["heat_power"] == pytest.approx(values["flow_2"] * 1.163 * dt, rel=0.02)
    # the two substations are not copies of each other
    a, b = (provider(d.id, start) for d in cfg.by_protocol("opcua"))
    assert a["flow_2"] != b["flow_2"]


def test_plan_nodes_refuses_namespace_0(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text("""
devices:
  - id: X
    protocol: opcua
    endpoint: opc.tcp://127.0.0.1:1/heatdesk/
    nodes: {nodes: [{name: a, node_id: "i=2258", metric: supply_temp_2}]}
""", encoding="utf-8")
    with pytest.raises(ValueError, match="namespace 0"):
        plan_nodes(load_devices(f))


def test_cli_runs_until_terminated():
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "simulators.opcua_server", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert f"opc.tcp://127.0.0.1:{port}/heatdesk/" in line
        dv = asyncio.run(_read(f"opc.tcp://127.0.0.1:{port}/heatdesk/", ["ns=2;s=S03.二次供水温度"]))[0]
        assert dv.StatusCode.is_good() and 15 <= dv.Value.Value <= 95
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
