"""OPC UA adapter: node ids (R54), DataValue → Reading/Rejection, and end to end against the simulator
over real TCP: both substations; a SCADA restart (gap events, new Client, read, resubscribe); a server
that goes silent without closing TCP; a subscription the server forgets (asyncua#70); refused, mute and
connect-then-drop endpoints beside a live one (no blocking, no busy loop, one log line per outage);
bad/uncertain status codes and non-numeric nodes; a Basic256Sha256/SignAndEncrypt connection."""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from asyncua import ua

from adapters.base import CollectingSink, Reading, Rejection
from adapters.config import DevicesConfigError, DevicesFile, load_devices, parse_devices
from adapters.opcua import OpcUaAdapter, convert, parse_node_id, redact
from core.config import Settings
from core.quality import Quality
from simulators.opcua_server import APPLICATION_URI, start_opcua_server
from tests.helpers import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
UTC = timezone.utc
POINTS = ["supply_temp_1", "return_temp_1", "supply_temp_2", "return_temp_2", "supply_pressure_2",
          "return_pressure_2", "outdoor_temp", "pump_status", "flow_2", "heat_power"]
BASE = {"S03-scada": 40.0, "S04-scada": 60.0}


def provider(device_id: str, now: datetime) -> dict[str, float]:
    """Each value encodes device, point and the write time, so a reading can be checked exactly."""
    frac = round(now.timestamp() % 10, 6)
    return {name: BASE[device_id] + i + frac for i, name in enumerate(POINTS)}


def project_devices(port: int) -> DevicesFile:
    return load_devices(ROOT / "devices.yaml", env={"HEATDESK_OPCUA_PORT": str(port)})


def tuned(cfg: DevicesFile, devices=None, **overrides) -> DevicesFile:
    """Faster watchdog/backoff for tests; `devices` replaces the OPC UA device list."""
    fast = dict(watchdog_interval_s=1.0, timeout_s=2.0, reconnect_initial_s=0.2, reconnect_max_s=1.0)
    fast.update(overrides)
    devs = devices if devices is not None else cfg.by_protocol("opcua")
    return cfg.model_copy(update={"devices": tuple(d.model_copy(update=fast) for d in devs)})


def start_adapter(cfg: DevicesFile, sink: CollectingSink) -> OpcUaAdapter:
    adapter = OpcUaAdapter(cfg.by_protocol("opcua"), sink, config=cfg, settings=Settings())
    adapter.start()
    return adapter


def readings_of(sink: CollectingSink, device: str, quality: Quality | None = None) -> list[Reading]:
    return [r for r in sink.readings if r.meta.device_id == device and (quality is None or r.quality == quality)]


def events_of(sink: CollectingSink, device: str, kind: str | None = None):
    return [e for e in list(sink.events) if e.device_id == device and (kind is None or e.kind == kind)]


# ---------------------------------------------------------------------------------------------
# node ids

@pytest.mark.parametrize("text, ns, ident, kind", [
    ("ns=2;s=S03.二次供水温度", 2, "S03.二次供水温度", ua.NodeIdType.String),
    # R54: tag lists exported from SCADA tools are percent-encoded UTF-8
    ("ns=2;s=S03.%E4%BA%8C%E6%AC%A1%E4%BE%9B%E6%B0%B4%E6%B8%A9%E5%BA%A6", 2, "S03.二次供水温度", ua.NodeIdType.String),
    ("ns=2;s=ZLZ.%E9%94%85%E7%82%89%E5%AE%9E%E9%99%85%E5%87%BA%E6%B0%B4%E6%B8%A9%E5%BA%A61", 2,
     "ZLZ.锅炉实际出水温度1", ua.NodeIdType.String),
    ("ns=2;s=Channel1.PLC.温度;备用", 2, "Channel1.PLC.温度;备用", ua.NodeIdType.String),   # ';' inside s=
    ("ns=2;s=100%FF", 2, "100%FF", ua.NodeIdType.String),        # not UTF-8 once decoded: taken literally
    ("ns=3;i=1042", 3, 1042, ua.NodeIdType.Numeric),
    ("i=2258", 0, 2258, ua.NodeIdType.Numeric),
])
def test_parse_node_id(text, ns, ident, kind):
    nid = parse_node_id(text)
    assert (nid.NamespaceIndex, nid.Identifier) == (ns, ident)
    assert nid.NodeIdType == kind or (kind == ua.NodeIdType.Numeric and nid.NodeIdType in (
        ua.NodeIdType.TwoByte, ua.NodeIdType.FourByte, ua.NodeIdType.Numeric))


@pytest.mark.parametrize("url, shown", [
    ("opc.tcp://127.0.0.1:4840/heatdesk/", "opc.tcp://127.0.0.1:4840/heatdesk/"),
    ("opc.tcp://scada:s3cret@10.0.0.5:4840/", "opc.tcp://***@10.0.0.5:4840/"),
])
def test_endpoint_credentials_never_reach_logs_or_rejects(url, shown):
    assert redact(url) == shown


@pytest.mark.parametrize("text", ["ns=x;s=a", "ns=2;i=abc", "ns=2", "garbage"])
def test_parse_node_id_refuses_garbage(text):
    with pytest.raises(ValueError, match="node id"):
        parse_node_id(text)


# ---------------------------------------------------------------------------------------------
# DataValue → Reading | Rejection (table)

T0 = datetime(2026, 11, 23, 8, 0, 0, 123456, tzinfo=UTC)
NOW = datetime(2026, 11, 23, 8, 0, 5, tzinfo=UTC)
GOOD, BAD, UNC = (ua.StatusCode(ua.StatusCodes.Good), ua.StatusCode(ua.StatusCodes.BadSensorFailure),
                  ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue))


def dv(value, status=GOOD, src=T0, srv=None, vtype=None):
    variant = ua.Variant(value, vtype) if vtype is not None else ua.Variant(value)
    return ua.DataValue(variant, StatusCode=status, SourceTimestamp=src, ServerTimestamp=srv)


CASES = [
    # name, datavalue, scale, offset, after_gap, expected (value, quality, ts) or rejection reason
    ("good double", dv(55.5), 1, 0, False, (55.5, Quality.GOOD, T0)),
    ("scaled int", dv(555, vtype=ua.VariantType.Int16), 0.1, 0, False, (55.5, Quality.GOOD, T0)),
    ("offset", dv(10.0), 1, -2.5, False, (7.5, Quality.GOOD, T0)),
    ("bool pump", dv(True), 1, 0, False, (1.0, Quality.GOOD, T0)),
    ("uncertain", dv(41.5, UNC), 1, 0, False, (41.5, Quality.UNCERTAIN, T0)),
    ("bad with value", dv(41.5, BAD), 1, 0, False, (41.5, Quality.DEVICE_ERROR, T0)),
    ("first read after gap", dv(41.5), 1, 0, True, (41.5, Quality.UNCERTAIN, T0)),
    ("bad after gap stays error", dv(41.5, BAD), 1, 0, True, (41.5, Quality.DEVICE_ERROR, T0)),
    ("server ts fallback", dv(1.0, src=None, srv=T0 + timedelta(seconds=1)), 1, 0, False,
     (1.0, Quality.GOOD, T0 + timedelta(seconds=1))),
    ("no ts → arrival", dv(1.0, src=None), 1, 0, False, (1.0, Quality.GOOD, NOW)),
    ("1601 ts → arrival", dv(1.0, src=datetime(1601, 1, 1, tzinfo=UTC)), 1, 0, False, (1.0, Quality.GOOD, NOW)),
    ("naive ts is UTC", dv(1.0, src=datetime(2026, 11, 23, 8, 0)), 1, 0, False,
     (1.0, Quality.GOOD, datetime(2026, 11, 23, 8, 0, tzinfo=UTC))),
    ("bad without value", dv(None, BAD), 1, 0, False, "bad_status"),
    ("good without value", dv(None), 1, 0, False, "no_value"),
    ("string", dv("故障"), 1, 0, False, "non_numeric"),
    ("numeric string is still a string", dv("55.5"), 1, 0, False, "non_numeric"),
    ("array", dv([1.0, 2.0]), 1, 0, False, "non_numeric"),
    ("nan", dv(float("nan")), 1, 0, False, "nan"),
    ("inf", dv(float("inf")), 1, 0, False, "nan"),
]


@pytest.mark.parametrize("name, value, scale, offset, after_gap, expected", CASES, ids=[c[0] for c in CASES])
def test_convert(name, value, scale, offset, after_gap, expected):
    cfg = project_devices(14840)
    dev = cfg.by_protocol("opcua")[0]
    node = cfg.opcua_nodes(dev).nodes[2].model_copy(update={"scale": scale, "offset": offset})
    out = convert(dev, node, value, NOW, after_gap=after_gap)
    if isinstance(expected, str):
        assert isinstance(out, Rejection)
        assert (out.source, out.device_id, out.reason) == ("opcua", "S03-scada", expected)
        assert out.address == f"{dev.endpoint}|ns=2;s=S03.二次供水温度"
        assert "S03-scada" in out.detail and "supply_temp_2" in out.detail
    else:
        assert isinstance(out, Reading)
        v, q, ts = expected
        assert out.value == pytest.approx(v) and out.quality == q and out.ts == ts
        assert out.ts.tzinfo is not None
        assert out.sensor == "S03-scada/supply_temp_2"
        m = out.meta
        assert (m.metric, m.unit, m.protocol, m.device_id, m.point, m.substation_code, m.weather_station_code) == \
            ("supply_temp_2", "C", "opcua", "S03-scada", "supply_temp_2", "S03", "TJ")


def test_bad_config_is_refused_at_construction(tmp_path):
    text = """
devices:
  - id: X
    protocol: opcua
    endpoint: opc.tcp://127.0.0.1:1/heatdesk/
    nodes: {nodes: [{name: a, node_id: "ns=2;i=notanumber", metric: supply_temp_2}]}
"""
    cfg = parse_devices(text)
    with pytest.raises(DevicesConfigError, match="device X point a"):
        OpcUaAdapter(cfg.by_protocol("opcua"), CollectingSink(), config=cfg, settings=Settings())
    cfg = parse_devices(f"""
devices:
  - id: Y
    protocol: opcua
    endpoint: opc.tcp://127.0.0.1:1/heatdesk/
    security_policy: Basic256Sha256
    security_mode: SignAndEncrypt
    certificate: {tmp_path}/missing.der
    private_key: {tmp_path}/missing.pem
    nodes: {{nodes: [{{name: a, node_id: "ns=2;s=a", metric: supply_temp_2}}]}}
""")
    with pytest.raises(DevicesConfigError, match="device Y: certificate file"):
        OpcUaAdapter(cfg.by_protocol("opcua"), CollectingSink(), config=cfg, settings=Settings())


# ---------------------------------------------------------------------------------------------
# end to end over TCP

class FreezableProxy:
    """TCP proxy that can stop forwarding without closing anything: a hung server or a black-holed
    link, the case where asyncua's subscriptions die silently (asyncua#70). With `kill_after` it
    closes every connection that many seconds after accepting it (a server that drops clients)."""

    def __init__(self, target_port: int, kill_after: float | None = None):
        self.target_port = target_port
        self.kill_after = kill_after
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.thawed = threading.Event()
        self.thawed.set()
        self.closed = False
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            if self.kill_after is not None:
                threading.Timer(self.kill_after, self._kill, args=(client, upstream)).start()
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.thawed.wait()
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @staticmethod
    def _kill(*socks: socket.socket) -> None:
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.closed = True
        self.thawed.set()
        self.listener.close()
        for s in self.sockets:
            s.close()



@pytest.fixture(scope="module")
def sim():
    """One simulator for the tests that do not stop it (a server start costs ~1 s of CPU)."""
    port = free_port()
    handle = start_opcua_server(project_devices(port), port, provider, interval_s=0.5)
    yield handle
    handle.stop()

def test_receives_both_substations_exactly_as_served(sim):
    cfg = tuned(project_devices(sim.port))
    sink = CollectingSink()
    adapter = start_adapter(cfg, sink)
    try:
        keys = {f"{d}/{p}" for d in BASE for p in POINTS}

        def two_of_each():
            seen: dict[str, int] = {}
            for r in sink.readings:
                seen[r.sensor] = seen.get(r.sensor, 0) + 1
            return set(seen) == keys and min(seen.values()) >= 2

        wait_for(two_of_each, timeout=15, message="two readings of every S03/S04 node")
    finally:
        adapter.stop()
    assert all(not d.upstream_retains for d in sink.deliveries)
    assert not sink.rejects
    for r in sink.readings:
        dev, point = r.sensor.split("/")
        assert r.quality == Quality.GOOD
        assert r.value == provider(dev, r.ts)[point], r           # value written at exactly that SourceTimestamp
        assert (r.meta.protocol, r.meta.device_id, r.meta.point, r.meta.metric) == ("opcua", dev, point, point)
        assert r.meta.substation_code == dev[:3] and r.meta.weather_station_code == "TJ"
    assert [e.kind for e in events_of(sink, "S03-scada")] == ["connected", "disconnected"]
    assert events_of(sink, "S03-scada")[-1].detail == "adapter stopped"


def test_server_restart_gives_a_gap_and_data_resumes(capsys):
    port = free_port()
    cfg = tuned(project_devices(port))
    sim = start_opcua_server(project_devices(port), port, provider, interval_s=0.5)
    sink = CollectingSink()
    adapter = start_adapter(cfg, sink)
    try:
        wait_for(lambda: all(len(readings_of(sink, d)) >= 20 for d in BASE), timeout=15)
        stopped_at = datetime.now(UTC)
        sim.stop()
        wait_for(lambda: all(events_of(sink, d, "gap_start") for d in BASE), timeout=10,
                 message="gap_start after the server went away")
        detected_at = datetime.now(UTC)
        restart_at = datetime.now(UTC)
        t_restart = time.monotonic()
        sim = start_opcua_server(project_devices(port), port, provider, interval_s=0.5)
        listening_at = datetime.now(UTC)
        wait_for(lambda: all(events_of(sink, d, "gap_end") for d in BASE), timeout=15,
                 message="gap_end after the restart")
        resumed_s = time.monotonic() - t_restart
        wait_for(lambda: all(any(r.ts > listening_at for r in readings_of(sink, d, Quality.GOOD)) for d in BASE),
                 timeout=10, message="subscription data after the restart")
    finally:
        adapter.stop()
        sim.stop()
    stats = adapter.stats()
    with capsys.disabled():
        print(f"\n[opcua restart] loss detected {(detected_at - stopped_at).total_seconds():.2f}s after stop; "
              f"data back {resumed_s:.2f}s after restart began; reconnect_s "
              f"{ {d: [round(x, 2) for x in s.reconnect_s] for d, s in stats.items()} }")
    for d in BASE:
        (start,), (end,) = events_of(sink, d, "gap_start"), events_of(sink, d, "gap_end")
        before = [r for r in readings_of(sink, d) if r.ts <= stopped_at]
        # gap_start is the time of the last data before the loss
        assert start.at == max(r.ts for r in before)
        assert stopped_at - timedelta(seconds=2) < start.at <= stopped_at
        assert restart_at <= end.at and end.at > start.at
        # nothing was invented for the outage
        assert not [r for r in readings_of(sink, d) if start.at < r.ts < restart_at]
        # the read right after reconnecting: every node once, UNCERTAIN (core/quality.py), exact values
        first_after = [r for r in readings_of(sink, d, Quality.UNCERTAIN) if r.ts >= restart_at]
        assert {r.meta.point for r in first_after} == set(POINTS)
        after = [r for r in readings_of(sink, d) if r.ts >= restart_at]
        assert all(r.value == provider(d, r.ts)[r.meta.point] for r in after)
        assert [e.kind for e in events_of(sink, d)] == [
            "connected", "disconnected", "gap_start", "connected", "gap_end", "disconnected"]
        assert stats[d].losses == 1 and len(stats[d].reconnect_s) == 1
        # backoff capped at reconnect_max_s (1 s): data resumes soon after the server is back
        assert (end.at - listening_at).total_seconds() < 1.0 + 4.0     # + margin for a loaded 2-core CI box


def test_a_dead_endpoint_does_not_block_the_live_one(sim, caplog):
    caplog.set_level(logging.WARNING, logger="adapters.opcua")
    port = sim.port
    refused = free_port()                      # nothing listens there
    mute = socket.socket(socket.AF_INET, socket.SOCK_STREAM)   # accepts TCP, never speaks OPC UA
    mute.bind(("127.0.0.1", 0))
    mute.listen(16)
    base = project_devices(port)
    s03, s04 = base.by_protocol("opcua")
    flapping = FreezableProxy(port, kill_after=0.3)     # accepts, serves, drops the client after 0.3 s
    devs = [s03.model_copy(update={"endpoint": f"opc.tcp://127.0.0.1:{refused}/heatdesk/"}),
            s04.model_copy(update={"id": "S04-mute", "endpoint": f"opc.tcp://127.0.0.1:{mute.getsockname()[1]}/x/"}),
            s03.model_copy(update={"id": "S03-flap", "endpoint": f"opc.tcp://127.0.0.1:{flapping.port}/heatdesk/"}),
            s04]
    cfg = tuned(base, devs, timeout_s=1.0)
    sink = CollectingSink()
    t0 = time.monotonic()
    adapter = start_adapter(cfg, sink)
    try:
        wait_for(lambda: {r.meta.point for r in readings_of(sink, "S04-scada")} == set(POINTS), timeout=5,
                 message="live device data while the others are dead")
        live_after = time.monotonic() - t0
        wait_for(lambda: adapter.stats()["S03-scada"].connect_failures >= 4
                 and adapter.stats()["S04-mute"].connect_failures >= 2, timeout=15)
        elapsed = time.monotonic() - t0
        failures = adapter.stats()["S03-scada"].connect_failures
        flaps = adapter.stats()["S03-flap"].connects
        t_stop = time.monotonic()
        adapter.stop()
        stop_s = time.monotonic() - t_stop
    finally:
        adapter.stop()
        mute.close()
        flapping.close()
    assert live_after < 3.0
    assert stop_s < 2.0          # a connect hanging on the mute endpoint does not hold up shutdown
    assert not readings_of(sink, "S03-scada") and not readings_of(sink, "S04-mute")
    # no busy loop: at most one attempt per reconnect_initial_s (0.2 s), backoff doubling to 1 s
    assert failures <= elapsed / 0.2 + 1
    # a server that drops us right after connecting gets the backoff too: cycles of 0.3 s up plus
    # 0.2, 0.4, 0.8, 1, 1 … s waiting, never a connect/drop loop at network speed (~0.3 s per cycle)
    assert 2 <= flaps <= elapsed / 0.5 + 1, (flaps, elapsed)
    for d in ("S03-scada", "S04-mute"):
        # one failure, one log line and one error event per outage, however many attempts
        assert len(events_of(sink, d, "error")) == 1
        logged = [rec for rec in caplog.records if d in rec.getMessage() and "cannot connect" in rec.getMessage()]
        assert len(logged) == 1, [rec.getMessage() for rec in logged]
        assert not events_of(sink, d, "gap_start")          # never connected: no data, no gap to bound


def test_bad_and_uncertain_status_and_non_numeric_nodes(sim):
    port = sim.port
    base = project_devices(port)
    extra = parse_devices(f"""
devices:
  - id: S03-text
    protocol: opcua
    endpoint: "opc.tcp://127.0.0.1:{port}/heatdesk/"
    substation: S03
    nodes:
      nodes:
        - {{name: product, node_id: "i=2261", metric: supply_temp_2}}        # Server BuildInfo ProductName: a string
        - {{name: missing, node_id: "ns=2;s=S03.不存在的点", metric: supply_temp_2}}
""").by_protocol("opcua")
    cfg = tuned(base, [*base.by_protocol("opcua"), *extra])
    sink = CollectingSink()
    adapter = start_adapter(cfg, sink)
    try:
        wait_for(lambda: len(readings_of(sink, "S03-scada")) >= 10, timeout=10)
        sim.set_fault("S03-scada", "supply_temp_2", "BadSensorFailure")
        sim.set_fault("S04-scada", "return_temp_2", "UncertainLastUsableValue", 41.5)
        bad = wait_for(lambda: [x for x in sink.rejects if x.reason == "bad_status"], timeout=10)
        unc = wait_for(lambda: [r for r in readings_of(sink, "S04-scada", Quality.UNCERTAIN)
                                if r.meta.point == "return_temp_2"], timeout=10)
        text = wait_for(lambda: [x for x in sink.rejects if x.reason == "non_numeric"], timeout=10)
        missing = wait_for(lambda: [e for e in events_of(sink, "S03-text", "error") if "不存在的点" in e.detail],
                           timeout=10)
        sim.clear_fault("S03-scada", "supply_temp_2")
        cleared_at = datetime.now(UTC)
        wait_for(lambda: [r for r in readings_of(sink, "S03-scada", Quality.GOOD)
                          if r.meta.point == "supply_temp_2" and r.ts > cleared_at], timeout=10)
    finally:
        adapter.stop()
        sim.clear_fault("S03-scada", "supply_temp_2")
        sim.clear_fault("S04-scada", "return_temp_2")
    assert bad[0].device_id == "S03-scada" and bad[0].address.endswith("|ns=2;s=S03.二次供水温度")
    assert "BadSensorFailure" in bad[0].detail
    assert unc[0].value == 41.5 and unc[0].sensor == "S04-scada/return_temp_2"
    assert text[0].device_id == "S03-text" and text[0].address.endswith("|i=2261")
    assert ": str value " in text[0].detail and text[0].payload.decode().startswith("'")
    assert "BadNodeIdUnknown" in missing[0].detail
    # other points of the same device kept flowing as GOOD while one was faulted
    assert any(r.meta.point == "return_temp_2" and r.quality == Quality.GOOD for r in readings_of(sink, "S03-scada"))


def test_basic256sha256_sign_and_encrypt_with_user_and_password(tmp_path):
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    host = socket.gethostname()

    async def make():
        await setup_self_signed_certificate(tmp_path / "srv.pem", tmp_path / "srv.der", APPLICATION_URI,
                                            host, [ExtendedKeyUsageOID.SERVER_AUTH], {})
        await setup_self_signed_certificate(tmp_path / "cli.pem", tmp_path / "cli.der", "urn:heatdesk:test-ingest",
                                            host, [ExtendedKeyUsageOID.CLIENT_AUTH], {})

    asyncio.run(make())
    port = free_port()
    base = project_devices(port)
    s03, s04 = base.by_protocol("opcua")
    secure = s03.model_copy(update={"security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt",
                                    "certificate": tmp_path / "cli.der", "private_key": tmp_path / "cli.pem",
                                    "username": "heatdesk", "password": "供热-s3cret"})
    wrong_password = secure.model_copy(update={"id": "S03-wrongpw", "password": "guess"})
    plain = s04                                   # security None against a server that offers no None endpoint
    cfg = tuned(base, [secure, wrong_password, plain])
    sim = start_opcua_server(base, port, provider, interval_s=0.5, certificate=tmp_path / "srv.der",
                             private_key=tmp_path / "srv.pem", users={"heatdesk": "供热-s3cret"})
    sink = CollectingSink()
    adapter = start_adapter(cfg, sink)
    try:
        wait_for(lambda: {r.meta.point for r in readings_of(sink, "S03-scada")} == set(POINTS), timeout=15,
                 message="data over Basic256Sha256/SignAndEncrypt")
        wait_for(lambda: events_of(sink, "S04-scada", "error") and events_of(sink, "S03-wrongpw", "error"),
                 timeout=10)
    finally:
        adapter.stop()
        sim.stop()
    assert all(r.value == provider("S03-scada", r.ts)[r.meta.point] for r in readings_of(sink, "S03-scada"))
    assert not readings_of(sink, "S04-scada") and not readings_of(sink, "S03-wrongpw")
    assert "SecurityPolicy#None" in events_of(sink, "S04-scada", "error")[0].detail
    assert "BadUserAccessDenied" in events_of(sink, "S03-wrongpw", "error")[0].detail


def test_a_silent_server_is_detected_by_the_watchdog_and_the_client_recreated(sim):
    port = sim.port
    proxy = FreezableProxy(port)
    base = project_devices(port)
    s03 = base.by_protocol("opcua")[0].model_copy(update={"endpoint": f"opc.tcp://127.0.0.1:{proxy.port}/heatdesk/"})
    cfg = tuned(base, [s03], watchdog_interval_s=1.0, timeout_s=1.0)
    sink = CollectingSink()
    adapter = start_adapter(cfg, sink)
    try:
        wait_for(lambda: len(readings_of(sink, "S03-scada")) >= 10, timeout=10)
        frozen_at = datetime.now(UTC)
        t0 = time.monotonic()
        proxy.thawed.clear()
        (gap_start,) = wait_for(lambda: events_of(sink, "S03-scada", "gap_start"), timeout=10,
                                message="watchdog noticing a server that stopped answering")
        detect_s = time.monotonic() - t0
        proxy.thawed.set()
        thawed_at = datetime.now(UTC)
        (gap_end,) = wait_for(lambda: events_of(sink, "S03-scada", "gap_end"), timeout=15)
        wait_for(lambda: any(r.ts > thawed_at for r in readings_of(sink, "S03-scada", Quality.GOOD)), timeout=10)
    finally:
        adapter.stop()
        proxy.close()
    # the TCP connection never closed: only the watchdog (ours or asyncua's probe) could notice
    assert "TimeoutError" in gap_start.detail and "transport lost" not in gap_start.detail
    assert detect_s < 1.0 + 1.0 + 3.0            # watchdog interval + request timeout + margin for a loaded box
    assert gap_start.at <= frozen_at + timedelta(seconds=0.5)
    assert gap_end.at >= thawed_at and adapter.stats()["S03-scada"].losses == 1


def test_a_subscription_the_server_forgot_is_noticed_and_recreated_with_a_gap(sim):
    """asyncua#70: the connection stays up, the subscription is gone. Without our own keep-alive
    check asyncua would notice after ~2 min and recreate it silently — an unrecorded gap."""
    cfg = tuned(project_devices(sim.port), [project_devices(sim.port).by_protocol("opcua")[1]],
                watchdog_interval_s=30.0)             # the round-trip probe cannot be what notices it
    sink = CollectingSink()
    adapter = start_adapter(cfg, sink)
    try:
        wait_for(lambda: len(readings_of(sink, "S04-scada")) >= 10, timeout=10)
        assert sim.drop_subscriptions() >= 1
        dropped_at = datetime.now(UTC)
        (gap_start,) = wait_for(lambda: events_of(sink, "S04-scada", "gap_start"), timeout=15,
                                message="stale subscription noticed")
        (gap_end,) = wait_for(lambda: events_of(sink, "S04-scada", "gap_end"), timeout=10)
        wait_for(lambda: any(r.ts > gap_end.at for r in readings_of(sink, "S04-scada", Quality.GOOD)), timeout=10)
    finally:
        adapter.stop()
    assert "stale" in gap_start.detail
    assert gap_start.at <= dropped_at < gap_end.at
    # keep-alive 5 s × margin 1.2 after the last publish, checked every 0.5 s, plus slack
    assert (gap_end.at - dropped_at).total_seconds() < 6.0 + 0.5 + 4.0
