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


# --- stoppage days from incident tickets (R25), one query for one household or a batch --------------

@pytest.fixture
def network(fresh_db_url):
    """Two substations: S1 → C1 → buildings B1 (unit U1: h1, h2, 报停 h5) and B2 (U2: h3); S2 → B3 (U3: h4)."""
    import psycopg
    conn = psycopg.connect(fresh_db_url)
    q = conn.execute
    q("INSERT INTO company (code, name, region_code) VALUES ('HD', 'h', 'tianjin')")
    q("INSERT INTO branch (company_id, code, name) VALUES (1, 'B', 'b')")
    q("INSERT INTO substation (branch_id, code, name) VALUES (1, 'S1', 's1'), (1, 'S2', 's2')")
    q("INSERT INTO community (substation_id, code, name) VALUES (1, 'C1', 'c1'), (2, 'C2', 'c2')")
    q("INSERT INTO building (community_id, code, name) VALUES (1, 'B1', 'b1'), (1, 'B2', 'b2'), (2, 'B3', 'b3')")
    q("INSERT INTO unit (building_id, code, name) VALUES (1, 'U1', 'u1'), (2, 'U2', 'u2'), (3, 'U3', 'u3')")
    ids = {}
    for code, unit, status in [("h1", 1, "active"), ("h2", 1, "active"), ("h3", 2, "active"), ("h4", 3, "active"),
                               ("h5", 1, "stopped")]:
        ids[code] = q("""INSERT INTO household (unit_id, code, area_m2, heating_status) VALUES (%s, %s, 100, %s)
                         RETURNING id""", (unit, code, status)).fetchone()[0]
    n = 0
    for link, status, reported, closed in [
            (("household_id", ids["h2"]), "closed", "2026-01-05 10:00+08", "2026-01-05 18:00+08"),
            (("unit_id", 1), "closed", "2026-01-10 23:30+08", "2026-01-11 01:00+08"),     # two local days
            (("building_id", 2), "closed", "2026-01-12 08:00+08", "2026-01-12 20:00+08"),
            (("substation_id", 1), "dispatched", "2026-01-14 08:00+08", None),            # still open
            (("substation_id", 2), "cancelled", "2026-01-03 08:00+08", "2026-01-03 09:00+08"),  # never happened
            (("substation_id", 2), "closed", "2025-12-01 08:00+08", "2025-12-02 09:00+08")]:   # before the window
        n += 1
        q(f"""INSERT INTO ticket (no, type, channel, status, {link[0]}, reported_at, closed_at)
              VALUES (%s, 'incident', 'auto', %s, %s, %s, %s)""", (f"INC-{n}", status, link[1], reported, closed))
    conn.commit()
    yield conn, ids
    conn.close()


def test_stoppage_days_from_incidents_by_network_link_in_one_batch(network):
    from analytics.refund import stoppage_for_households
    conn, ids = network
    got = stoppage_for_households(conn, list(ids.values()), dt.date(2026, 1, 1), dt.date(2026, 1, 15))
    days = {code: sorted(got.get(hid, {})) for code, hid in ids.items()}
    d = lambda n: dt.date(2026, 1, n)          # noqa: E731
    assert days == {"h1": [d(10), d(11), d(14), d(15)],                # unit, then the open substation outage
                    "h2": [d(5), d(10), d(11), d(14), d(15)],          # + its own household-level incident
                    "h3": [d(12), d(14), d(15)],                       # building B2, substation S1
                    "h4": [],                                          # cancelled / outside the window
                    "h5": []}                                          # 报停: expects no heat (R29)
    assert all(m == 1.0 for per in got.values() for m in per.values())
    # the single household is the batch of one: same days
    assert stoppage_for_households(conn, [ids["h2"]], dt.date(2026, 1, 1), dt.date(2026, 1, 15)) == \
        {ids["h2"]: got[ids["h2"]]}


def test_refund_for_household_refunds_stoppage_days_up_to_as_of(network):
    from analytics.refund import refund_for_household
    conn, ids = network
    # Tianjin 2025-2026: 121 statutory days; 2420 元 → 20.00 元/day; a stoppage day refunds the whole day (R25)
    st = refund_for_household(conn, ids["h1"], 2025, season_fee=2420.0, as_of=dt.date(2026, 1, 15))
    assert [(ln.day, ln.basis, ln.amount) for ln in st.lines] == \
        [(dt.date(2026, 1, n), "stoppage", 20.0) for n in (10, 11, 14, 15)]
    assert st.total == 80.0
