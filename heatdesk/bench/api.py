"""Benchmark: the API under 50 concurrent clients — screen pop, evidence curve, ticket creation.

What it does, in one run:

1. Builds the bench city (heatdesk/bench/api_city.py, set-based in PostgreSQL): ``--households``
   (default 2 000) with encrypted contacts, 2 room thermometers each, substation points, ``--rows``
   readings over 7 days (default 1 M), 7 days of verdicts, bills and payments, ``--n`` tickets over a
   year (default 20 000). The issue's scale is
   ``--households 100000 --rows 100000000 --n 1000000`` (about 10 min to build here); ``--keep-db``
   keeps the built database (named after the shape) and reuses it for 12 h, so a second run starts at once.
2. Starts the API as a subprocess (``python -m uvicorn api.app:create_app --factory``; the bench never
   imports api) with the bench's field key, a fresh token secret and the demo users, logs in as the
   agent (scoped to branch 1, so object-level authorisation is in every request's path).
3. For each endpoint — screen pop ``GET /screenpop?phone=…``, curve ``GET /households/{id}/curve``
   (7 days, JSON), ``POST /tickets`` — two phases with ``--concurrency`` clients (default 50):

   - **paced** (the headline keys): each client is an agent who sends a request, reads the answer and
     waits a think time (exponential, mean ``--think-ms``, default 1 000 ms) before the next — the
     issue's "50 concurrent clients" as 50 people at their consoles;
   - **saturation**: the same clients with no think time (a closed loop that keeps the server 100 %
     busy); its latency is mostly queueing (≈ clients ÷ throughput) and says how much headroom there is.

   Before them, untimed: a few requests of each endpoint one by one, then 2 × ``--concurrency`` of each
   with all clients at once (the pool grows to its working size, the shared series fill).

   Latency is measured per request on the client (send → full body), so it includes queueing in
   the server; p50/p95/p99 in ms, throughput and non-2xx counts (reported, not hidden).

    heatdesk bench api --json
    heatdesk bench api --households 100000 --rows 100000000 --n 1000000 --keep-db --json

Keys: screen_pop_p95_ms, ticket_create_p95_ms, curve_p95_ms (paced), concurrency, think_ms, the p50/p99
and rps of each phase, the same under ``saturation``, the city's size, uvicorn_workers, cpu_count and the
1-minute load average at the end (the figures mean little on a busy machine).
``HEATDESK_BENCH_API_WORKERS=2`` runs uvicorn with 2 workers.
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
from core.pii import new_key_hex
from heatdesk.bench import api_city
from heatdesk.bench.common import prewarm, release, server_url

log = logging.getLogger(__name__)
KEEP_FOR = dt.timedelta(hours=12)


def _free_port() -> int:
    from core.pgserver import free_port
    return free_port()


def _pct(lat: list[float]) -> dict:
    if not lat:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    a = np.array(lat) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p95_ms": round(float(np.percentile(a, 95)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2)}


async def _request(client: httpx.AsyncClient, req: tuple, lat: list[float], errors: dict[str, int]) -> None:
    method, url, body = req
    t0 = time.perf_counter()
    try:
        resp = await client.request(method, url, json=body)
        await resp.aread()
        ok = 200 <= resp.status_code < 300
        key = str(resp.status_code)
    except httpx.HTTPError as exc:
        ok, key = False, type(exc).__name__
    if ok:
        lat.append(time.perf_counter() - t0)
    else:
        errors[key] = errors.get(key, 0) + 1


async def _phase(client: httpx.AsyncClient, concurrency: int, requests: list, think_s: float, seed: int) -> dict:
    """``concurrency`` clients share ``requests`` (method, url, json); each waits an exponential think time
    of mean ``think_s`` before each request (0 → closed loop, no wait). Per-request client latency."""
    queue: asyncio.Queue = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    lat: list[float] = []
    errors: dict[str, int] = {}

    async def agent(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        while True:
            if think_s > 0:
                await asyncio.sleep(rng.expovariate(1 / think_s))
            try:
                req = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await _request(client, req, lat, errors)

    t0 = time.perf_counter()
    await asyncio.gather(*(agent(k) for k in range(concurrency)))
    wall = time.perf_counter() - t0
    return {**_pct(lat), "requests": len(requests), "ok": len(lat), "errors": errors,
            "rps": round(len(lat) / wall, 1) if wall > 0 else None}


def _requests(households: list[int], n: int, rng: random.Random) -> dict[str, list]:
    return {
        "screen_pop": [("GET", f"/screenpop?phone={api_city.phone_of(rng.choice(households))}", None)
                       for _ in range(n)],
        "curve": [("GET", f"/households/{rng.choice(households)}/curve", None) for _ in range(n)],
        "ticket_create": [("POST", "/tickets", {"type": "inquiry", "channel": "phone",
                                                 "household_id": rng.choice(households), "description": "bench 咨询"})
                          for _ in range(n)],
    }


async def _drive(base: str, token: str, households: list[int], concurrency: int, per_client: int,
                 think_s: float) -> dict:
    rng = random.Random(3)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, limits=limits,
                                 timeout=60) as client:
        # warm-up, outside the timings: a few of each one by one (first-request imports), then
        # 2 × concurrency of each with every client at once, so the connection pool has grown to its
        # working size and the shared substation series are filled — an agent console that has been in
        # use, not one started a second ago (measured: 21 of the first 25 curves after a start took
        # 117–277 ms while the pool grew from 2 connections, none after the first half second)
        warm = _requests(households, 5, rng)
        for reqs in warm.values():
            for req in reqs:
                (await client.request(*req[:2], json=req[2])).raise_for_status()
        for i, reqs in enumerate(_requests(households, 2 * concurrency, rng).values()):
            await _phase(client, concurrency, reqs, 0.0, seed=100 + i)
        n = concurrency * per_client
        paced, saturated = _requests(households, n, rng), _requests(households, max(200, 4 * concurrency), rng)
        out: dict = {"paced": {}, "saturation": {}}
        for i, name in enumerate(paced):
            out["paced"][name] = await _phase(client, concurrency, paced[name], think_s, seed=i)
            out["saturation"][name] = await _phase(client, concurrency, saturated[name], 0.0, seed=i)
        return out


def _branch_of(household_id: int) -> int:
    unit = 1 + (household_id - 1) // api_city.PER_UNIT
    building = 1 + (unit - 1) // api_city.UNITS_PER_BUILDING
    substation = 1 + (building - 1) // api_city.BUILDINGS_PER_SUBSTATION
    return 1 + (substation - 1) % api_city.BRANCHES


def _city(admin_url: str, shape: api_city.CityShape, keep: bool) -> tuple[str, str, str, float, bool]:
    """(database name, url, field key, build seconds, reused?) — a kept city when asked and fresh."""
    from core.db import apply_schema, drop_database, ensure_database

    if keep:
        name = f"hd_bench_api_keep_h{shape.households}_r{shape.readings}_t{shape.tickets}"
        kept = api_city.find_kept(admin_url, name, KEEP_FOR)
        if kept is not None:
            apply_schema(kept["url"])          # a newer schema.sql is applied like on a real upgrade
            return name, kept["url"], kept["key_hex"], 0.0, True
        drop_database(admin_url, name)
    else:
        name = f"hd_bench_api_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = ensure_database(admin_url, name)
    key_hex = new_key_hex()
    t0 = time.perf_counter()
    now = dt.datetime.now(dt.timezone.utc)
    try:
        apply_schema(url)
        api_city.build(url, key_hex, shape, now)
        if keep:
            api_city.mark_complete(url, key_hex, now)
    except BaseException:
        drop_database(admin_url, name)      # a half-built city is of no use, kept or not
        raise
    return name, url, key_hex, time.perf_counter() - t0, False


def _start_api(url: str, key_hex: str, workers: int) -> tuple[subprocess.Popen, str, Path]:
    env = dict(os.environ, HEATDESK_DATABASE_URL=url, HEATDESK_FIELD_KEY_HEX=key_hex,
               HEATDESK_TOKEN_SECRET=os.urandom(32).hex(), HEATDESK_DEMO="1", HEATDESK_API_POOL_MAX="16")
    env.pop("HEATDESK_ADMIN_PASSWORD", None)
    subprocess.run([sys.executable, "-m", "api.bootstrap"], cwd=PROJECT_ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    port = _free_port()
    log_path = Path(tempfile.gettempdir()) / f"hd-bench-api-{port}.log"
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
                                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                                 "--no-access-log", "--workers", str(workers)],
                                cwd=PROJECT_ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return proc, base, log_path
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the API did not become ready; see {log_path}")
        time.sleep(0.2)


def _bytes(size: str) -> int:
    """PostgreSQL's '6GB' / '128MB' / '512kB' as bytes."""
    units = {"kB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}
    for unit, factor in units.items():
        if size.endswith(unit):
            return int(float(size[:-len(unit)]) * factor)
    return int(size) * 8192               # a bare number is in 8 kB pages


def _server_facts(url: str) -> dict:
    """What the figures depend on: the server's version, shared_buffers and the city's size."""
    import psycopg

    with psycopg.connect(url) as conn:
        version, buffers, size = conn.execute(
            "SELECT current_setting('server_version'), current_setting('shared_buffers'), "
            "pg_size_pretty(pg_database_size(current_database()))").fetchone()
    return {"version": version, "shared_buffers": buffers, "database_size": size}


def run(args) -> dict:
    from core.db import drop_database

    shape = api_city.CityShape(households=getattr(args, "households", None) or 2_000,
                               readings=getattr(args, "rows", None) or 1_000_000,
                               tickets=getattr(args, "n", None) or 20_000)
    concurrency = getattr(args, "concurrency", None) or 50
    think_s = (getattr(args, "think_ms", None) if getattr(args, "think_ms", None) is not None else 1000) / 1000
    keep = bool(getattr(args, "keep_db", False))
    # 30 requests per client (1 500 per paced phase, ~35 s): with 500, p95 was the 25 slowest requests
    # of a 12 s phase and moved with whatever happened in those seconds (curve p95 70–208 ms, one code)
    per_client = 30
    # uvicorn worker processes (the CLI has no flag for it): HEATDESK_BENCH_API_WORKERS, default 1
    workers = int(os.environ.get("HEATDESK_BENCH_API_WORKERS", "1"))
    logging.getLogger("httpx").setLevel(logging.WARNING)     # one line per request would drown the figures

    admin_url, private = server_url(args, prefix='hd-bench-api-pg-')
    name = None
    proc = None
    try:
        name, url, key_hex, build_s, reused = _city(admin_url, shape, keep)
        facts = _server_facts(url)
        if private is not None and getattr(args, "pg_shared_buffers", None):
            # a tuned server is measured warm, as after hours of traffic (or autoprewarm after a restart):
            # its buffers get the indexes, then the tables, except the readings heap (index-only scans)
            facts |= prewarm(url, int(_bytes(facts["shared_buffers"]) * 0.9), skip=("readings",))
        proc, base, _log = _start_api(url, key_hex, workers)
        r = httpx.post(base + "/auth/login", json={"username": "agent", "password": "heatdesk-agent"}, timeout=10)
        r.raise_for_status()
        mine = [h for h in range(1, shape.households + 1) if _branch_of(h) == 1]
        phases = asyncio.run(_drive(base, r.json()["access_token"], mine, concurrency, per_client, think_s))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if name is not None and not keep:
            drop_database(admin_url, name)
        release(private)
    paced, sat = phases["paced"], phases["saturation"]
    result = {
        "concurrency": concurrency, "think_ms": round(think_s * 1000), "households": shape.households,
        "readings": shape.readings, "preloaded_tickets": shape.tickets, "city_build_s": round(build_s, 1),
        "city_reused": reused, "requests_per_paced_phase": concurrency * per_client, "uvicorn_workers": workers,
        "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "postgres": facts,
    }
    for key, phase in (("screen_pop", "screen_pop"), ("curve", "curve"), ("ticket_create", "ticket_create")):
        for pct in ("p50_ms", "p95_ms", "p99_ms"):
            result[f"{key}_{pct}"] = paced[phase][pct]
        result[f"{key}_rps"] = paced[phase]["rps"]
    result["saturation"] = {f"{k}_{m}": v[m] for k, v in sat.items() for m in ("p50_ms", "p95_ms", "p99_ms", "rps")}
    result["phases"] = phases
    if not getattr(args, "json", False):
        for mode, group in phases.items():
            for k, v in group.items():
                print(f"{mode:10s} {k:14s} p50 {v['p50_ms']} ms  p95 {v['p95_ms']} ms  p99 {v['p99_ms']} ms  "
                      f"{v['rps']} req/s  ok {v['ok']}/{v['requests']}  errors {v['errors'] or '-'}")
    return result
