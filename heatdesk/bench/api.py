"""Benchmark: the API under concurrent clients — screen pop, evidence curve, ticket creation.

What it does, in one run:

1. Creates a scratch database (on ``--database-url``'s server, else the local 5432 server, else a
   private PostgreSQL) with the schema, one company/branch/substation, ``--households`` households
   (default 200) × 2 rooms with encrypted contacts (core.pii), ``--rows`` room readings (default
   100 000, 5-minute samples spread over the last days) and ``--n`` pre-existing tickets (default 200,
   through ticketing.store so numbering and duplicate rules are the real ones).
2. Starts the API as a subprocess (``python -m uvicorn api.app:create_app --factory``; the bench never
   imports api) with a fresh field key and token secret, and demo users (``python -m api.bootstrap``
   with HEATDESK_DEMO=1), and logs in as the agent.
3. Drives ``--concurrency`` (default 50) httpx async clients; each endpoint gets its own timed phase
   of ``max(200, 4 × concurrency)`` requests:
   - screen pop ``GET /screenpop?phone=…`` (blind-index lookup + card),
   - curve ``GET /households/{id}/curve`` (7 days, JSON),
   - ticket creation ``POST /tickets``.
   Latency is measured per request on the client (send → full body), so it includes queueing in
   the server; p50/p95/p99 in ms, plus throughput and non-2xx counts (which are reported, not hidden).

    heatdesk bench api --json
    heatdesk bench api --households 2000 --rows 2000000 --concurrency 50 --json

Keys: screen_pop_p95_ms, ticket_create_p95_ms, curve_p95_ms, concurrency (and the p50/p99, rps,
errors of each phase, uvicorn_workers, cpu_count and the 1-minute load average at the end — the
figures mean little on a busy machine). ``HEATDESK_BENCH_API_WORKERS=2`` runs uvicorn with 2 workers.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

from core.config import PROJECT_ROOT
from core.pii import FieldCipher, new_key_hex, store_contact
from heatdesk.bench.common import server_url

TZ = dt.timezone(dt.timedelta(hours=8))




def _free_port() -> int:
    from core.pgserver import free_port
    return free_port()


def seed(url: str, key_hex: str, households: int, rows: int, tickets: int, now: dt.datetime) -> list[dict]:
    """The bench city; returns [{id, phone}] of the households."""
    from core.db import connect
    from ticketing import store

    cipher = FieldCipher(key_hex)
    rng = random.Random(11)
    out = []
    with connect(url) as conn:
        q = conn.execute
        q("INSERT INTO weather_station (code, name, design_outdoor_temp_c) VALUES ('TJ', '天津', -7.0)")
        q("INSERT INTO company (code, name, region_code) VALUES ('HD', '滨海热力', 'tianjin')")
        q("INSERT INTO branch (company_id, code, name) VALUES (1, 'B1', '滨海新区分公司')")
        q("INSERT INTO substation (branch_id, code, name, weather_station_code) VALUES (1, 'S01', '一号站', 'TJ')")
        q("INSERT INTO community (substation_id, code, name) VALUES (1, 'S01-C1', '海景花园')")
        per_unit = 24
        n_units = (households + per_unit - 1) // per_unit
        q("INSERT INTO building (community_id, code, name, floors) VALUES (1, 'S01-C1-B01', '1号楼', 12)")
        for u in range(1, n_units + 1):
            q("INSERT INTO unit (building_id, code, name) VALUES (1, %s, %s)", (f"S01-C1-B01-U{u}", f"{u}单元"))
        sensor_ids = []
        for i in range(households):
            unit, k = i // per_unit + 1, i % per_unit
            floor, door = k // 2 + 1, k % 2 + 1
            hid = q("""INSERT INTO household (unit_id, code, floor, area_m2) VALUES (%s, %s, %s, %s) RETURNING id""",
                    (unit, f"01010{unit:02d}{floor:02d}{door}", floor, round(rng.uniform(50, 140), 2))).fetchone()[0]
            phone = f"139{rng.randrange(10 ** 8):08d}"
            store_contact(conn, cipher, hid, "王" + "伟芳娜敏静丽强磊"[i % 8], phone,
                          f"天津市滨海新区海景花园1号楼{unit}单元{floor}{door:02d}")
            for code, rtype in (("living", "living_room"), ("bedroom1", "bedroom")):
                rid = q("""INSERT INTO room (household_id, code, room_type, area_m2, counts_for_compliance)
                           VALUES (%s, %s, %s, 15, true) RETURNING id""", (hid, code, rtype)).fetchone()[0]
                sid = q("""INSERT INTO sensor (key, metric, unit, protocol, device_id, household_id, room_id)
                           VALUES (%s, 'room_temp', '℃', 'mqtt', %s, %s, %s) RETURNING id""",
                        (f"room:{hid}:{code}:room_temp", f"therm-{hid}", hid, rid)).fetchone()[0]
                sensor_ids.append(sid)
            out.append({"id": hid, "phone": phone})
        per_sensor = max(1, rows // len(sensor_ids))
        step = 300
        t_end = now.timestamp()
        np_rng = np.random.default_rng(5)
        with conn.cursor().copy("COPY readings (time, sensor_id, value, quality) FROM STDIN") as cp:
            for sid in sensor_ids:
                vals = 18.5 + np_rng.normal(0, 0.8, per_sensor)
                for j in range(per_sensor):
                    cp.write_row((dt.datetime.fromtimestamp(t_end - (per_sensor - j) * step, TZ), sid,
                                  float(vals[j]), 0))
        conn.commit()
        for j in range(tickets):
            h = out[j % len(out)]
            store.create_ticket(conn, type=rng.choice(["repair", "complaint", "inquiry"]), channel="phone",
                                actor="bench", now=now - dt.timedelta(hours=rng.uniform(1, 72)),
                                household_id=h["id"], description="bench")
        conn.commit()
    return out


def _pct(lat: list[float]) -> dict:
    if not lat:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    a = np.array(lat) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p95_ms": round(float(np.percentile(a, 95)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2)}


async def _phase(client: httpx.AsyncClient, concurrency: int, requests: list) -> dict:
    """Run (method, url, json) requests with ``concurrency`` workers; per-request client latency."""
    queue: asyncio.Queue = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    lat: list[float] = []
    errors: dict[str, int] = {}

    async def worker():
        while True:
            try:
                method, url, body = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t0 = time.perf_counter()
            try:
                resp = await client.request(method, url, json=body)
                await resp.aread()
                ok = 200 <= resp.status_code < 300
                key = str(resp.status_code)
            except httpx.HTTPError as exc:
                ok, key = False, type(exc).__name__
            dt_s = time.perf_counter() - t0
            if ok:
                lat.append(dt_s)
            else:
                errors[key] = errors.get(key, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {**_pct(lat), "requests": len(requests), "ok": len(lat), "errors": errors,
            "rps": round(len(lat) / wall, 1) if wall > 0 else None}


async def _drive(base: str, token: str, households: list[dict], concurrency: int, per_phase: int) -> dict:
    rng = random.Random(3)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, limits=limits,
                                 timeout=60) as client:
        # warm-up: one of each, outside the timings
        h = households[0]
        for method, url, body in (("GET", f"/screenpop?phone={h['phone']}", None),
                                  ("GET", f"/households/{h['id']}/curve", None)):
            (await client.request(method, url, json=body)).raise_for_status()
        pop = [("GET", f"/screenpop?phone={rng.choice(households)['phone']}", None) for _ in range(per_phase)]
        curve = [("GET", f"/households/{rng.choice(households)['id']}/curve", None) for _ in range(per_phase)]
        create = [("POST", "/tickets", {"type": "inquiry", "channel": "phone", "household_id": rng.choice(households)["id"],
                                        "description": "bench 咨询"}) for _ in range(per_phase)]
        return {"screen_pop": await _phase(client, concurrency, pop),
                "curve": await _phase(client, concurrency, curve),
                "ticket_create": await _phase(client, concurrency, create)}


def run(args) -> dict:
    from core.db import apply_schema, drop_database, ensure_database

    households = getattr(args, "households", None) or 200
    rows = getattr(args, "rows", None) or 100_000
    tickets = getattr(args, "n", None) or 200
    concurrency = getattr(args, "concurrency", None) or 50
    per_phase = max(200, 4 * concurrency)
    # uvicorn worker processes (the CLI has no flag for it): HEATDESK_BENCH_API_WORKERS, default 1
    workers = int(os.environ.get("HEATDESK_BENCH_API_WORKERS", "1"))
    now = dt.datetime.now(dt.timezone.utc)
    logging.getLogger("httpx").setLevel(logging.WARNING)     # one line per request would drown the figures

    admin_url, private = server_url(args, prefix='hd-bench-api-pg-')
    name = f"hd_bench_api_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = ensure_database(admin_url, name)
    proc = None
    try:
        apply_schema(url)
        key_hex, secret = new_key_hex(), os.urandom(32).hex()
        t0 = time.perf_counter()
        hh = seed(url, key_hex, households, rows, tickets, now)
        seed_s = time.perf_counter() - t0
        env = dict(os.environ, HEATDESK_DATABASE_URL=url, HEATDESK_FIELD_KEY_HEX=key_hex,
                   HEATDESK_TOKEN_SECRET=secret, HEATDESK_DEMO="1", HEATDESK_API_POOL_MAX="16")
        env.pop("HEATDESK_ADMIN_PASSWORD", None)
        subprocess.run([sys.executable, "-m", "api.bootstrap"], cwd=PROJECT_ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        port = _free_port()
        log = open(Path(tempfile.gettempdir()) / f"hd-bench-api-{port}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
                                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                                 "--no-access-log", "--workers", str(workers)],
                                cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not become ready; see {log.name}")
            time.sleep(0.2)
        r = httpx.post(base + "/auth/login", json={"username": "agent", "password": "heatdesk-agent"}, timeout=10)
        r.raise_for_status()
        phases = asyncio.run(_drive(base, r.json()["access_token"], hh, concurrency, per_phase))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        drop_database(admin_url, name)
        if private is not None:
            private.destroy()
    result = {
        "concurrency": concurrency, "households": households, "readings": rows, "preloaded_tickets": tickets,
        "requests_per_phase": per_phase, "seed_s": round(seed_s, 1), "uvicorn_workers": workers,
        "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "screen_pop_p50_ms": phases["screen_pop"]["p50_ms"], "screen_pop_p95_ms": phases["screen_pop"]["p95_ms"],
        "screen_pop_p99_ms": phases["screen_pop"]["p99_ms"],
        "curve_p50_ms": phases["curve"]["p50_ms"], "curve_p95_ms": phases["curve"]["p95_ms"],
        "curve_p99_ms": phases["curve"]["p99_ms"],
        "ticket_create_p50_ms": phases["ticket_create"]["p50_ms"],
        "ticket_create_p95_ms": phases["ticket_create"]["p95_ms"],
        "ticket_create_p99_ms": phases["ticket_create"]["p99_ms"],
        "phases": phases,
    }
    if not getattr(args, "json", False):
        for k, v in phases.items():
            print(f"{k:14s} p50 {v['p50_ms']} ms  p95 {v['p95_ms']} ms  p99 {v['p99_ms']} ms  "
                  f"{v['rps']} req/s  ok {v['ok']}/{v['requests']}  errors {v['errors'] or '-'}")
    return result
