"""Ingest benchmark: `heatdesk bench ingest [--json] [--n N] [--duration S]`.

One run, four measurements, the same publisher (a SEPARATE process publishing QoS 1 at full
speed) and the same broker for the MQTT ones:

  (a) protocol ceiling — our MqttAdapter (paho, QoS 1, manual ack) into a sink that acks at once,
      no database;
  (b) database ceiling — the ingest Writer (COPY binary into staging + INSERT … ON CONFLICT DO
      NOTHING) over the same rows, no MQTT;
  (c) end to end — MQTT QoS 1 → IngestService → durable COMMIT → ack; readings committed per second
      up to the commit of the last full batch (``end_to_end_per_s``; see _TimedService), and including
      the drain's final partial batch, which waits ``batch_max_age_s`` (``end_to_end_with_tail_per_s``);
  (d) naive — a paho consumer that INSERTs and COMMITs each message as it arrives (auto-ack).

The whole bench process paces its garbage collector as the ingest process does (ingest/gc_pacing.py;
``gc`` in the JSON). Ratios c/min(a, b) and c/d; lost and duplicated (database vs. what the broker acknowledged to the
publisher); RSS of this process (the ingest side: adapter + service; the publisher is another process)
sampled every second during (c) — reported every 10 s in ``rss_mb_samples`` and summarised as
``rss_mb_first_minute`` / ``rss_mb_last_minute`` (max RSS in the first / last 60 s; with --duration
the last 60 s of publishing, ``live_s``) and ``rss_growth_mb`` (their difference), with
``rss_mb_drain_max`` for the drain after a live run; every 10 s a breakdown of that memory in
``memory_samples`` (heatdesk/bench/memory.py: pymalloc arenas and blocks, glibc's heap, bytes in use and
mmapped, and ``peak_in_flight``, the most deliveries held un-acked by the service since the last sample;
``in_flight_max`` and ``in_flight_bound`` = ReceiveMaximum); the MQTT connection's health during (c) from the adapter's
counters (``mqtt_disconnects``, ``mqtt_keepalive_timeouts``, PINGREQs sent and the longest PINGRESP
wait); how long each of (c)'s writes took (``end_to_end_writes``: COPY + merge + COMMIT + acks, p50 / p95 /
max) and what the shared PostgreSQL server did meanwhile (``end_to_end_server``: checkpoints, WAL,
autovacuum workers and other databases' active queries; heatdesk/bench/pg_activity.py); the CPU share
of one core used by the ingest thread, the MQTT network thread and the bench's broker while (c)'s rate
is measured (``end_to_end_cpu_share``: the two threads share one GIL, so their sum says how much of it
the pipeline kept busy); modbus polls/s from heatdesk.bench.modbus when that module exists.

How the MQTT figures are taken: the consumer's persistent session is created, taken offline, the
publisher process publishes N readings at full speed into the broker's queue for it, then the
consumer reconnects and drains the backlog (the catch-up after an outage). The consumer therefore
runs at its own ceiling instead of sharing two cores with the publisher; the publisher's rate is
reported beside it. ``--duration S`` instead runs (c) live for S seconds (publisher and consumer at
the same time) — the memory-flatness run. It opens with the worst case (a backlog of LIVE_BACKLOG and a
slow first commit, so ReceiveMaximum deliveries are held at once; see _phase_end_to_end), so a rise after
the first minute is growth and not a new high-water mark of the bounded in-flight queue.

The broker: HEATDESK_MQTT_URL when set (it must queue N messages per offline client — Mosquitto's
default max_queued_messages is 1000 — and, with --duration, the whole live backlog), else a private
Mosquitto started with core.broker's settings but no per-client queue limit (_BenchBroker).

Every drain waits for progress, not for a fixed total: it fails only if nothing arrives for STALL_S,
and the publisher's count is only read once its process has finished (_Pub.join).
"""
from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import os
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import psycopg

from adapters.base import Delivery, DeviceEvent, Reading, SensorMeta
from adapters.config import parse_devices
from adapters.mqtt import RECEIVE_MAXIMUM, MqttAdapter, parse_broker_url
from core.broker import PrivateBroker
from core.config import Settings, get_settings
from core.db import apply_schema, drop_database, ensure_database, make_pool
from core.quality import Quality
from heatdesk.bench import memory
from heatdesk.bench.pg_activity import ActivityWatch, percentiles_ms
from ingest.batcher import Batch
from ingest.gc_pacing import pace_gc
from ingest.service import IngestService
from ingest.writer import Writer

log = logging.getLogger(__name__)

HOUSEHOLDS = 1000
DEVICES = """
version: 1
ranges:
  room_temp: {plausible: [5, 35], possible: [-40, 70], stuck_after_s: 21600}
profiles:
  a_json:
    format: json
    fields: [{path: temp, metric: room_temp, unit: C}]
    timestamp: {path: ts, format: iso8601}
devices:
  - id: bench
    protocol: mqtt
    subscriptions:
      - topic: "ROOT/room/{household}/{room}/state"
        payload: a_json
"""
BASE = datetime(2026, 11, 1, tzinfo=timezone(timedelta(hours=8)))


def _payload(i: int) -> tuple[str, bytes]:
    """Reading i: household i % HOUSEHOLDS, one second apart per household — every (sensor, time) distinct."""
    ts = BASE + timedelta(seconds=i // HOUSEHOLDS)
    return f"room/B{i % HOUSEHOLDS:04d}/living/state", orjson.dumps({"temp": 18.0 + (i % 50) / 10, "ts": ts.isoformat()})


# -------------------------------------------------------------------------------------------------
# The publisher process

#: publishes in flight at most (below the 65535 MQTT packet-id space)
MAX_OUTSTANDING = 40_000
#: --duration: readings queued for (c)'s consumer before it connects (see _phase_end_to_end)
LIVE_BACKLOG = 2 * RECEIVE_MAXIMUM
LIVE_STALL_S = 3.0


def _publisher(url: str, root: str, first: int, n: int, duration: float | None, sent, rate, ready, go) -> None:
    import paho.mqtt.client as mqtt

    host, port, _ = parse_broker_url(url)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    # paho's client-side inflight limit scans every queued message on each PUBACK (quadratic at
    # 100 k queued): unlimited is ~3x faster here. Bounded by n anyway.
    c.max_inflight_messages_set(0)
    c.max_queued_messages_set(0)
    c.connect(host, port)
    c.loop_start()
    ready.set()
    go.wait()
    t0 = time.perf_counter()
    t_end = time.monotonic() + duration if duration else None
    infos = []
    i = first
    while (t_end is None and i < first + n) or (t_end is not None and time.monotonic() < t_end):
        topic, body = _payload(i)
        infos.append(c.publish(f"{root}/{topic}", body, qos=1))
        i += 1
        if len(infos) > MAX_OUTSTANDING and not duration:
            # MQTT message ids wrap at 65535: a wrapped id must never meet one still un-acked
            infos[-MAX_OUTSTANDING].wait_for_publish(60)
        if duration and len(infos) >= 2000:          # live mode: keep the client's memory bounded
            infos[-1].wait_for_publish(60)
            sent.value += sum(1 for x in infos if x.is_published())
            infos = [x for x in infos if not x.is_published()]
    for x in infos:
        x.wait_for_publish(60)
    sent.value += sum(1 for x in infos if x.is_published())
    rate.value = (i - first) / (time.perf_counter() - t0)
    c.disconnect()
    c.loop_stop()


class _Pub:
    """A publisher in its own process; start() releases it, join() returns what the broker acknowledged."""

    def __init__(self, url: str, root: str, first: int, n: int, duration: float | None = None):
        self.duration = duration
        ctx = mp.get_context("spawn")
        self.sent = ctx.Value("q", 0)
        self.rate = ctx.Value("d", 0.0)
        self.ready, self.go = ctx.Event(), ctx.Event()
        self.proc = ctx.Process(target=_publisher, args=(url, root, first, n, duration, self.sent, self.rate,
                                                         self.ready, self.go), daemon=True)
        self.proc.start()
        if not self.ready.wait(30):
            raise RuntimeError("publisher process did not start")

    def start(self) -> None:
        self.go.set()

    def join(self) -> int:
        """Wait for the publisher to finish and return its count — never a partial one.

        This used to be ``proc.join(300)`` whatever the duration: a ``--duration 600`` run went on
        after 300 s with the count so far, (c) "finished" against it, and the still-running live
        publisher kept flooding the broker through (d). Worse, its shared counter's memory was freed
        with (c)'s _Pub and handed to (d)'s, so the old publisher kept adding to (d)'s target
        (measured: "stalled at 3000 of 19000") — the naive phase's timeout after long runs."""
        limit = (self.duration or 0) + 300
        self.proc.join(limit)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
            raise RuntimeError(f"bench: publisher still running after {limit:.0f} s; killed")
        if self.proc.exitcode != 0:
            raise RuntimeError(f"bench: publisher exited with code {self.proc.exitcode}")
        return int(self.sent.value)


# -------------------------------------------------------------------------------------------------
# Consumers

class _CountingSink:
    """(a): ack at once, count readings; no database."""

    def __init__(self):
        self.n = 0
        self.first: float | None = None
        self.last = 0.0

    def submit(self, delivery: Delivery) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        if delivery.ack:
            delivery.ack()
        self.n += len(delivery.readings)
        self.last = time.perf_counter()

    def device_event(self, event: DeviceEvent) -> None:
        pass


class _TimedService(IngestService):
    """(c): the real service; records when the first message arrived and when each batch committed.

    ``full_commit``: (time, readings inserted so far) at the commit of the last batch that was full
    (``batch_max_rows``). The drain's last batch is never full: it is committed ``batch_max_age_s``
    (0.5 s) after its first row, which is latency, not throughput — on a 100 000-reading drain of ~6 s
    that wait alone was ~8 % of the measured time. The steady rate is taken up to the last full batch;
    the rate including the tail is reported beside it."""
    first: float | None = None
    full_commit: tuple[float, int] | None = None
    submitted = 0
    peak_in_flight = 0            # most deliveries submitted and not yet acked; reset by the memory sampler
    write_s: list[float]          # per batch of readings: seconds in the writer (COPY, merge, COMMIT, acks)
    stall_first_write_s = 0.0     # --duration: the first commit waits this long, as a slow commit would
    cpu_probe = None              # () -> {who: CPU seconds}; read at the first message and each full commit
    cpu_first: tuple[float, dict] | None = None
    cpu_full: tuple[float, dict] | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.write_s = []

    def submit(self, delivery: Delivery) -> None:
        if self.first is None:
            self.first = time.perf_counter()
            if self.cpu_probe is not None:
                self.cpu_first = (self.first, self.cpu_probe())
        self.submitted += 1
        self.peak_in_flight = max(self.peak_in_flight, self.submitted - self.totals["acked"])
        super().submit(delivery)

    def take_peak_in_flight(self) -> int:
        peak, self.peak_in_flight = self.peak_in_flight, 0
        return peak

    def _write(self, batch: Batch, *, ack: bool = True) -> None:
        if self.stall_first_write_s and batch.rows:     # the first batch of readings (not a device event)
            time.sleep(self.stall_first_write_s)
            self.stall_first_write_s = 0.0
        t = time.perf_counter()
        super()._write(batch, ack=ack)
        if batch.rows:
            self.write_s.append(time.perf_counter() - t)
        if batch.rows >= self.settings.batch_max_rows:
            self.full_commit = (time.perf_counter(), self.totals["inserted"])
            if self.cpu_probe is not None:
                self.cpu_full = (self.full_commit[0], self.cpu_probe())


class _BenchBroker(PrivateBroker):
    """core.broker's private Mosquitto with no per-client queue limit (``max_queued_messages 0``).

    In --duration mode the publisher outruns the consumer on purpose, so the broker's queue for (c)
    grows by (publisher - consumer) per second for the whole run. With core.broker's 1 000 000 a
    10-minute run hit the limit after 520 s ("Outgoing messages are being dropped for client …-c-bench"
    in mosquitto.log) and 218 323 readings were dropped by the broker — a broker setting
    (docs/ingest.md, max_queued_messages), not the ingest under test."""

    def start(self) -> None:
        import core.broker as cb
        conf = cb.MOSQUITTO_CONF
        unlimited = conf.replace("max_queued_messages 1000000", "max_queued_messages 0")
        if unlimited == conf:
            raise RuntimeError("core.broker.MOSQUITTO_CONF changed: update _BenchBroker")
        cb.MOSQUITTO_CONF = unlimited
        try:
            super().start()
        finally:
            cb.MOSQUITTO_CONF = conf


def _forget(url: str, client_id: str) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    host, port, _ = parse_broker_url(url)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = 0
    c.connect(host, port, clean_start=True, properties=p)
    c.disconnect()


def _backlog(settings, root: str, first: int, n: int, make_consumer) -> tuple[object, int, float]:
    """Create the consumer's persistent session, take it offline, publish n at full speed from the
    publisher process into the broker's queue for it, then start the consumer again: it drains at
    its own ceiling, without sharing the CPU with the publisher."""
    c = make_consumer()
    c.start()
    _wait(c.is_subscribed, 15)
    c.stop()
    pub = _Pub(settings.mqtt_url, root, first, n)
    pub.start()
    sent = pub.join()
    c = make_consumer()
    return c, sent, float(pub.rate.value)


# -------------------------------------------------------------------------------------------------
# Phases

def _phase_protocol(settings, root, n) -> dict:
    cfg = _config(root)
    sink = _CountingSink()
    ad, sent, pub_rate = _backlog(settings, root, 0, n,
                                  lambda: MqttAdapter(cfg.by_protocol("mqtt"), sink, config=cfg, settings=settings))
    ad.start()
    _wait(lambda: sink.n >= sent, 120)
    ad.stop()
    return {"n": sink.n, "sent": sent, "per_s": sink.n / (sink.last - sink.first), "publisher_per_s": pub_rate}


def _phase_db(url, settings, n) -> dict:
    pool = make_pool(url, min_size=1, max_size=2, name="bench-db")
    meta = {h: SensorMeta(metric="room_temp", unit="C", protocol="mqtt", device_id="bench-db", point="temp",
                          household_code=f"D{h:04d}", room_code="living") for h in range(HOUSEHOLDS)}
    rows = [Reading(f"room:D{i % HOUSEHOLDS:04d}:living:room_temp", BASE + timedelta(seconds=i // HOUSEHOLDS),
                    18.0 + (i % 50) / 10, Quality.GOOD, meta[i % HOUSEHOLDS]) for i in range(n)]
    size = settings.batch_max_rows
    w = Writer(pool)
    w.write(Batch([Delivery(readings=rows[:HOUSEHOLDS])]))      # sensors registered once, as in steady state
    t0 = time.perf_counter()
    inserted = sum(w.write(Batch([Delivery(readings=rows[i:i + size])])).inserted for i in range(0, n, size))
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    again = sum(w.write(Batch([Delivery(readings=rows[i:i + size])])).inserted for i in range(0, n, size))
    second = time.perf_counter() - t1
    pool.close()
    return {"n": n, "per_s": n / first, "replay_per_s": n / second, "inserted_first": inserted + HOUSEHOLDS,
            "inserted_replay": again}


def _phase_end_to_end(settings, url, root, n, duration, broker_pid: int | None = None) -> dict:
    cfg = _config(root)
    pool = make_pool(url, min_size=1, max_size=4, name="bench-e2e")
    svc = _TimedService(pool, settings=settings, ranges=dict(cfg.ranges), spool_dir=settings.data_dir / "bench-spool")
    svc.start()
    watch = ActivityWatch(url).start()              # what the shared server did meanwhile (pg_activity.py)
    first = 10_000_000

    def consumer():
        return MqttAdapter(cfg.by_protocol("mqtt"), svc, config=cfg, settings=settings)

    def cpu_probe(ad):
        """CPU used while the rate is measured (first message → last full commit), as a share of one
        core: our two threads (one GIL between them) and the broker when the bench started it. Set
        before the consumer starts, so the first message finds it; the network thread is looked up
        when called (paho starts it in ad.start())."""
        def probe() -> dict:
            net = ad.connections[0].client._thread
            return {"ingest_thread": memory.cpu_s(thread=svc._thread.native_id),
                    "mqtt_network_thread": memory.cpu_s(thread=net.native_id) if net else None,
                    "broker": memory.cpu_s(pid=broker_pid)}
        return probe

    rss: list[tuple[float, float]] = []           # (seconds since the start of (c)'s traffic, MB)
    stop = threading.Event()
    t0 = time.monotonic()
    live_s: float | None = None                     # when the live publisher finished (sampling clock)

    breakdown: list[dict] = []                    # every 10 s: where the memory sits (heatdesk.bench.memory)

    def sample() -> None:
        k = 0
        while not stop.is_set():
            t = round(time.monotonic() - t0, 1)
            rss.append((t, round(memory.rss_mb(), 1)))
            if k % 10 == 0:
                breakdown.append({"t_s": t, **memory.sample(), "peak_in_flight": svc.take_peak_in_flight()})
            k += 1
            stop.wait(1.0)

    if duration:                                   # live: publisher and consumer run at the same time
        # It starts with the worst case the ingest side can meet: a backlog (LIVE_BACKLOG) queued for
        # the offline consumer, as after any outage, and a slow first commit (LIVE_STALL_S), as in a
        # checkpoint. Meanwhile the broker sends until RECEIVE_MAXIMUM deliveries are un-acked and they
        # all reach the service — the most it can ever hold — so the first minute already has the
        # largest footprint the run can have. Without it, RSS stepped up whenever a slow commit let the
        # in-flight deliveries reach a new high (10-min run: 8–12 k in flight, then 18 k at 475 s and
        # pymalloc 33 → 39 arenas, +6.7 MB RSS): high-water marks of a bounded queue, read as growth.
        svc.stall_first_write_s = LIVE_STALL_S
        ad, backlog_sent, _ = _backlog(settings, root, first, LIVE_BACKLOG, consumer)
        pub = _Pub(settings.mqtt_url, root, first + LIVE_BACKLOG, 0, duration)
        t0 = time.monotonic()
        threading.Thread(target=sample, daemon=True).start()
        svc.cpu_probe = cpu_probe(ad)
        ad.start()
        pub.start()
        sent = backlog_sent + pub.join()
        live_s = round(time.monotonic() - t0, 1)
        pub_rate = float(pub.rate.value)
    else:
        ad, sent, pub_rate = _backlog(settings, root, first, n, consumer)
        t0 = time.monotonic()
        threading.Thread(target=sample, daemon=True).start()
        svc.cpu_probe = cpu_probe(ad)
        ad.start()
    _wait_progress(lambda: svc.totals["inserted"], sent, "(c) end to end")
    t_end = time.perf_counter()
    busy = {}
    if svc.cpu_first and svc.cpu_full:
        (ta, ca), (tb, cb) = svc.cpu_first, svc.cpu_full
        busy = {k: round((cb[k] - ca[k]) / (tb - ta), 2) for k in ca if ca[k] is not None and cb.get(k) is not None}
    svc.drain(10)
    stop.set()
    watch.stop()
    mqtt_health = ad.counters()
    ad.stop()
    svc.stop()
    with psycopg.connect(url) as c:
        total, distinct = c.execute("""SELECT count(*), count(DISTINCT (r.sensor_id, r.time)) FROM readings r
                                       JOIN sensor s ON s.id = r.sensor_id WHERE s.device_id = 'bench'""").fetchone()
    pool.close()
    with_tail = sent / (t_end - svc.first)
    steady = (svc.full_commit[1] / (svc.full_commit[0] - svc.first)
              if svc.full_commit and svc.full_commit[1] >= sent // 2 else with_tail)
    return {"n": total, "sent": sent, "per_s": steady, "per_s_with_tail": with_tail,
            "lost": max(0, sent - distinct),
            "duplicated": total - min(total, sent), "rss_mb": rss, "memory": breakdown, "batches": svc.totals["batches"],
            "acked": svc.totals["acked"], "publisher_per_s": pub_rate, "live": bool(duration),
            "mqtt": mqtt_health, "live_s": live_s, "writes": percentiles_ms(svc.write_s),
            "server": watch.result.as_dict(), "threads": busy}


class _Naive:
    """(d): the textbook consumer — paho auto-ack, one INSERT + COMMIT per message."""

    def __init__(self, settings, url, root, client_id):
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.url, self.root = url, root
        self.n, self.first, self.last = 0, None, 0.0
        self.error: str | None = None
        self.subscribed = threading.Event()
        self.conn = psycopg.connect(url)
        self.ids = {}
        for h in range(HOUSEHOLDS):
            self.ids[f"B{h:04d}"] = self.conn.execute(
                "INSERT INTO sensor (key, metric, protocol, device_id) VALUES (%s, 'room_temp', 'mqtt', 'naive') "
                "ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key RETURNING id",
                (f"naive:B{h:04d}:living:room_temp",)).fetchone()[0]
        self.conn.commit()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.c.on_message = self._on_message
        self.c.on_connect = lambda cl, *a: cl.subscribe(f"{root}/room/+/+/state", qos=1)
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.props = Properties(PacketTypes.CONNECT)
        self.props.SessionExpiryInterval = 600
        self.host, self.port, _ = parse_broker_url(settings.mqtt_url)

    def _on_message(self, client, userdata, msg):
        if self.first is None:
            self.first = time.perf_counter()
        try:
            doc = orjson.loads(msg.payload)
            self.conn.execute("INSERT INTO readings (time, sensor_id, value) VALUES (%s, %s, %s) "
                              "ON CONFLICT DO NOTHING",
                              (datetime.fromisoformat(doc["ts"]), self.ids[msg.topic.split("/")[-3]], doc["temp"]))
            self.conn.commit()
        except Exception as e:  # raised inside paho it would kill the network thread: a silent stall
            self.error = f"{type(e).__name__}: {e}"
            return
        self.n += 1
        self.last = time.perf_counter()

    def is_subscribed(self) -> bool:
        return self.subscribed.is_set()

    def start(self) -> None:
        self.c.connect(self.host, self.port, clean_start=False, properties=self.props)
        self.c.loop_start()

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _phase_naive(settings, url, root, n) -> dict:
    cid = f"{settings.mqtt_client_id}-naive"
    consumers: list[_Naive] = []

    def make():
        consumers.append(_Naive(settings, url, root, cid))
        return consumers[-1]

    c, sent, pub_rate = _backlog(settings, root, 20_000_000, n, make)
    c.start()
    _wait_progress(lambda: c.n, sent, "(d) naive", error=lambda: c.error)
    c.stop()
    for x in consumers:
        x.conn.close()
    return {"n": c.n, "sent": sent, "per_s": c.n / (c.last - c.first), "publisher_per_s": pub_rate}


def _config(root: str):
    return parse_devices(DEVICES.replace("ROOT", root))


def _wait(cond, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: condition not met in {timeout} s")
        time.sleep(0.01)


#: a drain fails only when it stops making progress for this long (not after a fixed total): after a
#: 10-minute overload run the broker's backlog alone takes minutes to drain
STALL_S = 90.0


def _wait_progress(count, target: int, what: str, stall_s: float = STALL_S, error=None) -> None:
    """Wait until count() >= target; fail (with the figures) only if count() stops growing for stall_s
    or error() reports a failure in the consumer."""
    last, last_change = count(), time.monotonic()
    while last < target:
        time.sleep(0.05)
        err = error() if error else None
        if err:
            raise RuntimeError(f"bench: {what}: consumer failed after {last} of {target}: {err}")
        now_n = count()
        if now_n != last:
            last, last_change = now_n, time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            raise TimeoutError(f"bench: {what}: stalled at {last} of {target} (no progress for {stall_s:.0f} s; "
                               "did the broker drop messages? see its log)")


def _modbus() -> tuple[float | None, str]:
    try:
        mod = importlib.import_module("heatdesk.bench.modbus")
    except ModuleNotFoundError:
        return None, "heatdesk.bench.modbus is not available in this build"
    fn = getattr(mod, "measure_polls_per_s", None)
    if fn is None:
        return None, "heatdesk.bench.modbus has no measure_polls_per_s()"
    try:
        return float(fn()), "heatdesk.bench.modbus.measure_polls_per_s()"
    except Exception as e:   # another module's benchmark failing must not lose our figures
        log.exception("modbus bench failed")
        return None, f"heatdesk.bench.modbus.measure_polls_per_s() failed: {e}"


# -------------------------------------------------------------------------------------------------

def run(args) -> dict:
    n = int(getattr(args, "n", None) or 100_000)
    duration = getattr(args, "duration", None)
    n_naive = min(n, 3000)
    quiet = bool(getattr(args, "json", False))
    base = get_settings()
    server = getattr(args, "database_url", None) or base.database_url or "postgresql://postgres@127.0.0.1:5432/postgres"
    broker = None
    if base.mqtt_url:
        mqtt_url = base.mqtt_url
    else:
        broker = _BenchBroker(Path(tempfile.mkdtemp(prefix="hdbench-mqtt-")))
        broker.start()
        mqtt_url = broker.url
    dbname = f"hd_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = ensure_database(server, dbname)
    root = f"hdbench/{uuid.uuid4().hex[:10]}"
    client = f"hdbench-{uuid.uuid4().hex[:6]}"
    settings = Settings(database_url=url, mqtt_url=mqtt_url, mqtt_client_id=client, data_dir=base.data_dir,
                        mqtt_session_expiry_s=600)

    def say(msg: str) -> None:
        if not quiet:
            print(msg, flush=True)

    # the process runs like `python -m ingest` does (ingest/gc_pacing.py), in every phase alike
    pacer = pace_gc()
    try:
        apply_schema(url)
        say(f"ingest bench: n={n}, broker {mqtt_url}, database {dbname}, {os.cpu_count()} CPU(s)")
        a = _phase_protocol(settings.model_copy(update={"mqtt_client_id": client + "-a"}), root + "/a", n)
        say(f"(a) protocol ceiling  {a['per_s']:>10.0f} readings/s  (paho QoS 1, manual ack, no database; "
            f"publisher {a['publisher_per_s']:.0f}/s)")
        b = _phase_db(url, settings, n)
        say(f"(b) database ceiling  {b['per_s']:>10.0f} readings/s  (COPY binary + ON CONFLICT; replay of the "
            f"same rows {b['replay_per_s']:.0f}/s, {b['inserted_replay']} inserted)")
        with psycopg.connect(url) as c:
            c.execute("TRUNCATE readings, readings_dirty, ingest_counter")
        c_ = _phase_end_to_end(settings.model_copy(update={"mqtt_client_id": client + "-c"}), url, root + "/c", n,
                               duration, broker.proc.pid if broker is not None and broker.proc else None)
        say(f"(c) end to end        {c_['per_s']:>10.0f} readings/s  (MQTT QoS 1 → commit → ack; "
            f"{c_['batches']} commits, lost {c_['lost']}, duplicated {c_['duplicated']}; "
            f"{c_['per_s_with_tail']:.0f}/s with the last partial batch)")
        w, sv = c_["writes"], c_["server"]
        say(f"    writes p50 {w.get('p50_ms')} ms, p95 {w.get('p95_ms')} ms, max {w.get('max_ms')} ms; server meanwhile: "
            f"{sv['checkpoints']} checkpoint(s), {sv['wal_mb']} MB WAL, autovacuum ≤ {sv['autovacuum_workers_max']}, "
            f"other databases' active queries ≤ {sv['other_active_max']}")
        _forget(mqtt_url, f"{client}-c-bench")     # (c)'s session is done: free the broker's state before (d)
        d = _phase_naive(settings, url, root + "/d", n_naive)
        say(f"(d) naive per-message {d['per_s']:>10.0f} readings/s  (INSERT + COMMIT per message, n={n_naive})")
        polls, polls_note = _modbus()
        say(f"modbus polls/s: {polls if polls is not None else 'n/a'} ({polls_note})")
    finally:
        for cid in (f"{client}-a-bench", f"{client}-c-bench", f"{client}-naive"):
            try:
                _forget(mqtt_url, cid)
            except OSError:
                pass
        drop_database(server, dbname)
        if broker is not None:
            broker.stop()
        pacer.stop()
    ceiling = min(a["per_s"], b["per_s"])
    samples = c_["rss_mb"]
    rss = [mb for _, mb in samples]
    half = len(rss) // 2
    t_last = samples[-1][0] if samples else 0.0
    # live: the memory question is about the run itself, so "last minute" is the last minute of
    # publishing; the drain afterwards is reported apart (there the consumer reads faster than it
    # commits and the retained lane — bounded by max_unacked — fills, measured up to ~170 MB)
    t_end = c_["live_s"] if c_["live_s"] is not None else t_last
    first_min = [mb for t, mb in samples if t < 60]
    last_min = [mb for t, mb in samples if t_end - 60 <= t <= t_end]
    drain = [mb for t, mb in samples if t > t_end] if c_["live_s"] is not None else []
    result = {
        "n": n, "n_naive": n_naive, "cpus": os.cpu_count(), "broker": mqtt_url,
        "protocol_ceiling_per_s": round(a["per_s"]),
        "db_ceiling_per_s": round(b["per_s"]),
        "db_replay_same_rows_per_s": round(b["replay_per_s"]),
        "end_to_end_per_s": round(c_["per_s"]),
        "end_to_end_with_tail_per_s": round(c_["per_s_with_tail"]),
        "naive_per_s": round(d["per_s"]),
        "ratio_end_to_end_vs_ceiling": round(c_["per_s"] / ceiling, 3),
        "ratio_end_to_end_vs_naive": round(c_["per_s"] / d["per_s"], 1),
        "publisher_per_s": round(c_["publisher_per_s"]), "end_to_end_live": c_["live"],
        "sent": c_["sent"], "stored": c_["n"], "lost": c_["lost"], "duplicated": c_["duplicated"],
        "rss_sample_interval_s": 10,
        "rss_mb_samples": rss[::10],
        "rss_sampled_s": t_last,
        "rss_mb_first_half_max": max(rss[:half]) if half else None,
        "rss_mb_second_half_max": max(rss[half:]) if rss else None,
        "rss_mb_first_minute": max(first_min) if first_min else None,
        "rss_mb_last_minute": max(last_min) if last_min else None,
        "rss_growth_mb": round(max(last_min) - max(first_min), 1) if first_min and last_min else None,
        "live_s": c_["live_s"],
        "rss_mb_drain_max": max(drain) if drain else None,
        "memory_samples": c_["memory"],
        "in_flight_max": max((m["peak_in_flight"] for m in c_["memory"]), default=None),
        "in_flight_bound": RECEIVE_MAXIMUM,
        "mqtt_disconnects": c_["mqtt"]["disconnects"],
        "mqtt_keepalive_timeouts": c_["mqtt"]["keepalive_timeouts"],
        "mqtt_pings_sent": c_["mqtt"]["pings_sent"],
        "mqtt_pingresp_max_wait_s": c_["mqtt"]["pingresp_max_wait_s"],
        "load_avg_1min_end": round(os.getloadavg()[0], 2),
        "end_to_end_writes": c_["writes"],
        "end_to_end_server": c_["server"],
        "end_to_end_cpu_share": c_["threads"],
        "modbus_polls_per_s": polls, "modbus_note": polls_note,
        "gc": pacer.stats(),
    }
    if c_["live"]:
        result["note"] = ("--duration: (c) ran live, sharing the CPU with the publisher, while (a) drained a "
                          "backlog; c/min(a,b) is not a like-for-like ratio in this mode (use it for memory)")
        say(result["note"])
    say(f"ratios: c/min(a,b) = {result['ratio_end_to_end_vs_ceiling']:.2f} (target ≥ 0.70), "
        f"c/d = {result['ratio_end_to_end_vs_naive']:.1f} (target ≥ 10); RSS {rss[0] if rss else '?'} → "
        f"{rss[-1] if rss else '?'} MB (first minute {result['rss_mb_first_minute']}, last minute "
        f"{result['rss_mb_last_minute']}); MQTT during (c): {result['mqtt_disconnects']} disconnects, "
        f"{result['mqtt_keepalive_timeouts']} keep-alive timeouts")
    return result
