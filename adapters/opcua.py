"""OPC UA adapter: one asyncua ``Client`` per device, subscriptions → ``Reading``s.

Why it is built this way (field-lessons.md, "OPC UA"):

* asyncua does not reconnect or resubscribe by itself in the releases the field reports come from
  (asyncua#70); a reused ``Client`` after a server restart kept dead state (#1072, #1660). So every
  device runs its own supervisor task that, on any loss, throws the ``Client`` away, builds a new
  one, reconnects with capped exponential backoff, creates the subscription again and **reads every
  node once** so the gap is bounded by data. The library's own ``auto_reconnect`` stays off: one
  owner of reconnect logic, whose behaviour we test.
* In asyncua 2.1.0 ``Client.check_connection()`` is only the local-state gate of the request path
  (an alias of ``_wait_until_ready``) and never talks to the server; the watchdog therefore calls
  it *and* reads ``Server_ServerStatus_State`` every ``watchdog_interval_s``. The client's
  ``connection_lost_callback`` and a Bad subscription status wake the watchdog at once, so a
  server that closes its socket is noticed in milliseconds, a silent one within one interval.
* A subscription the server forgets while the connection stays up (the asyncua#70 case) is caught
  by a keep-alive of max(5 s, 3 publishing intervals) and a local staleness check every 0.5 s, and
  handled like a lost connection (new Client, read, gap events) instead of asyncua's silent recreate.
* Reconnect: at once after a healthy connection drops, then 0.5 s doubling to ``reconnect_max_s``;
  a server that accepts and drops us again within ``reconnect_max_s`` gets the backoff too.
* Losses become ``DeviceEvent``s: ``disconnected`` + ``gap_start`` (``at`` = timestamp of the last
  reading before the loss) and, when data flows again, ``connected`` + ``gap_end`` (``at`` = arrival
  of the first data after the reconnect). Ingest records them in ``device_gap``; evidence shows the
  gap, nothing is interpolated. The values read right after a gap carry quality UNCERTAIN
  (core/quality.py); subscription values after that are GOOD again.
* Monitored items use the ``StatusValueTimestamp`` trigger, so a value that stays constant but is
  sampled again is still reported (a stuck sensor stays visible to ingest's stale check instead of
  looking like a gap), and a queue of ``ceil(publishing/sampling) + 1`` so samples taken between
  two publishes are not overwritten. Servers that refuse the filter get plain items.
* Each device is one asyncio task in the adapter's own thread and loop; a device whose server is
  down or silent only ever waits on its own timeouts. ``Sink.submit`` may block (backpressure), so
  it runs in a worker thread, never on the loop.

String node ids follow R54 (domain.md): Kepware-style ``ns=2;s=<Station>.<Tag>`` with Chinese tag
names; tag lists copied from SCADA tools are often percent-encoded UTF-8, which ``parse_node_id``
decodes. Semantics are never inferred from names: devices.yaml maps every node to a metric.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

from asyncua import Client, ua
from asyncua.common.subscription import Subscription
from asyncua.crypto import security_policies

from adapters.base import Adapter, Delivery, DeviceEvent, Reading, Rejection, SensorMeta, Sink
from adapters.config import DevicesConfigError, OpcUaDevice, OpcUaNode
from core.quality import Quality

if TYPE_CHECKING:
    from adapters.config import DevicesFile
    from core.config import Settings

log = logging.getLogger(__name__)

PROTOCOL = "opcua"

#: client handles of monitored items are this base + the node's index in the device's node list
_HANDLE_BASE = 1000
#: timestamps before this are "not set" (servers send DateTime 0 = 1601-01-01 or similar)
_MIN_VALID_TS = datetime(2000, 1, 1, tzinfo=timezone.utc)
_PCT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_FILTER_REFUSED = {
    ua.StatusCodes.BadMonitoredItemFilterUnsupported,
    ua.StatusCodes.BadMonitoredItemFilterInvalid,
    ua.StatusCodes.BadFilterNotAllowed,
}
#: what a failing connect / request / teardown can raise (ConnectionError and TimeoutError are OSErrors)
_NET_ERRORS = (OSError, asyncio.TimeoutError, ua.UaError)
#: how often the (local) subscription staleness check runs, and its margin in keep-alive periods
_STALE_CHECK_S = 0.5
_STALE_MARGIN = 1.2


# ---------------------------------------------------------------------------------------------
# Pure parts: node ids and DataValue → Reading | Rejection

def parse_node_id(text: str) -> ua.NodeId:
    """``ns=2;s=S03.二次供水温度`` → NodeId. Percent-encoded string identifiers (R54: tag lists
    exported from Chinese SCADA tools arrive URL-encoded, e.g. ``ZLZ.%E9%94%85...``) are decoded when
    the escapes form valid UTF-8; anything else is taken literally. Raises ValueError with the text."""
    try:
        nid = ua.NodeId.from_string(text.strip())
    except (ua.UaStringParsingError, ValueError, IndexError) as e:
        raise ValueError(f"node id {text!r} cannot be parsed: {e}") from None
    if nid.NodeIdType == ua.NodeIdType.String and _PCT_ESCAPE.search(nid.Identifier):
        try:
            decoded = unquote(nid.Identifier, errors="strict")
        except UnicodeDecodeError:
            return nid
        return ua.NodeId(decoded, nid.NamespaceIndex, ua.NodeIdType.String)
    return nid


def redact(endpoint: str) -> str:
    """The endpoint for logs, events and rejects: ``opc.tcp://user:pw@host`` (asyncua takes credentials
    from the URL too) must not leak the password."""
    parts = urlsplit(endpoint)
    if "@" not in parts.netloc:
        return endpoint
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def sensor_key(device: OpcUaDevice, node: OpcUaNode) -> str:
    return device.sensor_key.format(device=device.id, point=node.name, metric=node.metric,
                                    substation=device.substation or "")


def _timestamp(dv: ua.DataValue, now: datetime) -> datetime:
    """SourceTimestamp, else ServerTimestamp, else arrival time; always timezone-aware UTC."""
    for ts in (dv.SourceTimestamp, dv.ServerTimestamp):
        if ts is None:
            continue
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=timezone.utc)
        if ts >= _MIN_VALID_TS:
            return ts
    return now


def convert(device: OpcUaDevice, node: OpcUaNode, dv: ua.DataValue, now: datetime, *,
            after_gap: bool = False) -> Reading | Rejection:
    """One DataValue of one node → a Reading (value scaled: raw × scale + offset, in node.unit) or a
    Rejection with a reason code. Bad status → DEVICE_ERROR (Rejection ``bad_status`` when the server
    sent no value, as the spec tells servers to); Uncertain status, or a value read right after a
    gap (``after_gap``), → UNCERTAIN. Booleans count as 0/1 (pump running flags)."""
    status = dv.StatusCode if dv.StatusCode is not None else ua.StatusCode(ua.StatusCodes.Good)
    raw: Any = dv.Value.Value if dv.Value is not None else None
    address = f"{redact(device.endpoint)}|{node.node_id}"
    where = f"device {device.id} point {node.name} ({node.node_id})"
    if raw is None:
        reason = "bad_status" if status.is_bad() else "no_value"
        return Rejection(PROTOCOL, device.id, address, payload=status.name.encode(), reason=reason,
                         detail=f"{where}: no value, status {status.name} (0x{status.value:08X})")
    if isinstance(raw, (bool, int, float)):
        number = float(raw)
    else:
        text = repr(raw)
        return Rejection(PROTOCOL, device.id, address, payload=text[:256].encode("utf-8"), reason="non_numeric",
                         detail=f"{where}: {type(raw).__name__} value {text[:80]}, status {status.name}")
    if not math.isfinite(number):
        return Rejection(PROTOCOL, device.id, address, payload=repr(raw).encode(), reason="nan",
                         detail=f"{where}: value {raw!r} is not finite, status {status.name}")
    if status.is_bad():
        quality = Quality.DEVICE_ERROR
    elif status.is_uncertain() or after_gap:
        quality = Quality.UNCERTAIN
    else:
        quality = Quality.GOOD
    meta = SensorMeta(metric=node.metric, unit=node.unit, protocol=PROTOCOL, device_id=device.id, point=node.name,
                      substation_code=device.substation, weather_station_code=device.weather_station)
    return Reading(sensor=sensor_key(device, node), ts=_timestamp(dv, now), value=number * node.scale + node.offset,
                   quality=quality, meta=meta)


def _certificate_uri(path: Path) -> str | None:
    """The application URI (URI SubjectAltName) of our client certificate: OPC UA servers reject a
    session whose ApplicationUri differs from the certificate's."""
    from cryptography import x509

    data = path.read_bytes()
    cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


# ---------------------------------------------------------------------------------------------
# One device

@dataclass
class _Outage:
    since: float                      # time.monotonic() when it began
    reason: str
    attempts: int = 0


@dataclass
class DeviceStats:
    """Counters a status page or benchmark may read (thread-safe enough: written by one task)."""
    connects: int = 0
    losses: int = 0
    connect_failures: int = 0
    #: seconds from detecting a loss to the next successful connect, one entry per outage
    reconnect_s: list[float] = field(default_factory=list)


class _Handler:
    """asyncua subscription callbacks, bound to one connection generation."""

    def __init__(self, runner: "_DeviceRunner", generation: int):
        self.runner = runner
        self.generation = generation

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.runner.on_datachange(data.monitored_item.ClientHandle, data.monitored_item.Value, self.generation)

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        if status.Status is not None and status.Status.is_bad():
            self.runner.mark_lost(self.generation, f"subscription status {status.Status.name}")


class _DeviceRunner:
    """Connect, subscribe, watch, and on loss recreate the Client — for one device, forever."""

    def __init__(self, device: OpcUaDevice, nodes: Sequence[OpcUaNode], node_ids: Sequence[ua.NodeId],
                 sink: Sink, stop: asyncio.Event, application_uri: str):
        self.device = device
        self.nodes = list(nodes)
        self.node_ids = list(node_ids)
        self.sink = sink
        self.stop = stop
        self.application_uri = application_uri
        self.stats = DeviceStats()
        self._generation = 0
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._pending: list[Reading | Rejection] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._outage: _Outage | None = None
        self._last_data_ts: datetime | None = None
        self._connected_at: datetime | None = None
        self._gap_start: datetime | None = None
        self._gap_end_pending = False
        self._reported_nodes: set[int] = set()
        self._client_connected = False
        self._subscription: Subscription | None = None

    # --- entry point -------------------------------------------------------------------------
    async def run(self) -> None:
        flusher = asyncio.create_task(self._flush_loop(), name=f"opcua-flush:{self.device.id}")
        try:
            while not self.stop.is_set():
                try:
                    await self._supervise()
                except Exception:
                    # A bug in this device's loop must not end the adapter or the other devices.
                    log.exception("opcua device %s: supervisor failed; restarting it in %.0fs",
                                  self.device.id, self.device.reconnect_max_s)
                    self._event("error", "supervisor failed (see log)")
                    await self._sleep_or_stop(self.device.reconnect_max_s)
        finally:
            self._closing = True
            self._wake.set()
            await flusher

    async def _supervise(self) -> None:
        dev = self.device
        delay = dev.reconnect_initial_s
        # budget for connect (+ endpoint discovery with security) + subscribe + read, each request
        # bounded by timeout_s inside asyncua; this guards against a server that accepts and stays mute
        budget = dev.timeout_s * 4
        while not self.stop.is_set():
            self._generation += 1
            generation = self._generation
            self._lost.clear()
            client = self._make_client(generation)
            self._client_connected = False
            self._subscription = None
            try:
                if not await self._open_unless_stopped(client, generation, budget):
                    await self._dispose(client, self._client_connected)
                    return
            except Exception as e:  # any failure to connect is this device's outage: logged once, retried
                await self._dispose(client, self._client_connected)
                self._connect_failed(e)
                if await self._sleep_or_stop(delay):
                    return
                delay = min(delay * 2, dev.reconnect_max_s)
                continue
            up_since = time.monotonic()
            reason = await self._watch(client, self._subscription)
            await self._dispose(client, True)
            if reason is None:            # stopping
                self._event("disconnected", "adapter stopped")
                return
            self._connection_lost(reason)
            if time.monotonic() - up_since >= dev.reconnect_max_s:
                delay = dev.reconnect_initial_s       # it was a healthy connection: retry at once
            else:
                # a server that accepts and then drops us must not become a connect/drop busy loop
                if await self._sleep_or_stop(delay):
                    return
                delay = min(delay * 2, dev.reconnect_max_s)

    # --- connect -----------------------------------------------------------------------------
    def _make_client(self, generation: int) -> Client:
        dev = self.device
        client = Client(dev.endpoint, timeout=dev.timeout_s, watchdog_intervall=dev.watchdog_interval_s,
                        auto_reconnect=False)
        client.name = client.description = f"heatdesk {dev.id}"
        # a session we could not close (server unreachable) is dropped by the server after this
        client.session_timeout = 120_000
        client.application_uri = self.application_uri
        if dev.username:
            client.set_user(dev.username)
        if dev.password:
            client.set_password(dev.password)

        async def lost(exc: Exception) -> None:
            self.mark_lost(generation, f"connection lost: {exc!r}")

        client.connection_lost_callback = lost
        return client

    async def _open_unless_stopped(self, client: Client, generation: int, budget: float) -> bool:
        """Connect within `budget` seconds; False when stop() came first (a mute server must not
        hold up shutdown for the whole budget). Connect errors propagate."""
        opening = asyncio.create_task(asyncio.wait_for(self._open(client, generation), timeout=budget))
        stopping = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait({opening, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not opening.done():
            opening.cancel()
            await asyncio.gather(opening, return_exceptions=True)
            return False
        opening.result()
        return True

    async def _open(self, client: Client, generation: int) -> None:
        dev = self.device
        if dev.security_policy != "None":
            await client.set_security(
                _POLICIES[dev.security_policy], certificate=str(dev.certificate), private_key=str(dev.private_key),
                server_certificate=str(dev.server_certificate) if dev.server_certificate else None,
                mode=getattr(ua.MessageSecurityMode, dev.security_mode))
        await client.connect()
        self._client_connected = True
        first: list[Reading | Rejection] = []
        if self._gap_start is not None:
            # field-lessons.md: read current values once after a reconnect so the gap is bounded by data
            values = await client.read_attributes([client.get_node(n) for n in self.node_ids])
            now = datetime.now(timezone.utc)
            first = [convert(dev, node, dv, now, after_gap=True) for node, dv in zip(self.nodes, values)]
        await self._subscribe(client, generation)
        # Only now is the device back: an outage whose reconnects keep failing at subscribe stays one
        # outage (one log line), and the gap closes only when data flows again. No await between
        # here and _accept, so the read values are handed on before any subscription notification.
        self._connected()
        if first:
            self._gap_end_pending = True
        self._accept(first, generation)

    async def _subscribe(self, client: Client, generation: int) -> None:
        dev = self.device
        # asyncua's default keep-alive is 75 % of the session timeout (90 s here): a subscription the
        # server dropped would go unnoticed that long and then be recreated silently by the library,
        # an unrecorded gap. A keep-alive every max(5 s, 3 publishing intervals) lets _watch see it.
        keepalive_count = math.ceil(max(5000.0, 3 * dev.publishing_interval_ms) / dev.publishing_interval_ms)
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=dev.publishing_interval_ms, RequestedMaxKeepAliveCount=keepalive_count,
            RequestedLifetimeCount=max(10_000, 3 * keepalive_count), MaxNotificationsPerPublish=10_000,
            PublishingEnabled=True, Priority=0)
        sub = await client.create_subscription(params, _Handler(self, generation))
        self._subscription = sub
        queue = math.ceil(dev.publishing_interval_ms / dev.sampling_interval_ms) + 1
        results = await sub.create_monitored_items(self._requests(range(len(self.node_ids)), queue, True))
        refused = [i for i, r in enumerate(results) if isinstance(r, ua.StatusCode) and r.value in _FILTER_REFUSED]
        if refused:
            retry = await sub.create_monitored_items(self._requests(refused, queue, False))
            for i, r in zip(refused, retry):
                results[i] = r
        for i, r in enumerate(results):
            if isinstance(r, ua.StatusCode) and i not in self._reported_nodes:
                self._reported_nodes.add(i)
                node = self.nodes[i]
                msg = f"node {node.node_id} ({node.name}) not monitored: {r.name}"
                log.warning("opcua device %s: %s", dev.id, msg)
                self._event("error", msg)

    def _requests(self, indexes: Sequence[int], queue: int, with_filter: bool) -> list[ua.MonitoredItemCreateRequest]:
        out = []
        for i in indexes:
            params = ua.MonitoringParameters(ClientHandle=_HANDLE_BASE + i,
                                             SamplingInterval=self.device.sampling_interval_ms,
                                             QueueSize=queue, DiscardOldest=True)
            if with_filter:
                params.Filter = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValueTimestamp)
            out.append(ua.MonitoredItemCreateRequest(
                ItemToMonitor=ua.ReadValueId(NodeId=self.node_ids[i], AttributeId=ua.AttributeIds.Value),
                MonitoringMode=ua.MonitoringMode.Reporting, RequestedParameters=params))
        return out

    async def _dispose(self, client: Client, connected: bool) -> None:
        """Tear a client down without waiting on a dead server for longer than timeout_s."""
        if not connected:
            client.disconnect_socket()
            return
        try:
            await asyncio.wait_for(client.disconnect(), timeout=self.device.timeout_s)
        except _NET_ERRORS as e:
            log.debug("opcua device %s: disconnect: %r", self.device.id, e)
            client.disconnect_socket()

    # --- watch ---------------------------------------------------------------------------------
    async def _watch(self, client: Client, sub: Subscription | None) -> str | None:
        """Return None when stopping, else why the connection is considered lost.

        Every watchdog_interval_s: the local state gate and a real round trip (ServerStatus.State).
        Every 0.5 s (no network): is the subscription stale, i.e. no publish response, not even a
        keep-alive, for 1.2 keep-alive periods? asyncua's own stale check fires at 1.5 periods and
        would recreate the subscription behind our back, so ours must come first."""
        dev = self.device
        loop = asyncio.get_running_loop()
        next_probe = loop.time() + dev.watchdog_interval_s
        while True:
            await _wait_any((self.stop, self._lost), min(_STALE_CHECK_S, max(0.0, next_probe - loop.time())))
            if self.stop.is_set():
                return None
            if self._lost.is_set():
                return self._lost_reason
            if sub is not None and sub.is_stale(_STALE_MARGIN):
                return "subscription stale: no publish response or keep-alive from the server"
            if loop.time() < next_probe:
                continue
            next_probe = loop.time() + dev.watchdog_interval_s
            try:
                await asyncio.wait_for(client.check_connection(), timeout=dev.timeout_s)
                state = await asyncio.wait_for(client.nodes.server_state.read_value(), timeout=dev.timeout_s)
            except _NET_ERRORS as e:
                return f"watchdog: {e!r}"
            if state != ua.ServerState.Running:
                return f"server state {state!r}"

    def mark_lost(self, generation: int, reason: str) -> None:
        if generation == self._generation and not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()

    # --- state changes, logged once per outage ---------------------------------------------------
    def _connect_failed(self, e: BaseException) -> None:
        if self._outage is None:
            self._outage = _Outage(since=time.monotonic(), reason=f"cannot connect: {e!r}")
            # unexpected (non-network) errors get their traceback: they are bugs or bad config
            log.warning("opcua device %s (%s): cannot connect: %r; retrying with backoff up to %.0fs "
                        "(logged once per outage)", self.device.id, redact(self.device.endpoint), e,
                        self.device.reconnect_max_s, exc_info=not isinstance(e, _NET_ERRORS))
            self._event("error", f"cannot connect: {e!r}")
        else:
            log.debug("opcua device %s: connect attempt failed: %r", self.device.id, e)
        self._outage.attempts += 1
        self.stats.connect_failures += 1

    def _connection_lost(self, reason: str) -> None:
        now = datetime.now(timezone.utc)
        self.stats.losses += 1
        self._outage = _Outage(since=time.monotonic(), reason=reason)
        self._gap_end_pending = False
        if self._gap_start is None:
            # a device clock running ahead must not put the gap's start after its end
            self._gap_start = min(self._last_data_ts or self._connected_at or now, now)
        log.warning("opcua device %s (%s): %s; last data at %s; reconnecting", self.device.id,
                    redact(self.device.endpoint), reason, self._gap_start.isoformat())
        self._event("disconnected", reason, now)
        self._event("gap_start", reason, self._gap_start)

    def _connected(self) -> None:
        now = datetime.now(timezone.utc)
        self._connected_at = now
        self.stats.connects += 1
        if self._outage is not None:
            took = time.monotonic() - self._outage.since
            if self.stats.losses:
                self.stats.reconnect_s.append(took)
            log.info("opcua device %s: connected after %.1fs outage, %d failed attempts (%s)", self.device.id,
                     took, self._outage.attempts, self._outage.reason)
            self._outage = None
        self._event("connected", redact(self.device.endpoint), now)

    def _event(self, kind: str, detail: str, at: datetime | None = None) -> None:
        self.sink.device_event(DeviceEvent(device_id=self.device.id, protocol=PROTOCOL, kind=kind,
                                           at=at or datetime.now(timezone.utc), detail=detail))

    # --- data --------------------------------------------------------------------------------
    def on_datachange(self, handle: int, dv: ua.DataValue, generation: int) -> None:
        i = handle - _HANDLE_BASE
        if not 0 <= i < len(self.nodes):
            log.warning("opcua device %s: notification for unknown client handle %s", self.device.id, handle)
            return
        if dv is None:                # a notification without a DataValue: recorded as no_value
            dv = ua.DataValue()
        self._accept([convert(self.device, self.nodes[i], dv, datetime.now(timezone.utc))], generation)

    def _accept(self, results: list[Reading | Rejection], generation: int) -> None:
        if not results:
            return
        self._pending.extend(results)
        self._wake.set()
        readings = [r for r in results if isinstance(r, Reading)]
        if not readings:
            return
        newest = max(r.ts for r in readings)
        if self._last_data_ts is None or newest > self._last_data_ts:
            self._last_data_ts = newest
        if self._gap_end_pending and generation == self._generation and self._gap_start is not None:
            start = self._gap_start
            now = max(datetime.now(timezone.utc), start)
            self._gap_start, self._gap_end_pending = None, False
            self._event("gap_end", f"data resumed {(now - start).total_seconds():.1f}s after the last data", now)

    async def _flush_loop(self) -> None:
        """Hand batches to the sink in a worker thread (submit may block on backpressure)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                delivery = Delivery(readings=[r for r in batch if isinstance(r, Reading)],
                                    rejects=[r for r in batch if isinstance(r, Rejection)], upstream_retains=False)
                try:
                    await asyncio.to_thread(self.sink.submit, delivery)
                except Exception:
                    if self._closing:
                        log.exception("opcua device %s: sink.submit failed while stopping; %d items not delivered",
                                      self.device.id, len(batch))
                        return
                    log.exception("opcua device %s: sink.submit failed; retrying %d items in 1s",
                                  self.device.id, len(batch))
                    self._pending[:0] = batch
                    await asyncio.sleep(1.0)
                    self._wake.set()
                    continue
            if self._closing and not self._pending:
                return

    async def _sleep_or_stop(self, seconds: float) -> bool:
        """Wait `seconds` unless stopping; True when stopping."""
        await _wait_any((self.stop,), seconds)
        return self.stop.is_set()


async def _wait_any(events: Sequence[asyncio.Event], timeout: float) -> None:
    """Return when any event is set or after `timeout` seconds."""
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


# ---------------------------------------------------------------------------------------------
# The adapter

class OpcUaAdapter(Adapter):
    """All OPC UA devices of devices.yaml in one background thread with its own asyncio loop; one
    supervisor task per device. Deliveries carry ``upstream_retains=False``: an OPC UA server keeps
    nothing for us, so ingest must spool them when the database is down."""

    protocol = PROTOCOL

    def __init__(self, devices: Sequence[OpcUaDevice], sink: Sink, *, config: "DevicesFile",
                 settings: "Settings"):
        super().__init__(devices, sink, config=config, settings=settings)
        # Resolve and parse everything now: a bad node id or a missing certificate is a config
        # error (DevicesConfigError, which ingest reports) naming the device, not a retry loop.
        self._plans: list[tuple[OpcUaDevice, list[OpcUaNode], list[ua.NodeId], str]] = []
        for dev in self.devices:
            nodes = list(config.opcua_nodes(dev).nodes)
            ids = []
            for node in nodes:
                try:
                    ids.append(parse_node_id(node.node_id))
                except ValueError as e:
                    raise DevicesConfigError(f"device {dev.id} point {node.name}: {e}") from None
            app_uri = "urn:heatdesk:ingest"
            if dev.security_policy != "None":
                for label, path in (("certificate", dev.certificate), ("private_key", dev.private_key)):
                    if path is None or not Path(path).is_file():
                        raise DevicesConfigError(f"device {dev.id}: {label} file {path} does not exist")
                app_uri = _certificate_uri(Path(dev.certificate)) or app_uri  # type: ignore[arg-type]
            self._plans.append((dev, nodes, ids, app_uri))
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._runners: list[_DeviceRunner] = []
        self._ready = threading.Event()
        self._crash: BaseException | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("OpcUaAdapter already started")
        self._thread = threading.Thread(target=self._thread_main, name="opcua-adapter", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError("OPC UA adapter loop did not start within 10 s")
        if self._crash is not None:
            raise RuntimeError("OPC UA adapter loop failed to start") from self._crash

    def stop(self) -> None:
        self._stopping.set()
        loop, ev, thread = self._loop, self._stop_event, self._thread
        if loop is not None and ev is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:        # the loop closed between the check and the call
                pass
        if thread is not None:
            grace = max((d.timeout_s for d in self.devices), default=4.0) * 2 + 5
            thread.join(timeout=grace)
            if thread.is_alive():
                log.error("OPC UA adapter thread did not stop within %.0fs", grace)

    def stats(self) -> dict[str, DeviceStats]:
        """Per-device connect/loss counters and measured reconnect times (seconds)."""
        return {r.device.id: r.stats for r in self._runners}

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # noqa: BLE001 — reported to start() or logged; the thread ends
            self._crash = e
            self._ready.set()
            log.exception("OPC UA adapter loop ended with an error")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        if self._stopping.is_set():
            self._stop_event.set()
        self._runners = [_DeviceRunner(dev, nodes, ids, self.sink, self._stop_event, app_uri)
                         for dev, nodes, ids, app_uri in self._plans]
        tasks = [asyncio.create_task(r.run(), name=f"opcua:{r.device.id}") for r in self._runners]
        self._ready.set()
        if tasks:
            await asyncio.gather(*tasks)
