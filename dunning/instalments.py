"""分期 (instalments, R32), 缓缴 (deferral) and hardship status (R38, sensitive per R57).

- A plan has min_parts..max_parts parts summing to the outstanding amount; the first part must be
  ≥ min_first_ratio of the total where the policy says so (county template [S9]: 30 %).
- On track = payments since the plan started cover every part due more than `grace_days` ago.
  A missed part breaks the plan; the ladder then resumes (gate reason ``instalment_missed``).
- Reminders (:func:`notice_for`, pure): a ``due`` reminder from `reminder_lead_days` before the first
  unpaid part falls due, and a ``missed`` notice in its grace days, while the plan still stands — the
  household hears about the part before the plan breaks. Both pass the gate's holds
  (``gate.hold_reasons``), 缓缴 and the channel rules, and go out once per part and kind: the job
  records them in ``dunning_instalment_notice`` and the outbox key is per part, kind and channel.
- Hardship category (低保/特困/other) and the verification document reference are encrypted
  (SM4-GCM via core.pii) in ``pii.dunning_hardship``; only the validity dates are in clear.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Sequence

from core.pii import KEY_VERSION, FieldCipher
from dunning.gate import Snapshot, hold_reasons
from dunning.money import ZERO, yuan
from dunning.policy import DunningPolicy

HARDSHIP_CATEGORIES = ("dibao", "tekun", "other")     # 低保, 特困, other


@dataclass(frozen=True)
class InstalmentNotice:
    """What to do today about the first unpaid part of a household's active plan."""
    household_id: int
    plan_id: int
    seq: int
    kind: str                      # due | missed
    action: str                    # send | hold | skip
    reasons: tuple[str, ...]
    due_date: dt.date
    unpaid: Decimal                # 元 of this part not yet covered by payments since the plan started
    pay_by: dt.date                # the due date, or the last grace day for 'missed'
    template: str | None = None
    channel: str | None = None

    @property
    def key(self) -> str:
        """Outbox idempotency suffix: one message per plan part, kind and channel (the channel only
        changes after a failed delivery), as the ladder's ``<step>:<channel>``."""
        return f"instalment:{self.plan_id}.{self.seq}:{self.kind}:{self.channel}"


def validate_plan(total: Decimal, parts: Sequence[tuple[dt.date, Decimal]], policy: DunningPolicy) -> None:
    n = len(parts)
    if not policy.instalment_min_parts <= n <= policy.instalment_max_parts:
        raise ValueError(f"an instalment plan has {policy.instalment_min_parts}–{policy.instalment_max_parts} parts, got {n}")
    if any(a <= 0 for _, a in parts):
        raise ValueError("every part must be positive")
    dates = [d for d, _ in parts]
    if dates != sorted(dates) or len(set(dates)) != n:
        raise ValueError("part dates must be strictly increasing")
    if yuan(sum(a for _, a in parts)) != yuan(total):
        raise ValueError(f"parts sum to {yuan(sum(a for _, a in parts))} 元, plan total is {yuan(total)} 元")
    if parts[0][1] < yuan(total * policy.instalment_min_first_ratio):
        raise ValueError(f"first part must be ≥ {policy.instalment_min_first_ratio:.0%} of {yuan(total)} 元 (R32)")


def split_even(total: Decimal, n: int, first_ratio: Decimal, start: dt.date, every_days: int = 30
               ) -> list[tuple[dt.date, Decimal]]:
    """A default plan: first part first_ratio × total, the rest evenly (the last absorbs the fen)."""
    first = yuan(total * first_ratio)
    rest = n - 1
    each = yuan((total - first) / rest) if rest else Decimal(0)
    parts = [(start, first)] + [(start + dt.timedelta(days=every_days * i), each) for i in range(1, n)]
    if rest:
        parts[-1] = (parts[-1][0], yuan(total - first - each * (rest - 1)))
    return parts


def create_plan(conn, *, household_id: int, season: str, total: Decimal, parts: Sequence[tuple[dt.date, Decimal]],
                policy: DunningPolicy, created_on: dt.date, created_by: str) -> int:
    validate_plan(total, parts, policy)
    row = conn.execute("""INSERT INTO dunning_instalment_plan (household_id, season, total, created_on, created_by)
                          VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id""",
                       (household_id, season, yuan(total), created_on, created_by)).fetchone()
    if row is None:
        raise ValueError(f"household {household_id} already has an active instalment plan for {season}")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO dunning_instalment (plan_id, seq, due_date, amount) VALUES (%s, %s, %s, %s)",
                        [(row[0], i + 1, d, yuan(a)) for i, (d, a) in enumerate(parts)])
    return row[0]


def on_track(parts: Sequence[tuple[dt.date, Decimal]], paid_since_start: Decimal, as_of: dt.date,
             grace_days: int) -> bool:
    """Pure: every part due more than `grace_days` before as_of is covered by payments since the start."""
    owed = sum((a for d, a in parts if d + dt.timedelta(days=grace_days) < as_of), Decimal(0))
    return paid_since_start >= owed


def first_unpaid(parts: Sequence[tuple[int, dt.date, Decimal]], paid_since_start: Decimal
                 ) -> tuple[tuple[int, dt.date, Decimal], Decimal] | None:
    """Pure: the earliest part that payments since the start do not cover (they cover parts in
    order, as :func:`on_track` counts them) and its unpaid 元; None when every part is covered."""
    covered = Decimal(0)
    for part in sorted(parts, key=lambda p: p[1]):
        covered += part[2]
        if paid_since_start < covered:
            return part, yuan(min(part[2], covered - paid_since_start))
    return None


def notice_for(snap: Snapshot, policy: DunningPolicy, as_of: dt.date) -> InstalmentNotice | None:
    """Pure: the instalment reminder for this household today, or None when no part is in its window.

    Windows (policy.instalments): ``due`` on [due − reminder_lead_days, due], ``missed`` on
    [due + 1, due + grace_days] — the days a part is late but the plan still stands (R32). A plan
    that is no longer on track is broken by this run and the ladder takes over: no notice here.
    Then, as for a ladder step (gate.decide): nothing owed after confirmed refunds → skip; 报停
    without reminders → skip; a gate hold (R13, R27, R35, R36; never 'extreme_cold', which holds only
    consequence steps) → hold; 缓缴 in force (R38) → skip; already sent → skip; no address on the
    policy's channels → hold; else send. Hardship (R38) sends the same neutral reminder: it names
    only the part, never a 违约金 or a consequence beyond the plan itself.
    """
    if snap.instalment_plan_id is None or not snap.instalment_parts or snap.instalment_on_track is False:
        return None
    first = first_unpaid(snap.instalment_parts, snap.instalment_paid)
    if first is None:
        return None
    (seq, due, _amount), unpaid = first
    if due - dt.timedelta(days=policy.instalment_reminder_lead_days) <= as_of <= due:
        kind, pay_by, template = "due", due, policy.instalment_due_template
    elif due < as_of <= due + dt.timedelta(days=policy.instalment_grace_days):
        kind, pay_by, template = "missed", due + dt.timedelta(days=policy.instalment_grace_days), \
            policy.instalment_missed_template
    else:
        return None

    def out(action: str, reasons: list[str], **kw) -> InstalmentNotice:
        return InstalmentNotice(snap.household_id, snap.instalment_plan_id, seq, kind, action, tuple(reasons),
                                due, unpaid, pay_by, **kw)

    if yuan(snap.billed - snap.refund_amount - snap.paid) <= ZERO:
        return out("skip", ["paid_up"])
    if snap.heating_status == "stopped" and not policy.remind_stopped:
        return out("skip", ["stopped_no_reminders"])
    hold, _ = hold_reasons(snap, policy, consequence=False)
    if hold:
        return out("hold", hold)
    if snap.deferral_until is not None and snap.deferral_until >= as_of:
        return out("skip", ["deferred"])
    if (seq, kind) in snap.instalment_notices_sent:
        return out("skip", ["already_sent"])
    failed = snap.instalment_failed_channels.get((seq, kind), frozenset())
    channel = next((c for c in policy.instalment_channels if c in snap.channels and c not in failed), None)
    if channel is None:
        return out("hold", ["no_contact_channel"])
    return out("send", [f"instalment_{kind}"], template=template, channel=channel)


def grant_deferral(conn, *, household_id: int, season: str, until: dt.date, reason: str, granted_on: dt.date,
                   granted_by: str) -> int:
    """缓缴 until a date (R38): no reminders and no 违约金 in the window."""
    if not reason.strip():
        raise ValueError("a deferral needs a reason")
    if until < granted_on:
        raise ValueError("deferral ends before it starts")
    return conn.execute("""INSERT INTO dunning_deferral (household_id, season, granted_on, until_date, reason, granted_by)
                           VALUES (%s, %s, %s, %s, %s, %s) RETURNING id""",
                        (household_id, season, granted_on, until, reason, granted_by)).fetchone()[0]


def set_hardship(conn, cipher: FieldCipher, *, household_id: int, category: str, doc_ref: str | None,
                 valid_from: dt.date, expires_on: dt.date, verified_by: str) -> None:
    """Record verified hardship (低保/特困/other), encrypted (R57). Replaces an earlier record."""
    if category not in HARDSHIP_CATEGORIES:
        raise ValueError(f"hardship category must be one of {HARDSHIP_CATEGORIES}")
    if expires_on < valid_from:
        raise ValueError("hardship expires before it starts")
    conn.execute(
        """INSERT INTO pii.dunning_hardship (household_id, category_enc, doc_ref_enc, valid_from, expires_on,
                                             verified_by, key_version)
           VALUES (%s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (household_id) DO UPDATE SET category_enc = EXCLUDED.category_enc,
               doc_ref_enc = EXCLUDED.doc_ref_enc, valid_from = EXCLUDED.valid_from, expires_on = EXCLUDED.expires_on,
               verified_by = EXCLUDED.verified_by, key_version = EXCLUDED.key_version, updated_at = now()""",
        (household_id, cipher.encrypt(category), cipher.encrypt(doc_ref), valid_from, expires_on, verified_by,
         KEY_VERSION))


def read_hardship(conn, cipher: FieldCipher, household_id: int) -> dict | None:
    """Decrypted hardship record for authorised staff screens (the caller logs PII access)."""
    row = conn.execute("""SELECT category_enc, doc_ref_enc, valid_from, expires_on, verified_by
                          FROM pii.dunning_hardship WHERE household_id = %s""", (household_id,)).fetchone()
    if row is None:
        return None
    return {"category": cipher.decrypt(row[0]), "doc_ref": cipher.decrypt(row[1]), "valid_from": row[2],
            "expires_on": row[3], "verified_by": row[4]}
