"""Refund statements (R13, R22–R25) by tables of hand-computed cases."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from analytics.policy import resolve_policy
from analytics.refund import refund_statement

TJ = resolve_policy("tianjin", dt.date(2026, 1, 10))      # room rule (相应部位), shortfall tiers
HLJ = resolve_policy("heilongjiang", dt.date(2026, 1, 10))
XA = resolve_policy("xian", dt.date(2026, 1, 10))
DAY = dt.date(2026, 1, 10)


def rows(living_status="non_compliant", living_ratio=0.10, bed_status="compliant", bed_ratio=0.0, stat=17.5):
    return [{"day": DAY, "room_code": "living", "room_id": 1, "status": living_status, "stat_c": stat,
             "refund_ratio": living_ratio, "room_area_m2": 20.0},
            {"day": DAY, "room_code": "bed1", "room_id": 2, "status": bed_status, "stat_c": 19.0,
             "refund_ratio": bed_ratio, "room_area_m2": 12.0}]


def tj(**kw):
    args = dict(household_id=1, policy=TJ, season_start=dt.date(2025, 11, 15), season_end=dt.date(2026, 3, 15),
                season_fee=2000.0, room_days=rows(), household_area_m2=80.0)
    args.update(kw)
    return refund_statement(**args)


@pytest.mark.parametrize("kwargs, total, basis", [
    # not confirmed and IoT does not count (R13) → nothing
    ({}, 0.0, None),
    # confirmed, IoT tier: 0.10 × 20/80 × 2000/121 = 0.4132 → 0.41
    ({"confirmed": {DAY}}, 0.41, "confirmed_iot"),
    # confirmed measurement 15.5 ℃: shortfall 2.5 K → 50 % × 20/80 × 16.5289 = 2.0661 → 2.07
    ({"confirmed": {DAY: 15.5}}, 2.07, "confirmed_measurement"),
    # confirmed measurement at 18.0 ℃ is compliant → nothing
    ({"confirmed": {DAY: 18.0}}, 0.0, None),
    # IoT allowed by contract: same as confirmed IoT
    ({"policy": dataclasses.replace(TJ, iot_counts_for_refund=True)}, 0.41, "iot"),
    # both rooms non-compliant (10 % each): (20 + 12)/80 × 0.10 × 16.5289 = 0.6612 → 0.66
    ({"confirmed": {DAY}, "room_days": rows(bed_status="non_compliant", bed_ratio=0.10)}, 0.66, "confirmed_iot"),
    # stoppage the same day: whole-day fee 16.53 beats the temperature refund, never both (R24)
    ({"confirmed": {DAY}, "stoppage": {DAY: 1.0}}, 16.53, "stoppage"),
    # Yinchuan-style double refund for stopped days (R25): 2 × 16.5289 = 33.06
    ({"stoppage": {DAY: 2.0}}, 33.06, "stoppage"),
])
def test_tianjin_refund(kwargs, total, basis):
    st = tj(**kwargs)
    assert st.statutory_days == 121 and st.daily_fee == pytest.approx(2000 / 121, abs=1e-6)
    assert st.total == pytest.approx(total)
    assert [ln.basis for ln in st.lines] == ([basis] if basis else [])


def test_heilongjiang_household_rule_and_season():
    # 10/20–4/20 = 183 days; fee 3660 → 20 元/day; confirmed 17.5 ℃ → 16 ≤ T < 18 → 30 % → 6.00
    st = refund_statement(household_id=1, policy=HLJ, season_start=dt.date(2025, 10, 20),
                          season_end=dt.date(2026, 4, 20), season_fee=3660.0, room_days=rows(living_ratio=0.3),
                          household_area_m2=80.0, confirmed={DAY: 17.5})
    assert st.statutory_days == 183 and st.daily_fee == pytest.approx(20.0)
    assert st.total == pytest.approx(6.0) and st.lines[0].area_factor == 1.0


def test_xian_deducts_base_fee_and_has_deadline():
    # (2000 − 600)/121 = 11.5702/day; confirmed 15.0 ℃ → 50 % → 5.79; pay by 2026-06-30 (R23)
    st = refund_statement(household_id=1, policy=XA, season_start=dt.date(2025, 11, 15),
                          season_end=dt.date(2026, 3, 15), season_fee=2000.0, base_fee=600.0,
                          room_days=rows(living_ratio=0.5), household_area_m2=80.0, confirmed={DAY: 15.0})
    assert st.base_amount == 1400.0 and st.total == pytest.approx(5.79)
    assert st.deadline == dt.date(2026, 6, 30)


def test_metered_part_needs_the_metered_fee():
    pol = dataclasses.replace(TJ, refund_base="metered_part")
    with pytest.raises(ValueError, match="metered_fee"):
        tj(policy=pol)
    assert tj(policy=pol, metered_fee=1210.0, confirmed={DAY}).daily_fee == pytest.approx(10.0)
