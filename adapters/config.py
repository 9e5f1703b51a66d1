"""devices.yaml: validated at load (pydantic, discriminated union on ``protocol``).

Errors name the device, the point and the numbers, e.g.
``device S03 point supply_temp_2: float32 needs 2 registers, got 1``.
Defaults live in these models only. Environment references ``${VAR}`` / ``${VAR:-default}`` in
the file are expanded before parsing, so tests and deployments can move ports without editing it.

Per-protocol models live here so that the union, the registry and the validators stay in one
place; protocol libraries are imported only by the adapter modules themselves.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator,
                      model_validator)


class DevicesConfigError(ValueError):
    """devices.yaml is invalid; the message names the device/point and the numbers."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# Plausibility ranges (ingest assigns qualities with them)

class MetricRange(_Model):
    """`plausible`: outside → stored with quality out_of_range. `possible`: outside → rejected."""
    plausible: tuple[float, float]
    possible: tuple[float, float]
    #: the same value repeated for longer than this many seconds → quality stale (stuck sensor)
    stuck_after_s: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> "MetricRange":
        lo, hi = self.plausible
        plo, phi = self.possible
        if not (plo <= lo < hi <= phi):
            raise ValueError(f"need possible[0] <= plausible[0] < plausible[1] <= possible[1], got "
                             f"plausible={self.plausible} possible={self.possible}")
        return self


# ---------------------------------------------------------------------------------------------
# MQTT

class TimestampSpec(_Model):
    #: dotted field path inside the item (e.g. "ts", "meta.time", "data[0].t"); None → arrival time
    path: str | None = None
    #: auto: ISO 8601 string, or a number read as epoch seconds (< 1e11) or milliseconds
    format: Literal["auto", "iso8601", "epoch_s", "epoch_ms"] = "auto"
    #: zone for ISO 8601 strings without an offset (devices in China send local time)
    naive_timezone: str = "Asia/Shanghai"
    #: a payload timestamp more than this *ahead* of arrival is stored with quality clock_skew
    max_skew_s: float = 300.0
    #: a payload timestamp older than this is stored with quality clock_skew. Past timestamps are
    #: normal: battery devices and gateways buffer and upload hourly (R16), backfills replay days.
    max_age_s: float = 35 * 86400.0


class PayloadField(_Model):
    """One reading taken from a message."""
    path: str | None = None           # dotted path; None for plain-number payloads
    metric: str = "room_temp"
    unit: Literal["C", "F", "K", "raw"] = "C"   # converted to C for temperatures
    scale: float = 1.0                # value = raw * scale + offset, before unit conversion
    offset: float = 0.0
    #: room code for this reading when it is not captured from the topic (multi-room payloads)
    room: str | None = None
    optional: bool = False            # absent field → no reading instead of a rejection


class PayloadMapping(_Model):
    format: Literal["json", "number"] = "json"
    #: dotted path to an array of items (several readings in one message); None: the message is the item
    items: str | None = None
    fields: tuple[PayloadField, ...] = Field(min_length=1)
    timestamp: TimestampSpec = TimestampSpec()
    #: item path giving the room code, when the payload names the room (overrides topic capture)
    room_path: str | None = None


class MqttSubscription(_Model):
    #: topic pattern: {name} captures one level (or part of one: "{household}_{room}"), + and # as in MQTT
    topic: str
    payload: str | PayloadMapping     # a profile name or an inline mapping
    #: sensor key template; captures and {metric} are available
    sensor_key: str = "room:{household}:{room}:{metric}"

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if "#" in v[:-1]:
            raise ValueError(f"'#' may only end a topic pattern: {v!r}")
        return v


class MqttDevice(_Model):
    protocol: Literal["mqtt"]
    id: str
    #: broker URL; None → HEATDESK_MQTT_URL / the private broker
    broker: str | None = None
    qos: Literal[1] = 1               # QoS 1 only: at-least-once, deduplicated in the database
    client_id: str | None = None      # stable id; default from settings.mqtt_client_id + device id
    username: str | None = None
    password: str | None = None
    #: MQTT 5 shared subscription group ($share/<group>/...) to scale out ingest workers
    share_group: str | None = None
    subscriptions: tuple[MqttSubscription, ...] = Field(min_length=1)


# ---------------------------------------------------------------------------------------------
# Modbus TCP

ModbusType = Literal["int16", "uint16", "int32", "uint32", "float32"]
REGISTER_COUNT: dict[str, int] = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}


class ModbusPoint(_Model):
    name: str                         # point name, e.g. supply_temp_2
    metric: str
    unit: str = "C"
    address: int = Field(ge=0, le=65536)   # as documented by the manufacturer, in the map's address_base
    type: ModbusType = "int16"
    registers: int | None = None      # defaults to the type's size; stated only to catch map errors
    scale: float = 1.0
    offset: float = 0.0
    #: raw register values (before scale) the controller uses to say "sensor fault", e.g. [-32768] or
    #: [32767]: such a sample is stored with quality device_error, never as a measurement
    error_values: tuple[float, ...] = ()

    @model_validator(mode="after")
    def _size(self) -> "ModbusPoint":
        need = REGISTER_COUNT[self.type]
        if self.registers is not None and self.registers != need:
            raise ValueError(f"point {self.name}: {self.type} needs {need} registers, got {self.registers}")
        return self

    @property
    def size(self) -> int:
        return REGISTER_COUNT[self.type]


class ModbusMap(_Model):
    """A register map defined once (profile) and used by many devices."""
    register_type: Literal["holding", "input"] = "holding"
    #: 0: addresses are protocol offsets; 1: manufacturer tables count from 1 (R53)
    address_base: Literal[0, 1] = 0
    byte_order: Literal["big", "little"] = "big"
    word_order: Literal["big", "little"] = "big"     # little = low word first (R53)
    points: tuple[ModbusPoint, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "ModbusMap":
        names = [p.name for p in self.points]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate point names {sorted(dup)}")
        for p in self.points:
            off = p.address - self.address_base
            if off < 0 or off + p.size > 65536:
                raise ValueError(f"point {p.name}: address {p.address} with address_base {self.address_base} "
                                 f"is outside 0..65535")
        return self


class ModbusDevice(_Model):
    protocol: Literal["modbus"]
    id: str
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    map: str | ModbusMap              # profile name or inline map
    substation: str | None = None     # substation code the points belong to
    weather_station: str | None = None
    poll_interval_s: float = Field(default=10.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    max_registers_per_request: int = Field(default=125, ge=1, le=125)
    #: reconnect backoff after a failed connect or a timeout: doubles from initial to max, with jitter
    reconnect_initial_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    sensor_key: str = "{device}/{point}"

    @model_validator(mode="after")
    def _backoff(self) -> "ModbusDevice":
        if self.reconnect_initial_s > self.reconnect_max_s:
            raise ValueError(f"reconnect_initial_s {self.reconnect_initial_s} > reconnect_max_s {self.reconnect_max_s}")
        return self


# ---------------------------------------------------------------------------------------------
# OPC UA

class OpcUaNode(_Model):
    name: str
    node_id: str                      # ns=2;s=... or ns=2;i=...
    metric: str
    unit: str = "C"
    scale: float = 1.0
    offset: float = 0.0

    @field_validator("node_id")
    @classmethod
    def _nodeid(cls, v: str) -> str:
        if not re.fullmatch(r"(ns=\d+;)?[isgb]=.+", v):
            raise ValueError(f"node id {v!r} is not of the form ns=<n>;s=<name> / ns=<n>;i=<int>")
        return v


class OpcUaNodeSet(_Model):
    nodes: tuple[OpcUaNode, ...] = Field(min_length=1)


class OpcUaDevice(_Model):
    protocol: Literal["opcua"]
    id: str
    endpoint: str                     # opc.tcp://host:port/path
    #: None for the simulator; Basic256Sha256 / Aes128_Sha256_RsaOaep / Aes256_Sha256_RsaPss in production
    security_policy: Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"] = "None"
    security_mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    certificate: Path | None = None
    private_key: Path | None = None
    server_certificate: Path | None = None
    username: str | None = None
    password: str | None = None
    nodes: str | OpcUaNodeSet         # profile name or inline node set
    substation: str | None = None
    weather_station: str | None = None
    sampling_interval_ms: float = Field(default=1000, gt=0)
    publishing_interval_ms: float = Field(default=1000, gt=0)
    watchdog_interval_s: float = Field(default=5.0, gt=0)
    timeout_s: float = Field(default=4.0, gt=0)
    #: reconnect backoff (s): first retry after initial, doubling up to max; never a busy loop
    reconnect_initial_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    sensor_key: str = "{device}/{point}"

    @model_validator(mode="after")
    def _security(self) -> "OpcUaDevice":
        if (self.security_policy == "None") != (self.security_mode == "None"):
            raise ValueError(f"security_policy {self.security_policy} does not fit security_mode {self.security_mode}")
        if self.security_policy != "None" and not (self.certificate and self.private_key):
            raise ValueError(f"security_policy {self.security_policy} needs certificate and private_key")
        if self.reconnect_initial_s > self.reconnect_max_s:
            raise ValueError(f"reconnect_initial_s {self.reconnect_initial_s} > reconnect_max_s {self.reconnect_max_s}")
        return self


# ---------------------------------------------------------------------------------------------
# The file

Device = Annotated[Union[MqttDevice, ModbusDevice, OpcUaDevice], Field(discriminator="protocol")]


def _profile_kind(v) -> str:
    """A profile's kind follows from its keys: `points` → Modbus map, `nodes` → OPC UA, else MQTT payload."""
    if isinstance(v, dict):
        return "modbus_map" if "points" in v else "opcua_nodes" if "nodes" in v else "mqtt_payload"
    return {ModbusMap: "modbus_map", OpcUaNodeSet: "opcua_nodes"}.get(type(v), "mqtt_payload")


Profile = Annotated[Union[Annotated[PayloadMapping, Tag("mqtt_payload")], Annotated[ModbusMap, Tag("modbus_map")],
                          Annotated[OpcUaNodeSet, Tag("opcua_nodes")]], Discriminator(_profile_kind)]


class DevicesFile(_Model):
    version: Literal[1] = 1
    ranges: dict[str, MetricRange] = {}
    profiles: dict[str, Profile] = {}
    devices: tuple[Device, ...] = ()

    @model_validator(mode="after")
    def _cross(self) -> "DevicesFile":
        ids = [d.id for d in self.devices]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"duplicate device ids: {dup}")
        for d in self.devices:
            ref = {"mqtt": None, "modbus": "map", "opcua": "nodes"}[d.protocol]
            refs = [s.payload for s in d.subscriptions] if d.protocol == "mqtt" else [getattr(d, ref)]
            want = {"mqtt": PayloadMapping, "modbus": ModbusMap, "opcua": OpcUaNodeSet}[d.protocol]
            for r in refs:
                if isinstance(r, str):
                    if r not in self.profiles:
                        raise ValueError(f"device {d.id}: profile {r!r} is not defined (have {sorted(self.profiles)})")
                    if not isinstance(self.profiles[r], want):
                        raise ValueError(f"device {d.id}: profile {r!r} is a {type(self.profiles[r]).__name__}, "
                                         f"a {d.protocol} device needs a {want.__name__}")
        return self

    # Resolved views -----------------------------------------------------------------------
    def by_protocol(self, protocol: str) -> list:
        return [d for d in self.devices if d.protocol == protocol]

    def payload_mapping(self, sub: MqttSubscription) -> PayloadMapping:
        return self.profiles[sub.payload] if isinstance(sub.payload, str) else sub.payload  # type: ignore[return-value]

    def modbus_map(self, dev: ModbusDevice) -> ModbusMap:
        return self.profiles[dev.map] if isinstance(dev.map, str) else dev.map  # type: ignore[return-value]

    def opcua_nodes(self, dev: OpcUaDevice) -> OpcUaNodeSet:
        return self.profiles[dev.nodes] if isinstance(dev.nodes, str) else dev.nodes  # type: ignore[return-value]


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise DevicesConfigError(f"environment variable {name} is referenced but not set and has no default")

    return _ENV.sub(sub, text)


def parse_devices(text: str, *, source: str = "devices.yaml", env: dict[str, str] | None = None) -> DevicesFile:
    try:
        data = yaml.safe_load(expand_env(text, env)) or {}
    except yaml.YAMLError as e:
        raise DevicesConfigError(f"{source}: not valid YAML: {e}") from e
    try:
        return DevicesFile.model_validate(data)
    except ValidationError as e:
        raise DevicesConfigError(_explain(source, data, e)) from None


def load_devices(path: str | Path, env: dict[str, str] | None = None) -> DevicesFile:
    p = Path(path)
    return parse_devices(p.read_text(encoding="utf-8"), source=str(p), env=env)


def _explain(source: str, data: dict, err: ValidationError) -> str:
    """Turn pydantic locations into 'device S03 point supply_temp_2: ...' lines."""
    lines = []
    for e in err.errors():
        loc = list(e["loc"])
        where = []
        if loc[:1] == ["devices"] and len(loc) > 1 and isinstance(loc[1], int):
            try:
                where.append(f"device {data['devices'][loc[1]].get('id', '#' + str(loc[1]))}")
            except (KeyError, IndexError, TypeError, AttributeError):
                where.append(f"device #{loc[1]}")
            rest = loc[2:]
        elif loc[:1] == ["profiles"] and len(loc) > 1:
            where.append(f"profile {loc[1]}")
            rest = loc[2:]
        else:
            rest = loc
        rest = [str(x) for x in rest if x not in ("mqtt", "modbus", "opcua", "mqtt_payload", "modbus_map",
                                                   "opcua_nodes", "str") and not str(x).startswith("function-")]
        msg = e["msg"].removeprefix("Value error, ")
        place = " ".join([*where, ".".join(rest)]).strip()
        lines.append(f"{source}: {place}: {msg}" if place else f"{source}: {msg}")
    return "\n".join(dict.fromkeys(lines))
