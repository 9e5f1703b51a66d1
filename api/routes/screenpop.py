"""来电弹屏: the phone rings → the caller's household card, tickets, compliance and substation state.

Lookup by the SM3-HMAC blind index (the number is never searched in clear); limited to the agent's
branches; contact data added through api.privacy.contact_view (masked by role, read logged, R60).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from api.auth import User
from api.deps import Conn, contact_view, get_cipher, require_scopes
from api.errors import ApiError
from core.pii import normalise_phone
from ticketing.screenpop import screen_pop

router = APIRouter(tags=["tickets"])

Agent = Annotated[User, Depends(require_scopes("households:read", "tickets:read"))]


@router.get("/screenpop", summary="来电弹屏: households, account, compliance, tickets and substation for a phone number")
def pop(request: Request, conn: Conn, user: Agent,
        phone: Annotated[str, Query(min_length=7, max_length=20, description="caller number (+86 accepted)")]) -> dict:
    if len(normalise_phone(phone)) < 7:
        raise ApiError(422, "validation_error", "phone: give the full number")
    out = screen_pop(conn, get_cipher(request), phone, datetime.now(timezone.utc), branch_ids=list(user.branch_ids))
    ids = [c["household"]["id"] for c in out["households"]]
    contacts = contact_view(conn, request, user, ids, purpose="screen_pop") if ids else {}
    for c in out["households"]:
        c["contact"] = contacts.get(c["household"]["id"])
    return out
