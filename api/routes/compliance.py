"""Compliance verdicts of a household (室温达标, GB/T 33833-2017 §5.1, domain.md R19–R20) and refunds (R22)."""
from __future__ import annotations

from datetime import date, datetime
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query

from analytics import store
from analytics.refund import refund_for_household
from analytics.substation import compliance_rate
from api.auth import User
from api.deps import Conn, require_household_access, require_scopes
from api.errors import ApiError
from core.config import get_settings

router = APIRouter(tags=["compliance"])


def _today() -> date:
    """Local calendar day (settings.timezone): compliance days and stoppage days are local days."""
    return datetime.now(ZoneInfo(get_settings().timezone)).date()


Reader = Annotated[User, Depends(require_scopes("curves:read"))]
Finance = Annotated[User, Depends(require_scopes("dunning:read"))]
MAX_DAYS = 366

DayFrom = Annotated[date, Query(alias="from", description="first local day, YYYY-MM-DD")]
DayTo = Annotated[date, Query(alias="to", description="last local day, YYYY-MM-DD (inclusive)")]


def _days(day_from: date, day_to: date) -> None:
    if day_to < day_from:
        raise ApiError(422, "range_inverted")
    if (day_to - day_from).days + 1 > MAX_DAYS:
        raise ApiError(422, "range_too_long", max_days=MAX_DAYS)


@router.get("/households/{household_id}/compliance",
            summary="Daily verdicts: household status (any counted room non-compliant) and per-room rows")
def compliance_days(household_id: int, conn: Conn, user: Reader, day_from: DayFrom, day_to: DayTo) -> dict:
    require_household_access(conn, user, household_id)
    _days(day_from, day_to)
    rooms = store.room_days(conn, household_id, day_from, day_to)
    by_day: dict[date, list[dict]] = {}
    for r in rooms:
        by_day.setdefault(r["day"], []).append(
            {k: r[k] for k in ("room_id", "room_code", "room_type", "status", "reason", "mean_c", "min_c", "max_c",
                               "stat_c", "threshold_c", "coverage", "minutes_below", "degree_hours_below",
                               "refund_ratio", "n_samples", "policy_code", "policy_version", "code_version")})
    days = [{**d, "rooms": by_day.get(d["day"], [])} for d in store.household_days(conn, household_id, day_from, day_to)]
    return {"household_id": household_id, "from": day_from, "to": day_to, "days": days}


@router.get("/households/{household_id}/compliance/summary",
            summary="Counts and the compliance rate (R20: compliant / (days − exempt − unknown))")
def compliance_summary(household_id: int, conn: Conn, user: Reader, day_from: DayFrom, day_to: DayTo) -> dict:
    require_household_access(conn, user, household_id)
    _days(day_from, day_to)
    counts: dict[str, int] = {}
    for d in store.household_days(conn, household_id, day_from, day_to):
        counts[d["status"]] = counts.get(d["status"], 0) + 1
    return {"household_id": household_id, "from": day_from, "to": day_to, **compliance_rate(counts)}


@router.get("/households/{household_id}/refund",
            summary="Refund statement for a season from the regional tier table (R22–R25); confirmed days from tests")
def refund(household_id: int, conn: Conn, user: Finance,
           season: Annotated[int, Query(ge=2000, le=2100, description="year the season starts")],
           season_fee: Annotated[float, Query(ge=0, le=1_000_000, description="the season's heating fee, 元")],
           base_fee: Annotated[float, Query(ge=0, le=1_000_000, description="基本热费 (two-part tariffs), 元")] = 0.0,
           confirmed: Annotated[list[date] | None, Query(description="days confirmed non-compliant (R13)")] = None) -> dict:
    require_household_access(conn, user, household_id)
    try:
        # an outage still open counts up to today (R25), not to the season end
        st = refund_for_household(conn, household_id, season, season_fee=season_fee, base_fee=base_fee,
                                  confirmed=set(confirmed or ()), as_of=_today())
    except ValueError as exc:
        raise ApiError(422, "validation_error", str(exc)) from exc
    return st.as_dict()
