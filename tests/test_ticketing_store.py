"""Tickets in the database: lifecycle with audit trail, 催单重单 duplicate linking, attachments,
customer notifications through the outbox, and the questions dunning asks."""
from __future__ import annotations

import hashlib
from datetime import timedelta

import psycopg
import pytest

from tests.test_ticketing_support import T0, city, tconn, tdb_url  # noqa: F401  (fixtures)
from ticketing import dispatch, store
from ticketing.model import InvalidTransition, TicketNotFound, TicketValidationError


def _tech(conn, city, code="T1", skills=("repair", "temp_test", "service"), lat=39.10, lon=117.20):
    st = conn.execute("INSERT INTO repair_station (company_id, code, name) VALUES (%s, %s, %s) "
                      "ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name RETURNING id",
                      (city.company, "RS1", "一站")).fetchone()[0]
    conn.execute("INSERT INTO station_area (station_id, community_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                 (st, city.communities["S01-C1"]))
    tid = conn.execute("""INSERT INTO technician (station_id, code, name, skills, lat, lon, location_at)
                          VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id""",
                       (st, code, code, list(skills), lat, lon, T0)).fetchone()[0]
    conn.execute("INSERT INTO technician_shift VALUES (%s, %s, %s)", (tid, T0 - timedelta(hours=8), T0 + timedelta(hours=16)))
    return tid


def test_full_lifecycle_is_audited_and_notifies(tconn, city):
    hh = city.households["S01-C1-B1-U1-0101"]
    res = store.create_ticket(tconn, type="repair", channel="wechat", actor="agent1", now=T0, household_id=hh,
                              category="no_heat", description="暖气不热")
    assert res.no.startswith("GD20261210-") and not res.is_duplicate
    t = store.get_ticket(tconn, res.ticket_id)
    assert (t["unit_id"], t["substation_id"], t["company_id"]) == (city.units["S01-C1-B1-U1"], city.substations["S01"], city.company)
    assert t["low_temperature"] is True          # no_heat is a low-temperature complaint (R27)
    tech = _tech(tconn, city)
    def at(minutes):
        return T0 + timedelta(minutes=minutes)
    dispatch.assign(tconn, res.ticket_id, tech, actor="dispatcher", now=at(5))
    store.accept(tconn, res.ticket_id, actor="T1", now=at(10))
    store.arrive(tconn, res.ticket_id, actor="T1", now=at(50))
    store.resolve(tconn, res.ticket_id, actor="T1", now=at(90), resolution="排气后恢复")
    store.revisit(tconn, res.ticket_id, actor="agent2", now=at(600), satisfaction=5)
    t = store.close(tconn, res.ticket_id, actor="agent2", now=at(601))
    assert t["status"] == "closed"
    ev = store.history(tconn, res.ticket_id)
    assert [(e["action"], e["from_status"], e["to_status"]) for e in ev] == [
        ("create", None, "new"), ("dispatch", "new", "dispatched"), ("accept", "dispatched", "accepted"),
        ("arrive", "accepted", "on_site"), ("resolve", "on_site", "resolved"),
        ("revisit", "resolved", "revisited"), ("close", "revisited", "closed")]
    assert [e["actor"] for e in ev] == ["agent1", "dispatcher", "T1", "T1", "T1", "agent2", "agent2"]
    assert ev[1]["at"] == at(5) and ev[1]["data"]["mode"] == "manual"
    out = tconn.execute("SELECT idempotency_key, channel, template_id, body FROM notify_outbox ORDER BY id").fetchall()
    assert [(o[1], o[2]) for o in out] == [("wechat", "ticket.received"), ("wechat", "ticket.resolved")]
    assert out[0][0] == f"ticket:{res.ticket_id}:event:{ev[1]['id']}:wechat"
    assert res.no in out[0][3] and "排气后恢复" in out[1][3]
    with pytest.raises(InvalidTransition) as e:
        store.transition(tconn, res.ticket_id, "dispatch", actor="x", now=at(700), data={"technician_id": tech})
    assert "closed" in str(e.value)
    # the refused action wrote nothing
    assert len(store.history(tconn, res.ticket_id)) == 7


def test_dissatisfied_revisit_reopens_for_second_dispatch(tconn, city):
    hh = city.households["S01-C1-B1-U1-0201"]
    tech = _tech(tconn, city)
    tid = store.create_ticket(tconn, type="repair", channel="phone", actor="a", now=T0, household_id=hh).ticket_id
    dispatch.assign(tconn, tid, tech, actor="d", now=T0)
    store.accept(tconn, tid, actor="t", now=T0)
    store.arrive(tconn, tid, actor="t", now=T0)
    store.resolve(tconn, tid, actor="t", now=T0, resolution="ok")
    t = store.revisit(tconn, tid, actor="a", now=T0 + timedelta(hours=1), satisfaction=2, comment="还是冷")
    assert t["status"] == "reopened" and t["satisfaction"] == 2
    t = dispatch.assign(tconn, tid, tech, actor="d", now=T0 + timedelta(hours=2))
    assert t["status"] == "dispatched" and t["dispatch_round"] == 2
    second = store.history(tconn, tid)[-1]
    assert second["data"]["second_dispatch"] is True and second["data"]["dispatch_round"] == 2
    with pytest.raises(TicketValidationError):
        store.revisit(tconn, tid, actor="a", now=T0, satisfaction=7)


def test_cancel_and_external_escalation_need_their_data(tconn, city):
    hh = city.households["S01-C1-B1-U1-0101"]
    tid = store.create_ticket(tconn, type="complaint", channel="phone", actor="a", now=T0, household_id=hh).ticket_id
    with pytest.raises(TicketValidationError):
        store.cancel(tconn, tid, actor="a", now=T0, reason="")
    t = store.escalate_external(tconn, tid, actor="a", now=T0, external_ref="12345-20261210-0007")
    assert t["status"] == "escalated_external" and t["external_ref"] == "12345-20261210-0007"
    assert store.has_open_refund_dispute(tconn, hh) is False       # a plain complaint, not about money
    tid2 = store.create_ticket(tconn, type="complaint", channel="phone", actor="a", now=T0,
                               household_id=city.households["S01-C1-B1-U1-0201"], category="refund_dispute").ticket_id
    assert store.has_open_refund_dispute(tconn, city.households["S01-C1-B1-U1-0201"]) is True
    store.cancel(tconn, tid2, actor="a", now=T0, reason="用户撤回")
    assert store.has_open_refund_dispute(tconn, city.households["S01-C1-B1-U1-0201"]) is False
    with pytest.raises(TicketNotFound):
        store.get_ticket(tconn, 999999)


def test_12345_needs_reference_and_household_types_need_a_place(tconn, city):
    with pytest.raises(TicketValidationError, match="12345"):
        store.create_ticket(tconn, type="complaint", channel="hotline_12345", actor="a", now=T0,
                            household_id=city.households["S01-C1-B1-U1-0101"])
    with pytest.raises(TicketValidationError, match="household"):
        store.create_ticket(tconn, type="repair", channel="phone", actor="a", now=T0)
    with pytest.raises(TicketValidationError, match="does not exist"):
        store.create_ticket(tconn, type="repair", channel="phone", actor="a", now=T0, household_id=424242)
    with pytest.raises(TicketValidationError):
        store.create_ticket(tconn, type="bogus", channel="phone", actor="a", now=T0, household_id=1)


def test_duplicates_link_to_open_ticket_and_count_as_urge(tconn, city):
    h1, h2 = city.households["S01-C1-B1-U1-0101"], city.households["S01-C1-B1-U1-0201"]
    first = store.create_ticket(tconn, type="repair", channel="phone", actor="a", now=T0, household_id=h1,
                                category="leak", description="楼道漏水")
    # a neighbour in the same unit calls about the same type within the window → linked (repair: unit scope)
    second = store.create_ticket(tconn, type="repair", channel="wechat", actor="b", now=T0 + timedelta(hours=2),
                                 household_id=h2, description="楼道漏水+1", priority=1)
    assert second.is_duplicate and second.merged_into == first.ticket_id and second.urge_count == 1
    third = store.create_ticket(tconn, type="repair", channel="phone", actor="c", now=T0 + timedelta(hours=3),
                                household_id=h1)
    assert third.merged_into == first.ticket_id and third.urge_count == 2
    orig = store.get_ticket(tconn, first.ticket_id, with_events=True)
    assert orig["urge_count"] == 2 and orig["priority"] == 1      # urgency raised by the repeat call
    assert orig["duplicates"] == [second.ticket_id, third.ticket_id]
    assert [e["action"] for e in orig["events"]] == ["create", "urge", "urge"]
    assert orig["events"][1]["data"]["call_ticket_id"] == second.ticket_id
    dup = store.get_ticket(tconn, second.ticket_id, with_events=True)
    assert dup["status"] == "merged" and dup["parent_id"] == first.ticket_id and dup["link_kind"] == "duplicate"
    assert [e["action"] for e in dup["events"]] == ["create", "merge"]
    # another type, another building, or outside the window → a new ticket
    other_type = store.create_ticket(tconn, type="complaint", channel="phone", actor="a", now=T0, household_id=h1)
    assert not other_type.is_duplicate
    other_place = store.create_ticket(tconn, type="repair", channel="phone", actor="a", now=T0,
                                      household_id=city.households["S02-C1-B1-U1-0101"])
    assert not other_place.is_duplicate
    late = store.create_ticket(tconn, type="repair", channel="phone", actor="a", now=T0 + timedelta(hours=73),
                               household_id=h1, reported_at=T0 + timedelta(hours=73))
    assert not late.is_duplicate
    # temp_test is per household: the neighbour's 测温 is not merged into another household's
    tt1 = store.request_temp_test(tconn, h1, actor="a", now=T0)
    tt2 = store.request_temp_test(tconn, h2, actor="a", now=T0)
    assert not tt1.is_duplicate and not tt2.is_duplicate
    tt3 = store.request_temp_test(tconn, h1, actor="a", now=T0 + timedelta(hours=1))
    assert tt3.merged_into == tt1.ticket_id


def test_duplicate_low_temperature_call_flags_the_open_ticket(tconn, city):
    h1 = city.households["S01-C1-B1-U1-0101"]
    first = store.create_ticket(tconn, type="complaint", channel="phone", actor="a", now=T0, household_id=h1)
    assert store.has_open_low_temperature_complaint(tconn, h1) is False
    store.create_ticket(tconn, type="complaint", channel="phone", actor="a", now=T0 + timedelta(hours=1),
                        household_id=h1, category="low_temp")
    t = store.get_ticket(tconn, first.ticket_id)
    assert t["low_temperature"] is True and t["reported_at"] == T0      # earliest report kept (R27)
    assert store.has_open_low_temperature_complaint(tconn, h1) is True


def test_attachments_are_checked_and_hashed(tconn, city):
    tid = store.create_ticket(tconn, type="repair", channel="phone", actor="a", now=T0,
                              household_id=city.households["S01-C1-B1-U1-0101"]).ticket_id
    png = b"\x89PNG\r\n\x1a\n" + b"x" * 100
    meta = store.add_attachment(tconn, tid, kind="photo", content_type="image/png", data=png, actor="t", now=T0,
                                filename="leak.png")
    assert meta["sha256"] == hashlib.sha256(png).hexdigest() and meta["size_bytes"] == len(png)
    got = store.get_attachment(tconn, tid, meta["id"])
    assert got["data"] == png and got["content_type"] == "image/png"
    assert store.history(tconn, tid)[-1]["action"] == "attach"
    with pytest.raises(TicketValidationError, match="content type"):
        store.add_attachment(tconn, tid, kind="photo", content_type="application/x-msdownload", data=b"MZ",
                             actor="t", now=T0)
    with pytest.raises(TicketValidationError, match="limit"):
        store.add_attachment(tconn, tid, kind="photo", content_type="image/jpeg", data=b"x" * (10 * 1024 * 1024 + 1),
                             actor="t", now=T0)
    with pytest.raises(TicketValidationError, match="empty"):
        store.add_attachment(tconn, tid, kind="audio", content_type="audio/mpeg", data=b"", actor="t", now=T0)
    with pytest.raises(TicketNotFound):
        store.get_attachment(tconn, tid + 1000, meta["id"])


def test_pause_codes_are_validated_and_alternate(tconn, city):
    tech = _tech(tconn, city)
    tid = store.create_ticket(tconn, type="repair", channel="phone", actor="a", now=T0,
                              household_id=city.households["S01-C1-B1-U1-0101"]).ticket_id
    dispatch.assign(tconn, tid, tech, actor="d", now=T0)
    with pytest.raises(TicketValidationError):
        store.pause_clock(tconn, tid, actor="t", now=T0, code="lunch")
    store.pause_clock(tconn, tid, actor="t", now=T0, code="customer_absent")
    with pytest.raises(InvalidTransition):
        store.pause_clock(tconn, tid, actor="t", now=T0, code="entry_refused")
    store.resume_clock(tconn, tid, actor="t", now=T0 + timedelta(hours=1))
    with pytest.raises(InvalidTransition):
        store.resume_clock(tconn, tid, actor="t", now=T0 + timedelta(hours=1))


def test_links_for_dunning(tconn, city):
    res = store.request_temp_test(tconn, city.households["S01-C1-B1-U1-0101"], actor="dunning", now=T0)
    store.link_record(tconn, res.ticket_id, kind="dunning_case", ref="42", actor="dunning", now=T0)
    assert store.tickets_linked_to(tconn, kind="dunning_case", ref="42") == [res.ticket_id]
    assert [t["id"] for t in store.open_tickets_for_household(tconn, city.households["S01-C1-B1-U1-0101"])] == [res.ticket_id]


def test_automatic_callers_link_to_any_open_ticket(tconn, city):
    """The dunning gate asks for a 测温 with channel auto: it links to the open one however old, instead
    of hitting the one-open-auto-ticket rule."""
    hh = city.households["S01-C1-B1-U1-0101"]
    first = store.request_temp_test(tconn, hh, actor="auto", now=T0, channel="auto")
    again = store.request_temp_test(tconn, hh, actor="dunning", now=T0 + timedelta(days=10), channel="auto")
    assert again.merged_into == first.ticket_id
    # an auto ticket is suspected non-compliance, not a customer's complaint (no R27 clock)
    assert store.has_open_low_temperature_complaint(tconn, hh) is False
    # the customer's own call is a ticket of its own: its report starts the R27 clock, not the IoT suspicion
    cust = store.request_temp_test(tconn, hh, actor="agent", now=T0 + timedelta(days=1))
    assert not cust.is_duplicate
    assert store.has_open_low_temperature_complaint(tconn, hh) is True
    # and a later automatic request links to the open tickets rather than opening another one
    later = store.request_temp_test(tconn, hh, actor="dunning", now=T0 + timedelta(days=2), channel="auto")
    assert later.merged_into == first.ticket_id


def test_history_is_append_only_in_the_database(tconn, city):
    tid = store.create_ticket(tconn, type="inquiry", channel="phone", actor="a", now=T0,
                              household_id=city.households["S01-C1-B1-U1-0101"]).ticket_id
    tconn.execute("SAVEPOINT s")
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        tconn.execute("UPDATE ticket_event SET actor = 'someone else' WHERE ticket_id = %s", (tid,))
    tconn.execute("ROLLBACK TO SAVEPOINT s")
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        tconn.execute("DELETE FROM ticket_event WHERE ticket_id = %s", (tid,))
    tconn.execute("ROLLBACK TO SAVEPOINT s")
    with pytest.raises(psycopg.errors.CheckViolation):
        tconn.execute("UPDATE ticket SET status = 'done' WHERE id = %s", (tid,))
    tconn.execute("ROLLBACK TO SAVEPOINT s")
