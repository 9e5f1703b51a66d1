"""Prometheus metrics at /metrics: request latency per route, plus ingest figures read from PostgreSQL.

The request histogram is labelled by the route *template* (``/households/{household_id}``), never the
raw path, so label cardinality stays bounded. Ingest figures are read at scrape time from the tables
ingest writes (ingest_counter, device_status, readings_dirty, compliance_dirty): the API process does
not run ingest, the database is the shared truth. Each app gets its own registry so several apps
(tests) never collide.
"""
from __future__ import annotations

import logging
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from psycopg_pool import ConnectionPool, PoolTimeout
import psycopg

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Window over which ingest rates are averaged (minutes). ingest_counter is per minute.
RATE_WINDOW_MIN = 5

INGEST_SQL = f"""
    SELECT protocol, coalesce(sum(readings), 0)::float8 / ({RATE_WINDOW_MIN} * 60),
           coalesce(sum(rejects), 0)::float8 / ({RATE_WINDOW_MIN} * 60)
      FROM ingest_counter
     WHERE minute >= date_trunc('minute', now()) - interval '{RATE_WINDOW_MIN} minutes'
     GROUP BY protocol"""


class IngestCollector:
    """Custom collector: one short query per scrape, errors reported as heatdesk_ingest_scrape_ok 0."""

    def __init__(self, pool_getter):
        self._pool_getter = pool_getter

    def collect(self):
        ok = GaugeMetricFamily("heatdesk_ingest_scrape_ok", "1 when the ingest figures were read from the database")
        pool: ConnectionPool | None = self._pool_getter()
        if pool is None:
            ok.add_metric([], 0)
            yield ok
            return
        try:
            with pool.connection(timeout=2.0) as conn:
                rates = conn.execute(INGEST_SQL).fetchall()
                rejects_total = conn.execute(
                    "SELECT reason, count(*) FROM rejects WHERE received_at > now() - interval '1 hour' GROUP BY reason"
                ).fetchall()
                devices = conn.execute(
                    "SELECT protocol, count(*) FILTER (WHERE connected), count(*) FILTER (WHERE NOT connected) "
                    "FROM device_status GROUP BY protocol").fetchall()
                backlog = conn.execute(
                    "SELECT (SELECT count(*) FROM readings_dirty), (SELECT count(*) FROM compliance_dirty)"
                ).fetchone()
                last = conn.execute(
                    "SELECT extract(epoch FROM now() - max(last_seen)) FROM device_status").fetchone()
        except (PoolTimeout, psycopg.Error) as exc:
            log.warning("ingest metrics unavailable: %s", exc)
            ok.add_metric([], 0)
            yield ok
            return
        ok.add_metric([], 1)
        yield ok
        g = GaugeMetricFamily("heatdesk_ingest_readings_per_second",
                              f"Readings stored per second, mean over the last {RATE_WINDOW_MIN} min",
                              labels=["protocol"])
        r = GaugeMetricFamily("heatdesk_ingest_rejects_per_second",
                              f"Rejected messages per second, mean over the last {RATE_WINDOW_MIN} min",
                              labels=["protocol"])
        for protocol, rps, jps in rates:
            g.add_metric([protocol], rps)
            r.add_metric([protocol], jps)
        yield g
        yield r
        rj = GaugeMetricFamily("heatdesk_ingest_rejects_last_hour", "Rejects in the last hour by reason",
                               labels=["reason"])
        for reason, n in rejects_total:
            rj.add_metric([reason], n)
        yield rj
        d = GaugeMetricFamily("heatdesk_devices", "Devices by protocol and connection state",
                              labels=["protocol", "state"])
        for protocol, up, down in devices:
            d.add_metric([protocol, "connected"], up)
            d.add_metric([protocol, "disconnected"], down)
        yield d
        b = GaugeMetricFamily("heatdesk_backlog", "Work waiting: hours to roll up, household-days to recompute",
                              labels=["queue"])
        b.add_metric(["readings_dirty"], backlog[0])
        b.add_metric(["compliance_dirty"], backlog[1])
        yield b
        if last and last[0] is not None:
            s = GaugeMetricFamily("heatdesk_ingest_last_seen_age_seconds",
                                  "Seconds since any device was last seen")
            s.add_metric([], float(last[0]))
            yield s


class Metrics:
    def __init__(self, pool_getter):
        self.registry = CollectorRegistry()
        self.latency = Histogram("heatdesk_http_request_duration_seconds", "HTTP request latency (s)",
                                 ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.requests = Counter("heatdesk_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.registry.register(IngestCollector(pool_getter))

    def observe(self, method: str, route: str, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        self.latency.labels(method, route, str(status)).observe(elapsed)
        self.requests.labels(method, route, str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
