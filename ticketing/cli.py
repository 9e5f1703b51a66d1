"""`heatdesk tickets …`: run the auto-ticket pass / SLA checks once, export the ticket report."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys


def _ts(text: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time, got {text!r}") from exc
    if t.tzinfo is None:
        raise argparse.ArgumentTypeError("give a time zone, e.g. 2026-12-10T10:00+08:00")
    return t


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("tickets", help="work orders: auto tickets from telemetry, SLA checks, reports")
    sub = p.add_subparsers(dest="tickets_cmd", required=True)
    auto = sub.add_parser("auto", help="one auto-ticket pass (incidents, 测温, maintenance); idempotent")
    auto.add_argument("--now", type=_ts, default=None, help="evaluate as of this time (default: now)")
    auto.set_defaults(func=cmd_auto)
    sla = sub.add_parser("sla", help="raise SLA warnings/breaches/escalations once; idempotent")
    sla.add_argument("--now", type=_ts, default=None)
    sla.set_defaults(func=cmd_sla)
    rep = sub.add_parser("report", help="ticket KPIs for a company and period (JSON, or --xlsx FILE)")
    rep.add_argument("--company", required=True, help="company code, e.g. HD")
    rep.add_argument("--from", dest="start", type=_ts, required=True)
    rep.add_argument("--to", dest="end", type=_ts, required=True)
    rep.add_argument("--xlsx", default=None, help="write an Excel workbook here")
    rep.set_defaults(func=cmd_report)


def _url(args) -> str | None:
    url = getattr(args, "database_url", None)
    if not url:
        print("heatdesk tickets: no database. Set HEATDESK_DATABASE_URL, pass --database-url, or run `heatdesk up`.",
              file=sys.stderr)
    return url


def cmd_auto(args) -> int:
    from ticketing.auto import run_auto_job

    url = _url(args)
    if not url:
        return 2
    print(json.dumps(run_auto_job(url, args.now), ensure_ascii=False))
    return 0


def cmd_sla(args) -> int:
    from ticketing.auto import run_sla_job

    url = _url(args)
    if not url:
        return 2
    print(json.dumps(run_sla_job(url, args.now), ensure_ascii=False))
    return 0


def cmd_report(args) -> int:
    from core.db import connect
    from ticketing import reports

    url = _url(args)
    if not url:
        return 2
    with connect(url) as conn:
        row = conn.execute("SELECT id FROM company WHERE code = %s", (args.company,)).fetchone()
        if row is None:
            print(f"heatdesk tickets report: unknown company {args.company!r}", file=sys.stderr)
            return 2
        now = dt.datetime.now(dt.timezone.utc)
        kpis = reports.ticket_kpis(conn, company_ids=[row[0]], start=args.start, end=args.end, now=now)
        complaints = reports.complaint_rate(conn, company_ids=[row[0]], start=args.start, end=args.end)
        heat = reports.open_by_community(conn, company_ids=[row[0]])
    if args.xlsx:
        with open(args.xlsx, "wb") as f:
            f.write(reports.to_xlsx(reports.kpi_sheets(kpis, complaints, heat)))
        print(f"wrote {args.xlsx}")
    else:
        print(json.dumps({**kpis, "complaint_rate": complaints, "open_by_community": heat}, ensure_ascii=False,
                         default=str, indent=2))
    return 0
