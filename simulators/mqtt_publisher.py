"""Publish every room thermometer of the simulated city over MQTT, in its vendor's format (devices.yaml).

Formats (topic root from ``HEATDESK_TOPIC_ROOT``, default ``heatdesk``):

- A ``{root}/room/{household}/{room}/state``  ``{"temp": 21.4, "ts": "2026-11-23T08:00:00+08:00", "bat": 87}``
- B ``{root}/gw/{household}/up``  ``{"dev": "gw-…", "data": [{"room": "living", "t": 1795392000000, "v": 214}, …]}``
  (℃ × 10 as integers, epoch milliseconds; in backfill a gateway uploads an hour of samples per message, as
  Weifang's collectors do — R16: sample every 20 min, upload hourly)
- C ``{root}/raw/{household}/{room}/temperature``  ``"70.7"`` (℉, no timestamp: ingest uses arrival time, so C is
  only ever published live, never in backfill)

Modes:
- ``backfill(start, end)``: publish past samples with their own timestamps as fast as the broker takes
  them (QoS 1, large in-flight window), advancing the thermal model through the window.
- ``live_tick(t_sim, stamp)``: one sample of every thermometer now (run.py schedules the ticks).

Scenario faults (simulators/scenario.py) are applied per sample: offline thermometers publish nothing,
stuck ones repeat a frozen value, clock-skewed ones carry shifted timestamps, and whole messages may be
duplicated or replaced by malformed bytes.

``stats`` counts what was sent per sensor key (``room:{household}:{room}:room_temp``) so tests and benches
can compare the database with what was published; ``stats.expected_rows`` is the number of rows the
database should end up holding per sensor once ingest deduplicates on (sensor, time).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable
from urllib.parse import urlparse

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators.city import City
from simulators.scenario import ResolvedScenario
from simulators.thermal import ThermalModel

log = logging.getLogger(__name__)
TZ8 = timezone(timedelta(hours=8))


@dataclass
class PublishStats:
    readings: Counter = field(default_factory=Counter)        # valid readings published, per sensor
    expected_rows: Counter = field(default_factory=Counter)   # rows the database should hold, per sensor
    duplicated: Counter = field(default_factory=Counter)      # readings published a second time
    malformed: Counter = field(default_factory=Counter)       # readings lost inside malformed messages
    offline: Counter = field(default_factory=Counter)         # samples withheld (sensor offline)
    stuck: Counter = field(default_factory=Counter)           # readings carrying a frozen value
    skewed: Counter = field(default_factory=Counter)          # readings with a shifted timestamp
    collided: Counter = field(default_factory=Counter)        # skewed timestamps equal to another reading's
    skipped_no_timestamp: Counter = field(default_factory=Counter)   # vendor C samples not backfilled
    messages: int = 0
    malformed_messages: int = 0
    duplicate_messages: int = 0

    def summary(self) -> dict:
        return {"messages": self.messages, "readings": sum(self.readings.values()),
                "expected_rows": sum(self.expected_rows.values()), "sensors": len(self.readings),
                "duplicate_messages": self.duplicate_messages, "malformed_messages": self.malformed_messages,
                "offline_samples": sum(self.offline.values()), "stuck_readings": sum(self.stuck.values()),
                "skewed_readings": sum(self.skewed.values()),
                "not_backfilled_vendor_c": sum(self.skipped_no_timestamp.values())}

    def as_dict(self) -> dict:
        keys = sorted(set(self.readings) | set(self.offline) | set(self.malformed) | set(self.skipped_no_timestamp))
        return {**self.summary(), "per_sensor": {k: {"readings": self.readings[k], "expected_rows": self.expected_rows[k],
                                                     "offline": self.offline[k], "malformed": self.malformed[k],
                                                     "duplicated": self.duplicated[k], "skewed": self.skewed[k],
                                                     "not_backfilled": self.skipped_no_timestamp[k]}
                                                 for k in keys}}


def parse_mqtt_url(url: str) -> tuple[str, int, str | None, str | None]:
    u = urlparse(url if "://" in url else f"mqtt://{url}")
    if u.scheme not in ("mqtt", "tcp"):
        raise ValueError(f"MQTT URL {url!r}: only mqtt:// (plain TCP) is supported by the simulator")
    return u.hostname or "127.0.0.1", u.port or 1883, u.username, u.password


class MqttPublisher:
    def __init__(self, city: City, model: ThermalModel, scenario: ResolvedScenario | None, mqtt_url: str, *,
                 topic_root: str | None = None, client_id: str | None = None, sample_interval_s: float = 1200.0,
                 upload_every: int = 3, max_inflight: int = 100,
                 transport: Callable[[str, bytes], None] | None = None):
        """``transport(topic, payload)`` replaces the broker (tests, benches that feed ingest directly)."""
        self.city, self.model, self.scenario = city, model, scenario
        self.url = mqtt_url
        self.root = (topic_root or os.environ.get("HEATDESK_TOPIC_ROOT") or "heatdesk").rstrip("/")
        self.interval = float(sample_interval_s)
        self.upload_every = max(1, int(upload_every))
        self.stats = PublishStats()
        self.keys = model.sensor_keys
        self._rooms = [r.code for _, r in model.sensors]
        # households with thermometers: (household code, vendor, sensor indices, phase s, battery %)
        groups: dict[str, list[int]] = {}
        for i, (h, _) in enumerate(model.sensors):
            groups.setdefault(h.code, []).append(i)
        by_code = {h.code: h for h in city.households}
        self.households = [(code, by_code[code].vendor, np.array(idx), _phase(city.seed, code, self.interval),
                            60 + int(_phase(city.seed, code + "bat", 40))) for code, idx in groups.items()]
        self._frozen: dict[int, float] = {}
        self._pending_b: dict[str, list[tuple[int, int, float, bool]]] = {}
        self._seen: dict[int, set[int]] = {}
        self._track = bool(scenario and any(w.fault.kind == "clock_skew" for w in scenario.windows))
        self._acked = 0
        self._sent = 0
        self._live_ticks = 0
        self._closing = False
        self._last_p = (np.zeros(len(self.keys)), np.zeros(len(self.keys)))
        self.max_outstanding = max_inflight
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._connect_error: str | None = None
        self.transport = transport
        host, port, user, pw = parse_mqtt_url(mqtt_url)
        self._host, self._port = host, port
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"heatdesk-sim-{os.getpid()}",
                                  protocol=mqtt.MQTTv311, clean_session=True)
        if user:
            self.client.username_pw_set(user, pw)
        self.client.max_inflight_messages_set(max_inflight)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect

    # -- connection ------------------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties):  # noqa: ARG002
        if reason_code.is_failure:
            self._connect_error = str(reason_code)
            log.warning("MQTT broker %s refused the simulator: %s", self.url, reason_code)
        else:
            self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):  # noqa: ARG002
        if self._connected.is_set() and not self._closing:
            log.warning("MQTT broker %s: disconnected (%s); paho reconnects and resends unacknowledged messages",
                        self.url, reason_code)
        self._connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code, properties):  # noqa: ARG002
        with self._cond:
            self._acked += 1
            self._cond.notify_all()

    def connect(self, timeout: float = 10.0) -> None:
        if self.transport is not None:
            return
        self.client.connect(self._host, self._port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.client.loop_stop()
            raise ConnectionError(f"MQTT broker {self.url}: not connected after {timeout:g} s "
                                  f"({self._connect_error or 'no answer'})")

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until the broker acknowledged (PUBACK) everything published so far."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._acked < self._sent:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def close(self) -> None:
        if self.transport is not None:
            return
        self.flush(10.0)
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()

    def _publish(self, topic: str, payload: bytes) -> None:
        if self.transport is not None:
            self.transport(topic, payload)
            self.stats.messages += 1
            return
        # paho keeps unacknowledged QoS 1 messages by 16-bit message id: bound what is outstanding
        # (a broker outage stalls us here; paho reconnects and resends, so we wait rather than drop)
        with self._cond:
            stalled = time.monotonic()
            while self._sent - self._acked >= self.max_outstanding:
                if not self._cond.wait(1.0) and time.monotonic() - stalled > 30.0:
                    log.warning("MQTT broker %s: no PUBACK for 30 s, %d messages outstanding; waiting",
                                self.url, self._sent - self._acked)
                    stalled = time.monotonic()
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            raise RuntimeError(f"MQTT publish to {topic} failed: {mqtt.error_string(info.rc)}")
        with self._cond:
            self._sent += 1
        self.stats.messages += 1

    # -- sampling --------------------------------------------------------------------------------
    def backfill(self, start: float, end: float, progress: bool = False,
                 stop: threading.Event | None = None) -> PublishStats:
        """Publish all samples with timestamps in [start, end) (epoch s); the model is advanced through the
        window (reset it to ``start`` first). Vendor C thermometers are not backfilled (no timestamp)."""
        i0 = int(np.floor((start - self.interval) / self.interval))
        i1 = int(np.ceil(end / self.interval))
        for k in range(i0, i1 + 1):
            tick = k * self.interval
            if tick >= end or (stop is not None and stop.is_set()):
                break
            self.model.advance_to(max(tick, start))
            self._sample(tick, start, end, live_stamp=None, flush_b=(k + 1) % self.upload_every == 0)
            if k % 72 == 0:
                self._prune_seen(tick)
            if progress and k % 72 == 0:
                log.info("backfill %s", datetime.fromtimestamp(tick, TZ8).isoformat(timespec="minutes"))
        self._flush_b()
        return self.stats

    def live_tick(self, t_sim: float, stamp: float) -> None:
        """One sample of every thermometer, simulated at ``t_sim``, stamped (A/B) with wall time ``stamp``."""
        self.model.advance_to(t_sim)
        self._sample(t_sim, None, None, live_stamp=stamp, flush_b=True)
        self._live_ticks += 1
        if self._live_ticks % 72 == 0:
            self._prune_seen(stamp)

    def _sample(self, tick: float, start: float | None, end: float | None, live_stamp: float | None,
                flush_b: bool) -> None:
        values = self.model.room_readings(tick)
        sc = self.scenario
        n = len(self.keys)
        if sc is not None:
            offline = sc.sensor_mask("sensor_offline", tick)
            stuck = sc.sensor_mask("stuck_value", tick)
            skew = sc.clock_offset(tick)
            p_dup = sc.message_probability("duplicates", tick)
            p_bad = sc.message_probability("malformed", tick)
        else:
            offline = stuck = np.zeros(n, dtype=bool)
            skew = p_dup = p_bad = np.zeros(n)
        self._last_p = (p_dup, p_bad)
        for i in list(self._frozen):
            if not stuck[i]:
                del self._frozen[i]
        rng = np.random.default_rng([self.city.seed, int(tick), 0x9B1])
        for code, vendor, idx, phase, bat in self.households:
            if live_stamp is None:
                ts = tick + phase
                if ts < start or ts >= end:
                    continue
            else:
                ts = live_stamp
            keep = []
            for i in idx:
                if offline[i]:
                    self.stats.offline[self.keys[i]] += 1
                    continue
                if live_stamp is None and vendor == "C":
                    self.stats.skipped_no_timestamp[self.keys[i]] += 1
                    continue
                v = float(values[i])
                if stuck[i]:
                    v = self._frozen.setdefault(int(i), v)
                    self.stats.stuck[self.keys[i]] += 1
                keep.append((int(i), v))
            if not keep:
                continue
            if vendor == "B":
                items = [(i, int(round((ts + skew[i]) * 1000)), v, bool(skew[i] != 0)) for i, v in keep]
                self._pending_b.setdefault(code, []).extend(items)
                if flush_b:
                    self._send_b(code, rng, p_dup, p_bad)
                continue
            for i, v in keep:
                if vendor == "A":
                    t_payload = int(round(ts + skew[i]))
                    payload = json.dumps({"temp": round(v, 1), "ts": datetime.fromtimestamp(t_payload, TZ8)
                                          .isoformat(timespec="seconds"), "bat": bat}).encode()
                    topic = f"{self.root}/room/{code}/{self._rooms[i]}/state"
                    self._send(topic, payload, [(i, t_payload * 1000, skew[i] != 0)], rng, p_dup[i], p_bad[i], "A")
                else:   # C: ℉, one decimal, arrival time
                    payload = f"{v * 9 / 5 + 32:.1f}".encode()
                    topic = f"{self.root}/raw/{code}/{self._rooms[i]}/temperature"
                    self._send(topic, payload, [(i, None, False)], rng, p_dup[i], p_bad[i], "C")

    def _flush_b(self) -> None:
        """Send gateways' partly filled uploads (end of a backfill window) under the last sample's faults."""
        rng = np.random.default_rng([self.city.seed, 0x9B2])
        p_dup, p_bad = self._last_p
        for code in list(self._pending_b):
            self._send_b(code, rng, p_dup, p_bad)

    def _send_b(self, code: str, rng, p_dup: np.ndarray, p_bad: np.ndarray) -> None:
        items = self._pending_b.pop(code, [])
        if not items:
            return
        payload = json.dumps({"dev": f"gw-{code}", "data": [{"room": self._rooms[i], "t": t_ms,
                                                             "v": int(round(v * 10))} for i, t_ms, v, _ in items]},
                             separators=(",", ":")).encode()
        idx = [i for i, _, _, _ in items]
        readings = [(i, t_ms, skewed) for i, t_ms, _, skewed in items]
        self._send(f"{self.root}/gw/{code}/up", payload, readings, rng, float(p_dup[idx].max()),
                   float(p_bad[idx].max()), "B")

    def _prune_seen(self, now: float) -> None:
        """Forget timestamps too old to collide with a future (skewed) one; keeps memory flat in live mode."""
        if not self._track or not self._seen:
            return
        horizon = max(abs(float(w.fault.offset)) for w in self.scenario.windows if w.fault.kind == "clock_skew")
        cut = int((now - horizon - (self.upload_every + 2) * self.interval) * 1000)
        for i in list(self._seen):
            self._seen[i] = {t for t in self._seen[i] if t >= cut}

    def _send(self, topic: str, payload: bytes, readings: list[tuple[int, int | None, bool]], rng,
              p_dup: float, p_bad: float, vendor: str) -> None:
        draw_bad, draw_dup = rng.random(), rng.random()
        if p_bad > 0 and draw_bad < p_bad:
            self._publish(topic, _malformed(vendor, int(rng.integers(0, 4)), payload))
            self.stats.malformed_messages += 1
            for i, _, _ in readings:
                self.stats.malformed[self.keys[i]] += 1
            return
        self._publish(topic, payload)
        dup = p_dup > 0 and draw_dup < p_dup
        if dup:
            self._publish(topic, payload)
            self.stats.duplicate_messages += 1
        for i, t_ms, skewed in readings:
            key = self.keys[i]
            self.stats.readings[key] += 1
            if skewed:
                self.stats.skewed[key] += 1
            if dup:
                self.stats.duplicated[key] += 1
            if t_ms is None:                      # C: every arrival is a new row
                self.stats.expected_rows[key] += 2 if dup else 1
                continue
            if self._track:                       # skewed timestamps may land on another sample's time
                seen = self._seen.setdefault(i, set())
                if t_ms in seen:
                    self.stats.collided[key] += 1
                    continue
                seen.add(t_ms)
            self.stats.expected_rows[key] += 1


def _malformed(vendor: str, variant: int, good: bytes) -> bytes:
    """Bytes a real gateway has been seen to send: truncated JSON, wrong types, NaN, non-UTF-8."""
    if vendor == "C":
        return (b"--", b"NaN", b"\xff\xfe\x00", b"21,4")[variant]
    if vendor == "B":
        return (good[: max(1, len(good) // 2)], b'{"dev":"gw","data":"offline"}',
                b'{"dev":"gw","data":[{"room":"living","t":"yesterday","v":"x"}]}', b"\xff\xfe\x00\x01")[variant]
    return (good[: max(1, len(good) // 2)], b'{"temp": "hot", "ts": "soon"}', b'{"temp": NaN, "ts": null}',
            b"\xff\xfe\x00\x01")[variant]


def _phase(seed: int, key: str, span: float) -> int:
    """A stable per-household offset in whole seconds within ``span`` (devices do not wake together)."""
    h = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int(int.from_bytes(h, "big") % max(1, int(span)))
