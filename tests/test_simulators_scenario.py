"""Scenarios (parsing, targets, windows), the MQTT publisher's faults and counts, and `python -m simulators`."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators.city import generate_city
from simulators.mqtt_publisher import MqttPublisher, parse_mqtt_url
from simulators.scenario import (SCENARIO_DIR, ResolvedScenario, ScenarioError, load_scenario, parse_duration,
                                 parse_scenario)
from simulators.thermal import ThermalModel
from simulators.weather import OutdoorModel
from tests.helpers import free_port, wait_for

TZ8 = timezone(timedelta(hours=8))
T0 = datetime(2026, 12, 15, tzinfo=TZ8).timestamp()
H = 3600.0


# --- parsing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,seconds", [("90s", 90), ("20m", 1200), ("8h", 28800), ("2d", 172800),
                                          ("1h30m", 5400), ("-2h", -7200), (3600, 3600), (1.5, 1.5)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["8 hours", "h", "", "1y", True])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_every_shipped_scenario_loads():
    names = {p.stem for p in SCENARIO_DIR.glob("*.yaml")}
    assert {"normal", "cold_snap", "pump_failure", "sensor_offline", "stuck_value", "duplicates", "malformed",
            "clock_skew"} <= names
    for name in names:
        s = load_scenario(name)                       # by bare name as well as by path
        assert s == load_scenario(SCENARIO_DIR / f"{name}.yaml")
        assert s.name == name
    pf = load_scenario("pump_failure")
    (f,) = pf.faults
    assert (f.kind, f.targets.substations, f.duration) == ("pump_failure", ("S02",), 8 * H)
    cs = load_scenario("cold_snap")
    assert cs.faults[0].target_c == -25.0


@pytest.mark.parametrize("fault,message", [
    ({"kind": "pump_failure", "duration": "8h"}, r"fault #1 \(pump_failure\).*needs targets.substations"),
    ({"kind": "cold_snap", "duration": "1d"}, r"fault #1 \(cold_snap\).*needs target_c"),
    ({"kind": "clock_skew", "duration": "1h"}, r"needs a non-zero offset"),
    ({"kind": "meteor", "duration": "1h"}, r"fault #1 \(meteor\) kind"),
    ({"kind": "sensor_offline", "duration": "soon"}, r"fault #1 \(sensor_offline\) duration: 'soon' is not a duration"),
    ({"kind": "sensor_offline", "duration": "1h", "colour": "red"}, r"colour"),
    ({"kind": "malformed", "duration": "1h", "probability": 2}, r"probability"),
    ({"kind": "sensor_offline", "duration": "1h", "targets": {"share": 0}}, r"share"),
    ({"kind": "sensor_offline", "duration": "1h", "at": "2026-12-15T06:00:00"}, r"needs an offset"),
])
def test_bad_faults_are_named(fault, message):
    with pytest.raises(ScenarioError, match=message):
        parse_scenario({"name": "x", "faults": [fault]}, source="x.yaml")


def test_bad_file_is_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="bad.yaml: not valid YAML"):
        load_scenario(p)


def test_windows_pump_schedule_and_cold_snaps():
    s = parse_scenario({"name": "x", "faults": [
        {"kind": "pump_failure", "at": "1h", "duration": "2h", "targets": {"substations": ["S02"]}},
        {"kind": "cold_snap", "at": "2026-12-16T00:00:00+08:00", "duration": "1d", "target_c": -25, "ramp": "3h"}]})
    r = ResolvedScenario(s, T0)
    assert r.pump_on("S02", T0 + 0.5 * H) and not r.pump_on("S02", T0 + 1 * H)
    assert not r.pump_on("S02", T0 + 2.99 * H) and r.pump_on("S02", T0 + 3 * H)
    assert r.pump_on("S01", T0 + 2 * H)
    (snap,) = r.cold_snaps()
    assert (snap.start, snap.end, snap.target_c, snap.ramp_s) == (T0 + 86400, T0 + 2 * 86400, -25.0, 3 * H)


def test_targets_select_thermometers_stably():
    city = generate_city(7, 80)
    model = ThermalModel(city, OutdoorModel(7))
    meta = [(h.substation_code, h.code, r.sensor_vendor) for h, r in model.sensors]
    s = parse_scenario({"name": "x", "faults": [
        {"kind": "sensor_offline", "duration": "1h", "targets": {"substations": ["S03"]}},
        {"kind": "stuck_value", "duration": "1h", "targets": {"vendors": ["B"], "share": 0.5}},
        {"kind": "duplicates", "duration": "1h", "targets": {"share": 0.25}}]})
    r = ResolvedScenario(s, T0, sensor_keys=model.sensor_keys, sensor_meta=meta, seed=7)
    off = r.sensor_mask("sensor_offline", T0)
    assert off.any() and all((meta[i][0] == "S03") == bool(off[i]) for i in range(len(meta)))
    assert not r.sensor_mask("sensor_offline", T0 + H).any()           # window is [at, at + duration)
    stuck = r.sensor_mask("stuck_value", T0)
    n_b = sum(m[2] == "B" for m in meta)
    assert all(meta[i][2] == "B" for i in np.flatnonzero(stuck)) and 0 < stuck.sum() < n_b
    again = ResolvedScenario(s, T0, sensor_keys=model.sensor_keys, sensor_meta=meta, seed=7)
    assert np.array_equal(again.sensor_mask("duplicates", T0), r.sensor_mask("duplicates", T0))
    other = ResolvedScenario(s, T0, sensor_keys=model.sensor_keys, sensor_meta=meta, seed=8)
    assert not np.array_equal(other.sensor_mask("duplicates", T0), r.sensor_mask("duplicates", T0))


# --- publisher, in memory ----------------------------------------------------------------------

def _decode(messages: list[tuple[str, bytes]], root: str):
    """What ingest would make of the messages: (sensor key, payload time ms or None, value ℃) + bad ones."""
    good, bad = [], []
    for topic, payload in messages:
        parts = topic[len(root) + 1:].split("/")
        try:
            if parts[0] == "room":
                d = json.loads(payload)
                t = int(datetime.fromisoformat(d["ts"]).timestamp() * 1000)
                v = float(d["temp"])
                if not np.isfinite(v):
                    raise ValueError("nan")
                good.append((f"room:{parts[1]}:{parts[2]}:room_temp", t, v))
            elif parts[0] == "gw":
                d = json.loads(payload)
                for it in d["data"]:
                    good.append((f"room:{parts[1]}:{it['room']}:room_temp", int(it["t"]), int(it["v"]) / 10))
            else:
                good.append((f"room:{parts[1]}:{parts[2]}:room_temp", None, (float(payload) - 32) * 5 / 9))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            bad.append((topic, payload))
    return good, bad


@pytest.fixture(scope="module")
def small_city():
    return generate_city(7, 24)


def test_backfill_applies_every_fault_and_counts_what_the_database_should_hold(small_city):
    city = small_city
    probe = ThermalModel(city, OutdoorModel(7))
    meta = [(h.substation_code, h.code, r.sensor_vendor) for h, r in probe.sensors]
    stuck_hh = next(h.code for h, r in probe.sensors if r.sensor_vendor == "A" and h.substation_code == "S03")
    s = parse_scenario({"name": "faults", "faults": [
        {"kind": "sensor_offline", "at": "2h", "duration": "2h", "targets": {"substations": ["S01"]}},
        {"kind": "stuck_value", "at": "1h", "duration": "4h", "targets": {"households": [stuck_hh]}},
        {"kind": "duplicates", "at": "0s", "duration": "2h", "targets": {"substations": ["S03"]}},
        {"kind": "malformed", "at": "0s", "duration": "1d", "probability": 0.5, "targets": {"substations": ["S04"]}},
        {"kind": "clock_skew", "at": "6h", "duration": "2h", "offset": "-2h", "targets": {"substations": ["S02"]}}]})
    sc = ResolvedScenario(s, T0, sensor_keys=probe.sensor_keys, sensor_meta=meta, seed=7)
    model = ThermalModel(city, OutdoorModel(7), pump_on=sc.pump_on)
    model.reset(T0)
    sent: list[tuple[str, bytes]] = []
    pub = MqttPublisher(city, model, sc, "mqtt://unused", topic_root="t",
                        transport=lambda topic, payload: sent.append((topic, payload)))
    pub.backfill(T0, T0 + 12 * H)
    st = pub.stats
    assert st.messages == len(sent)
    good, bad = _decode(sent, "t")
    sub_of = {k: m[0] for k, m in zip(probe.sensor_keys, meta)}
    vendor_of = {k: m[2] for k, m in zip(probe.sensor_keys, meta)}

    # vendor C has no timestamp: never backfilled
    assert not any("/raw/" in t for t, _ in sent)
    assert all(st.skipped_no_timestamp[k] + st.offline[k] == 36 for k, v in vendor_of.items() if v == "C")
    # malformed: only S04, as many as counted, and their readings are not counted as sent
    assert len(bad) == st.malformed_messages > 0
    assert all(t.split("/")[2][:2] == "04" for t, _ in bad)
    # duplicates: S03 messages of the first two hours went out twice
    # (a −2 h skew can reproduce an earlier S02 message byte for byte: same time, same rounded value)
    bad_set = set(bad)
    repeated = [m for m, n in Counter(sent).items() if n > 1 and m not in bad_set]
    assert all(t.split("/")[2][:2] in ("02", "03") for t, _ in repeated)
    assert sum(1 for t, _ in repeated if t.split("/")[2][:2] == "03") == st.duplicate_messages > 0
    # offline: S01 thermometers lost exactly 2 h = 6 samples of the 36 in 12 h
    per_key = Counter(k for k, _, _ in good)
    for k, sub in sub_of.items():
        if sub == "S01" and vendor_of[k] in ("A", "B"):
            assert st.offline[k] == 6 and per_key[k] == 30
    # stuck: one value repeated through the window
    living = f"room:{stuck_hh}:living:room_temp"
    phase = _phase_of(pub, stuck_hh)
    in_window = {(t, v) for k, t, v in good if k == living and T0 + H <= t / 1000 - phase < T0 + 5 * H}
    after = {(t, v) for k, t, v in good if k == living and T0 + 5 * H <= t / 1000 - phase}
    assert len(in_window) == 12 == st.stuck[living] and len({v for _, v in in_window}) == 1
    assert len({v for _, v in after}) > 1
    # skew: S02 readings shifted by −2 h, landing on earlier samples' times (the database keeps one)
    assert sum(st.skewed.values()) > 0 and sum(st.collided.values()) > 0
    # the invariant the ingest tests rely on: distinct (sensor, time) == expected_rows, per sensor
    distinct = Counter(k for k, t in {(k, t) for k, t, _ in good})
    assert distinct == +st.expected_rows
    assert sum(st.readings.values()) == len(good) - sum(st.duplicated.values())


def _phase_of(pub: MqttPublisher, household: str) -> int:
    return next(phase for code, _, _, phase, _ in pub.households if code == household)


def test_live_tick_publishes_all_three_formats(small_city):
    model = ThermalModel(small_city, OutdoorModel(7))
    model.reset(T0)
    sent: list[tuple[str, bytes]] = []
    pub = MqttPublisher(small_city, model, None, "mqtt://unused", topic_root="r/x",
                        transport=lambda topic, payload: sent.append((topic, payload)))
    stamp = T0 + 1234.0
    pub.live_tick(T0 + 1200, stamp)
    kinds = Counter(t.split("/")[2] for t, _ in sent)
    assert set(kinds) == {"room", "gw", "raw"}
    good, bad = _decode(sent, "r/x")
    assert not bad and len(good) == len(model.sensor_keys)
    assert all(15 < v < 26 for _, _, v in good)
    assert {t for _, t, _ in good} == {None, int(stamp * 1000)}
    raw = next(p for t, p in sent if t.endswith("/temperature"))
    assert 59 < float(raw) < 79                                 # ℉
    a = json.loads(next(p for t, p in sent if t.endswith("/state")))
    assert set(a) == {"temp", "ts", "bat"} and a["ts"].endswith("+08:00")


def test_published_payloads_decode_with_the_devices_yaml_adapter(small_city, project_root):
    """The contract with ingest: what the publisher sends is what devices.yaml's profiles describe."""
    from adapters.config import load_devices
    from adapters.payload import decoders_for_device

    devices = load_devices(project_root / "devices.yaml", env={"HEATDESK_TOPIC_ROOT": "contract/t"})
    decoders = decoders_for_device(devices.by_protocol("mqtt")[0], devices)
    probe = ThermalModel(small_city, OutdoorModel(7))
    meta = [(h.substation_code, h.code, r.sensor_vendor) for h, r in probe.sensors]
    s = parse_scenario({"name": "x", "faults": [
        {"kind": "malformed", "duration": "1d", "probability": 0.3},
        {"kind": "duplicates", "duration": "1d", "probability": 0.3}]})
    sc = ResolvedScenario(s, T0, sensor_keys=probe.sensor_keys, sensor_meta=meta, seed=7)
    model = ThermalModel(small_city, OutdoorModel(7))
    model.reset(T0)
    sent: list[tuple[str, bytes]] = []
    pub = MqttPublisher(small_city, model, sc, "mqtt://unused", topic_root="contract/t",
                        transport=lambda topic, payload: sent.append((topic, payload)))
    pub.backfill(T0, T0 + 6 * H)
    assert not any("/raw/" in t for t, _ in sent)
    pub.live_tick(T0 + 6 * H, T0 + 6 * H + 5)
    arrival = datetime.fromtimestamp(T0 + 6 * H + 5, TZ8)
    rows, rejected_msgs = set(), 0
    for i, (topic, payload) in enumerate(sent):
        dec = next(d for d in decoders if d.topic.match(topic) is not None)
        out = dec.decode(topic, payload, arrival)
        assert bool(out.readings) != bool(out.rejects), (topic, payload, out.rejects)
        rejected_msgs += bool(out.rejects)
        for r in out.readings:
            assert 15.0 < r.value < 26.0 and r.meta.household_code and r.meta.room_code
            # A/B carry their time (a duplicate is the same row); C takes arrival time (a new row per message)
            rows.add((r.sensor, i if dec.mapping.format == "number" else r.ts.timestamp()))
    assert rejected_msgs == pub.stats.malformed_messages > 0
    assert pub.stats.duplicate_messages > 0
    assert set(pub.stats.expected_rows) <= set(probe.sensor_keys)
    assert Counter(k for k, _ in rows) == +pub.stats.expected_rows


def test_mqtt_url_parsing():
    assert parse_mqtt_url("mqtt://127.0.0.1:1883") == ("127.0.0.1", 1883, None, None)
    assert parse_mqtt_url("mqtt://u:p@broker") == ("broker", 1883, "u", "p")
    with pytest.raises(ValueError, match="mqtt://"):
        parse_mqtt_url("mqtts://broker:8883")


# --- publisher on the real broker --------------------------------------------------------------

class _Counter:
    """A plain paho subscriber counting per sensor what the broker delivered."""

    def __init__(self, url: str, root: str):
        host, port, _, _ = parse_mqtt_url(url)
        self.root = root
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=f"hdtest-sub-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{root}/#", qos=1)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect(host, port)
        self.c.loop_start()

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload))

    def snapshot(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return list(self.messages)

    def count(self) -> int:
        with self.lock:
            return len(self.messages)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_backfill_count_per_sensor_on_the_real_broker(mqtt_url, topic_prefix, small_city):
    sub = _Counter(mqtt_url, topic_prefix)
    try:
        wait_for(sub.subscribed.is_set, timeout=10, message="subscription")
        model = ThermalModel(small_city, OutdoorModel(7))
        start = T0
        model.reset(start)
        pub = MqttPublisher(small_city, model, None, mqtt_url, topic_root=topic_prefix)
        pub.connect()
        try:
            # in 6-hour chunks, letting the subscriber catch up: Mosquitto's per-client queue is bounded
            for i in range(4):
                pub.backfill(start + i * 6 * H, start + (i + 1) * 6 * H)
                assert pub.flush(30)
                wait_for(lambda: sub.count() == pub.stats.messages, timeout=20,
                         message=f"subscriber to receive {pub.stats.messages} messages")
        finally:
            pub.close()
        good, bad = _decode(sub.snapshot(), topic_prefix)
        assert not bad
        got = Counter(k for k, _, _ in good)
        vendors = {f"room:{h.code}:{r.code}:room_temp": r.sensor_vendor for h, r in model.sensors}
        assert {"A", "B"} <= set(vendors.values())
        for key, vendor in vendors.items():
            want = 0 if vendor == "C" else 72                 # 1 day at 20-minute sampling (R16)
            assert got[key] == pub.stats.expected_rows[key] == pub.stats.readings[key] == want, key
        times = defaultdict(list)
        for k, t, _ in good:
            times[k].append(t)
        for ts in times.values():
            assert set(np.diff(sorted(ts))) == {1_200_000}
    finally:
        sub.close()


# --- python -m simulators end to end -----------------------------------------------------------

def test_python_m_simulators_serves_modbus_opcua_and_mqtt(tmp_path, mqtt_url, topic_prefix, project_root):
    from pymodbus.client import ModbusTcpClient

    modbus_port, opcua_port = free_port(), free_port()
    stats = tmp_path / "stats.json"
    scenario = tmp_path / "pump.yaml"          # long enough (5 simulated days = 6 min at ×1200) for a slow start
    scenario.write_text("name: pump\nfaults:\n  - {kind: pump_failure, at: 10m, duration: 5d, "
                        "targets: {substations: [S02]}}\n", encoding="utf-8")
    log = open(tmp_path / "sim.log", "wb")
    sub = _Counter(mqtt_url, topic_prefix)
    wait_for(sub.subscribed.is_set, timeout=10, message="subscription")
    proc = subprocess.Popen([sys.executable, "-m", "simulators", "--seed", "7", "--households", "12",
                             "--scenario", str(scenario), "--speed", "1200", "--backfill-days", "0.25",
                             "--mqtt-url", mqtt_url, "--topic-root", topic_prefix, "--modbus-port", str(modbus_port),
                             "--opcua-port", str(opcua_port), "--stats-file", str(stats)],
                            cwd=project_root, stdout=log, stderr=subprocess.STDOUT)
    text = lambda: (tmp_path / "sim.log").read_text(errors="replace")  # noqa: E731
    client = ModbusTcpClient("127.0.0.1", port=modbus_port)
    try:
        wait_for(lambda: "simulators running" in text() or proc.poll() is not None, timeout=60,
                 message="the simulators to start")
        assert proc.poll() is None, text()
        backfilled = json.loads(stats.read_text())["readings"]               # backfill stats written
        assert backfilled > 0
        assert client.connect()

        def pump(unit: int) -> int:                                          # register 8 (1-based): pump_status
            r = client.read_holding_registers(7, count=1, device_id=unit)
            return -1 if r.isError() else r.registers[0]

        # the scenario stops S02's pump 10 simulated minutes in (0.5 s at ×1200); S01 keeps running
        wait_for(lambda: pump(2) == 0, timeout=20, message="S02 pump_status 0 over Modbus")
        assert pump(1) == 1

        def supply(unit: int) -> float:                                     # register 3: supply_temp_2 ×0.1 ℃
            r = client.read_holding_registers(2, count=1, device_id=unit)
            return 999.0 if r.isError() else r.registers[0] / 10

        wait_for(lambda: supply(2) < 40, timeout=20, message="S02 supply collapsing without flow")
        assert supply(1) > 40

        import asyncio

        from asyncua import Client

        async def read_opcua() -> float:
            async with Client(f"opc.tcp://127.0.0.1:{opcua_port}/heatdesk/", timeout=10) as c:
                return await c.get_node("ns=2;s=S03.二次供水温度").read_value()

        assert 30 < asyncio.run(read_opcua()) < 90
        before = sub.count()
        wait_for(lambda: sub.count() > before, timeout=20, message="live MQTT messages")
        wait_for(lambda: any("/raw/" in t for t, _ in sub.snapshot()), timeout=20,
                 message="vendor C (plain ℉, live only) messages")
    finally:
        client.close()
        sub.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    assert proc.returncode == 0, text()
    assert "published:" in text()
    final = json.loads(stats.read_text())
    assert final["readings"] > backfilled                                      # live readings came on top
    assert sum(v["expected_rows"] for v in final["per_sensor"].values()) == final["expected_rows"]
