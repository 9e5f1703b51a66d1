"""Hypothesis-driven fuzz of query and path parameters: clear 4xx, never a 5xx.

Both this module and tests/test_api_schemathesis.py exist. schemathesis generates cases from the
OpenAPI schema for every operation (GET and writes) and also checks that responses conform to it;
but its values are whatever the schema allows or breaks. This fuzz stays because it aims at the
junk callers really send (phone numbers and Chinese address fragments in the search box, SQL
quotes, ``1e309``, impossible dates, NUL bytes, 500-character strings), checks that every error is
``application/problem+json``, and needs nothing but Hypothesis.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from tests.api_support import api, api_city  # noqa: F401  (fixtures)

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
junk = st.one_of(text, st.integers(min_value=-10**12, max_value=10**12).map(str),
                 st.sampled_from(["", "0", "-1", "1e309", "NaN", "2026-13-45T99:00:00", "null", "%00", "' OR 1=1 --",
                                  "13812345678", "海景花园3号楼", "张", "A" * 500]))

SEARCH_KEYS = ["q", "phone", "name", "code", "address", "limit", "offset"]
RANGE_KEYS = ["from", "to", "limit", "offset", "device_id", "reason", "source", "household_id", "user_id"]


def _ok(r):
    assert r.status_code < 500, f"{r.request.url} → {r.status_code}: {r.text[:300]}"
    if r.status_code >= 400:
        assert r.headers["content-type"] == "application/problem+json"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.dictionaries(st.sampled_from(SEARCH_KEYS), junk, max_size=3))
def test_household_search_never_5xx(api, params):
    _ok(api.get("/households", "at_agent", params=params))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.dictionaries(st.sampled_from(RANGE_KEYS), junk, max_size=3),
       path=st.sampled_from(["/rejects", "/devices", "/pii-access-log"]))
def test_list_endpoints_never_5xx(api, params, path):
    _ok(api.get(path, "at_admin", params=params))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ident=junk)
def test_path_parameters_never_5xx(api, ident):
    from urllib.parse import quote

    seg = quote(ident, safe="") or "x"
    _ok(api.get(f"/households/{seg}", "at_agent"))
    _ok(api.get(f"/devices/{seg}", "at_admin"))


# ------------------------------------------------------------------------- every GET route of every router

JUNK = ["", "-1", "0", "abc", "1e309", "NaN", "2026-13-45", "9" * 30, "海景", "' OR 1=1 --"]


def _get_operations() -> list[tuple[str, list[str]]]:
    from api.app import create_app
    from tests.api_support import settings_for

    spec = create_app(settings_for("postgresql://unused@127.0.0.1:1/x")).openapi()
    ops = []
    for path, methods in sorted(spec["paths"].items()):
        op = methods.get("get")
        if op is None or path in ("/metrics",):
            continue
        params = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
        ops.append((path, params))
    return ops


def _fill(api, path: str) -> str:
    import re

    values = {"household_id": api.city.ids["AT-H11"], "substation_id": api.city.ids["AT-S1"]}
    return re.sub(r"\{(\w+)\}", lambda m: str(values.get(m.group(1), 1)), path)


import pytest  # noqa: E402


@pytest.mark.parametrize("path, params", list(_get_operations()), ids=lambda v: str(v))
def test_every_get_route_answers_junk_query_values_without_5xx(api, path, params):
    url = _fill(api, path)
    for name in params or ["unknown_param"]:
        for value in JUNK:
            r = api.get(url, "at_admin", params={name: value})
            _ok(r)
