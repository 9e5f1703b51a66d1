"""Dispatch (派单): pick the technician by an explainable score, manual assignment, 改派, 抢单.

Score (weights are policy data, ``dispatch.weights``), each component shown to the dispatcher and stored
in the ``dispatch`` event so that "why him?" always has an answer:

- ``area``     the technician's repair station owns the ticket's building or community;
- ``skill``    the technician has the skill the ticket type needs (``dispatch.skills``);
- ``distance`` 1 − km / max_distance_km from the last known location to the building (× boost if urgent);
- ``load``     1 − open assignments / max_load (technicians at max_load are not candidates).

Only active technicians on an on-duty shift at ``now`` are candidates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from psycopg.rows import dict_row

from ticketing import store
from ticketing.model import TicketValidationError
from ticketing.policy import company_policy, local_day

#: a location older than this is not used for distance
LOCATION_MAX_AGE = timedelta(hours=4)
#: statuses in which a ticket counts towards a technician's load
LOAD_STATUSES = ("dispatched", "accepted", "on_site")


class NoCandidate(TicketValidationError):
    """No technician on duty can take the ticket (→ 409 at the API: dispatch manually)."""
    code = "no_candidate"


@dataclass(frozen=True)
class Candidate:
    technician_id: int
    code: str
    name: str
    station_id: int
    score: float
    components: dict[str, float]
    distance_km: float | None
    load: int
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"technician_id": self.technician_id, "code": self.code, "name": self.name,
                "station_id": self.station_id, "score": self.score, "components": self.components,
                "distance_km": self.distance_km, "load": self.load, "reasons": self.reasons}


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    r = 6371.0088
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


def score_technician(ticket: dict, tech: dict, policy: dict) -> Candidate | None:
    """Pure scoring of one technician for one ticket; None when the technician is at max load.

    ``ticket``: type, priority, lat, lon. ``tech``: id, code, name, station_id, skills, lat, lon,
    location_fresh, load, max_load, owns_area.
    """
    cfg = policy["dispatch"]
    w = cfg["weights"]
    if tech["load"] >= tech["max_load"]:
        return None
    reasons: list[str] = []
    comp: dict[str, float] = {}
    comp["area"] = float(w["area"]) if tech["owns_area"] else 0.0
    reasons.append("本站辖区" if tech["owns_area"] else "非本站辖区")
    need = cfg["skills"].get(ticket["type"])
    has = need is None or need in (tech["skills"] or [])
    comp["skill"] = float(w["skill"]) if has else 0.0
    reasons.append(f"技能{'匹配' if has else '不匹配'}: {need}" if need else "无技能要求")
    dist = None
    if (tech.get("location_fresh") and None not in (tech.get("lat"), tech.get("lon"), ticket.get("lat"),
                                                    ticket.get("lon"))):
        dist = haversine_km(tech["lat"], tech["lon"], ticket["lat"], ticket["lon"])
        boost = float(cfg["urgent_distance_boost"]) if ticket.get("priority") == 1 else 1.0
        comp["distance"] = round(float(w["distance"]) * boost * max(0.0, 1 - dist / float(cfg["max_distance_km"])), 2)
        reasons.append(f"距离 {dist:.1f} km")
    else:
        comp["distance"] = 0.0
        reasons.append("位置未知")
    comp["load"] = round(float(w["load"]) * (1 - tech["load"] / tech["max_load"]), 2)
    reasons.append(f"在办 {tech['load']}/{tech['max_load']}")
    return Candidate(tech["id"], tech["code"], tech["name"], tech["station_id"], round(sum(comp.values()), 2),
                     comp, None if dist is None else round(dist, 2), tech["load"], reasons)


def rank(ticket: dict, technicians: list[dict], policy: dict) -> list[Candidate]:
    """Best first; ties go to the lighter load, then the lower id (deterministic)."""
    cands = [c for c in (score_technician(ticket, t, policy) for t in technicians) if c is not None]
    return sorted(cands, key=lambda c: (-c.score, c.load, c.technician_id))


# ------------------------------------------------------------------------------------------ database


def _ticket_for_dispatch(conn, ticket_id: int) -> dict:
    t = store.get_ticket(conn, ticket_id)
    with conn.cursor(row_factory=dict_row) as cur:
        loc = cur.execute("SELECT lat, lon FROM building WHERE id = %s", (t["building_id"],)).fetchone() \
            if t["building_id"] is not None else None
    t["lat"], t["lon"] = (loc["lat"], loc["lon"]) if loc else (None, None)
    return t


def _technicians(conn, ticket: dict, now: datetime, technician_id: int | None = None,
                 on_duty_only: bool = True) -> list[dict]:
    sql = """
        SELECT te.id, te.code, te.name, te.station_id, te.skills, te.max_load, te.lat, te.lon, te.location_at,
               EXISTS (SELECT 1 FROM station_area a WHERE a.station_id = te.station_id
                         AND (a.building_id = %(building)s OR a.community_id = %(community)s)) AS owns_area,
               EXISTS (SELECT 1 FROM technician_shift s WHERE s.technician_id = te.id
                         AND s.starts_at <= %(now)s AND s.ends_at > %(now)s) AS on_duty,
               (SELECT count(*) FROM ticket k WHERE k.assignee_id = te.id AND k.status = ANY(%(load)s))::int AS load
          FROM technician te
         WHERE te.active AND (%(tid)s::int IS NULL OR te.id = %(tid)s)"""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(sql, {"building": ticket.get("building_id"), "community": ticket.get("community_id"),
                                 "now": now, "load": list(LOAD_STATUSES), "tid": technician_id}).fetchall()
    for r in rows:
        r["location_fresh"] = r["location_at"] is not None and now - r["location_at"] <= LOCATION_MAX_AGE
    return [r for r in rows if r["on_duty"] or not on_duty_only]


def candidates(conn, ticket_id: int, now: datetime) -> list[Candidate]:
    """On-duty technicians ranked for this ticket, with score components and reasons."""
    t = _ticket_for_dispatch(conn, ticket_id)
    return rank(t, _technicians(conn, t, now), company_policy(conn, t["company_id"], local_day(now)))


def auto_dispatch(conn, ticket_id: int, *, now: datetime, actor: str = "dispatch",
                  appointment_at: datetime | None = None) -> dict:
    """Dispatch to the best candidate; the event records the score, its components and the runners-up."""
    ranked = candidates(conn, ticket_id, now)
    if not ranked:
        raise NoCandidate(f"no on-duty technician with spare capacity for ticket {ticket_id}")
    best = ranked[0]
    data = {"technician_id": best.technician_id, "station_id": best.station_id, "mode": "auto",
            "score": best.score, "components": best.components, "reasons": best.reasons,
            "distance_km": best.distance_km,
            "runners_up": [{"technician_id": c.technician_id, "score": c.score} for c in ranked[1:4]]}
    if appointment_at is not None:
        data["appointment_at"] = appointment_at.isoformat()
    return store.transition(conn, ticket_id, "dispatch", actor=actor, now=now, data=data)


def _one(conn, ticket: dict, technician_id: int, now: datetime, *, on_duty_only: bool) -> dict:
    rows = _technicians(conn, ticket, now, technician_id, on_duty_only=on_duty_only)
    if not rows:
        raise TicketValidationError(f"technician {technician_id} does not exist, is inactive"
                                    + (" or is not on duty" if on_duty_only else ""))
    return rows[0]


def assign(conn, ticket_id: int, technician_id: int, *, actor: str, now: datetime, note: str = "",
           appointment_at: datetime | None = None) -> dict:
    """Manual dispatch by a dispatcher (also 二次派单 from 'reopened'); the score is recorded for audit."""
    t = _ticket_for_dispatch(conn, ticket_id)
    tech = _one(conn, t, technician_id, now, on_duty_only=False)
    c = score_technician(t, tech, company_policy(conn, t["company_id"], local_day(now)))
    data = {"technician_id": technician_id, "station_id": tech["station_id"], "mode": "manual", "note": note,
            "on_duty": tech["on_duty"], "score": c.score if c else None,
            "components": c.components if c else None, "reasons": c.reasons if c else ["满负荷"]}
    if appointment_at is not None:
        data["appointment_at"] = appointment_at.isoformat()
    return store.transition(conn, ticket_id, "dispatch", actor=actor, now=now, data=data)


def reassign(conn, ticket_id: int, technician_id: int, *, actor: str, now: datetime, reason: str) -> dict:
    """改派 to another technician before arrival (reason required)."""
    t = _ticket_for_dispatch(conn, ticket_id)
    if t["assignee_id"] == technician_id:
        raise TicketValidationError(f"ticket {ticket_id} is already assigned to technician {technician_id}")
    tech = _one(conn, t, technician_id, now, on_duty_only=False)
    return store.transition(conn, ticket_id, "reassign", actor=actor, now=now,
                            data={"technician_id": technician_id, "station_id": tech["station_id"],
                                  "previous_technician_id": t["assignee_id"], "reason": reason})


def pool(conn, technician_id: int, now: datetime, limit: int = 50) -> list[dict]:
    """抢单 pool: undispatched tickets (new / reopened) in the technician's station areas."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT t.id, t.no, t.type, t.priority, t.reported_at, t.building_id, t.community_id, t.status
                 FROM ticket t JOIN technician te ON te.id = %s
                WHERE t.status IN ('new', 'reopened') AND t.type <> 'incident'
                  AND EXISTS (SELECT 1 FROM station_area a WHERE a.station_id = te.station_id
                                AND (a.building_id = t.building_id OR a.community_id = t.community_id))
                ORDER BY t.priority, t.reported_at LIMIT %s""", (technician_id, limit)).fetchall()


def claim(conn, ticket_id: int, technician_id: int, *, actor: str, now: datetime) -> dict:
    """抢单: an on-duty technician takes a ticket from the pool (its station's area) and accepts it."""
    t = _ticket_for_dispatch(conn, ticket_id)
    tech = _one(conn, t, technician_id, now, on_duty_only=True)
    if not tech["owns_area"]:
        raise TicketValidationError(f"ticket {ticket_id} is outside technician {technician_id}'s station area")
    if tech["load"] >= tech["max_load"]:
        raise TicketValidationError(f"technician {technician_id} is at max load ({tech['max_load']})")
    return store.transition(conn, ticket_id, "claim", actor=actor, now=now,
                            data={"technician_id": technician_id, "station_id": tech["station_id"], "mode": "claim"})


def decline(conn, ticket_id: int, *, actor: str, now: datetime, reason: str) -> dict:
    """The technician refuses the order; it goes back to the pool (status new)."""
    return store.transition(conn, ticket_id, "decline", actor=actor, now=now, data={"reason": reason})


def update_location(conn, technician_id: int, lat: float, lon: float, at: datetime) -> None:
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise TicketValidationError(f"bad coordinates {lat}, {lon}")
    n = conn.execute("UPDATE technician SET lat = %s, lon = %s, location_at = %s WHERE id = %s",
                     (lat, lon, at, technician_id)).rowcount
    if n == 0:
        raise TicketValidationError(f"technician {technician_id} does not exist")


# ------------------------------------------------------------------------------------------ crews


def upsert_station(conn, *, company_id: int, code: str, name: str, lat: float | None = None,
                   lon: float | None = None, community_ids: list[int] = (), building_ids: list[int] = ()) -> int:
    """Create or update a repair station (维修站) and ADD the communities/buildings it owns."""
    if not code or not name:
        raise TicketValidationError("station code and name are required")
    sid = conn.execute(
        """INSERT INTO repair_station (company_id, code, name, lat, lon) VALUES (%s, %s, %s, %s, %s)
           ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, lat = EXCLUDED.lat, lon = EXCLUDED.lon
           WHERE repair_station.company_id = EXCLUDED.company_id
           RETURNING id""", (company_id, code, name, lat, lon)).fetchone()
    if sid is None:
        raise TicketValidationError(f"station code {code!r} belongs to another company")
    for c in community_ids:
        conn.execute("INSERT INTO station_area (station_id, community_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                     (sid[0], c))
    for b in building_ids:
        conn.execute("INSERT INTO station_area (station_id, building_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                     (sid[0], b))
    return sid[0]


def upsert_technician(conn, *, station_id: int, code: str, name: str, skills: list[str] = (),
                      role: str = "technician", max_load: int = 6, active: bool = True) -> int:
    if max_load < 0:
        raise TicketValidationError("max_load must be ≥ 0")
    row = conn.execute(
        """INSERT INTO technician (station_id, code, name, skills, role, max_load, active)
           VALUES (%s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (code) DO UPDATE SET station_id = EXCLUDED.station_id, name = EXCLUDED.name,
               skills = EXCLUDED.skills, role = EXCLUDED.role, max_load = EXCLUDED.max_load, active = EXCLUDED.active
           RETURNING id""", (station_id, code, name, list(skills), role, max_load, active)).fetchone()
    return row[0]


def add_shift(conn, technician_id: int, starts_at: datetime, ends_at: datetime) -> None:
    """An on-duty shift (值班); overlapping shifts of one technician are refused."""
    if starts_at.tzinfo is None or ends_at <= starts_at:
        raise TicketValidationError("a shift needs aware times with ends_at > starts_at")
    clash = conn.execute("""SELECT 1 FROM technician_shift WHERE technician_id = %s
                             AND starts_at < %s AND ends_at > %s""", (technician_id, ends_at, starts_at)).fetchone()
    if clash:
        raise TicketValidationError(f"technician {technician_id} already has a shift overlapping {starts_at}–{ends_at}")
    conn.execute("INSERT INTO technician_shift (technician_id, starts_at, ends_at) VALUES (%s, %s, %s)",
                 (technician_id, starts_at, ends_at))


def technicians(conn, company_ids: list[int], now: datetime) -> list[dict]:
    """Crew board: station, skills, on duty now, open load, last location."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT te.id, te.code, te.name, te.role, te.skills, te.max_load, te.active, te.lat, te.lon,
                      te.location_at, rs.id AS station_id, rs.code AS station_code,
                      EXISTS (SELECT 1 FROM technician_shift s WHERE s.technician_id = te.id
                                AND s.starts_at <= %s AND s.ends_at > %s) AS on_duty,
                      (SELECT count(*) FROM ticket k WHERE k.assignee_id = te.id AND k.status = ANY(%s))::int AS load
                 FROM technician te JOIN repair_station rs ON rs.id = te.station_id
                WHERE rs.company_id = ANY(%s) ORDER BY rs.code, te.code""",
            (now, now, list(LOAD_STATUSES), list(company_ids))).fetchall()


def station_company(conn, station_id: int) -> int | None:
    row = conn.execute("SELECT company_id FROM repair_station WHERE id = %s", (station_id,)).fetchone()
    return row[0] if row else None


def technician_company(conn, technician_id: int) -> int | None:
    row = conn.execute("""SELECT rs.company_id FROM technician te JOIN repair_station rs ON rs.id = te.station_id
                           WHERE te.id = %s""", (technician_id,)).fetchone()
    return row[0] if row else None


def area_companies(conn, community_ids: list[int], building_ids: list[int]) -> set[int | None]:
    """Companies owning the given communities/buildings (None for an id that does not exist)."""
    out: set[int | None] = set()
    for cid in community_ids:
        row = conn.execute("""SELECT br.company_id FROM community c JOIN substation s ON s.id = c.substation_id
                               JOIN branch br ON br.id = s.branch_id WHERE c.id = %s""", (cid,)).fetchone()
        out.add(row[0] if row else None)
    for bid in building_ids:
        row = conn.execute("""SELECT br.company_id FROM building b JOIN community c ON c.id = b.community_id
                               JOIN substation s ON s.id = c.substation_id JOIN branch br ON br.id = s.branch_id
                              WHERE b.id = %s""", (bid,)).fetchone()
        out.add(row[0] if row else None)
    return out
