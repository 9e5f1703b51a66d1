"""Tickets (工单): create from any channel, workflow actions, dispatch, attachments, 测温 records, SLA.

Thin handlers over ticketing/*: the wall clock is read here (the edge) and passed down as ``now``.
Errors: unknown ticket → 404; an action the workflow table refuses → 409 (with the allowed actions);
bad input (missing reason, satisfaction out of range, attachment too large) → 422.
Object-level access: a ticket is visible to users whose branch serves its substation (customers: only
their own household's tickets).
"""
from __future__ import annotations

from contextlib import contextmanager
from datetime import date, datetime, timezone
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, File, Form, Path, Query, Response, UploadFile
from pydantic import BaseModel, Field

from api.auth import User
from api.deps import (Conn, CurrentUser, PageDep, require_household_access, require_scopes,
                      require_substation_access)
from api.errors import ApiError
from core.config import get_settings
from ticketing import dispatch, store, temptest
from ticketing.model import InvalidTransition, TicketNotFound, TicketValidationError
from ticketing.policy import company_policy, local_day
from ticketing.sla import refund_clock, ticket_clocks

router = APIRouter(tags=["tickets"])

Reader = Annotated[User, Depends(require_scopes("tickets:read"))]
Writer = Annotated[User, Depends(require_scopes("tickets:write"))]
Assigner = Annotated[User, Depends(require_scopes("tickets:assign"))]
TicketId = Annotated[int, Path(ge=1)]

#: attachments are read fully into memory before the size check: cap the read itself
_READ_CAP = 20 * 1024 * 1024


def _now() -> datetime:
    return datetime.now(timezone.utc)


@contextmanager
def _errors():
    """Ticketing exceptions → problem responses."""
    try:
        yield
    except TicketNotFound as e:
        raise ApiError(404, "not_found", str(e)) from None
    except InvalidTransition as e:
        raise ApiError(409, "conflict", str(e), allowed=e.allowed) from None
    except dispatch.NoCandidate as e:
        raise ApiError(409, "conflict", str(e)) from None
    except TicketValidationError as e:
        raise ApiError(422, "validation_error", str(e)) from None


def _access(conn, user: User, ticket_id: int) -> dict:
    """Object-level authorisation for a ticket; returns its scope row."""
    with _errors():
        scope = store.ticket_scope(conn, ticket_id)
    if user.role == "customer":
        if scope["household_id"] is None or scope["household_id"] != user.household_id:
            raise ApiError(404, "not_found")
        return scope
    if scope["household_id"] is not None:
        require_household_access(conn, user, scope["household_id"])
    elif scope["substation_id"] is not None:
        require_substation_access(conn, user, scope["substation_id"])
    elif scope["company_id"] not in (user.company_ids or (user.company_id,)):
        raise ApiError(404, "not_found")
    return scope


def _worker(user: User, scope: dict) -> None:
    """Field actions: staff who may write tickets, or the technician the ticket is assigned to."""
    if "tickets:write" in user.scopes:
        return
    if "tickets:work" in user.scopes and user.technician_id is not None and user.technician_id == scope["assignee_id"]:
        return
    raise ApiError(403, "forbidden_role")


# ------------------------------------------------------------------------------------------ create / read


class TicketIn(BaseModel):
    type: Literal["repair", "complaint", "inquiry", "temp_test", "stop_heat", "resume_heat", "valve", "inspection"]
    channel: Literal["phone", "wechat", "hotline_12345", "walk_in", "app"] = "phone"
    household_id: int | None = None
    unit_id: int | None = None
    building_id: int | None = None
    priority: int = Field(3, ge=1, le=4)
    category: str | None = Field(None, max_length=40, description="leak, no_heat, low_temp, refund_dispute, …")
    description: str = Field("", max_length=2000)
    low_temperature: bool = False
    reported_at: datetime | None = Field(None, description="when the customer reported (R27); default now")
    external_ref: str | None = Field(None, max_length=60, description="12345 reference number (R28)")


@router.post("/tickets", status_code=201, summary="Open a ticket (a repeat call links to the open one: 催单)")
def create_ticket(body: TicketIn, conn: Conn, user: CurrentUser) -> dict:
    if user.role == "customer":
        if body.household_id != user.household_id or body.channel != "app":
            raise ApiError(403, "forbidden_role")
    elif "tickets:write" not in user.scopes:
        raise ApiError(403, "forbidden_role")
    if body.household_id is not None:
        require_household_access(conn, user, body.household_id)
    elif body.unit_id is None and body.building_id is None:
        raise ApiError(422, "validation_error", "household_id, unit_id or building_id is required")
    else:
        with _errors():
            loc = store.resolve_location(conn, unit_id=body.unit_id, building_id=body.building_id)
        require_substation_access(conn, user, loc["substation_id"])
    with _errors():
        res = store.create_ticket(conn, actor=user.username, now=_now(), **body.model_dump())
        t = res.ticket if res.ticket is not None else store.get_ticket(conn, res.ticket_id)
    return {"ticket": t, "duplicate_of": res.merged_into, "urge_count": res.urge_count}


@router.get("/tickets", summary="Tickets in scope, newest first")
def list_tickets(conn: Conn, user: Reader, page: PageDep,
                 status: Annotated[list[str] | None, Query(max_length=12)] = None,
                 type: Annotated[str | None, Query(max_length=20)] = None,
                 household_id: int | None = None, community_id: int | None = None,
                 substation_id: int | None = None, assignee_id: int | None = None,
                 open_only: bool = False) -> dict:
    if household_id is not None:
        require_household_access(conn, user, household_id)
    items = store.list_tickets(conn, status=status, type=type, household_id=household_id,
                               community_id=community_id, substation_id=substation_id,
                               company_ids=list(user.company_ids or (user.company_id,)),
                               branch_ids=list(user.branch_ids), include_unplaced=True,
                               assignee_id=assignee_id, open_only=open_only, limit=page.limit, offset=page.offset)
    return {"items": items, "limit": page.limit, "offset": page.offset}


@router.get("/tickets/{ticket_id}", summary="One ticket: history, attachments, 测温 records, SLA clocks")
def get_ticket(ticket_id: TicketId, conn: Conn, user: CurrentUser) -> dict:
    if user.role != "customer" and "tickets:read" not in user.scopes:
        raise ApiError(403, "forbidden_role")
    _access(conn, user, ticket_id)
    now = _now()
    with _errors():
        t = store.get_ticket(conn, ticket_id, with_events=True)
    pol = company_policy(conn, t["company_id"], local_day(t["reported_at"]))
    t["attachments"] = store.list_attachments(conn, ticket_id)
    t["temp_tests"] = temptest.tests_for_ticket(conn, ticket_id)
    t["sla"] = _clocks(t, pol, now)
    rc = refund_clock(t, pol, now)
    t["refund_clock"] = rc.__dict__ if rc else None
    if user.role == "customer":        # the customer sees the story, not the staff's internal notes
        t["events"] = [e for e in t["events"] if e["action"] not in ("note", "sla_warning", "sla_breach",
                                                                       "sla_escalate", "link")]
    return t


def _clocks(t: dict, pol: dict, now: datetime) -> list[dict]:
    return [c.as_dict() for c in ticket_clocks(t, t["events"], pol, now, ZoneInfo(get_settings().timezone))]


# ------------------------------------------------------------------------------------------ workflow


class DispatchIn(BaseModel):
    technician_id: int | None = Field(None, description="omit for automatic dispatch by score")
    appointment_at: datetime | None = None
    note: str = Field("", max_length=500)


@router.post("/tickets/{ticket_id}/dispatch", summary="派单 (auto when technician_id is omitted) / 二次派单")
def dispatch_ticket(ticket_id: TicketId, body: DispatchIn, conn: Conn, user: Assigner) -> dict:
    _access(conn, user, ticket_id)
    with _errors():
        if body.technician_id is None:
            return dispatch.auto_dispatch(conn, ticket_id, now=_now(), actor=user.username,
                                          appointment_at=body.appointment_at)
        return dispatch.assign(conn, ticket_id, body.technician_id, actor=user.username, now=_now(), note=body.note,
                               appointment_at=body.appointment_at)


@router.get("/tickets/{ticket_id}/candidates", summary="Ranked technicians with score components and reasons")
def candidates(ticket_id: TicketId, conn: Conn, user: Assigner) -> dict:
    _access(conn, user, ticket_id)
    with _errors():
        return {"items": [c.as_dict() for c in dispatch.candidates(conn, ticket_id, _now())]}


class ReassignIn(BaseModel):
    technician_id: int
    reason: str = Field(..., min_length=1, max_length=500)


@router.post("/tickets/{ticket_id}/reassign", summary="改派 to another technician")
def reassign(ticket_id: TicketId, body: ReassignIn, conn: Conn, user: Assigner) -> dict:
    _access(conn, user, ticket_id)
    with _errors():
        return dispatch.reassign(conn, ticket_id, body.technician_id, actor=user.username, now=_now(),
                                 reason=body.reason)


@router.post("/tickets/{ticket_id}/claim", summary="抢单: the signed-in technician takes the ticket")
def claim(ticket_id: TicketId, conn: Conn, user: CurrentUser) -> dict:
    if "tickets:work" not in user.scopes or user.technician_id is None:
        raise ApiError(403, "forbidden_role")
    _access(conn, user, ticket_id)
    with _errors():
        return dispatch.claim(conn, ticket_id, user.technician_id, actor=user.username, now=_now())


@router.get("/technicians/{technician_id}/pool", summary="抢单 pool of a technician's station")
def pool(technician_id: Annotated[int, Path(ge=1)], conn: Conn, user: CurrentUser) -> dict:
    if not ("tickets:assign" in user.scopes or user.technician_id == technician_id):
        raise ApiError(403, "forbidden_role")
    _own_technician(conn, user, technician_id)
    return {"items": dispatch.pool(conn, technician_id, _now())}


class ReasonIn(BaseModel):
    reason: str = Field(..., min_length=1, max_length=500)


class ResolveIn(BaseModel):
    resolution: str = Field(..., min_length=1, max_length=2000)
    user_caused: Literal["altered_installation", "covered_radiator", "drew_water", "other_device"] | None = None


class RevisitIn(BaseModel):
    satisfaction: int = Field(..., ge=1, le=5)
    comment: str = Field("", max_length=1000)


class EscalateIn(BaseModel):
    external_ref: str = Field(..., min_length=1, max_length=60)
    body: Literal["12345", "96123", "12319", "authority", "third_party_lab"] = "12345"


class PauseIn(BaseModel):
    code: str = Field(..., max_length=40, description="policy pause code: customer_absent, entry_refused")
    note: str = Field("", max_length=500)


class TextIn(BaseModel):
    text: str = Field(..., min_length=1, max_length=2000)


class LocationIn(BaseModel):
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)


@router.post("/tickets/{ticket_id}/accept", summary="接单")
def accept(ticket_id: TicketId, conn: Conn, user: CurrentUser) -> dict:
    _worker(user, _access(conn, user, ticket_id))
    with _errors():
        return store.accept(conn, ticket_id, actor=user.username, now=_now())


@router.post("/tickets/{ticket_id}/arrive", summary="到场 (stops the arrive clock)")
def arrive(ticket_id: TicketId, body: LocationIn, conn: Conn, user: CurrentUser) -> dict:
    _worker(user, _access(conn, user, ticket_id))
    with _errors():
        return store.arrive(conn, ticket_id, actor=user.username, now=_now(), lat=body.lat, lon=body.lon)


@router.post("/tickets/{ticket_id}/resolve", summary="处理完毕 (the customer is notified)")
def resolve(ticket_id: TicketId, body: ResolveIn, conn: Conn, user: CurrentUser) -> dict:
    _worker(user, _access(conn, user, ticket_id))
    with _errors():
        return store.resolve(conn, ticket_id, actor=user.username, now=_now(), resolution=body.resolution,
                             user_caused=body.user_caused)


@router.post("/tickets/{ticket_id}/revisit", summary="回访 (satisfaction ≤ 2 reopens for 二次派单)")
def revisit(ticket_id: TicketId, body: RevisitIn, conn: Conn, user: Writer) -> dict:
    _access(conn, user, ticket_id)
    with _errors():
        return store.revisit(conn, ticket_id, actor=user.username, now=_now(), satisfaction=body.satisfaction,
                             comment=body.comment)


@router.post("/tickets/{ticket_id}/close", summary="关闭")
def close(ticket_id: TicketId, conn: Conn, user: Writer) -> dict:
    _access(conn, user, ticket_id)
    with _errors():
        return store.close(conn, ticket_id, actor=user.username, now=_now())


@router.post("/tickets/{ticket_id}/cancel", summary="取消 (reason required)")
def cancel(ticket_id: TicketId, body: ReasonIn, conn: Conn, user: Writer) -> dict:
    _access(conn, user, ticket_id)
    with _errors():
        return store.cancel(conn, ticket_id, actor=user.username, now=_now(), reason=body.reason)


@router.post("/tickets/{ticket_id}/escalate-external", summary="外部升级: 12345 / authority / lab (R28)")
def escalate_external(ticket_id: TicketId, body: EscalateIn, conn: Conn, user: Writer) -> dict:
    _access(conn, user, ticket_id)
    with _errors():
        return store.escalate_external(conn, ticket_id, actor=user.username, now=_now(),
                                       external_ref=body.external_ref, body=body.body)


@router.post("/tickets/{ticket_id}/pause", summary="Pause the SLA clocks (customer_absent, entry_refused)")
def pause(ticket_id: TicketId, body: PauseIn, conn: Conn, user: CurrentUser) -> dict:
    _worker(user, _access(conn, user, ticket_id))
    with _errors():
        return store.pause_clock(conn, ticket_id, actor=user.username, now=_now(), code=body.code, note=body.note)


@router.post("/tickets/{ticket_id}/resume", summary="Resume the SLA clocks")
def resume(ticket_id: TicketId, body: TextIn | None, conn: Conn, user: CurrentUser) -> dict:
    _worker(user, _access(conn, user, ticket_id))
    with _errors():
        return store.resume_clock(conn, ticket_id, actor=user.username, now=_now(), note=body.text if body else "")


@router.post("/tickets/{ticket_id}/urge", summary="催办 without a new call record")
def urge(ticket_id: TicketId, conn: Conn, user: Writer) -> dict:
    _access(conn, user, ticket_id)
    with _errors():
        return store.urge(conn, ticket_id, actor=user.username, now=_now())


@router.post("/tickets/{ticket_id}/notes", summary="Internal note")
def note(ticket_id: TicketId, body: TextIn, conn: Conn, user: CurrentUser) -> dict:
    _worker(user, _access(conn, user, ticket_id))
    with _errors():
        return store.add_note(conn, ticket_id, actor=user.username, now=_now(), text=body.text)


@router.post("/tickets/{ticket_id}/reply", summary="Written answer to a 投诉/咨询 (R26 reply clock)")
def reply(ticket_id: TicketId, body: TextIn, conn: Conn, user: Writer) -> dict:
    _access(conn, user, ticket_id)
    with _errors():
        return store.reply(conn, ticket_id, actor=user.username, now=_now(), text=body.text)


# ------------------------------------------------------------------------------------------ attachments


@router.post("/tickets/{ticket_id}/attachments", status_code=201, summary="Upload a photo, audio or signature image")
def upload(ticket_id: TicketId, conn: Conn, user: CurrentUser,
                 file: Annotated[UploadFile, File()],
                 kind: Annotated[Literal["photo", "audio", "signature", "document"], Form()] = "photo") -> dict:
    _worker(user, _access(conn, user, ticket_id))
    # a plain `def` handler: FastAPI runs it in the thread pool, so the database calls below never
    # block the event loop; UploadFile's spooled file is read synchronously here
    data = file.file.read(_READ_CAP + 1)
    if len(data) > _READ_CAP:
        raise ApiError(413, "validation_error", f"attachment larger than {_READ_CAP} bytes")
    with _errors():
        return store.add_attachment(conn, ticket_id, kind=kind, content_type=file.content_type or "",
                                    data=data, actor=user.username, now=_now(), filename=file.filename or "")


@router.get("/tickets/{ticket_id}/attachments/{attachment_id}", summary="Download an attachment")
def download(ticket_id: TicketId, attachment_id: Annotated[int, Path(ge=1)], conn: Conn, user: Reader) -> Response:
    _access(conn, user, ticket_id)
    with _errors():
        a = store.get_attachment(conn, ticket_id, attachment_id)
    return Response(a["data"], media_type=a["content_type"],
                    headers={"ETag": f'"{a["sha256"]}"', "Cache-Control": "private, max-age=3600",
                             "X-Content-Type-Options": "nosniff"})


# ------------------------------------------------------------------------------------------ 测温


class TempTestIn(BaseModel):
    measured_at: datetime
    readings: list[float] = Field(..., min_length=1, max_length=50)
    height_m: float = Field(..., gt=0, lt=3)
    points: int = Field(1, ge=1, le=20)
    stability_ok: bool
    instrument_id: str = Field(..., min_length=1, max_length=60)
    calibration_cert: str = Field(..., min_length=1, max_length=60)
    calibration_expiry: date
    staff_signature_id: int
    user_signature_id: int
    protocol_id: str | None = Field(None, max_length=40)
    room_id: int | None = None
    instrument_correction_c: float = Field(0.0, ge=-2, le=2)


@router.post("/tickets/{ticket_id}/temp-tests", status_code=201, summary="Record a measured 测温 (R11–R13, R18)")
def record_temp_test(ticket_id: TicketId, body: TempTestIn, conn: Conn, user: CurrentUser) -> dict:
    _worker(user, _access(conn, user, ticket_id))
    with _errors():
        return temptest.record_temp_test(conn, ticket_id, actor=user.username, now=_now(), **body.model_dump())


class RefusedIn(BaseModel):
    note: str = Field(..., min_length=1, max_length=500)
    staff_signature_id: int | None = None


@router.post("/tickets/{ticket_id}/temp-tests/user-refused", status_code=201,
             summary="R12: the user refused the test → deemed compliant")
def user_refused(ticket_id: TicketId, body: RefusedIn, conn: Conn, user: CurrentUser) -> dict:
    _worker(user, _access(conn, user, ticket_id))
    with _errors():
        return temptest.record_user_refused(conn, ticket_id, actor=user.username, now=_now(), note=body.note,
                                            staff_signature_id=body.staff_signature_id)


@router.post("/tickets/{ticket_id}/temp-tests/company-late", status_code=201,
             summary="R12: the company did not test in time → days deemed < 14 ℃")
def company_late(ticket_id: TicketId, body: TextIn, conn: Conn, user: Assigner) -> dict:
    _access(conn, user, ticket_id)
    with _errors():
        return temptest.record_company_late(conn, ticket_id, actor=user.username, now=_now(), note=body.text)


@router.get("/households/{household_id}/confirmed-noncompliant-days",
            summary="Days confirmed non-compliant by 测温 (what refunds use, R13)")
def confirmed_days(household_id: Annotated[int, Path(ge=1)], conn: Conn, user: CurrentUser,
                   start: Annotated[date, Query(alias="from")], end: Annotated[date, Query(alias="to")]) -> dict:
    if user.role != "customer" and "tickets:read" not in user.scopes:
        raise ApiError(403, "forbidden_role")
    require_household_access(conn, user, household_id)
    if end < start or (end - start).days > 366:
        raise ApiError(422, "validation_error", "from ≤ to, at most 366 days")
    return {"items": temptest.confirmed_days(conn, household_id, start, end)}


# ------------------------------------------------------------------------------------------ crews


class StationIn(BaseModel):
    code: str = Field(..., min_length=1, max_length=40)
    name: str = Field(..., min_length=1, max_length=100)
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    community_ids: list[int] = Field(default_factory=list, max_length=500)
    building_ids: list[int] = Field(default_factory=list, max_length=2000)


class TechnicianIn(BaseModel):
    station_id: int
    code: str = Field(..., min_length=1, max_length=40)
    name: str = Field(..., min_length=1, max_length=60)
    skills: list[str] = Field(default_factory=list, max_length=20)
    role: Literal["technician", "team_lead", "station_head"] = "technician"
    max_load: int = Field(6, ge=0, le=50)
    active: bool = True


class ShiftIn(BaseModel):
    starts_at: datetime
    ends_at: datetime


class PositionIn(BaseModel):
    lat: float = Field(..., ge=-90, le=90)
    lon: float = Field(..., ge=-180, le=180)


@router.get("/technicians", summary="Crew board: on duty, load, skills, last location")
def list_technicians(conn: Conn, user: Assigner) -> dict:
    return {"items": dispatch.technicians(conn, list(user.company_ids or (user.company_id,)), _now())}


@router.post("/repair-stations", status_code=201, summary="Create/update a repair station and add its areas")
def upsert_station(body: StationIn, conn: Conn, user: Assigner) -> dict:
    if not dispatch.area_companies(conn, body.community_ids, body.building_ids) <= {user.company_id}:
        raise ApiError(404, "not_found", "a community or building does not exist in your company")
    with _errors():
        sid = dispatch.upsert_station(conn, company_id=user.company_id, **body.model_dump())
    return {"id": sid}


@router.post("/technicians", status_code=201, summary="Create/update a technician")
def upsert_technician(body: TechnicianIn, conn: Conn, user: Assigner) -> dict:
    if dispatch.station_company(conn, body.station_id) != user.company_id:
        raise ApiError(404, "not_found", f"repair station {body.station_id} not found")
    with _errors():
        return {"id": dispatch.upsert_technician(conn, **body.model_dump())}


@router.post("/technicians/{technician_id}/shifts", status_code=201, summary="Add an on-duty shift (值班)")
def add_shift(technician_id: Annotated[int, Path(ge=1)], body: ShiftIn, conn: Conn, user: Assigner) -> dict:
    _own_technician(conn, user, technician_id)
    with _errors():
        dispatch.add_shift(conn, technician_id, body.starts_at, body.ends_at)
    return {"technician_id": technician_id, **body.model_dump()}


@router.post("/technicians/{technician_id}/location", status_code=204, summary="The technician's app reports its position")
def report_location(technician_id: Annotated[int, Path(ge=1)], body: PositionIn, conn: Conn,
                    user: CurrentUser) -> Response:
    if user.technician_id != technician_id and "tickets:assign" not in user.scopes:
        raise ApiError(403, "forbidden_role")
    _own_technician(conn, user, technician_id)
    with _errors():
        dispatch.update_location(conn, technician_id, body.lat, body.lon, _now())
    return Response(status_code=204)


def _own_technician(conn, user: User, technician_id: int) -> None:
    if dispatch.technician_company(conn, technician_id) != user.company_id:
        raise ApiError(404, "not_found", f"technician {technician_id} not found")
