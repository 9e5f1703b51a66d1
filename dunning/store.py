"""Set-based loading of gate snapshots (one query per kind of fact per batch, never per household).

Used by the job, the API preview and the bench. Reads: dunning_* tables, compliance_household_day
and compliance_day (analytics), ticket (ticketing contract: type, low_temperature, status, category),
weather_daily, pii contact presence (never decrypts).
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from analytics.policy import Policy as RegionPolicy
from analytics.policy import default_table
from dunning import refunds
from dunning.gate import Snapshot
from dunning.instalments import on_track
from dunning.ledger import COMPANY_HOUSEHOLDS_SQL
from dunning.policy import DunningPolicy, PolicyBook, default_book, season_label, season_year_of
from ticketing.model import ACTIVE
from ticketing.store import DISPUTE_CATEGORIES

TZ = "Asia/Shanghai"


@dataclass(frozen=True)
class RunContext:
    company_id: int
    company_code: str
    company_name: str
    region_code: str
    as_of: dt.date
    season: str
    season_year: int
    season_start: dt.date
    season_end: dt.date
    statutory_days: int
    policy: DunningPolicy
    region_policy: RegionPolicy


def run_context(conn, company_code: str, as_of: dt.date, *, book: PolicyBook | None = None,
                overrides: dict | None = None) -> RunContext:
    row = conn.execute("SELECT id, name, region_code FROM company WHERE code = %s", (company_code,)).fetchone()
    if row is None:
        raise ValueError(f"unknown company {company_code!r}")
    cid, name, region = row
    policy = (book or default_book()).resolve(region, company_code, overrides)
    sy = season_year_of(as_of)
    probe = default_table().resolve(region, dt.date(sy, 12, 31))
    start, end = probe.season.bounds(sy)
    rp = default_table().resolve(region, start)        # the policy in force at season start, as analytics does
    return RunContext(cid, company_code, name, region, as_of, season_label(sy), sy, start, end,
                      rp.season.statutory_days(sy), policy, rp)


def household_ids(conn, ctx: RunContext, after: int = 0, limit: int | None = None) -> list[int]:
    sql = ("SELECT h.id FROM (" + COMPANY_HOUSEHOLDS_SQL + ") h JOIN dunning_bill b ON b.household_id = h.id "
           "AND b.season = %s WHERE h.id > %s ORDER BY h.id" + (" LIMIT %s" if limit else ""))
    params = (ctx.company_code, ctx.season, after) + ((limit,) if limit else ())
    return [r[0] for r in conn.execute(sql, params).fetchall()]


def load_snapshots(conn, ctx: RunContext, ids: list[int]) -> tuple[list[Snapshot], dict]:
    """Snapshots for these households (with a bill this season), plus side data for the executor:
    {'refunds': {hid: RefundFigures}, 'open_holds': {hid: hold_id}, 'plans': {hid: (plan_id, on_track)}}."""
    if not ids:
        return [], {}
    ids = sorted(ids)
    as_of, season, pol = ctx.as_of, ctx.season, ctx.policy
    q = conn.execute
    base = q("""SELECT h.id, h.code, h.segment, h.heating_status, h.individually_valved, b.due_date, b.amount,
                       b.base_amount, h.area_m2
                  FROM household h JOIN dunning_bill b ON b.household_id = h.id AND b.season = %s
                 WHERE h.id = ANY(%s) ORDER BY h.id""", (season, ids)).fetchall()

    payments: dict[int, list[tuple[dt.date, Decimal]]] = defaultdict(list)
    for hid, day, amt in q("""SELECT household_id, (paid_at AT TIME ZONE %s)::date, amount FROM dunning_payment
                              WHERE season = %s AND household_id = ANY(%s) AND (paid_at AT TIME ZONE %s)::date <= %s""",
                           (TZ, season, ids, TZ, as_of)):
        payments[hid].append((day, amt))

    lb_start = max(ctx.season_start, as_of - dt.timedelta(days=pol.lookback_days))
    nc: dict[int, list[dt.date]] = defaultdict(list)
    unk: dict[int, list[dt.date]] = defaultdict(list)
    # compliance_day semantics of the view compliance_household_day (non-compliant if any counted room
    # is; unknown if any is unknown and none non-compliant), read directly with an id *range*: the
    # view's GROUP BY over `= ANY(5000 ids)` made PostgreSQL scan the whole table for every batch.
    wanted = set(ids)
    for hid, day, status in q("""SELECT household_id, day,
                                        CASE WHEN bool_or(status = 'non_compliant') THEN 'non_compliant'
                                             ELSE 'unknown' END
                                   FROM compliance_day
                                  WHERE household_id BETWEEN %s AND %s AND day BETWEEN %s AND %s
                                    AND status IN ('non_compliant', 'unknown')
                                  GROUP BY household_id, day ORDER BY day""",
                              (ids[0], ids[-1], lb_start, as_of)):
        if hid in wanted:
            (nc if status == "non_compliant" else unk)[hid].append(day)

    cold = {r[0] for r in q("""SELECT DISTINCT h.id FROM household h JOIN unit u ON u.id = h.unit_id
                                 JOIN building b ON b.id = u.building_id JOIN community c ON c.id = b.community_id
                                 JOIN substation s ON s.id = c.substation_id
                                 JOIN weather_station ws ON ws.code = s.weather_station_code
                                 JOIN weather_daily w ON w.station_code = ws.code AND w.day BETWEEN %s AND %s
                                WHERE h.id = ANY(%s) AND w.mean_c < ws.design_outdoor_temp_c""",
                            (as_of - dt.timedelta(days=1), as_of, ids))}

    refund = refunds.load_refunds(conn, ids, ctx.region_policy, ctx.season_start, ctx.season_end, as_of,
                                  {r[0]: (r[6], r[7], r[8]) for r in base}, tz=TZ)

    low_temp: dict[int, list[int]] = defaultdict(list)
    temp_test: dict[int, int] = {}
    disputes: dict[int, list[str]] = defaultdict(list)
    for hid, tid, ttype, status, low, cat in q(
            """SELECT household_id, id, type, status, low_temperature, category FROM ticket
                WHERE household_id = ANY(%s) AND status = ANY(%s)
                  AND (low_temperature OR type = 'temp_test' OR category = ANY(%s)) ORDER BY id""",
            (ids, sorted(ACTIVE), sorted(DISPUTE_CATEGORIES))):
        if low or ttype == "temp_test":
            low_temp[hid].append(tid)
            if ttype == "temp_test":
                temp_test.setdefault(hid, tid)
        if cat in DISPUTE_CATEGORIES or (status == "escalated_external" and (low or ttype == "temp_test")):
            disputes[hid].append(f"ticket:{tid}")
    incidents: dict[int, list[int]] = defaultdict(list)
    for hid, tid in q("""SELECT th.household_id, t.id FROM ticket_household th JOIN ticket t ON t.id = th.ticket_id
                          WHERE th.household_id = ANY(%s) AND t.type = 'incident' AND t.status = ANY(%s)
                          ORDER BY t.id""", (ids, sorted(ACTIVE))):
        incidents[hid].append(tid)
    pauses: dict[int, list[tuple[dt.date, dt.date | None]]] = defaultdict(list)
    for hid, did, opened, resolved in q("""SELECT household_id, id, opened_on, resolved_on FROM dunning_dispute
                                           WHERE household_id = ANY(%s) AND season = %s AND opened_on <= %s""",
                                        (ids, season, as_of)):
        pauses[hid].append((opened, resolved))
        if resolved is None or resolved > as_of:
            disputes[hid].append(f"dunning_dispute:{did}")

    hardship: dict[int, dt.date] = {}
    for hid, vf, exp in q("SELECT household_id, valid_from, expires_on FROM pii.dunning_hardship WHERE household_id = ANY(%s)",
                          (ids,)):
        pauses[hid].append((vf, exp))
        if vf <= as_of <= exp:
            hardship[hid] = exp

    deferral: dict[int, dt.date] = {}
    for hid, granted, until in q("""SELECT household_id, granted_on, until_date FROM dunning_deferral
                                    WHERE household_id = ANY(%s) AND season = %s AND granted_on <= %s""",
                                 (ids, season, as_of)):
        pauses[hid].append((granted, until))
        if until >= as_of:
            deferral[hid] = max(deferral.get(hid, until), until)

    plan_parts: dict[int, tuple[int, dt.date, list[tuple[int, dt.date, Decimal]]]] = {}
    for pid, hid, created, seq, due, amt in q("""SELECT p.id, p.household_id, p.created_on, i.seq, i.due_date, i.amount
                                             FROM dunning_instalment_plan p JOIN dunning_instalment i ON i.plan_id = p.id
                                            WHERE p.status = 'active' AND p.season = %s AND p.household_id = ANY(%s)
                                            ORDER BY p.id, i.seq""", (season, ids)):
        plan_parts.setdefault(hid, (pid, created, []))[2].append((seq, due, amt))
    # instalment reminders already out (a failed delivery is no notice: that channel is not tried again)
    inst_sent: dict[int, set[tuple[int, str]]] = defaultdict(set)
    inst_failed: dict[int, dict[tuple[int, str], set[str]]] = defaultdict(lambda: defaultdict(set))
    if plan_parts:
        for hid, seq, kind, channel, ostatus in q(
                """SELECT n.household_id, n.seq, n.kind, n.channel, o.status
                     FROM dunning_instalment_notice n JOIN notify_outbox o ON o.id = n.outbox_id
                    WHERE n.plan_id = ANY(%s)""", ([v[0] for v in plan_parts.values()],)):
            if ostatus == "failed":
                inst_failed[hid][(seq, kind)].add(channel)
            else:
                inst_sent[hid].add((seq, kind))
    plans: dict[int, tuple[int, bool]] = {}
    plan_paid: dict[int, Decimal] = {}
    for hid, (pid, created, parts) in plan_parts.items():
        paid_since = sum((a for d, a in payments.get(hid, ()) if d >= created), Decimal(0))
        plan_paid[hid] = paid_since
        ok = on_track([(d, a) for _, d, a in parts], paid_since, as_of, pol.instalment_grace_days)
        plans[hid] = (pid, ok)
        if ok:
            pauses[hid].append((created, None))            # R32: no late charge while honoured
        else:
            owed = Decimal(0)
            missed = None
            for _, d, a in parts:
                owed += a
                if paid_since < owed:
                    missed = d + dt.timedelta(days=pol.instalment_grace_days)
                    break
            pauses[hid].append((created, missed))
    for hid, created, broken in q("""SELECT household_id, created_on, broken_on FROM dunning_instalment_plan
                                     WHERE status IN ('broken', 'completed') AND season = %s AND household_id = ANY(%s)""",
                                  (season, ids)):
        pauses[hid].append((created, broken))

    consequence_steps = [s.step for s in pol.ladder if s.consequence]
    sent: dict[int, dict[str, dt.date]] = defaultdict(dict)
    last: dict[int, dt.date] = {}
    formal: dict[int, tuple[dt.date | None, str | None, int]] = {}
    failed: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for hid, step, day, oid, ostatus, delivered_at, proof, provider, provider_id, channel in q(
            """SELECT d.household_id, d.step, d.as_of, d.outbox_id, o.status, o.delivered_at, o.delivery_proof,
                      o.provider, o.provider_id, d.channel
                 FROM dunning_decision d LEFT JOIN notify_outbox o ON o.id = d.outbox_id
                WHERE d.season = %s AND NOT d.dry_run AND d.action IN ('send', 'soften') AND d.household_id = ANY(%s)
                  AND d.as_of <= %s ORDER BY d.as_of""", (season, ids, as_of)):
        if ostatus == "failed":             # not a notice: the step is tried again on the next channel
            failed[hid][step].add(channel)
            continue
        sent[hid].setdefault(step, day)
        last[hid] = max(last.get(hid, day), day)
        if step in consequence_steps and ostatus == "delivered" and delivered_at is not None:
            evidence = proof or (f"{provider}:{provider_id}" if provider_id else None)
            formal[hid] = ((delivered_at.astimezone(_tz()).date()), evidence, oid)

    open_holds: dict[int, int] = {}
    hold_since: dict[int, dt.date] = {}
    for hid, hold_id, started, ended in q("""SELECT household_id, id, started_on, ended_on FROM dunning_hold
                                             WHERE household_id = ANY(%s) AND season = %s""", (ids, season)):
        if ended is None:
            open_holds[hid] = hold_id
            hold_since[hid] = started       # the gate decides whether it still lasts today
        else:
            pauses[hid].append((started, ended))
    cutoff_open: set[int] = set()
    for hid, status, executed, restored in q("""SELECT household_id, status, executed_on, restored_on
                                                FROM dunning_cutoff_proposal WHERE household_id = ANY(%s) AND season = %s""",
                                             (ids, season)):
        if status in ("proposed", "approved", "executed"):
            cutoff_open.add(hid)
        if executed is not None:
            pauses[hid].append((executed, restored))       # R35: no 违约金 while cut off

    chans: dict[int, set[str]] = defaultdict(lambda: {"console"})
    for hid, has_phone, has_addr in q("""SELECT household_id, phone_enc IS NOT NULL, address_enc IS NOT NULL
                                         FROM pii.household_contact WHERE household_id = ANY(%s)""", (ids,)):
        if has_phone:
            chans[hid].add("sms")
        if has_addr:
            chans[hid].add("letter")
    for hid, ch in q("SELECT household_id, channel FROM pii.notify_address WHERE household_id = ANY(%s)", (ids,)):
        chans[hid].add(ch)

    snaps: list[Snapshot] = []
    for hid, code, segment, hstatus, valved, due, amount, base_amt, _area in base:
        rf = refund.get(hid)
        pays = payments.get(hid, [])
        f = formal.get(hid, (None, None, None))
        snaps.append(Snapshot(
            household_id=hid, account_no=code, segment=segment, heating_status=hstatus, individually_valved=valved,
            season=season, due_date=due, billed=amount, paid=sum((a for _, a in pays), Decimal("0.00")),
            payments=tuple(pays), non_compliant_days=tuple(nc.get(hid, ())), unknown_days=tuple(unk.get(hid, ())),
            extreme_cold_today=hid in cold, refund_days=rf.days if rf else 0,
            refund_amount=rf.amount if rf else Decimal("0.00"),
            provisional_refund=rf.provisional_amount if rf else Decimal("0.00"),
            open_low_temp_ticket_ids=tuple(low_temp.get(hid, ())), open_temp_test_ticket_id=temp_test.get(hid),
            dispute_refs=tuple(disputes.get(hid, ())), open_incident_ticket_ids=tuple(incidents.get(hid, ())),
            hardship_until=hardship.get(hid),
            deferral_until=deferral.get(hid), instalment_plan_id=plans[hid][0] if hid in plans else None,
            instalment_on_track=plans[hid][1] if hid in plans else None,
            instalment_parts=tuple(plan_parts[hid][2]) if hid in plan_parts else (),
            instalment_paid=plan_paid.get(hid, Decimal("0.00")),
            instalment_notices_sent=frozenset(inst_sent.get(hid, ())),
            instalment_failed_channels={k: frozenset(v) for k, v in inst_failed.get(hid, {}).items()},
            sent_steps=dict(sent.get(hid, {})),
            last_notice_on=last.get(hid), failed_channels={k: frozenset(v) for k, v in failed.get(hid, {}).items()}, formal_delivered_on=f[0], formal_proof=f[1], formal_outbox_id=f[2],
            pauses=tuple(pauses.get(hid, ())), open_hold_since=hold_since.get(hid), channels=frozenset(chans[hid]), cutoff_open=hid in cutoff_open))
    return snaps, {"refunds": refund, "open_holds": open_holds, "plans": plans}


def _tz():
    from zoneinfo import ZoneInfo
    return ZoneInfo(TZ)


def today() -> dt.date:
    return dt.datetime.now(_tz()).date()


def now() -> dt.datetime:
    return dt.datetime.now(_tz())


def company_code(conn, company_id: int) -> str:
    return conn.execute("SELECT code FROM company WHERE id = %s", (company_id,)).fetchone()[0]


def proposal_household(conn, proposal_id: int) -> int | None:
    row = conn.execute("SELECT household_id FROM dunning_cutoff_proposal WHERE id = %s", (proposal_id,)).fetchone()
    return row[0] if row else None


def decisions(conn, household_id: int, limit: int = 50) -> list[dict]:
    from psycopg.rows import dict_row
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT d.id, d.as_of, d.season, d.step, d.action, d.reasons, d.template, d.channel, d.amount_asked,
                      d.refund_adjust, d.late_fee, d.evidence, d.outbox_id, d.ticket_id, d.dry_run, d.created_at,
                      o.status AS delivery_status, o.delivered_at, o.delivery_proof
                 FROM dunning_decision d LEFT JOIN notify_outbox o ON o.id = d.outbox_id
                WHERE d.household_id = %s ORDER BY d.id DESC LIMIT %s""", (household_id, limit)).fetchall()


def policy_for_company(conn, company_id: int) -> DunningPolicy:
    code, region = conn.execute("SELECT code, region_code FROM company WHERE id = %s", (company_id,)).fetchone()
    return default_book().resolve(region, code)


def record_offset_consent(conn, household_id: int, season: str, given_on: dt.date, channel: str) -> None:
    conn.execute("""INSERT INTO dunning_offset_consent (household_id, season, given_on, channel)
                    VALUES (%s, %s, %s, %s) ON CONFLICT (household_id, season) DO NOTHING""",
                 (household_id, season, given_on, channel))


def open_dispute(conn, household_id: int, season: str, kind: str, opened_on: dt.date, note: str | None) -> int:
    return conn.execute("""INSERT INTO dunning_dispute (household_id, season, kind, opened_on, note)
                           VALUES (%s, %s, %s, %s, %s) RETURNING id""",
                        (household_id, season, kind, opened_on, note)).fetchone()[0]


def dispute_household(conn, dispute_id: int) -> int | None:
    row = conn.execute("SELECT household_id FROM dunning_dispute WHERE id = %s", (dispute_id,)).fetchone()
    return row[0] if row else None


def resolve_dispute(conn, dispute_id: int, resolved_on: dt.date) -> bool:
    return conn.execute("UPDATE dunning_dispute SET resolved_on = %s WHERE id = %s AND resolved_on IS NULL",
                        (resolved_on, dispute_id)).rowcount == 1
