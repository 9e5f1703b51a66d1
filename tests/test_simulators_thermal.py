"""Outdoor model and the coupled substation ↔ household thermal model."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import numpy as np
import pytest

from simulators.city import generate_city
from simulators.scenario import ResolvedScenario, parse_scenario
from simulators.thermal import ThermalModel
from simulators.weather import ColdSnap, OutdoorModel

TZ8 = timezone(timedelta(hours=8))
T0 = datetime(2026, 12, 15, tzinfo=TZ8).timestamp()
H = 3600.0


@pytest.fixture(scope="module")
def city():
    return generate_city(7, 240)


def _idx(model: ThermalModel, code: str, active_only: bool = True) -> np.ndarray:
    sel = model.h_sub == model.sub_codes.index(code)
    return sel & model.active if active_only else sel


# --- outdoor -----------------------------------------------------------------------------------

def test_outdoor_is_a_tianjin_winter_and_deterministic():
    m = OutdoorModel(7)
    means = np.array([x for _, x in m.daily_means(date(2026, 12, 1), date(2027, 2, 28))])
    assert -12 < means.min() and means.max() < 10
    assert -5 < means.mean() < 2                      # Tianjin Dec–Feb normal ≈ −2 ℃
    t = np.arange(T0, T0 + 86400, 600.0)
    assert np.array_equal(OutdoorModel(7).temperature(t), m.temperature(t))
    assert not np.array_equal(OutdoorModel(8).temperature(t), m.temperature(t))
    hour = ((t + 8 * 3600) % 86400) / 3600
    d = m.diurnal(t)
    assert 12 <= hour[d.argmax()] <= 16 and (hour[d.argmin()] <= 4 or hour[d.argmin()] >= 22)


def test_cold_snap_pulls_the_daily_mean_to_its_target():
    start = T0 + 86400
    m = OutdoorModel(7, cold_snaps=[ColdSnap(start, start + 3 * 86400, -25.0)])
    inside = datetime.fromtimestamp(start + 86400, TZ8).date() + timedelta(days=0)
    assert m.daily_mean(inside) == pytest.approx(-25.0, abs=0.6)
    before = datetime.fromtimestamp(start - 2 * 86400, TZ8).date()
    assert m.daily_mean(before) == OutdoorModel(7).daily_mean(before)


# --- steady operation --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def steady(city):
    model = ThermalModel(city, OutdoorModel(7))
    model.reset(T0)
    return model


def test_normal_operation_keeps_rooms_between_19_and_23(steady):
    t = steady.T[steady.active]
    assert t.min() >= 19.0 and t.max() <= 23.5
    assert 20.5 <= t.mean() <= 22.0
    stopped = steady.T[~steady.active]
    assert stopped.size and 8.0 <= stopped.min() and stopped.max() <= 16.0      # 报停: cool, kept up by neighbours


def test_unfavourable_placements_run_cooler(steady, city):
    by = {}
    for h, x in zip(city.households, steady.T):
        if h.heating_status == "active":
            by.setdefault(h.placement_class, []).append(x)
    assert np.mean(by["top_floor"]) < np.mean(by["normal"]) - 0.5              # R17: why sensors go there
    assert np.mean(by["gable_end"]) < np.mean(by["normal"])


def test_substation_points_are_physically_consistent(steady):
    for code in steady.sub_codes:
        v = steady.substation_values(code)
        assert v["pump_status"] == 1.0 and v["flow_2"] > 0
        # R47: P ≈ 1.163 × V̇ × ΔT
        assert v["heat_power"] == pytest.approx(1.163 * v["flow_2"] * (v["supply_temp_2"] - v["return_temp_2"]),
                                                rel=0.01)
        assert v["supply_temp_2"] > v["return_temp_2"] > 20
        assert v["supply_temp_1"] > v["supply_temp_2"] and v["return_temp_1"] > v["return_temp_2"]
    s04 = steady.substation_values("S04")                                    # floor heating, R45
    assert s04["supply_temp_2"] <= 55 and s04["supply_temp_2"] - s04["return_temp_2"] <= 12
    s01 = steady.substation_values("S01")
    assert s01["supply_temp_2"] - s01["return_temp_2"] >= 15


def test_heating_curve_rises_as_it_gets_colder_and_is_capped(steady):
    curves = np.array([steady.curve(to) for to in (10.0, 0.0, -7.0, -15.0, -30.0)])
    assert np.all(np.diff(curves, axis=0) >= 0)
    radiator = [steady.sub_codes.index(c) for c in ("S01", "S02", "S03")]
    assert np.all(curves[2, radiator] == pytest.approx(75.0, abs=1.6))        # design point (± curve shift)
    assert np.all(curves[-1, radiator] == 85.0)                                 # R45 cap
    assert curves[-1, steady.sub_codes.index("S04")] == 55.0


def test_deterministic_for_a_seed(city):
    a, b = ThermalModel(city, OutdoorModel(7)), ThermalModel(city, OutdoorModel(7))
    a.reset(T0)
    b.reset(T0)
    a.advance_to(T0 + 12 * H)
    b.advance_to(T0 + 5 * H)
    b.advance_to(T0 + 12 * H)                     # stepping in other chunks gives the same result
    assert np.allclose(a.T, b.T, atol=1e-9)
    assert np.array_equal(a.room_readings(T0 + 12 * H), b.room_readings(T0 + 12 * H))


# --- pump failure ------------------------------------------------------------------------------

def test_pump_failure_cools_exactly_the_affected_substation_and_recovers(city):
    scenario = parse_scenario({"name": "pf", "faults": [
        {"kind": "pump_failure", "at": "6h", "duration": "8h", "targets": {"substations": ["S02"]}}]})
    sc = ResolvedScenario(scenario, T0)
    model = ThermalModel(city, OutdoorModel(7), pump_on=sc.pump_on)
    base = ThermalModel(city, OutdoorModel(7))
    model.reset(T0)
    base.reset(T0)
    s02, others = _idx(model, "S02"), model.active & ~_idx(model, "S02", active_only=False)

    model.advance_to(T0 + 6 * H + 1800)
    v = model.substation_values("S02")
    assert v["pump_status"] == 0.0 and v["flow_2"] < 0.05 * model.s_flow_design[1]
    assert model.substation_values("S01")["pump_status"] == 1.0

    model.advance_to(T0 + 10 * H)                 # 4 h into the failure: every S02 flat below 18 ℃
    assert model.T[s02].max() < 18.0
    assert model.substation_values("S02")["supply_temp_2"] < 30.0          # supply collapsed
    assert model.T[others].min() >= 18.0

    model.advance_to(T0 + 14 * H)                 # end of the failure
    assert model.T[s02].max() < 18.0
    assert model.T[others].min() >= 18.0
    base.advance_to(T0 + 14 * H)
    assert np.allclose(model.T[others], base.T[others], atol=0.05)         # others untouched

    model.advance_to(T0 + 17 * H)                 # pump back: supply back on the curve, rooms warming
    v = model.substation_values("S02")
    assert v["pump_status"] == 1.0 and v["supply_temp_2"] > 60
    warm = model.T[s02].copy()
    model.advance_to(T0 + 62 * H)                 # 2 days later: recovered
    base.advance_to(T0 + 62 * H)
    assert model.T[s02].mean() > warm.mean() + 2
    assert model.T[s02].min() >= 18.0
    assert np.allclose(model.T[s02], base.T[s02], atol=0.5)
