"""SLA notices reach people: who holds each level (policy ``sla.notify``), the staff messages in the outbox,
once per recipient and level however often the job runs, and a level nobody holds recorded, not dropped.

Pure resolution and policy checks first, then the dispatch-table look-ups inside a rolled-back transaction,
then the scheduled job end to end on its own committed database.
"""
from __future__ import annotations

import copy
import io
from collections import Counter
from datetime import date, timedelta
from zoneinfo import ZoneInfo

import jinja2
import jinja2.meta
import psycopg
import pytest

from core.pii import FieldCipher, new_key_hex
from notify import templates
from notify.dispatcher import deliver_pending
from notify.senders import ConsoleSender
from tests.test_ticketing_support import T0, build_city, city, tconn, tdb_url  # noqa: F401  (fixtures)
from ticketing import dispatch, notifications, store
from ticketing.notifications import SlaTicket, StaffRecipient, format_duration, resolve_recipients
from ticketing.policy import PolicyError, policy_for, sla_notify_levels
from ticketing.sla import run_sla_checks

TZ = ZoneInfo("Asia/Shanghai")
HH = "S01-C1-B1-U1-0101"


def POL(region: str = "tianjin") -> dict:
    return policy_for(region, "HD", date(2026, 12, 10))


# ------------------------------------------------------------------------------------------ pure resolution

ASSIGNEE = StaffRecipient("technician", "1", "assignee", "A")
LEAD_1 = StaffRecipient("technician", "2", "station:team_lead", "L1")
LEAD_2 = StaffRecipient("technician", "3", "station:team_lead", "L2")
HEAD = StaffRecipient("technician", "4", "station:station_head", "H1")
SUPERVISOR = StaffRecipient("user", "9", "company:supervisor")
STAFFED = {"assignee": [ASSIGNEE], "station:team_lead": [LEAD_1, LEAD_2], "station:station_head": [HEAD],
           "company:supervisor": [SUPERVISOR]}


def _resolve(level: str, directory: dict, policy: dict | None = None):
    spec = sla_notify_levels(policy or POL())[level]
    return resolve_recipients(spec.to, lambda role: directory.get(role, []))


@pytest.mark.parametrize("level,expected", [
    ("warning", ["technician:1"]),
    ("breach", ["technician:1", "technician:2", "technician:3"]),
    ("team_lead", ["technician:2", "technician:3"]),
    ("station_head", ["technician:4"]),
    ("service_center", ["user:9"]),
])
def test_each_level_reaches_the_roles_the_policy_names(level, expected):
    recipients, unheld = _resolve(level, STAFFED)
    assert [r.key for r in recipients] == expected and unheld == []


@pytest.mark.parametrize("level,expected_unheld", [
    ("warning", ["assignee"]),                       # ack warning on a ticket nobody has taken yet
    ("breach", ["assignee", "station:team_lead"]),
    ("team_lead", ["station:team_lead"]),
    ("station_head", ["station:station_head"]),
    ("service_center", ["company:supervisor"]),
])
def test_a_level_nobody_holds_is_reported_not_dropped(level, expected_unheld):
    recipients, unheld = _resolve(level, {})
    assert recipients == [] and unheld == expected_unheld


def test_breach_without_a_team_lead_still_reaches_the_assignee():
    recipients, unheld = _resolve("breach", {"assignee": [ASSIGNEE]})
    assert [r.key for r in recipients] == ["technician:1"] and unheld == ["station:team_lead"]


def test_an_assignee_who_is_the_team_lead_gets_one_breach_message():
    as_lead = StaffRecipient("technician", "1", "station:team_lead", "A")
    recipients, unheld = _resolve("breach", {"assignee": [ASSIGNEE], "station:team_lead": [as_lead, LEAD_1]})
    assert [(r.key, r.role) for r in recipients] == [("technician:1", "assignee"),
                                                     ("technician:2", "station:team_lead")]
    assert unheld == []


def test_recipient_roles_are_policy_data_per_company():
    doc = copy.deepcopy(POL())
    doc["sla"]["notify"]["addresses"]["service_center"] = "kefu@hd-heat.example"
    doc["sla"]["notify"]["levels"]["service_center"]["to"] = ["company:supervisor", "address:service_center"]
    doc["sla"]["notify"]["levels"]["station_head"]["to"] = ["station:station_head", "company:dispatcher"]
    levels = sla_notify_levels(doc)
    assert levels["service_center"].to == ("company:supervisor", "address:service_center")
    assert levels["station_head"].to == ("station:station_head", "company:dispatcher")
    assert levels["team_lead"].label == "班长" and levels["breach"].template == "ticket.sla_breach"


@pytest.mark.parametrize("mutate,match", [
    (lambda p: p["sla"]["escalation"].append({"share": 3.0, "level": "general_manager"}),
     "levels.general_manager: missing"),
    (lambda p: p["sla"]["notify"]["levels"]["breach"].update(to=["station:foreman"]), "unknown recipient role"),
    (lambda p: p["sla"]["notify"]["levels"]["breach"].update(to=["address:hq"]), "unknown recipient role"),
    (lambda p: p["sla"]["notify"]["levels"]["warning"].update(to=[]), "non-empty"),
    (lambda p: p["sla"]["notify"].update(channel="pager"), "sla.notify.channel"),
    (lambda p: p["sla"].pop("notify"), "sla.notify.levels: missing"),
])
def test_a_policy_that_would_drop_a_level_is_refused(mutate, match):
    pol = copy.deepcopy(POL())
    mutate(pol)
    with pytest.raises(PolicyError, match=match):
        sla_notify_levels(pol)


@pytest.mark.parametrize("minutes,text", [(0, "0分钟"), (30, "30分钟"), (61, "1小时1分钟"), (120, "2小时"),
                                          (24 * 60, "24小时"), (27 * 60, "27小时"), (3 * 24 * 60, "3天"),
                                          (10 * 24 * 60 + 90, "10天1小时30分钟")])
def test_durations_read_like_a_dispatcher_says_them(minutes, text):
    assert format_duration(timedelta(minutes=minutes)) == text


def _sample_context(level: str, role: str = "assignee") -> dict:
    ticket = SlaTicket(7, "GD20261210-000007", "repair", 1, 1, 3, "A", (2,), "S01小区1号楼")
    spec = sla_notify_levels(POL())[level]
    return notifications.sla_context(ticket, spec, StaffRecipient("technician", "3", role, "A"), clock="arrive",
                                     elapsed=timedelta(minutes=61), limit=timedelta(minutes=30),
                                     due_at=T0 + timedelta(minutes=30), tz=TZ)


@pytest.mark.parametrize("level", ["warning", "breach", "team_lead", "station_head", "service_center"])
def test_templates_use_only_what_the_context_provides(level):
    """The templates default their SLA variables (the shipped-template test renders them with staff
    placeholders only), so a misspelt variable would render blank instead of failing: check here."""
    spec = sla_notify_levels(POL())[level]
    tpl = templates.load_template(spec.template)
    ctx = _sample_context(level)
    env = jinja2.Environment()
    used = jinja2.meta.find_undeclared_variables(env.parse(tpl.source)) | \
        jinja2.meta.find_undeclared_variables(env.parse(tpl.subject or ""))
    assert used <= set(ctx), f"{spec.template} uses {sorted(used - set(ctx))} that sla_context does not set"
    out = templates.render(tpl, ctx)
    assert "GD20261210-000007" in out.body and "S01小区1号楼" in out.body and "到场" in out.body
    assert "30分钟" in out.body and "1小时1分钟" in out.body and "203%" in out.body
    assert "{" not in out.body


def test_breach_wording_differs_for_the_assignee_and_the_team_lead():
    tpl = templates.load_template("ticket.sla_breach")
    mine = templates.render(tpl, _sample_context("breach", "assignee")).body
    lead = templates.render(tpl, _sample_context("breach", "station:team_lead")).body
    assert "说明超时原因" in mine and "督办" in lead and "处理人：A" in lead
    esc = templates.render(templates.load_template("ticket.sla_escalation"), _sample_context("station_head"))
    assert esc.subject == "工单GD20261210-000007超时升级至站长" and "升级至站长" in esc.body
    assert "2026年12月10日 10:30" in templates.render(tpl, _sample_context("breach")).body     # local time


# ------------------------------------------------------------------------------------------ dispatch tables


def _crew(conn, city) -> dict:
    """RS1 owns S01 (technician A, team lead L1, a departed team lead), RS2 owns S02 (station head H2,
    team lead L2). Supervisors: one for the whole company, one scoped to another branch, one disabled."""
    rs1 = dispatch.upsert_station(conn, company_id=city.company, code="RS1", name="一站",
                                  community_ids=[city.communities["S01-C1"]])
    rs2 = dispatch.upsert_station(conn, company_id=city.company, code="RS2", name="二站",
                                  community_ids=[city.communities["S02-C1"]])
    crew = {"rs1": rs1, "rs2": rs2,
            "A": dispatch.upsert_technician(conn, station_id=rs1, code="A", name="张师傅", skills=["repair"]),
            "L1": dispatch.upsert_technician(conn, station_id=rs1, code="L1", name="李班长", role="team_lead"),
            "L0": dispatch.upsert_technician(conn, station_id=rs1, code="L0", name="王班长", role="team_lead",
                                             active=False),
            "H2": dispatch.upsert_technician(conn, station_id=rs2, code="H2", name="赵站长", role="station_head"),
            "L2": dispatch.upsert_technician(conn, station_id=rs2, code="L2", name="钱班长", role="team_lead")}
    other_branch = conn.execute("INSERT INTO branch (company_id, code, name) VALUES (%s, 'B2', '二分公司') RETURNING id",
                                (city.company,)).fetchone()[0]
    for name, role, active, branch in (("sup", "supervisor", True, None), ("sup_b2", "supervisor", True, other_branch),
                                       ("sup_off", "supervisor", False, None), ("agent1", "agent", True, None)):
        uid = conn.execute("""INSERT INTO app_user (username, role, company_id, active) VALUES (%s, %s, %s, %s)
                              RETURNING id""", (name, role, city.company, active)).fetchone()[0]
        conn.execute("INSERT INTO app_user_scope (user_id, company_id, branch_id) VALUES (%s, %s, %s)",
                     (uid, city.company, branch))
        crew[name] = uid
    return crew


def _keys(conn, ticket: SlaTicket, role: str) -> list[str]:
    return [r.key for r in notifications.holders(conn, ticket, role, POL())]


def test_holders_of_an_untaken_ticket_come_from_the_station_owning_its_area(tconn, city):
    crew = _crew(tconn, city)
    tid = store.create_ticket(tconn, type="repair", channel="phone", actor="agent", now=T0,
                              household_id=city.households[HH]).ticket_id
    t = notifications.load_sla_ticket(tconn, tid)
    assert t.station_ids == (crew["rs1"],) and t.place == "S01小区1号楼" and t.assignee_code is None
    assert _keys(tconn, t, "assignee") == []
    assert _keys(tconn, t, "station:team_lead") == [f"technician:{crew['L1']}"]       # not the departed L0
    assert _keys(tconn, t, "station:station_head") == []                              # RS1 has none
    assert _keys(tconn, t, "company:supervisor") == [f"user:{crew['sup']}"]           # not B2-only, not disabled


def test_holders_follow_the_assignee_and_their_station(tconn, city):
    crew = _crew(tconn, city)
    tid = store.create_ticket(tconn, type="repair", channel="phone", actor="agent", now=T0,
                              household_id=city.households[HH]).ticket_id
    dispatch.assign(tconn, tid, crew["L2"], actor="dispatcher", now=T0)      # a cross-area assignment to RS2
    t = notifications.load_sla_ticket(tconn, tid)
    assert t.station_ids == (crew["rs2"],) and t.assignee_code == "L2"
    assert _keys(tconn, t, "assignee") == [f"technician:{crew['L2']}"]
    assert _keys(tconn, t, "station:station_head") == [f"technician:{crew['H2']}"]
    tconn.execute("UPDATE technician SET active = false WHERE id = %s", (crew["L2"],))
    assert _keys(tconn, t, "assignee") == []                                 # left the company: unheld


def test_a_network_ticket_finds_the_stations_of_its_substation(tconn, city):
    crew = _crew(tconn, city)
    tid = store.create_ticket(tconn, type="incident", channel="auto", actor="auto", now=T0,
                              substation_id=city.substations["S02"]).ticket_id
    t = notifications.load_sla_ticket(tconn, tid)
    assert t.station_ids == (crew["rs2"],) and t.place == "S02站"
    assert _keys(tconn, t, "station:team_lead") == [f"technician:{crew['L2']}"]


def test_a_configured_service_centre_address_holds_its_role(tconn, city):
    tid = store.create_ticket(tconn, type="complaint", channel="phone", actor="agent", now=T0,
                              household_id=city.households[HH]).ticket_id
    t = notifications.load_sla_ticket(tconn, tid)
    pol = copy.deepcopy(POL())
    assert notifications.holders(tconn, t, "address:service_center", pol) == []      # not configured
    pol["sla"]["notify"]["addresses"]["service_center"] = "kefu@hd-heat.example"
    [r] = notifications.holders(tconn, t, "address:service_center", pol)
    assert r.key == "address:service_center" and r.as_context()["address"] == "kefu@hd-heat.example"


def test_a_rollback_drops_the_notice_and_its_messages_together(tconn, city):
    crew = _crew(tconn, city)
    tid = store.create_ticket(tconn, type="repair", channel="phone", actor="agent", now=T0, category="leak",
                              household_id=city.households[HH]).ticket_id
    dispatch.assign(tconn, tid, crew["A"], actor="dispatcher", now=T0 + timedelta(minutes=5))

    class Boom(Exception):
        pass

    with pytest.raises(Boom), tconn.transaction():
        assert run_sla_checks(tconn, T0 + timedelta(minutes=61))["notifications"] > 0
        raise Boom
    assert tconn.execute("SELECT count(*) FROM ticket_sla_notice").fetchone()[0] == 0
    assert tconn.execute("SELECT count(*) FROM notify_outbox WHERE idempotency_key LIKE 'ticket:%%:sla:%%'"
                         ).fetchone()[0] == 0
    assert run_sla_checks(tconn, T0 + timedelta(minutes=61))["notifications"] == 5      # and it is raised again


# ------------------------------------------------------------------------------------------ the job, end to end


def test_sla_job_twice_over_a_breached_ticket_queues_one_message_per_recipient_and_level(fresh_db_url):
    from ticketing.auto import run_sla_job

    with psycopg.connect(fresh_db_url) as conn:
        town = build_city(conn)
        crew = _crew(conn, town)
        tid = store.create_ticket(conn, type="repair", channel="phone", actor="agent", now=T0, category="leak",
                                  household_id=town.households[HH]).ticket_id     # ack 10 min, arrive 30 min
        dispatch.assign(conn, tid, crew["A"], actor="dispatcher", now=T0 + timedelta(minutes=5))
        no = conn.execute("SELECT no FROM ticket WHERE id = %s", (tid,)).fetchone()[0]
        conn.commit()

    first = run_sla_job(fresh_db_url, T0 + timedelta(minutes=61))       # arrive at 203 %: the whole ladder
    second = run_sla_job(fresh_db_url, T0 + timedelta(minutes=62))
    assert (first["warning"], first["breach"], first["escalations"]) == (1, 1, 3)
    assert first["notifications"] == 5 and first["unheld"] == 1            # RS1 has no station head
    assert (second["warning"], second["breach"], second["escalations"], second["notifications"]) == (0, 0, 0, 0)

    with psycopg.connect(fresh_db_url) as conn:
        rows = conn.execute("""SELECT idempotency_key, household_id, channel, source, template_id, context, body
                                 FROM notify_outbox WHERE idempotency_key LIKE %s ORDER BY id""",
                            (f"ticket:{tid}:sla:%",)).fetchall()
        per = Counter((r[5]["level"], f"{r[5]['recipient']['kind']}:{r[5]['recipient']['ref']}") for r in rows)
        a, lead, sup = f"technician:{crew['A']}", f"technician:{crew['L1']}", f"user:{crew['sup']}"
        assert per == Counter({("warning", a): 1, ("breach", a): 1, ("breach", lead): 1, ("team_lead", lead): 1,
                               ("service_center", sup): 1})
        assert {(r[1], r[2], r[3]) for r in rows} == {(None, "console", "ticketing")}   # never the customer
        assert {r[4] for r in rows} == {"ticket.sla_warning", "ticket.sla_breach", "ticket.sla_escalation"}
        for r in rows:
            assert no in r[6] and "S01小区1号楼" in r[6] and "到场" in r[6]
            assert HH not in r[6] and "张师傅" not in r[6]                 # no flat, no staff names
        events = conn.execute("""SELECT data FROM ticket_event WHERE ticket_id = %s AND action LIKE 'sla_%%'
                                  ORDER BY id""", (tid,)).fetchall()
        by_level = {e[0]["level"]: e[0] for e in events}
        assert len(events) == 5 and set(by_level) == {"warning", "breach", "team_lead", "station_head",
                                                      "service_center"}
        assert by_level["station_head"]["notified"] == [] and by_level["station_head"]["unheld"] == [
            "station:station_head"]
        assert by_level["breach"]["notified"] == [a, lead] and by_level["breach"]["unheld"] == []

        # the staff messages are deliverable as they stand: the console sender prints the evidence copy
        out = io.StringIO()
        counts = deliver_pending(conn, {"console": ConsoleSender(out)}, T0 + timedelta(minutes=63),
                                 cipher=FieldCipher(new_key_hex()))
        assert counts == {"delivered": 5} and out.getvalue().count(no) >= 5
