"""OPC UA simulator: the SCADA server of the OPC UA substations (S03, S04 in devices.yaml).

Serves ``opc.tcp://<host>:<port>/heatdesk/`` without security (the simulator only; production uses
Basic256Sha256 & co., see devices.yaml). For every OPC UA device in the devices file it creates the
configured nodes with exactly their node ids — Kepware-style string ids with Chinese tag names in
namespace 2, ``ns=2;s=S03.二次供水温度`` (R54) — as Double variables in one folder per substation.

Values come from a provider ``values(device_id, now) -> {point_name: float}`` called every
``interval_s`` (1 s); each write carries SourceTimestamp = ServerTimestamp = ``now``. The city
simulator plugs its coupled thermal model in through that callable; ``DefaultProvider`` is a
plausible weather-compensated substation on its own.

``start_opcua_server(devices_file, port, provider)`` runs the server in a background thread with its
own event loop and returns a handle (``.stop()``, ``.set_fault()``); tests stop it and start a new one
on the same port to simulate a SCADA restart. ``python -m simulators.opcua_server --port P`` runs it
standalone until SIGINT/SIGTERM.

Start-up cost: ``Server.init()`` loads the standard address space (~1.1 s on our 2-core machine);
asyncua's shelf-file cache was measured slower (~1.9 s) in 2.1.0, so it is not used.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import math
import os
import signal
import socket
import threading
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole

from adapters.config import DevicesFile, load_devices
from adapters.opcua import parse_node_id

log = logging.getLogger(__name__)

Provider = Callable[[str, datetime], Mapping[str, float]]

NAMESPACE_URI = "urn:heatdesk:simulator"
APPLICATION_URI = "urn:heatdesk:simulator:server"
DEFAULT_PORT = 14840


@dataclass(frozen=True)
class SimNode:
    device_id: str
    point: str
    metric: str
    nodeid: ua.NodeId
    folder: str                        # substation code (or device id when none is configured)
    browse_name: str


def plan_nodes(devices: DevicesFile) -> list[SimNode]:
    """Every node of every OPC UA device, with its parsed node id. Node ids in namespace 0 are
    refused: that is the standard address space, a simulator must not shadow it."""
    out = []
    for dev in devices.by_protocol("opcua"):
        folder = dev.substation or dev.id
        for node in devices.opcua_nodes(dev).nodes:
            nid = parse_node_id(node.node_id)
            if nid.NamespaceIndex == 0:
                raise ValueError(f"device {dev.id} point {node.name}: node id {node.node_id} is in namespace 0")
            ident = str(nid.Identifier)
            browse = ident.split(".", 1)[1] if nid.NodeIdType == ua.NodeIdType.String and "." in ident else node.name
            out.append(SimNode(dev.id, node.name, node.metric, nid, folder, browse))
    return out


# ---------------------------------------------------------------------------------------------
# Default values: a weather-compensated substation

class DefaultProvider:
    """Plausible substation values without the city model.

    Outdoor temperature follows a daily sine around −2 ℃ (Tianjin mid-winter, minimum −7 ℃ = the
    design temperature (R6) at 03:00 local, maximum +3 ℃ at 15:00). The heat load fraction
    f = (18 − t_out) / (18 − (−7)) drives a heating curve: secondary supply 25 + 25·f ℃ (50 ℃ at
    design), secondary ΔT 3 + 7·f K, primary supply 60 + 50·f ℃, primary return 35 + 20·f ℃.
    Heat power = flow_2 · 1.163 · ΔT₂ kW (1 m³/h of water per K ≈ 1.163 kW). Each device gets its own
    size and offsets from a hash of its id, and every value ripples a little so each tick changes.
    """

    def __init__(self, devices: DevicesFile, tz_offset_h: float = 8.0):
        self.tz_offset_h = tz_offset_h                     # Asia/Shanghai, no DST
        self.points: dict[str, dict[str, str]] = {}        # device → point → metric
        unknown: set[str] = set()
        for dev in devices.by_protocol("opcua"):
            self.points[dev.id] = {n.name: n.metric for n in devices.opcua_nodes(dev).nodes}
            unknown |= {m for m in self.points[dev.id].values() if m not in _METRICS}
        if unknown:
            log.info("DefaultProvider has no model for metrics %s; those nodes keep their initial 0.0",
                     sorted(unknown))

    def __call__(self, device_id: str, now: datetime) -> dict[str, float]:
        points = self.points.get(device_id, {})
        seed = zlib.crc32(device_id.encode("utf-8"))
        t = now.timestamp()
        hour = ((t / 3600.0) + self.tz_offset_h) % 24.0
        t_out = -2.0 + 5.0 * math.sin(2 * math.pi * (hour - 9.0) / 24.0)
        f = min(max((18.0 - t_out) / 25.0, 0.2), 1.2)
        size = 0.8 + (seed % 400) / 1000.0                 # 0.8 … 1.2
        trim = ((seed >> 10) % 21 - 10) / 10.0             # −1.0 … +1.0 K
        supply_2 = 25.0 + 25.0 * f + trim
        return_2 = supply_2 - (3.0 + 7.0 * f)
        supply_1 = 60.0 + 50.0 * f
        return_1 = 35.0 + 20.0 * f + trim
        flow_2 = 150.0 * size
        power = flow_2 * 1.163 * (supply_2 - return_2)
        model = {
            "outdoor_temp": t_out,
            "supply_temp_1": supply_1,
            "return_temp_1": return_1,
            "supply_temp_2": supply_2,
            "return_temp_2": return_2,
            "supply_pressure_2": 0.45 + 0.02 * (size - 1.0),
            "return_pressure_2": 0.25,
            "flow_2": flow_2,
            "flow_1": power / (1.163 * (supply_1 - return_1)),
            "heat_power": power,
            "heat_total": (t - 1_750_000_000.0) * power / 1e6 * 0.5 + 10_000.0,   # GJ, always rising
            "pump_status": 1.0,
            "pump_freq": 35.0 + 10.0 * min(f, 1.0),
            "valve_pos": 30.0 + 50.0 * min(f, 1.0),
            "makeup_flow": 0.4 * size,
        }
        out = {}
        for i, (point, metric) in enumerate(points.items()):
            if metric not in model:
                continue
            v = model[metric]
            if metric not in ("pump_status", "heat_total"):
                v += 0.002 * abs(v) * math.sin(t / 7.0 + i + seed % 10)   # small ripple, ±0.2 %
            out[point] = round(v, 3)
        return out


_METRICS = {"outdoor_temp", "supply_temp_1", "return_temp_1", "supply_temp_2", "return_temp_2", "supply_pressure_2",
            "return_pressure_2", "flow_2", "flow_1", "heat_power", "heat_total", "pump_status", "pump_freq",
            "valve_pos", "makeup_flow"}


# ---------------------------------------------------------------------------------------------
# The server

class OpcUaServerHandle:
    """A running simulator. Thread-safe methods; ``stop()`` releases the port for a restart."""

    def __init__(self, devices: DevicesFile, port: int, provider: Provider | None, host: str, interval_s: float,
                 certificate: Path | None = None, private_key: Path | None = None,
                 users: Mapping[str, str] | None = None):
        self.devices = devices
        self.users = dict(users) if users else None
        self.certificate = certificate
        self.private_key = private_key
        self.port = port
        self.host = host
        self.interval_s = interval_s
        self.endpoint = f"opc.tcp://{host}:{port}/heatdesk/"
        self.provider: Provider = provider or DefaultProvider(devices)
        self.nodes = plan_nodes(devices)
        self._by_point = {(n.device_id, n.point): n for n in self.nodes}
        self._faults: dict[tuple[str, str], tuple[ua.StatusCode, float | None]] = {}
        self._lock = threading.Lock()
        self._last: dict[str, dict[str, float]] = {}
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._tick_now: asyncio.Event | None = None
        self._server: Server | None = None
        self._provider_failing: set[str] = set()
        self.ticks = 0
        self._thread = threading.Thread(target=self._thread_main, name=f"opcua-sim:{port}", daemon=True)

    # --- control from other threads ------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "OpcUaServerHandle":
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"OPC UA simulator on port {self.port} did not start within {timeout}s")
        if self._error is not None:
            raise RuntimeError(f"OPC UA simulator on port {self.port} failed to start: {self._error!r}") \
                from self._error
        return self

    def stop(self, timeout: float = 15.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:    # loop closed meanwhile
                pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"OPC UA simulator on port {self.port} did not stop within {timeout}s")

    def set_fault(self, device_id: str, point: str, status: str = "BadSensorFailure",
                  value: float | None = None) -> None:
        """From the next tick on, serve `point` with this status code (a ua.StatusCodes name) and value
        until ``clear_fault``. Servers null the value of Bad statuses (OPC UA Part 4 §7.7.1)."""
        if (device_id, point) not in self._by_point:
            raise KeyError(f"no OPC UA point {device_id}/{point}")
        if not hasattr(ua.StatusCodes, status):
            raise ValueError(f"{status!r} is not an OPC UA status code name (e.g. BadSensorFailure)")
        code = ua.StatusCode(getattr(ua.StatusCodes, status))
        with self._lock:
            self._faults[(device_id, point)] = (code, value)
        self._poke()

    def clear_fault(self, device_id: str, point: str) -> None:
        with self._lock:
            self._faults.pop((device_id, point), None)
        self._poke()

    def drop_subscriptions(self, timeout: float = 5.0) -> int:
        """Forget every client subscription while staying up and connected — the SCADA behaviour
        behind asyncua#70 (subscriptions die silently). Returns how many were dropped. Uses asyncua's
        internal subscription service: there is no public server API for it."""
        loop, server = self._loop, self._server
        if loop is None or server is None:
            raise RuntimeError("simulator is not running")

        async def drop() -> int:
            service = server.iserver.subscription_service
            ids = list(service.subscriptions)
            await service.delete_subscriptions(ids)
            return len(ids)

        return asyncio.run_coroutine_threadsafe(drop(), loop).result(timeout)

    def last_values(self, device_id: str) -> dict[str, float]:
        """The values written by the last tick for this device (what a client should read)."""
        with self._lock:
            return dict(self._last.get(device_id, {}))

    def _poke(self) -> None:
        loop, ev = self._loop, self._tick_now
        if loop is not None and ev is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:
                pass

    # --- the loop ----------------------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # noqa: BLE001 — handed to start() (or logged when already running)
            if self._ready.is_set():
                log.exception("OPC UA simulator on port %s crashed", self.port)
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._tick_now = asyncio.Event()
        server = self._server = Server(user_manager=_PasswordUsers(self.users) if self.users else None)
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("heatdesk OPC UA simulator")
        await server.set_application_uri(APPLICATION_URI)     # the URI a server certificate should carry
        if self.certificate is not None and self.private_key is not None:
            # secure endpoints only, as a production SCADA should be configured (field-lessons.md)
            await server.load_certificate(str(self.certificate))
            await server.load_private_key(str(self.private_key))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                                        ua.SecurityPolicyType.Basic256Sha256_Sign,
                                        ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
                                        ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt])
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        if self.users:
            server.set_identity_tokens([ua.UserNameIdentityToken])     # no anonymous sessions
        # asyncua's clock task sleeps 1 s per round and stop() waits for it; our tick writes
        # Server_ServerStatus_CurrentTime instead, so a restart is ~1 s faster
        server.disable_clock()
        await self._build(server)
        await self._tick(server)
        await server.start()
        try:
            self._ready.set()
            loop = asyncio.get_running_loop()
            next_at = loop.time() + self.interval_s
            while not self._stop.is_set():
                waiters = [asyncio.create_task(self._stop.wait()), asyncio.create_task(self._tick_now.wait())]
                await asyncio.wait(waiters, timeout=max(0.0, next_at - loop.time()),
                                   return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
                if self._stop.is_set():
                    break
                if self._tick_now.is_set():
                    self._tick_now.clear()
                else:
                    next_at += self.interval_s
                    if next_at < loop.time():        # fell behind (slow provider): do not burst
                        next_at = loop.time() + self.interval_s
                await self._tick(server)
        finally:
            await self._shutdown(server)

    @staticmethod
    async def _shutdown(server: Server) -> None:
        """asyncua's stop() closes the client transports it knows, then awaits cleanup while the
        listening socket is still open; a client that reconnects at once (ours does) gets accepted
        in that window and Python 3.11's wait_closed() then waits for it forever. Keep closing
        whatever connection appears until stop() returns. The listening socket is closed first, as
        when a real server process dies (asyncua exposes no public handle for it)."""
        listener = getattr(server.bserver, "_server", None)
        if listener is not None:
            listener.close()
        stopping = asyncio.create_task(server.stop())
        while not stopping.done():
            await asyncio.wait({stopping}, timeout=0.05)
            for transport in list(server.iserver.asyncio_transports):
                transport.close()
        await stopping

    async def _build(self, server: Server) -> None:
        needed = sorted({n.nodeid.NamespaceIndex for n in self.nodes} | {2})
        k = 0
        while len(await server.get_namespace_array()) <= max(needed):
            uri = NAMESPACE_URI if k == 0 else f"{NAMESPACE_URI}:{k}"
            await server.register_namespace(uri)
            k += 1
        folders: dict[str, object] = {}
        created: set[ua.NodeId] = set()
        for n in self.nodes:
            if n.folder not in folders:
                folders[n.folder] = await server.nodes.objects.add_folder(ua.NodeId(n.folder, 2),
                                                                          ua.QualifiedName(n.folder, 2))
            if n.nodeid in created:
                continue
            created.add(n.nodeid)
            await folders[n.folder].add_variable(  # type: ignore[attr-defined]
                n.nodeid, ua.QualifiedName(n.browse_name, n.nodeid.NamespaceIndex),
                ua.Variant(0.0, ua.VariantType.Double))

    async def _tick(self, server: Server) -> None:
        now = datetime.now(timezone.utc)
        await server.write_attribute_value(ua.NodeId(ua.ObjectIds.Server_ServerStatus_CurrentTime),
                                           ua.DataValue(ua.Variant(now, ua.VariantType.DateTime)))
        with self._lock:
            faults = dict(self._faults)
        for dev in self.devices.by_protocol("opcua"):
            try:
                values = dict(self.provider(dev.id, now))
            except Exception:
                if dev.id not in self._provider_failing:
                    self._provider_failing.add(dev.id)
                    log.exception("OPC UA simulator: provider failed for %s; its nodes keep their last values",
                                  dev.id)
                continue
            self._provider_failing.discard(dev.id)
            written: dict[str, float] = {}
            for point, raw in values.items():
                node = self._by_point.get((dev.id, point))
                if node is None:
                    continue
                fault = faults.get((dev.id, point))
                if fault is not None:
                    code, fval = fault
                    variant = ua.Variant(None, ua.VariantType.Null) if fval is None \
                        else ua.Variant(float(fval), ua.VariantType.Double)
                    dv = ua.DataValue(variant, StatusCode=code, SourceTimestamp=now, ServerTimestamp=now)
                else:
                    value = float(raw)
                    dv = ua.DataValue(ua.Variant(value, ua.VariantType.Double),
                                      StatusCode=ua.StatusCode(ua.StatusCodes.Good),
                                      SourceTimestamp=now, ServerTimestamp=now)
                    written[point] = value
                await server.write_attribute_value(node.nodeid, dv)
            with self._lock:
                self._last.setdefault(dev.id, {}).update(written)
        self.ticks += 1


def start_opcua_server(devices_file: str | Path | DevicesFile, port: int, provider: Provider | None = None, *,
                       host: str = "127.0.0.1", interval_s: float = 1.0, certificate: Path | None = None,
                       private_key: Path | None = None, users: Mapping[str, str] | None = None) -> OpcUaServerHandle:
    """Start the simulator in a background thread; returns once it listens. ``provider`` defaults to
    ``DefaultProvider``. With ``certificate`` and ``private_key`` (the server's own) it offers only
    Basic256Sha256 / Aes128_Sha256_RsaOaep / Aes256_Sha256_RsaPss endpoints and no None endpoint;
    with ``users`` ({name: password}) it refuses anonymous sessions and wrong passwords.
    Raises RuntimeError when it cannot start (port in use, bad node ids)."""
    devices = devices_file if isinstance(devices_file, DevicesFile) else load_devices(devices_file)
    if not devices.by_protocol("opcua"):
        raise ValueError(f"{devices_file}: no OPC UA devices to simulate")
    _check_port_free(host, port)
    return OpcUaServerHandle(devices, port, provider, host, interval_s, certificate, private_key, users).start()


class _PasswordUsers:
    """asyncua user manager: {name: password}; anything else gets no session."""

    def __init__(self, users: Mapping[str, str]):
        self.users = dict(users)

    def get_user(self, iserver, username=None, password=None, certificate=None):  # asyncua's signature
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


def _check_port_free(host: str, port: int) -> None:
    """Fail in milliseconds instead of after the ~1 s address-space load. SO_REUSEADDR as asyncio's
    server sets it, so a port left in TIME_WAIT by a stopped simulator counts as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise RuntimeError(f"OPC UA simulator cannot listen on {host}:{port}: {e}") from e


def _load_provider(spec: str, devices: DevicesFile) -> Provider:
    """``module:factory`` — the factory is called with the DevicesFile and returns the provider."""
    module, _, attr = spec.partition(":")
    if not attr:
        raise SystemExit(f"--provider needs MODULE:FACTORY, got {spec!r}")
    return getattr(importlib.import_module(module), attr)(devices)


def main(argv: list[str] | None = None) -> int:
    from core.config import DEFAULT_DEVICES_FILE

    p = argparse.ArgumentParser(prog="python -m simulators.opcua_server", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=int(os.environ.get("HEATDESK_OPCUA_PORT", DEFAULT_PORT)))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--devices", type=Path, default=Path(os.environ.get("HEATDESK_DEVICES_FILE", DEFAULT_DEVICES_FILE)))
    p.add_argument("--interval", type=float, default=1.0, help="seconds between value updates")
    p.add_argument("--provider", help="MODULE:FACTORY called with the DevicesFile, returning values(device, now)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.WARNING)     # its INFO lines are per request
    devices = load_devices(args.devices)
    provider = _load_provider(args.provider, devices) if args.provider else None
    handle = start_opcua_server(devices, args.port, provider, host=args.host, interval_s=args.interval)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(f"OPC UA simulator listening on {handle.endpoint} "
          f"({len(handle.nodes)} nodes, {len(devices.by_protocol('opcua'))} devices)", flush=True)
    done.wait()
    handle.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
