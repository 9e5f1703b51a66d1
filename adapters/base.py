"""The small contract between protocol adapters and ingest.

An adapter turns what a device sends into ``Delivery`` objects and hands them to a ``Sink``
(ingest). Ingest calls ``Delivery.ack()`` only after the readings are durably committed (or,
for polled data, durably spooled): that is how an MQTT message is acknowledged after the
database commit (field-lessons.md, paho PR #753) and never before.

Adapters never import psycopg, never block on the database, and never crash on bad input:
a payload they cannot use becomes a ``Rejection`` with a reason code.
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Callable, ClassVar, Protocol, Sequence

from core.quality import Quality

if TYPE_CHECKING:
    from adapters.config import DevicesFile
    from core.config import Settings


@dataclass(frozen=True, slots=True)
class SensorMeta:
    """What ingest needs to register a sensor the first time its key is seen."""
    metric: str                       # room_temp, outdoor_temp, supply_temp_2, flow_2, ...
    unit: str                         # canonical unit after conversion: C, K, m3/h, MPa, kW, %, ...
    protocol: str
    device_id: str
    point: str = ""
    household_code: str | None = None
    room_code: str | None = None
    substation_code: str | None = None
    weather_station_code: str | None = None


@dataclass(frozen=True, slots=True)
class Reading:
    sensor: str                       # stable sensor key (sensor.key)
    ts: datetime                      # timezone-aware; stored as timestamptz
    value: float                      # already scaled/converted to meta.unit
    quality: Quality
    meta: SensorMeta


@dataclass(frozen=True, slots=True)
class Rejection:
    source: str                       # mqtt | modbus | opcua
    device_id: str | None
    address: str                      # topic, host:port/unit/register, endpoint|node id
    payload: bytes
    reason: str                       # short machine code, e.g. malformed_json, missing_field, nan
    detail: str = ""                  # human text naming the device, point and numbers


class GroupAck:
    """An ack its adapter can carry out together with others of the same group.

    ``Delivery.ack`` may be any callable; when it is a GroupAck, ingest (``ingest.writer.ack_all``)
    calls ``group(acks)`` once for a run of consecutive acks of one group instead of each ack on its
    own — for MQTT one lock and one buffer append for a whole batch's PUBACKs instead of two locks and
    a ``struct.pack`` per message, work done on the thread that also commits (docs/ingest.md,
    "Throughput"). ``group`` must be the same object for every ack it can take, and return how many
    of them it carried out (or dropped as stale, as the ack itself would)."""
    __slots__ = ()
    group: Callable[[list["GroupAck"]], int]

    def __call__(self) -> None:
        self.group([self])


@dataclass(slots=True)
class Delivery:
    """One unit of work from an adapter (one MQTT message, one Modbus poll, one OPC UA batch)."""
    readings: Sequence[Reading] = ()
    rejects: Sequence[Rejection] = ()
    #: Called once by ingest after a durable commit (or durable spool). None: nothing to ack.
    ack: Callable[[], None] | None = None
    #: True when the upstream keeps the data until acked (MQTT QoS 1): ingest may simply not ack
    #: while the database is down. False for polled data: ingest must spool it to disk.
    upstream_retains: bool = False


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """Connection state for `heatdesk status` and gap records."""
    device_id: str
    protocol: str
    kind: str                         # connected | disconnected | error | gap_start | gap_end
    at: datetime
    detail: str = ""


class Sink(Protocol):
    def submit(self, delivery: Delivery) -> None:
        """Thread-safe. May block briefly when ingest's bounded queue is full (backpressure)."""

    def device_event(self, event: DeviceEvent) -> None:
        """Thread-safe, never blocks for long."""


class Adapter(ABC):
    """start() returns once the adapter runs in its own thread(s); stop() ends them cleanly.

    Every adapter class is constructed the same way by ingest (adapters/registry.py):
    ``Cls(devices, sink, config=devices_file, settings=settings)`` where ``devices`` are this
    protocol's entries of devices.yaml, ``config`` the whole validated file (for profiles and
    ranges) and ``settings`` the core.config.Settings (broker URL, client id, ...).
    """
    protocol: ClassVar[str]

    def __init__(self, devices: Sequence, sink: Sink, *, config: "DevicesFile", settings: "Settings"):
        self.devices = list(devices)
        self.sink = sink
        self.config = config
        self.settings = settings
        self._stopping = threading.Event()

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...


@dataclass(slots=True)
class CollectingSink:
    """A Sink that keeps everything in memory and acks at once: for tests and the protocol-ceiling
    benchmark (no database)."""
    deliveries: list[Delivery] = field(default_factory=list)
    events: list[DeviceEvent] = field(default_factory=list)
    auto_ack: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def submit(self, delivery: Delivery) -> None:
        with self._lock:
            self.deliveries.append(delivery)
        if self.auto_ack and delivery.ack:
            delivery.ack()

    def device_event(self, event: DeviceEvent) -> None:
        with self._lock:
            self.events.append(event)

    @property
    def readings(self) -> list[Reading]:
        with self._lock:
            return [r for d in self.deliveries for r in d.readings]

    @property
    def rejects(self) -> list[Rejection]:
        with self._lock:
            return [r for d in self.deliveries for r in d.rejects]
