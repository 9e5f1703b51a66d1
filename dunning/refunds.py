"""Refunds for non-compliant and stoppage days as dunning needs them (domain.md R13, R22–R25, R40).

The computation is analytics' (``analytics.refund.refund_statement``: tier ratio × daily fee × area
factor, R24 max with stoppage days, R13 which days count). This module only loads its inputs
set-based for a batch of households (one query per kind, not per household) and splits the result:

- ``amount``: the refund that counts now — days confirmed by a 测温 (ticketing's
  ``confirmed_noncompliant_day``), IoT days where the region allows it (iot_counts_for_refund), and
  stoppage days (R25): the supplier's own outage incident is its record, not a suspicion, so it needs
  no 测温; it reduces the amount dunning asks for;
- ``provisional_amount``: what the suspected (IoT-only) days would add once confirmed.

Stoppage days come from ``analytics.refund.stoppage_for_households`` for the whole batch in one query,
the same function the single-household statement (``refund_for_household``) uses; open incidents
count up to ``as_of``, never ahead of the run day.
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field, replace
from decimal import Decimal

from analytics.policy import Policy
from analytics.refund import refund_statement, stoppage_for_households
from dunning.money import ZERO, yuan

#: ticketing's basis 'deemed_below_14' (R12: the company did not test in time → the day is deemed
#: below 14 ℃): passed to analytics as 13.9 ℃ so the "< 14 ℃" tier applies.
DEEMED_BELOW_14_C = 13.9


@dataclass(frozen=True)
class RefundFigures:
    days: int
    amount: Decimal
    provisional_days: int
    provisional_amount: Decimal
    basis: dict = field(default_factory=dict)


def load_refunds(conn, ids: list[int], policy: Policy, season_start: dt.date, season_end: dt.date, as_of: dt.date,
                 bills: dict[int, tuple[Decimal, Decimal, float]], tz: str = "Asia/Shanghai"
                 ) -> dict[int, RefundFigures]:
    """household → RefundFigures for households with any non-compliant, confirmed or stoppage day up to as_of.

    bills: household → (season fee 元, base fee 元, area m²). tz: the local day of incident tickets.
    """
    end = min(as_of, season_end)
    wanted = set(ids)       # an id range is scanned (index range, cheap); rows outside the batch are dropped
    rows: dict[int, list[dict]] = defaultdict(list)
    for hid, day, room_id, room_code, stat_c, ratio, area in conn.execute(
            """SELECT cd.household_id, cd.day, cd.room_id, r.code, cd.stat_c, cd.refund_ratio, r.area_m2
                 FROM compliance_day cd JOIN room r ON r.id = cd.room_id
                WHERE cd.status = 'non_compliant' AND cd.household_id BETWEEN %s AND %s AND cd.day BETWEEN %s AND %s""",
            (min(ids), max(ids), season_start, end)):
        if hid not in wanted:
            continue
        rows[hid].append({"day": day, "room_id": room_id, "room_code": room_code, "status": "non_compliant",
                          "stat_c": stat_c, "refund_ratio": ratio, "room_area_m2": area})
    confirmed: dict[int, dict[dt.date, float | None]] = defaultdict(dict)
    for hid, day, measured, basis in conn.execute(
            """SELECT household_id, day, measured_c, basis FROM confirmed_noncompliant_day
                WHERE household_id = ANY(%s) AND day BETWEEN %s AND %s""", (ids, season_start, end)):
        confirmed[hid][day] = DEEMED_BELOW_14_C if basis == "deemed_below_14" and measured is None else measured
    stoppage = stoppage_for_households(conn, ids, season_start, end, tz)
    out: dict[int, RefundFigures] = {}
    for hid in set(rows) | set(confirmed) | set(stoppage):
        if hid not in bills:
            continue
        fee, base, area = bills[hid]
        common = dict(household_id=hid, policy=policy, season_start=season_start, season_end=season_end,
                      season_fee=float(fee), base_fee=float(base), room_days=rows.get(hid, []),
                      household_area_m2=float(area), stoppage=stoppage.get(hid, {}))
        suspected = {r["day"]: None for r in rows.get(hid, [])}
        everything = refund_statement(confirmed={**suspected, **confirmed.get(hid, {})}, **common)
        if not suspected.keys() - confirmed.get(hid, {}).keys():
            counted = everything                # same inputs (e.g. stoppage days only): one statement
        elif confirmed.get(hid) or stoppage.get(hid) or policy.iot_counts_for_refund:
            counted = refund_statement(confirmed=confirmed.get(hid, {}), **common)
        else:                                   # R13: nothing counts yet; one statement instead of two
            counted = replace(everything, lines=[], total=0.0)
        amount = yuan(counted.total)
        prov = max(ZERO, yuan(everything.total) - amount)
        counted_days = {ln.day for ln in counted.lines}
        out[hid] = RefundFigures(
            days=len(counted.lines), amount=amount,
            provisional_days=len([ln for ln in everything.lines if ln.day not in counted_days]),
            provisional_amount=prov,
            basis={"policy": counted.policy, "daily_fee": counted.daily_fee, "refund_base": counted.refund_base,
                   "statutory_days": counted.statutory_days, "source": "analytics.refund.refund_statement",
                   "lines": [{"day": ln.day.isoformat(), "ratio": ln.ratio, "area_factor": round(ln.area_factor, 4),
                              "amount": ln.amount, "basis": ln.basis} for ln in counted.lines],
                   "provisional_lines": [{"day": ln.day.isoformat(), "ratio": ln.ratio,
                                          "area_factor": round(ln.area_factor, 4), "amount": ln.amount}
                                         for ln in everything.lines if ln.day not in counted_days]})
    return out


def statement_split(refund: Decimal, arrears: Decimal, *, consent: bool, contract_allows: bool
                    ) -> tuple[Decimal, Decimal, str]:
    """R40: offset against arrears only with consent or by contract; the rest is paid out (R23).
    Returns (offset, payout, basis)."""
    if refund <= 0:
        return ZERO, ZERO, "none"
    if (consent or contract_allows) and arrears > 0:
        off = min(refund, arrears)
        return off, refund - off, "consent" if consent else "contract"
    return ZERO, refund, "none"
