"""Payment events (counter, bank, WeChat, Alipay, government subsidy), idempotent by external id.

Acceptance never depends on other debts or other utilities (R37). A replay of the same event returns
the original payment (200, duplicate=true); the same external id with different data is a 409.
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.auth import User
from api.deps import Conn, require_household_access, require_scopes
from api.errors import ApiError
from dunning import ledger

router = APIRouter(tags=["payments"])

Writer = Annotated[User, Depends(require_scopes("dunning:write"))]


class PaymentEvent(BaseModel):
    household_id: int
    amount: Decimal = Field(description="元; negative for a reversal", max_digits=12, decimal_places=2)
    channel: Literal["counter", "bank", "wechat", "alipay", "government_subsidy"]
    external_id: str = Field(min_length=1, max_length=120)
    paid_at: datetime
    season: str | None = Field(default=None, pattern=r"^\d{4}-\d{4}$")
    note: str | None = Field(default=None, max_length=500)


@router.post("/payments", status_code=201, summary="Record one payment event (idempotent on channel + external id)")
def post_payment(body: PaymentEvent, conn: Conn, user: Writer):
    require_household_access(conn, user, body.household_id)
    if body.paid_at.tzinfo is None:
        raise ApiError(422, "validation_error", "paid_at needs a time-zone offset")
    try:
        r = ledger.record_payment(conn, household_id=body.household_id, amount=body.amount, channel=body.channel,
                                  external_id=body.external_id, paid_at=body.paid_at, season=body.season,
                                  note=body.note)
    except ledger.PaymentConflict as e:
        raise ApiError(409, "conflict", str(e)) from None
    except ValueError as e:
        raise ApiError(422, "validation_error", str(e)) from None
    content = {"payment_id": r.payment_id, "duplicate": r.duplicate}
    return JSONResponse(content, status_code=200 if r.duplicate else 201)
