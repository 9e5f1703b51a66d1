"""The compliance job: compute compliance_day for days × households from the database (R19–R21).

Recomputation is idempotent (upsert keyed by household, room, day; policy and code version stored
with every row). Late data marks days dirty: ingest marks (sensor, hour) in readings_dirty, its
rollup turns room-thermometer hours into compliance_dirty (household, local day) marks, and other
modules may call ``store.mark_dirty``; ``process_dirty`` recomputes those days once they are complete. ``schedule_compliance`` wires both
into the service's APScheduler.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence
from zoneinfo import ZoneInfo

import numpy as np
import psycopg

from analytics import compliance as C
from analytics import store
from analytics.policy import Policy, PolicyError, PolicyTable, default_table
from core.config import get_settings

log = logging.getLogger(__name__)

EPOCH = dt.date(1970, 1, 1)
CHUNK_HOUSEHOLDS = 500


@dataclass
class RunSummary:
    """What a run computed. ``household_days`` counts household/day verdicts (R19 roll-up)."""

    households: int = 0
    room_days: int = 0
    room_day_counts: Counter = field(default_factory=Counter)
    household_days: Counter = field(default_factory=Counter)
    out_of_season_days: int = 0
    households_without_sensors: int = 0
    errors: list = field(default_factory=list)     # (region, message): regions skipped (no policy in force)

    def add(self, other: "RunSummary") -> None:
        self.households += other.households
        self.room_days += other.room_days
        self.room_day_counts.update(other.room_day_counts)
        self.household_days.update(other.household_days)
        self.out_of_season_days += other.out_of_season_days
        self.households_without_sensors += other.households_without_sensors
        self.errors += [e for e in other.errors if e not in self.errors]

    def as_dict(self) -> dict:
        return {"households": self.households, "room_days": self.room_days,
                "household_days": {s: self.household_days.get(s, 0) for s in C.STATUS_NAMES},
                "room_day_counts": {s: self.room_day_counts.get(s, 0) for s in C.STATUS_NAMES},
                "out_of_season_days": self.out_of_season_days,
                "households_without_sensors": self.households_without_sensors, "errors": self.errors}


def fixed_utc_offset_s(tz: str, day_from: dt.date, day_to: dt.date) -> int:
    """UTC offset of ``tz`` in s; the core needs it fixed over the range (Asia/Shanghai: no DST)."""
    zone = ZoneInfo(tz)
    offs = {int(dt.datetime(d.year, d.month, d.day, 12, tzinfo=zone).utcoffset().total_seconds())
            for d in (day_from, day_to, dt.date(day_from.year, 1, 15), dt.date(day_from.year, 7, 15))}
    if len(offs) != 1:
        raise ValueError(f"time zone {tz} changes its UTC offset; the compliance core needs a fixed offset")
    return offs.pop()


def _policy_runs(table: PolicyTable, region: str, days: list[dt.date]) -> list[tuple[Policy, int, int]]:
    """Split days into runs of one policy: [(policy, first index, last index + 1)]."""
    runs: list[tuple[Policy, int, int]] = []
    for i, d in enumerate(days):
        p = table.resolve(region, d)
        if runs and runs[-1][0] is p:
            runs[-1] = (p, runs[-1][1], i + 1)
        else:
            runs.append((p, i, i + 1))
    return runs


def compute_households(conn: psycopg.Connection, households: Sequence[store.HouseholdInfo], day_from: dt.date,
                       day_to: dt.date, *, table: PolicyTable | None = None, tz: str | None = None,
                       code_version: str | None = None) -> tuple[list[tuple], RunSummary]:
    """Rows (store.DAY_COLUMNS) and a summary for ``households`` over local days [day_from, day_to].

    Rooms evaluated: counted rooms (R4) with a room thermometer. Days outside the region's statutory
    season (R21, R41) are not evaluated. Exemptions: 报停 (household.heating_status = 'stopped',
    the current status), metered billing when the policy says so (R8), the station's official daily
    mean below its design outdoor temperature (R6), a ticket with a user-caused finding (R10).
    """
    table = table or default_table()
    tz = tz or get_settings().timezone
    cv = code_version or store.code_version()
    summary = RunSummary(households=len(households))
    if not households or day_to < day_from:
        return [], summary
    off = fixed_utc_offset_s(tz, day_from, day_to)
    days = [day_from + dt.timedelta(i) for i in range((day_to - day_from).days + 1)]
    hids = [h.id for h in households]
    rooms = sorted(store.load_rooms(conn, hids), key=lambda r: r.id)
    with_rooms = {r.household_id for r in rooms}
    summary.households_without_sensors = len(set(hids) - with_rooms)
    if not rooms:
        return [], summary
    zone = ZoneInfo(tz)
    # one gap cutoff either side: the last sample before day_from may hold into it, and the first
    # sample after day_to ends the last hold of day_to — so a day gets the same verdict whether it
    # is computed alone (nightly) or inside a season recompute
    max_cut = max(p.gap_cutoff_s for p in table.all())
    start = dt.datetime(day_from.year, day_from.month, day_from.day, tzinfo=zone) - dt.timedelta(seconds=max_cut)
    end = dt.datetime(day_to.year, day_to.month, day_to.day, tzinfo=zone) + dt.timedelta(days=1, seconds=max_cut)
    smp = store.load_room_samples(conn, [r.id for r in rooms], start, end)
    room_ids = np.array([r.id for r in rooms], dtype=np.int64)
    spos = np.searchsorted(room_ids, smp.room_id)
    hh_by_id = {h.id: h for h in households}
    weather = store.load_weather(conn, {h.station_code for h in households if h.station_code}, day_from, day_to)
    user_caused = store.load_user_caused(conn, hids, day_from, day_to, tz)
    rows: list[tuple] = []

    regions: dict[str, list[int]] = {}
    for i, r in enumerate(rooms):
        regions.setdefault(hh_by_id[r.household_id].region_code, []).append(i)
    for region, rpos in regions.items():
        rpos_a = np.array(rpos, dtype=np.int64)
        remap = np.full(len(rooms), -1, dtype=np.int64)
        remap[rpos_a] = np.arange(rpos_a.size)
        sel = remap[spos] >= 0
        r_room = remap[spos[sel]]
        r_t, r_v, r_q, r_o = smp.t[sel], smp.value[sel], smp.quality[sel], smp.offset[sel]
        # rooms → households of this region
        r_hh = [rooms[i].household_id for i in rpos]
        uniq_h = sorted(set(r_hh))
        hpos = {h: k for k, h in enumerate(uniq_h)}
        room_h = np.array([hpos[h] for h in r_hh], dtype=np.int64)
        counts_mask = np.ones(len(rpos), dtype=bool)
        try:
            runs = _policy_runs(table, region, days)
        except PolicyError as exc:      # no policy in force: record it, compute the other regions
            log.error("compliance skipped for region %r: %s", region, exc)
            summary.errors.append((region, str(exc)))
            continue
        for pol, a, b in runs:
            run_days = days[a:b]
            in_season = np.array([pol.season.season_of(d) is not None for d in run_days])
            summary.out_of_season_days += int((~in_season).sum()) * len(uniq_h)
            if not in_season.any():
                continue
            nd = len(run_days)
            day0 = (run_days[0] - EPOCH).days
            ex = _exemptions(uniq_h, hh_by_id, run_days, pol, weather, user_caused)
            grid, verd = C.evaluate(r_room, r_t, r_v, r_q, r_o, n_rooms=len(rpos), day0=day0, n_days=nd,
                                    policy=pol, exempt_code=ex[room_h], utc_offset_s=off, assume_sorted=True,
                                    block_rooms=16)
            hstat, _ = C.household_rollup(room_h, len(uniq_h), verd.status, verd.refund_ratio, counts_mask)
            for s in range(4):
                summary.household_days[C.STATUS_NAMES[s]] += int((hstat[:, in_season] == s).sum())
            reasons = verd.reasons()
            rows.extend(_rows(rooms, rpos, hh_by_id, run_days, in_season, grid, verd, reasons, pol, cv))
    for r in rows:
        summary.room_day_counts[r[11]] += 1
    summary.room_days = len(rows)
    return rows, summary


def _exemptions(uniq_h: list[int], hh_by_id: dict, run_days: list[dt.date], pol: Policy,
                weather: dict, user_caused: dict) -> np.ndarray:
    nh, nd = len(uniq_h), len(run_days)
    outdoor = np.full((nh, nd), np.nan)
    design = np.full(nh, np.nan)
    stopped = np.zeros((nh, nd), dtype=bool)
    metered = np.zeros(nh, dtype=bool)
    uc = np.zeros((nh, nd), dtype=bool)
    for k, hid in enumerate(uniq_h):
        h = hh_by_id[hid]
        stopped[k, :] = h.heating_status == "stopped"
        metered[k] = pol.metered_exempt and h.billing_method == "two_part_meter"
        if h.design_outdoor_c is not None:
            design[k] = h.design_outdoor_c
        if h.station_code:
            for j, d in enumerate(run_days):
                w = weather.get((h.station_code, d))
                if w is not None:
                    outdoor[k, j] = w[0]
        for a, b in user_caused.get(hid, ()):
            for j, d in enumerate(run_days):
                if a <= d <= b:
                    uc[k, j] = True
    return C.exemption_codes(outdoor_mean_c=outdoor, design_outdoor_c=design, stopped=stopped, metered=metered,
                             user_caused=uc, shape=(nh, nd))


def _f(x) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 4)


def _rows(rooms, rpos, hh_by_id, run_days, in_season, grid, verd, reasons, pol: Policy, cv: str):
    status_names = C.STATUS_NAMES
    for k, i in enumerate(rpos):
        room = rooms[i]
        h = hh_by_id[room.household_id]
        for j, d in enumerate(run_days):
            if not in_season[j]:
                continue
            yield (room.household_id, room.id, d, _f(grid.mean_c[k, j]), _f(grid.min_c[k, j]), _f(grid.max_c[k, j]),
                   _f(grid.stat_c[k, j]), pol.compare_c, _f(grid.minutes_below[k, j]),
                   _f(grid.degree_hours_below[k, j]), round(float(grid.coverage[k, j]), 6),
                   status_names[verd.status[k, j]], reasons[k, j], float(verd.refund_ratio[k, j]), pol.code,
                   pol.version, cv, int(grid.n_samples[k, j]), pol.statistic, h.placement_class)


def run_compliance(conn: psycopg.Connection, day_from: dt.date, day_to: dt.date,
                   household_ids: Sequence[int] | None = None, *, household_codes: Sequence[str] | None = None,
                   table: PolicyTable | None = None, tz: str | None = None,
                   progress: Callable[[int], None] | None = None, now: dt.datetime | None = None,
                   kind: str = "range", chunk: int = CHUNK_HOUSEHOLDS, workers: int = 1,
                   db_url: str | None = None) -> RunSummary:
    """Compute and upsert compliance_day for local days [day_from, day_to], in household chunks.

    Commits after each chunk (a long recompute makes durable progress; re-running is harmless).
    ``progress(n)`` is called with the number of households finished in each chunk.
    ``workers`` > 1 (needs ``db_url``): that many threads, each with its own connection, take chunks
    from a shared queue — the database serves one chunk while numpy computes another.
    """
    if day_to < day_from:
        raise ValueError(f"--to {day_to} is before --from {day_from}")
    if workers > 1 and not db_url:
        raise ValueError("workers > 1 needs db_url (each worker opens its own connection)")
    table = table or default_table()
    now = now or dt.datetime.now(dt.timezone.utc)
    started = now
    cv = store.code_version()
    hhs = store.load_households(conn, household_ids, household_codes)
    # bound the samples held at once (~4 M ≈ 2 rooms × 288/day): a season runs in chunks of ~60 households
    n_days = (day_to - day_from).days + 1
    chunk = max(1, min(chunk, 4_000_000 // (2 * 288 * n_days)))
    parts = [hhs[k:k + chunk] for k in range(0, len(hhs), chunk)]
    total = RunSummary()

    def one(c: psycopg.Connection, part: list) -> RunSummary:
        rows, summ = compute_households(c, part, day_from, day_to, table=table, tz=tz, code_version=cv)
        store.upsert_days(c, rows, now)
        # rows of rooms that no longer count (re-typed, thermometer removed) would otherwise linger
        store.delete_days(c, [h.id for h in part], day_from, day_to, sorted({r[1] for r in rows}))
        c.commit()
        return summ

    if workers <= 1 or len(parts) <= 1:
        for part in parts:
            total.add(one(conn, part))
            if progress:
                progress(len(part))
    else:
        import queue
        import threading
        from concurrent.futures import ThreadPoolExecutor

        from core.db import connect

        todo: "queue.Queue[list]" = queue.Queue()
        for part in parts:
            todo.put(part)
        lock = threading.Lock()

        def worker() -> None:
            with connect(db_url) as c:
                while True:
                    try:
                        part = todo.get_nowait()
                    except queue.Empty:
                        return
                    summ = one(c, part)
                    with lock:
                        total.add(summ)
                        if progress:
                            progress(len(part))

        with ThreadPoolExecutor(workers) as pool:
            for f in [pool.submit(worker) for _ in range(workers)]:
                f.result()                  # re-raise a worker's error here
    store.record_run(conn, kind=kind, day_from=day_from, day_to=day_to, started_at=started,
                     households=total.households, room_days=total.room_days, counts=total.as_dict(),
                     policy_digest=table.digest)
    conn.commit()
    return total


def process_dirty(conn: psycopg.Connection, *, now: dt.datetime | None = None, table: PolicyTable | None = None,
                  tz: str | None = None, limit: int = 5000) -> RunSummary:
    """Recompute days marked in compliance_dirty, for complete local days only (day < today).

    Today's marks wait: a partial day must not be stored as a verdict dunning would read.
    An advisory lock keeps two schedulers from doing the same work twice.
    """
    tz = tz or get_settings().timezone
    table = table or default_table()
    now = now or dt.datetime.now(dt.timezone.utc)
    today = now.astimezone(ZoneInfo(tz)).date()
    total = RunSummary()
    got = conn.execute("SELECT pg_try_advisory_lock(hashtext('heatdesk.compliance.dirty'))").fetchone()[0]
    conn.commit()
    if not got:
        log.info("compliance dirty queue is being processed elsewhere; skipping")
        return total
    try:
        marks, snap = store.take_dirty(conn, before_day=today, limit=limit)
        spans: dict[tuple[dt.date, dt.date], list[int]] = {}
        for hid, ds in marks.items():
            # the day before a marked day too: a late first sample after midnight changes how long
            # the previous day's last sample holds (the marks come from ingest's rollup per hour)
            spans.setdefault((min(ds) - dt.timedelta(days=1), max(ds)), []).append(hid)
        cv = store.code_version()
        for (a, b), hids in spans.items():
            hhs = store.load_households(conn, hids)
            rows, summ = compute_households(conn, hhs, a, b, table=table, tz=tz, code_version=cv)
            store.upsert_days(conn, rows, now)
            store.delete_days(conn, hids, a, b, sorted({r[1] for r in rows}))
            total.add(summ)
        store.clear_dirty(conn, marks, snap)
        if marks:
            store.record_run(conn, kind="dirty", day_from=min(a for a, _ in spans), day_to=max(b for _, b in spans),
                             started_at=now, households=total.households, room_days=total.room_days,
                             counts=total.as_dict(), policy_digest=table.digest)
        conn.commit()
    finally:
        conn.rollback()
        conn.execute("SELECT pg_advisory_unlock(hashtext('heatdesk.compliance.dirty'))")
        conn.commit()
    return total


def nightly(db_url: str, *, now: dt.datetime | None = None) -> RunSummary:
    """Compute yesterday (local) for every household, then drain the dirty queue."""
    from core.db import connect

    tz = get_settings().timezone
    now = now or dt.datetime.now(dt.timezone.utc)
    yesterday = now.astimezone(ZoneInfo(tz)).date() - dt.timedelta(days=1)
    with connect(db_url) as conn:
        store.mirror_policies(conn)
        conn.commit()
        summary = run_compliance(conn, yesterday, yesterday, now=now, kind="nightly")
        summary.add(process_dirty(conn, now=now))
    log.info("nightly compliance for %s: %s", yesterday, summary.as_dict())
    return summary


def drain_dirty(db_url: str) -> RunSummary:
    from core.db import connect

    with connect(db_url) as conn:
        return process_dirty(conn)


def schedule_compliance(scheduler, db_url: str, *, dirty_every_s: int = 300, nightly_at: str = "01:30") -> list:
    """Add the compliance jobs to an APScheduler scheduler (BackgroundScheduler / AsyncIOScheduler).

    * every ``dirty_every_s`` s: recompute days marked dirty by late data (``drain_dirty``);
    * daily at ``nightly_at`` local time: compute yesterday for all households (``nightly``).
    Both coalesce and never overlap themselves (max_instances=1). Returns the Job objects.
    """
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    hh, mm = (int(x) for x in nightly_at.split(":"))
    tz = ZoneInfo(get_settings().timezone)
    return [
        scheduler.add_job(drain_dirty, IntervalTrigger(seconds=dirty_every_s, timezone=tz), args=[db_url],
                          id="compliance.dirty", name="compliance: recompute late-data days",
                          replace_existing=True, coalesce=True, max_instances=1),
        scheduler.add_job(nightly, CronTrigger(hour=hh, minute=mm, timezone=tz), args=[db_url],
                          id="compliance.nightly", name="compliance: yesterday for all households",
                          replace_existing=True, coalesce=True, max_instances=1, misfire_grace_time=3600),
    ]


__all__ = ["RunSummary", "compute_households", "run_compliance", "process_dirty", "nightly", "drain_dirty",
           "schedule_compliance", "fixed_utc_offset_s"]
