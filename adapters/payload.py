"""MQTT topics and payloads → readings. Pure: no I/O, no clock (arrival time is a parameter).

Two jobs, both compiled once from devices.yaml so the per-message path is a regex match, a
few dict look-ups and one ``orjson.loads``:

* ``TopicPattern``: ``heatdesk/room/{household}/{room}/state`` → the subscription filter
  ``heatdesk/room/+/+/state`` and a matcher returning ``{"household": ..., "room": ...}``.
  A capture may be part of a level (``{household}_{room}``); ``+`` and a trailing ``#`` work as
  in MQTT.
* ``SubscriptionDecoder``: one message → ``Decoded(readings, rejects)`` per ``PayloadMapping``
  (adapters/config.py). Every failure is a ``Rejection`` with a short reason code and a detail
  naming the device, the topic and the field; nothing here raises on bad input (field-lessons.md:
  an exception inside on_message stalls paho).

Reason codes: malformed_json, missing_field, not_an_object, not_an_array, not_a_number, nan,
infinite, bad_timestamp, unknown_room, topic_mismatch, bad_encoding.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable
from zoneinfo import ZoneInfo

import orjson

from adapters.base import Reading, Rejection, SensorMeta
from adapters.config import DevicesConfigError, PayloadField, PayloadMapping
from core.quality import Quality

SOURCE = "mqtt"
#: payloads kept in the rejects table are cut to this many bytes (bounded evidence, not a dump)
MAX_REJECT_PAYLOAD = 16 * 1024
#: epoch numbers below this are seconds, above milliseconds (auto format; 1e11 s is year 5138)
_EPOCH_MS_THRESHOLD = 1e11
_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)

# -------------------------------------------------------------------------------------------------
# Topics

_CAPTURE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class TopicPattern:
    """A compiled devices.yaml topic pattern."""
    pattern: str
    filter: str                       # what we subscribe to (captures become '+')
    names: tuple[str, ...]            # capture names, in order
    _regex: re.Pattern = field(repr=False, compare=False)

    def match(self, topic: str) -> dict[str, str] | None:
        """Captures of `topic`, or None when it does not fit the pattern."""
        m = self._regex.match(topic)
        return m.groupdict() if m else None


def compile_topic(pattern: str) -> TopicPattern:
    """Compile ``a/{x}/+/{y}_{z}/#`` into a subscription filter and a matcher.

    Raises DevicesConfigError for patterns MQTT cannot express (empty captures, '#' not last,
    wildcards mixed into a level, a capture name used twice).
    """
    if not pattern:
        raise DevicesConfigError("empty topic pattern")
    levels = pattern.split("/")
    filt: list[str] = []
    rx: list[str] = []
    names: list[str] = []
    for i, level in enumerate(levels):
        last = i == len(levels) - 1
        if level == "#":
            if not last:
                raise DevicesConfigError(f"topic {pattern!r}: '#' may only be the last level")
            filt.append("#")
            # '#' also matches the parent level itself (MQTT 4.7.1.2): a/# matches a
            if rx:
                rx[-1] = rx[-1] + "(?:/.*)?"
            else:
                rx.append(".*")
            continue
        if level == "+":
            filt.append("+")
            rx.append("[^/]*")
            continue
        if "+" in level or "#" in level:
            raise DevicesConfigError(f"topic {pattern!r}: wildcard inside level {level!r}")
        caps = _CAPTURE.findall(level)
        if not caps:
            if "{" in level or "}" in level:
                raise DevicesConfigError(f"topic {pattern!r}: bad capture in level {level!r}")
            filt.append(level)
            rx.append(re.escape(level))
            continue
        filt.append("+")
        parts = _CAPTURE.split(level)       # literal, name, literal, name, ..., literal
        level_rx = []
        n_caps = len(caps)
        for j, part in enumerate(parts):
            if j % 2 == 0:
                if "{" in part or "}" in part:
                    raise DevicesConfigError(f"topic {pattern!r}: bad capture in level {level!r}")
                level_rx.append(re.escape(part))
            else:
                if part in names:
                    raise DevicesConfigError(f"topic {pattern!r}: capture {{{part}}} used twice")
                names.append(part)
                # all but the last capture of a level are lazy: {household}_{room} splits at the last '_'
                # only when household codes contain '_'; codes in the demo city never do
                lazy = "?" if (j // 2) < n_caps - 1 else ""
                level_rx.append(f"(?P<{part}>[^/]+{lazy})")
        rx.append("".join(level_rx))
    return TopicPattern(pattern=pattern, filter="/".join(filt), names=tuple(names),
                        _regex=re.compile("^" + "/".join(rx) + "$", re.DOTALL))


# -------------------------------------------------------------------------------------------------
# Field paths: "a.b[0].c", "data[0].v", "DS18B20.Temperature"

_PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")


def compile_path(path: str) -> tuple[str | int, ...]:
    """``data[0].v`` → ("data", 0, "v"). Raises DevicesConfigError on an unparseable path."""
    steps: list[str | int] = []
    pos = 0
    while pos < len(path):
        if path[pos] == "." and steps:
            pos += 1
        m = _PATH_TOKEN.match(path, pos)
        if not m:
            raise DevicesConfigError(f"field path {path!r}: cannot parse at character {pos}")
        steps.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if not steps:
        raise DevicesConfigError(f"field path {path!r} is empty")
    return tuple(steps)


_MISSING = object()


def get_path(obj: Any, steps: tuple[str | int, ...]) -> Any:
    """Follow `steps` into decoded JSON; _MISSING when any step is absent or of the wrong kind."""
    for s in steps:
        if isinstance(s, int):
            if type(obj) is not list or not -len(obj) <= s < len(obj):
                return _MISSING
            obj = obj[s]
        else:
            if type(obj) is not dict:
                return _MISSING
            obj = obj.get(s, _MISSING)
            if obj is _MISSING:
                return _MISSING
    return obj


# -------------------------------------------------------------------------------------------------
# Values, units, timestamps

class _Bad(Exception):
    """Internal: one field of one item is unusable (reason code, detail)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


def to_number(raw: Any, what: str) -> float:
    """JSON number or numeric string → finite float. Booleans are not numbers."""
    if type(raw) is bool or raw is None:
        raise _Bad("not_a_number", f"{what} is {_short(raw)}, not a number")
    if isinstance(raw, (int, float)):
        v = float(raw)
    elif isinstance(raw, str):
        try:
            v = float(raw.strip())
        except ValueError:
            raise _Bad("not_a_number", f"{what} is {_short(raw)}, not a number") from None
    else:
        raise _Bad("not_a_number", f"{what} is a {type(raw).__name__}, not a number")
    if math.isnan(v):
        raise _Bad("nan", f"{what} is NaN")
    if math.isinf(v):
        raise _Bad("infinite", f"{what} is infinite")
    return v


#: unit in devices.yaml → (canonical unit stored in sensor.unit, conversion)
UNITS = {
    "C": ("C", lambda v: v),
    "F": ("C", lambda v: (v - 32.0) * 5.0 / 9.0),
    "K": ("C", lambda v: v - 273.15),
    "raw": ("", lambda v: v),
}


def parse_timestamp(raw: Any, fmt: str, naive_tz: ZoneInfo, what: str) -> datetime:
    """A payload timestamp → aware datetime. ISO 8601 without offset is local time (naive_tz)."""
    if type(raw) is bool or raw is None:
        raise _Bad("bad_timestamp", f"{what} is {_short(raw)}")
    try:
        if fmt == "iso8601" or (fmt == "auto" and isinstance(raw, str) and not _looks_numeric(raw)):
            if not isinstance(raw, str):
                raise _Bad("bad_timestamp", f"{what} is {_short(raw)}, not an ISO 8601 string")
            ts = datetime.fromisoformat(raw.strip())
            if ts.tzinfo is None:
                ts = ts.replace(tzinfo=naive_tz)
            return ts
        if isinstance(raw, str):
            raw = float(raw.strip())
        if not isinstance(raw, (int, float)):
            raise _Bad("bad_timestamp", f"{what} is a {type(raw).__name__}")
        n = float(raw)
        if not math.isfinite(n) or n < 0:
            raise _Bad("bad_timestamp", f"{what} is {_short(raw)}")
        if fmt == "epoch_ms" or (fmt == "auto" and n >= _EPOCH_MS_THRESHOLD):
            n /= 1000.0
        return _EPOCH + timedelta(seconds=n)
    except _Bad:
        raise
    except (ValueError, OverflowError, TypeError) as e:
        raise _Bad("bad_timestamp", f"{what} is {_short(raw)}: {e}") from None


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _short(v: Any, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


_ROOM_OK = re.compile(r"^[^\s:/#+\x00]{1,64}$")


def _room_code(raw: Any, what: str) -> str:
    if type(raw) is bool or not isinstance(raw, (str, int)):
        raise _Bad("unknown_room", f"{what} is {_short(raw)}, not a room code")
    code = str(raw)
    if not _ROOM_OK.match(code):
        raise _Bad("unknown_room", f"{what} {_short(code)} is not a usable room code")
    return code


# -------------------------------------------------------------------------------------------------
# The decoder

@dataclass(frozen=True, slots=True)
class Decoded:
    readings: list[Reading]
    rejects: list[Rejection]


class _KeyVars(dict):
    """format_map source that reports which template variable is missing."""

    def __missing__(self, key: str) -> str:
        raise KeyError(key)


@dataclass(frozen=True)
class _Field:
    spec: PayloadField
    steps: tuple[str | int, ...] | None
    unit: str
    convert: Any
    label: str


class SubscriptionDecoder:
    """Decode messages of one devices.yaml subscription. Build once, call per message."""

    def __init__(self, *, device_id: str, topic: str, mapping: PayloadMapping,
                 sensor_key: str = "room:{household}:{room}:{metric}", source: str = SOURCE):
        self.device_id = device_id
        self.source = source
        self.topic = compile_topic(topic)
        self.mapping = mapping
        self.sensor_key = sensor_key
        self.items = compile_path(mapping.items) if mapping.items else None
        self.room_path = compile_path(mapping.room_path) if mapping.room_path else None
        ts = mapping.timestamp
        self.ts_steps = compile_path(ts.path) if ts.path else None
        self.ts_format = ts.format
        self.ts_label = ts.path or ""
        try:
            self.naive_tz = ZoneInfo(ts.naive_timezone)
        except (KeyError, ValueError) as e:  # ZoneInfoNotFoundError is a KeyError: a config error at load
            raise DevicesConfigError(f"device {device_id}: naive_timezone {ts.naive_timezone!r}: {e}") from None
        self.max_skew = timedelta(seconds=ts.max_skew_s)
        self.max_age = timedelta(seconds=ts.max_age_s)
        fields = []
        for f in mapping.fields:
            if mapping.format == "json" and f.path is None and mapping.items:
                raise DevicesConfigError(f"device {device_id} topic {topic}: a field in an items payload needs a path")
            unit, conv = UNITS[f.unit]
            fields.append(_Field(spec=f, steps=compile_path(f.path) if f.path else None, unit=unit, convert=conv,
                                 label=f.path or "payload"))
        self.fields = tuple(fields)
        # Config check: every template variable must be available from somewhere.
        have = set(self.topic.names) | {"metric", "device", "point"}
        if self.room_path or any(f.room for f in mapping.fields):
            have.add("room")
        need = set(_CAPTURE.findall(sensor_key))
        if not need <= have:
            raise DevicesConfigError(f"device {device_id} topic {topic}: sensor_key {sensor_key!r} uses "
                                     f"{sorted(need - have)}, which neither the topic nor the payload provides")
        self._meta_cache: dict[tuple, SensorMeta] = {}

    # -- helpers ----------------------------------------------------------------------------------
    def _reject(self, topic: str, payload: bytes, reason: str, detail: str) -> Rejection:
        return Rejection(source=self.source, device_id=self.device_id, address=topic,
                         payload=payload[:MAX_REJECT_PAYLOAD], reason=reason,
                         detail=f"device {self.device_id} topic {topic}: {detail}")

    def _meta(self, metric: str, unit: str, point: str, captures: dict[str, str], room: str | None) -> SensorMeta:
        k = (metric, unit, point, captures.get("household"), room, captures.get("substation"))
        m = self._meta_cache.get(k)
        if m is None:
            if len(self._meta_cache) > 200_000:       # bounded: a topic flood must not grow memory forever
                self._meta_cache.clear()
            m = SensorMeta(metric=metric, unit=unit, protocol=self.source, device_id=self.device_id, point=point,
                           household_code=captures.get("household"), room_code=room,
                           substation_code=captures.get("substation"))
            self._meta_cache[k] = m
        return m

    # -- the per-message path ------------------------------------------------------------------------
    def decode(self, topic: str, payload: bytes, arrival: datetime, *, retained: bool = False,
               captures: dict[str, str] | None = None) -> Decoded:
        """Never raises on bad input. `arrival` is timezone-aware (the adapter's clock).

        `retained`: the broker replayed a retained message on subscribe; if the payload carries no
        time, arrival time is not the measurement time, so such readings are stored UNCERTAIN.
        """
        if captures is None:
            captures = self.topic.match(topic)
            if captures is None:
                return Decoded([], [self._reject(topic, payload, "topic_mismatch",
                                                 f"does not fit pattern {self.topic.pattern}")])
        if self.mapping.format == "number":
            try:
                text = bytes(payload).decode("utf-8").strip()
            except UnicodeDecodeError:
                return Decoded([], [self._reject(topic, payload, "bad_encoding", "payload is not UTF-8 text")])
            items: Iterable[Any] = (text,)
            base = None
        else:
            try:
                doc = orjson.loads(payload)
            except orjson.JSONDecodeError as e:
                return Decoded([], [self._reject(topic, payload, "malformed_json", str(e)[:200])])
            if self.items is not None:
                arr = get_path(doc, self.items)
                if arr is _MISSING:
                    return Decoded([], [self._reject(topic, payload, "missing_field",
                                                     f"items array {self.mapping.items!r} is absent")])
                if type(arr) is not list:
                    return Decoded([], [self._reject(topic, payload, "not_an_array",
                                                     f"items {self.mapping.items!r} is {_short(arr)}")])
                items = arr
            else:
                items = (doc,)
            base = doc
        readings: list[Reading] = []
        rejects: list[Rejection] = []
        for idx, item in enumerate(items):
            where = f"item {idx} " if self.items is not None else ""
            try:
                self._item(item, base, topic, arrival, retained, captures, where, readings)
            except _Bad as b:
                rejects.append(self._reject(topic, payload, b.reason, where + b.detail))
        return Decoded(readings, rejects)

    def _item(self, item: Any, base: Any, topic: str, arrival: datetime, retained: bool,
              captures: dict[str, str], where: str, out: list[Reading]) -> None:
        # A whole item fails on its timestamp or room (they apply to every field); fields fail alone
        # only when optional and absent.
        if self.ts_steps is not None:
            raw_ts = get_path(item, self.ts_steps)
            if raw_ts is _MISSING and item is not base:
                raw_ts = get_path(base, self.ts_steps)        # gateway-level time for all items
            if raw_ts is _MISSING:
                raise _Bad("missing_field", f"timestamp field {self.ts_label!r} is absent")
            ts = parse_timestamp(raw_ts, self.ts_format, self.naive_tz, f"timestamp {self.ts_label!r}")
            # future beyond max_skew, or older than max_age: the device clock is wrong (keep its time)
            skewed = ts - arrival > self.max_skew or arrival - ts > self.max_age
            quality = Quality.CLOCK_SKEW if skewed else Quality.GOOD
        else:
            ts = arrival
            quality = Quality.UNCERTAIN if retained else Quality.GOOD
        item_room = None
        if self.room_path is not None:
            raw_room = get_path(item, self.room_path)
            if raw_room is _MISSING:
                raise _Bad("missing_field", f"room field {self.mapping.room_path!r} is absent")
            item_room = _room_code(raw_room, f"room field {self.mapping.room_path!r}")
        for f in self.fields:
            if f.steps is None:
                raw = item
            else:
                raw = get_path(item, f.steps)
                if raw is _MISSING:
                    if f.spec.optional:
                        continue
                    raise _Bad("missing_field", f"field {f.label!r} is absent")
            v = to_number(raw, f"field {f.label!r}")
            v = f.convert(v * f.spec.scale + f.spec.offset)
            if not math.isfinite(v):
                raise _Bad("infinite", f"field {f.label!r} overflows after scaling")
            room = item_room or f.spec.room or captures.get("room")
            vars_ = _KeyVars(captures)
            vars_["metric"] = f.spec.metric
            vars_["device"] = self.device_id
            vars_["point"] = f.spec.path or f.spec.metric
            if room is not None:
                vars_["room"] = room
            try:
                key = self.sensor_key.format_map(vars_)
            except KeyError as e:
                name = e.args[0]
                raise _Bad("unknown_room" if name == "room" else "missing_field",
                           f"sensor key {self.sensor_key!r} needs {{{name}}}, which this message does not give") from None
            out.append(Reading(sensor=key, ts=ts, value=v, quality=quality,
                               meta=self._meta(f.spec.metric, f.unit, vars_["point"], captures, room)))


def decoders_for_device(device, config) -> list[SubscriptionDecoder]:
    """One decoder per subscription of an MqttDevice, in devices.yaml order (first match wins)."""
    return [SubscriptionDecoder(device_id=device.id, topic=s.topic, mapping=config.payload_mapping(s),
                                sensor_key=s.sensor_key) for s in device.subscriptions]
