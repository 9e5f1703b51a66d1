"""Ingest status per device and recent rejects (engineer, supervisor, auditor, admin: ``devices:read``).

Read from the tables ingest writes in the same transaction as the readings (device_status,
ingest_counter, rejects, device_gap), so the figures are what was stored, not what was hoped.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from api import queries
from api.auth import User
from api.deps import Conn, PageDep, TimeRangeDep, bounded_range, require_scopes
from api.errors import ApiError

router = APIRouter(tags=["devices"])

DeviceReader = Annotated[User, Depends(require_scopes("devices:read"))]

#: Bounds (OWASP API4): minute counters of one device over at most a day; rejects over at most 7 days.
MAX_COUNTER_MINUTES = 24 * 60
MAX_REJECT_DAYS = 7


def _company_wide(conn, user: User) -> bool:
    """Devices not yet linked to any sensor (and rejects without a device) are shown only to callers
    whose scope is their whole company: they cannot be attributed to a branch."""
    branches = queries.company_branch_ids(conn, user.company_id)
    return bool(branches) and set(user.branch_ids) >= set(branches)


@router.get("/devices", summary="Ingest status per device: connection, last seen, readings/rejects last hour")
def list_devices(conn: Conn, user: DeviceReader, page: PageDep,
                 protocol: Annotated[str | None, Query(pattern=r"^(mqtt|modbus|opcua|import)$")] = None,
                 connected: bool | None = None) -> dict:
    items = queries.list_devices(conn, user.branch_ids, include_unlinked=_company_wide(conn, user),
                                 protocol=protocol, connected=connected, limit=page.limit, offset=page.offset)
    return {"items": items, "limit": page.limit, "offset": page.offset}


@router.get("/devices/{device_id}", summary="One device: status, per-minute counters, gaps, its sensors")
def device_detail(conn: Conn, user: DeviceReader,
                  device_id: Annotated[str, Path(max_length=200)],
                  minutes: Annotated[int, Query(ge=1, le=MAX_COUNTER_MINUTES)] = 60) -> dict:
    visible = queries.device_visible(conn, user.branch_ids, user.company_id, device_id,
                                     _company_wide(conn, user))
    if visible is None:
        raise ApiError(404, "device_not_found")
    if not visible:
        raise ApiError(403, "forbidden_scope")
    return queries.device_detail(conn, device_id, minutes=minutes)


@router.get("/rejects", summary="Recent rejects (what ingest could not store, and why)")
def recent_rejects(conn: Conn, user: DeviceReader, page: PageDep, rng: TimeRangeDep,
                   device_id: Annotated[str | None, Query(max_length=200)] = None,
                   reason: Annotated[str | None, Query(max_length=100)] = None,
                   source: Annotated[str | None, Query(max_length=20)] = None) -> dict:
    rng = bounded_range(rng.start, rng.end, max_days=MAX_REJECT_DAYS)
    wide = _company_wide(conn, user)
    items = queries.recent_rejects(conn, user.branch_ids, include_unlinked=wide, start=rng.start, end=rng.end,
                                   device_id=device_id, reason=reason, source=source, limit=page.limit,
                                   offset=page.offset)
    summary = queries.reject_summary(conn, user.branch_ids, include_unlinked=wide, start=rng.start, end=rng.end)
    return {"items": items, "summary": summary, "limit": page.limit, "offset": page.offset,
            "from": rng.start, "to": rng.end}
