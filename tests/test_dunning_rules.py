"""Table tests for the pure dunning rules: tariff, 违约金, the compliance gate, instalments, cut-off
guards, refund offsets, send window and policy validation. Amounts are hand-computed in the ids."""
from __future__ import annotations

import datetime as dt
from dataclasses import replace
from decimal import Decimal as D

import pytest

from dunning import cutoff, gate, instalments
from dunning.job import next_send_time
from dunning.late_fee import compute_late_fee
from dunning.policy import PolicyBook, PolicyError, default_book, season_label, season_year_of
from dunning.refunds import statement_split
from dunning.tariff import season_bill

POL = default_book().resolve("tianjin", "HD")
BJ = default_book().resolve("beijing")
DUE = dt.date(2026, 12, 31)
d = DUE


def day(n: int) -> dt.date:
    return DUE + dt.timedelta(days=n)


# --- tariff (R42, R43, R29) ---------------------------------------------------------------------

@pytest.mark.parametrize("area, segment, method, status, kwh, policy, amount, base", [
    (100, "residential", "area", "active", None, POL, "2500.00", "750.00"),            # 100 × 25
    (88.5, "residential", "area", "active", None, POL, "2212.50", "663.75"),           # 88.5 × 25; base 88.5 × 7.5
    (100, "non_residential", "area", "active", None, POL, "4000.00", "1200.00"),       # 100 × 40
    (100, "residential", "area", "stopped", None, POL, "750.00", "750.00"),            # 30 % of 2500 (R29)
    (100, "residential", "area", "stopped", None, BJ, "1500.00", "1500.00"),           # Beijing 60 % [S22]
    (100, "residential", "two_part_meter", "active", None, POL, "750.00", "750.00"),   # base only, metered later
    (100, "residential", "two_part_meter", "active", 10000, POL, "2050.00", "750.00"), # 750 + 10000 × 0.13
    (100, "non_residential", "two_part_meter", "active", 1000, POL, "1450.00", "1200.00"),  # 1200 + 250
])
def test_season_bill(area, segment, method, status, kwh, policy, amount, base):
    b = season_bill(area_m2=area, segment=segment, billing_method=method, heating_status=status, policy=policy,
                    metered_kwh=kwh)
    assert (b.amount, b.base_amount) == (D(amount), D(base))


@pytest.mark.parametrize("kw", [dict(area_m2=0), dict(segment="villa"), dict(billing_method="magic")])
def test_season_bill_rejects_bad_input(kw):
    args = dict(area_m2=100, segment="residential", billing_method="area", heating_status="active", policy=POL)
    with pytest.raises(ValueError):
        season_bill(**{**args, **kw})


# --- 违约金 (R34–R35) ---------------------------------------------------------------------------

R = D("0.002")


@pytest.mark.parametrize("case, principal, as_of, payments, pauses, cap, grace, amount, accrual, paused", [
    ("not yet due", "2500", day(0), [], [], "1", 0, "0.00", 0, 0),
    ("10 days × 2500 × 2‰ = 50", "2500", day(10), [], [], "1", 0, "50.00", 10, 0),
    ("grace 3 days → 7 days = 35", "2500", day(10), [], [], "1", 3, "35.00", 7, 0),
    ("paid 1000 on D+5: 4×5 + 6×3 = 38", "2500", day(10), [(day(5), D("1000"))], [], "1", 0, "38.00", 10, 0),
    ("paid in full on D+4: 3 × 5 = 15", "2500", day(10), [(day(4), D("2500"))], [], "1", 0, "15.00", 3, 0),
    ("paid before due: 0", "2500", day(30), [(day(-1), D("2500"))], [], "1", 0, "0.00", 0, 0),
    ("hold D+3..D+6 paused: 6 × 5 = 30", "2500", day(10), [], [(day(3), day(6))], "1", 0, "30.00", 6, 4),
    ("open pause from D+8: 7 × 5 = 35", "2500", day(10), [], [(day(8), None)], "1", 0, "35.00", 7, 3),
    ("hardship from before due: 0", "2500", day(40), [], [(day(-90), day(300))], "1", 0, "0.00", 0, 40),
    ("cap 10 %: 400 days would be 2000 → 250", "2500", day(400), [], [], "0.1", 0, "250.00", 400, 0),
    ("never compounding: 100 days = 500 (not 2500 × (1.002^100 − 1) = 553.07)", "2500", day(100), [], [], "1", 0,
     "500.00", 100, 0),
    ("fen rounding: 333.33 × 2‰ × 7 = 4.666662 → 4.67", "333.33", day(7), [], [], "1", 0, "4.67", 7, 0),
])
def test_late_fee_table(case, principal, as_of, payments, pauses, cap, grace, amount, accrual, paused):
    f = compute_late_fee(principal=D(principal), due_date=DUE, as_of=as_of, payments=payments, pauses=pauses,
                         daily_rate=R, cap_ratio=D(cap), grace_days=grace)
    assert (f.amount, f.accrual_days, f.paused_days, f.label) == (D(amount), accrual, paused, "违约金")


# --- the compliance gate ------------------------------------------------------------------------

BASE = gate.Snapshot(household_id=1, account_no="A1", segment="residential", heating_status="active",
                     individually_valved=True, season="2026-2027", due_date=DUE, billed=D("2500.00"),
                     paid=D("0.00"), channels=frozenset({"sms", "letter", "console"}))


def nc(n):
    return tuple(day(-i) for i in range(1, n + 1))


GATE_CASES = [
    # (id, as_of, snapshot changes, action, reasons, step, template)
    ("T-16 nothing due", day(-16), {}, "skip", ("not_due_yet",), None, None),
    ("T-15 friendly", day(-15), {}, "send", ("ladder_step",), "friendly", "dunning.friendly"),
    ("due date notice", day(0), {}, "send", ("ladder_step",), "notice", "dunning.notice"),
    ("paid up", day(0), {"paid": D("2500.00")}, "skip", ("paid_up",), None, None),
    ("confirmed refund covers the rest", day(0), {"paid": D("2400.00"), "refund_amount": D("100.00")},
     "skip", ("paid_up",), None, None),
    ("suspected non-compliance → hold + 测温", day(7), {"non_compliant_days": nc(2)}, "hold",
     ("suspected_non_compliance",), "second", None),
    ("unknown days alone do not hold", day(7), {"unknown_days": nc(3)}, "send", ("ladder_step",), "second",
     "dunning.second"),
    ("unknown days + open complaint → hold", day(7), {"unknown_days": nc(3), "open_low_temp_ticket_ids": (5,)},
     "hold", ("unknown_days_with_complaint", "open_low_temp_complaint"), "second", None),
    ("open outage incident → hold", day(7), {"open_incident_ticket_ids": (9,)}, "hold", ("open_outage_incident",),
     "second", None),
    ("报停 household in an outage incident is still reminded: it expects no heat (R29 base share)", day(7),
     {"open_incident_ticket_ids": (9,), "heating_status": "stopped"}, "send", ("ladder_step",), "second",
     "dunning.second"),
    ("open complaint → hold", day(7), {"open_low_temp_ticket_ids": (5,)}, "hold", ("open_low_temp_complaint",),
     "second", None),
    ("refund dispute → hold", day(7), {"dispute_refs": ("dunning_dispute:1",)}, "hold", ("open_dispute",),
     "second", None),
    ("extreme cold holds the 催缴通知书", day(15), {"extreme_cold_today": True}, "hold", ("extreme_cold",), "formal",
     None),
    ("extreme cold does not hold a plain reminder", day(7), {"extreme_cold_today": True}, "send", ("ladder_step",),
     "second", "dunning.second"),
    ("报停: compliance is moot, base share still reminded", day(7),
     {"heating_status": "stopped", "non_compliant_days": nc(5)}, "send", ("ladder_step",), "second", "dunning.second"),
    ("缓缴 in force", day(7), {"deferral_until": day(20)}, "skip", ("deferred",), "second", None),
    ("缓缴 expired", day(21), {"deferral_until": day(20)}, "send", ("ladder_step",), "formal", "dunning.formal"),
    ("instalment on track", day(7), {"instalment_plan_id": 3, "instalment_on_track": True}, "skip",
     ("instalment_on_track",), "second", None),
    ("instalment missed resumes the ladder", day(7), {"instalment_plan_id": 3, "instalment_on_track": False}, "send",
     ("instalment_missed", "ladder_step"), "second", "dunning.second"),
    ("already sent", day(8), {"sent_steps": {"second": day(7)}, "last_notice_on": day(7)}, "skip",
     ("already_sent",), "second", None),
    ("min interval", day(15), {"sent_steps": {"second": day(12)}, "last_notice_on": day(12)}, "skip",
     ("min_interval",), "formal", None),
    ("hardship: gentle wording", day(7), {"hardship_until": day(300)}, "soften", ("hardship_gentle",), "second",
     "dunning.gentle"),
    ("hardship: no consequence step", day(15), {"hardship_until": day(300)}, "skip", ("hardship_no_consequence",),
     "formal", None),
    ("no address for the step's channels", day(15), {"channels": frozenset({"sms"})}, "hold",
     ("no_contact_channel",), "formal", None),
]


@pytest.mark.parametrize("case, as_of, changes, action, reasons, step, template", GATE_CASES,
                         ids=[c[0] for c in GATE_CASES])
def test_gate_table(case, as_of, changes, action, reasons, step, template):
    dec = gate.decide(replace(BASE, **changes), POL, as_of)
    assert (dec.action, dec.reasons, dec.step, dec.template) == (action, reasons, step, template)


def test_gate_opens_or_links_a_temp_test():
    s = replace(BASE, non_compliant_days=nc(2))
    assert gate.decide(s, POL, day(7)).open_temp_test is True
    linked = gate.decide(replace(s, open_temp_test_ticket_id=42, open_low_temp_ticket_ids=(42,)), POL, day(7))
    assert (linked.open_temp_test, linked.link_ticket_id) == (False, 42)


def test_gate_amounts_refund_and_late_fee():
    s = replace(BASE, paid=D("500.00"), payments=((day(-20), D("500.00")),), refund_amount=D("24.80"))
    dec = gate.decide(s, POL, day(7))
    # asked: 2500 − 24.80 − 500 = 1975.20; 违约金 on (2500 − 24.80 − 500) × 2‰ × 7 = 27.6528 → 27.65
    assert (dec.amount_asked, dec.refund_adjust, dec.late_fee) == (D("1975.20"), D("24.80"), D("27.65"))
    soft = gate.decide(replace(s, hardship_until=day(100)), POL, day(7))
    assert soft.late_fee == D("0.00")


# --- cut-off guards (R36–R37) -------------------------------------------------------------------

READY = replace(BASE, formal_delivered_on=day(16), formal_proof="EMS-1", formal_outbox_id=9,
                sent_steps={"formal": day(15), "staff_call": day(30)}, last_notice_on=day(30))


@pytest.mark.parametrize("case, as_of, changes, failing", [
    ("every condition holds", day(31), {}, set()),
    ("only 14 days after delivery", day(30), {}, {"days_since_formal_delivery"}),
    ("no delivery proof", day(31), {"formal_proof": None}, {"formal_notice_delivered_with_proof"}),
    ("not delivered", day(31), {"formal_delivered_on": None},
     {"formal_notice_delivered_with_proof", "days_since_formal_delivery"}),
    ("not individually valved (would affect neighbours)", day(31), {"individually_valved": False},
     {"individually_valved"}),
    ("hardship", day(31), {"hardship_until": day(200)}, {"no_hardship"}),
    ("open dispute", day(31), {"dispute_refs": ("ticket:3",)}, {"no_open_dispute", "no_compliance_hold"}),
    ("extreme cold", day(31), {"extreme_cold_today": True}, {"no_extreme_cold"}),
    ("already proposed", day(31), {"cutoff_open": True}, {"not_already_proposed"}),
    ("报停", day(31), {"heating_status": "stopped"}, {"heating_active"}),
    ("paid", day(31), {"paid": D("2500.00")}, {"arrears_outstanding"}),
])
def test_cutoff_guards(case, as_of, changes, failing):
    s = replace(READY, **changes)
    checks = cutoff.cutoff_checks(s, gate.decide(s, POL, as_of), POL, as_of)
    assert {k for k, v in checks.items() if not v} == failing
    assert cutoff.is_candidate(checks) == (not failing)


# --- instalments (R32) --------------------------------------------------------------------------

@pytest.mark.parametrize("parts, error", [
    ([(day(0), D("750")), (day(30), D("875")), (day(60), D("875"))], None),
    ([(day(0), D("700")), (day(30), D("900")), (day(60), D("900"))], "first part"),        # 28 % < 30 %
    ([(day(0), D("1250")), (day(30), D("1250"))], "3–6 parts"),
    ([(day(0), D("750")), (day(30), D("875")), (day(60), D("874"))], "sum to"),
    ([(day(0), D("750")), (day(0), D("875")), (day(60), D("875"))], "increasing"),
])
def test_instalment_validation(parts, error):
    if error is None:
        instalments.validate_plan(D("2500"), parts, POL)
    else:
        with pytest.raises(ValueError, match=error):
            instalments.validate_plan(D("2500"), parts, POL)


@pytest.mark.parametrize("paid, as_of, expected", [
    ("750", day(1), True), ("750", day(33), True),       # part 2 due D+30, grace 3 → still fine on D+33
    ("750", day(34), False), ("1625", day(34), True), ("1625", day(64), False), ("2500", day(200), True),
])
def test_instalment_on_track(paid, as_of, expected):
    parts = [(day(0), D("750")), (day(30), D("875")), (day(60), D("875"))]
    assert instalments.on_track(parts, D(paid), as_of, grace_days=3) is expected


# instalment reminders (R32 parts; lead days per region in policy.yaml, DESIGN): part 2 due D+10, 875 元
PLAN = replace(BASE, instalment_plan_id=7, instalment_on_track=True, paid=D("750.00"), instalment_paid=D("750.00"),
               instalment_parts=((1, day(-20), D("750.00")), (2, day(10), D("875.00")), (3, day(40), D("875.00"))))

NOTICE_CASES = [
    # (id, as_of, snapshot changes, expected: None or (seq, kind, action, reasons, channel, unpaid, pay_by))
    ("before the lead window", day(6), {}, None),
    ("3 lead days before the due date", day(7), {}, (2, "due", "send", ("instalment_due",), "sms", "875.00", day(10))),
    ("on the due date", day(10), {}, (2, "due", "send", ("instalment_due",), "sms", "875.00", day(10))),
    ("first grace day: missed, pay by the last grace day", day(11), {},
     (2, "missed", "send", ("instalment_missed",), "sms", "875.00", day(13))),
    ("last grace day", day(13), {}, (2, "missed", "send", ("instalment_missed",), "sms", "875.00", day(13))),
    ("plan broken this run: the ladder takes over", day(14), {"instalment_on_track": False}, None),
    ("no active plan", day(7), {"instalment_plan_id": None, "instalment_on_track": None, "instalment_parts": ()},
     None),
    ("part partly prepaid: the rest is asked", day(7), {"instalment_paid": D("1000.00"), "paid": D("1000.00")},
     (2, "due", "send", ("instalment_due",), "sms", "625.00", day(10))),
    ("part 2 paid early: part 3's window not open", day(10), {"instalment_paid": D("1625.00"), "paid": D("1625.00")},
     None),
    ("part 3's window", day(37), {"instalment_paid": D("1625.00"), "paid": D("1625.00")},
     (3, "due", "send", ("instalment_due",), "sms", "875.00", day(40))),
    ("confirmed refund covers what is owed", day(7), {"refund_amount": D("1750.00")},
     (2, "due", "skip", ("paid_up",), None, "875.00", day(10))),
    ("already sent", day(8), {"instalment_notices_sent": frozenset({(2, "due")})},
     (2, "due", "skip", ("already_sent",), None, "875.00", day(10))),
    ("the due reminder does not stand for the missed notice", day(11),
     {"instalment_notices_sent": frozenset({(2, "due")})},
     (2, "missed", "send", ("instalment_missed",), "sms", "875.00", day(13))),
    ("SMS failed: the next channel with an address", day(8), {"instalment_failed_channels": {(2, "due"): frozenset({"sms"})}},
     (2, "due", "send", ("instalment_due",), "letter", "875.00", day(10))),
    ("no address on the policy's channels", day(8), {"channels": frozenset({"console"})},
     (2, "due", "hold", ("no_contact_channel",), None, "875.00", day(10))),
    ("compliance hold (R13)", day(8), {"non_compliant_days": nc(2)},
     (2, "due", "hold", ("suspected_non_compliance",), None, "875.00", day(10))),
    ("open outage incident (R25)", day(8), {"open_incident_ticket_ids": (9,)},
     (2, "due", "hold", ("open_outage_incident",), None, "875.00", day(10))),
    ("open dispute (R36 guard)", day(8), {"dispute_refs": ("dunning_dispute:1",)},
     (2, "due", "hold", ("open_dispute",), None, "875.00", day(10))),
    ("extreme cold holds only consequence steps: a reminder is not one", day(8), {"extreme_cold_today": True},
     (2, "due", "send", ("instalment_due",), "sms", "875.00", day(10))),
    ("缓缴 in force (R38)", day(8), {"deferral_until": day(20)},
     (2, "due", "skip", ("deferred",), None, "875.00", day(10))),
    ("hardship: the same neutral reminder (no 违约金 in it, R38)", day(8), {"hardship_until": day(300)},
     (2, "due", "send", ("instalment_due",), "sms", "875.00", day(10))),
]


@pytest.mark.parametrize("case, as_of, changes, expected", NOTICE_CASES, ids=[c[0] for c in NOTICE_CASES])
def test_instalment_notice_table(case, as_of, changes, expected):
    n = instalments.notice_for(replace(PLAN, **changes), POL, as_of)
    if expected is None:
        assert n is None
        return
    seq, kind, action, reasons, channel, unpaid, pay_by = expected
    assert (n.seq, n.kind, n.action, n.reasons, n.channel, n.unpaid, n.pay_by) == \
        (seq, kind, action, reasons, channel, D(unpaid), pay_by)
    assert n.template == ({"due": "dunning.instalment_due", "missed": "dunning.instalment_missed"}[kind]
                          if action == "send" else None)
    if action == "send":
        assert n.key == f"instalment:7.{seq}:{kind}:{channel}"


def test_instalment_notice_skips_baoting_when_the_policy_does_not_remind_them():
    pol = default_book().resolve("tianjin", "HD", {"gate": {"remind_stopped": False}})
    n = instalments.notice_for(replace(PLAN, heating_status="stopped"), pol, day(8))
    assert (n.action, n.reasons) == ("skip", ("stopped_no_reminders",))


def test_instalment_notice_windows_follow_the_region_policy():
    data = dict(default_book().data)
    data["regions"] = {**data["regions"], "far": {"code": "far", "instalments": {"reminder_lead_days": 7,
                                                                                  "grace_days": 0}}}
    book = PolicyBook(data)
    far, tj = book.resolve("far"), book.resolve("tianjin")
    assert (far.instalment_reminder_lead_days, tj.instalment_reminder_lead_days) == (7, 3)
    assert far.instalment_min_parts == tj.instalment_min_parts          # the rest of `instalments` merges
    assert instalments.notice_for(PLAN, far, day(3)).kind == "due"
    assert instalments.notice_for(PLAN, tj, day(3)) is None
    # grace 0: no day is late-but-standing; the plan breaks the next day and the ladder is the notice
    assert instalments.notice_for(PLAN, far, day(11)) is None


@pytest.mark.parametrize("over, error", [
    ({"reminder_lead_days": -1}, "reminder_lead_days"),
    ({"reminder_lead_days": 45}, "reminder_lead_days"),
    ({"channels": ["pigeon"]}, "instalments.channels"),
    ({"channels": []}, "instalments.channels"),
    ({"grace_days": -2}, "grace_days"),
])
def test_instalment_reminder_policy_is_validated(over, error):
    with pytest.raises(PolicyError, match=error):
        default_book().resolve("tianjin", None, {"instalments": over})


@pytest.mark.parametrize("paid, expected", [
    ("0", ((1, day(-20), D("750.00")), "750.00")),
    ("750", ((2, day(10), D("875.00")), "875.00")),
    ("1000", ((2, day(10), D("875.00")), "625.00")),
    ("2500", None),
])
def test_first_unpaid_part(paid, expected):
    got = instalments.first_unpaid(PLAN.instalment_parts, D(paid))
    assert got == (None if expected is None else (expected[0], D(expected[1])))


def test_split_even_puts_the_fen_on_the_last_part():
    parts = instalments.split_even(D("1000.00"), 4, D("0.30"), day(0))
    assert [a for _, a in parts] == [D("300.00"), D("233.33"), D("233.33"), D("233.34")]


# --- refund offsets (R40) -----------------------------------------------------------------------

@pytest.mark.parametrize("refund, arrears, consent, contract, expected", [
    ("100", "500", False, False, ("0", "100", "none")),
    ("100", "500", True, False, ("100", "0", "consent")),
    ("100", "40", True, False, ("40", "60", "consent")),
    ("100", "40", False, True, ("40", "60", "contract")),
    ("100", "0", True, False, ("0", "100", "none")),
])
def test_refund_offset_only_with_consent_or_contract(refund, arrears, consent, contract, expected):
    off, pay, basis = statement_split(D(refund), D(arrears), consent=consent, contract_allows=contract)
    assert (off, pay, basis) == (D(expected[0]), D(expected[1]), expected[2])


# --- send window, seasons, policy -----------------------------------------------------------------

CST = dt.timezone(dt.timedelta(hours=8))


@pytest.mark.parametrize("now, expected", [
    (dt.datetime(2027, 1, 4, 8, 0, tzinfo=CST), dt.datetime(2027, 1, 4, 9, 0, tzinfo=CST)),     # Mon early
    (dt.datetime(2027, 1, 4, 10, 30, tzinfo=CST), dt.datetime(2027, 1, 4, 10, 30, tzinfo=CST)),  # inside
    (dt.datetime(2027, 1, 4, 12, 0, tzinfo=CST), dt.datetime(2027, 1, 5, 9, 0, tzinfo=CST)),    # after → Tue
    (dt.datetime(2027, 1, 8, 13, 0, tzinfo=CST), dt.datetime(2027, 1, 11, 9, 0, tzinfo=CST)),   # Fri pm → Mon
    (dt.datetime(2027, 1, 9, 10, 0, tzinfo=CST), dt.datetime(2027, 1, 11, 9, 0, tzinfo=CST)),   # Saturday
])
def test_send_window(now, expected):
    assert next_send_time(now, POL) == expected


@pytest.mark.parametrize("d, label", [(dt.date(2026, 11, 1), "2026-2027"), (dt.date(2027, 3, 15), "2026-2027"),
                                      (dt.date(2027, 7, 1), "2027-2028")])
def test_season_labels(d, label):
    assert season_label(season_year_of(d)) == label


def test_policy_layers_and_validation():
    assert POL.due_date(2026) == dt.date(2026, 12, 31) and POL.late_fee_daily_rate == D("0.002")
    assert BJ.stopped_base_share == D("0.60") and POL.stopped_base_share == D("0.30")
    book = default_book()
    with pytest.raises(PolicyError, match="违约金"):
        book.resolve("tianjin", None, {"late_fee": {"label": "滞纳金"}})
    with pytest.raises(PolicyError, match="ascending"):
        book.resolve("tianjin", None, {"ladder": [dict(step="a", offset_days=5, channels=["sms"], template="x"),
                                                  dict(step="b", offset_days=0, channels=["sms"], template="x")]})
    with pytest.raises(PolicyError, match="channels"):
        book.resolve("tianjin", None, {"ladder": [dict(step="a", offset_days=5, channels=["pigeon"], template="x")]})
    with pytest.raises(PolicyError, match="daily_rate"):
        book.resolve("tianjin", None, {"late_fee": {"daily_rate": 0.5}})
    assert isinstance(PolicyBook.load(), PolicyBook)
