"""`heatdesk compliance …` commands: run the compliance job for a range, drain the dirty queue."""
from __future__ import annotations

import argparse
import datetime as dt
import sys


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from exc


def register_cli(subparsers) -> None:
    """Add ``compliance run`` and ``compliance dirty`` to the heatdesk command."""
    p = subparsers.add_parser("compliance", help="indoor-temperature compliance (GB/T 33833-2017 §5.1, R19)")
    sub = p.add_subparsers(dest="compliance_cmd", required=True)
    run = sub.add_parser("run", help="compute compliance_day for local days FROM..TO (inclusive)")
    run.add_argument("--from", dest="day_from", type=_date, required=True, help="first local day, YYYY-MM-DD")
    run.add_argument("--to", dest="day_to", type=_date, required=True, help="last local day, YYYY-MM-DD")
    run.add_argument("--household", action="append", default=None, metavar="CODE",
                     help="household code (户号); repeat for several; default all")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--workers", type=int, default=2, help="parallel database connections (default 2)")
    run.set_defaults(func=cmd_run)
    dirty = sub.add_parser("dirty", help="recompute days marked by late data (compliance_dirty)")
    dirty.set_defaults(func=cmd_dirty)


def _need_db(args) -> str | None:
    url = getattr(args, "database_url", None)
    if not url:
        print("heatdesk compliance: no database. Set HEATDESK_DATABASE_URL, pass --database-url, "
              "or run `heatdesk up`.", file=sys.stderr)
    return url


def _print_summary(summary) -> None:
    d = summary.as_dict()
    hd = d["household_days"]
    print(f"households: {d['households']}  room-days stored: {d['room_days']}")
    print("household-days: " + "  ".join(f"{k}={v}" for k, v in hd.items()))
    denom = hd["compliant"] + hd["non_compliant"]
    if denom:
        print(f"compliance rate (R20, compliant / (days − exempt − unknown)): {hd['compliant'] / denom:.1%}")
    if d["out_of_season_days"]:
        print(f"household-days outside the statutory season (not evaluated): {d['out_of_season_days']}")
    for region, message in d["errors"]:
        print(f"NOT computed — region {region}: {message}", file=sys.stderr)
    if d["households_without_sensors"]:
        print(f"households without a room thermometer in a counted room: {d['households_without_sensors']}")


def cmd_run(args) -> int:
    from tqdm import tqdm

    from analytics import store
    from analytics.job import run_compliance
    from core.db import connect

    url = _need_db(args)
    if not url:
        return 2
    if args.day_to < args.day_from:
        print(f"heatdesk compliance run: --to {args.day_to} is before --from {args.day_from}", file=sys.stderr)
        return 2
    if (args.day_to - args.day_from).days > 400:
        print("heatdesk compliance run: range longer than 400 days; split it", file=sys.stderr)
        return 2
    with connect(url) as conn:
        hhs = store.load_households(conn, codes=args.household)
        if args.household:
            missing = set(args.household) - {h.code for h in hhs}
            if missing:
                print(f"heatdesk compliance run: unknown household code(s): {', '.join(sorted(missing))}",
                      file=sys.stderr)
                return 2
        store.mirror_policies(conn)
        conn.commit()
        with tqdm(total=len(hhs), unit="hh", disable=args.no_progress, file=sys.stderr) as bar:
            summary = run_compliance(conn, args.day_from, args.day_to, [h.id for h in hhs], progress=bar.update,
                                     workers=max(1, args.workers), db_url=url)
    _print_summary(summary)
    return 1 if summary.errors else 0


def cmd_dirty(args) -> int:
    from analytics.job import process_dirty
    from core.db import connect

    url = _need_db(args)
    if not url:
        return 2
    with connect(url) as conn:
        summary = process_dirty(conn)
    _print_summary(summary)
    return 0
