"""Benchmark: compliance over a season, from arrays and from the database, and the curve query.

Three measurements, all in one run:

1. **arrays** — a season (``--days``, default 120) of 5-minute samples with ±30 s jitter, 2 % invalid
   samples, for ``--households`` (default 10 000) households × 1 counted room, evaluated by the
   numpy core (``analytics.compliance.evaluate``, Tianjin policy: time-weighted mean, gap cutoff,
   midnight split, coverage, minutes/degree-hours below, tiers). Arrays are generated before the
   clock starts (each worker process generates its own households); the timed part is the core on
   2 worker processes (``--workers``), chunks of 4 households, wall clock from "all ready" to "last
   done" → ``samples_per_s``. glibc is told to keep large temporaries on the heap (mallopt; see
   ``keep_heap_memory``).
   The **baseline** is a plain pandas implementation of the same rules (sort, groupby-shift for the
   next sample, midnight split by concat, groupby-agg), timed on a subset in the same run on one
   core (``baseline_samples_per_s``); its results are checked against the core's
   (``baseline_matches``). The core is also timed on that same subset on one core
   (``core_subset_samples_per_s``) so the two are compared like for like.
2. **database** — ``--rows`` synthetic readings (default 2 000 000) for ``--db-households``
   households × 2 rooms are COPYed into a scratch database; ``analytics.job.run_compliance`` computes
   every household for every day → ``db_households_per_s``.
3. **curve** — p50/p95 of ``analytics.evidence.household_curve`` (7-day JSON curve) over random
   households → ``curve_p95_ms``.

    heatdesk bench compliance --json                      # defaults (arrays at full size, small DB)
    heatdesk bench compliance --rows 100000000 --json     # the real database target
"""
from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import time
import uuid

import numpy as np

from analytics import compliance as C
from analytics.policy import resolve_policy
from heatdesk.bench.common import release, server_url

TZ = dt.timezone(dt.timedelta(hours=8))
SEASON_START = dt.date(2025, 11, 15)
STEP_S = 300
OFFSET_S = 8 * 3600



# ------------------------------------------------------------------------------------- arrays


def make_arrays(households: int, days: int, seed: int = 7, chunk: int | None = None) -> dict:
    """One room per household, sorted by (room, time). t: epoch s float64; value ℃ float64 (as the
    store delivers it); quality int8; room: position of the room within its chunk of ``chunk``
    households (what a caller evaluating chunk by chunk passes), or global when chunk is None."""
    rng = np.random.default_rng(seed)
    per = days * 86400 // STEP_S
    n = households * per
    t0 = dt.datetime(SEASON_START.year, SEASON_START.month, SEASON_START.day, tzinfo=TZ).timestamp()
    base_t = t0 + np.arange(per, dtype=np.float64) * STEP_S
    t = np.empty(n, dtype=np.float64)
    value = np.empty(n, dtype=np.float64)
    quality = np.zeros(n, dtype=np.int8)
    diurnal = 0.6 * np.sin(np.arange(per) * (2 * np.pi * STEP_S / 86400))
    block = 500
    for h0 in range(0, households, block):
        h1 = min(households, h0 + block)
        k = h1 - h0
        sl = slice(h0 * per, h1 * per)
        jitter = rng.uniform(-30, 30, (k, per))
        t[sl] = (base_t[None, :] + jitter).ravel()
        level = rng.normal(19.0, 1.2, (k, 1))
        value[sl] = (level + diurnal[None, :] + rng.normal(0, 0.15, (k, per))).ravel()
        bad = rng.random(k * per) < 0.02
        quality[sl][bad] = 2
    room = np.repeat(np.arange(households, dtype=np.int32) % (chunk or households), per)
    return {"t": t, "value": value, "quality": quality, "room": room, "per": per, "households": households,
            "days": days}


def _evaluate_chunk(d: dict, h0: int, h1: int, pol) -> None:
    per = d["per"]
    sl = slice(h0 * per, h1 * per)
    day0 = int(C.local_day(d["t"][h0 * per]))
    grid, verd = C.evaluate(d["room"][sl], d["t"][sl], d["value"][sl], d["quality"][sl], 0.0,
                            n_rooms=h1 - h0, day0=day0, n_days=d["days"], policy=pol, assume_sorted=True)
    if verd.status.shape != (h1 - h0, d["days"]):
        raise RuntimeError("core returned a grid of the wrong shape")


def _worker(k: int, households: int, days: int, chunk: int, barrier, queue) -> None:
    """One core: generate its own households (so its memory is its own, already touched), warm up,
    wait for the others, then evaluate every chunk; report (samples, start, end) on the queue."""
    keep_heap_memory()
    d = make_arrays(households, days, seed=100 + k, chunk=chunk)
    pol = resolve_policy("tianjin", SEASON_START)
    for _ in range(2):
        _evaluate_chunk(d, 0, min(chunk, households), pol)      # warm-up: heap, caches, imports
    barrier.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    for h0 in range(0, households, chunk):
        _evaluate_chunk(d, h0, min(households, h0 + chunk), pol)
    t1, c1 = time.perf_counter(), time.process_time()
    queue.put((k, d["t"].size, t0, t1, c1 - c0))


def bench_arrays(households: int, days: int, workers: int, chunk: int) -> dict:
    """Wall clock from the moment every worker is ready until the last one finishes (CLOCK_MONOTONIC
    is system-wide, so start/end times of different processes compare)."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(workers)
    queue = ctx.Queue()
    share = [households // workers + (1 if k < households % workers else 0) for k in range(workers)]
    load_before = os.getloadavg()[0]
    g0 = time.perf_counter()
    procs = [ctx.Process(target=_worker, args=(k, share[k], days, chunk, barrier, queue)) for k in range(workers)]
    for p in procs:
        p.start()
    res = [queue.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"bench worker exited with {p.exitcode}")
    n = sum(r[1] for r in res)
    start, end = min(r[2] for r in res), max(r[3] for r in res)
    wall = end - start
    return {"samples": n, "households": households, "days": days, "workers": workers, "chunk_households": chunk,
            "wall_s": round(wall, 3), "samples_per_s": n / wall, "setup_s": round(start - g0, 1),
            "per_worker_samples_per_s": [round(r[1] / (r[3] - r[2])) for r in sorted(res)],
            # CPU seconds the workers actually got: on a shared machine wall time includes waiting for
            # a core; samples per CPU-second × workers is the capacity with the cores to ourselves
            "cpu_s": round(sum(r[4] for r in res), 3),
            "samples_per_cpu_s": n / sum(r[4] for r in res),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg()[0]}


def keep_heap_memory() -> bool:
    """Ask glibc to serve large temporaries from the heap instead of fresh mmap pages.

    By default every numpy temporary above the (dynamic) mmap threshold is mmap'ed and unmapped
    again, so each chunk pays page faults on every intermediate array — measured here at 3–5× the
    arithmetic. M_MMAP_THRESHOLD = 1 GiB and M_TRIM_THRESHOLD = 2 GiB keep them on the heap.
    Returns False when libc has no mallopt (not glibc); the bench then runs without it.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, 1 << 30)) and bool(libc.mallopt(-1, 1 << 31))
    except (OSError, AttributeError):
        return False


def pandas_baseline(room: np.ndarray, t: np.ndarray, value: np.ndarray, quality: np.ndarray, *, threshold: float,
                    cutoff: float, end_hold: float, utc_offset_s: int = OFFSET_S):
    """The same rules as analytics.compliance, written the plain pandas way (the comparison baseline)."""
    import pandas as pd

    df = pd.DataFrame({"room": room, "t": t, "v": value.astype(np.float64), "q": quality})
    df = df[(df.q == 0) & np.isfinite(df.v)].sort_values(["room", "t"], kind="stable")
    nxt = df.groupby("room", sort=False)["t"].shift(-1)
    hold_end = np.minimum(nxt.fillna(df.t + end_hold), df.t + cutoff)
    df["day"] = ((df.t + utc_offset_s) // 86400).astype("int64")
    day_end = (df.day + 1) * 86400 - utc_offset_s
    df["w"] = np.minimum(hold_end, day_end) - df.t
    df["real"] = True
    spill = df[hold_end > day_end].copy()
    spill["w"] = (hold_end - day_end)[hold_end > day_end]
    spill["day"] = spill.day + 1
    spill["real"] = False
    both = pd.concat([df, spill], ignore_index=True)
    both["vw"] = both.v * both.w
    both["below"] = both.w * (both.v < threshold)
    both["dh"] = both.w * np.clip(threshold - both.v, 0, None) / 3600.0
    agg = both.groupby(["room", "day"]).agg(W=("w", "sum"), S=("vw", "sum"), below=("below", "sum"),
                                            dh=("dh", "sum"))
    real = both[both.real].groupby(["room", "day"]).agg(mn=("v", "min"), mx=("v", "max"), n=("v", "size"))
    out = agg.join(real)
    out["mean"] = out.S / out.W
    out["coverage"] = out.W / 86400.0
    out["minutes_below"] = out.below / 60.0
    r = np.round(out["mean"] * 10 + 1e-9) / 10
    out["status"] = np.where(out.coverage < 0.75, "unknown", np.where(r < threshold, "non_compliant", "compliant"))
    return out


def bench_baseline(households: int, days: int, chunk: int = 4) -> dict:
    d = make_arrays(households, days, seed=11, chunk=chunk)
    pol = resolve_policy("tianjin", SEASON_START)
    n = d["t"].size
    start = time.perf_counter()
    global_room = np.repeat(np.arange(households, dtype=np.int32), d["per"])
    base = pandas_baseline(global_room, d["t"], d["value"], d["quality"], threshold=pol.compare_c,
                           cutoff=pol.gap_cutoff_s, end_hold=pol.expected_interval_s)
    base_s = time.perf_counter() - start
    day0 = int(C.local_day(d["t"][0]))
    per = d["per"]
    status = np.empty((households, days), dtype=np.int8)
    grids = []
    start = time.perf_counter()
    for h0 in range(0, households, chunk):            # the same chunking as the parallel run, 1 core
        h1 = min(households, h0 + chunk)
        sl = slice(h0 * per, h1 * per)
        g, vd = C.evaluate(d["room"][sl], d["t"][sl], d["value"][sl], d["quality"][sl], 0.0, n_rooms=h1 - h0,
                           day0=day0, n_days=days, policy=pol, assume_sorted=True)
        grids.append(g)
        status[h0:h1] = vd.status
    core_s = time.perf_counter() - start
    grid = C.RoomDayGrid(day0=day0, **{f: np.concatenate([getattr(g, f) for g in grids])
                                        for f in ("covered_s", "coverage", "mean_c", "min_c", "max_c", "stat_c",
                                                  "minutes_below", "degree_hours_below", "n_samples")})
    base = base[(base.index.get_level_values("day") >= day0) & (base.index.get_level_values("day") < day0 + days)]
    rr = base.index.get_level_values("room").to_numpy()
    dd = base.index.get_level_values("day").to_numpy() - day0
    matches = (np.allclose(grid.mean_c[rr, dd], base["mean"].to_numpy(), atol=1e-9)
               and np.allclose(grid.coverage[rr, dd], base["coverage"].to_numpy(), atol=1e-9)
               and np.allclose(grid.minutes_below[rr, dd], base["minutes_below"].to_numpy(), atol=1e-6)
               and np.array_equal(np.asarray(C.STATUS_NAMES)[status[rr, dd]], base["status"].to_numpy()))
    return {"samples": n, "households": households, "baseline_s": round(base_s, 3),
            "baseline_samples_per_s": n / base_s, "core_subset_s": round(core_s, 3),
            "core_subset_samples_per_s": n / core_s, "baseline_matches": bool(matches)}


# ------------------------------------------------------------------------------------- database




def _seed_site(conn, households: int) -> None:
    q = conn.execute
    q("INSERT INTO weather_station (code, name, design_outdoor_temp_c) VALUES ('TJ', '天津', -7.0)")
    q("INSERT INTO company (code, name, region_code) VALUES ('HD', '滨海热力', 'tianjin')")
    q("INSERT INTO branch (company_id, code, name) VALUES (1, 'B1', 'b')")
    q("INSERT INTO substation (branch_id, code, name, weather_station_code) VALUES (1, 'S01', 's', 'TJ')")
    q("INSERT INTO community (substation_id, code, name) VALUES (1, 'C1', 'c')")
    units = max(1, households // 24)
    q("INSERT INTO building (community_id, code, name) SELECT 1, 'B' || g, 'b' FROM generate_series(1, %s) g", (units,))
    q("INSERT INTO unit (building_id, code, name) SELECT g, 'U' || g, 'u' FROM generate_series(1, %s) g", (units,))
    q("""INSERT INTO household (unit_id, code, area_m2, heating_status)
         SELECT 1 + mod(g - 1, %s), 'H' || g, 80, CASE WHEN mod(g, 40) = 0 THEN 'stopped' ELSE 'active' END
           FROM generate_series(1, %s) g""", (units, households))
    q("""INSERT INTO room (household_id, code, room_type, area_m2, counts_for_compliance)
         SELECT id, 'living', 'living_room', 25, true FROM household
         UNION ALL SELECT id, 'bed1', 'bedroom', 15, true FROM household""")
    q("""INSERT INTO sensor (key, metric, unit, protocol, device_id, household_code, room_code, household_id, room_id)
         SELECT 'room:' || h.code || ':' || r.code || ':room_temp', 'room_temp', '℃', 'mqtt', 'th-' || h.code,
                h.code, r.code, h.id, r.id FROM room r JOIN household h ON h.id = r.household_id ORDER BY r.id""")
    for m in ("supply_temp_2", "return_temp_2", "outdoor_temp"):
        q("""INSERT INTO sensor (key, metric, protocol, device_id, point, substation_code, substation_id)
             VALUES (%s, %s, 'modbus', 'S01', %s, 'S01', 1)""", ("S01/" + m, m, m))


_COPY_DTYPE = np.dtype([("nf", ">i2"), ("l1", ">i4"), ("time", ">i8"), ("l2", ">i4"), ("sensor", ">i4"),
                        ("l3", ">i4"), ("value", ">f8"), ("l4", ">i4"), ("quality", ">i2")])
_PG_EPOCH_S = 946_684_800


def _copy_readings(conn, sensor_ids: np.ndarray, per_sensor: int, t0: float, rng) -> int:
    """COPY per_sensor 5-minute samples for each sensor (binary format, built with numpy)."""
    total = 0
    block = max(1, 2_000_000 // per_sensor)
    with conn.cursor() as cur:
        with cur.copy("COPY readings (time, sensor_id, value, quality) FROM STDIN (FORMAT binary)") as copy:
            copy.write(b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big"))
            for i in range(0, sensor_ids.size, block):
                ids = sensor_ids[i:i + block]
                k = ids.size * per_sensor
                a = np.empty(k, dtype=_COPY_DTYPE)
                a["nf"], a["l1"], a["l2"], a["l3"], a["l4"] = 4, 8, 4, 8, 2
                ts = t0 + np.arange(per_sensor) * STEP_S + rng.uniform(-30, 30, (ids.size, per_sensor))
                a["time"] = ((ts - _PG_EPOCH_S) * 1e6).astype(np.int64).ravel()
                a["sensor"] = np.repeat(ids, per_sensor)
                level = rng.normal(19.0, 1.2, (ids.size, 1))
                a["value"] = (level + rng.normal(0, 0.2, (ids.size, per_sensor))).ravel().round(2)
                a["quality"] = (rng.random(k) < 0.02) * 2
                copy.write(a.tobytes())
                total += k
            copy.write((-1).to_bytes(2, "big", signed=True))
    return total


def bench_db(args, rows: int, households: int, db_workers: int = 2) -> dict:
    from analytics.evidence import household_curve
    from analytics.job import run_compliance
    from core.db import apply_schema, connect, drop_database, ensure_database

    admin_url, private = server_url(args, prefix='hd-bench-pg-')
    name = f"hd_bench_compliance_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = ensure_database(admin_url, name)
    try:
        apply_schema(url)
        rng = np.random.default_rng(3)
        per_sensor = max(288, rows // (households * 2))
        days = int(np.ceil(per_sensor * STEP_S / 86400))
        t0 = dt.datetime(2026, 1, 1, tzinfo=TZ).timestamp()
        with connect(url) as conn:
            _seed_site(conn, households)
            sensor_ids = np.array([r[0] for r in conn.execute(
                "SELECT id FROM sensor WHERE metric = 'room_temp' ORDER BY id").fetchall()], dtype=np.int32)
            conn.commit()
            load0 = time.perf_counter()
            stored = _copy_readings(conn, sensor_ids, per_sensor, t0, rng)
            conn.commit()
            load_s = time.perf_counter() - load0
            conn.execute("ANALYZE readings")
            conn.execute("ANALYZE sensor")
            conn.commit()
            day_from = dt.date(2026, 1, 1)
            day_to = day_from + dt.timedelta(days=days - 1)
            start = time.perf_counter()
            summary = run_compliance(conn, day_from, day_to, workers=db_workers, db_url=url)
            job_s = time.perf_counter() - start
            hids = [r[0] for r in conn.execute("SELECT id FROM household ORDER BY id").fetchall()]
            lat = []
            span = min(7, days)
            for hid in rng.choice(hids, size=min(60, len(hids)), replace=False):
                a = dt.datetime(2026, 1, 1, tzinfo=TZ) + dt.timedelta(days=int(rng.integers(0, days - span + 1)))
                s = time.perf_counter()
                household_curve(conn, int(hid), a, a + dt.timedelta(days=span))
                lat.append((time.perf_counter() - s) * 1000)
                conn.rollback()
        return {"rows_stored": stored, "db_households": households, "db_days": days, "db_workers": db_workers,
                "load_s": round(load_s, 1),
                "load_rows_per_s": stored / load_s, "db_job_s": round(job_s, 2),
                "db_households_per_s": households / job_s, "db_samples_per_s": stored / job_s,
                "db_room_days": summary.room_days, "db_household_days": summary.as_dict()["household_days"],
                "curve_days": span, "curve_p50_ms": float(np.percentile(lat, 50)),
                "curve_p95_ms": float(np.percentile(lat, 95))}
    finally:
        drop_database(admin_url, name)
        release(private)


# ------------------------------------------------------------------------------------- entry


def run(args) -> dict:
    """Run the three measurements; print a summary; return the figures (see the module docstring)."""
    households = getattr(args, "households", None) or 10_000
    days = getattr(args, "days", None) or 120
    workers = getattr(args, "workers", None) or min(2, os.cpu_count() or 1)
    rows = getattr(args, "rows", None) or 2_000_000
    db_households = getattr(args, "db_households", None) or max(10, min(10_000, rows // (2 * 288 * 7)))
    baseline_households = getattr(args, "baseline_households", None) or 200
    out: dict = {"cores": os.cpu_count()}
    arr = bench_arrays(households, days, workers, chunk=getattr(args, "chunk", None) or 4)
    base = bench_baseline(baseline_households, days)
    db = bench_db(args, rows, db_households, db_workers=getattr(args, "db_workers", None) or 2)
    out.update({"samples_per_s": arr["samples_per_s"], "baseline_samples_per_s": base["baseline_samples_per_s"],
                "speedup_vs_baseline_same_cores": base["core_subset_samples_per_s"] / base["baseline_samples_per_s"],
                "db_households_per_s": db["db_households_per_s"], "curve_p95_ms": db["curve_p95_ms"],
                "rows_stored": db["rows_stored"], "arrays": arr, "baseline": base, "db": db})
    if not getattr(args, "json", False):
        print(f"arrays: {arr['samples']:,} samples ({arr['households']:,} households × {days} days × 288), "
              f"{workers} workers: {arr['wall_s']} s → {arr['samples_per_s'] / 1e6:.1f} M samples/s")
        print(f"baseline (pandas, 1 core, {base['households']} households): {base['baseline_samples_per_s'] / 1e6:.2f} "
              f"M samples/s; core on the same subset, 1 core: {base['core_subset_samples_per_s'] / 1e6:.1f} M samples/s; "
              f"results match: {base['baseline_matches']}")
        print(f"database: {db['rows_stored']:,} rows, {db['db_households']} households × {db['db_days']} days: "
              f"job {db['db_job_s']} s → {db['db_households_per_s']:.0f} households/s; "
              f"curve ({db['curve_days']} d) p50 {db['curve_p50_ms']:.1f} ms, p95 {db['curve_p95_ms']:.1f} ms")
    return out


if __name__ == "__main__":
    import argparse
    import json

    p = argparse.ArgumentParser()
    for a in ("--households", "--days", "--workers", "--rows", "--db-households", "--baseline-households", "--chunk",
              "--db-workers"):
        p.add_argument(a, type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--database-url", default=None)
    ns = p.parse_args()
    res = run(ns)
    if ns.json:
        print(json.dumps(res, default=str))
