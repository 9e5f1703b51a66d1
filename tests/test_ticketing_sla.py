"""SLA clocks with a frozen clock: pauses, season boundaries, working-hour calendars, escalation,
reopening (二次派单), and the R27 refund trigger clock. Pure: no database except the last test."""
from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from ticketing.policy import policy_for
from ticketing.sla import clock_limits, refund_clock, ticket_clocks

TZ = ZoneInfo("Asia/Shanghai")


def L(s: str) -> datetime:
    """Local Asia/Shanghai time from 'YYYY-MM-DD HH:MM'."""
    return datetime.fromisoformat(s).replace(tzinfo=TZ)


def POL(region="tianjin", day=date(2026, 12, 10)):
    return policy_for(region, "HD", day)


def ev(at, action, **data):
    return {"at": at, "action": action, "data": data}


def clock(states, name):
    return next(s for s in states if s.name == name)


@pytest.mark.parametrize("ttype,category,reported,expected", [
    ("repair", "leak", "2026-12-10 10:00", {"ack": 10, "arrive": 30, "resolve": 24 * 60}),
    # R26: no-heat 2 h, but 5 h in the first 10 days of the season (season starts 11-15 in Tianjin)
    ("repair", "no_heat", "2026-11-18 10:00", {"ack": 15, "arrive": 5 * 60, "resolve": 24 * 60}),
    ("repair", "no_heat", "2026-11-24 23:59", {"ack": 15, "arrive": 5 * 60, "resolve": 24 * 60}),
    ("repair", "no_heat", "2026-11-25 00:00", {"ack": 15, "arrive": 2 * 60, "resolve": 24 * 60}),
    ("repair", None, "2026-12-10 10:00", {"ack": 30, "arrive": 4 * 60, "resolve": 48 * 60}),
    ("temp_test", None, "2026-12-10 10:00", {"ack": 30, "arrive": 24 * 60, "resolve": 24 * 60}),
    ("complaint", None, "2026-12-10 10:00", {"ack": 60, "reply": 3 * 24 * 60}),
    # off season, working-hours calendar: 3 days = 3 working days of 9 h
    ("complaint", None, "2026-05-08 16:30", {"ack": 60, "reply": 3 * 9 * 60}),
    ("incident", None, "2026-12-10 10:00", {"ack": 15, "arrive": 60, "resolve": 48 * 60}),
])
def test_clock_matrix(ttype, category, reported, expected):
    limits = clock_limits(ttype, category, L(reported), POL(day=L(reported).date()))
    assert {k: v.total_seconds() / 60 for k, v in limits.items()} == expected


def _ticket(ttype, reported, category=None, **kw):
    return {"type": ttype, "category": category, "reported_at": L(reported), "channel": "phone", **kw}


CASES = [
    # name, ticket, events, now, clock, status, due, elapsed_minutes, level
    ("leak arrived in time", _ticket("repair", "2026-12-10 10:00", "leak"),
     [ev(L("2026-12-10 10:05"), "dispatch"), ev(L("2026-12-10 10:25"), "arrive")],
     "2026-12-10 12:00", "arrive", "met", "2026-12-10 10:30", 25, None),
    ("leak late arrival is a breach", _ticket("repair", "2026-12-10 10:00", "leak"),
     [ev(L("2026-12-10 10:40"), "arrive")], "2026-12-10 12:00", "arrive", "breached", "2026-12-10 10:30", 40,
     "team_lead"),
    ("a later arrival escalated further", _ticket("repair", "2026-12-10 10:00", "leak"),
     [ev(L("2026-12-10 10:45"), "arrive")], "2026-12-10 12:00", "arrive", "breached", "2026-12-10 10:30", 45,
     "station_head"),
    ("running below warn share", _ticket("repair", "2026-12-10 10:00"), [], "2026-12-10 13:00",
     "arrive", "running", "2026-12-10 14:00", 180, None),
    ("warning at 80 %", _ticket("repair", "2026-12-10 10:00"), [], "2026-12-10 13:12", "arrive", "warning",
     "2026-12-10 14:00", 192, None),
    ("breach escalates to team lead", _ticket("repair", "2026-12-10 10:00"), [], "2026-12-10 14:00",
     "arrive", "breached", "2026-12-10 14:00", 240, "team_lead"),
    ("150 % → station head", _ticket("repair", "2026-12-10 10:00"), [], "2026-12-10 16:00",
     "arrive", "breached", "2026-12-10 14:00", 360, "station_head"),
    ("200 % → service centre", _ticket("repair", "2026-12-10 10:00"), [], "2026-12-10 18:30",
     "arrive", "breached", "2026-12-10 14:00", 510, "service_center"),
    # customer absent 6 h: the 24 h 测温 clock stops, so at 28 h it has used 22 h
    ("pause stops the clock", _ticket("temp_test", "2026-12-10 10:00"),
     [ev(L("2026-12-10 20:00"), "pause", code="customer_absent"), ev(L("2026-12-11 02:00"), "resume")],
     "2026-12-11 14:00", "arrive", "warning", "2026-12-11 16:00", 22 * 60, None),
    ("open pause: paused, due unknown", _ticket("temp_test", "2026-12-10 10:00"),
     [ev(L("2026-12-10 20:00"), "pause", code="entry_refused")],
     "2026-12-11 14:00", "arrive", "paused", None, 10 * 60, None),
    ("two pauses", _ticket("repair", "2026-12-10 10:00"),
     [ev(L("2026-12-10 11:00"), "pause", code="customer_absent"), ev(L("2026-12-10 12:00"), "resume"),
      ev(L("2026-12-10 13:00"), "pause", code="entry_refused"), ev(L("2026-12-10 13:30"), "resume"),
      ev(L("2026-12-10 15:00"), "arrive")],
     "2026-12-10 16:00", "arrive", "met", "2026-12-10 15:30", 210, None),
    # off season: Friday 16:30 + 27 working hours → Wednesday 16:30 (weekend not counted)
    ("off-season working days", _ticket("complaint", "2026-05-08 16:30"), [],
     "2026-05-11 09:30", "reply", "running", "2026-05-13 16:30", 120, None),
    ("reply via resolve meets the reply clock", _ticket("complaint", "2026-05-08 16:30"),
     [ev(L("2026-05-11 10:00"), "resolve")], "2026-05-20 10:00", "reply", "met", "2026-05-13 16:30", 150, None),
    # season end boundary: last season day runs 24 h, then off-season working hours (Mon 8:30–17:30)
    ("across the season end", _ticket("repair", "2026-03-15 16:00", "no_heat"), [],
     "2026-03-17 09:00", "resolve", "running", "2026-03-17 15:30", 8 * 60 + 9 * 60 + 30, None),
    # season start boundary: reported on a Saturday off season, the clock starts at 11-15 00:00
    ("across the season start", _ticket("repair", "2026-11-14 17:00", "no_heat"), [],
     "2026-11-15 01:00", "arrive", "running", "2026-11-15 02:00", 60, None),
    # a dissatisfied 回访 restarts arrive/resolve from the reopening; ack stays met
    ("reopen restarts arrive", _ticket("repair", "2026-12-10 10:00"),
     [ev(L("2026-12-10 10:10"), "dispatch"), ev(L("2026-12-10 11:00"), "arrive"), ev(L("2026-12-10 12:00"), "resolve"),
      ev(L("2026-12-11 09:00"), "revisit_dissatisfied", satisfaction=1)],
     "2026-12-11 12:00", "arrive", "running", "2026-12-11 13:00", 180, None),
    ("cancel stops the clocks", _ticket("repair", "2026-12-10 10:00"),
     [ev(L("2026-12-10 11:00"), "cancel", reason="用户撤回")], "2026-12-10 20:00", "arrive", "stopped",
     "2026-12-10 14:00", 60, None),
]


@pytest.mark.parametrize("name,ticket,events,now,name_clock,status,due,elapsed_min,level", CASES,
                         ids=[c[0] for c in CASES])
def test_clock_states(name, ticket, events, now, name_clock, status, due, elapsed_min, level):
    pol = POL(day=ticket["reported_at"].date())
    st = clock(ticket_clocks(ticket, events, pol, L(now), TZ), name_clock)
    assert st.status == status
    assert st.due_at == (L(due) if due else None)
    assert st.elapsed == timedelta(minutes=elapsed_min)
    assert st.level == level


def test_ack_stays_met_after_reopen():
    t = _ticket("repair", "2026-12-10 10:00")
    events = [ev(L("2026-12-10 10:10"), "dispatch"), ev(L("2026-12-10 12:00"), "resolve"),
              ev(L("2026-12-11 09:00"), "revisit_dissatisfied", satisfaction=1)]
    st = clock(ticket_clocks(t, events, POL(), L("2026-12-12 09:00"), TZ), "ack")
    assert st.status == "met" and st.elapsed == timedelta(minutes=10)


@pytest.mark.parametrize("region,resolved,now,trigger,triggered,days_from", [
    ("tianjin", None, "2026-12-11 10:00", "2026-12-11 10:00", True, "report"),        # 24 h
    ("tianjin", "2026-12-11 09:00", "2026-12-12 10:00", "2026-12-11 10:00", False, "report"),
    ("tianjin", None, "2026-12-11 09:59", "2026-12-11 10:00", False, "report"),
    ("luoyang", None, "2026-12-11 10:00", "2026-12-12 10:00", False, "test"),         # 48 h
    ("luoyang", "2026-12-12 11:00", "2026-12-13 10:00", "2026-12-12 10:00", True, "test"),
])
def test_refund_clock_starts_at_report(region, resolved, now, trigger, triggered, days_from):
    t = _ticket("complaint", "2026-12-10 10:00", "low_temp", low_temperature=True,
                resolved_at=L(resolved) if resolved else None)
    rc = refund_clock(t, POL(region), L(now))
    assert rc.started_at == L("2026-12-10 10:00") and rc.trigger_at == L(trigger)
    assert rc.triggered is triggered and rc.days_from == days_from


def test_refund_clock_only_for_customer_low_temperature():
    assert refund_clock(_ticket("inquiry", "2026-12-10 10:00"), POL(), L("2026-12-12 10:00")) is None
    auto = _ticket("temp_test", "2026-12-10 10:00") | {"channel": "auto"}
    assert refund_clock(auto, POL(), L("2026-12-12 10:00")) is None
    assert refund_clock(_ticket("temp_test", "2026-12-10 10:00"), POL(), L("2026-12-12 10:00")) is not None


@pytest.mark.parametrize("region", [None, "tianjin", "luoyang", "ningxia", "weihai"])
def test_every_level_the_checker_can_raise_has_recipients(region):
    """warning, breach and every rung of the ladder name who hears about them (ticketing.notifications)."""
    from ticketing.policy import sla_notify_levels

    pol = policy_for(region, "HD", date(2026, 12, 10))
    levels = sla_notify_levels(pol)
    assert list(levels) == ["warning", "breach"] + [s["level"] for s in pol["sla"]["escalation"]]
    assert levels["warning"].to == ("assignee",)
    assert levels["breach"].to == ("assignee", "station:team_lead")
    assert {lv: levels[lv].to for lv in ("team_lead", "station_head", "service_center")} == {
        "team_lead": ("station:team_lead",), "station_head": ("station:station_head",),
        "service_center": ("company:supervisor",)}
