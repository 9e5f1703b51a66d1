"""The pages in a real headless Chromium (Playwright driving the system browser), with screenshots.

Part of the normal test run (marker ``browser`` selects them alone) whenever a Chromium binary is on the
machine; Playwright comes with the dev extra and never downloads a browser. On a machine without one they
are skipped with the install command in the reason (pytest -ra prints it):

    apt-get update && apt-get install -y chromium fonts-noto-cjk     # once per machine (Debian)
    .venv/bin/python -m pytest -m browser tests/test_pages_browser.py

Chromium is found via HEATDESK_CHROMIUM or on PATH (chromium, chromium-browser, google-chrome); set
HEATDESK_REQUIRE_BROWSER=1 to make its absence a failure instead (a CI that must run them).
Screenshots go to test-artifacts/pages/.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.api_support import FIELD_KEY, TOKEN_SECRET, password, seed_city
from tests.helpers import free_port, wait_for

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-artifacts" / "pages"


def _chromium() -> str:
    for cand in (os.environ.get("HEATDESK_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    message = ("no Chromium: run `apt-get update && apt-get install -y chromium fonts-noto-cjk` "
               "or set HEATDESK_CHROMIUM to a Chrome/Chromium binary")
    if os.environ.get("HEATDESK_REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _enrich(url: str, city) -> int:
    """A day of room and substation readings, a repair station with a technician linked to at_technician.
    Returns the technician id."""
    now = datetime.now(timezone.utc)
    with psycopg.connect(url) as conn:
        conn.execute("""INSERT INTO readings (time, sensor_id, value)
                        SELECT %s - make_interval(mins => 20 * g), s.id, 18.2 + sin(g / 6.0) + (s.id %% 3) * 0.4
                          FROM sensor s, generate_series(3, 72) g WHERE s.metric = 'room_temp'
                        ON CONFLICT DO NOTHING""", (now,))
        for sub in ("AT-S1", "AT-S2"):
            sid = city.ids[sub]
            for metric, base in (("return_temp_2", 41.0), ("flow_2", 36.0), ("supply_pressure_2", 0.42),
                                 ("return_pressure_2", 0.28), ("outdoor_temp", -2.0)):
                conn.execute("""INSERT INTO sensor (key, metric, unit, protocol, device_id, point, substation_code,
                                                    substation_id) VALUES (%s, %s, '', 'modbus', %s, %s, %s, %s)""",
                             (f"{sub}/{metric}", metric, sub, metric, sub, sid))
            conn.execute("""INSERT INTO readings (time, sensor_id, value)
                            SELECT %s - make_interval(mins => 15 * g), s.id,
                                   CASE s.metric WHEN 'supply_temp_2' THEN 52 + 2 * sin(g / 8.0)
                                                 WHEN 'return_temp_2' THEN 41 + 1.5 * sin(g / 8.0)
                                                 WHEN 'flow_2' THEN 36 + sin(g / 5.0)
                                                 WHEN 'supply_pressure_2' THEN 0.42
                                                 WHEN 'return_pressure_2' THEN 0.28
                                                 ELSE -2 + 3 * sin(g / 16.0) END
                              FROM sensor s, generate_series(0, 96) g WHERE s.substation_id = %s
                            ON CONFLICT DO NOTHING""", (now, sid))
        st = conn.execute("""INSERT INTO repair_station (company_id, code, name) VALUES (%s, 'AT-RS1', '海景维修站')
                             RETURNING id""", (city.ids["AT"],)).fetchone()[0]
        conn.execute("""INSERT INTO station_area (station_id, community_id)
                        SELECT %s, c.id FROM community c WHERE c.substation_id = %s""", (st, city.ids["AT-S1"]))
        tech = conn.execute("""INSERT INTO technician (station_id, code, name, skills)
                               VALUES (%s, 'T-ZHOU', '周师傅', '{repair,leak,temp_test,valve}') RETURNING id""",
                            (st,)).fetchone()[0]
        conn.execute("UPDATE app_user SET technician_id = %s WHERE username = 'at_technician'", (tech,))
    return tech


@pytest.fixture
def server(fresh_db_url):
    city = seed_city(fresh_db_url)
    city.ids["technician"] = _enrich(fresh_db_url, city)
    port = free_port()
    env = dict(os.environ, HEATDESK_DATABASE_URL=fresh_db_url, HEATDESK_TOKEN_SECRET=TOKEN_SECRET,
               HEATDESK_FIELD_KEY_HEX=FIELD_KEY)
    env.pop("HEATDESK_DEMO", None)
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def up():
        try:
            return httpx.get(base + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 30)
        yield base, city
    finally:
        proc.terminate()
        proc.wait(10)


def _token(base: str, user: str) -> dict:
    r = httpx.post(base + "/auth/login", json={"username": user, "password": password(user)})
    r.raise_for_status()
    return {"Authorization": "Bearer " + r.json()["access_token"]}


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    exe = _chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _login(page, base: str, path: str, user: str) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.goto(base + path)
    page.wait_for_selector("#login-form", state="visible")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password(user))
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#main", state="visible")
    return errors


def _wait(page, selector: str, name: str, timeout: float = 10000) -> None:
    """wait_for_selector that leaves a screenshot and the page's toast/error text when it times out."""
    from playwright.sync_api import TimeoutError as PwTimeout

    try:
        page.wait_for_selector(selector, timeout=timeout)
    except PwTimeout:
        _shot(page, f"FAILED-{name}")
        toast = page.inner_text("#toast") if page.locator("#toast").count() else ""
        errs = " | ".join(page.locator(".error").all_inner_texts())
        raise AssertionError(f"{selector} did not appear; toast={toast!r} errors={errs!r}") from None


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_agent_console_search_and_card(server, browser):
    base, city = server
    page = browser.new_page(viewport={"width": 1360, "height": 900}, locale="zh-CN")
    errors = _login(page, base, "/ui/agent", "at_agent")
    page.fill("#q", "海景花园3号楼2单元502")
    page.click("#search-form button")
    page.wait_for_selector("#hh-card h2:has-text('AT-H11')")
    card = page.inner_text("#hh-card")
    assert "张伟" in card and "13812345678" in card          # the agent serves the caller: clear contact
    assert "海景花园" in card
    page.wait_for_selector("#verdicts table")
    assert "不达标" in page.inner_text("#verdicts")
    assert "living" in page.inner_text("#rooms")
    page.wait_for_selector("#curve canvas")
    page.wait_for_selector("#verdicts p b")                 # the diagnosis line
    _shot(page, "agent-zh")
    # one click opens a ticket for the household on the card
    page.click("#btn-ticket")
    page.fill("#ticket-form input[name=description]", "卧室暖气不热")
    page.check("#ticket-form input[name=low_temperature]")
    page.click("#ticket-form button[type=submit]")
    page.wait_for_selector("#tickets table")
    assert "repair" in page.inner_text("#tickets")
    assert page.is_enabled("#btn-pdf")
    # screen pop by caller number
    page.fill("#caller", "13987654321")
    page.click("#pop-form button")
    page.wait_for_selector("#hh-card h2:has-text('AT-H12')")
    _shot(page, "agent-screenpop")
    # English switch keeps the session (token in sessionStorage) and relabels the page
    page.click("#lang")
    page.wait_for_selector("#main", state="visible")
    assert "Agent console" in page.title()
    page.fill("#q", "李秀英")
    page.click("#search-form button")
    page.wait_for_selector("#hh-card h2:has-text('AT-H12')")
    _shot(page, "agent-en")
    assert not [e for e in errors if "pageerror" in e], errors


def test_masked_roles_see_masked_contact_in_the_page(server, browser):
    base, city = server
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    _login(page, base, f"/ui/agent?household={city.ids['AT-H11']}", "at_engineer")
    page.wait_for_selector("#hh-card h2:has-text('AT-H11')")
    card = page.inner_text("#hh-card")
    assert "138****5678" in card and "13812345678" not in card and "张*" in card
    page.wait_for_selector("#curve canvas")
    assert page.is_disabled("#btn-ticket")                  # no tickets:write for engineers
    _shot(page, "agent-engineer-masked")


def test_devices_substations_supervisor_pages(server, browser):
    base, city = server
    agent = _token(base, "at_agent")
    for code, ttype in (("AT-H11", "repair"), ("AT-H12", "complaint"), ("AT-H12", "temp_test")):
        r = httpx.post(base + "/tickets", headers=agent, json={"type": ttype, "household_id": city.ids[code],
                                                                 "description": "test", "low_temperature": ttype != "repair"})
        assert r.status_code == 201, r.text
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    errors = _login(page, base, "/ui/devices", "at_supervisor")
    page.wait_for_selector("#devices table")
    assert "therm-AT-H11" in page.inner_text("#devices") and "out_of_range" in page.inner_text("#reject-summary")
    _shot(page, "devices")
    page.goto(base + "/ui/substations")
    page.wait_for_selector("#main", state="visible")
    page.wait_for_timeout(800)
    _shot(page, "substations")
    page.goto(base + "/ui/supervisor")
    _wait(page, "#tickets table", "supervisor-tickets")
    _wait(page, "#by-community table", "supervisor-community")
    assert "海景花园" in page.inner_text("#by-community")
    page.click("#tickets tr.clickable")
    _wait(page, "#detail-body table", "supervisor-detail")
    _shot(page, "supervisor")
    assert not [e for e in errors if "pageerror" in e], errors


def test_mobile_pages(server, browser):
    base, city = server
    # a 测温 ticket dispatched to the technician, through the real API
    agent, sup = _token(base, "at_agent"), _token(base, "at_supervisor")
    r = httpx.post(base + "/tickets", headers=agent, json={"type": "temp_test", "household_id": city.ids["AT-H11"],
                                                             "description": "卧室室温偏低，申请测温", "low_temperature": True})
    assert r.status_code == 201, r.text
    tid = r.json()["ticket"]["id"]
    r = httpx.post(f"{base}/tickets/{tid}/dispatch", headers=sup, json={"technician_id": city.ids["technician"]})
    assert r.status_code == 200, r.text
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                              device_scale_factor=2, locale="zh-CN")
    page = ctx.new_page()
    errors = _login(page, base, "/ui/customer", "at_customer")
    page.wait_for_selector("#home-info dl")
    assert "AT-H11" in page.inner_text("#home-info")
    page.wait_for_selector("#curve canvas")
    page.click("#tabs button[data-tab=stop]")
    page.fill("#req-form textarea", "出差三个月，申请报停")
    page.click("#req-form button[type=submit]")
    page.wait_for_selector("#req-msg p")
    assert "✓" in page.inner_text("#req-msg"), page.inner_text("#req-msg")
    _shot(page, "customer")
    tech = ctx.new_page()
    errors += _login(tech, base, "/ui/technician", "at_technician")
    _wait(tech, "#orders table", "tech-orders")
    tech.click("#orders tr.clickable")
    _wait(tech, "#order-info dd a[href^='tel:']", "tech-order")     # the assigned technician sees the phone
    tech.click("#btn-accept")
    _wait(tech, "#toast:has-text('accept')", "tech-accept")
    tech.click("#btn-arrive")
    _wait(tech, "#toast:has-text('arrive')", "tech-arrive")
    for canvas in ("#sig-user", "#sig-staff"):
        tech.locator(canvas).scroll_into_view_if_needed()
        box = tech.locator(canvas).bounding_box()
        tech.mouse.move(box["x"] + 20, box["y"] + 40)
        tech.mouse.down()
        tech.mouse.move(box["x"] + 120, box["y"] + 90, steps=8)
        tech.mouse.move(box["x"] + 220, box["y"] + 50, steps=8)
        tech.mouse.up()
    tech.fill("#temp-form input[name=readings]", "17.2, 17.4, 17.3")
    tech.fill("#temp-form input[name=instrument_id]", "TM-0042")
    tech.fill("#temp-form input[name=calibration_cert]", "JD-2026-118")
    tech.fill("#temp-form input[name=calibration_expiry]", "2027-06-30")
    tech.click("#temp-form button[type=submit]")
    _wait(tech, "#toast:has-text('tempTest')", "tech-temptest")
    _shot(tech, "technician")
    r = httpx.get(f"{base}/tickets/{tid}", headers=sup)
    t = r.json()
    assert len(t["temp_tests"]) == 1 and t["temp_tests"][0]["result_c"] is not None
    assert {a["kind"] for a in t["attachments"]} == {"signature"}
    assert not [e for e in errors if "pageerror" in e], errors
