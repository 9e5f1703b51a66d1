"""The pages without a browser: every page renders in zh-CN and English, every asset is local (no CDN),
every UI string exists in both languages, and every endpoint the scripts call exists in the API."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.routes.pages import PAGES, UI
from tests.api_support import settings_for

API = Path(__file__).resolve().parent.parent / "api"
TEMPLATES = sorted((API / "templates").glob("*.html"))
SCRIPTS = sorted((API / "static" / "js").glob("*.js"))


@pytest.fixture(scope="module")
def client():
    return TestClient(create_app(settings_for("postgresql://unused@127.0.0.1:1/x")))


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_renders_in_both_languages(client, page):
    client.cookies.clear()
    zh = client.get(f"/ui/{page}")
    assert zh.status_code == 200 and zh.headers["content-type"].startswith("text/html")
    assert '<html lang="zh-CN">' in zh.text and UI["zh"][page] in zh.text
    assert "script-src 'self'" in zh.headers["content-security-policy"]
    en = client.get(f"/ui/{page}?lang=en")
    assert '<html lang="en">' in en.text and UI["en"][page] in en.text
    assert "hd_lang=en" in en.headers["set-cookie"]
    # the cookie (now in the client's jar) keeps the choice on the next page
    assert '<html lang="en">' in client.get(f"/ui/{page}").text
    client.cookies.clear()
    for body in (zh.text, en.text):
        assert "built-in method" not in body and "Undefined" not in body


def test_unknown_page_is_a_problem_404(client):
    r = client.get("/ui/nope")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"


def test_ui_strings_exist_in_both_languages_and_do_not_shadow_dict_methods():
    assert set(UI["zh"]) == set(UI["en"])
    assert not [k for k in UI["zh"] if hasattr(dict, k)]       # {{ t.clear }} would print a method


def test_templates_and_scripts_only_use_known_strings():
    used = set()
    for tpl in TEMPLATES:
        used |= set(re.findall(r"\bt\.(\w+)", tpl.read_text(encoding="utf-8")))
    for js in SCRIPTS:
        used |= set(re.findall(r'\bt\("(\w+)"\)', js.read_text(encoding="utf-8")))
    unknown = sorted(k for k in used if k not in UI["zh"])
    assert not unknown, unknown


def test_every_asset_is_served_locally(client):
    for tpl in TEMPLATES:
        text = tpl.read_text(encoding="utf-8")
        refs = re.findall(r'(?:src|href)="([^"]+)"', text)
        external = [r for r in refs if re.match(r"^(https?:)?//", r)]
        assert not external, f"{tpl.name} loads {external}"
        for ref in refs:
            if ref.startswith("/static/"):
                assert client.get(ref).status_code == 200, ref
    for js in SCRIPTS:
        assert not re.search(r"""(fetch|import|src\s*=)\s*\(?\s*["'`]https?://""", js.read_text(encoding="utf-8")), js
    vendor = API / "static" / "vendor" / "echarts"
    assert (vendor / "LICENSE").exists() and (vendor / "echarts.common.min.js").stat().st_size > 100_000


def test_every_endpoint_the_scripts_call_exists(client):
    """The EP tables in the page scripts name real routes (guards against a renamed endpoint)."""
    paths = client.get("/openapi.json").json()["paths"]
    norm = {re.sub(r"\{[^}]+\}", "{}", p) for p in paths}
    missing = []
    for js in SCRIPTS:
        text = js.read_text(encoding="utf-8")
        for block in re.findall(r"const EP = \{(.*?)\n  \};", text, flags=re.S):
            for path in re.findall(r'"(/[^"]*)"', block):
                if re.sub(r"\{[^}]+\}", "{}", path) not in norm:
                    missing.append(f"{js.name}: {path}")
    assert not missing, missing


def test_openapi_docs_use_local_assets(client):
    html = client.get("/docs").text
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in html
    assert "cdn" not in html.lower()
    assert client.get("/static/vendor/swagger-ui/swagger-ui-bundle.js").status_code == 200
