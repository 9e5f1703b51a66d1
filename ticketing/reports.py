"""Ticket KPIs and exports: 办结率, 及时率, 返工率, 满意度, volumes, 投诉率 (R20), open tickets by community.

Definitions (tickets reported in [start, end), duplicates merged into another ticket and cancelled tickets
excluded from the denominators; duplicates are reported as ``repeat_calls``):

- 办结率 completion  = resolved (resolved_at set) / tickets
- 及时率 on-time     = resolved tickets whose every SLA clock was met / resolved tickets (ticketing/sla.py)
- 返工率 rework      = resolved tickets reopened by a dissatisfied 回访 at least once / resolved tickets
- 满意度 satisfaction = mean 回访 score (1–5) and share of 4–5 among revisited tickets
- 投诉率 complaints  = 投诉 tickets per 1000 households served (‰), per month and substation (R20: Shenyang
  warns at > 5‰ two months running or > 10‰ in one month)
"""
from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import date, datetime
from zoneinfo import ZoneInfo

from psycopg.rows import dict_row

from core.config import get_settings
from ticketing.model import OPEN
from ticketing.policy import company_policy
from ticketing.sla import ticket_clocks

_EXCLUDED = ("merged", "cancelled")


def _pct(num: int, den: int) -> float | None:
    return round(100.0 * num / den, 1) if den else None


def substations_of_branches(conn, branch_ids: list[int]) -> list[int]:
    return [r[0] for r in conn.execute("SELECT id FROM substation WHERE branch_id = ANY(%s) ORDER BY id",
                                       (list(branch_ids),)).fetchall()]


def ticket_kpis(conn, *, company_ids: list[int], start: datetime, end: datetime, now: datetime,
                substation_ids: list[int] | None = None) -> dict:
    """KPIs and volumes for tickets reported in [start, end) (bounded range: the API limits it)."""
    tz = ZoneInfo(get_settings().timezone)
    params = {"co": list(company_ids), "start": start, "end": end, "subs": substation_ids, "excl": list(_EXCLUDED)}
    scope = """t.company_id = ANY(%(co)s) AND t.reported_at >= %(start)s AND t.reported_at < %(end)s
               AND (%(subs)s::int[] IS NULL OR t.substation_id = ANY(%(subs)s::int[]))"""
    with conn.cursor(row_factory=dict_row) as cur:
        tickets = cur.execute(
            f"""SELECT t.id, t.type, t.category, t.channel, t.status, t.reported_at, t.resolved_at, t.satisfaction,
                       t.company_id, t.community_id, t.substation_id, t.low_temperature,
                       EXISTS (SELECT 1 FROM ticket_event e WHERE e.ticket_id = t.id
                                 AND e.action = 'revisit_dissatisfied') AS reworked
                  FROM ticket t WHERE {scope} AND NOT (t.status = ANY(%(excl)s))""", params).fetchall()
        repeat_calls = cur.execute(f"SELECT count(*) AS n FROM ticket t WHERE {scope} AND t.status = 'merged'",
                                   params).fetchone()["n"]
        by_community = cur.execute(
            f"""SELECT c.id AS community_id, c.name AS community, count(*) AS n FROM ticket t
                  JOIN community c ON c.id = t.community_id
                 WHERE {scope} AND NOT (t.status = ANY(%(excl)s)) GROUP BY c.id, c.name ORDER BY n DESC""",
            params).fetchall()
        by_substation = cur.execute(
            f"""SELECT s.id AS substation_id, s.code, s.name, count(*) AS n FROM ticket t
                  JOIN substation s ON s.id = t.substation_id
                 WHERE {scope} AND NOT (t.status = ANY(%(excl)s)) GROUP BY s.id, s.code, s.name ORDER BY s.code""",
            params).fetchall()
        resolved_ids = [t["id"] for t in tickets if t["resolved_at"] is not None]
        events: dict[int, list[dict]] = defaultdict(list)
        if resolved_ids:
            for e in cur.execute("""SELECT ticket_id, id, at, action FROM ticket_event WHERE ticket_id = ANY(%s)
                                    ORDER BY at, id""", (resolved_ids,)):
                events[e["ticket_id"]].append(e)
    n = len(tickets)
    resolved = [t for t in tickets if t["resolved_at"] is not None]
    on_time = 0
    policies: dict = {}
    for t in resolved:
        key = (t["company_id"], t["reported_at"].astimezone(tz).date())
        pol = policies.get(key) or policies.setdefault(key, company_policy(conn, key[0], key[1]))
        clocks = ticket_clocks(t, events[t["id"]], pol, now, tz)
        if all(c.status in ("met", "stopped") for c in clocks):
            on_time += 1
    reworked = sum(1 for t in resolved if t["reworked"])
    scored = [t["satisfaction"] for t in tickets if t["satisfaction"] is not None]
    by_type: dict[str, int] = defaultdict(int)
    by_channel: dict[str, int] = defaultdict(int)
    by_day: dict[date, int] = defaultdict(int)
    for t in tickets:
        by_type[t["type"]] += 1
        by_channel[t["channel"]] += 1
        by_day[t["reported_at"].astimezone(tz).date()] += 1
    return {
        "range": {"start": start, "end": end},
        "tickets": n, "resolved": len(resolved), "repeat_calls": repeat_calls,
        "completion_rate_pct": _pct(len(resolved), n),
        "on_time_rate_pct": _pct(on_time, len(resolved)),
        "rework_rate_pct": _pct(reworked, len(resolved)),
        "satisfaction": {"count": len(scored),
                         "mean": round(sum(scored) / len(scored), 2) if scored else None,
                         "satisfied_pct": _pct(sum(1 for s in scored if s >= 4), len(scored))},
        "by_type": dict(sorted(by_type.items())),
        "by_channel": dict(sorted(by_channel.items())),
        "by_day": [{"day": d, "n": by_day[d]} for d in sorted(by_day)],
        "by_community": by_community,
        "by_substation": by_substation,
    }


def complaint_rate(conn, *, company_ids: list[int], start: datetime, end: datetime,
                   substation_ids: list[int] | None = None) -> list[dict]:
    """投诉率 (‰ of households served) per local month and substation, plus the company total (R20).

    Households served = active households at query time (报停 households are not served); repeat calls
    merged into an open complaint are not counted twice.
    """
    tz = get_settings().timezone
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """WITH served AS (
                   SELECT s.id AS substation_id, count(h.id) AS households
                     FROM substation s JOIN branch br ON br.id = s.branch_id
                     JOIN community c ON c.substation_id = s.id JOIN building b ON b.community_id = c.id
                     JOIN unit u ON u.building_id = b.id JOIN household h ON h.unit_id = u.id
                    WHERE br.company_id = ANY(%(co)s) AND h.heating_status = 'active'
                      AND (%(subs)s::int[] IS NULL OR s.id = ANY(%(subs)s::int[]))
                    GROUP BY s.id),
               complaints AS (
                   SELECT t.substation_id, to_char(t.reported_at AT TIME ZONE %(tz)s, 'YYYY-MM') AS month,
                          count(*) AS complaints
                     FROM ticket t
                    WHERE t.company_id = ANY(%(co)s) AND t.type = 'complaint' AND t.status <> 'merged'
                      AND t.reported_at >= %(start)s AND t.reported_at < %(end)s
                      AND (%(subs)s::int[] IS NULL OR t.substation_id = ANY(%(subs)s::int[]))
                    GROUP BY 1, 2),
               months AS (SELECT to_char(g, 'YYYY-MM') AS month
                            FROM generate_series(date_trunc('month', %(start)s AT TIME ZONE %(tz)s),
                                                 (%(end)s AT TIME ZONE %(tz)s) - interval '1 second',
                                                 interval '1 month') g)
               SELECT m.month, s.code AS substation, sv.households, coalesce(cp.complaints, 0) AS complaints,
                      round(1000.0 * coalesce(cp.complaints, 0) / nullif(sv.households, 0), 2) AS rate_permille
                 FROM months m CROSS JOIN served sv JOIN substation s ON s.id = sv.substation_id
                 LEFT JOIN complaints cp ON cp.substation_id = sv.substation_id AND cp.month = m.month
               UNION ALL
               SELECT m.month, '*' AS substation, (SELECT sum(households) FROM served)::bigint,
                      coalesce((SELECT sum(complaints) FROM complaints c2 WHERE c2.month = m.month), 0)::bigint,
                      round(1000.0 * coalesce((SELECT sum(complaints) FROM complaints c2 WHERE c2.month = m.month), 0)
                            / nullif((SELECT sum(households) FROM served), 0), 2)
                 FROM months m
               ORDER BY 1, 2""", {"co": list(company_ids), "tz": tz, "start": start, "end": end,
                                  "subs": substation_ids}).fetchall()


def open_by_community(conn, *, company_ids: list[int], substation_ids: list[int] | None = None) -> list[dict]:
    """Heat-map data: open tickets per community with a representative position (mean of building lat/lon)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT c.id AS community_id, c.code, c.name, s.code AS substation,
                      (SELECT avg(b.lat) FROM building b WHERE b.community_id = c.id) AS lat,
                      (SELECT avg(b.lon) FROM building b WHERE b.community_id = c.id) AS lon,
                      count(t.id) AS open_tickets,
                      count(t.id) FILTER (WHERE t.priority = 1) AS urgent,
                      count(t.id) FILTER (WHERE t.low_temperature OR t.type = 'temp_test') AS low_temperature,
                      coalesce(sum(t.urge_count), 0) AS urges
                 FROM ticket t JOIN community c ON c.id = t.community_id JOIN substation s ON s.id = c.substation_id
                WHERE t.company_id = ANY(%s) AND t.status = ANY(%s) AND (%s::int[] IS NULL OR s.id = ANY(%s::int[]))
                GROUP BY c.id, c.code, c.name, s.code ORDER BY open_tickets DESC, c.code""",
            (list(company_ids), sorted(OPEN), substation_ids, substation_ids)).fetchall()


# ------------------------------------------------------------------------------------------ exports


def _cell(v):
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, date):
        return v.isoformat()
    return v


def to_csv(rows: list[dict], columns: list[str] | None = None) -> bytes:
    """UTF-8 with BOM so that Excel in zh-CN opens Chinese text correctly."""
    columns = columns or (list(rows[0].keys()) if rows else [])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in columns])
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


def to_xlsx(sheets: dict[str, list[dict]]) -> bytes:
    """One worksheet per entry (sheet name ≤ 31 chars); datetimes written as local naive values."""
    from openpyxl import Workbook

    tz = ZoneInfo(get_settings().timezone)
    wb = Workbook()
    wb.remove(wb.active)
    for name, rows in sheets.items():
        ws = wb.create_sheet(title=name[:31])
        columns = list(rows[0].keys()) if rows else ["(empty)"]
        ws.append(columns)
        for r in rows:
            vals = []
            for c in columns:
                v = r.get(c)
                if isinstance(v, datetime):
                    v = v.astimezone(tz).replace(tzinfo=None)
                elif isinstance(v, (dict, list)):
                    v = str(v)
                elif v is not None and not isinstance(v, (int, float, str, date)):
                    v = float(v) if hasattr(v, "__float__") else str(v)
                vals.append(v)
            ws.append(vals)
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def kpi_sheets(kpis: dict, complaints: list[dict], heat: list[dict]) -> dict[str, list[dict]]:
    """The report as flat tables (for CSV/XLSX)."""
    summary = [{"指标": k, "值": kpis[k]} for k in ("tickets", "resolved", "repeat_calls", "completion_rate_pct",
                                                   "on_time_rate_pct", "rework_rate_pct")]
    summary += [{"指标": f"satisfaction_{k}", "值": v} for k, v in kpis["satisfaction"].items()]
    return {
        "汇总": summary,
        "按类型": [{"type": k, "n": v} for k, v in kpis["by_type"].items()],
        "按日": kpis["by_day"],
        "按小区": kpis["by_community"],
        "按换热站": kpis["by_substation"],
        "投诉率": complaints,
        "未办结分布": heat,
    }
