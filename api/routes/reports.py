"""Ticket reports: 办结率, 及时率, 返工率, 满意度, volumes, 投诉率 (R20), open tickets by community;
JSON, CSV (UTF-8 with BOM) and XLSX. Limited to the caller's branches; ranges bounded (92 days)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response

from api.auth import User
from api.deps import Conn, TimeRangeDep, require_scopes
from api.errors import ApiError
from ticketing import reports

router = APIRouter(tags=["reports"])

Reporter = Annotated[User, Depends(require_scopes("reports:read"))]


def _scope(conn, user: User) -> tuple[list[int], list[int]]:
    return list(user.company_ids or (user.company_id,)), reports.substations_of_branches(conn, list(user.branch_ids))


def _all(conn, user: User, rng) -> tuple[dict, list[dict], list[dict]]:
    companies, subs = _scope(conn, user)
    kpis = reports.ticket_kpis(conn, company_ids=companies, start=rng.start, end=rng.end,
                               now=datetime.now(timezone.utc), substation_ids=subs)
    complaints = reports.complaint_rate(conn, company_ids=companies, start=rng.start, end=rng.end,
                                        substation_ids=subs)
    heat = reports.open_by_community(conn, company_ids=companies, substation_ids=subs)
    return kpis, complaints, heat


@router.get("/reports/tickets", summary="Ticket KPIs for a period: 办结率, 及时率, 返工率, 满意度, volumes")
def ticket_report(conn: Conn, user: Reporter, rng: TimeRangeDep) -> dict:
    kpis, complaints, heat = _all(conn, user, rng)
    return {**kpis, "complaint_rate": complaints, "open_by_community": heat}


@router.get("/reports/complaint-rate", summary="投诉率 ‰ of households per month and substation (R20)")
def complaint_rate(conn: Conn, user: Reporter, rng: TimeRangeDep) -> dict:
    companies, subs = _scope(conn, user)
    return {"items": reports.complaint_rate(conn, company_ids=companies, start=rng.start, end=rng.end,
                                            substation_ids=subs)}


@router.get("/reports/open-by-community", summary="Open tickets per community (heat map)")
def open_by_community(conn: Conn, user: Reporter) -> dict:
    companies, subs = _scope(conn, user)
    return {"items": reports.open_by_community(conn, company_ids=companies, substation_ids=subs)}


@router.get("/reports/tickets.xlsx", summary="The ticket report as an Excel workbook", response_class=Response,
            responses={200: {"description": "Excel workbook, one sheet per table", "content": {
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet":
                    {"schema": {"type": "string", "format": "binary"}}}}})
def ticket_report_xlsx(conn: Conn, user: Reporter, rng: TimeRangeDep) -> Response:
    data = reports.to_xlsx(reports.kpi_sheets(*_all(conn, user, rng)))
    return Response(data, media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                    headers={"Content-Disposition": 'attachment; filename="ticket-report.xlsx"'})


TABLE_ALIASES = {"summary": "汇总", "by_type": "按类型", "by_day": "按日", "by_community": "按小区",
                 "by_substation": "按换热站", "complaint_rate": "投诉率", "open_by_community": "未办结分布"}


@router.get("/reports/tickets.csv", summary="One table of the ticket report as CSV", response_class=Response,
            responses={200: {"description": "CSV (UTF-8)", "content": {"text/csv": {"schema": {"type": "string"}}}}})
def ticket_report_csv(conn: Conn, user: Reporter, rng: TimeRangeDep,
                      table: Annotated[Literal["summary", "by_type", "by_day", "by_community", "by_substation",
                                               "complaint_rate", "open_by_community"], Query()] = "summary"
                      ) -> Response:
    sheets = reports.kpi_sheets(*_all(conn, user, rng))
    rows = sheets.get(TABLE_ALIASES[table])
    if rows is None:
        raise ApiError(404, "not_found")
    return Response(reports.to_csv(rows), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="ticket-report-{table}.csv"'})
