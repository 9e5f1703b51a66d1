"""The app frame: health, problem details in two languages, request ids, metrics, tokens, API keys, caching."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import auth
from api.deps import bounded_range, cached_json
from api.errors import ApiError
from tests.api_support import api, api_city, fresh_api, password  # noqa: F401  (fixtures)


def test_health_and_readiness(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    r = api.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["database"] == "ok" and body["schema_version"] >= 1 and body["field_key"] is True
    assert "api.routes.households" in body["routers"] and body["router_errors"] == {}


def test_readyz_is_503_when_the_database_is_unreachable():
    from api.app import create_app
    from tests.api_support import settings_for

    app = create_app(settings_for("postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=1"))
    with TestClient(app) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["database"].startswith("unavailable")
        assert client.get("/healthz").status_code == 200


def test_problem_details_in_chinese_by_default_and_english_on_request(api):
    r = api.get("/auth/me")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    p = r.json()
    assert p["title"] == "未登录或登录已过期" and p["status"] == 401 and p["instance"] == "/auth/me"
    assert p["type"].endswith("/unauthenticated") and p["request_id"] == r.headers["x-request-id"]
    assert api.get("/auth/me?lang=en").json()["title"] == "Not authenticated or session expired"
    assert api.get("/auth/me", headers={"Accept-Language": "en-US,en;q=0.9,zh;q=0.3"}).json()["title"].startswith("Not")
    assert api.get("/auth/me", headers={"Accept-Language": "zh-CN,en;q=0.5"}).json()["title"].startswith("未")
    v = api.get("/households", "at_agent", params={"limit": "many", "code": "x", "lang": "en"})
    assert v.status_code == 422 and v.json()["code"] == "validation_error"
    assert v.json()["errors"][0]["loc"] == ["query", "limit"]
    assert api.get("/no/such/path").json()["code"] == "not_found"


def test_request_id_is_echoed_or_generated(api):
    assert api.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    assert len(api.get("/healthz").headers["x-request-id"]) >= 8
    # hostile ids are cleaned, not echoed into logs/headers
    assert api.get("/healthz", headers={"X-Request-ID": "a\"b<c>"}).headers["x-request-id"] == "abc"


def test_metrics_expose_latency_by_route_template_and_ingest_figures(api):
    hid = api.city.ids["AT-H11"]
    api.get(f"/households/{hid}", "at_agent")
    text = api.get("/metrics").text
    assert 'heatdesk_http_request_duration_seconds_count{method="GET",route="/households/{household_id}",status="200"}' in text
    assert f"/households/{hid}\"" not in text
    assert "heatdesk_ingest_scrape_ok 1.0" in text
    assert 'heatdesk_ingest_readings_per_second{protocol="mqtt"}' in text
    assert 'heatdesk_ingest_rejects_last_hour{reason="out_of_range"}' in text
    assert 'heatdesk_devices{protocol="modbus",state="disconnected"}' in text
    assert 'heatdesk_backlog{queue="compliance_dirty"}' in text


def test_login_wrong_password_and_unknown_user_look_the_same(api):
    a = api.client.post("/auth/login", json={"username": "at_agent", "password": "wrong"})
    b = api.client.post("/auth/login", json={"username": "nobody", "password": "wrong"})
    assert a.status_code == b.status_code == 401
    assert a.json()["code"] == b.json()["code"] == "invalid_credentials"


def test_me_returns_role_branches_and_scopes(api):
    me = api.get("/auth/me", "at_agent").json()
    assert me["role"] == "agent" and me["branch_ids"] == [api.city.ids["AT-B1"]]
    assert "pii:contact" in me["scopes"] and "users:admin" not in me["scopes"]
    admin = api.get("/auth/me", "at_admin").json()
    assert sorted(admin["branch_ids"]) == sorted([api.city.ids["AT-B1"], api.city.ids["AT-B2"]])


def test_tokens_are_signed_expire_and_are_revoked_by_logout(fresh_api):
    secret = fresh_api.client.app.state.settings.token_secret
    uid = fresh_api.city.users["at_agent"]
    good = auth.issue_token(secret, uid, 1)
    assert fresh_api.client.get("/auth/me", headers={"Authorization": f"Bearer {good}"}).status_code == 200
    forged = auth.issue_token("another-secret", uid, 1)
    expired = auth.issue_token(secret, uid, 1, now=0)
    tampered = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    for bad in (forged, expired, tampered, "garbage", ""):
        assert fresh_api.client.get("/auth/me", headers={"Authorization": f"Bearer {bad}"}).status_code == 401
    assert fresh_api.client.post("/auth/logout", headers={"Authorization": f"Bearer {good}"}).status_code == 204
    assert fresh_api.client.get("/auth/me", headers={"Authorization": f"Bearer {good}"}).status_code == 401


def test_passwords_are_argon2_hashes(fresh_api):
    with psycopg.connect(fresh_api.city.url) as conn:
        h = conn.execute("SELECT password_hash FROM app_user WHERE username = 'at_agent'").fetchone()[0]
    assert h.startswith("$argon2id$") and password("at_agent") not in h


def test_api_keys_are_hashed_narrowed_and_revocable(fresh_api):
    svc = fresh_api.post("/auth/users", "at_admin", json={"username": "svc_ingest", "role": "engineer",
                                                             "is_service": True})
    assert svc.status_code == 201, svc.text
    uid = svc.json()["id"]
    # a service account cannot log in with a password
    assert fresh_api.client.post("/auth/login", json={"username": "svc_ingest", "password": "x"}).status_code == 401
    assert fresh_api.post(f"/auth/users/{uid}/api-keys", "at_admin", json={"scopes": ["users:admin"]}).status_code == 422
    r = fresh_api.post(f"/auth/users/{uid}/api-keys", "at_admin", json={"scopes": ["devices:read"]})
    assert r.status_code == 201
    key, prefix = r.json()["api_key"], r.json()["prefix"]
    with psycopg.connect(fresh_api.city.url) as conn:
        stored = conn.execute("SELECT secret_hash FROM api_key WHERE prefix = %s", (prefix,)).fetchone()[0]
    assert key.split(".", 1)[1].encode() not in bytes(stored)
    me = fresh_api.client.get("/auth/me", headers={"X-API-Key": key}).json()
    assert me["scopes"] == ["devices:read"]
    assert fresh_api.client.get("/devices", headers={"X-API-Key": key}).status_code == 200
    # narrowed: the engineer role could read households, this key cannot
    assert fresh_api.client.get("/households", params={"code": "AT"}, headers={"X-API-Key": key}).status_code == 403
    assert fresh_api.client.get("/auth/me", headers={"X-API-Key": key + "x"}).status_code == 401
    assert fresh_api.client.delete(f"/auth/api-keys/{prefix}", headers=fresh_api.h("at_admin")).status_code == 204
    assert fresh_api.client.get("/auth/me", headers={"X-API-Key": key}).status_code == 401


def test_only_admins_manage_users_and_only_in_their_company(fresh_api):
    body = {"username": "new_agent", "role": "agent", "password": "long-enough-pw"}
    assert fresh_api.post("/auth/users", "at_supervisor", json=body).status_code == 403
    r = fresh_api.post("/auth/users", "at_admin", json={**body, "branch_ids": [fresh_api.city.ids["AX-B1"]]})
    assert r.status_code == 403
    assert fresh_api.post("/auth/users", "at_admin", json={**body, "role": "king"}).status_code == 422
    assert fresh_api.post("/auth/users", "at_admin", json=body).status_code == 201
    assert fresh_api.client.post("/auth/login", json={"username": "new_agent", "password": "long-enough-pw"}
                                 ).status_code == 200


def test_bootstrap_creates_admin_and_demo_users(fresh_db_url, monkeypatch):
    from api.app import create_app
    from tests.api_support import settings_for

    with psycopg.connect(fresh_db_url) as conn:      # the smallest city bootstrap needs
        conn.execute("INSERT INTO company (code, name) VALUES ('HD', '滨海热力')")
        conn.execute("INSERT INTO branch (company_id, code, name) VALUES (1, 'B1', '分公司')")
        conn.execute("INSERT INTO substation (branch_id, code, name) VALUES (1, 'S01', '站')")
        conn.execute("INSERT INTO community (substation_id, code, name) VALUES (1, 'C1', '小区')")
        conn.execute("INSERT INTO building (community_id, code, name) VALUES (1, 'B01', '1号楼')")
        conn.execute("INSERT INTO unit (building_id, code, name) VALUES (1, 'U1', '1单元')")
        conn.execute("INSERT INTO household (unit_id, code, area_m2) VALUES (1, '0101011011', 80)")
    monkeypatch.setenv("HEATDESK_ADMIN_PASSWORD", "boot-admin-pw-1")
    monkeypatch.setenv("HEATDESK_DEMO", "1")
    with TestClient(create_app(settings_for(fresh_db_url))) as client:
        assert client.post("/auth/login", json={"username": "admin", "password": "boot-admin-pw-1"}).status_code == 200
        for role in ("agent", "supervisor", "engineer", "dispatcher", "technician", "finance", "auditor", "customer"):
            r = client.post("/auth/login", json={"username": role, "password": f"heatdesk-{role}"})
            assert r.status_code == 200, role
            assert r.json()["user"]["role"] == role


def test_bounded_range_rejects_long_and_inverted_ranges():
    now = datetime(2026, 1, 10, tzinfo=timezone.utc)
    r = bounded_range(None, None, now=now)
    assert r.end == now and r.end - r.start == timedelta(days=7)
    with pytest.raises(ApiError) as e:
        bounded_range(now - timedelta(days=93), now, now=now)
    assert e.value.status_code == 422 and e.value.code == "range_too_long"
    with pytest.raises(ApiError):
        bounded_range(now, now - timedelta(hours=1), now=now)
    with pytest.raises(ApiError) as e:
        bounded_range(datetime(1969, 12, 31, tzinfo=timezone.utc), datetime(1970, 1, 2, tzinfo=timezone.utc), now=now)
    assert e.value.code == "range_out_of_bounds"
    with pytest.raises(ApiError):
        bounded_range(now + timedelta(days=400), now + timedelta(days=401), now=now)
    naive = bounded_range(datetime(2026, 1, 1), datetime(2026, 1, 2), now=now)
    assert naive.start.tzinfo is timezone.utc


def test_cached_json_answers_304_on_etag_and_last_modified():
    app = FastAPI()
    modified = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)

    @app.get("/c")
    def c(request: __import__("fastapi").Request):
        return cached_json(request, {"points": [1.5, 2.5], "k": "热"}, last_modified=modified)

    client = TestClient(app)
    r = client.get("/c")
    assert r.status_code == 200 and r.json() == {"points": [1.5, 2.5], "k": "热"}
    etag, lm = r.headers["etag"], r.headers["last-modified"]
    assert lm == "Mon, 05 Jan 2026 08:00:00 GMT" and "private" in r.headers["cache-control"]
    assert client.get("/c", headers={"If-None-Match": etag}).status_code == 304
    assert client.get("/c", headers={"If-None-Match": '"other"'}).status_code == 200
    assert client.get("/c", headers={"If-Modified-Since": lm}).status_code == 304
    assert client.get("/c", headers={"If-Modified-Since": "Sun, 04 Jan 2026 08:00:00 GMT"}).status_code == 200


def test_login_is_throttled_after_repeated_failures(fresh_api):
    c = fresh_api.client
    for _ in range(5):
        assert c.post("/auth/login", json={"username": "at_finance", "password": "guess"}).status_code == 401
    r = c.post("/auth/login", json={"username": "at_finance", "password": password("at_finance")})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert r.json()["code"] == "too_many_requests"
    # other users are not affected
    assert c.post("/auth/login", json={"username": "at_agent", "password": password("at_agent")}).status_code == 200


def test_login_throttle_window_slides():
    t = auth.LoginThrottle(max_failures=3, window_s=60)
    for s in (0, 10, 20):
        t.failure(["k"], s)
    assert t.retry_after(["k"], 21) == 40          # until the first failure (t=0) is 60 s old
    assert t.retry_after(["k"], 60.5) == 0
    t.failure(["k"], 61)
    assert t.retry_after(["k"], 62) > 0
    t.success(["k"])
    assert t.retry_after(["k"], 62) == 0


def test_unexpected_errors_are_a_500_problem_with_the_request_id(caplog):
    from api.app import create_app
    from tests.api_support import settings_for

    app = create_app(settings_for("postgresql://unused@127.0.0.1:1/x"))

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    client = TestClient(app, raise_server_exceptions=False)
    r = client.get("/boom", headers={"X-Request-ID": "rid-500"})
    assert r.status_code == 500 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "internal_error" and "secret" not in r.text
    assert r.json()["request_id"] == "rid-500" and r.headers["x-request-id"] == "rid-500"
    assert any(getattr(rec, "request_id", None) == "rid-500" and rec.exc_info for rec in caplog.records)
