"""`heatdesk dunning …` and `heatdesk payments import FILE.csv`."""
from __future__ import annotations

import datetime as dt
import sys
from zoneinfo import ZoneInfo

from core.db import connect

TZ = ZoneInfo("Asia/Shanghai")


def _need_db(args) -> bool:
    if not args.database_url:
        print("no database: pass --database-url, set HEATDESK_DATABASE_URL or run `heatdesk up`", file=sys.stderr)
        return False
    return True


def _now_for(as_of: dt.date | None) -> tuple[dt.date, dt.datetime]:
    now = dt.datetime.now(TZ)
    if as_of is None:
        return now.date(), now
    return as_of, dt.datetime.combine(as_of, dt.time(9, 0), TZ) if as_of != now.date() else now


def _companies(conn, code: str | None) -> list[str]:
    if code:
        return [code]
    return [r[0] for r in conn.execute("SELECT code FROM company ORDER BY code")]


def cmd_run(args) -> int:
    from tqdm import tqdm

    from dunning import job
    from dunning.store import household_ids, run_context
    if not _need_db(args):
        return 2
    as_of, now = _now_for(args.as_of)
    with connect(args.database_url) as conn:
        for code in _companies(conn, args.company):
            ctx = run_context(conn, code, as_of)
            total = len(household_ids(conn, ctx))
            with tqdm(total=total, desc=f"{code} {as_of}", unit="acct", file=sys.stderr) as bar:
                s = job.run(conn, code, as_of, now=now, dry_run=args.dry_run, progress=bar.update,
                            batch_size=args.batch_size)
            print(f"\n{code} {ctx.season} as of {as_of}{' (dry run)' if args.dry_run else ''}: "
                  f"{s.accounts} accounts, run {s.run_id}")
            print(f"  {'action':<10}{'count':>8}")
            for action in ("send", "soften", "hold", "skip"):
                print(f"  {action:<10}{s.actions.get(action, 0):>8}")
            print(f"  {'reason':<30}{'count':>8}")
            for reason, n in s.reasons.most_common():
                print(f"  {reason:<30}{n:>8}")
            print(f"  测温 tickets opened: {s.tickets_opened}   cut-off proposals: {s.cutoff_proposals}   "
                  f"refund lines: {s.refund_lines}")
            if s.instalment_notices:
                print("  instalment reminders: " + ", ".join(f"{k} {n}" for k, n in sorted(s.instalment_notices.items())))
    return 0


def cmd_bills(args) -> int:
    from dunning.ledger import generate_bills
    if not _need_db(args):
        return 2
    with connect(args.database_url) as conn:
        for code in _companies(conn, args.company):
            n = generate_bills(conn, code, args.season_year)
            conn.commit()
            print(f"{code}: {n} bills created for season {args.season_year}-{args.season_year + 1}")
    return 0


def cmd_statements(args) -> int:
    from dunning.statements import season_statements
    if not _need_db(args):
        return 2
    with connect(args.database_url) as conn:
        for code in _companies(conn, args.company):
            s = season_statements(conn, code, args.season_year, now=dt.datetime.now(TZ))
            conn.commit()
            print(f"{code}: {s.statements} statements, offset {s.offset_total} 元, payout {s.payout_total} 元")
    return 0


def cmd_deliver(args) -> int:
    """Demo delivery: SMS/WeChat/e-mail to the console (masked), letters to a JSON-lines print queue.

    Real gateways (notify.senders.SmsHttpSender, WeChatTemplateSender, SmtpSender) need endpoint and
    credential settings that core.config does not define yet; wire them where the service starts.
    """
    from pathlib import Path

    from notify.dispatcher import deliver_pending
    from notify.senders import ConsoleSender, FileSender
    if not _need_db(args):
        return 2
    console = ConsoleSender()
    senders = {"sms": console, "wechat": console, "email": console, "console": console,
               "letter": FileSender(Path(args.letters), name="letter_queue")}
    with connect(args.database_url) as conn:
        try:
            counts = deliver_pending(conn, senders, dt.datetime.now(TZ), limit=args.limit)
        except RuntimeError as e:
            print(f"dunning deliver: {e}", file=sys.stderr)
            return 2
    print(", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing due")
    return 0


def cmd_payments_import(args) -> int:
    from dunning.ledger import import_payments_csv
    if not _need_db(args):
        return 2
    with connect(args.database_url) as conn:
        try:
            r = import_payments_csv(conn, args.file)
        except (OSError, ValueError) as e:
            print(f"payments import: {e}", file=sys.stderr)
            return 2
        conn.commit()
    print(f"accepted {r.accepted}, duplicates {r.duplicates}, rejected {len(r.rejected)}")
    for line, reason in r.rejected:
        print(f"  line {line}: {reason}")
    return 1 if r.rejected else 0


def register_cli(subparsers) -> None:
    d = subparsers.add_parser("dunning", help="催费: bills, the reminder ladder behind the compliance gate")
    dsub = d.add_subparsers(dest="dunning_command", metavar="DUNNING_COMMAND", required=True)
    r = dsub.add_parser("run", help="one dunning run per company (safe to run twice, resumable)")
    r.add_argument("--dry-run", action="store_true", help="record decisions only; send and change nothing")
    r.add_argument("--company", default=None, help="company code (default: every company)")
    r.add_argument("--as-of", type=dt.date.fromisoformat, default=None, help="local day YYYY-MM-DD (default today)")
    r.add_argument("--batch-size", type=int, default=5000)
    r.set_defaults(func=cmd_run)
    b = dsub.add_parser("bills", help="create missing season bills from the tariffs")
    b.add_argument("--season-year", type=int, required=True, help="season start year, e.g. 2026 for 2026-2027")
    b.add_argument("--company", default=None)
    b.set_defaults(func=cmd_bills)
    s = dsub.add_parser("statements", help="season-end refund statements (R23, R40)")
    s.add_argument("--season-year", type=int, required=True)
    s.add_argument("--company", default=None)
    s.set_defaults(func=cmd_statements)

    dl = dsub.add_parser("deliver", help="send due outbox messages (demo: console + letter print queue)")
    dl.add_argument("--letters", default=".heatdesk/letters.jsonl", help="print queue for letters (JSON lines)")
    dl.add_argument("--limit", type=int, default=500)
    dl.set_defaults(func=cmd_deliver)

    p = subparsers.add_parser("payments", help="payment events (heat-fee ledger only, R37)")
    psub = p.add_subparsers(dest="payments_command", metavar="PAYMENTS_COMMAND", required=True)
    imp = psub.add_parser("import", help="import a payments CSV (household_code, amount, channel, external_id, paid_at)")
    imp.add_argument("file")
    imp.set_defaults(func=cmd_payments_import)
