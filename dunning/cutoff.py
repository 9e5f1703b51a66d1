"""Cut-off (限热/停热) PROPOSALS for human approval (domain.md R36–R37). Nothing here cuts heat.

A proposal is written only when *every* guard holds; the evidence stored with it lists each check.
It names one household only: neighbours are never touched (R37 不得连坐), and only this household's
heat-fee ledger is considered (no bundling with other utilities).
"""
from __future__ import annotations

import datetime as dt

import orjson

from dunning.gate import Decision, Snapshot
from dunning.policy import DunningPolicy


def cutoff_checks(snap: Snapshot, decision: Decision, policy: DunningPolicy, as_of: dt.date) -> dict[str, bool]:
    """Each R36 guard, named; a candidate needs all True."""
    delivered = snap.formal_delivered_on
    return {
        "arrears_outstanding": decision.amount_asked > 0,
        "formal_notice_delivered_with_proof": delivered is not None and bool(snap.formal_proof),
        "days_since_formal_delivery": delivered is not None
                                      and (as_of - delivered).days >= policy.cutoff_min_days_after_formal,
        "individually_valved": snap.individually_valved,
        "heating_active": snap.heating_status == "active",
        "no_hardship": snap.hardship_until is None,
        "no_deferral": snap.deferral_until is None or snap.deferral_until < as_of,
        "no_instalment_on_track": not snap.instalment_on_track,
        "no_open_dispute": not snap.dispute_refs,
        "no_open_low_temp_complaint": not snap.open_low_temp_ticket_ids,
        "no_compliance_hold": decision.action != "hold",
        "no_extreme_cold": not snap.extreme_cold_today,
        "not_already_proposed": not snap.cutoff_open,
    }


def is_candidate(checks: dict[str, bool]) -> bool:
    return all(checks.values())


def propose(conn, snap: Snapshot, checks: dict[str, bool], as_of: dt.date) -> int | None:
    """Insert a proposal (status 'proposed'); None when one is already open for this household/season."""
    evidence = {"checks": checks, "formal_outbox_id": snap.formal_outbox_id, "formal_proof": snap.formal_proof,
                "formal_delivered_on": snap.formal_delivered_on.isoformat() if snap.formal_delivered_on else None,
                "rule": "R36: needs human approval and 备案 with the heating authority before any action"}
    row = conn.execute(
        """INSERT INTO dunning_cutoff_proposal (household_id, season, proposed_on, evidence)
           VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING RETURNING id""",
        (snap.household_id, snap.season, as_of, orjson.dumps(evidence).decode())).fetchone()
    return row[0] if row else None


def decide_proposal(conn, proposal_id: int, *, approve: bool, by: str, at: dt.datetime) -> None:
    """A human approves or rejects; approval still does not cut anything (field staff act and record)."""
    n = conn.execute("""UPDATE dunning_cutoff_proposal SET status = %s, decided_by = %s, decided_at = %s
                        WHERE id = %s AND status = 'proposed'""",
                     ("approved" if approve else "rejected", by, at, proposal_id)).rowcount
    if n != 1:
        raise ValueError(f"proposal {proposal_id} is not awaiting a decision")
