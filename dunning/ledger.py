"""The heat-fee ledger: season bills, payment events, balances (R31, R37, R42–R43).

One ledger per household: nothing here looks at property, water or power fees, at neighbours or at
other households' debts (R37). A payment is accepted whatever else the household owes.
Payments are idempotent on (channel, external_id): a replay returns the original row; a replay
with *different* data is refused (a recorded rejection, never a silent overwrite).
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import logging
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson

from analytics.policy import default_table
from dunning.money import yuan
from dunning.policy import PolicyBook, default_book, season_label, season_year_from_label, season_year_of
from dunning.tariff import season_bill

log = logging.getLogger(__name__)

PAYMENT_CHANNELS = ("counter", "bank", "wechat", "alipay", "government_subsidy", "refund_offset", "adjustment")

COMPANY_HOUSEHOLDS_SQL = """
    SELECT h.id, h.code, h.area_m2, h.segment, h.billing_method, h.heating_status, h.individually_valved,
           co.id AS company_id, co.code AS company_code, co.region_code
      FROM household h JOIN unit u ON u.id = h.unit_id JOIN building b ON b.id = u.building_id
      JOIN community c ON c.id = b.community_id JOIN substation s ON s.id = c.substation_id
      JOIN branch br ON br.id = s.branch_id JOIN company co ON co.id = br.company_id
     WHERE co.code = %s"""


class PaymentConflict(ValueError):
    """The external id was already used for a different payment."""


@dataclass(frozen=True)
class PaymentResult:
    payment_id: int
    duplicate: bool


@dataclass
class ImportReport:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)   # (CSV line, reason)


def season_bounds(region_code: str, season_year: int) -> tuple[dt.date, dt.date]:
    """Statutory season (R41) from the analytics region policy, so billing and compliance agree."""
    pol = default_table().resolve(region_code, dt.date(season_year, 12, 1))
    return pol.season.bounds(season_year)


def generate_bills(conn, company_code: str, season_year: int, *, book: PolicyBook | None = None) -> int:
    """Create missing season bills for every household of the company; returns how many were created.

    Idempotent (UNIQUE household, season): re-running never changes an existing bill.
    """
    book = book or default_book()
    rows = conn.execute(COMPANY_HOUSEHOLDS_SQL, (company_code,)).fetchall()
    if not rows:
        return 0
    region = rows[0][9]
    policy = book.resolve(region, company_code)
    start, end = season_bounds(region, season_year)
    due = policy.due_date(season_year)
    label = season_label(season_year)
    params = []
    for (hid, _code, area, segment, method, status, _valved, _cid, _cc, _rc) in rows:
        calc = season_bill(area_m2=area, segment=segment, billing_method=method, heating_status=status, policy=policy)
        params.append((hid, label, start, end, due, calc.amount, calc.base_amount, calc.tariff_code,
                       orjson.dumps(calc.basis).decode()))
    count_sql = ("SELECT count(*) FROM dunning_bill b JOIN (" + COMPANY_HOUSEHOLDS_SQL +
                 ") h ON h.id = b.household_id WHERE b.season = %s")
    before = conn.execute(count_sql, (company_code, label)).fetchone()[0]
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO dunning_bill (household_id, season, period_start, period_end, due_date, amount, base_amount,
                                         tariff_code, basis)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT (household_id, season) DO NOTHING""",
            params)
    return conn.execute(count_sql, (company_code, label)).fetchone()[0] - before


def record_payment(conn, *, household_id: int, amount, channel: str, external_id: str, paid_at: dt.datetime,
                   season: str | None = None, note: str | None = None, tz: str = "Asia/Shanghai") -> PaymentResult:
    """Record one payment event (counter, bank, WeChat, Alipay, government subsidy R38); idempotent."""
    if channel not in PAYMENT_CHANNELS:
        raise ValueError(f"unknown payment channel {channel!r}; expected one of {PAYMENT_CHANNELS}")
    if not external_id:
        raise ValueError("external_id is required (idempotency)")
    if paid_at.tzinfo is None:
        raise ValueError("paid_at must be timezone-aware")
    try:
        amt = yuan(amount)
    except (InvalidOperation, ValueError):
        raise ValueError(f"bad amount {amount!r}") from None
    if amt == 0:
        raise ValueError("amount must not be zero")
    season = season or season_label(season_year_of(paid_at.astimezone(ZoneInfo(tz)).date()))
    season_year_from_label(season)
    row = conn.execute(
        """INSERT INTO dunning_payment (household_id, season, amount, channel, external_id, paid_at, note)
           VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (channel, external_id) DO NOTHING RETURNING id""",
        (household_id, season, amt, channel, external_id, paid_at, note)).fetchone()
    if row:
        return PaymentResult(row[0], False)
    pid, hh, a, s = conn.execute("""SELECT id, household_id, amount, season FROM dunning_payment
                                    WHERE channel = %s AND external_id = %s""", (channel, external_id)).fetchone()
    if (hh, a, s) != (household_id, amt, season):
        raise PaymentConflict(f"{channel}/{external_id} already recorded as payment {pid} "
                              f"(household {hh}, {a} 元, season {s})")
    return PaymentResult(pid, True)


def household_id_by_code(conn, code: str) -> int | None:
    row = conn.execute("SELECT id FROM household WHERE code = %s", (code,)).fetchone()
    return row[0] if row else None


CSV_COLUMNS = ("household_code", "amount", "channel", "external_id", "paid_at")


def import_payments_csv(conn, source: Path | str | io.TextIOBase, *, tz: str = "Asia/Shanghai") -> ImportReport:
    """Import bank/counter payment files: columns household_code, amount, channel, external_id, paid_at
    [, season, note]. paid_at is ISO 8601; without an offset it is local time (`tz`).

    Each row runs in a savepoint: a bad row is reported with its line number and reason and the rest
    go in. The caller commits.
    """
    f = open(source, encoding="utf-8-sig", newline="") if isinstance(source, (str, Path)) else source
    report = ImportReport()
    try:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"payment CSV lacks columns {missing}; expected {CSV_COLUMNS} [+ season, note]")
        for row in reader:
            line = reader.line_num
            try:
                hid = household_id_by_code(conn, (row["household_code"] or "").strip())
                if hid is None:
                    raise ValueError(f"unknown household {row['household_code']!r}")
                paid_at = dt.datetime.fromisoformat(row["paid_at"].strip())
                if paid_at.tzinfo is None:
                    paid_at = paid_at.replace(tzinfo=ZoneInfo(tz))
                with conn.transaction():
                    res = record_payment(conn, household_id=hid, amount=row["amount"].strip(),
                                         channel=row["channel"].strip(), external_id=row["external_id"].strip(),
                                         paid_at=paid_at, season=(row.get("season") or "").strip() or None,
                                         note=(row.get("note") or "").strip() or None, tz=tz)
                if res.duplicate:
                    report.duplicates += 1
                else:
                    report.accepted += 1
            except (ValueError, KeyError, AttributeError) as e:
                report.rejected.append((line, str(e)))
    finally:
        if f is not source:
            f.close()
    for line, reason in report.rejected:
        log.warning("payment CSV line %s rejected: %s", line, reason)
    return report


def balance(conn, household_id: int, season: str) -> dict:
    """Billed, paid and outstanding (元) of one household's heat-fee ledger for a season."""
    row = conn.execute(
        """SELECT b.amount, b.due_date,
                  COALESCE((SELECT sum(amount) FROM dunning_payment p WHERE p.household_id = b.household_id
                             AND p.season = b.season), 0)
             FROM dunning_bill b WHERE b.household_id = %s AND b.season = %s""", (household_id, season)).fetchone()
    if row is None:
        return {"billed": Decimal("0.00"), "paid": Decimal("0.00"), "outstanding": Decimal("0.00"), "due_date": None}
    billed, due, paid = row
    return {"billed": billed, "paid": yuan(paid), "outstanding": yuan(billed - paid), "due_date": due}


def days_overdue(due_date: dt.date | None, as_of: dt.date, outstanding: Decimal) -> int:
    if due_date is None or outstanding <= 0:
        return 0
    return max(0, (as_of - due_date).days)
