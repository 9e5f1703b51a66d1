"""Who is to blame for a cold room? A structured finding for the agent on the phone (domain.md R48).

``diagnose`` is pure: it takes the numbers (household and neighbour means, the serving substation's
secondary supply/return, outdoor temperature, pump status) and returns a ``Finding`` with reason
codes, the evidence numbers and zh-CN/English text. ``diagnose_household`` loads those numbers.

Decision order (each step cites its rule):
1. no valid household data → ``unknown`` (suggest checking the thermometer);
2. substation under-supplies (supply below the heating curve, R48.2) or its pump is off → ``substation``;
3. neighbours in the same building also cold (share ≥ ``building_cold_share``) → ``building``
   (riser / balance valves / air, R48.6–R48.7);
4. household cold while neighbours warm and the substation normal → ``household`` (indoor
   installation: air lock, closed valve, blockage, user alteration — R48.5, R10): suggest a 测温 visit;
5. household warm → ``none``.
Independently, a 报停 household whose temperature is close to heated neighbours, or whose hourly
curve tracks theirs, is flagged ``suspected_unauthorised_heating`` (偷热).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field

import numpy as np
import psycopg

from analytics import queries as Q
from analytics.policy import PolicyTable, default_table
from analytics.substation import heating_curve


@dataclass(frozen=True)
class DiagnosisThresholds:
    supply_below_curve_k: float = 5.0       # R48.2
    pump_off_share: float = 0.5
    building_cold_share: float = 0.5        # ≥ half of the neighbours with data are cold → building
    neighbours_warm_share: float = 0.25     # ≤ a quarter cold → neighbours are warm
    min_neighbours: int = 2
    stopped_gap_k: float = 3.0              # 报停 flat within 3 K of heated neighbours …
    stopped_min_c: float = 16.0             # … and at least 16 ℃ (an unheated flat sits lower) …
    stopped_corr: float = 0.8               # … or its hourly curve correlates ≥ 0.8 with theirs


@dataclass
class Neighbour:
    household_id: int
    mean_c: float | None
    stopped: bool = False
    same_unit: bool = True


@dataclass
class Finding:
    blame: str                               # substation | building | household | none | unknown
    reasons: list[str]
    suggestion: str                          # temp_test_visit | substation_repair | building_balance | none | check_sensor
    suspected_unauthorised_heating: bool
    evidence: dict
    text_zh: str
    text_en: str
    rules: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _corr(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    if a is None or b is None:
        return None
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 6 or np.std(a[ok]) < 1e-6 or np.std(b[ok]) < 1e-6:
        return None
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def diagnose(*, household_mean_c: float | None, threshold_c: float, stopped: bool, neighbours: list[Neighbour],
             supply_c: float | None, return_c: float | None, outdoor_c: float | None, design_supply_c: float,
             design_outdoor_c: float | None, pump_running_share: float | None = None,
             household_hourly: np.ndarray | None = None, neighbours_hourly: np.ndarray | None = None,
             thresholds: DiagnosisThresholds = DiagnosisThresholds()) -> Finding:
    """Pure diagnosis from the numbers (℃, K, share 0..1). See the module docstring for the order."""
    th = thresholds
    reasons: list[str] = []
    rules: list[str] = []
    heated = [n for n in neighbours if not n.stopped and n.mean_c is not None]
    cold = [n for n in heated if n.mean_c < threshold_c]
    cold_share = (len(cold) / len(heated)) if heated else None
    nb_mean = float(np.mean([n.mean_c for n in heated])) if heated else None
    curve = None
    if outdoor_c is not None and design_outdoor_c is not None:
        curve = float(heating_curve(outdoor_c, design_supply_c, design_outdoor_c))
    ev = {"household_mean_c": household_mean_c, "threshold_c": threshold_c, "neighbours_with_data": len(heated),
          "neighbours_cold": len(cold), "neighbours_cold_share": cold_share, "neighbours_mean_c": nb_mean,
          "supply_c": supply_c, "return_c": return_c, "delta_t_k": None if supply_c is None or return_c is None
          else supply_c - return_c, "outdoor_c": outdoor_c, "curve_supply_c": curve,
          "pump_running_share": pump_running_share}

    suspected = False
    if stopped and household_mean_c is not None and nb_mean is not None:
        corr = _corr(household_hourly, neighbours_hourly)
        ev["correlation_with_neighbours"] = corr
        close = household_mean_c >= th.stopped_min_c and household_mean_c >= nb_mean - th.stopped_gap_k
        tracks = corr is not None and corr >= th.stopped_corr and household_mean_c >= th.stopped_min_c
        if close or tracks:
            suspected = True
            reasons.append("stopped_household_warm" if close else "stopped_household_tracks_neighbours")
            rules.append("R29")

    sub_low = supply_c is not None and curve is not None and curve - supply_c > th.supply_below_curve_k
    pump_off = pump_running_share is not None and pump_running_share < th.pump_off_share
    hh_cold = household_mean_c is not None and household_mean_c < threshold_c

    if household_mean_c is None:
        blame, suggestion = "unknown", "check_sensor"
        reasons.append("no_household_data")
    elif stopped:
        blame, suggestion = "none", "none"
        reasons.append("household_stopped")
    elif hh_cold and (sub_low or pump_off):
        blame, suggestion = "substation", "substation_repair"
        if sub_low:
            reasons.append("supply_below_heating_curve")
            rules.append("R48.2")
        if pump_off:
            reasons.append("pump_off")
            rules.append("R48")
    elif hh_cold and cold_share is not None and len(heated) >= th.min_neighbours and cold_share >= th.building_cold_share:
        blame, suggestion = "building", "building_balance"
        reasons.append("neighbours_also_cold")
        rules += ["R48.6", "R48.7"]
    elif hh_cold and (cold_share is None or len(heated) < th.min_neighbours):
        blame, suggestion = "unknown", "temp_test_visit"
        reasons.append("too_few_neighbours_with_data")
    elif hh_cold and cold_share <= th.neighbours_warm_share:
        blame, suggestion = "household", "temp_test_visit"
        reasons += ["neighbours_warm", "substation_normal"]
        rules += ["R48.5", "R10"]
    elif hh_cold:
        blame, suggestion = "building", "building_balance"
        reasons.append("some_neighbours_cold")
        rules.append("R48.6")
    else:
        blame, suggestion = "none", "none"
        reasons.append("household_warm")

    text_zh, text_en = _texts(blame, suggestion, ev, suspected)
    return Finding(blame=blame, reasons=reasons, suggestion=suggestion, suspected_unauthorised_heating=suspected,
                   evidence=ev, text_zh=text_zh, text_en=text_en, rules=rules)


def _fmt(x, unit="℃"):
    return "—" if x is None else f"{x:.1f}{unit}"


def _texts(blame: str, suggestion: str, ev: dict, suspected: bool) -> tuple[str, str]:
    h, t = _fmt(ev["household_mean_c"]), _fmt(ev["threshold_c"])
    nb = _fmt(ev["neighbours_mean_c"])
    share = "—" if ev["neighbours_cold_share"] is None else f"{ev['neighbours_cold_share']:.0%}"
    sup, cur = _fmt(ev["supply_c"]), _fmt(ev["curve_supply_c"])
    zh = {
        "substation": f"换热站供热不足：二次供水 {sup}，按室外温度应约 {cur}；本户室温 {h}（标准 {t}）。请转换热站运维处理。",
        "building": f"同楼邻居也偏冷（{share} 的邻户低于 {t}，邻户均温 {nb}），换热站供水正常：疑似楼栋/单元水力失调或立管窝气，请安排楼栋平衡或排气。",
        "household": f"本户室温 {h} 低于 {t}，而邻户均温 {nb}、换热站供水 {sup} 正常：多为户内原因（窝风、阀门关闭、堵塞或私改），建议上门测温。",
        "none": f"本户室温 {h}，未低于标准 {t}。",
        "unknown": f"数据不足以判断（本户 {h}，有数据的邻户不足）：建议上门测温并检查测温设备。",
    }[blame]
    en = {
        "substation": f"Substation under-supplies: secondary supply {sup} vs about {cur} for the outdoor temperature; room {h} (standard {t}). Refer to substation operations.",
        "building": f"Neighbours are cold too ({share} below {t}, mean {nb}) while the substation supplies normally: building/riser imbalance or trapped air; balance or bleed the building.",
        "household": f"Room {h} below {t} while neighbours average {nb} and the substation supplies {sup}: likely an indoor cause (air lock, closed valve, blockage, alteration). Suggest a temperature test visit (测温).",
        "none": f"Room {h} is not below the standard {t}.",
        "unknown": f"Not enough data to decide (room {h}, too few neighbours with data): suggest a temperature test visit and a sensor check.",
    }[blame]
    if suspected:
        zh += f" 注意：该户已报停，但室温 {h} 接近供热邻户（{nb}），疑似私自用热。"
        en += f" Note: the household is stopped (报停) but its room temperature {h} is close to heated neighbours ({nb}): suspected unauthorised heating."
    return zh, en


def diagnose_household(conn: psycopg.Connection, household_id: int, *, now: dt.datetime, window_h: float = 24.0,
                       table: PolicyTable | None = None,
                       thresholds: DiagnosisThresholds = DiagnosisThresholds()) -> Finding:
    """Load the last ``window_h`` hours around a household (same building as neighbours) and diagnose."""
    from analytics.substation import substation_series
    from core.config import get_settings
    from zoneinfo import ZoneInfo

    ctx = Q.household_context(conn, household_id)
    if ctx is None:
        raise LookupError(f"unknown household {household_id}")
    table = table or default_table()
    start = now - dt.timedelta(hours=window_h)
    day = now.astimezone(ZoneInfo(get_settings().timezone)).date()
    policy = table.resolve(ctx["region_code"], day)
    all_hh = [h for h in Q.substation_households(conn, ctx["substation_id"]) if h["building_id"] == ctx["building_id"]]
    ids = [h["id"] for h in all_hh]
    means = Q.household_daily_means(conn, ids, start, now)
    hourly_rows = Q.household_hourly_means(conn, ids, start, now)
    hours = sorted({r[1] for r in hourly_rows})
    hidx = {t: k for k, t in enumerate(hours)}
    hourly = {hid: np.full(len(hours), np.nan) for hid in ids}
    for hid, t, v in hourly_rows:
        hourly[hid][hidx[t]] = v
    neighbours = [Neighbour(h["id"], means.get(h["id"], (None,))[0], h["heating_status"] == "stopped",
                            h["unit_id"] == ctx["unit_id"]) for h in all_hh if h["id"] != household_id]
    heated_ids = [n.household_id for n in neighbours if not n.stopped and n.mean_c is not None]
    nb_hourly = np.nanmean(np.vstack([hourly[i] for i in heated_ids]), axis=0) if heated_ids else None
    _, s = substation_series(conn, ctx["substation_id"], start, now, 900)

    def mean(name):
        a = s.get(name)
        return float(np.nanmean(a)) if a is not None and np.isfinite(a).any() else None

    return diagnose(household_mean_c=means.get(household_id, (None,))[0], threshold_c=policy.compare_c,
                    stopped=ctx["heating_status"] == "stopped", neighbours=neighbours,
                    supply_c=mean("supply_temp_2"), return_c=mean("return_temp_2"), outdoor_c=mean("outdoor_temp"),
                    design_supply_c=ctx["design_supply_c"], design_outdoor_c=ctx["design_outdoor_temp_c"],
                    pump_running_share=mean("pump_status"), household_hourly=hourly.get(household_id),
                    neighbours_hourly=nb_hourly, thresholds=thresholds)


__all__ = ["diagnose", "diagnose_household", "Finding", "Neighbour", "DiagnosisThresholds"]
