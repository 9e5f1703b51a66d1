"""Dunning (催费): a household's balance, its gate decision as a dry run with reasons and evidence,
its decision history; cut-off proposal review (R36: humans decide); delivery-status callbacks."""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from api.auth import User
from api.deps import Conn, get_cipher, log_pii_access, require_household_access, require_scopes
from api.errors import ApiError
from analytics.policy import PolicyError as AnalyticsPolicyError
from dunning import cutoff, instalments, job, ledger, store
from dunning.policy import PolicyError as DunningPolicyError
from notify import outbox

router = APIRouter(tags=["dunning"])

Reader = Annotated[User, Depends(require_scopes("dunning:read"))]
Writer = Annotated[User, Depends(require_scopes("dunning:write"))]
AsOf = Annotated[date | None, Query(description="local day YYYY-MM-DD (default today)")]


@router.get("/households/{household_id}/dunning/preview",
            summary="Dry run: what the compliance gate would decide today (send/soften/hold/skip), with reasons")
def preview(household_id: int, conn: Conn, user: Reader, as_of: AsOf = None) -> dict:
    scope = require_household_access(conn, user, household_id)
    day = as_of or store.today()
    if not date(2000, 1, 1) <= day <= date.today().replace(year=date.today().year + 1):
        raise ApiError(422, "validation_error", f"as_of {day} is outside 2000-01-01 … one year ahead")
    try:
        snap, d, checks = job.preview(conn, store.company_code(conn, scope["company_id"]), household_id, day)
    except LookupError:
        raise ApiError(404, "not_found", "no bill for this household and season") from None
    except (AnalyticsPolicyError, DunningPolicyError) as e:  # no regional policy in force that day (C1)
        raise ApiError(422, "validation_error", f"no policy in force on {day}: {e}") from None
    return {"household_id": household_id, "as_of": day, "season": d.season, "action": d.action,
            "reasons": list(d.reasons), "step": d.step, "template": d.template, "channel": d.channel,
            "amount_asked": d.amount_asked, "refund_adjust": d.refund_adjust, "late_fee": d.late_fee,
            "late_fee_label": "违约金", "opens_temp_test": d.open_temp_test, "evidence": d.evidence,
            "cutoff_checks": checks}


@router.get("/households/{household_id}/dunning/balance", summary="Heat-fee ledger of one season (R37: this fee only)")
def balance(household_id: int, conn: Conn, user: Reader,
            season: Annotated[str, Query(pattern=r"^\d{4}-\d{4}$", description="e.g. 2026-2027")]) -> dict:
    require_household_access(conn, user, household_id)
    b = ledger.balance(conn, household_id, season)
    return {"household_id": household_id, "season": season, **b,
            "days_overdue": ledger.days_overdue(b["due_date"], store.today(), b["outstanding"])}


@router.get("/households/{household_id}/dunning/decisions", summary="Recorded gate decisions, newest first")
def decisions(household_id: int, conn: Conn, user: Reader,
              limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict:
    require_household_access(conn, user, household_id)
    return {"household_id": household_id, "decisions": store.decisions(conn, household_id, limit)}


class ProposalDecision(BaseModel):
    approve: bool


@router.post("/dunning/cutoff-proposals/{proposal_id}/decision",
             summary="Approve or reject a cut-off proposal (approval cuts nothing: staff act and file 备案)")
def decide_proposal(proposal_id: int, body: ProposalDecision, conn: Conn, user: Writer) -> dict:
    hid = store.proposal_household(conn, proposal_id)
    if hid is None:
        raise ApiError(404, "not_found")
    require_household_access(conn, user, hid)
    try:
        cutoff.decide_proposal(conn, proposal_id, approve=body.approve, by=user.username, at=store.now())
    except ValueError as e:
        raise ApiError(409, "conflict", str(e)) from None
    return {"proposal_id": proposal_id, "status": "approved" if body.approve else "rejected"}


class DeliveryReport(BaseModel):
    provider: str = Field(min_length=1, max_length=40)
    provider_id: str = Field(min_length=1, max_length=200)
    status: str = Field(min_length=1, max_length=40, description="DELIVRD, UNDELIV, read, bounced, …")
    at: datetime
    proof: str | None = Field(default=None, max_length=200)


@router.post("/notify/delivery-reports", summary="Delivery-status callback from an SMS/WeChat/e-mail gateway")
def delivery_report(body: DeliveryReport, conn: Conn, user: Writer) -> dict:
    oid = outbox.record_delivery(conn, provider=body.provider, provider_id=body.provider_id, status=body.status,
                                 at=body.at, proof=body.proof)
    if oid is None:
        raise ApiError(404, "not_found", "unknown message")
    return {"outbox_id": oid}


# --------------------------------------------------------------------------------------------- case handling

class PlanPart(BaseModel):
    due_date: date
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2)


class PlanIn(BaseModel):
    season: str = Field(pattern=r"^\d{4}-\d{4}$")
    total: Decimal = Field(gt=0, max_digits=12, decimal_places=2)
    parts: list[PlanPart] = Field(min_length=1, max_length=12)


@router.post("/households/{household_id}/dunning/instalment-plans", status_code=201,
             summary="分期 (R32): 3–6 parts, first ≥ 30 % where policy says; no 违约金 while honoured")
def create_instalment_plan(household_id: int, body: PlanIn, conn: Conn, user: Writer) -> dict:
    scope = require_household_access(conn, user, household_id)
    policy = store.policy_for_company(conn, scope["company_id"])
    try:
        pid = instalments.create_plan(conn, household_id=household_id, season=body.season, total=body.total,
                                      parts=[(p.due_date, p.amount) for p in body.parts], policy=policy,
                                      created_on=store.today(), created_by=user.username)
    except ValueError as e:
        raise ApiError(422, "validation_error", str(e)) from None
    return {"plan_id": pid}


class DeferralIn(BaseModel):
    season: str = Field(pattern=r"^\d{4}-\d{4}$")
    until: date
    reason: str = Field(min_length=2, max_length=500)


@router.post("/households/{household_id}/dunning/deferrals", status_code=201,
             summary="缓缴 until a date, with reason (R38): no reminders and no 违约金 in the window")
def grant_deferral(household_id: int, body: DeferralIn, conn: Conn, user: Writer) -> dict:
    require_household_access(conn, user, household_id)
    try:
        did = instalments.grant_deferral(conn, household_id=household_id, season=body.season, until=body.until,
                                         reason=body.reason, granted_on=store.today(), granted_by=user.username)
    except ValueError as e:
        raise ApiError(422, "validation_error", str(e)) from None
    return {"deferral_id": did}


class HardshipIn(BaseModel):
    category: Literal["dibao", "tekun", "other"]
    doc_ref: str | None = Field(default=None, max_length=200, description="verification document reference")
    valid_from: date
    expires_on: date


Hardship = Annotated[User, Depends(require_scopes("pii:hardship", "dunning:write"))]


@router.put("/households/{household_id}/dunning/hardship",
            summary="Verified hardship (低保/特困, R38) — sensitive (R57): stored encrypted, access logged")
def set_hardship(household_id: int, body: HardshipIn, request: Request, conn: Conn, user: Hardship) -> dict:
    require_household_access(conn, user, household_id)
    try:
        instalments.set_hardship(conn, get_cipher(request), household_id=household_id, category=body.category,
                                 doc_ref=body.doc_ref, valid_from=body.valid_from, expires_on=body.expires_on,
                                 verified_by=user.username)
    except ValueError as e:
        raise ApiError(422, "validation_error", str(e)) from None
    log_pii_access(conn, request, user, [household_id], ["hardship"], masked=False, purpose="dunning_hardship_write")
    return {"household_id": household_id, "expires_on": body.expires_on}


class ConsentIn(BaseModel):
    season: str = Field(pattern=r"^\d{4}-\d{4}$")
    channel: str = Field(min_length=2, max_length=40, description="how consent was given: counter, wechat, phone…")


@router.put("/households/{household_id}/dunning/offset-consent",
            summary="R40: the household agrees that its refund offsets its arrears")
def offset_consent(household_id: int, body: ConsentIn, conn: Conn, user: Writer) -> dict:
    require_household_access(conn, user, household_id)
    store.record_offset_consent(conn, household_id, body.season, store.today(), body.channel)
    return {"household_id": household_id, "season": body.season}


class DisputeIn(BaseModel):
    season: str = Field(pattern=r"^\d{4}-\d{4}$")
    kind: Literal["refund", "bill"]
    note: str | None = Field(default=None, max_length=500)


@router.post("/households/{household_id}/dunning/disputes", status_code=201,
             summary="Open a refund/bill dispute: dunning holds and 违约金 pauses until resolved (R35, R36)")
def open_dispute(household_id: int, body: DisputeIn, conn: Conn, user: Writer) -> dict:
    require_household_access(conn, user, household_id)
    return {"dispute_id": store.open_dispute(conn, household_id, body.season, body.kind, store.today(), body.note)}


@router.post("/dunning/disputes/{dispute_id}/resolve", summary="Close a dispute (the ladder resumes)")
def resolve_dispute(dispute_id: int, conn: Conn, user: Writer) -> dict:
    hid = store.dispute_household(conn, dispute_id)
    if hid is None:
        raise ApiError(404, "not_found")
    require_household_access(conn, user, hid)
    if not store.resolve_dispute(conn, dispute_id, store.today()):
        raise ApiError(409, "conflict", "dispute already resolved")
    return {"dispute_id": dispute_id, "resolved_on": store.today()}
