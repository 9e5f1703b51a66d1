"""`heatdesk ingest` (run the service) and `heatdesk status [--json]`."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import threading

import psycopg

from core.config import get_settings

log = logging.getLogger(__name__)


def _cmd_ingest(args: argparse.Namespace) -> int:
    from ingest.runner import run_ingest

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return run_ingest(get_settings(), database_url=args.database_url, stop=stop)


def _cmd_status(args: argparse.Namespace) -> int:
    from ingest.status import collect_status, format_status

    settings = get_settings()
    conn = None
    if args.database_url:
        try:
            conn = psycopg.connect(args.database_url, connect_timeout=3)
        except psycopg.OperationalError as e:
            log.warning("database unreachable: %s", str(e).strip().splitlines()[0])
    try:
        st = collect_status(conn, settings.data_dir)
    finally:
        if conn is not None:
            conn.close()
    if args.json:
        print(json.dumps(st, ensure_ascii=False, default=str))
    else:
        print(format_status(st))
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("ingest", help="run the ingest service (adapters → database) until SIGTERM")
    p.set_defaults(func=_cmd_ingest)
    s = subparsers.add_parser("status", help="ingest status per protocol and device")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=_cmd_status)
