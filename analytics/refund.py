"""Refund statement per household and season from the tier tables (domain.md R13, R22–R25).

``refund_statement`` is pure: refund = Σ_days max(temperature refund, stoppage refund), where the
temperature refund of a day is ratio(tier) × daily_fee × area_factor (R22) and a day is never
counted twice (R24). ``refund_for_household`` loads the inputs from compliance_day.

Which days count (R13): with ``policy.iot_counts_for_refund`` false (the default everywhere) only
days in ``confirmed`` — the non-compliant days confirmed by both parties or a third party, which
ticketing's temperature tests produce — are refunded; IoT days only raise suspicion. ``confirmed``
maps a day to the measured temperature (℃), whose tier then applies, or to None to use the IoT
statistic of that day. Trigger hours (R27: Tianjin 24 h, Luoyang/Ningxia 48 h) are applied by
ticketing when it confirms days; this module does not second-guess them.

Stoppage days (R25) come from :func:`stoppage_for_households`, one set-based query for any number of
households: ``refund_for_household`` asks for one, dunning's batch run for 5 000 at a time, so the
single-household statement and the batch statement see the same days and multipliers.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import psycopg

from analytics import queries as Q
from analytics import store
from analytics.compliance import round_01
from analytics.policy import Policy, PolicyTable, default_table


@dataclass
class RefundLine:
    day: dt.date
    source: str                 # temperature | stoppage
    ratio: float                # tier ratio (temperature) or stoppage multiplier
    area_factor: float
    amount: float               # 元
    basis: str                  # confirmed_measurement | confirmed_iot | iot | stoppage
    rooms: list[str] = field(default_factory=list)
    measured_c: float | None = None


@dataclass
class RefundStatement:
    household_id: int
    policy: str
    season_start: dt.date
    season_end: dt.date
    statutory_days: int
    refund_base: str
    base_amount: float          # 元 the daily fee is derived from
    daily_fee: float            # 元/day
    lines: list[RefundLine]
    total: float
    deadline: dt.date | None
    notes: list[str]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["lines"] = [asdict(x) for x in self.lines]
        return d


def _base_amount(policy: Policy, season_fee: float, base_fee: float, metered_fee: float | None) -> float:
    if policy.refund_base == "total":
        return season_fee
    if policy.refund_base == "total_minus_base":
        return season_fee - base_fee
    if metered_fee is None:
        raise ValueError(f"policy {policy.code} refunds the metered part: metered_fee is required")
    return metered_fee


def refund_statement(*, household_id: int, policy: Policy, season_start: dt.date, season_end: dt.date,
                     season_fee: float, room_days: list[dict], household_area_m2: float,
                     confirmed: Mapping[dt.date, float | None] | set[dt.date] | None = None,
                     stoppage: Mapping[dt.date, float] | None = None, base_fee: float = 0.0,
                     metered_fee: float | None = None) -> RefundStatement:
    """Pure refund computation (R22–R25). Amounts in 元, rounded to fen at the end of each line.

    room_days: compliance_day rows (dicts with day, room_code/room_id, status, stat_c, refund_ratio,
    room_area_m2). confirmed: see the module docstring. stoppage: day → refund multiplier for
    supplier-side outages (1.0 = the day's fee; Yinchuan/Ningxia 2.0, R25), computed upstream.
    daily_fee = base / statutory days (R22, R41: statutory, not actual, days).
    """
    if season_fee < 0 or household_area_m2 <= 0:
        raise ValueError("season_fee must be ≥ 0 and household_area_m2 > 0")
    days_n = (season_end - season_start).days + 1
    base = _base_amount(policy, season_fee, base_fee, metered_fee)
    daily_fee = base / days_n
    if isinstance(confirmed, set):
        confirmed = {d: None for d in confirmed}
    confirmed = dict(confirmed or {})
    stoppage = dict(stoppage or {})
    by_day: dict[dt.date, list[dict]] = {}
    for r in room_days:
        by_day.setdefault(r["day"], []).append(r)
    notes: list[str] = ["C3: confirm the tier table against the official gazette text before paying."]
    if not policy.refund_tiers:
        notes.append(f"policy {policy.code} v{policy.version} has no refund tier table: temperature refunds are 0.")
    lines: list[RefundLine] = []
    # only days with an input can refund anything; walking all ~120 season days per household cost a
    # 100 k-household dunning batch most of its refund time
    for d in sorted(set(by_day) | set(confirmed) | set(stoppage)):
        if not season_start <= d <= season_end:
            continue
        rows = by_day.get(d, [])
        nc = [r for r in rows if r["status"] == "non_compliant"]
        temp: RefundLine | None = None
        if d in confirmed and confirmed[d] is not None:
            t = float(round_01(confirmed[d]))
            ratio = policy.refund_ratio(t) if t < policy.compare_c - policy.tolerance_c else 0.0
            area = _area_factor(policy, nc, household_area_m2) if nc else 1.0
            if ratio > 0:
                temp = RefundLine(d, "temperature", ratio, area, 0.0, "confirmed_measurement",
                                  [str(r.get("room_code", r.get("room_id"))) for r in nc], t)
        elif nc and (d in confirmed or policy.iot_counts_for_refund):
            ratio = max(r["refund_ratio"] for r in nc)
            area = 1.0
            if policy.area_rule == "room" and ratio > 0:
                # 相应部位: each non-compliant room refunds its own tier on its own area; expressed as
                # the worst ratio × an effective area factor so the line stays one product
                weighted = sum(r["refund_ratio"] * _room_area(r, household_area_m2) for r in nc)
                area = min(1.0, weighted / household_area_m2 / ratio)
            if ratio > 0:
                temp = RefundLine(d, "temperature", ratio, area, 0.0, "confirmed_iot" if d in confirmed else "iot",
                                  [str(r.get("room_code", r.get("room_id"))) for r in nc])
        stop = None
        if d in stoppage and stoppage[d] > 0:
            stop = RefundLine(d, "stoppage", float(stoppage[d]), 1.0, 0.0, "stoppage")
        best = None
        for cand in (temp, stop):
            if cand is None:
                continue
            cand.amount = round(cand.ratio * cand.area_factor * daily_fee, 2)
            if best is None or cand.amount > best.amount:
                best = cand                       # R24: the larger refund, never both
        if best is not None and best.amount > 0:
            lines.append(best)
    return RefundStatement(household_id=household_id, policy=f"{policy.code} v{policy.version}",
                           season_start=season_start, season_end=season_end, statutory_days=days_n,
                           refund_base=policy.refund_base, base_amount=round(base, 2), daily_fee=round(daily_fee, 6),
                           lines=lines, total=round(sum(x.amount for x in lines), 2),
                           deadline=policy.refund_deadline(season_start.year), notes=notes)


def _room_area(r: dict, household_area_m2: float) -> float:
    a = r.get("room_area_m2")
    return float(a) if a else household_area_m2


def _area_factor(policy: Policy, nc_rooms: list[dict], household_area_m2: float) -> float:
    """R22: 1 for whole-household rules; Σ non-compliant room areas / household area for 相应部位."""
    if policy.area_rule != "room":
        return 1.0
    return min(1.0, sum(_room_area(r, household_area_m2) for r in nc_rooms) / household_area_m2)


#: R25 refund multiplier of a stoppage day: the day's fee once. The regional 2× rules (Yinchuan/Ningxia,
#: after > 72 h continuous or > 7 days cumulative) are not in the policy table yet; callers with such a
#: rule pass their own ``stoppage`` mapping to :func:`refund_statement`.
STOPPAGE_MULTIPLIER = 1.0


def stoppage_for_households(conn: psycopg.Connection, household_ids: Sequence[int], day_from: dt.date,
                            day_to: dt.date, tz: str = "Asia/Shanghai") -> dict[int, dict[dt.date, float]]:
    """household → {local day: stoppage multiplier} for days in [day_from, day_to] with a supplier-side
    outage incident open (queries.stoppage_days_many). Households without one are absent.

    The single place that turns incident tickets into R25 stoppage days, for one household or a batch.
    ``day_to`` bounds an incident still open: pass the evaluation day, not the season end, when the
    statement must not run ahead of today.
    """
    return {hid: {d: STOPPAGE_MULTIPLIER for d in days}
            for hid, days in Q.stoppage_days_many(conn, household_ids, day_from, day_to, tz).items()}


def refund_for_household(conn: psycopg.Connection, household_id: int, season_year: int, *, season_fee: float,
                         confirmed: Mapping[dt.date, float | None] | set[dt.date] | None = None,
                         stoppage: Mapping[dt.date, float] | None = None, base_fee: float = 0.0,
                         metered_fee: float | None = None, table: PolicyTable | None = None,
                         tz: str = "Asia/Shanghai", as_of: dt.date | None = None) -> RefundStatement:
    """Load compliance_day for the statutory season starting in ``season_year`` and build the statement.

    ``season_fee`` (and ``base_fee`` / ``metered_fee``) come from dunning's bill. When ``stoppage`` is
    None, days with a supplier-side incident ticket count once (:func:`stoppage_for_households`); an
    incident still open counts up to ``as_of`` (default: the season end, as before ``as_of`` existed).
    ``as_of`` bounds only the stoppage days: compliance_day holds no rows for days not yet evaluated.
    """
    table = table or default_table()
    ctx = Q.household_context(conn, household_id)
    if ctx is None:
        raise LookupError(f"unknown household {household_id}")
    probe = table.resolve(ctx["region_code"], dt.date(season_year, 12, 31))
    start, end = probe.season.bounds(season_year)
    policy = table.resolve(ctx["region_code"], start)
    rows = store.room_days(conn, household_id, start, end)
    if stoppage is None:
        upto = end if as_of is None else min(as_of, end)
        stoppage = stoppage_for_households(conn, [household_id], start, upto, tz).get(household_id, {})
    return refund_statement(household_id=household_id, policy=policy, season_start=start, season_end=end,
                            season_fee=season_fee, room_days=rows, household_area_m2=ctx["area_m2"],
                            confirmed=confirmed, stoppage=stoppage, base_fee=base_fee, metered_fee=metered_fee)


__all__ = ["refund_statement", "refund_for_household", "stoppage_for_households", "STOPPAGE_MULTIPLIER",
           "RefundStatement", "RefundLine"]
