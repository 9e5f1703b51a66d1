"""THE COMPLIANCE GATE: before any reminder, look at the household's heat, complaints and situation.

Pure: :func:`decide` maps a :class:`Snapshot` (everything known about one household's heat-fee
ledger on ``as_of``, loaded set-based by dunning/store.py) and the region's DunningPolicy to a
:class:`Decision`: send / soften / hold / skip, with reason codes and the evidence looked at.

Order of precedence (each rule cites domain.md):
1. nothing owed after confirmed refunds (R22, R40) → skip ``paid_up``; 报停 without reminders → skip.
2. no ladder step has arrived (R39) → skip ``not_due_yet``.
3. HOLD (and keep the 违约金 paused, R35) when any of:
   - suspected non-compliance: ≥ N non-compliant days in the lookback (R13: IoT raises suspicion →
     open or link a 测温 ticket);
   - unknown days while a low-temperature complaint is open → 测温 ticket;
   - an open low-temperature complaint / 测温 (R27) or an open refund/bill dispute (R36 guard);
   - a consequence step (催缴通知书) on an extreme-cold day (R6, DESIGN safeguard).
4. skip when 缓缴 is in force or an instalment plan is on track (R32, R38).
5. skip when this step was already sent, or the minimum interval since the last notice has not passed.
6. hardship (R38): consequence steps are skipped, others go out with gentle wording, no 违约金 → ``soften``.
7. otherwise ``send`` on the first channel the household has an address for and that has not
   already failed for this step (a failed delivery is no notice; the next channel is tried).

The holds of 3. are :func:`hold_reasons`, which instalment reminders (instalments.notice_for) share.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

from dunning.late_fee import LateFee, compute_late_fee
from dunning.money import ZERO, yuan
from dunning.policy import DunningPolicy, Step

ACTIONS = ("send", "soften", "hold", "skip")


@dataclass(frozen=True)
class Snapshot:
    household_id: int
    account_no: str
    segment: str
    heating_status: str                       # active | stopped (报停)
    individually_valved: bool
    season: str
    due_date: dt.date
    billed: Decimal
    paid: Decimal
    payments: tuple[tuple[dt.date, Decimal], ...] = ()
    # compliance in the lookback window (compliance_household_day)
    non_compliant_days: tuple[dt.date, ...] = ()
    unknown_days: tuple[dt.date, ...] = ()
    extreme_cold_today: bool = False
    # refund (R22) accumulated over the season so far
    refund_days: int = 0
    refund_amount: Decimal = ZERO                        # counts now (confirmed, R13) → reduces the ask
    provisional_refund: Decimal = ZERO                   # suspected IoT days, pending a 测温
    # tickets (ticketing contract) and disputes
    open_low_temp_ticket_ids: tuple[int, ...] = ()      # active complaint with low_temperature, or 测温
    open_temp_test_ticket_id: int | None = None
    dispute_refs: tuple[str, ...] = ()                   # 'ticket:12', 'dunning_dispute:3'
    open_incident_ticket_ids: tuple[int, ...] = ()       # open substation outage incidents linking the household
    # situation
    hardship_until: dt.date | None = None                # in force on as_of (R38), else None
    deferral_until: dt.date | None = None                # 缓缴 in force on as_of
    instalment_plan_id: int | None = None
    instalment_on_track: bool | None = None              # None: no active plan
    instalment_parts: tuple[tuple[int, dt.date, Decimal], ...] = ()   # active plan: (seq, due date, 元)
    instalment_paid: Decimal = ZERO                      # paid since the plan started (covers parts in order)
    instalment_notices_sent: frozenset[tuple[int, str]] = frozenset()  # (seq, 'due'|'missed') not failed
    instalment_failed_channels: dict[tuple[int, str], frozenset[str]] = field(default_factory=dict)
    # ladder history (non-dry-run sends)
    sent_steps: dict[str, dt.date] = field(default_factory=dict)
    last_notice_on: dt.date | None = None
    failed_channels: dict[str, frozenset[str]] = field(default_factory=dict)   # step → channels that failed
    formal_delivered_on: dt.date | None = None
    formal_proof: str | None = None
    formal_outbox_id: int | None = None
    pauses: tuple[tuple[dt.date, dt.date | None], ...] = ()   # 违约金 pause windows already on record
    open_hold_since: dt.date | None = None               # a gate hold still open from an earlier run
    channels: frozenset[str] = frozenset()               # channels with a known address
    cutoff_open: bool = False                            # a proposal is already pending/approved

    @property
    def outstanding(self) -> Decimal:
        return self.billed - self.paid


@dataclass(frozen=True)
class Decision:
    household_id: int
    season: str
    as_of: dt.date
    action: str
    reasons: tuple[str, ...]
    step: str | None = None
    template: str | None = None
    channel: str | None = None
    amount_asked: Decimal = ZERO
    refund_adjust: Decimal = ZERO
    late_fee: Decimal = ZERO
    open_temp_test: bool = False                         # executor opens a 测温 ticket (ticketing)
    link_ticket_id: int | None = None                    # executor links the decision to this ticket
    staff_task: bool = False
    consequence: bool = False
    evidence: dict = field(default_factory=dict)


def current_step(policy: DunningPolicy, due_date: dt.date, as_of: dt.date) -> Step | None:
    """The latest ladder step whose date has arrived (earlier unsent steps are superseded)."""
    arrived = [s for s in policy.ladder if due_date + dt.timedelta(days=s.offset_days) <= as_of]
    return arrived[-1] if arrived else None


def late_fee_for(snap: Snapshot, policy: DunningPolicy, as_of: dt.date, principal: Decimal,
                 extra_pauses: tuple = ()) -> LateFee:
    pauses = list(snap.pauses) + list(extra_pauses)
    if snap.open_hold_since is not None:               # not held today: the hold ended yesterday (R35)
        pauses.append((snap.open_hold_since, as_of - dt.timedelta(days=1)))
    if snap.hardship_until is not None:
        pauses.append((snap.due_date, None))       # R38: no 违约金 while hardship is in force
    return compute_late_fee(principal=principal, due_date=snap.due_date, as_of=as_of, payments=snap.payments,
                            pauses=pauses, daily_rate=policy.late_fee_daily_rate, cap_ratio=policy.late_fee_cap_ratio,
                            grace_days=policy.late_fee_grace_days)


def hold_reasons(snap: Snapshot, policy: DunningPolicy, *, consequence: bool) -> tuple[list[str], bool]:
    """Why nothing may be sent to this household today, and whether a 测温 is needed (R13, R27, R35, R36).

    One definition for every message dunning sends — ladder steps and instalment reminders alike —
    so a household under a compliance hold hears nothing about money until the hold ends.
    `consequence`: the message would start a legal clock (only then does extreme cold hold it, R6).
    """
    hold: list[str] = []
    needs_test = False
    heated = snap.heating_status != "stopped"      # a 报停 household expects no heat: compliance is moot
    if heated and len(snap.non_compliant_days) >= max(1, policy.min_non_compliant_days):
        hold.append("suspected_non_compliance")
        needs_test = True
    if heated and snap.unknown_days and snap.open_low_temp_ticket_ids and policy.hold_on_unknown_with_complaint:
        hold.append("unknown_days_with_complaint")
        needs_test = True
    if snap.open_low_temp_ticket_ids:
        hold.append("open_low_temp_complaint")
    if snap.dispute_refs:
        hold.append("open_dispute")
    if heated and snap.open_incident_ticket_ids:
        # the supplier's own outage is under way (R25): reminding now invites a complaint, and the
        # stoppage days are still to be refunded; the incident closes only after temperatures recover
        hold.append("open_outage_incident")
    if consequence and snap.extreme_cold_today and policy.extreme_cold_blocks_consequence:
        hold.append("extreme_cold")
    return hold, needs_test


def decide(snap: Snapshot, policy: DunningPolicy, as_of: dt.date) -> Decision:
    refund_adjust = yuan(snap.refund_amount)
    principal = snap.billed - refund_adjust
    amount = yuan(principal - snap.paid)
    evidence: dict = {
        "billed": str(snap.billed), "paid": str(snap.paid), "due_date": snap.due_date.isoformat(),
        "policy": f"{policy.code} v{policy.version}",
        "compliance": {"non_compliant_days": [d.isoformat() for d in snap.non_compliant_days],
                       "unknown_days": [d.isoformat() for d in snap.unknown_days],
                       "lookback_days": policy.lookback_days},
        "refund": {"days": snap.refund_days, "amount": str(refund_adjust),
                   "provisional_amount": str(yuan(snap.provisional_refund))},
        "tickets": list(snap.open_low_temp_ticket_ids), "disputes": list(snap.dispute_refs),
        "incidents": list(snap.open_incident_ticket_ids),
    }

    def out(action: str, reasons: list[str], step: Step | None = None, **kw) -> Decision:
        return Decision(snap.household_id, snap.season, as_of, action, tuple(reasons),
                        step=step.step if step else None, amount_asked=max(amount, ZERO),
                        refund_adjust=refund_adjust, evidence=evidence, **kw)

    if amount <= 0:
        return out("skip", ["paid_up"])
    if snap.heating_status == "stopped" and not policy.remind_stopped:
        return out("skip", ["stopped_no_reminders"])
    step = current_step(policy, snap.due_date, as_of)
    if step is None:
        return out("skip", ["not_due_yet"])

    # --- holds (R13, R27, R35, R36) -------------------------------------------------------------
    hold, needs_test = hold_reasons(snap, policy, consequence=step.consequence)
    if hold:
        link = snap.open_temp_test_ticket_id
        return out("hold", hold, step, open_temp_test=needs_test and link is None,
                   link_ticket_id=link if needs_test else None)

    # --- situation (R32, R38) -------------------------------------------------------------------
    if snap.deferral_until is not None and snap.deferral_until >= as_of:
        evidence["deferral_until"] = snap.deferral_until.isoformat()
        return out("skip", ["deferred"], step)
    if snap.instalment_on_track:
        evidence["instalment_plan_id"] = snap.instalment_plan_id
        return out("skip", ["instalment_on_track"], step)
    info = ["instalment_missed"] if snap.instalment_on_track is False else []

    # --- ladder bookkeeping ---------------------------------------------------------------------
    if step.step in snap.sent_steps:
        return out("skip", ["already_sent"], step)
    if snap.last_notice_on is not None and (as_of - snap.last_notice_on).days < step.min_interval_days:
        evidence["last_notice_on"] = snap.last_notice_on.isoformat()
        return out("skip", ["min_interval"], step)

    hardship = snap.hardship_until is not None
    if hardship and step.consequence:
        return out("skip", ["hardship_no_consequence"], step)
    failed = snap.failed_channels.get(step.step, frozenset())
    channel = next((c for c in step.channels if c in snap.channels and c not in failed), None)
    if channel is None:
        return out("hold", ["no_contact_channel"], step)
    fee = late_fee_for(snap, policy, as_of, principal)
    evidence["late_fee"] = {"label": fee.label, "accrual_days": fee.accrual_days, "paused_days": fee.paused_days,
                            "capped": fee.capped, "rate": str(policy.late_fee_daily_rate)}
    if hardship:
        evidence["hardship_until"] = snap.hardship_until.isoformat()
        return out("soften", info + ["hardship_gentle"], step, template=policy.hardship_template, channel=channel,
                   late_fee=ZERO, staff_task=step.staff_task)
    return out("send", info + ["ladder_step"], step, template=step.template, channel=channel, late_fee=fee.amount,
               staff_task=step.staff_task, consequence=step.consequence)
