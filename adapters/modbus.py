"""Modbus TCP adapter: polls substation controllers and hands each poll to ingest as one Delivery.

How it runs: one asyncio loop in one background thread; every device has its own task, its own TCP
connection (pymodbus ``AsyncModbusTcpClient``) and its own drift-free schedule (poll k is due at
``start + k * poll_interval_s``; slots missed by a slow poll are skipped, never made up in a burst).
So one dead or slow device only ever waits on itself (telegraf#11782).

What it promises (field-lessons.md, "Modbus"):

- A late answer is never taken as the answer to a later request (pymodbus#538, #2709, #2777): after a
  timeout or any framing doubt the connection is **dropped** and a new one is made for the next poll;
  every response is also checked for transaction id, unit id, function code and register count.
- Reconnects back off exponentially with jitter up to ``reconnect_max_s`` and happen only at poll
  slots, so a dead device can never busy-loop (pymodbus#1794) and is always retried (#1635).
- Every failed read is a ``Rejection`` (source ``modbus``, address ``host:port/unit/register``, reason
  ``timeout``, ``modbus_exception_<code>``, ``short_response``, ``nan`` …); a device failure is logged
  once per outage with ``error`` + ``gap_start`` events, and ``gap_end`` when data flows again.
- Readings carry the poll time (UTC) and quality ``good``, or ``device_error`` when the controller
  sends one of the point's configured fault values (``error_values``). Polled data cannot be
  re-read later, so deliveries say ``upstream_retains=False`` and ingest spools them while the
  database is down.

Addresses: points are written as the manufacturer documents them; the protocol offset sent on the
wire is ``address - address_base`` (R53). Contiguous (or overlapping) points are read together in as
few requests as ``max_registers_per_request`` (≤ 125, the Modbus limit for FC 3/4) allows; gaps
between points are never read, because many controllers answer exception 2 for unmapped registers.

Security: Modbus TCP has no authentication; controllers belong on an isolated network (VPN/VLAN).
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadInputRegistersRequest

from adapters.base import Adapter, Delivery, DeviceEvent, Reading, Rejection, SensorMeta
from adapters.codec import apply_scale, decode_raw
from adapters.config import ModbusDevice, ModbusMap, ModbusPoint
from core.quality import Quality

log = logging.getLogger(__name__)

PROTOCOL = "modbus"
#: Modbus application protocol spec: at most 125 registers in one FC 3/4 response
MODBUS_MAX_REGISTERS = 125
_FUNCTION_CODE = {"holding": 3, "input": 4}
_REQUEST_CLASS = {3: ReadHoldingRegistersRequest, 4: ReadInputRegistersRequest}


# ---------------------------------------------------------------------------------------------
# Planning (pure)

def group_spans(spans: Sequence[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """Cover ``(offset, size)`` spans with as few ``(start, count)`` reads as possible.

    A read may only join spans that touch or overlap (no gap registers are read) and holds at most
    ``limit`` registers. Greedy over spans sorted by offset, which is optimal for intervals.
    """
    if not 1 <= limit <= MODBUS_MAX_REGISTERS:
        raise ValueError(f"limit must be 1..{MODBUS_MAX_REGISTERS}, got {limit}")
    reads: list[tuple[int, int]] = []
    for off, size in sorted(spans):
        if size > limit:
            raise ValueError(f"a value of {size} registers at offset {off} does not fit in reads of {limit}")
        if reads:
            start, count = reads[-1]
            new_end = max(start + count, off + size)
            if off <= start + count and new_end - start <= limit:
                reads[-1] = (start, new_end - start)
                continue
        reads.append((off, size))
    return reads


@dataclass(frozen=True, slots=True)
class PointPlan:
    point: ModbusPoint
    offset: int                      # protocol offset of the point's first register
    sensor: str
    meta: SensorMeta
    address: str                     # host:port/unit/<documented address>, for rejections


@dataclass(frozen=True, slots=True)
class ReadPlan:
    offset: int                      # protocol offset of the first register read
    count: int
    points: tuple[PointPlan, ...]
    address: str                     # host:port/unit/<documented address of the first register>


@dataclass(frozen=True, slots=True)
class DevicePlan:
    device: ModbusDevice
    map: ModbusMap
    function_code: int
    reads: tuple[ReadPlan, ...]

    @property
    def registers(self) -> int:
        return sum(r.count for r in self.reads)


def build_plan(device: ModbusDevice, mmap: ModbusMap) -> DevicePlan:
    """Resolve a device's map into the reads one poll makes. Raises ValueError naming the device."""
    limit = min(device.max_registers_per_request, MODBUS_MAX_REGISTERS)
    base = f"{device.host}:{device.port}/{device.unit_id}"
    points = []
    for p in mmap.points:
        if p.size > limit:
            raise ValueError(f"device {device.id} point {p.name}: {p.type} needs {p.size} registers but "
                             f"max_registers_per_request is {limit}")
        meta = SensorMeta(metric=p.metric, unit=p.unit, protocol=PROTOCOL, device_id=device.id, point=p.name,
                          substation_code=device.substation, weather_station_code=device.weather_station)
        try:
            sensor = device.sensor_key.format(device=device.id, point=p.name, metric=p.metric)
        except (KeyError, IndexError) as e:
            raise ValueError(f"device {device.id}: sensor_key {device.sensor_key!r} uses an unknown field {e}; "
                             f"available: device, point, metric") from None
        points.append(PointPlan(p, p.address - mmap.address_base, sensor, meta, f"{base}/{p.address}"))
    reads = []
    for start, count in group_spans([(pp.offset, pp.point.size) for pp in points], limit):
        inside = tuple(pp for pp in points if start <= pp.offset and pp.offset + pp.point.size <= start + count)
        reads.append(ReadPlan(start, count, inside, f"{base}/{start + mmap.address_base}"))
    return DevicePlan(device, mmap, _FUNCTION_CODE[mmap.register_type], tuple(reads))


def _words_text(words: Sequence[int]) -> bytes:
    return ("words=" + ",".join(str(w) for w in words)).encode()


def decode_read(plan: DevicePlan, read: ReadPlan, words: Sequence[int], ts: datetime
                ) -> tuple[list[Reading], list[Rejection]]:
    """Turn the registers of one read into readings; anything unusable becomes a Rejection.

    Pure and total: any ``words`` (wrong length, out-of-range integers, NaN patterns) yields
    readings and/or rejections, never an exception.
    """
    dev, mmap = plan.device, plan.map
    if len(words) != read.count:
        reason = "short_response" if len(words) < read.count else "long_response"
        return [], [Rejection(PROTOCOL, dev.id, read.address, _words_text(words), reason,
                              f"device {dev.id}: asked for {read.count} registers at offset {read.offset}, "
                              f"got {len(words)}")]
    readings: list[Reading] = []
    rejects: list[Rejection] = []
    for pp in read.points:
        p = pp.point
        chunk = words[pp.offset - read.offset: pp.offset - read.offset + p.size]
        try:
            raw = decode_raw(chunk, p.type, mmap.byte_order, mmap.word_order)
        except ValueError as e:
            rejects.append(Rejection(PROTOCOL, dev.id, pp.address, _words_text(chunk), "bad_register",
                                     f"device {dev.id} point {p.name}: {e}"))
            continue
        if not math.isfinite(raw):
            rejects.append(Rejection(PROTOCOL, dev.id, pp.address, _words_text(chunk),
                                     "nan" if math.isnan(raw) else "infinite",
                                     f"device {dev.id} point {p.name}: {p.type} register value is {raw}"))
            continue
        quality = Quality.DEVICE_ERROR if raw in p.error_values else Quality.GOOD
        readings.append(Reading(pp.sensor, ts, apply_scale(raw, p.scale, p.offset), quality, pp.meta))
    return readings, rejects


# ---------------------------------------------------------------------------------------------
# Polling

class _ReadFailed(Exception):
    """One request did not yield registers. ``drop``: the connection can no longer be trusted."""

    def __init__(self, reason: str, detail: str, *, drop: bool, payload: bytes = b""):
        super().__init__(detail)
        self.reason, self.detail, self.drop, self.payload = reason, detail, drop, payload


class _PymodbusNoise(logging.Filter):
    """pymodbus logs every failed connect / unanswered request at WARNING/ERROR. The adapter logs
    each device outage once with the device's name (ARCHITECTURE.md), so those lines are dropped."""
    PREFIXES = ("Failed to connect", "No response received", "ERROR: request ask for",
                "ERROR: received pdu without", "Cancel send, because not connected", "Not connected, trying")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.WARNING and record.getMessage().startswith(self.PREFIXES))


_NOISE_FILTER = _PymodbusNoise()


@dataclass
class DeviceStats:
    polls: int = 0                   # polls that ran (including failed ones)
    good_polls: int = 0              # polls where every read succeeded
    requests: int = 0                # requests sent
    skipped_slots: int = 0           # schedule slots skipped because a poll overran
    backoff_skips: int = 0           # slots skipped while waiting to reconnect
    connects: int = 0
    last_error: str = ""


class _DevicePoller:
    def __init__(self, adapter: "ModbusAdapter", plan: DevicePlan, phase_s: float):
        self.adapter = adapter
        self.plan = plan
        self.dev = plan.device
        self.phase_s = phase_s
        self.stats = DeviceStats()
        self.client: AsyncModbusTcpClient | None = None
        self._failing = False        # in an outage: failures are not logged again
        self._failed_polls = 0
        self._attempts = 0           # consecutive connection-level failures (backoff exponent)
        self._retry_at = 0.0         # loop time before which no reconnect is tried
        self._rng = random.Random()
        self._where = f"{self.dev.host}:{self.dev.port} unit {self.dev.unit_id}"

    # -- schedule ------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.dev.poll_interval_s
        t0 = loop.time() + self.phase_s
        k = 0
        try:
            while True:
                delay = t0 + k * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                ts = datetime.now(timezone.utc)
                try:
                    await self._poll(ts)
                except Exception as e:  # noqa: BLE001 — a bug here must not stop this device's schedule
                    if not self._failing:
                        log.exception("modbus device %s: unexpected error while polling", self.dev.id)
                    self._drop("internal error")
                    self._backoff()
                    self._failed(ts, "internal_error", f"{type(e).__name__}: {e}")
                due = math.floor((loop.time() - t0) / interval) + 1
                if due > k + 1:
                    self.stats.skipped_slots += due - k - 1
                k = max(k + 1, due)
        finally:
            self._drop("adapter stopped")

    # -- one poll ------------------------------------------------------------------------------
    async def _poll(self, ts: datetime) -> None:
        loop = asyncio.get_running_loop()
        if self.client is None or not self.client.connected:
            if self.client is not None:          # the peer closed it (e.g. controller restarted)
                self._drop("connection closed by peer")
            if loop.time() < self._retry_at:
                self.stats.backoff_skips += 1
                return
            self.stats.polls += 1
            if not await self._connect():
                self._failed(ts, "connect_failed", f"cannot connect to {self._where}")
                return
        else:
            self.stats.polls += 1
        readings: list[Reading] = []
        rejects: list[Rejection] = []
        failure: _ReadFailed | None = None
        for read in self.plan.reads:
            try:
                words = await self._read(read)
            except _ReadFailed as f:
                failure = failure or f
                rejects.append(Rejection(PROTOCOL, self.dev.id, read.address, f.payload, f.reason,
                                         f"device {self.dev.id} ({self._where}) registers {read.address} "
                                         f"x{read.count}: {f.detail}"))
                if f.drop:
                    self._drop(f.reason)
                    self._backoff()
                    break                # the rest of this poll would only wait on a bad link
                continue
            r, j = decode_read(self.plan, read, words, ts)
            readings += r
            rejects += j
        if readings or rejects:
            await self.adapter._submit(Delivery(readings=readings, rejects=rejects, upstream_retains=False))
        if failure is None:
            self._attempts = 0
            self.stats.good_polls += 1
            self._recovered(ts)
        else:
            self._failed(ts, failure.reason, failure.detail)

    async def _connect(self) -> bool:
        self.stats.connects += 1
        # pymodbus' own reconnect is off (reconnect_delay=0) and its retries are off (retries=0: a retry
        # would resend with the same transaction id); its timeout is only a backstop behind ours.
        client = AsyncModbusTcpClient(self.dev.host, port=self.dev.port, name=self.dev.id, timeout=self.dev.timeout_s + 1,
                                      retries=0, reconnect_delay=0)
        try:
            ok = await asyncio.wait_for(client.connect(), self.dev.timeout_s)
        except (asyncio.TimeoutError, OSError, ModbusException):
            ok = False
        if not ok or not client.connected:
            client.close()
            self._backoff()
            return False
        self.client = client
        self.adapter._event(self.dev.id, "connected", self._where)
        return True

    async def _read(self, read: ReadPlan) -> list[int]:
        fc = self.plan.function_code
        request: ModbusPDU = _REQUEST_CLASS[fc](address=read.offset, count=read.count, dev_id=self.dev.unit_id)
        self.stats.requests += 1
        try:
            assert self.client is not None
            response = await asyncio.wait_for(self.client.execute(False, request), self.dev.timeout_s)
        except asyncio.TimeoutError:
            raise _ReadFailed("timeout", f"no answer within {self.dev.timeout_s} s", drop=True) from None
        except (ModbusException, OSError) as e:
            raise _ReadFailed("connection_error", f"{type(e).__name__}: {e}", drop=True) from None
        if response is None:
            raise _ReadFailed("no_response", "pymodbus returned no response", drop=True)
        # pymodbus already skips frames with a foreign transaction id; check again, and everything else.
        if response.transaction_id != request.transaction_id:
            raise _ReadFailed("transaction_mismatch", f"sent transaction id {request.transaction_id}, "
                              f"answer has {response.transaction_id}", drop=True)
        if response.dev_id != self.dev.unit_id:
            raise _ReadFailed("unit_mismatch", f"asked unit {self.dev.unit_id}, answer from {response.dev_id}",
                              drop=True)
        if response.isError():
            if response.function_code & 0x7F != fc:
                raise _ReadFailed("function_mismatch", f"sent function {fc}, exception for "
                                  f"{response.function_code & 0x7F}", drop=True)
            code = response.exception_code
            # an exception response is a complete, matched answer: the connection stays usable
            raise _ReadFailed(f"modbus_exception_{code}", f"device answered exception code {code}", drop=False,
                              payload=bytes([response.function_code, code & 0xFF]))
        if response.function_code != fc:
            raise _ReadFailed("function_mismatch", f"sent function {fc}, answer has {response.function_code}",
                              drop=True)
        words = list(response.registers)
        if len(words) != read.count:
            raise _ReadFailed("short_response" if len(words) < read.count else "long_response",
                              f"asked for {read.count} registers, got {len(words)}", drop=True,
                              payload=_words_text(words))
        return words

    # -- connection state ----------------------------------------------------------------------
    def _drop(self, why: str) -> None:
        if self.client is None:
            return
        client, self.client = self.client, None
        client.close()
        self.adapter._event(self.dev.id, "disconnected", why)

    def _backoff(self) -> None:
        self._attempts += 1
        ceiling = min(self.dev.reconnect_max_s, self.dev.reconnect_initial_s * 2 ** min(self._attempts - 1, 30))
        # "equal jitter": at least half the ceiling, so many devices of one dead gateway spread out
        self._retry_at = asyncio.get_running_loop().time() + ceiling * self._rng.uniform(0.5, 1.0)

    def _failed(self, ts: datetime, reason: str, detail: str) -> None:
        self._failed_polls += 1
        self.stats.last_error = reason
        if self._failing:
            return
        self._failing = True
        log.warning("modbus device %s (%s): %s (%s); not logged again until it recovers",
                    self.dev.id, self._where, reason, detail)
        self.adapter._event(self.dev.id, "error", f"{reason}: {detail}", ts)
        self.adapter._event(self.dev.id, "gap_start", reason, ts)

    def _recovered(self, ts: datetime) -> None:
        if not self._failing:
            return
        log.info("modbus device %s (%s) recovered after %d failed polls", self.dev.id, self._where,
                 self._failed_polls)
        self._failing = False
        self._failed_polls = 0
        self.adapter._event(self.dev.id, "gap_end", "", ts)


# ---------------------------------------------------------------------------------------------
# The adapter

class ModbusAdapter(Adapter):
    protocol = PROTOCOL

    def __init__(self, devices: Sequence[ModbusDevice], sink, *, config, settings):
        super().__init__(devices, sink, config=config, settings=settings)
        self.plans: dict[str, DevicePlan] = {d.id: build_plan(d, config.modbus_map(d)) for d in self.devices}
        self._pollers: dict[str, _DevicePoller] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task | None = None
        self._ready = threading.Event()
        self._submitter: ThreadPoolExecutor | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("ModbusAdapter already started")
        logging.getLogger("pymodbus.logging").addFilter(_NOISE_FILTER)
        # sink.submit may block briefly (ingest backpressure): never inside the polling loop
        self._submitter = ThreadPoolExecutor(max_workers=2, thread_name_prefix="modbus-submit")
        self._thread = threading.Thread(target=self._run, name="modbus-adapter", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        self._stopping.set()
        if self._loop is not None and self._main is not None:
            self._loop.call_soon_threadsafe(self._main.cancel)
        if self._thread is not None:
            self._thread.join(15)
            if self._thread.is_alive():
                log.error("modbus adapter thread did not stop within 15 s")
        if self._submitter is not None:
            self._submitter.shutdown(wait=True)   # deliveries already handed over reach the sink

    def stats(self) -> dict[str, DeviceStats]:
        """Per-device counters (a snapshot; read from any thread)."""
        return {k: DeviceStats(**vars(p.stats)) for k, p in self._pollers.items()}

    # -- loop thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            asyncio.run(self._main_async())
        finally:
            self._ready.set()

    async def _main_async(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        n = max(len(self.plans), 1)
        for i, (dev_id, plan) in enumerate(self.plans.items()):
            # spread first polls over (at most) one second so many devices do not poll in lockstep
            phase = min(plan.device.poll_interval_s, 1.0) * i / n
            self._pollers[dev_id] = _DevicePoller(self, plan, phase)
        tasks = [asyncio.create_task(p.run(), name=f"modbus:{d}") for d, p in self._pollers.items()]
        self._ready.set()
        try:
            if self._stopping.is_set():
                return
            # return_exceptions: a poller that died of a bug must not take the other devices with it
            await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            pass
        finally:
            for t in tasks:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for dev_id, res in zip(self._pollers, results):
                if isinstance(res, BaseException) and not isinstance(res, asyncio.CancelledError):
                    log.error("modbus device %s: poller ended with %r", dev_id, res, exc_info=res)

    async def _submit(self, delivery: Delivery) -> None:
        assert self._submitter is not None
        await asyncio.get_running_loop().run_in_executor(self._submitter, self.sink.submit, delivery)

    def _event(self, device_id: str, kind: str, detail: str = "", at: datetime | None = None) -> None:
        event = DeviceEvent(device_id, PROTOCOL, kind, at or datetime.now(timezone.utc), detail)
        try:
            self.sink.device_event(event)
        except Exception:  # noqa: BLE001 — status bookkeeping must not stop polling; events are rare
            log.exception("modbus device %s: sink.device_event failed for %s", device_id, event)
