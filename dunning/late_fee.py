"""违约金 (contractual late charge, domain.md R34–R35): simple daily rate on the unpaid principal.

- Label: 违约金, never 滞纳金 (R34).
- Simple, never compounding: the base is the unpaid *principal* only, never earlier 违约金.
- Accrues from the day after ``due_date + grace_days`` up to and including ``as_of``.
- A payment dated d reduces the principal from day d on (payments go to principal first).
- Paused on every day inside a pause window (holds, hardship, 缓缴, disputes, instalment on track,
  cut-off — R32, R35, R38); windows are inclusive [start, end], end None = still open.
- Capped at ``cap_ratio × principal``.
Pure; amounts in 元 as Decimal, rounded to the fen once, at the end.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Iterable, Sequence

from dunning.money import ZERO, yuan

LABEL = "违约金"


@dataclass(frozen=True)
class LateFee:
    amount: Decimal
    accrual_days: int         # days on which 违约金 accrued
    paused_days: int          # overdue days with an unpaid balance on which accrual was paused
    capped: bool
    label: str = LABEL


def _paused(day: dt.date, pauses: Sequence[tuple[dt.date, dt.date | None]]) -> bool:
    return any(s <= day and (e is None or day <= e) for s, e in pauses)


def compute_late_fee(*, principal: Decimal, due_date: dt.date, as_of: dt.date,
                     payments: Iterable[tuple[dt.date, Decimal]] = (),
                     pauses: Sequence[tuple[dt.date, dt.date | None]] = (),
                     daily_rate: Decimal, cap_ratio: Decimal, grace_days: int = 0) -> LateFee:
    """违约金 accrued by `as_of` (see module docstring). Runs in O(breakpoints), not O(days)."""
    first = due_date + dt.timedelta(days=grace_days + 1)
    if principal <= 0 or as_of < first or daily_rate <= 0:
        return LateFee(ZERO, 0, 0, False)
    pays = sorted((d, Decimal(a)) for d, a in payments)
    # breakpoints where the unpaid amount or the pause state may change
    cuts = {first, as_of + dt.timedelta(days=1)}
    cuts.update(d for d, _ in pays if first < d <= as_of)
    for s, e in pauses:
        if first < s <= as_of:
            cuts.add(s)
        if e is not None and first <= e < as_of:
            cuts.add(e + dt.timedelta(days=1))
    cuts = sorted(cuts)
    fee, accrual, paused = Decimal(0), 0, 0
    i, paid = 0, Decimal(0)
    for a, b in zip(cuts, cuts[1:]):          # segment [a, b) has constant state
        while i < len(pays) and pays[i][0] <= a:
            paid += pays[i][1]
            i += 1
        unpaid = principal - paid
        if unpaid <= 0:
            continue
        n = (b - a).days
        if _paused(a, pauses):
            paused += n
            continue
        accrual += n
        fee += unpaid * daily_rate * n
    cap = principal * cap_ratio
    capped = fee > cap
    return LateFee(yuan(min(fee, cap)), accrual, paused, capped)
