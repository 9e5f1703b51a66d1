"""The dependencies every router uses: connection, current user, roles/scopes, object-level access,
pagination, bounded time ranges and HTTP caching helpers.

Contract for routers (api/routes/<resource>.py)::

    from api.deps import Conn, CurrentUser, require_roles, require_household_access

    @router.get("/households/{household_id}/curve")
    def curve(household_id: int, conn: Conn, user: CurrentUser, rng: TimeRangeDep): ...
        require_household_access(conn, user, household_id)     # 404 other company, 403 other branch

- ``get_conn`` yields a psycopg connection from the app's pool (plain tuple rows; use
  ``conn.cursor(row_factory=dict_row)`` for dicts). The transaction is committed when the handler
  returns and rolled back when it raises. Prefer the ``Conn`` alias: it ends the dependency *before*
  the response is sent (scope="function"), so a commit failure is an error response, not a lie; and
  ``CurrentUser`` uses the same alias, so a request holds one pooled connection, not two.
- ``CurrentUser`` → ``api.auth.User`` (id, username, role, company_id, branch_ids, scopes, ...), from
  ``Authorization: Bearer <token>`` or ``X-API-Key: hdk_...``; 401 problem otherwise.
- ``require_roles(*roles)`` → a dependency returning the user; admin passes every role check
  except where ``allow_admin=False``.
- ``require_household_access(conn, user, id)`` / ``require_substation_access(conn, user, id)`` → the
  object's scope row (dict) or ApiError 404 (absent or another company — existence is not revealed)
  / 403 (same company, branch outside the user's scope). A customer sees only its own household.
- ``require_scopes(*scopes)`` → the finer check by capability (``api.auth.ROLE_SCOPES``: households:read,
  pii:contact, pii:hardship, tickets:read/write/assign/work, curves:read, substations:read, devices:read,
  dunning:read/write, reports:read, audit:read, users:admin, self:read/write).
- ``PageDep`` (limit ≤ 200, offset ≤ 100 000), ``TimeRangeDep`` / ``bounded_range`` (``from``/``to``,
  default last 7 d, ≤ 92 d, not before 2000 nor a year ahead) → 422 problems.
- ``cached_json(request, payload, last_modified=…)`` → JSON with ETag / Last-Modified, 304 when current.
- PII helpers (``contact_view``, ``log_pii_access``, ``hardship_view``, ``get_cipher``) live in
  ``api.privacy`` and are re-exported here.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime, parsedate_to_datetime
from typing import Annotated, Any, Iterator

import orjson
import psycopg
from fastapi import Depends, Query, Request
from fastapi.responses import Response
from psycopg.rows import dict_row

from api.auth import User, user_from_api_key, user_from_token
from api.errors import ApiError

# --------------------------------------------------------------------------------------------- connection


def get_conn(request: Request) -> Iterator[psycopg.Connection]:
    """A pooled connection for this request; commit on success, rollback on error (psycopg_pool)."""
    pool = request.app.state.pool
    with pool.connection() as conn:
        yield conn


Conn = Annotated[psycopg.Connection, Depends(get_conn, scope="function")]


def get_settings(request: Request):
    return request.app.state.settings


# --------------------------------------------------------------------------------------------- user


def _credentials(request: Request) -> tuple[str, str] | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return "token", auth[7:].strip()
    key = request.headers.get("x-api-key")
    if key:
        return "key", key.strip()
    return None


def get_current_user(request: Request, conn: Conn) -> User:
    creds = _credentials(request)
    user = None
    if creds is not None:
        kind, value = creds
        if kind == "token":
            user = user_from_token(conn, request.app.state.settings.token_secret, value)
        else:
            user = user_from_api_key(conn, value)
    if user is None:
        raise ApiError(401, "unauthenticated", headers={"WWW-Authenticate": 'Bearer realm="heatdesk"'})
    request.state.user = user
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_roles(*roles: str, allow_admin: bool = True):
    """Dependency factory: the current user if its role is one of ``roles`` (admin passes unless
    ``allow_admin=False``); 403 problem otherwise."""
    allowed = frozenset(roles)

    def dependency(user: CurrentUser) -> User:
        if user.role in allowed or (allow_admin and user.role == "admin"):
            return user
        raise ApiError(403, "forbidden_role")

    dependency.__name__ = f"require_roles_{'_'.join(roles)}"
    return dependency


def require_scopes(*scopes: str):
    """Dependency factory: the current user if it holds every scope (api.auth.ROLE_SCOPES)."""
    needed = frozenset(scopes)

    def dependency(user: CurrentUser) -> User:
        if needed <= user.scopes:
            return user
        raise ApiError(403, "forbidden_role")

    dependency.__name__ = f"require_scopes_{'_'.join(s.replace(':', '_') for s in scopes)}"
    return dependency


# --------------------------------------------------------------------------------------------- objects

_HOUSEHOLD_SCOPE_SQL = """
    SELECT h.id AS household_id, h.code, u.id AS unit_id, bd.id AS building_id, c.id AS community_id,
           s.id AS substation_id, br.id AS branch_id, br.company_id
      FROM household h JOIN unit u ON u.id = h.unit_id JOIN building bd ON bd.id = u.building_id
      JOIN community c ON c.id = bd.community_id JOIN substation s ON s.id = c.substation_id
      JOIN branch br ON br.id = s.branch_id
     WHERE h.id = %s"""

_SUBSTATION_SCOPE_SQL = """
    SELECT s.id AS substation_id, s.code, br.id AS branch_id, br.company_id
      FROM substation s JOIN branch br ON br.id = s.branch_id WHERE s.id = %s"""


def _check_scope(user: User, row: dict | None, not_found: str) -> dict:
    if row is None or row["company_id"] not in (user.company_ids or (user.company_id,)):
        raise ApiError(404, not_found)
    if row["branch_id"] not in user.branch_ids:
        raise ApiError(403, "forbidden_scope")
    return row


def require_household_access(conn: psycopg.Connection, user: User, household_id: int) -> dict:
    """Object-level authorisation for a household (OWASP API1). Returns its scope row."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_HOUSEHOLD_SCOPE_SQL, (household_id,)).fetchone()
    if user.role == "customer":
        if row is None or user.household_id != household_id:
            raise ApiError(404, "household_not_found")
        return row
    return _check_scope(user, row, "household_not_found")


def require_substation_access(conn: psycopg.Connection, user: User, substation_id: int) -> dict:
    """Object-level authorisation for a substation. Customers never see substations."""
    if user.role == "customer":
        raise ApiError(403, "forbidden_role")
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_SUBSTATION_SCOPE_SQL, (substation_id,)).fetchone()
    return _check_scope(user, row, "substation_not_found")


# --------------------------------------------------------------------------------------------- paging

MAX_LIMIT = 200
MAX_OFFSET = 100_000


@dataclass(frozen=True)
class Page:
    limit: int
    offset: int


def page_params(limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="page size, at most 200")] = 50,
                offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> Page:
    return Page(limit=limit, offset=offset)


PageDep = Annotated[Page, Depends(page_params)]


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime


EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
MAX_RANGE_DAYS = 92        # one heating-season quarter; longer series go through exports, not the API
DEFAULT_RANGE_DAYS = 7


def bounded_range(start: datetime | None, end: datetime | None, *, max_days: int = MAX_RANGE_DAYS,
                  default_days: int = DEFAULT_RANGE_DAYS, now: datetime | None = None) -> TimeRange:
    """Resolve a [start, end) range: naive times are UTC, defaults to the last ``default_days``;
    422 problem when inverted or longer than ``max_days`` (OWASP API4: unrestricted consumption)."""
    now = now or datetime.now(timezone.utc)
    end = end or now
    start = start or end - timedelta(days=default_days)
    if start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    if end.tzinfo is None:
        end = end.replace(tzinfo=timezone.utc)
    if start < EARLIEST or end > now + timedelta(days=366):
        # No heating data before 2000 or a year ahead: such dates are typos (from=-1 is 1969) and would
        # only reach policy tables that do not cover them.
        raise ApiError(422, "range_out_of_bounds")
    if start >= end:
        raise ApiError(422, "range_inverted")
    if end - start > timedelta(days=max_days):
        raise ApiError(422, "range_too_long", max_days=max_days)
    return TimeRange(start, end)


def time_range(start: Annotated[datetime | None, Query(alias="from", description="ISO 8601; default end − 7 d")] = None,
               end: Annotated[datetime | None, Query(alias="to", description="ISO 8601; default now")] = None
               ) -> TimeRange:
    return bounded_range(start, end)


TimeRangeDep = Annotated[TimeRange, Depends(time_range)]


# --------------------------------------------------------------------------------------------- caching


def etag_of(payload: Any) -> str:
    """A strong ETag of a JSON-serialisable payload (orjson, sorted keys)."""
    body = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def not_modified(request: Request, etag: str | None, last_modified: datetime | None) -> bool:
    """RFC 9110 §13.2.2: If-None-Match wins over If-Modified-Since."""
    inm = request.headers.get("if-none-match")
    if inm is not None and etag is not None:
        tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
        return "*" in tags or etag in tags
    ims = request.headers.get("if-modified-since")
    if ims and last_modified is not None:
        try:
            since = parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
        return last_modified.replace(microsecond=0) <= since
    return False


def cached_json(request: Request, payload: Any, *, last_modified: datetime | None = None,
                max_age: int = 60, private: bool = True) -> Response:
    """JSON response with ETag / Last-Modified, or an empty 304 when the client's copy is current.

    Curves are personal data when linked to a household (R55): ``private`` keeps them out of
    shared caches.
    """
    etag = etag_of(payload)
    headers = {"ETag": etag, "Cache-Control": f"{'private' if private else 'public'}, max-age={max_age}",
               "Vary": "Authorization, Accept-Language"}
    if last_modified is not None:
        if last_modified.tzinfo is None:
            last_modified = last_modified.replace(tzinfo=timezone.utc)
        headers["Last-Modified"] = format_datetime(last_modified.astimezone(timezone.utc), usegmt=True)
    if not_modified(request, etag, last_modified):
        return Response(status_code=304, headers=headers)
    return Response(orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json", headers=headers)


# --------------------------------------------------------------------------------------------- PII (re-export)
from api.privacy import contact_view, get_cipher, hardship_view, log_pii_access  # noqa: E402

__all__ = ["get_conn", "Conn", "get_settings", "get_current_user", "CurrentUser", "User", "require_roles",
           "require_scopes", "require_household_access", "require_substation_access", "Page", "PageDep",
           "page_params", "TimeRange", "TimeRangeDep", "time_range", "bounded_range", "etag_of",
           "not_modified", "cached_json", "contact_view", "log_pii_access", "hardship_view", "get_cipher", "ApiError"]
