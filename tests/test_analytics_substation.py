"""Substation physics and R48 heuristics (tables), diagnosis (tables), KPIs through the database."""
from __future__ import annotations

import datetime as dt

import numpy as np
import psycopg
import pytest

from analytics.diagnosis import Neighbour, diagnose, diagnose_household
from analytics.job import run_compliance
from analytics.substation import compliance_rate, evaluate_heuristics, heat_power_kw, heating_curve, substation_kpis
from tests.test_analytics_support import add_household, add_substation_sensor, day_series, local, make_site, write_series


@pytest.mark.parametrize("flow, sup, ret, kw", [(40.0, 70.0, 50.0, 930.4), (10.0, 45.0, 40.0, 58.15), (0.0, 70, 50, 0.0)])
def test_heat_power(flow, sup, ret, kw):
    assert heat_power_kw(flow, sup, ret) == pytest.approx(kw)


def test_density_correction_lowers_power_at_80c():
    assert heat_power_kw(10, 90, 80, density_correction=True) == pytest.approx(116.3 * 0.9718, rel=2e-3)


@pytest.mark.parametrize("outdoor, supply", [(-7.0, 75.0), (18.0, 18.0), (25.0, 18.0), (-2.0, 63.6), (5.5, 46.5)])
def test_heating_curve_linear(outdoor, supply):
    # T_s = 18 + (75 − 18) × (18 − t_o)/(18 + 7)
    assert heating_curve(outdoor, 75.0, -7.0) == pytest.approx(supply)


N = 8
H = np.arange(N, dtype=float)


def series(**kw):
    base = {"supply_temp_2": np.full(N, 64.0), "return_temp_2": np.full(N, 44.0), "flow_2": np.full(N, 30.0),
            "outdoor_temp": np.full(N, -2.0), "return_temp_1": np.full(N, 45.0),
            "supply_pressure_2": np.full(N, 0.45), "makeup_flow": np.full(N, 0.1), "pump_status": np.ones(N)}
    base.update(kw)
    return base


@pytest.mark.parametrize("kw, codes", [
    ({}, []),
    ({"supply_temp_2": np.full(N, 52.0), "return_temp_2": np.full(N, 46.0), "flow_2": np.full(N, 45.0)},
     ["large_flow_small_dt", "supply_below_curve"]),          # ΔT 6 K < 0.45 × 25 with flow ≥ 40; 52 < 63.6 − 5
    ({"return_temp_2": np.full(N, 56.0), "flow_2": np.full(N, 20.0)}, []),   # small ΔT but low flow: not R48.1
    ({"return_temp_1": np.full(N, 65.0)}, ["primary_return_high"]),
    ({"supply_pressure_2": 0.45 - 0.08 * H}, ["pressure_drop"]),
    ({"makeup_flow": np.full(N, 2.5)}, ["makeup_surge"]),
    ({"pump_status": np.array([1, 0, 0, 0, 0, 0, 0, 0], dtype=float)}, ["pump_off"]),
    ({"supply_temp_2": np.array([50, 50, 50, 64, 64, 64, 64, 64], dtype=float)}, []),   # not sustained (3/8)
    ({"supply_temp_2": np.full(N, np.nan), "return_temp_2": np.full(N, np.nan)}, []),    # no data, no alarm
])
def test_r48_heuristics(kw, codes):
    alarms = evaluate_heuristics(series(**kw), design_supply_c=75.0, design_return_c=50.0, design_flow_m3h=40.0,
                                 design_outdoor_c=-7.0, hours=H)
    assert [a.code for a in alarms] == codes
    for a in alarms:
        assert a.message_zh and a.message_en and a.rule.startswith("R48")


def test_compliance_rate_r20():
    r = compliance_rate({"compliant": 8, "non_compliant": 2, "unknown": 3, "exempt": 1})
    assert r["rate"] == pytest.approx(0.8) and r["unknown"] == 3 and r["household_days"] == 14
    assert compliance_rate({"unknown": 4})["rate"] is None


def nb(*temps, stopped=False):
    return [Neighbour(i + 100, t, stopped) for i, t in enumerate(temps)]


SUB_OK = dict(supply_c=64.0, return_c=44.0, outdoor_c=-2.0, design_supply_c=75.0, design_outdoor_c=-7.0,
              pump_running_share=1.0)


@pytest.mark.parametrize("hh, stopped, neighbours, sub, blame, suggestion, suspected", [
    (16.0, False, nb(20, 20.5, 19.8), dict(SUB_OK, supply_c=50.0), "substation", "substation_repair", False),
    (16.0, False, nb(20, 20.5, 19.8), dict(SUB_OK, pump_running_share=0.1), "substation", "substation_repair", False),
    (16.0, False, nb(16.5, 17.0, 20.0, 17.2), SUB_OK, "building", "building_balance", False),
    (16.0, False, nb(20.0, 20.5, 19.8, 20.1), SUB_OK, "household", "temp_test_visit", False),
    (16.0, False, nb(20.0), SUB_OK, "unknown", "temp_test_visit", False),
    (19.0, False, nb(20.0, 20.5), SUB_OK, "none", "none", False),
    (None, False, nb(20.0, 20.5), SUB_OK, "unknown", "check_sensor", False),
    (19.2, True, nb(20.0, 20.5, 19.8), SUB_OK, "none", "none", True),      # 报停 but warm like neighbours
    (12.5, True, nb(20.0, 20.5, 19.8), SUB_OK, "none", "none", False),     # 报停 and cold: as expected
])
def test_diagnosis_table(hh, stopped, neighbours, sub, blame, suggestion, suspected):
    f = diagnose(household_mean_c=hh, threshold_c=18.0, stopped=stopped, neighbours=neighbours, **sub)
    assert (f.blame, f.suggestion, f.suspected_unauthorised_heating) == (blame, suggestion, suspected)
    assert f.text_zh and f.text_en and f.reasons
    if blame == "household":
        assert "测温" in f.text_zh and f.evidence["neighbours_mean_c"] == pytest.approx(20.1)


def test_stopped_household_tracking_neighbours_is_flagged():
    x = np.sin(np.arange(24) / 24 * 2 * np.pi)
    f = diagnose(household_mean_c=16.5, threshold_c=18.0, stopped=True, neighbours=nb(20.5, 20.0, 21.0),
                 household_hourly=16.5 + x, neighbours_hourly=20.5 + 0.8 * x, **SUB_OK)
    assert f.suspected_unauthorised_heating and "stopped_household_tracks_neighbours" in f.reasons
    assert f.evidence["correlation_with_neighbours"] == pytest.approx(1.0)


def test_kpis_and_diagnosis_from_database(fresh_db_url):
    d1 = dt.date(2026, 1, 10)
    with psycopg.connect(fresh_db_url) as conn:
        site = make_site(conn)
        for m in ("supply_temp_2", "return_temp_2", "flow_2", "outdoor_temp", "pump_status"):
            add_substation_sensor(conn, site, m)
        codes = ["A", "B", "C", "D"]
        for c in codes:
            add_household(conn, site, c, placement_class="top_floor" if c == "A" else "normal")
        ts = day_series(d1)
        for c in codes:
            t = 16.0 if c == "A" else 20.0
            for room in ("living", "bed1"):
                write_series(conn, site.sensors[(c, room)], ts, t)
        t15 = day_series(d1, 15)
        for m, v in (("supply_temp_2", 64.0), ("return_temp_2", 44.0), ("flow_2", 30.0), ("outdoor_temp", -2.0),
                     ("pump_status", 1.0)):
            write_series(conn, site.sub_sensors[m], t15, v)
        conn.commit()
        run_compliance(conn, d1, d1)
        now = local(d1 + dt.timedelta(days=1), 0)
        k = substation_kpis(conn, site.substation_id, now=now, season_start=d1)
        assert k["latest"]["delta_t_k"] == pytest.approx(20.0)
        assert k["latest"]["heat_power_kw"] == pytest.approx(1.163 * 30 * 20)
        assert k["latest"]["curve_supply_c"] == pytest.approx(63.6)
        assert k["alarms"] == []
        last = k["compliance_last_day"]
        assert (last["compliant"], last["non_compliant"], last["rate"]) == (3, 1, 0.75)
        assert last["by_placement_class"]["top_floor"]["rate"] == 0.0
        assert last["by_placement_class"]["normal"]["rate"] == 1.0
        f = diagnose_household(conn, site.households["A"], now=now)
        assert f.blame == "household" and f.suggestion == "temp_test_visit"
        assert f.evidence["neighbours_mean_c"] == pytest.approx(20.0)
