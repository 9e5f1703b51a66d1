"""Login, logout, who-am-I, and user / API-key administration (admin only)."""
from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from api import auth
from api.deps import Conn, CurrentUser, require_roles
from api.errors import ApiError

router = APIRouter(prefix="/auth", tags=["auth"])


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=200)


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    user: dict


class UserIn(BaseModel):
    username: str = Field(min_length=2, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    role: str = Field(description="agent, supervisor, engineer, dispatcher, technician, finance, auditor, admin, customer")
    password: str | None = Field(default=None, min_length=10, max_length=200)
    display_name: str = Field(default="", max_length=100)
    branch_ids: list[int] | None = Field(default=None, description="None = whole company")
    household_id: int | None = None
    is_service: bool = False


class ApiKeyIn(BaseModel):
    scopes: list[str] = Field(default_factory=list, description="subset of the account's scopes; empty = all")


def _user_dict(u: auth.User) -> dict:
    return {"id": u.id, "username": u.username, "display_name": u.display_name, "role": u.role,
            "company_id": u.company_id, "branch_ids": list(u.branch_ids), "scopes": sorted(u.scopes),
            "household_id": u.household_id, "technician_id": u.technician_id}


@router.post("/login", response_model=TokenOut, summary="Exchange username/password for a bearer token")
def login(body: LoginIn, conn: Conn, request: Request) -> TokenOut:
    throttle: auth.LoginThrottle = request.app.state.login_throttle
    ip = request.client.host if request.client else "-"
    keys = [f"u:{body.username.lower()}", f"ip:{ip}:{body.username.lower()}"]
    now = time.monotonic()
    wait = throttle.retry_after(keys, now)
    if wait:
        raise ApiError(429, "too_many_requests", headers={"Retry-After": str(wait)})
    user = auth.authenticate(conn, body.username, body.password)
    if user is None:
        throttle.failure(keys, now)
        raise ApiError(401, "invalid_credentials")
    throttle.success(keys)
    request.state.user = user
    token = auth.issue_token(request.app.state.settings.token_secret, user.id, user.token_version)
    return TokenOut(access_token=token, expires_in=auth.TOKEN_TTL_S, user=_user_dict(user))


@router.post("/logout", status_code=204, summary="Revoke every token of the current user")
def logout(conn: Conn, user: CurrentUser) -> None:
    auth.revoke_tokens(conn, user.id)


@router.get("/me", summary="The current user, its role, branches and scopes")
def me(user: CurrentUser) -> dict:
    return _user_dict(user)


@router.get("/scope", summary="The current user's data scope: company, branches and substations (for pickers)")
def scope(conn: Conn, user: CurrentUser) -> dict:
    """Staff only: a customer's scope is its household (GET /self/household)."""
    if user.role == "customer":
        raise ApiError(403, "forbidden_role")
    return auth.scope_objects(conn, user)


Admin = Annotated[auth.User, Depends(require_roles("admin"))]


@router.post("/users", status_code=201, summary="Create or update a user in the admin's company")
def upsert_user(body: UserIn, conn: Conn, admin: Admin) -> dict:
    if body.role not in auth.ROLES:
        raise ApiError(422, "validation_error", f"unknown role {body.role!r}")
    if body.branch_ids is not None and not set(body.branch_ids) <= set(admin.branch_ids):
        raise ApiError(403, "forbidden_scope")
    if body.household_id is not None:
        from api.deps import require_household_access
        require_household_access(conn, admin, body.household_id)
    if body.role == "customer" and body.household_id is None:
        raise ApiError(422, "validation_error", "role customer needs household_id")
    if not body.is_service and not body.password:
        raise ApiError(422, "validation_error", "password required (≥ 10 characters) unless is_service")
    uid = auth.create_user(conn, username=body.username, role=body.role, company_id=admin.company_id,
                           password=body.password, display_name=body.display_name, branch_ids=body.branch_ids,
                           household_id=body.household_id, is_service=body.is_service)
    return {"id": uid, "username": body.username, "role": body.role}


@router.post("/users/{user_id}/api-keys", status_code=201,
             summary="Issue an API key for a user (shown once; only its hash is stored)")
def issue_api_key(user_id: int, body: ApiKeyIn, conn: Conn, admin: Admin) -> dict:
    target = auth.load_user(conn, user_id)
    if target is None or target.company_id != admin.company_id:
        raise ApiError(404, "not_found")
    unknown = set(body.scopes) - target.scopes
    if unknown:
        raise ApiError(422, "validation_error", f"scopes not held by the account: {', '.join(sorted(unknown))}")
    key = auth.create_api_key(conn, user_id, body.scopes)
    return {"api_key": key, "prefix": key.split(".", 1)[0]}


@router.delete("/api-keys/{prefix}", status_code=204, summary="Revoke an API key")
def revoke_key(prefix: str, conn: Conn, admin: Admin) -> None:
    owner = conn.execute("SELECT u.company_id FROM api_key k JOIN app_user u ON u.id = k.user_id WHERE k.prefix = %s",
                         (prefix,)).fetchone()
    if owner is None or owner[0] != admin.company_id or not auth.revoke_api_key(conn, prefix):
        raise ApiError(404, "not_found")
