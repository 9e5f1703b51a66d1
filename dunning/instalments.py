"""分期 (instalments, R32), 缓缴 (deferral) and hardship status (R38, sensitive per R57).

- A plan has min_parts..max_parts parts summing to the outstanding amount; the first part must be
  ≥ min_first_ratio of the total where the policy says so (county template [S9]: 30 %).
- On track = payments since the plan started cover every part due more than `grace_days` ago.
  A missed part breaks the plan; the ladder then resumes (gate reason ``instalment_missed``).
- Hardship category (低保/特困/other) and the verification document reference are encrypted
  (SM4-GCM via core.pii) in ``pii.dunning_hardship``; only the validity dates are in clear.
"""
from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Sequence

from core.pii import KEY_VERSION, FieldCipher
from dunning.money import yuan
from dunning.policy import DunningPolicy

HARDSHIP_CATEGORIES = ("dibao", "tekun", "other")     # 低保, 特困, other


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
