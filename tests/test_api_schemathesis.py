"""schemathesis against the app's own OpenAPI schema: every operation, generated cases, no 5xx.

The schema is loaded in-process (``schemathesis.openapi.from_asgi``) from an app bound to a fresh
clone of the template database seeded with the api test city (tests/api_support.py ``seed_city``),
so the writes the generated POST/PUT/PATCH/DELETE cases make stay in this module's database.

Every operation (GET, POST, PUT, PATCH, DELETE) runs as ``at_admin`` (company-wide, the admin routes)
and as the role the route is written for (``owner_role``: agent, supervisor or finance, scoped to the
branch that holds the seeded household and ticket). Per run Hypothesis draws from three schemathesis
strategies: positive cases with seeded ids pinned in the path and body (so the 2xx branch is reached,
not only 404), positive cases with generated ids, and negative cases (values that break the schema).
Each response must pass

- ``not_a_server_error``: no 5xx, ever;
- ``status_code_conformance``, ``content_type_conformance``, ``response_schema_conformance`` and
  ``response_headers_conformance``: the answer is one the schema declares (errors are declared once
  for every route as ``4XX``/``5XX`` ``application/problem+json`` with the ``Problem`` model,
  api/errors.py ``PROBLEM_RESPONSES``).

Reproducible: ``derandomize=True`` and no example database, so CI draws the same cases each run;
``MAX_EXAMPLES`` keeps the module near a minute on two busy cores.

Every operation passes every check: there is no allowlist (the last two entries, the curve's png/svg and
the evidence PDF's content types, were fixed by declaring them in api/routes/curves.py).
"""
from __future__ import annotations

import os
import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from core.db import clone_database, drop_database
from tests.api_support import password, seed_city, settings_for

# schemathesis's own strategies trip this Hypothesis deprecation (``random`` inside a strategy): not ours.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")

MAX_EXAMPLES = 5  # pinned positive cases per operation and user (fewer free positive / negative ones)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]

#: Operations that end the caller's session run as a user no other case of this module uses.
SESSION_ENDING = {("POST", "/auth/logout"): "at_b2_agent"}


def _operations() -> list[tuple[str, str]]:
    from api.app import create_app

    spec = create_app(settings_for("postgresql://unused@127.0.0.1:1/x")).openapi()
    return sorted((m.upper(), path) for path, ops in spec["paths"].items() for m in ops
                  if m in ("get", "post", "put", "patch", "delete"))


class Target:
    """The loaded schema (bound to the app, which schemathesis calls in-process), the seeded city,
    the seeded rows path parameters are pinned to, and bearer tokens per user (logged in once)."""

    def __init__(self, schema, city, path_values: dict):
        self.schema = schema
        self.city = city
        self.path_values = path_values
        self._tokens: dict[str, str] = {}

    def call(self, method: str, path: str, user: str | None = None, **case_kw):
        case = self.schema[path][method].Case(**case_kw)
        return case.call(headers=self.headers(user) if user else None)

    def token(self, username: str) -> str:
        if username not in self._tokens:
            r = self.call("POST", "/auth/login", body={"username": username, "password": password(username)},
                          media_type="application/json")
            assert r.status_code == 200, r.text
            self._tokens[username] = r.json()["access_token"]
        return self._tokens[username]

    def headers(self, username: str) -> dict:
        return {"Authorization": f"Bearer {self.token(username)}"}



@pytest.fixture(scope="module")
def target(pg_server_url, template_db):
    """A fresh clone of the schema template for this module (the generated writes stay here), seeded
    with the api test city, plus one open ticket so the ticket routes reach more than their 404."""
    from schemathesis.python.asgi import shutdown_lifespans

    from api.app import create_app

    name = f"hd_st_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = clone_database(pg_server_url, template_db, name)
    try:
        city = seed_city(url)
        app = create_app(settings_for(url))
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the app's lifespan (pool)
        t = Target(schema, city, {"household_id": city.ids["AT-H11"], "substation_id": city.ids["AT-S1"],
                                  "device_id": "therm-AT-H11", "user_id": city.users["at_agent"]})
        r = t.call("POST", "/tickets", "at_agent", media_type="application/json",
                   body={"type": "repair", "household_id": city.ids["AT-H11"], "description": "暖气不热"})
        assert r.status_code == 201, r.text
        t.path_values["ticket_id"] = r.json()["ticket"]["id"]
        for user in {u for _, _, u in PARAMS}:
            t.token(user)  # before the generated /auth/login cases can trip the login throttle
        yield t
    finally:
        shutdown_lifespans()  # closes the pool schemathesis's ASGI client started
        drop_database(pg_server_url, name)


def owner_role(method: str, path: str) -> str:
    """The role whose scopes a route is written for (the second run next to ``at_admin``): scoped to AT-B1,
    which holds the pinned household and ticket."""
    if path.startswith(("/tickets", "/technicians", "/repair-stations")):
        return "at_supervisor"  # tickets:write + tickets:assign
    if method != "GET" and (path.startswith(("/payments", "/dunning/", "/notify/")) or "/dunning/" in path):
        return "at_finance"  # dunning:write, pii:hardship
    return "at_agent"


def _pin_body(values: dict):
    def pin(case):
        if isinstance(case.body, dict):
            for key in values.keys() & case.body.keys():
                case.body[key] = values[key]
        return case
    return pin


def _run(target, method: str, path: str, user: str, checks: list, max_examples: int = MAX_EXAMPLES) -> None:
    """Positive cases with seeded ids pinned in the path and body, free positive cases, negative cases."""
    operation = target.schema[path][method]
    headers = target.headers(user)
    pinned = {k: v for k, v in target.path_values.items() if "{" + k + "}" in path}
    runs = [(operation.as_strategy(generation_mode=GenerationMode.POSITIVE, path_parameters=pinned)
             .map(_pin_body(target.path_values)), max_examples),
            (operation.as_strategy(generation_mode=GenerationMode.POSITIVE), max(2, max_examples - 2)),
            (negative := operation.as_strategy(generation_mode=GenerationMode.NEGATIVE), max(2, max_examples - 2))]
    for strategy, n in runs:
        @settings(max_examples=n, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        @given(case=strategy)
        def run(case):
            response = case.call(headers=headers)
            case.validate_response(response, checks=checks, headers=headers)

        try:
            run()
        except Unsatisfiable:
            if strategy is not negative:
                raise  # only "nothing here can be made invalid" (no parameters, no body) is expected


#: (METHOD, path, user): each operation as at_admin and as its owner role (once only if that is the same user)
PARAMS = sorted({(m, p, SESSION_ENDING.get((m, p), u))
                 for m, p in _operations() for u in ("at_admin", owner_role(m, p))})


@pytest.mark.parametrize("method, path, user", [pytest.param(m, p, u, id=f"{m} {p} [{u}]") for m, p, u in PARAMS])
def test_operation_conforms_and_never_5xx(target, method, path, user):
    _run(target, method, path, user, CHECKS)
