"""The ticket state machine: every (status, action) pair is either in the expected table or refused."""
from __future__ import annotations

import itertools

import pytest

from ticketing.model import InvalidTransition, Status, TicketValidationError
from ticketing.workflow import ACTIONS, allowed_actions, next_status

FULL = {"technician_id": 7, "reason": "r", "resolution": "fixed", "external_ref": "12345-001",
        "into": 1}

# Expected moves for a phone 报修 (repair) ticket, written out independently of the module's table.
REPAIR_MOVES = {
    ("new", "dispatch"): "dispatched", ("reopened", "dispatch"): "dispatched",
    ("escalated_external", "dispatch"): "dispatched",
    ("new", "claim"): "accepted", ("reopened", "claim"): "accepted",
    ("dispatched", "reassign"): "dispatched", ("accepted", "reassign"): "dispatched",
    ("dispatched", "decline"): "new",
    ("dispatched", "accept"): "accepted",
    ("accepted", "arrive"): "on_site",
    ("on_site", "resolve"): "resolved", ("escalated_external", "resolve"): "resolved",
    ("resolved", "revisit"): "revisited", ("resolved", "revisit_dissatisfied"): "reopened",
    ("revisited", "close"): "closed",
    **{(s, "cancel"): "cancelled" for s in ("new", "dispatched", "accepted", "on_site", "reopened")},
    **{(s, "escalate_external"): "escalated_external"
       for s in ("new", "dispatched", "accepted", "on_site", "resolved", "reopened")},
    ("new", "merge"): "merged",
}


def _data(action):
    d = dict(FULL)
    if action == "revisit":
        d["satisfaction"] = 4
    if action == "revisit_dissatisfied":
        d["satisfaction"] = 2
    return d


@pytest.mark.parametrize("status,action", list(itertools.product([s.value for s in Status], sorted(ACTIONS))))
def test_repair_table(status, action):
    expected = REPAIR_MOVES.get((status, action))
    if expected is None:
        with pytest.raises(InvalidTransition) as e:
            next_status(status, action, "repair", "phone", _data(action), ticket_id=1)
        assert action in str(e.value) and status in str(e.value)
    else:
        assert next_status(status, action, "repair", "phone", _data(action)) == Status(expected)


@pytest.mark.parametrize("ttype,status,action,expected", [
    # desk types may be answered without a site visit (R26 reply clock)
    ("inquiry", "new", "resolve", "resolved"),
    ("complaint", "accepted", "resolve", "resolved"),
    ("complaint", "reopened", "resolve", "resolved"),
    ("repair", "new", "resolve", None),
    ("repair", "accepted", "resolve", None),
    # incidents/maintenance have nobody to call back: close straight from resolved, no 回访
    ("incident", "resolved", "close", "closed"),
    ("incident", "resolved", "revisit", None),
    ("repair", "resolved", "close", None),
])
def test_type_specific_rows(ttype, status, action, expected):
    if expected is None:
        with pytest.raises(InvalidTransition):
            next_status(status, action, ttype, "phone", _data(action))
    else:
        assert next_status(status, action, ttype, "phone", _data(action)) == Status(expected)


@pytest.mark.parametrize("channel,status,ok", [
    ("auto", "new", True), ("auto", "on_site", True), ("auto", "resolved", True), ("auto", "closed", False),
    ("phone", "new", False), ("wechat", "dispatched", False),
])
def test_auto_close_only_for_auto_tickets(channel, status, ok):
    if ok:
        assert next_status(status, "auto_close", "temp_test", channel, {"reason": "recovered"}) == Status.CLOSED
    else:
        with pytest.raises(InvalidTransition):
            next_status(status, "auto_close", "temp_test", channel, {"reason": "recovered"})


@pytest.mark.parametrize("action,data,missing", [
    ("cancel", {}, "reason"),
    ("escalate_external", {}, "external_ref"),
    ("dispatch", {}, "technician_id"),
    ("resolve", {"resolution": ""}, "resolution"),
])
def test_required_data(action, data, missing):
    status = "on_site" if action == "resolve" else "new"
    with pytest.raises(TicketValidationError, match=missing):
        next_status(status, action, "repair", "phone", data)


@pytest.mark.parametrize("action,sat,ok", [
    ("revisit", 3, True), ("revisit", 5, True), ("revisit", 2, False), ("revisit", 0, False),
    ("revisit_dissatisfied", 1, True), ("revisit_dissatisfied", 2, True), ("revisit_dissatisfied", 3, False),
    ("revisit", 6, False), ("revisit", "5", False),
])
def test_satisfaction_guards(action, sat, ok):
    if ok:
        next_status("resolved", action, "repair", "phone", {"satisfaction": sat})
    else:
        with pytest.raises(TicketValidationError):
            next_status("resolved", action, "repair", "phone", {"satisfaction": sat})


@pytest.mark.parametrize("action,status,ok", [
    ("urge", "new", True), ("urge", "resolved", True), ("urge", "closed", False), ("urge", "merged", False),
    ("pause", "on_site", True), ("pause", "new", False), ("note", "closed", True), ("note", "merged", False),
])
def test_event_only_actions_keep_status(action, status, ok):
    if ok:
        assert next_status(status, action, "repair", "phone", {}) == Status(status)
    else:
        with pytest.raises(InvalidTransition):
            next_status(status, action, "repair", "phone", {})


def test_allowed_actions_lists_moves_and_events():
    acts = allowed_actions("resolved", "repair")
    assert {"revisit", "revisit_dissatisfied", "escalate_external", "urge"} <= set(acts)
    assert "close" not in acts
    assert "close" in allowed_actions("resolved", "incident")
