"""Substation KPIs and fault heuristics for the engineers' dashboard (domain.md R45–R48, R17, R20).

Pure functions over arrays plus ``substation_kpis`` that loads them. Units: temperatures ℃, ΔT K,
flow m³/h, pressure MPa, power kW. Every threshold is a field of ``HeuristicThresholds`` (R48 says
the values are configurable; the defaults are the ones domain.md quotes).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from zoneinfo import ZoneInfo

import numpy as np
import psycopg

from analytics import queries as Q
from core.config import get_settings

KW_PER_M3H_K = 1.163   # R47: ρ·c_p/3600 near 1000 kg/m³, kWh/(m³·K)


def heat_power_kw(flow_m3h, supply_c, return_c, density_correction: bool = False):
    """P ≈ 1.163 × V̇[m³/h] × ΔT[K] kW (R47). With ``density_correction`` the water density at the
    return temperature is used (≈ 972 kg/m³ at 80 ℃) instead of 1000 kg/m³. NaN propagates."""
    flow = np.asarray(flow_m3h, dtype=float)
    dtk = np.asarray(supply_c, dtype=float) - np.asarray(return_c, dtype=float)
    p = KW_PER_M3H_K * flow * dtk
    if density_correction:
        t = np.asarray(return_c, dtype=float)
        rho = 1000.0 * (1 - (t + 288.9414) / (508929.2 * (t + 68.12963)) * (t - 3.9863) ** 2)   # Thiesen
        p = p * rho / 1000.0
    return p


def heating_curve(outdoor_c, design_supply_c: float, design_outdoor_c: float, *, indoor_c: float = 18.0,
                  exponent: float = 1.0, min_supply_c: float | None = None):
    """Required secondary supply ℃ for an outdoor ℃ (outdoor compensation, R48.2).

    Quality regulation: T_s = t_i + (T_s,d − t_i) × load^(1/exponent), load = (t_i − t_o)/(t_i − t_o,d),
    linear with the default ``exponent`` = 1; radiator emission follows ΔT^1.3, so exponent 1.3 is
    closer for radiator systems (pass it). Above t_i the load is zero and the curve returns t_i (or
    ``min_supply_c``). All ℃.
    """
    to = np.asarray(outdoor_c, dtype=float)
    load = np.clip((indoor_c - to) / (indoor_c - design_outdoor_c), 0.0, None)
    ts = indoor_c + (design_supply_c - indoor_c) * load ** (1.0 / exponent)
    if min_supply_c is not None:
        ts = np.maximum(ts, min_supply_c)
    return ts


@dataclass(frozen=True)
class HeuristicThresholds:
    """R48 heuristics; all configurable. Temperatures K/℃, shares 0..1."""

    small_dt_share: float = 0.45            # R48.1: ΔT < 45 % of design ΔT …
    large_flow_share: float = 1.0           # … while flow ≥ 100 % of design flow ("大流量、小温差")
    supply_below_curve_k: float = 5.0       # R48.2: supply more than 5 K below the heating curve
    primary_return_high_c: float = 60.0     # R48.3: primary return above this → HX fouling / overflow
    pressure_drop_mpa_per_h: float = 0.05   # R48.4: secondary supply pressure falling faster than this …
    makeup_surge_m3h: float = 1.0           # … or makeup flow above this → suspected leak
    pump_off_share: float = 0.5             # pump status mean below this → pump fault / stopped
    sustained_share: float = 0.5            # a condition must hold in ≥ 50 % of the window's samples
    curve_exponent: float = 1.0


@dataclass
class Alarm:
    code: str
    severity: str      # info | warning | critical
    rule: str          # domain.md rule
    message_zh: str
    message_en: str
    value: float | None = None
    limit: float | None = None


def evaluate_heuristics(series: dict[str, np.ndarray], *, design_supply_c: float, design_return_c: float,
                        design_flow_m3h: float | None, design_outdoor_c: float | None,
                        thresholds: HeuristicThresholds = HeuristicThresholds(),
                        hours: np.ndarray | None = None) -> list[Alarm]:
    """R48 heuristics over aligned series (one value per bucket; NaN = no data).

    ``series`` keys used: supply_temp_2, return_temp_2, flow_2, outdoor_temp, return_temp_1,
    supply_pressure_2, makeup_flow, pump_status. ``hours``: bucket times in hours (for pressure slopes).
    A condition fires when it holds in at least ``sustained_share`` of the buckets with data.
    """
    th = thresholds
    alarms: list[Alarm] = []

    def share(mask, valid):
        n = int(valid.sum())
        return (float((mask & valid).sum()) / n) if n else 0.0

    s2, r2 = series.get("supply_temp_2"), series.get("return_temp_2")
    design_dt = design_supply_c - design_return_c
    if s2 is not None and r2 is not None:
        dtk = s2 - r2
        valid = np.isfinite(dtk)
        small = dtk < th.small_dt_share * design_dt
        flow = series.get("flow_2")
        if flow is not None and design_flow_m3h:
            small = small & (flow >= th.large_flow_share * design_flow_m3h)
            valid = valid & np.isfinite(flow)
        if share(small, valid) >= th.sustained_share:
            med = float(np.nanmedian(dtk))
            alarms.append(Alarm("large_flow_small_dt", "warning", "R48.1",
                                f"大流量、小温差：二次网温差 {med:.1f} K，低于设计温差 {design_dt:.0f} K 的 {th.small_dt_share:.0%}，疑似水力失调或过量循环",
                                f"Large flow, small ΔT: secondary ΔT {med:.1f} K below {th.small_dt_share:.0%} of design {design_dt:.0f} K (hydraulic imbalance / over-pumping)",
                                med, th.small_dt_share * design_dt))
    out = series.get("outdoor_temp")
    if s2 is not None and out is not None and design_outdoor_c is not None:
        curve = heating_curve(out, design_supply_c, design_outdoor_c, exponent=th.curve_exponent)
        deficit = curve - s2
        valid = np.isfinite(deficit)
        if share(deficit > th.supply_below_curve_k, valid) >= th.sustained_share:
            med = float(np.nanmedian(deficit))
            alarms.append(Alarm("supply_below_curve", "critical", "R48.2",
                                f"二次供水低于室外温度补偿曲线 {med:.1f} K，室温有不达标风险",
                                f"Secondary supply {med:.1f} K below the heating curve for the outdoor temperature; rooms at risk",
                                med, th.supply_below_curve_k))
    r1 = series.get("return_temp_1")
    if r1 is not None:
        valid = np.isfinite(r1)
        if share(r1 > th.primary_return_high_c, valid) >= th.sustained_share:
            med = float(np.nanmedian(r1))
            alarms.append(Alarm("primary_return_high", "warning", "R48.3",
                                f"一次网回水温度偏高 {med:.1f} ℃：换热器结垢或二次侧过流",
                                f"High primary return {med:.1f} °C: heat-exchanger fouling or secondary overflow",
                                med, th.primary_return_high_c))
    p2 = series.get("supply_pressure_2")
    if p2 is not None and hours is not None:
        ok = np.isfinite(p2)
        if ok.sum() >= 3:
            slope = float(np.polyfit(np.asarray(hours)[ok], p2[ok], 1)[0])
            if slope < -th.pressure_drop_mpa_per_h:
                alarms.append(Alarm("pressure_drop", "critical", "R48.4",
                                    f"二次网供水压力持续下降 {slope:.3f} MPa/h，疑似泄漏，建议派报修工单",
                                    f"Secondary supply pressure falling {slope:.3f} MPa/h: suspected leak, open a repair ticket",
                                    slope, -th.pressure_drop_mpa_per_h))
    mk = series.get("makeup_flow")
    if mk is not None:
        valid = np.isfinite(mk)
        if share(mk > th.makeup_surge_m3h, valid) >= th.sustained_share:
            med = float(np.nanmedian(mk))
            alarms.append(Alarm("makeup_surge", "critical", "R48.4",
                                f"补水量异常 {med:.2f} m³/h，疑似泄漏", f"Makeup water surge {med:.2f} m³/h: suspected leak",
                                med, th.makeup_surge_m3h))
    pump = series.get("pump_status")
    if pump is not None and np.isfinite(pump).any():
        m = float(np.nanmean(pump))
        if m < th.pump_off_share:
            alarms.append(Alarm("pump_off", "critical", "R48",
                                f"循环泵运行比例 {m:.0%}，循环泵故障或停运", f"Circulation pump running {m:.0%} of the time: pump fault or stopped",
                                m, th.pump_off_share))
    return alarms


def compliance_rate(counts: dict[str, int]) -> dict:
    """R20: compliant / (household-days − exempt − unknown); unknown and exempt reported separately."""
    c = {k: int(counts.get(k, 0)) for k in ("compliant", "non_compliant", "unknown", "exempt")}
    denom = c["compliant"] + c["non_compliant"]
    return {**c, "household_days": sum(c.values()), "rate": (c["compliant"] / denom) if denom else None}


SERIES_METRICS = ("supply_temp_2", "return_temp_2", "flow_2", "flow_1", "supply_temp_1", "return_temp_1",
                  "supply_pressure_2", "return_pressure_2", "makeup_flow", "pump_status", "heat_power", "outdoor_temp")


def substation_series(conn: psycopg.Connection, substation_id: int, start: dt.datetime, end: dt.datetime,
                      bucket_s: int) -> tuple[list[dt.datetime], dict[str, np.ndarray]]:
    """Bucketed means of the substation's points (NaN where no good sample), aligned on one time axis."""
    zone = ZoneInfo(get_settings().timezone)
    origin = dt.datetime(2000, 1, 3, tzinfo=zone)
    first = origin + dt.timedelta(seconds=((start - origin).total_seconds() // bucket_s) * bucket_s)
    n = int(np.ceil((end - first).total_seconds() / bucket_s))
    times = [first + dt.timedelta(seconds=k * bucket_s) for k in range(n)]
    idx = {t: k for k, t in enumerate(times)}
    out: dict[str, np.ndarray] = {}
    for metric, bucket, mean, _mn, _mx, _c in Q.substation_buckets(conn, substation_id, SERIES_METRICS, start, end,
                                                                   bucket_s, origin):
        k = idx.get(bucket)
        if k is not None:
            out.setdefault(metric, np.full(n, np.nan))[k] = mean
    return times, out


def substation_kpis(conn: psycopg.Connection, substation_id: int, *, now: dt.datetime, window_h: float = 6.0,
                    thresholds: HeuristicThresholds = HeuristicThresholds(), season_start: dt.date | None = None) -> dict:
    """Dashboard figures for one substation at ``now``: latest-window ΔT, heat power (R47), supply vs the
    heating curve, R48 alarms, and served-household compliance today and this season (R20), overall
    and by placement class (R17). Compliance "today" uses the last computed day (yesterday, local)."""
    from analytics.policy import default_table

    ctx = Q.substation_context(conn, substation_id)
    if ctx is None:
        raise LookupError(f"unknown substation {substation_id}")
    start = now - dt.timedelta(hours=window_h)
    times, s = substation_series(conn, substation_id, start, now, 900)
    hours = np.array([(t - times[0]).total_seconds() / 3600 for t in times]) if times else None

    def last(name):
        a = s.get(name)
        if a is None or not np.isfinite(a).any():
            return None
        return float(a[np.flatnonzero(np.isfinite(a))[-1]])

    sup, ret, flow, outd = last("supply_temp_2"), last("return_temp_2"), last("flow_2"), last("outdoor_temp")
    dtk = None if sup is None or ret is None else sup - ret
    power = None if dtk is None or flow is None else float(heat_power_kw(flow, sup, ret))
    curve = None
    if outd is not None and ctx["design_outdoor_temp_c"] is not None:
        curve = float(heating_curve(outd, ctx["design_supply_c"], ctx["design_outdoor_temp_c"],
                                    exponent=thresholds.curve_exponent))
    alarms = evaluate_heuristics(s, design_supply_c=ctx["design_supply_c"], design_return_c=ctx["design_return_c"],
                                 design_flow_m3h=ctx["design_flow_m3h"], design_outdoor_c=ctx["design_outdoor_temp_c"],
                                 thresholds=thresholds, hours=hours)
    zone = ZoneInfo(get_settings().timezone)
    today = now.astimezone(zone).date()
    last_day = today - dt.timedelta(days=1)
    if season_start is None:
        pol = default_table().resolve(ctx["region_code"], last_day)
        season = pol.season.season_of(last_day)
        season_start = season[0] if season else last_day

    def rates(a, b):
        rows = Q.substation_compliance_counts(conn, substation_id, a, b)
        total: dict[str, int] = {}
        by_class: dict[str, dict[str, int]] = {}
        for r in rows:
            total[r["status"]] = total.get(r["status"], 0) + r["n"]
            by_class.setdefault(r["placement_class"], {})[r["status"]] = r["n"]
        return {"from": a.isoformat(), "to": b.isoformat(), **compliance_rate(total),
                "by_placement_class": {k: compliance_rate(v) for k, v in sorted(by_class.items())}}

    return {
        "substation": {"id": ctx["id"], "code": ctx["code"], "name": ctx["name"], "heating_type": ctx["heating_type"],
                       "design_supply_c": ctx["design_supply_c"], "design_return_c": ctx["design_return_c"],
                       "design_flow_m3h": ctx["design_flow_m3h"], "design_outdoor_c": ctx["design_outdoor_temp_c"]},
        "at": now.isoformat(),
        "latest": {"supply_temp_2": sup, "return_temp_2": ret, "delta_t_k": dtk, "flow_2_m3h": flow,
                   "heat_power_kw": power, "outdoor_c": outd, "curve_supply_c": curve,
                   "supply_minus_curve_k": None if curve is None or sup is None else sup - curve},
        "alarms": [asdict(a) for a in alarms],
        "compliance_last_day": rates(last_day, last_day),
        "compliance_season": rates(season_start, last_day),
        "thresholds": asdict(thresholds),
    }


__all__ = ["heat_power_kw", "heating_curve", "HeuristicThresholds", "Alarm", "evaluate_heuristics", "compliance_rate",
           "substation_series", "substation_kpis", "KW_PER_M3H_K", "SERIES_METRICS"]
