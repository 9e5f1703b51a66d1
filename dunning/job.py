"""One dunning run per company and day: load snapshots in batches, decide, act, record.

Safe to run twice: every message has the idempotency key
``dunning:<household>:<season>:<step>:<channel>`` (account, step, period; the channel only changes
after a failed delivery) and the gate skips steps already sent. Instalment reminders (R32,
instalments.notice_for) go through the same gate, send window and outbox with the key
``dunning:<household>:<season>:instalment:<plan>.<part>:<due|missed>:<channel>`` and are recorded in
``dunning_instalment_notice``, so a part is reminded once per kind. Safe to stop mid-run: each batch (decisions, outbox rows, holds,
tickets, refund lines, proposals, run cursor) commits in one transaction, and a run left 'running'
is resumed from its cursor by the next call with the same company, as_of and dry_run.
A dry run records decisions flagged ``dry_run`` and touches nothing else.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable
from zoneinfo import ZoneInfo

import orjson

from dunning import cutoff
from dunning.gate import Decision, Snapshot, decide
from dunning.instalments import InstalmentNotice, notice_for
from dunning.policy import DunningPolicy, PolicyBook
from dunning.store import TZ, RunContext, household_ids, load_snapshots, run_context
from notify import outbox
from ticketing.model import TicketError

log = logging.getLogger(__name__)
ACTOR = "dunning"


@dataclass
class RunSummary:
    run_id: int
    company: str
    as_of: dt.date
    dry_run: bool
    accounts: int = 0
    actions: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    tickets_opened: int = 0
    cutoff_proposals: int = 0
    refund_lines: int = 0
    resumed_from: int = 0
    instalment_notices: Counter = field(default_factory=Counter)   # '<due|missed>:<send|hold|skip>'

    def as_dict(self) -> dict:
        return {"run_id": self.run_id, "company": self.company, "as_of": self.as_of.isoformat(),
                "dry_run": self.dry_run, "accounts": self.accounts, "actions": dict(self.actions),
                "reasons": dict(self.reasons), "tickets_opened": self.tickets_opened,
                "cutoff_proposals": self.cutoff_proposals, "refund_lines": self.refund_lines,
                "resumed_from": self.resumed_from, "instalment_notices": dict(self.instalment_notices)}


def next_send_time(now: dt.datetime, policy: DunningPolicy, tz: str = TZ) -> dt.datetime:
    """The first moment ≥ now inside the send window (weekday mornings by default)."""
    local = now.astimezone(ZoneInfo(tz))
    for i in range(8):
        day = local.date() + dt.timedelta(days=i)
        if day.isoweekday() not in policy.send_weekdays:
            continue
        start = dt.datetime.combine(day, policy.send_start, ZoneInfo(tz))
        end = dt.datetime.combine(day, policy.send_end, ZoneInfo(tz))
        if local < end:
            return max(local, start)
    raise ValueError("send window never opens")


def message_context(ctx: RunContext, snap: Snapshot, d: Decision) -> dict:
    return {"season": ctx.season, "account_no": snap.account_no, "company_name": ctx.company_name,
            "segment": snap.segment, "bill_amount": snap.billed, "paid_amount": snap.paid,
            "amount_due": d.amount_asked, "refund_amount": d.refund_adjust, "late_fee": d.late_fee,
            "due_date": snap.due_date, "payment_methods": ctx.policy.payment_methods,
            "service_phone": ctx.policy.service_phone}


def instalment_context(ctx: RunContext, snap: Snapshot, n: InstalmentNotice) -> dict:
    """Template context of an instalment reminder: the part, never name or address (filled at send, R57).

    {截止日期} (due_date) is this notice's deadline — the part's due date, or for 'missed' the last
    grace day — not the season bill's; {分期日期} is the part's own due date.
    """
    return {"season": ctx.season, "account_no": snap.account_no, "company_name": ctx.company_name,
            "segment": snap.segment, "instalment_seq": n.seq, "instalment_amount": n.unpaid,
            "instalment_date": n.due_date, "due_date": n.pay_by, "payment_methods": ctx.policy.payment_methods,
            "service_phone": ctx.policy.service_phone}


def _start_run(conn, ctx: RunContext, dry_run: bool) -> tuple[int, int]:
    row = conn.execute("""SELECT id, last_household FROM dunning_run WHERE company_id = %s AND as_of = %s
                          AND dry_run = %s AND status = 'running'""", (ctx.company_id, ctx.as_of, dry_run)).fetchone()
    if row:
        log.info("resuming dunning run %s after household %s", row[0], row[1])
        return row[0], row[1]
    rid = conn.execute("INSERT INTO dunning_run (company_id, as_of, dry_run) VALUES (%s, %s, %s) RETURNING id",
                       (ctx.company_id, ctx.as_of, dry_run)).fetchone()[0]
    conn.commit()
    return rid, 0


def run(conn, company_code: str, as_of: dt.date, *, now: dt.datetime, dry_run: bool = False,
        book: PolicyBook | None = None, overrides: dict | None = None, batch_size: int = 5000,
        progress: Callable[[int], None] | None = None, stop_after_batches: int | None = None) -> RunSummary:
    """Run the ladder for one company on local day `as_of`; `now` is the injected clock.

    `stop_after_batches` exists for the "stop mid-run" test and for operators who throttle runs.
    """
    ctx = run_context(conn, company_code, as_of, book=book, overrides=overrides)
    run_id, cursor = _start_run(conn, ctx, dry_run)
    summary = RunSummary(run_id, company_code, as_of, dry_run, resumed_from=cursor)
    not_before = next_send_time(now, ctx.policy)
    batches = 0
    try:
        while True:
            ids = household_ids(conn, ctx, after=cursor, limit=batch_size)
            if not ids:
                break
            snaps, side = load_snapshots(conn, ctx, ids)
            decisions = [decide(s, ctx.policy, as_of) for s in snaps]
            notices = [n for n in (notice_for(s, ctx.policy, as_of) for s in snaps) if n is not None]
            _apply(conn, ctx, run_id, snaps, decisions, side, now=now, not_before=not_before, dry_run=dry_run,
                   summary=summary)
            _apply_instalment_notices(conn, ctx, run_id, {s.household_id: s for s in snaps}, notices,
                                      not_before=not_before, dry_run=dry_run, summary=summary)
            cursor = ids[-1]
            summary.accounts += len(snaps)
            conn.execute("UPDATE dunning_run SET last_household = %s, counts = %s::jsonb WHERE id = %s",
                         (cursor, orjson.dumps(summary.as_dict()).decode(), run_id))
            conn.commit()
            if progress:
                progress(len(snaps))
            batches += 1
            if stop_after_batches is not None and batches >= stop_after_batches:
                return summary
    except Exception as e:
        conn.rollback()
        conn.execute("UPDATE dunning_run SET status = 'failed', error = %s, finished_at = now() WHERE id = %s",
                     (f"{type(e).__name__}: {e}"[:1000], run_id))
        conn.commit()
        raise
    conn.execute("UPDATE dunning_run SET status = 'done', finished_at = now(), counts = %s::jsonb WHERE id = %s",
                 (orjson.dumps(summary.as_dict()).decode(), run_id))
    conn.commit()
    return summary


def _apply(conn, ctx: RunContext, run_id: int, snaps: list[Snapshot], decisions: list[Decision], side: dict, *,
           now: dt.datetime, not_before: dt.datetime, dry_run: bool, summary: RunSummary) -> None:
    holds_open, holds_close, refund_rows, broken = [], [], [], []
    outbox_ids: dict[int, int | None] = {}
    ticket_ids: dict[int, int | None] = {}
    sends: list[tuple[int, dict]] = []
    for snap, d in zip(snaps, decisions):
        summary.actions[d.action] += 1
        summary.reasons.update(d.reasons)
        if dry_run:
            continue
        hid = snap.household_id
        if d.action in ("send", "soften"):
            sends.append((hid, {"idempotency_key": f"dunning:{hid}:{snap.season}:{d.step}:{d.channel}",
                                "household_id": hid,
                                "channel": d.channel, "template": d.template, "source": "dunning",
                                "context": message_context(ctx, snap, d), "not_before": not_before}))
        hold_id = side["open_holds"].get(hid)
        if d.action == "hold":
            if hold_id is None:
                holds_open.append((hid, snap.season, list(d.reasons), ctx.as_of))
            try:
                with conn.transaction():            # savepoint: one refused ticket must not abort the batch
                    ticket_ids[hid] = _ticket(conn, snap, d, now=now, new_hold=hold_id is None)
                if d.open_temp_test:
                    summary.tickets_opened += 1
            except TicketError as e:
                # the hold stands (no reminder goes out); staff see the reason in the run summary and log
                log.warning("household %s: 测温 ticket not opened: %s", hid, e)
                summary.reasons["temp_test_ticket_refused"] += 1
        elif hold_id is not None:
            holds_close.append((ctx.as_of - dt.timedelta(days=1), hold_id))
        rf = side["refunds"].get(hid)
        if rf is not None:
            refund_rows.append((hid, snap.season, rf.days, rf.amount, rf.provisional_days, rf.provisional_amount,
                                orjson.dumps(rf.basis).decode(), now))
        plan = side["plans"].get(hid)
        if plan is not None and plan[1] is False:
            broken.append((ctx.as_of, plan[0]))
        checks = cutoff.cutoff_checks(snap, d, ctx.policy, ctx.as_of)
        if cutoff.is_candidate(checks) and cutoff.propose(conn, snap, checks, ctx.as_of):
            summary.cutoff_proposals += 1
    if sends:
        ids = outbox.enqueue_many(conn, [item for _, item in sends])
        for (hid, item), oid in zip(sends, ids):
            if oid is None:      # already queued (a concurrent or earlier run): point at the existing row
                oid = conn.execute("SELECT id FROM notify_outbox WHERE idempotency_key = %s",
                                   (item["idempotency_key"],)).fetchone()[0]
            outbox_ids[hid] = oid
    rows = [(run_id, snap.household_id, snap.season, ctx.as_of, d.step, d.action, list(d.reasons), d.template,
             d.channel, d.amount_asked, d.refund_adjust, d.late_fee, orjson.dumps(d.evidence).decode(),
             outbox_ids.get(snap.household_id), ticket_ids.get(snap.household_id), dry_run)
            for snap, d in zip(snaps, decisions)]
    with conn.cursor() as cur:
        if holds_open:
            cur.executemany("""INSERT INTO dunning_hold (household_id, season, reasons, started_on)
                               VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING""", holds_open)
        if holds_close:
            cur.executemany("UPDATE dunning_hold SET ended_on = greatest(started_on, %s) WHERE id = %s", holds_close)
        if refund_rows:
            cur.executemany("""INSERT INTO dunning_refund_line (household_id, season, days, amount, provisional_days,
                                                                provisional_amount, basis, computed_at)
                               VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s)
                               ON CONFLICT (household_id, season) DO UPDATE SET days = EXCLUDED.days,
                                   amount = EXCLUDED.amount, provisional_days = EXCLUDED.provisional_days,
                                   provisional_amount = EXCLUDED.provisional_amount, basis = EXCLUDED.basis,
                                   computed_at = EXCLUDED.computed_at""", refund_rows)
            summary.refund_lines += len(refund_rows)
        if broken:
            cur.executemany("""UPDATE dunning_instalment_plan SET status = 'broken', broken_on = %s
                               WHERE id = %s AND status = 'active'""", broken)
        # COPY: a 100 k-account run writes 100 k decisions; text COPY lets the server parse jsonb/text[]
        with cur.copy("""COPY dunning_decision (run_id, household_id, season, as_of, step, action, reasons, template,
                                                channel, amount_asked, refund_adjust, late_fee, evidence, outbox_id,
                                                ticket_id, dry_run) FROM STDIN""") as cp:
            for r in rows:
                cp.write_row(r)


def _apply_instalment_notices(conn, ctx: RunContext, run_id: int, snaps: dict[int, Snapshot],
                              notices: list[InstalmentNotice], *, not_before: dt.datetime, dry_run: bool,
                              summary: RunSummary) -> None:
    """Queue the instalment reminders of one batch (R32) in the batch's transaction.

    Runs after _apply, which marks plans that are no longer on track as broken: notice_for never
    returns a notice for those, so a 'missed' notice only goes while the plan still stands.
    """
    for n in notices:
        summary.instalment_notices[f"{n.kind}:{n.action}"] += 1
    sends = [n for n in notices if n.action == "send"]
    if dry_run or not sends:
        return
    items = [{"idempotency_key": f"dunning:{n.household_id}:{ctx.season}:{n.key}", "household_id": n.household_id,
              "channel": n.channel, "template": n.template, "source": "dunning",
              "context": instalment_context(ctx, snaps[n.household_id], n), "not_before": not_before}
             for n in sends]
    ids = outbox.enqueue_many(conn, items)
    rows = []
    for n, item, oid in zip(sends, items, ids):
        if oid is None:      # already queued (a concurrent or earlier run): point at the existing row
            oid = conn.execute("SELECT id FROM notify_outbox WHERE idempotency_key = %s",
                               (item["idempotency_key"],)).fetchone()[0]
        rows.append((n.plan_id, n.seq, n.kind, n.household_id, run_id, ctx.as_of, n.channel, n.template, n.unpaid,
                     n.pay_by, oid))
    with conn.cursor() as cur:
        cur.executemany("""INSERT INTO dunning_instalment_notice (plan_id, seq, kind, household_id, run_id, as_of,
                                                                 channel, template, unpaid, pay_by, outbox_id)
                           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                           ON CONFLICT (plan_id, seq, kind, channel) DO NOTHING""", rows)


def _ticket(conn, snap: Snapshot, d: Decision, *, now: dt.datetime, new_hold: bool) -> int | None:
    """Open a 测温 ticket through ticketing, or link the decision to the open one (R13, R27)."""
    from ticketing import store as tickets
    if d.open_temp_test:
        res = tickets.request_temp_test(
            conn, snap.household_id, actor=ACTOR, now=now, channel="auto",
            description=f"催费前合规检查：近{len(snap.non_compliant_days)}天疑似室温不达标，"
                        f"{len(snap.unknown_days)}天数据不足；暂停催费，请安排入户测温。")
        tid = res.merged_into or res.ticket_id
        tickets.link_record(conn, tid, kind="dunning_hold", ref=f"{snap.household_id}:{snap.season}", actor=ACTOR,
                            now=now)
        return tid
    if d.link_ticket_id is not None:
        if new_hold:
            tickets.link_record(conn, d.link_ticket_id, kind="dunning_hold", ref=f"{snap.household_id}:{snap.season}",
                                actor=ACTOR, now=now)
        return d.link_ticket_id
    return snap.open_low_temp_ticket_ids[0] if snap.open_low_temp_ticket_ids else None


def preview(conn, company_code: str, household_id: int, as_of: dt.date, *, book: PolicyBook | None = None
            ) -> tuple[Snapshot, Decision, dict]:
    """Dry-run one household (API): the decision, reasons and evidence; nothing is written."""
    ctx = run_context(conn, company_code, as_of, book=book)
    snaps, _ = load_snapshots(conn, ctx, [household_id])
    if not snaps:
        raise LookupError(f"household {household_id} has no {ctx.season} bill in company {company_code}")
    d = decide(snaps[0], ctx.policy, as_of)
    checks = cutoff.cutoff_checks(snaps[0], d, ctx.policy, as_of)
    return snaps[0], d, checks
