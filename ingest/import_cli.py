"""`heatdesk import households FILE.csv` and `heatdesk import weather FILE.csv`.

Exit codes: 0 everything imported, 1 some rows rejected (the rest is committed; the errors are
printed with line and column), 2 nothing could be done (no database, no field key, unreadable file).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register_cli(subparsers) -> None:
    imp = subparsers.add_parser("import", help="import master data (household register, official weather)")
    sub = imp.add_subparsers(dest="import_command", metavar="WHAT", required=True)
    hh = sub.add_parser("households", help="household register CSV (columns: see simulators/city.py)")
    hh.add_argument("file", type=Path)
    hh.set_defaults(func=_cmd_households)
    w = sub.add_parser("weather", help="official daily outdoor means CSV: station_code, day, mean_c (R6)")
    w.add_argument("file", type=Path)
    w.set_defaults(func=_cmd_weather)


def _precheck(args: argparse.Namespace, what: str) -> str | None:
    if not args.database_url:
        return (f"heatdesk import {what}: no database. Set HEATDESK_DATABASE_URL, pass --database-url, "
                f"or run `heatdesk up`.")
    if not args.file.is_file():
        return f"heatdesk import {what}: {args.file} is not a readable file"
    return None


def _report(summary, what: str) -> int:
    print(f"{what}: {summary}")
    for e in summary.errors:
        print(f"  {e}", file=sys.stderr)
    return 1 if summary.errors else 0


def _cmd_households(args: argparse.Namespace) -> int:
    from core.config import get_settings
    from core.db import connect
    from core.pii import FieldCipher
    from ingest.households import import_households

    problem = _precheck(args, "households")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    key = get_settings().field_key_hex
    if not key:
        print("heatdesk import households: HEATDESK_FIELD_KEY_HEX is not configured; contact data (names, "
              "phones, addresses) are stored SM4-encrypted and need the field key (R57–R59).", file=sys.stderr)
        return 2
    try:
        cipher = FieldCipher(key)
    except ValueError as e:
        print(f"heatdesk import households: HEATDESK_FIELD_KEY_HEX: {e}", file=sys.stderr)
        return 2
    with connect(args.database_url) as conn:
        summary = import_households(conn, args.file, cipher)
        conn.commit()
    return _report(summary, "households")


def _cmd_weather(args: argparse.Namespace) -> int:
    from core.db import connect
    from ingest.weather import import_weather

    problem = _precheck(args, "weather")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    with connect(args.database_url) as conn:
        summary = import_weather(conn, args.file)
        conn.commit()
    return _report(summary, "weather")
