"""Authorisation matrix: every role × every route × own branch / other branch / other company.

Two layers:
1. The api's own routes, with the expected status for each role and object (a table).
2. Every route any router defines (found on the app, so routers landing later are covered): no route
   answers without credentials unless it is on the public list, and no route with a ``{household_id}``
   or ``{substation_id}`` ever answers 2xx for an object outside the caller's branch or company
   (OWASP API1, object-level authorisation).
"""
from __future__ import annotations

import re

import pytest

from api.app import create_app
from tests.api_support import api, api_city, settings_for  # noqa: F401  (fixtures)

STAFF = ["agent", "supervisor", "engineer", "dispatcher", "technician", "finance", "auditor", "admin"]
USERS = [f"at_{r}" for r in STAFF] + ["at_customer", "ax_agent"]
COMPANY_WIDE = {"at_admin", "at_auditor"}
ALL_STAFF = set(USERS) - {"at_customer"}

# route → (method, path with {obj}, object kind, users allowed by role)
ROUTES = {
    "household_search": ("GET", "/households?code=AT", None, ALL_STAFF),
    "household_card": ("GET", "/households/{obj}", "household", ALL_STAFF | {"at_customer"}),
    "self_household": ("GET", "/self/household", None, {"at_customer"}),
    "pii_access_log": ("GET", "/pii-access-log", None, {"at_auditor", "at_admin"}),
    "devices": ("GET", "/devices", None, {"at_supervisor", "at_engineer", "at_auditor", "at_admin"}),
    "device_detail": ("GET", "/devices/{obj}", "device", {"at_supervisor", "at_engineer", "at_auditor", "at_admin"}),
    "rejects": ("GET", "/rejects", None, {"at_supervisor", "at_engineer", "at_auditor", "at_admin"}),
    "me": ("GET", "/auth/me", None, set(USERS)),
    "scope": ("GET", "/auth/scope", None, ALL_STAFF),
    "self_bill": ("GET", "/self/bill", None, {"at_customer"}),
    "user_admin": ("POST", "/auth/users", None, {"at_admin"}),
}

OBJECTS = {  # where → (household code, device id)
    "own": ("AT-H11", "therm-AT-H11"),
    "other_branch": ("AT-H21", "therm-AT-H21"),
    "other_company": ("AX-H1", "therm-AX-H1"),
}


def _expected(route: str, user: str, where: str) -> int:
    method, path, kind, allowed = ROUTES[route]
    if user.startswith("ax_") and kind is None:
        # the other company's agent: its own data scope, judged by role only
        return 200 if user in allowed else 403
    if user not in allowed:
        return 403
    if kind is None:
        return 201 if method == "POST" else 200
    if user == "at_customer":
        return 200 if where == "own" else 404
    if user.startswith("ax_"):
        return 200 if where == "other_company" else 404
    if where == "other_company":
        return 404
    if where == "other_branch" and user not in COMPANY_WIDE:
        return 403
    return 200


CASES = [(route, user, where) for route, (_, _, kind, _) in ROUTES.items() for user in USERS
         for where in (OBJECTS if kind else ["-"])]


@pytest.mark.parametrize("route, user, where", CASES, ids=["-".join(c) for c in CASES])
def test_matrix(api, route, user, where):
    method, path, kind, _ = ROUTES[route]
    if kind == "household":
        path = path.format(obj=api.city.ids[OBJECTS[where][0]])
    elif kind == "device":
        path = path.format(obj=OBJECTS[where][1])
    if method == "POST":
        body = {"username": f"mx_{user}", "role": "agent", "password": "matrix-password-1"}
        r = api.post(path, user, json=body)
    else:
        r = api.get(path, user)
    assert r.status_code == _expected(route, user, where if kind else "own"), r.text
    if r.status_code >= 400:
        assert r.headers["content-type"] == "application/problem+json"


def test_lists_only_contain_objects_in_scope(api):
    b1 = api.get("/devices", "at_engineer").json()["items"]
    assert {d["device_id"] for d in b1} == {"therm-AT-H11", "therm-AT-H12", "AT-S1"}
    everyone = {d["device_id"] for d in api.get("/devices", "at_admin").json()["items"]}
    assert {"therm-AT-H21", "AT-S2"} <= everyone and not any(d.startswith(("therm-AX", "AX-")) for d in everyone)
    rej_b1 = {r["device_id"] for r in api.get("/rejects", "at_engineer").json()["items"]}
    assert rej_b1 == {"therm-AT-H11", "therm-AT-H12"}
    rej_all = {r["device_id"] for r in api.get("/rejects", "at_admin").json()["items"]}
    assert "ghost-1" in rej_all and "therm-AT-H21" in rej_all and "therm-AX-H1" not in rej_all
    codes = {h["code"] for h in api.get("/households", "at_auditor", params={"code": "A"}).json()["items"]}
    assert codes == {"AT-H11", "AT-H12", "AT-H21"}


# ----------------------------------------------------------------------------- every router's routes

PUBLIC = {"/healthz", "/readyz", "/metrics", "/auth/login", "/docs", "/docs/oauth2-redirect", "/openapi.json"}
PUBLIC_PREFIXES = ("/ui", "/static")


def _all_routes() -> list[tuple[str, str]]:
    """(method, path) of every operation in the OpenAPI document: what every router exposes."""
    app = create_app(settings_for("postgresql://unused@127.0.0.1:1/x"))
    return sorted((m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops
                  if m in ("get", "post", "put", "patch", "delete"))


ALL_ROUTES = _all_routes()


def _fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values.get(m.group(1), "1"), path)


@pytest.mark.parametrize("method, path", [r for r in ALL_ROUTES
                                          if r[1] not in PUBLIC and not r[1].startswith(PUBLIC_PREFIXES)],
                         ids=lambda v: str(v))
def test_every_route_needs_credentials(api, method, path):
    r = api.client.request(method, _fill(path, {}), json={} if method in ("POST", "PUT", "PATCH") else None)
    assert r.status_code == 401, f"{method} {path} answered {r.status_code} without credentials"


OBJECT_ROUTES = [r for r in ALL_ROUTES if "{household_id}" in r[1] or "{substation_id}" in r[1]]


@pytest.mark.parametrize("method, path", OBJECT_ROUTES, ids=lambda v: str(v))
@pytest.mark.parametrize("where", ["other_branch", "other_company"])
def test_no_route_reaches_objects_outside_scope(api, method, path, where):
    hh, _ = OBJECTS[where]
    sub = {"other_branch": "AT-S2", "other_company": "AX-S1"}[where]
    url = _fill(path, {"household_id": str(api.city.ids[hh]), "substation_id": str(api.city.ids[sub])})
    for user in [f"at_{r}" for r in STAFF if f"at_{r}" not in COMPANY_WIDE] + ["at_customer"]:
        r = api.client.request(method, url, headers=api.h(user),
                               json={} if method in ("POST", "PUT", "PATCH") else None)
        assert not 200 <= r.status_code < 300, f"{user} {method} {url} → {r.status_code} (outside scope)"
        assert r.status_code < 500, f"{user} {method} {url} → {r.status_code}: {r.text[:300]}"
    # company-wide users still never cross into another company
    if where == "other_company":
        for user in COMPANY_WIDE:
            r = api.client.request(method, url, headers=api.h(user),
                                   json={} if method in ("POST", "PUT", "PATCH") else None)
            assert not 200 <= r.status_code < 300, f"{user} {method} {url} → {r.status_code} (other company)"
