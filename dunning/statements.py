"""Season-end refund statements per household (R23, R40).

For each household with a refund that counts (confirmed days, R13) for the season: arrears before the offset, the
offset (only with the household's consent in dunning_offset_consent, or where the contract allows
it per policy), and the payout with its deadline (region policy R23, else season end + N days).
The offset is booked as a `refund_offset` payment (idempotent external id), the statement is
stored once and a 退费结算单 message is queued. Provisional (IoT-only, R13) amounts are not part of a statement.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from analytics.policy import default_table
from dunning.ledger import COMPANY_HOUSEHOLDS_SQL, record_payment
from dunning.money import ZERO
from dunning.policy import PolicyBook, default_book, season_label
from dunning.refunds import statement_split
from notify import outbox


@dataclass
class StatementSummary:
    statements: int = 0
    offset_total: object = ZERO
    payout_total: object = ZERO


def season_statements(conn, company_code: str, season_year: int, *, now: dt.datetime,
                      book: PolicyBook | None = None, channel: str = "letter") -> StatementSummary:
    label = season_label(season_year)
    co = conn.execute("SELECT name, region_code FROM company WHERE code = %s", (company_code,)).fetchone()
    if co is None:
        raise ValueError(f"unknown company {company_code!r}")
    name, region = co
    policy = (book or default_book()).resolve(region, company_code)
    rp = default_table().resolve(region, dt.date(season_year, 12, 1))
    _, season_end = rp.season.bounds(season_year)
    deadline = rp.refund_deadline(season_year) or season_end + dt.timedelta(days=policy.payout_days_after_season)
    rows = conn.execute(
        """SELECT r.household_id, h.code, h.segment, r.days, r.amount,
                  b.amount - COALESCE((SELECT sum(p.amount) FROM dunning_payment p
                                        WHERE p.household_id = r.household_id AND p.season = r.season), 0) AS arrears,
                  c.household_id IS NOT NULL AS consent
             FROM dunning_refund_line r JOIN (""" + COMPANY_HOUSEHOLDS_SQL + """) h ON h.id = r.household_id
             JOIN dunning_bill b ON b.household_id = r.household_id AND b.season = r.season
             LEFT JOIN dunning_offset_consent c ON c.household_id = r.household_id AND c.season = r.season
             LEFT JOIN dunning_refund_statement s ON s.household_id = r.household_id AND s.season = r.season
            WHERE r.season = %s AND r.amount > 0 AND s.household_id IS NULL
            ORDER BY r.household_id""", (company_code, label)).fetchall()
    out = StatementSummary()
    for hid, code, segment, days, refund, arrears, consent in rows:
        offset, payout, basis = statement_split(refund, max(arrears, ZERO), consent=consent,
                                                contract_allows=policy.contract_allows_offset)
        if offset > 0:
            record_payment(conn, household_id=hid, amount=offset, channel="refund_offset",
                           external_id=f"refund-offset:{hid}:{label}", paid_at=now, season=label,
                           note=f"R40 offset ({basis})")
        oid = outbox.enqueue(conn, idempotency_key=f"refund_statement:{hid}:{label}", household_id=hid,
                             channel=channel, template="dunning.refund_statement", source="dunning",
                             context={"season": label, "account_no": code, "segment": segment, "refund_days": days,
                                      "refund_amount": refund, "offset_amount": offset, "payout_amount": payout,
                                      "due_date": deadline, "service_phone": policy.service_phone,
                                      "company_name": name})
        conn.execute("""INSERT INTO dunning_refund_statement (household_id, season, refund_days, refund_amount,
                            arrears_before, offset_amount, payout_amount, offset_basis, payout_deadline, outbox_id)
                        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                     (hid, label, days, refund, arrears, offset, payout, basis, deadline, oid))
        out.statements += 1
        out.offset_total += offset
        out.payout_total += payout
    return out
