"""Evidence curves and evidence packs for one household (what an agent, a customer or a court sees).

``household_curve`` returns a JSON-able dict: per-room mean/min/max per bucket, outdoor temperature
with the design outdoor temperature (R6), the serving substation's secondary supply/return, the
threshold, per-day verdicts from compliance_day, and gaps. A bucket without valid samples is
``None`` — gaps are never interpolated — and known device outages (device_gap) are listed and
blank their buckets too.

``render_curve`` draws it (matplotlib Agg; Chinese labels when a CJK font is installed, English
otherwise). ``build_pack`` writes a PDF evidence pack with a manifest whose ``samples_sha256`` is a
SHA-256 over a canonical serialisation of every underlying sample, and whose ``result_sha256``
covers the daily verdicts. ``verify_pack_hash`` reloads the samples, recomputes both hashes and the
verdicts, and says whether the pack still proves the same result.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import random
import threading
import time
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import psycopg

from analytics import queries as Q
from analytics import store
from analytics.job import compute_households
from analytics.policy import PolicyTable, default_table
from core.config import get_settings

log = logging.getLogger(__name__)

#: (max span, bucket) pairs: the bucket grows with the span so a curve has at most ~600 points.
BUCKETS = ((dt.timedelta(days=2), 300), (dt.timedelta(days=7), 1800), (dt.timedelta(days=31), 3600),
           (dt.timedelta(days=92), 4 * 3600), (dt.timedelta(days=400), 86400))
MAX_CURVE_DAYS = 92
SECONDARY_METRICS = ("supply_temp_2", "return_temp_2")


class EvidenceError(ValueError):
    """Bad request for evidence (unknown household, inverted or too long range)."""


def choose_bucket(span: dt.timedelta) -> int:
    """Bucket width in s for a time span: 5 min (≤ 2 d), 30 min (≤ 7 d), 1 h (≤ 31 d), 4 h (≤ 92 d), 1 d."""
    for limit, b in BUCKETS:
        if span <= limit:
            return b
    return 86400


def _iso(t: dt.datetime) -> str:
    return t.isoformat()


def _local_days(start: dt.datetime, end: dt.datetime, tz: ZoneInfo) -> tuple[dt.date, dt.date]:
    a = start.astimezone(tz).date()
    b = (end - dt.timedelta(microseconds=1)).astimezone(tz).date()
    return a, b


class SharedSeriesCache:
    """The substation's supply/return and the outdoor series of a curve, shared between requests.

    Every household a substation serves (hundreds) shows the same two secondary series and the same
    outdoor series beside its own; aggregating them is most of a curve's database work. A screen that
    agents open while the phone rings can take them up to ``ttl_s`` old (the household's own series is
    always read fresh). Evidence packs never use this: their hashes must be of what the database holds.
    Thread-safe (the API runs handlers in a thread pool); bounded by ``max_entries``.
    """

    def __init__(self, ttl_s: float = 30.0, max_entries: int = 4096):
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._items: dict[tuple, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def peek(self, key: tuple) -> Any | None:
        """The cached value if fresh, else None (counted as a hit or a miss)."""
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and hit[0] > now:
                self.hits += 1
                return hit[1]
            self.misses += 1
        return None

    def put(self, key: tuple, value: Any) -> None:
        """Keep ``value`` for 0.8–1 × ttl_s (random): entries filled together — every substation in the
        first seconds after a start — must not all expire together, and with one fixed TTL they stay
        together, since each is refilled by the first request after it expires. Measured with 50 paced
        clients: with a fixed 30 s, 82 of 3 000 curves took over 100 ms in the seconds after the 30 s
        mark, as every substation's series was read again at once."""
        now = time.monotonic()
        with self._lock:
            if len(self._items) >= self.max_entries:
                for k in [k for k, (exp, _v) in self._items.items() if exp <= now] or list(self._items)[:len(self._items) // 4]:
                    self._items.pop(k, None)
            self._items[key] = (now + self.ttl_s * random.uniform(0.8, 1.0), value)


def _network_series(sub_rows: list[tuple], outdoor_rows: list[tuple], index: dict[dt.datetime, int],
                    n: int) -> tuple[dict[str, list], list]:
    """The substation's secondary supply/return and the outdoor mean on the curve's buckets."""
    sub: dict[str, list] = {m: [None] * n for m in SECONDARY_METRICS}
    for metric, bucket, mean, _mn, _mx, _cnt in sub_rows:
        k = index.get(bucket)
        if k is not None:
            sub[metric][k] = round(mean, 3)
    outdoor: list = [None] * n
    for bucket, mean in outdoor_rows:
        k = index.get(bucket)
        if k is not None:
            outdoor[k] = round(mean, 3)
    return sub, outdoor


def household_curve(conn: psycopg.Connection, household_id: int, start: dt.datetime, end: dt.datetime, *,
                    bucket_s: int | None = None, table: PolicyTable | None = None, tz: str | None = None,
                    max_days: int = MAX_CURVE_DAYS, shared: SharedSeriesCache | None = None) -> dict[str, Any]:
    """Evidence curve of a household over [start, end) (aware datetimes). See the module docstring.

    ``shared``: take the substation and outdoor series from this cache (see SharedSeriesCache) — for
    interactive screens only. Raises EvidenceError for an unknown household, an inverted range or one
    longer than ``max_days``.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise EvidenceError("start and end must be timezone-aware")
    if end <= start:
        raise EvidenceError("end must be after start")
    if end - start > dt.timedelta(days=max_days):
        raise EvidenceError(f"curve range longer than {max_days} days")
    ctx = Q.household_context(conn, household_id)
    if ctx is None:
        raise EvidenceError(f"unknown household {household_id}")
    table = table or default_table()
    zone = ZoneInfo(tz or get_settings().timezone)
    b = int(bucket_s or choose_bucket(end - start))
    if b < 60:
        raise EvidenceError("bucket must be at least 60 s")
    origin = dt.datetime(2000, 1, 3, tzinfo=zone)   # a local midnight: buckets align with local days
    first = origin + dt.timedelta(seconds=((start - origin).total_seconds() // b) * b)
    n = int(np.ceil((end - first).total_seconds() / b))
    times = [first + dt.timedelta(seconds=k * b) for k in range(n)]
    index = {t: k for k, t in enumerate(times)}

    day_from, day_to = _local_days(start, end, zone)
    network_key = ("network", ctx["substation_id"], ctx["station_code"], b, first, n)
    network = shared.peek(network_key) if shared is not None else None
    # every read below is independent of the others: they go in one round trip (Q.run_all), the
    # substation's and the outdoor series only when the shared cache has not got them
    stmts = [Q.household_rooms_stmt(household_id),
             Q.room_buckets_stmt(household_id, start, end, b, origin),
             Q.household_gaps_stmt(household_id, ctx["substation_id"], start, end),
             store.room_days_stmt(household_id, day_from, day_to),
             store.household_days_stmt(household_id, day_from, day_to),
             Q.weather_days_stmt(ctx["station_code"], day_from, day_to)]
    if network is None:
        stmts += [Q.substation_buckets_stmt(ctx["substation_id"], SECONDARY_METRICS, start, end, b, origin),
                  Q.outdoor_buckets_stmt(ctx["substation_id"], ctx["station_code"], start, end, b, origin)]
    rows = Q.run_all(conn, stmts)
    rooms, bucket_rows, gaps, verdict_rows, hh_day_rows, weather_rows = rows[:6]
    room_series = {r["id"]: {"room_id": r["id"], "code": r["code"], "room_type": r["room_type"],
                             "counts_for_compliance": r["counts_for_compliance"],
                             "mean": [None] * n, "min": [None] * n, "max": [None] * n, "n": [0] * n}
                   for r in rooms if r["sensor_ids"]}
    for room_id, bucket, mean, mn, mx, cnt in bucket_rows:
        k = index.get(bucket)
        s = room_series.get(room_id)
        if k is None or s is None:
            continue
        s["mean"][k], s["min"][k], s["max"][k], s["n"][k] = round(mean, 3), round(mn, 3), round(mx, 3), cnt

    if network is None:
        network = _network_series(rows[6], rows[7], index, n)
        if shared is not None:
            shared.put(network_key, network)
    # copies: gap blanking below edits the lists, and cached ones are shared between requests
    sub, outdoor = {m: list(v) for m, v in network[0].items()}, list(network[1])

    rooms_of_device: dict[str, list[dict]] = {}
    for r in rooms:
        for d in r["device_ids"]:
            if r["id"] in room_series:
                rooms_of_device.setdefault(d, []).append(room_series[r["id"]])
    for g in gaps:
        # a bucket wholly inside a known outage is blanked for that device's series only (a bucket
        # with no valid sample is None already; partly covered buckets keep the samples they have)
        g_end = g["ended_at"] or end
        ks = [k for k, t in enumerate(times) if t >= g["started_at"] and t + dt.timedelta(seconds=b) <= g_end]
        affected = rooms_of_device.get(g["device_id"])
        for k in ks:
            if affected is not None:
                for s in affected:
                    s["mean"][k] = s["min"][k] = s["max"][k] = None
            else:
                for m in SECONDARY_METRICS:
                    sub[m][k] = None

    hh_days = {r["day"]: r for r in hh_day_rows}
    days = []
    d = day_from
    while d <= day_to:
        pol = table.resolve(ctx["region_code"], d)
        hd = hh_days.get(d)
        days.append({"day": d.isoformat(), "threshold_c": pol.compare_c, "policy": f"{pol.code} v{pol.version}",
                     "status": hd["status"] if hd else None,
                     "worst_stat_c": hd["worst_stat_c"] if hd else None,
                     "refund_ratio": hd["refund_ratio"] if hd else None,
                     "min_coverage": hd["min_coverage"] if hd else None,
                     "rooms": [{"room_id": r["room_id"], "room": r["room_code"], "status": r["status"],
                                "reason": r["reason"], "mean_c": r["mean_c"], "stat_c": r["stat_c"],
                                "coverage": r["coverage"], "refund_ratio": r["refund_ratio"],
                                "minutes_below": r["minutes_below"], "degree_hours_below": r["degree_hours_below"],
                                "code_version": r["code_version"], "policy_version": r["policy_version"]}
                               for r in verdict_rows if r["day"] == d]})
        d += dt.timedelta(days=1)
    weather = [{"day": w["day"].isoformat(), "mean_c": w["mean_c"], "source": w["source"]}
               for w in weather_rows]
    policy = table.resolve(ctx["region_code"], day_to)
    return {
        "household": {"id": ctx["id"], "code": ctx["code"], "placement_class": ctx["placement_class"],
                      "heating_status": ctx["heating_status"], "substation": ctx["substation_code"],
                      "region": ctx["region_code"]},
        "range": {"start": _iso(start), "end": _iso(end), "bucket_s": b, "timezone": zone.key},
        "times": [_iso(t) for t in times],
        "rooms": list(room_series.values()),
        "outdoor": {"mean_c": outdoor, "design_c": ctx["design_outdoor_temp_c"], "station": ctx["station_code"],
                    "daily": weather},
        "substation": {"code": ctx["substation_code"], "design_supply_c": ctx["design_supply_c"],
                       "design_return_c": ctx["design_return_c"], **sub},
        "days": days,
        "gaps": [{"device_id": g["device_id"], "kind": "room" if g["device_id"] in rooms_of_device else "substation",
                  "start": _iso(g["started_at"]),
                  "end": _iso(g["ended_at"]) if g["ended_at"] else None, "reason": g["reason"]} for g in gaps],
        "policy": policy.to_dict() | {"citation": policy.citation()},
    }


# ------------------------------------------------------------------------------------- hashing


def canonical_samples(rows: list[tuple]) -> bytes:
    """Canonical serialisation of samples: one line per sample, ordered by (sensor key, time):
    ``key \\t epoch-µs \\t repr(value) \\t quality \\t repr(offset) \\n`` (UTF-8). ``repr`` of a float is
    the shortest string that round-trips, so the bytes depend only on the stored values."""
    out = io.StringIO()
    for key, t, value, quality, offset in sorted(rows, key=lambda r: (r[0], r[1])):
        us = (t - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)
        out.write(f"{key}\t{us}\t{float(value)!r}\t{int(quality)}\t{float(offset)!r}\n")
    return out.getvalue().encode("utf-8")


def _result_rows(rows: list[tuple] | list[dict]) -> bytes:
    """Canonical verdicts: room, day, status, reason, ratio, statistic (4 decimals), coverage (4 decimals)."""
    items = []
    for r in rows:
        if isinstance(r, dict):
            items.append((r["room_id"], r["day"].isoformat(), r["status"], r["reason"] or "",
                          round(float(r["refund_ratio"]), 4),
                          None if r["stat_c"] is None else round(float(r["stat_c"]), 4),
                          round(float(r["coverage"]), 4)))
        else:
            items.append((r[1], r[2].isoformat(), r[11], r[12] or "", round(float(r[13]), 4),
                          None if r[6] is None else round(float(r[6]), 4), round(float(r[10]), 4)))
    return json.dumps(sorted(items, key=lambda x: (x[1], x[0])), separators=(",", ":")).encode()


def evidence_manifest(conn: psycopg.Connection, household_id: int, start: dt.datetime, end: dt.datetime, *,
                      table: PolicyTable | None = None, tz: str | None = None) -> dict:
    """Versions and hashes that make an evidence pack verifiable later."""
    table = table or default_table()
    zone = ZoneInfo(tz or get_settings().timezone)
    ctx = Q.household_context(conn, household_id)
    if ctx is None:
        raise EvidenceError(f"unknown household {household_id}")
    day_from, day_to = _local_days(start, end, zone)
    # exactly the samples the verdicts of those days depend on (job.compute_households reads one gap
    # cutoff either side of the days)
    cut = dt.timedelta(seconds=max(p.gap_cutoff_s for p in table.all()))
    w0 = dt.datetime(day_from.year, day_from.month, day_from.day, tzinfo=zone) - cut
    w1 = dt.datetime(day_to.year, day_to.month, day_to.day, tzinfo=zone) + dt.timedelta(days=1) + cut
    samples = Q.raw_room_samples(conn, household_id, w0, w1)
    stored = store.room_days(conn, household_id, day_from, day_to)
    hh = store.load_households(conn, [household_id])
    fresh, _ = compute_households(conn, hh, day_from, day_to, table=table, tz=zone.key)
    policies = sorted({(r[14], r[15]) for r in fresh})
    return {
        "household_id": household_id, "household_code": ctx["code"],
        "start": _iso(start), "end": _iso(end), "day_from": day_from.isoformat(), "day_to": day_to.isoformat(),
        "timezone": zone.key, "n_samples": len(samples),
        "samples_window": [_iso(w0), _iso(w1)],
        "samples_sha256": hashlib.sha256(canonical_samples(samples)).hexdigest(),
        "result_sha256": hashlib.sha256(_result_rows(fresh)).hexdigest(),
        "stored_matches_recomputed": _result_rows(stored) == _result_rows(fresh),
        "policies": [f"{c} v{v}" for c, v in policies], "policy_file_digest": table.digest,
        "code_version": store.code_version(),
        "stored_code_versions": sorted({r["code_version"] for r in stored}),
        "data_version": max((r["computed_at"] for r in stored), default=None).isoformat() if stored else None,
    }


def verify_pack_hash(conn: psycopg.Connection, manifest: dict, *, table: PolicyTable | None = None) -> dict:
    """Recompute a pack's hashes from the database. ``ok`` when the samples are byte-identical and the
    recomputed verdicts hash to the same value (same data + same rules ⇒ same result)."""
    start = dt.datetime.fromisoformat(manifest["start"])
    end = dt.datetime.fromisoformat(manifest["end"])
    now = evidence_manifest(conn, int(manifest["household_id"]), start, end, table=table, tz=manifest["timezone"])
    samples_ok = now["samples_sha256"] == manifest["samples_sha256"]
    result_ok = now["result_sha256"] == manifest["result_sha256"]
    return {"ok": samples_ok and result_ok, "samples_match": samples_ok, "result_match": result_ok,
            "n_samples_then": manifest["n_samples"], "n_samples_now": now["n_samples"],
            "code_version_then": manifest["code_version"], "code_version_now": now["code_version"]}


# ------------------------------------------------------------------------------------- rendering

_CJK_CANDIDATES = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
                   "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC", "AR PL UMing CN", "Droid Sans Fallback")

LABELS = {
    "zh": {"indoor": "室温 (℃)", "outdoor": "室外 (℃)", "supply": "二次供水", "return": "二次回水",
           "sub": "二次网 (℃)", "threshold": "达标线", "design": "室外计算温度", "title": "室温证据曲线",
           "compliant": "达标", "non_compliant": "不达标", "unknown": "数据不足", "exempt": "免责",
           "gap": "设备中断", "day": "日期", "status": "结论", "mean": "均值", "stat": "判定值",
           "coverage": "覆盖率", "ratio": "退费比例", "reason": "原因", "room": "房间"},
    "en": {"indoor": "Indoor (°C)", "outdoor": "Outdoor (°C)", "supply": "Secondary supply", "return": "Secondary return",
           "sub": "Secondary (°C)", "threshold": "Threshold", "design": "Design outdoor", "title": "Room temperature evidence",
           "compliant": "compliant", "non_compliant": "non-compliant", "unknown": "unknown", "exempt": "exempt",
           "gap": "device gap", "day": "Day", "status": "Status", "mean": "Mean", "stat": "Statistic",
           "coverage": "Coverage", "ratio": "Refund", "reason": "Reason", "room": "Room"},
}
STATUS_COLOURS = {"compliant": "#d8f0d8", "non_compliant": "#f8d0d0", "unknown": "#e4e4e4", "exempt": "#d8e4f8"}


@lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """Name of an installed CJK-capable font known to matplotlib's font_manager, or None."""
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    for cand in _CJK_CANDIDATES:
        if cand in names:
            return cand
    return None


def _language(lang: str | None) -> str:
    if lang == "en":
        return "en"
    font = cjk_font()
    if lang == "zh" and font is None:
        log.info("no CJK font installed; evidence rendered with English labels")
    return "zh" if font else "en"


def _figure(curve: dict, lang: str):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    L = LABELS[lang]
    if lang == "zh":
        plt.rcParams["font.sans-serif"] = [cjk_font(), "DejaVu Sans"]
        plt.rcParams["axes.unicode_minus"] = False
    times = np.array([np.datetime64(dt.datetime.fromisoformat(t).astimezone(dt.timezone.utc).replace(tzinfo=None))
                      for t in curve["times"]]) if curve["times"] else np.array([], dtype="datetime64[us]")
    zone = ZoneInfo(curve["range"]["timezone"])

    def arr(xs):
        return np.array([np.nan if x is None else x for x in xs], dtype=float)

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(11, 8), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 1.3, 1.3]})
    for day in curve["days"]:
        if day["status"]:
            d0 = dt.datetime.fromisoformat(day["day"]).replace(tzinfo=zone).astimezone(dt.timezone.utc).replace(tzinfo=None)
            ax1.axvspan(d0, d0 + dt.timedelta(days=1), color=STATUS_COLOURS[day["status"]], alpha=0.7, lw=0)
    for r in curve["rooms"]:
        m = arr(r["mean"])
        line, = ax1.plot(times, m, lw=1.2, label=f"{r['code']}")
        ax1.fill_between(times, arr(r["min"]), arr(r["max"]), color=line.get_color(), alpha=0.15, lw=0)
    thr_t, thr_v = [], []
    for day in curve["days"]:
        d0 = dt.datetime.fromisoformat(day["day"]).replace(tzinfo=zone).astimezone(dt.timezone.utc).replace(tzinfo=None)
        thr_t += [d0, d0 + dt.timedelta(days=1)]
        thr_v += [day["threshold_c"], day["threshold_c"]]
    ax1.plot(thr_t, thr_v, color="#c00000", lw=1.2, ls="--", label=L["threshold"])
    for g in curve["gaps"]:
        g0 = dt.datetime.fromisoformat(g["start"]).astimezone(dt.timezone.utc).replace(tzinfo=None)
        g1 = dt.datetime.fromisoformat(g["end"] or curve["range"]["end"]).astimezone(dt.timezone.utc).replace(tzinfo=None)
        ax = ax1 if g.get("kind") == "room" else ax3
        ax.axvspan(g0, g1, facecolor="none", edgecolor="#555555", hatch="///", lw=0)
    ax1.set_ylabel(L["indoor"])
    from matplotlib.patches import Patch
    handles, labels = ax1.get_legend_handles_labels()
    handles += [Patch(color=STATUS_COLOURS[s], label=L[s]) for s in STATUS_COLOURS]
    if curve["gaps"]:
        handles.append(Patch(facecolor="none", edgecolor="#555555", hatch="///", label=L["gap"]))
    ax1.legend(handles=handles, loc="upper left", fontsize=8, ncol=4)
    ax1.set_title(f"{L['title']} — {curve['household']['code']} ({curve['policy']['code']} "
                  f"v{curve['policy']['version']}, {curve['policy']['compare_c']:.1f} ℃)")
    ax2.plot(times, arr(curve["outdoor"]["mean_c"]), color="#1f4e9c", lw=1.0, label=L["outdoor"])
    if curve["outdoor"]["design_c"] is not None:
        ax2.axhline(curve["outdoor"]["design_c"], color="#1f4e9c", ls=":", lw=1.0,
                    label=f"{L['design']} {curve['outdoor']['design_c']:.1f} ℃")
    for w in curve["outdoor"]["daily"]:
        d0 = dt.datetime.fromisoformat(w["day"]).replace(tzinfo=zone).astimezone(dt.timezone.utc).replace(tzinfo=None)
        ax2.plot([d0, d0 + dt.timedelta(days=1)], [w["mean_c"]] * 2, color="#6a3d9a", lw=2)
    ax2.set_ylabel(L["outdoor"])
    ax2.legend(loc="upper left", fontsize=8)
    ax3.plot(times, arr(curve["substation"]["supply_temp_2"]), color="#d62728", lw=1.0, label=L["supply"])
    ax3.plot(times, arr(curve["substation"]["return_temp_2"]), color="#ff7f0e", lw=1.0, label=L["return"])
    ax3.set_ylabel(L["sub"])
    ax3.legend(loc="upper left", fontsize=8)
    ax3.xaxis.set_major_locator(mdates.AutoDateLocator(tz=zone))
    ax3.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=zone))
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def render_curve(curve: dict, fmt: str = "png", lang: str | None = None) -> bytes:
    """PNG or SVG bytes of a curve from ``household_curve``."""
    if fmt not in ("png", "svg"):
        raise EvidenceError(f"unsupported format {fmt!r}")
    import matplotlib.pyplot as plt

    fig = _figure(curve, _language(lang))
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, dpi=110)
    finally:
        plt.close(fig)
    return buf.getvalue()


def pack_figures(curve: dict, manifest: dict, lang: str | None = None) -> list:
    """The pages of an evidence pack as matplotlib figures: the curve, the daily table (coverage,
    statistic, threshold, refund tier per room and day), and policy / versions / hashes."""
    import matplotlib.pyplot as plt

    lg = _language(lang)
    L = LABELS[lg]
    figs = [_figure(curve, lg)]
    rows = [[d["day"], r["room"], L.get(r["status"], r["status"]), r["reason"] or "",
             "" if r["mean_c"] is None else f"{r['mean_c']:.2f}", "" if r["stat_c"] is None else f"{r['stat_c']:.2f}",
             f"{d['threshold_c']:.1f}", f"{r['coverage']:.0%}", f"{r['refund_ratio']:.0%}"]
            for d in curve["days"] for r in d["rooms"]]
    header = [L["day"], L["room"], L["status"], L["reason"], L["mean"], L["stat"], "≥", L["coverage"], L["ratio"]]
    per_page = 40
    for k in range(0, max(len(rows), 1), per_page):
        fig = plt.figure(figsize=(8.27, 11.69))
        ax = fig.add_axes([0.05, 0.05, 0.9, 0.88])
        ax.axis("off")
        fig.suptitle(f"{curve['household']['code']} — {L['status']} ({k // per_page + 1})")
        chunk = rows[k:k + per_page] or [[""] * len(header)]
        tbl = ax.table(cellText=chunk, colLabels=header, loc="upper center", cellLoc="center")
        tbl.auto_set_font_size(False)
        tbl.set_fontsize(7)
        for (i, _j), cell in tbl.get_celld().items():
            if i > 0:
                status = next((s for s in STATUS_COLOURS if L[s] == chunk[i - 1][2]), None)
                if status:
                    cell.set_facecolor(STATUS_COLOURS[status])
        figs.append(fig)
    fig = plt.figure(figsize=(8.27, 11.69))
    pol = curve["policy"]
    cite = pol["citation"] if lg == "zh" else (f"policy {pol['code']} v{pol['version']} "
                                                f"(domain.md {', '.join(pol['rules'])})")
    text = [f"Policy: {cite}",
            f"Threshold compared: {pol['compare_c']} °C, statistic {pol['statistic']}, "
            f"min coverage {pol['min_coverage']:.0%}, tolerance {pol['tolerance_c']} K",
            f"Gap rule: a sample represents the time until the next one, at most {pol['gap_cutoff_s']:.0f} s;",
            "gaps are not filled and lower the coverage.",
            f"Exemptions: design outdoor {curve['outdoor']['design_c']} °C (R6), stopped/baoting (R29), "
            "metered (R8), user-caused (R10)",
            "Standard: GB/T 33833-2017 §5.1 (C2: verify the current edition before citing it to users)",
            "IoT data raises suspected non-compliance; refunds need confirmed days unless the policy",
            f"allows IoT days (iot_counts_for_refund={pol['iot_counts_for_refund']}, R13).",
            "", f"Range: {manifest['start']} — {manifest['end']} ({manifest['timezone']})",
            f"Samples: {manifest['n_samples']} in [{manifest['samples_window'][0]}, {manifest['samples_window'][1]})",
            "samples_sha256:", f"  {manifest['samples_sha256']}",
            "result_sha256:", f"  {manifest['result_sha256']}",
            f"Stored verdicts equal recomputation: {manifest['stored_matches_recomputed']}",
            f"Code version: {manifest['code_version']}", f"Stored code versions: {manifest['stored_code_versions']}",
            f"Policies: {manifest['policies']}   policy file digest: {manifest['policy_file_digest']}",
            f"Data version (last computed): {manifest['data_version']}",
            "", "Canonical sample serialisation: key TAB epoch-µs TAB repr(value) TAB quality TAB repr(offset),",
            "one line per sample, sorted by (key, time), UTF-8; SHA-256 of the concatenation.",
            "Verify: POST the manifest to /households/{id}/evidence/verify (analytics.evidence.verify_pack_hash)."]
    fig.text(0.06, 0.95, "\n".join(text), va="top", fontsize=8, family="monospace" if lg == "en" else None)
    figs.append(fig)
    return figs


def build_pack(conn: psycopg.Connection, household_id: int, start: dt.datetime, end: dt.datetime, *,
               lang: str | None = None, table: PolicyTable | None = None, tz: str | None = None) -> tuple[bytes, dict]:
    """Evidence pack: PDF bytes (curve, daily table with coverage, policy and rules cited, versions and
    hashes) and its manifest (keep it with the ticket; ``verify_pack_hash`` checks it later)."""
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    curve = household_curve(conn, household_id, start, end, table=table, tz=tz)
    manifest = evidence_manifest(conn, household_id, start, end, table=table, tz=tz)
    buf = io.BytesIO()
    with PdfPages(buf, metadata={"Title": f"Evidence {curve['household']['code']}",
                                 "Subject": f"samples_sha256={manifest['samples_sha256']}",
                                 "Keywords": f"result_sha256={manifest['result_sha256']}",
                                 "Creator": manifest["code_version"]}) as pdf:
        for fig in pack_figures(curve, manifest, lang):
            pdf.savefig(fig)
            plt.close(fig)
    return buf.getvalue(), manifest


__all__ = ["household_curve", "render_curve", "build_pack", "pack_figures", "evidence_manifest", "verify_pack_hash",
           "canonical_samples", "choose_bucket", "cjk_font", "EvidenceError", "MAX_CURVE_DAYS"]
