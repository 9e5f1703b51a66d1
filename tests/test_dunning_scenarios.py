"""Dunning scenarios on synthetic data inserted via SQL into a fresh database.

The demo region is tianjin: season 11-15 … 03-15 (121 statutory days in 2026-2027), due 12-31,
area tariff 25 元/m² residential, 违约金 2‰/day. Every household has 100 m² → bill 2500.00 元.
"""
from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal
from decimal import Decimal as D

import psycopg
import pytest

from core.pii import FieldCipher, new_key_hex, store_contact
from dunning import instalments, job, ledger
from dunning.policy import default_book
from notify import outbox
from notify.dispatcher import deliver_pending
from notify.senders import ConsoleSender, FileSender

TZ = dt.timezone(dt.timedelta(hours=8))
DUE = dt.date(2026, 12, 31)


def at(day: dt.date, hour: int = 10) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), TZ)


class City:
    def __init__(self, conn, cipher):
        self.conn, self.cipher = conn, cipher
        q = conn.execute
        q("INSERT INTO weather_station (code, name, design_outdoor_temp_c) VALUES ('TJ', '天津', -7.0) ON CONFLICT DO NOTHING")
        q("INSERT INTO company (code, name, region_code) VALUES ('HD', '滨海热力', 'tianjin')")
        q("INSERT INTO branch (company_id, code, name) VALUES (1, 'B1', '一分公司')")
        q("INSERT INTO substation (branch_id, code, name, weather_station_code) VALUES (1, 'S01', '一号站', 'TJ')")
        q("INSERT INTO community (substation_id, code, name) VALUES (1, 'C1', '幸福里')")
        q("INSERT INTO building (community_id, code, name) VALUES (1, 'C1-B01', '1号楼')")
        q("INSERT INTO unit (building_id, code, name) VALUES (1, 'C1-B01-U1', '1单元')")

    def household(self, code: str, *, segment="residential", status="active", valved=True, contact=True) -> int:
        hid = self.conn.execute(
            """INSERT INTO household (unit_id, code, area_m2, segment, heating_status, individually_valved)
               VALUES (1, %s, 100, %s, %s, %s) RETURNING id""", (code, segment, status, valved)).fetchone()[0]
        self.conn.execute("""INSERT INTO room (household_id, code, room_type, area_m2, counts_for_compliance)
                             VALUES (%s, 'living', 'living_room', 30, true), (%s, 'bed1', 'bedroom', 20, true)""",
                          (hid, hid))
        if contact:
            store_contact(self.conn, self.cipher, hid, f"户主{code}", "13800000000", f"幸福里1号楼1单元{code}室")
        return hid

    def compliance(self, hid: int, days, status: str, ratio: float = 0.0, stat: float = 17.0):
        rooms = [r[0] for r in self.conn.execute("SELECT id FROM room WHERE household_id = %s ORDER BY id", (hid,))]
        for d in days:
            for i, rid in enumerate(rooms):
                st = status if i == 0 else "compliant"
                self.conn.execute(
                    """INSERT INTO compliance_day (household_id, room_id, day, stat_c, threshold_c, coverage, status,
                                                   refund_ratio, policy_code, policy_version, code_version)
                       VALUES (%s, %s, %s, %s, 18, 0.9, %s, %s, 'tianjin', 1, 'test')""",
                    (hid, rid, d, stat if i == 0 else 19.0, st, ratio if st == "non_compliant" else 0))


@pytest.fixture
def city(fresh_db_url):
    conn = psycopg.connect(fresh_db_url)
    c = City(conn, FieldCipher(new_key_hex()))
    yield c
    conn.close()


def bills(city):
    n = ledger.generate_bills(city.conn, "HD", 2026)
    city.conn.commit()
    return n


def run(city, day: dt.date, **kw):
    return job.run(city.conn, "HD", day, now=at(day), **kw)


def decision(city, hid, day):
    return city.conn.execute("""SELECT action, reasons, step, template, outbox_id, late_fee, amount_asked, ticket_id
                                FROM dunning_decision WHERE household_id = %s AND as_of = %s AND NOT dry_run
                                ORDER BY id DESC LIMIT 1""", (hid, day)).fetchone()


def outbox_count(city, hid=None):
    if hid is None:
        return city.conn.execute("SELECT count(*) FROM notify_outbox").fetchone()[0]
    return city.conn.execute("SELECT count(*) FROM notify_outbox WHERE household_id = %s", (hid,)).fetchone()[0]


def test_bills_follow_tariff_and_baoting(city):
    a = city.household("A")
    s = city.household("S", status="stopped")
    n = city.household("N", segment="non_residential")
    assert bills(city) == 3
    assert bills(city) == 0                                   # idempotent
    got = dict(city.conn.execute("SELECT household_id, amount FROM dunning_bill").fetchall())
    assert got == {a: Decimal("2500.00"), s: Decimal("750.00"), n: Decimal("4000.00")}   # R42, R29 30 %
    assert city.conn.execute("SELECT DISTINCT due_date FROM dunning_bill").fetchone()[0] == DUE


def test_compliant_household_gets_step1_then_step2_only_after_interval_and_rerun_sends_nothing(city):
    hid = city.household("A")
    city.compliance(hid, [dt.date(2026, 12, 20) + dt.timedelta(days=i) for i in range(8)], "compliant")
    bills(city)
    d1 = DUE - dt.timedelta(days=3)                           # friendly (T−15) is the latest arrived step
    s = run(city, d1)
    assert s.actions == {"send": 1}
    action, reasons, step, template, oid, *_ = decision(city, hid, d1)
    assert (action, step, template) == ("send", "friendly", "dunning.friendly") and oid
    again = run(city, d1)                                     # re-run the same day: nothing new
    assert again.actions == {"skip": 1} and again.reasons["already_sent"] == 1
    assert outbox_count(city, hid) == 1
    s = run(city, DUE)                                        # notice is due but only 3 days since friendly
    assert decision(city, hid, DUE)[:3] == ("skip", ["min_interval"], "notice")
    assert outbox_count(city, hid) == 1
    d3 = DUE + dt.timedelta(days=2)                           # 5 days after the last notice
    run(city, d3)
    assert decision(city, hid, d3)[:3] == ("send", ["ladder_step"], "notice")
    assert outbox_count(city, hid) == 2
    key = city.conn.execute("SELECT idempotency_key, next_attempt_at FROM notify_outbox ORDER BY id DESC LIMIT 1").fetchone()
    assert key[0] == f"dunning:{hid}:2026-2027:notice:sms"
    # 2027-01-02 is a Saturday: the send window (weekday mornings 09:00–12:00) opens Monday 09:00
    assert d3.isoweekday() == 6 and key[1] == dt.datetime(2027, 1, 4, 9, 0, tzinfo=TZ)


def test_non_compliant_household_gets_no_reminder_but_a_temp_test_ticket_and_refund_line(city):
    ok = city.household("OK")
    bad = city.household("BAD")
    days = [DUE - dt.timedelta(days=i) for i in range(1, 6)]
    city.compliance(bad, days, "non_compliant", ratio=0.5, stat=15.5)      # Tianjin 2 < d ≤ 6 → 50 %
    bills(city)
    s = run(city, DUE)
    assert s.actions == {"send": 1, "hold": 1}
    action, reasons, step, _, oid, _, amount, ticket_id = decision(city, bad, DUE)
    assert action == "hold" and "suspected_non_compliance" in reasons and oid is None
    assert outbox_count(city, bad) == 0 and outbox_count(city, ok) == 1
    t = city.conn.execute("SELECT type, household_id, low_temperature, channel FROM ticket WHERE id = %s",
                          (ticket_id,)).fetchone()
    assert t == ("temp_test", bad, True, "auto")
    # refund line (R22, analytics.refund): Tianjin counts IoT days only once a 测温 confirms them (R13),
    # so nothing reduces the ask yet; provisionally: room rule (相应部位) living room 30 of 100 m² at 50 %
    # → 0.5 × 0.3 × 2500/121 = 3.0992 → 3.10 元/day × 5 days = 15.50
    row = city.conn.execute("""SELECT days, amount, provisional_days, provisional_amount FROM dunning_refund_line
                               WHERE household_id = %s""", (bad,)).fetchone()
    assert row == (0, Decimal("0.00"), 5, Decimal("15.50"))
    # second run: the ticket is linked, not duplicated; the hold stays open
    run(city, DUE + dt.timedelta(days=1))
    assert city.conn.execute("SELECT count(*) FROM ticket WHERE household_id = %s AND type = 'temp_test'",
                             (bad,)).fetchone()[0] == 1
    assert decision(city, bad, DUE + dt.timedelta(days=1))[7] == ticket_id
    assert city.conn.execute("SELECT count(*) FROM dunning_hold WHERE household_id = %s AND ended_on IS NULL",
                             (bad,)).fetchone()[0] == 1


def test_confirmed_refund_reduces_the_amount_asked(city):
    hid = city.household("R")
    days = [DUE - dt.timedelta(days=40 + i) for i in range(4)]          # outside the 30-day lookback: no hold
    city.compliance(hid, days, "non_compliant", ratio=1.0, stat=11)
    tid = city.conn.execute("""INSERT INTO ticket (no, type, channel, status, household_id, low_temperature, closed_at)
                               VALUES ('T-1', 'temp_test', 'phone', 'closed', %s, true, now()) RETURNING id""",
                            (hid,)).fetchone()[0]
    for d in days:                                                      # ticketing confirmed them by 测温 at 11 ℃
        city.conn.execute("""INSERT INTO confirmed_noncompliant_day (household_id, day, ticket_id, measured_c)
                             VALUES (%s, %s, %s, 11.0)""", (hid, d, tid))
    bills(city)
    run(city, DUE)
    action, _, step, _, oid, _, amount, _ = decision(city, hid, DUE)
    # Tianjin shortfall 7 K → 100 %; living room 30 % of the area; 1.0 × 0.3 × 2500/121 = 6.198 → 6.20 × 4 days
    assert (action, step, amount) == ("send", "notice", Decimal("2500.00") - Decimal("24.80"))
    body = city.conn.execute("SELECT body FROM notify_outbox WHERE id = %s", (oid,)).fetchone()[0]
    assert "2475.20" in body and "24.80" in body
    assert city.conn.execute("SELECT days, amount FROM dunning_refund_line").fetchone() == (4, Decimal("24.80"))


def test_open_low_temperature_complaint_holds(city):
    hid = city.household("C")
    bills(city)
    city.conn.execute("""INSERT INTO ticket (no, type, channel, status, household_id, low_temperature)
                         VALUES ('GD-1', 'complaint', 'phone', 'new', %s, true)""", (hid,))
    city.conn.commit()
    run(city, DUE)
    action, reasons, *_ = decision(city, hid, DUE)
    assert action == "hold" and reasons == ["open_low_temp_complaint"]


def test_hardship_never_gets_consequence_template_and_no_late_fee(city, fresh_db_url):
    hid = city.household("H")
    normal = city.household("N")
    bills(city)
    instalments.set_hardship(city.conn, city.cipher, household_id=hid, category="dibao", doc_ref="民政-2026-001",
                             valid_from=dt.date(2026, 10, 1), expires_on=dt.date(2027, 9, 30), verified_by="staff1")
    city.conn.commit()
    raw = city.conn.execute("SELECT category_enc FROM pii.dunning_hardship").fetchone()[0]
    assert b"dibao" not in bytes(raw)                                     # R57: encrypted
    templates_seen = set()
    for day in [DUE - dt.timedelta(days=15), DUE, DUE + dt.timedelta(days=7), DUE + dt.timedelta(days=15),
                DUE + dt.timedelta(days=30), DUE + dt.timedelta(days=50)]:
        run(city, day)
        action, reasons, step, template, oid, fee, *_ = decision(city, hid, day)
        assert action in ("soften", "skip")
        assert fee == 0
        if template:
            templates_seen.add(template)
        if step == "formal":
            assert reasons == ["hardship_no_consequence"]
    assert templates_seen == {"dunning.gentle"}
    formal_templates = city.conn.execute("SELECT template_id FROM notify_outbox WHERE household_id = %s",
                                         (hid,)).fetchall()
    assert all(t[0] == "dunning.gentle" for t in formal_templates)
    # the normal household did accrue 违约金 by D+30 (2500 × 0.002 × 30 = 150.00)
    assert decision(city, normal, DUE + dt.timedelta(days=30))[5] == Decimal("150.00")
    assert city.conn.execute("SELECT count(*) FROM dunning_cutoff_proposal WHERE household_id = %s",
                             (hid,)).fetchone()[0] == 0


def test_instalment_on_track_suppresses_reminders_and_a_missed_part_resumes_the_ladder(city):
    hid = city.household("I")
    bills(city)
    pol = default_book().resolve("tianjin", "HD")
    parts = instalments.split_even(Decimal("2500.00"), 3, Decimal("0.30"), DUE - dt.timedelta(days=20), every_days=30)
    assert parts[0][1] == Decimal("750.00")
    instalments.create_plan(city.conn, household_id=hid, season="2026-2027", total=Decimal("2500.00"), parts=parts,
                            policy=pol, created_on=DUE - dt.timedelta(days=20), created_by="staff1")
    ledger.record_payment(city.conn, household_id=hid, amount="750.00", channel="wechat", external_id="wx-1",
                          paid_at=at(DUE - dt.timedelta(days=20)))
    city.conn.commit()
    for day in [DUE - dt.timedelta(days=15), DUE, DUE + dt.timedelta(days=7)]:
        run(city, day)
        assert decision(city, hid, day)[:2] == ("skip", ["instalment_on_track"])
    # no ladder step while on track; only the reminder of part 2 (due DUE+10, 3 lead days → DUE+7)
    assert city.conn.execute("SELECT template_id FROM notify_outbox WHERE household_id = %s",
                             (hid,)).fetchall() == [("dunning.instalment_due",)]
    # part 2 was due DUE+10; 3 grace days → missed on DUE+14
    day = DUE + dt.timedelta(days=15)
    run(city, day)
    action, reasons, step, template, *_ = decision(city, hid, day)
    assert (action, step) == ("send", "formal") and "instalment_missed" in reasons
    assert city.conn.execute("SELECT status, broken_on FROM dunning_instalment_plan").fetchone() == ("broken", day)
    # 违约金 paused while the plan was honoured (through DUE+13); accrues from the day it was missed
    fee = city.conn.execute("SELECT late_fee FROM dunning_decision WHERE household_id = %s AND as_of = %s",
                            (hid, day)).fetchone()[0]
    # unpaid 1750.00 × 2‰ × 2 days (DUE+14, DUE+15) = 7.00
    assert fee == Decimal("7.00")


def _to_formal_delivered(city, hid, tmp_path):
    """Run the ladder to the formal notice (a letter: printed, not yet delivered) and record its
    delivery proof on DUE+16."""
    for d in [DUE, DUE + dt.timedelta(days=7), DUE + dt.timedelta(days=15)]:
        run(city, d)
    oid = decision(city, hid, DUE + dt.timedelta(days=15))[4]
    sent = deliver_pending(city.conn, {"letter": FileSender(tmp_path / "letters.jsonl"),
                                       "sms": ConsoleSender(io.StringIO())},
                           at(DUE + dt.timedelta(days=19), 11), cipher=city.cipher)
    assert sent == {"sent": 3, "delivered": 6}
    outbox.record_letter_proof(city.conn, oid, proof="EMS-0001", at=at(DUE + dt.timedelta(days=16)))
    city.conn.commit()
    return oid


def test_cutoff_candidate_only_when_every_condition_holds(city, tmp_path):
    ok = city.household("OK")
    not_valved = city.household("NV", valved=False)
    disputed = city.household("DS")
    bills(city)
    _to_formal_delivered(city, ok, tmp_path)
    # the loop above ran the company-wide ladder, so every household got the formal notice; add proofs
    for hid in (not_valved, disputed):
        oid = decision(city, hid, DUE + dt.timedelta(days=15))[4]
        outbox.record_letter_proof(city.conn, oid, proof=f"EMS-{hid}", at=at(DUE + dt.timedelta(days=16)))
    city.conn.execute("INSERT INTO dunning_dispute (household_id, season, kind, opened_on) VALUES (%s, '2026-2027', 'bill', %s)",
                      (disputed, DUE + dt.timedelta(days=20)))
    city.conn.commit()
    run(city, DUE + dt.timedelta(days=30))                    # only 14 days after delivery: nobody yet
    assert city.conn.execute("SELECT count(*) FROM dunning_cutoff_proposal").fetchone()[0] == 0
    run(city, DUE + dt.timedelta(days=31))                    # 15 days after delivery
    props = city.conn.execute("SELECT household_id, status, evidence FROM dunning_cutoff_proposal").fetchall()
    assert [(p[0], p[1]) for p in props] == [(ok, "proposed")]
    assert all(props[0][2]["checks"].values()) and props[0][2]["formal_proof"] == "EMS-0001"
    run(city, DUE + dt.timedelta(days=32))                    # no duplicate proposal
    assert city.conn.execute("SELECT count(*) FROM dunning_cutoff_proposal").fetchone()[0] == 1


def test_dry_run_records_decisions_and_touches_nothing(city):
    hid = city.household("D")
    bad = city.household("B")
    city.compliance(bad, [DUE - dt.timedelta(days=2)], "non_compliant", ratio=0.1, stat=17.0)
    bills(city)
    s = run(city, DUE, dry_run=True)
    assert s.actions == {"send": 1, "hold": 1}
    assert outbox_count(city) == 0
    assert city.conn.execute("SELECT count(*) FROM ticket").fetchone()[0] == 0
    assert city.conn.execute("SELECT count(*) FROM dunning_hold").fetchone()[0] == 0
    assert city.conn.execute("SELECT count(*) FROM dunning_decision WHERE dry_run").fetchone()[0] == 2
    snap, d, checks = job.preview(city.conn, "HD", bad, DUE)
    assert d.action == "hold" and d.evidence["compliance"]["non_compliant_days"] == [(DUE - dt.timedelta(days=2)).isoformat()]


def test_stopped_midway_run_resumes_from_cursor(city):
    ids = [city.household(f"R{i}") for i in range(5)]
    bills(city)
    first = run(city, DUE, batch_size=2, stop_after_batches=1)
    assert first.accounts == 2
    assert city.conn.execute("SELECT status, last_household FROM dunning_run").fetchone() == ("running", ids[1])
    second = run(city, DUE, batch_size=2)
    assert second.run_id == first.run_id and second.resumed_from == ids[1] and second.accounts == 3
    assert outbox_count(city) == 5
    assert city.conn.execute("SELECT status FROM dunning_run").fetchone()[0] == "done"


def test_payments_csv_import_is_idempotent_and_reports_bad_rows(city, tmp_path):
    hid = city.household("P1")
    bills(city)
    f = tmp_path / "pay.csv"
    f.write_text("household_code,amount,channel,external_id,paid_at\n"
                 "P1,1000.00,bank,B-1,2026-12-01T10:00:00\n"
                 "P1,500,government_subsidy,GOV-9,2026-12-02T10:00:00+08:00\n"
                 "NOPE,1,bank,B-2,2026-12-01T10:00:00\n"
                 "P1,abc,bank,B-3,2026-12-01T10:00:00\n"
                 "P1,1,cash_in_envelope,B-4,2026-12-01T10:00:00\n", encoding="utf-8")
    r = ledger.import_payments_csv(city.conn, f)
    assert (r.accepted, r.duplicates, [ln for ln, _ in r.rejected]) == (2, 0, [4, 5, 6])
    r2 = ledger.import_payments_csv(city.conn, f)
    assert (r2.accepted, r2.duplicates) == (0, 2)
    city.conn.commit()
    assert ledger.balance(city.conn, hid, "2026-2027")["outstanding"] == Decimal("1000.00")
    with pytest.raises(ledger.PaymentConflict):
        ledger.record_payment(city.conn, household_id=hid, amount="999", channel="bank", external_id="B-1",
                              paid_at=at(dt.date(2026, 12, 1)))


def test_season_end_refund_statement_offsets_only_with_consent(city):
    from dunning.statements import season_statements
    consent, no_consent = city.household("Y"), city.household("N")
    days = [DUE - dt.timedelta(days=40 + i) for i in range(4)]
    for hid in (consent, no_consent):
        city.compliance(hid, days, "non_compliant", ratio=1.0, stat=11)
        tid = city.conn.execute("""INSERT INTO ticket (no, type, channel, status, household_id, low_temperature)
                                   VALUES (%s, 'temp_test', 'phone', 'closed', %s, true) RETURNING id""",
                                (f"T-{hid}", hid)).fetchone()[0]
        for d in days:
            city.conn.execute("""INSERT INTO confirmed_noncompliant_day (household_id, day, ticket_id, measured_c)
                                 VALUES (%s, %s, %s, 11.0)""", (hid, d, tid))
    city.conn.execute("INSERT INTO dunning_offset_consent VALUES (%s, '2026-2027', '2027-01-05', 'wechat')", (consent,))
    bills(city)
    ledger.record_payment(city.conn, household_id=consent, amount="2490.00", channel="bank", external_id="B-Y",
                          paid_at=at(DUE))
    city.conn.commit()
    run(city, dt.date(2027, 3, 15))                            # refund lines as of season end
    s = season_statements(city.conn, "HD", 2026, now=at(dt.date(2027, 3, 20)))
    assert s.statements == 2
    rows = dict((r[0], r[1:]) for r in city.conn.execute(
        """SELECT household_id, refund_amount, arrears_before, offset_amount, payout_amount, offset_basis
           FROM dunning_refund_statement"""))
    assert rows[consent] == (D("24.80"), D("10.00"), D("10.00"), D("14.80"), "consent")       # R40
    assert rows[no_consent] == (D("24.80"), D("2500.00"), D("0.00"), D("24.80"), "none")
    assert ledger.balance(city.conn, consent, "2026-2027")["outstanding"] == D("0.00")
    again = season_statements(city.conn, "HD", 2026, now=at(dt.date(2027, 3, 21)))
    assert again.statements == 0                                # once per household and season


def test_hold_closes_when_the_problem_is_gone(city):
    hid = city.household("HC")
    city.compliance(hid, [DUE - dt.timedelta(days=1)], "non_compliant", ratio=0.1, stat=17.5)
    bills(city)
    run(city, DUE)
    assert decision(city, hid, DUE)[0] == "hold"
    later = DUE + dt.timedelta(days=40)                         # the day left the 30-day lookback
    run(city, later - dt.timedelta(days=1))
    assert decision(city, hid, later - dt.timedelta(days=1))[1] == ["open_low_temp_complaint"]   # the 测温 is open
    city.conn.execute("UPDATE ticket SET status = 'closed', closed_at = now() WHERE household_id = %s", (hid,))
    city.conn.commit()
    run(city, later)
    assert decision(city, hid, later)[0] == "send"
    assert city.conn.execute("SELECT started_on, ended_on FROM dunning_hold WHERE household_id = %s",
                             (hid,)).fetchone() == (DUE, later - dt.timedelta(days=1))
    # 违约金 paused during the hold: accrues only on D+40 (1 day) → 2500 × 2‰ = 5.00
    assert decision(city, hid, later)[5] == D("5.00")


def _cli(argv, url):
    import argparse
    from dunning.cli import register_cli
    p = argparse.ArgumentParser()
    register_cli(p.add_subparsers())
    args = p.parse_args(argv)
    args.database_url = url
    return args.func(args)


def test_cli_run_dry_run_summary_and_payments_import(city, fresh_db_url, tmp_path, capsys):
    hid = city.household("CL")
    bad = city.household("CB")
    city.compliance(bad, [DUE - dt.timedelta(days=1)], "non_compliant", ratio=0.1, stat=17.5)
    city.conn.commit()
    assert _cli(["dunning", "bills", "--season-year", "2026", "--company", "HD"], fresh_db_url) == 0
    f = tmp_path / "p.csv"
    f.write_text("household_code,amount,channel,external_id,paid_at\nCL,100,counter,C-1,2026-12-01T09:00:00\n"
                 "ZZ,1,counter,C-2,2026-12-01T09:00:00\n", encoding="utf-8")
    assert _cli(["payments", "import", str(f)], fresh_db_url) == 1        # one rejected row → exit 1
    assert _cli(["dunning", "run", "--dry-run", "--company", "HD", "--as-of", "2026-12-31"], fresh_db_url) == 0
    out = capsys.readouterr().out
    assert "accepted 1, duplicates 0, rejected 1" in out and "line 3: unknown household 'ZZ'" in out
    assert "send             1" in out and "hold             1" in out and "suspected_non_compliance" in out
    assert city.conn.execute("SELECT count(*) FROM notify_outbox").fetchone()[0] == 0
    assert ledger.balance(city.conn, hid, "2026-2027")["paid"] == D("100.00")


def test_failed_delivery_is_no_notice_and_the_next_channel_is_tried(city):
    hid = city.household("F")
    bills(city)
    run(city, DUE)
    oid = decision(city, hid, DUE)[4]
    city.conn.execute("UPDATE notify_outbox SET status = 'failed' WHERE id = %s", (oid,))   # e.g. SMS UNDELIV
    city.conn.commit()
    nxt = DUE + dt.timedelta(days=1)
    run(city, nxt)
    action, _, step, _, oid2, *_ = decision(city, hid, nxt)
    assert (action, step) == ("send", "notice") and oid2 != oid
    assert city.conn.execute("SELECT channel, idempotency_key FROM notify_outbox WHERE id = %s", (oid2,)).fetchone() == \
        ("letter", f"dunning:{hid}:2026-2027:notice:letter")


def test_outage_days_are_refunded_in_the_batch_run_as_in_the_single_household_statement(city):
    """R25 stoppage days reach the batch refund lines (one query per batch) and match analytics'
    single-household statement; R24: a day both stopped and cold is refunded once, as the larger."""
    from analytics.refund import refund_for_household
    out = city.household("OUT")                              # building 1: inside the outage
    stopped = city.household("OFF", status="stopped")        # building 1, 报停: expects no heat (R29)
    other = city.household("OTH")
    q = city.conn.execute
    q("INSERT INTO building (community_id, code, name) VALUES (1, 'C1-B02', '2号楼')")
    q("INSERT INTO unit (building_id, code, name) VALUES (2, 'C1-B02-U1', '1单元')")
    q("UPDATE household SET unit_id = 2 WHERE id = %s", (other,))
    # the boiler side failed for building 1 from 11-20 evening to 11-22 morning: local days 20, 21, 22
    q("""INSERT INTO ticket (no, type, channel, status, building_id, reported_at, closed_at)
         VALUES ('INC-1', 'incident', 'auto', 'closed', 1, '2026-11-20 20:00+08', '2026-11-22 08:00+08'),
                ('INC-0', 'incident', 'phone', 'cancelled', 1, '2026-11-25 08:00+08', '2026-11-25 09:00+08')""")
    city.compliance(out, [dt.date(2026, 11, 21)], "non_compliant", ratio=0.5, stat=15.5)   # also cold that day
    city.compliance(out, [dt.date(2026, 11, 28)], "non_compliant", ratio=0.5, stat=15.5)   # IoT only: suspected
    bills(city)
    s = run(city, DUE)                                       # both days are outside the 30-day lookback
    lines = {r[0]: r[1:] for r in q("""SELECT household_id, days, amount, provisional_days, provisional_amount, basis
                                         FROM dunning_refund_line""")}
    assert set(lines) == {out} and s.refund_lines == 1
    days, amount, prov_days, prov_amount, basis = lines[out]
    # 2500/121 = 20.6612 → 20.66 元 per stopped day × 3; 11-21's temperature refund (0.5 × 30 % of the
    # area × 20.66 = 3.10) is smaller, so only the stoppage counts (R24); 11-28 stays provisional (R13)
    assert (days, amount, prov_days, prov_amount) == (3, D("61.98"), 1, D("3.10"))
    assert [(ln["day"], ln["basis"], ln["amount"]) for ln in basis["lines"]] == \
        [(f"2026-11-{n}", "stoppage", 20.66) for n in (20, 21, 22)]
    action, _, step, _, _, _, asked, _ = decision(city, out, DUE)
    assert (action, step, asked) == ("send", "notice", D("2500.00") - D("61.98"))
    # the single-household statement (analytics) and the API preview see the same days and amount
    single = refund_for_household(city.conn, out, 2026, season_fee=2500.0, confirmed=set(), as_of=DUE)
    assert [(ln.day.isoformat(), ln.basis, ln.amount) for ln in single.lines] == \
        [(ln["day"], ln["basis"], ln["amount"]) for ln in basis["lines"]]
    assert D(str(single.total)) == amount
    assert job.preview(city.conn, "HD", out, DUE)[0].refund_amount == amount
    assert stopped not in lines and other not in lines

    # a new outage still open on the run day: its days count up to the run day, never ahead (R25), and
    # the reminder is held while it lasts
    tid = q("""INSERT INTO ticket (no, type, channel, status, unit_id, reported_at)
               VALUES ('INC-2', 'incident', 'auto', 'dispatched', 1, '2026-12-30 22:00+08') RETURNING id""").fetchone()[0]
    q("INSERT INTO ticket_household (ticket_id, household_id) VALUES (%s, %s)", (tid, out))
    city.conn.commit()
    day = DUE + dt.timedelta(days=1)
    run(city, day)
    assert decision(city, out, day)[:2] == ("hold", ["open_outage_incident"])
    days, amount = q("SELECT days, amount FROM dunning_refund_line WHERE household_id = %s", (out,)).fetchone()
    assert (days, amount) == (6, D("123.96"))                # + 12-30, 12-31, 01-01
    single = refund_for_household(city.conn, out, 2026, season_fee=2500.0, confirmed=set(), as_of=day)
    assert D(str(single.total)) == amount and len(single.lines) == days


def _plan(city, hid, *, paid_first=True):
    """Plan 750 / 875 / 875 due DUE−20, DUE+10, DUE+40 (R32 first part 30 %), first part paid."""
    pol = default_book().resolve("tianjin", "HD")
    parts = instalments.split_even(D("2500.00"), 3, D("0.30"), DUE - dt.timedelta(days=20), every_days=30)
    pid = instalments.create_plan(city.conn, household_id=hid, season="2026-2027", total=D("2500.00"), parts=parts,
                                  policy=pol, created_on=DUE - dt.timedelta(days=20), created_by="staff1")
    if paid_first:
        ledger.record_payment(city.conn, household_id=hid, amount="750.00", channel="wechat",
                              external_id=f"wx-{hid}", paid_at=at(DUE - dt.timedelta(days=20)))
    city.conn.commit()
    return pid


def _notices(city, hid):
    return city.conn.execute("""SELECT n.seq, n.kind, n.channel, o.template_id, o.idempotency_key
                                  FROM dunning_instalment_notice n JOIN notify_outbox o ON o.id = n.outbox_id
                                 WHERE n.household_id = %s ORDER BY n.id""", (hid,)).fetchall()


def test_instalment_reminders_go_once_per_part_through_the_gate_and_send_window(city):
    hid = city.household("I")
    held = city.household("IH")                              # an open low-temperature complaint: gate hold
    bills(city)
    pid = _plan(city, hid)
    _plan(city, held)
    city.conn.execute("""INSERT INTO ticket (no, type, channel, status, household_id, low_temperature)
                         VALUES ('GD-9', 'complaint', 'phone', 'new', %s, true)""", (held,))
    city.conn.commit()
    # part 2 is due DUE+10 (a Sunday); 3 lead days → the reminder window opens DUE+7
    early = DUE + dt.timedelta(days=6)
    assert run(city, early).instalment_notices == {}
    day = DUE + dt.timedelta(days=7)
    dry = job.run(city.conn, "HD", day, now=at(day, 20), dry_run=True)
    assert dry.instalment_notices == {"due:send": 1, "due:hold": 1} and _notices(city, hid) == []
    # evening run: outside the send window (09:00–12:00), the message waits for the next morning
    first = job.run(city.conn, "HD", day, now=at(day, 20))
    again = job.run(city.conn, "HD", day, now=at(day, 21))
    assert first.instalment_notices == {"due:send": 1, "due:hold": 1}
    assert again.instalment_notices == {"due:skip": 1, "due:hold": 1}
    later = run(city, day + dt.timedelta(days=1))            # still inside the window: once per part
    assert later.instalment_notices == {"due:skip": 1, "due:hold": 1}
    assert _notices(city, hid) == [(2, "due", "sms", "dunning.instalment_due",
                                    f"dunning:{hid}:2026-2027:instalment:{pid}.2:due:sms")]
    assert _notices(city, held) == []
    body, ctx, not_before = city.conn.execute(
        "SELECT body, context, next_attempt_at FROM notify_outbox WHERE household_id = %s", (hid,)).fetchone()
    assert "第2期875.00元将于2027年1月10日到期" in body and "{户主姓名}" in body     # name filled only at send (R57)
    assert "name" not in ctx and "address" not in ctx
    assert not_before == dt.datetime(2027, 1, 8, 9, 0, tzinfo=TZ)                # Friday morning
    assert decision(city, hid, day)[:2] == ("skip", ["instalment_on_track"])   # the ladder stays quiet (R32)

    # part 2 unpaid after its due date: one 'missed' notice in the grace days, before the plan breaks
    missed_day = DUE + dt.timedelta(days=11)
    assert run(city, missed_day).instalment_notices == {"missed:send": 1, "missed:hold": 1}
    assert run(city, missed_day).instalment_notices == {"missed:skip": 1, "missed:hold": 1}
    assert city.conn.execute("SELECT status FROM dunning_instalment_plan WHERE id = %s", (pid,)).fetchone() == ("active",)
    oid, body = city.conn.execute("""SELECT id, body FROM notify_outbox WHERE template_id = 'dunning.instalment_missed'
                                      AND household_id = %s""", (hid,)).fetchone()
    assert "尚有875.00元未缴清" in body and "最迟于2027年1月13日" in body             # grace 3 days
    # the SMS was not delivered: a failed delivery is no notice, the next channel is tried (R39)
    city.conn.execute("UPDATE notify_outbox SET status = 'failed' WHERE id = %s", (oid,))
    city.conn.commit()
    run(city, missed_day + dt.timedelta(days=1))
    assert [n[:3] for n in _notices(city, hid)] == [(2, "due", "sms"), (2, "missed", "sms"), (2, "missed", "letter")]
    # grace over: the plan breaks, the ladder resumes, no further instalment reminder
    broken_day = DUE + dt.timedelta(days=14)
    s = run(city, broken_day)
    assert city.conn.execute("SELECT status, broken_on FROM dunning_instalment_plan WHERE id = %s",
                             (pid,)).fetchone() == ("broken", broken_day)
    assert s.instalment_notices.get("missed:send", 0) == 0 and len(_notices(city, hid)) == 3
    action, reasons, step, *_ = decision(city, hid, broken_day)
    assert (action, step) == ("send", "second") and "instalment_missed" in reasons


def test_instalment_reminder_not_sent_once_the_part_is_paid(city):
    hid = city.household("IP")
    bills(city)
    _plan(city, hid)
    ledger.record_payment(city.conn, household_id=hid, amount="875.00", channel="bank", external_id="B-IP",
                          paid_at=at(DUE + dt.timedelta(days=5)))
    city.conn.commit()
    assert run(city, DUE + dt.timedelta(days=8)).instalment_notices == {}   # part 2 paid early; part 3 not yet
    s = run(city, DUE + dt.timedelta(days=37))                              # part 3 (DUE+40) window
    assert s.instalment_notices == {"due:send": 1}
    assert [n[:2] for n in _notices(city, hid)] == [(3, "due")]
