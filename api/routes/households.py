"""Households (户): search within scope, the household card, the customer's own card, the PII access log.

PIPL (domain.md R55–R60): search results show masked contact data for every role (minimum necessary:
the list is for picking the right household); the card shows clear name/phone/address only to roles
holding ``pii:contact`` (agent, supervisor, dispatcher, finance; a technician only for households with
an open ticket assigned to him) and masked to the rest;
every read — masked or not — is written to ``pii_access_log`` with the purpose.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from api import queries
from api.auth import User
from api.deps import (Conn, CurrentUser, PageDep, TimeRangeDep, contact_view, get_cipher, require_household_access,
                      require_scopes)
from api.errors import ApiError
from api.privacy import hardship_view
from core.pii import normalise_phone
from dunning import ledger
from dunning import store as dunning_store

router = APIRouter(tags=["households"])

Reader = Annotated[User, Depends(require_scopes("households:read"))]
Auditor = Annotated[User, Depends(require_scopes("audit:read"))]


@router.get("/households", summary="Search households by phone, name, account code (户号) or address, within scope")
def search_households(
    request: Request, conn: Conn, user: Reader, page: PageDep,
    q: Annotated[str | None, Query(max_length=100, description="free text: the kind is guessed")] = None,
    phone: Annotated[str | None, Query(max_length=20, description="full mobile number (blind index)")] = None,
    name: Annotated[str | None, Query(max_length=30)] = None,
    code: Annotated[str | None, Query(max_length=30, description="户号, exact or prefix")] = None,
    address: Annotated[str | None, Query(max_length=100, description="小区/楼/单元/室, e.g. 海景花园3号楼2单元502")] = None,
) -> dict:
    given = {k: v.strip() for k, v in (("phone", phone), ("name", name), ("code", code), ("address", address))
             if v and v.strip()}
    if q and q.strip() and not given:
        given = {queries.classify_query(q): q.strip()}
    if len(given) != 1:
        raise ApiError(422, "query_required")
    kind, value = next(iter(given.items()))
    truncated = False
    if kind == "phone":
        if len(normalise_phone(value)) < 7:
            raise ApiError(422, "validation_error", "phone: give the full number")
        rows = queries.search_by_phone(conn, get_cipher(request), user.branch_ids, value, page.limit, page.offset)
    elif kind == "code":
        rows = queries.search_by_code(conn, user.branch_ids, value, page.limit, page.offset)
    elif kind == "address":
        rows = queries.search_by_address(conn, user.branch_ids, value, page.limit, page.offset)
    else:
        rows, truncated = queries.search_by_name(conn, get_cipher(request), user.branch_ids, value, page.limit,
                                                 page.offset)
    contacts = contact_view(conn, request, user, [r["household_id"] for r in rows], purpose=f"household_search:{kind}",
                            force_mask=True) if rows else {}
    for r in rows:
        r["contact"] = contacts.get(r["household_id"])
    return {"kind": kind, "items": rows, "limit": page.limit, "offset": page.offset, "truncated": truncated}


def _card(request: Request, conn, user: User, household_id: int, purpose: str) -> dict:
    card = queries.household_card(conn, household_id, now=datetime.now(timezone.utc))
    card["contact"] = contact_view(conn, request, user, [household_id], purpose=purpose).get(household_id)
    hardship = hardship_view(conn, request, user, household_id, purpose=purpose)
    if hardship is not None:
        card["hardship"] = hardship
    return card


@router.get("/households/{household_id}", summary="Household card: hierarchy, rooms, sensors, status, contact")
def household_card(household_id: int, request: Request, conn: Conn, user: CurrentUser) -> dict:
    """Contact data is clear for roles that serve the customer and masked for the rest; the read is logged."""
    if user.role != "customer" and "households:read" not in user.scopes:
        raise ApiError(403, "forbidden_role")
    require_household_access(conn, user, household_id)
    return _card(request, conn, user, household_id, "household_card")


@router.get("/self/household", summary="用户自助: the signed-in customer's own household")
def own_household(request: Request, conn: Conn, user: CurrentUser) -> dict:
    if user.role != "customer" or user.household_id is None:
        raise ApiError(403, "forbidden_role")
    require_household_access(conn, user, user.household_id)
    return _card(request, conn, user, user.household_id, "self_service")


#: What a customer sees of a reminder (the decision's internal evidence stays with staff).
_REMINDER_FIELDS = ("as_of", "season", "step", "action", "template", "channel", "amount_asked", "refund_adjust",
                    "late_fee", "delivery_status", "delivered_at")


@router.get("/self/bill", summary="用户自助: my heat-fee bills (balance per season) and the reminders sent to me")
def own_bill(conn: Conn, user: CurrentUser) -> dict:
    if user.role != "customer" or user.household_id is None:
        raise ApiError(403, "forbidden_role")
    require_household_access(conn, user, user.household_id)
    today = dunning_store.today()
    seasons = []
    for season in queries.household_bill_seasons(conn, user.household_id):
        b = ledger.balance(conn, user.household_id, season)
        seasons.append({"season": season, **b,
                        "days_overdue": ledger.days_overdue(b["due_date"], today, b["outstanding"])})
    reminders = [{k: d[k] for k in _REMINDER_FIELDS}
                 for d in dunning_store.decisions(conn, user.household_id, 20) if not d["dry_run"]]
    return {"household_id": user.household_id, "seasons": seasons, "reminders": reminders}


@router.get("/pii-access-log", summary="Who read which household's personal data (auditor, admin)")
def pii_access_log(
    conn: Conn, user: Auditor, page: PageDep, rng: TimeRangeDep,
    household_id: int | None = None, user_id: int | None = None,
) -> dict:
    items = queries.pii_access_log(conn, user.branch_ids, household_id=household_id, user_id=user_id,
                                   start=rng.start, end=rng.end, limit=page.limit, offset=page.offset)
    return {"items": items, "limit": page.limit, "offset": page.offset, "from": rng.start, "to": rng.end}

