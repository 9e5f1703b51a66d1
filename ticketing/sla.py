"""SLA clocks (R26) and the refund trigger clock (R27): pure functions over a ticket and its events.

Clocks per ticket (durations from ``policy.yaml`` ``sla.clocks``, per region/company/type[/category]):

- ``ack``     reported → first dispatch / claim (or desk resolution),
- ``arrive``  reported → technician on site (``arrive``),
- ``resolve`` reported → ``resolve``,
- ``reply``   reported → written ``reply`` (or ``resolve``) — 投诉/咨询 answer within 3 days.

Clocks start at ``reported_at`` (what the customer experiences, R27) and run on a calendar: 24 h in the
heating season, working hours off season. Pause codes (customer_absent, entry_refused) stop every clock
between the ``pause`` and ``resume`` events. After a dissatisfied 回访 the arrive/resolve clocks restart at
the reopening (二次派单). Warnings fire at ``warn_share`` of a clock; a breach escalates along the ladder
(班长 team_lead → 站长 station_head → 客服中心 service_center) by elapsed share; the holders of each raised
level are told through the outbox (ticketing.notifications.on_sla_level, recipients per ``sla.notify``).

Nothing here reads the wall clock or the database except `run_sla_checks` (the scheduled job).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from ticketing.policy import parse_duration

log = logging.getLogger(__name__)

CLOCKS = ("ack", "arrive", "resolve", "reply")
#: events that stop each clock (first occurrence after the clock's start)
STOP_ACTIONS: dict[str, frozenset[str]] = {
    "ack": frozenset({"dispatch", "claim", "resolve", "reply"}),
    "arrive": frozenset({"arrive"}),
    "resolve": frozenset({"resolve"}),
    "reply": frozenset({"reply", "resolve"}),
}
#: clocks that restart at a reopening (二次派单); ack and reply were met once and stay met
RESTART_ON_REOPEN = frozenset({"arrive", "resolve"})
#: events after which no clock runs any more (the work is no longer owed)
END_ACTIONS = frozenset({"cancel", "close", "auto_close", "merge"})


# ------------------------------------------------------------------------------------------ seasons


def _md(text: str) -> tuple[int, int]:
    m, d = text.split("-")
    return int(m), int(d)


def season_bounds(day: date, season: dict) -> tuple[date, date]:
    """The statutory season (start, end inclusive) that ``day`` falls in or that last started before it."""
    sm, sd = _md(season["start"])
    em, ed = _md(season["end"])
    start = date(day.year, sm, sd)
    if day < start:
        start = date(day.year - 1, sm, sd)
    end = date(start.year + (1 if (em, ed) < (sm, sd) else 0), em, ed)
    return start, end


def in_season(day: date, season: dict) -> bool:
    start, end = season_bounds(day, season)
    return start <= day <= end


def season_day_index(day: date, season: dict) -> int | None:
    """0 on the first statutory day, None off season."""
    start, end = season_bounds(day, season)
    return (day - start).days if start <= day <= end else None


# ------------------------------------------------------------------------------------------ clock specs


def clock_limits(ticket_type: str, category: str | None, reported_local: datetime, policy: dict) -> dict[str, timedelta]:
    """Durations of the clocks that apply to this ticket (missing clock = not measured for this type).

    ``early_season`` overrides apply in the first ``season.early_days`` days of the season (no-heat
    2 h → 5 h, R26); ``off_season`` overrides apply off season.
    """
    matrix = policy["sla"]["clocks"]
    spec = matrix.get(f"{ticket_type}/{category}") if category else None
    if spec is None:
        spec = matrix.get(ticket_type, {})
    spec = dict(spec)
    early = spec.pop("early_season", None)
    off = spec.pop("off_season", None)
    idx = season_day_index(reported_local.date(), policy["season"])
    if idx is not None and early and idx < int(policy["season"].get("early_days", 0)):
        spec.update(early)
    if idx is None and off:
        spec.update(off)
    # on a working-hours calendar "3d" means three working days, not 72 working hours
    cal = policy["sla"]["calendars"]["in_season" if idx is not None else "off_season"]
    workday = _workday_length(cal)
    out = {}
    for name, value in spec.items():
        if name not in CLOCKS:
            raise ValueError(f"sla.clocks.{ticket_type}: unknown clock {name!r}; expected one of {CLOCKS}")
        limit = parse_duration(value, where=f"sla.clocks.{ticket_type}.{name}")
        if workday is not None and str(value).strip().endswith("d"):
            limit = workday * (limit / timedelta(days=1))
        out[name] = limit
    return out


def _workday_length(cal: dict) -> timedelta | None:
    if cal["kind"] != "working_hours":
        return None
    h1, m1 = map(int, cal["start"].split(":"))
    h2, m2 = map(int, cal["end"].split(":"))
    return timedelta(hours=h2 - h1, minutes=m2 - m1)


# ------------------------------------------------------------------------------------------ calendars


def running_intervals(start: datetime, end: datetime, policy: dict, tz: ZoneInfo) -> list[tuple[datetime, datetime]]:
    """The parts of [start, end) in which SLA clocks run (in-season: always; off-season: working hours)."""
    if end <= start:
        return []
    cals = policy["sla"]["calendars"]
    out: list[tuple[datetime, datetime]] = []
    day = start.astimezone(tz).date()
    last = end.astimezone(tz).date()
    while day <= last:
        cal = cals["in_season"] if in_season(day, policy["season"]) else cals["off_season"]
        day_start = datetime.combine(day, time(0), tz)
        day_end = datetime.combine(day + timedelta(days=1), time(0), tz)
        if cal["kind"] == "always":
            a, b = day_start, day_end
        elif cal["kind"] == "working_hours":
            if day.isoweekday() not in cal["weekdays"]:
                day += timedelta(days=1)
                continue
            h1, m1 = map(int, cal["start"].split(":"))
            h2, m2 = map(int, cal["end"].split(":"))
            a, b = datetime.combine(day, time(h1, m1), tz), datetime.combine(day, time(h2, m2), tz)
        else:
            raise ValueError(f"unknown calendar kind {cal['kind']!r}")
        a, b = max(a, start), min(b, end)
        if b > a:
            if out and out[-1][1] == a:
                out[-1] = (out[-1][0], b)
            else:
                out.append((a, b))
        day += timedelta(days=1)
    return out


def _subtract(intervals: list[tuple[datetime, datetime]], holes: list[tuple[datetime, datetime]]):
    out = []
    for a, b in intervals:
        pieces = [(a, b)]
        for ha, hb in holes:
            nxt = []
            for pa, pb in pieces:
                if hb <= pa or ha >= pb:
                    nxt.append((pa, pb))
                    continue
                if ha > pa:
                    nxt.append((pa, ha))
                if hb < pb:
                    nxt.append((hb, pb))
            pieces = nxt
        out.extend(pieces)
    return out


def elapsed(start: datetime, end: datetime, pauses: list[tuple[datetime, datetime]], policy: dict,
            tz: ZoneInfo) -> timedelta:
    """Clock time between start and end: calendar running time minus pauses."""
    total = timedelta(0)
    for a, b in _subtract(running_intervals(start, end, policy, tz), pauses):
        total += b - a
    return total


def due_at(start: datetime, limit: timedelta, pauses: list[tuple[datetime, datetime]], policy: dict,
           tz: ZoneInfo, horizon: timedelta = timedelta(days=120)) -> datetime | None:
    """When the clock reaches ``limit`` given the known pauses (an open pause → None: not known)."""
    if any(b is None for _, b in pauses):
        return None
    remaining = limit
    cursor = start
    step = timedelta(days=7)
    while cursor < start + horizon:
        for a, b in _subtract(running_intervals(cursor, cursor + step, policy, tz), pauses):
            if b - a >= remaining:
                return a + remaining
            remaining -= b - a
        cursor += step
    return None


# ------------------------------------------------------------------------------------------ evaluation


@dataclass(frozen=True)
class ClockState:
    name: str
    limit: timedelta
    started_at: datetime
    stopped_at: datetime | None
    elapsed: timedelta
    due_at: datetime | None
    status: str            # running | paused | warning | met | breached | stopped
    level: str | None      # escalation level reached (team_lead / station_head / service_center)
    warn: bool             # warn_share reached (while running) — notice to the assignee

    @property
    def share(self) -> float:
        return self.elapsed / self.limit if self.limit else 0.0

    @property
    def remaining(self) -> timedelta:
        return self.limit - self.elapsed

    def as_dict(self) -> dict:
        return {"clock": self.name, "limit_minutes": self.limit.total_seconds() / 60,
                "started_at": self.started_at, "stopped_at": self.stopped_at,
                "elapsed_minutes": round(self.elapsed.total_seconds() / 60, 1),
                "remaining_minutes": round(self.remaining.total_seconds() / 60, 1),
                "share": round(self.share, 3), "due_at": self.due_at, "status": self.status,
                "level": self.level, "warn": self.warn}


def pause_intervals(events: list[dict], now: datetime) -> list[tuple[datetime, datetime | None]]:
    """[pause, resume) pairs from the history; an unmatched pause is open (None end)."""
    out: list[tuple[datetime, datetime | None]] = []
    open_at: datetime | None = None
    for e in events:
        if e["action"] == "pause" and open_at is None:
            open_at = e["at"]
        elif e["action"] == "resume" and open_at is not None:
            out.append((open_at, e["at"]))
            open_at = None
    if open_at is not None:
        out.append((open_at, None))
    return out


def evaluate_clock(name: str, limit: timedelta, start: datetime, stop: datetime | None, ended: datetime | None,
                   pauses: list[tuple[datetime, datetime | None]], now: datetime, policy: dict,
                   tz: ZoneInfo) -> ClockState:
    """One clock's state at ``now``. ``stop``: the event that met it; ``ended``: cancellation/closing."""
    until = stop or ended or now
    closed_pauses = [(a, b if b is not None else until) for a, b in pauses]
    spent = elapsed(start, until, closed_pauses, policy, tz)
    share = spent / limit if limit else 0.0
    level = None
    for step in sorted(policy["sla"]["escalation"], key=lambda s: s["share"]):
        if share >= float(step["share"]):
            level = step["level"]
    warn = share >= float(policy["sla"]["warn_share"])
    paused_now = stop is None and ended is None and any(b is None for _, b in pauses)
    if stop is not None:
        status, level, warn = ("met", None, False) if spent <= limit else ("breached", level, warn)
    elif spent > limit or (spent == limit and limit > timedelta(0)):
        status = "breached"
    elif ended is not None:
        status, level, warn = "stopped", None, False
    elif paused_now:
        status = "paused"
    else:
        status = "warning" if warn else "running"
    return ClockState(name, limit, start, stop, spent, due_at(start, limit, pauses, policy, tz), status, level, warn)


def ticket_clocks(ticket: dict, events: list[dict], policy: dict, now: datetime, tz: ZoneInfo) -> list[ClockState]:
    """Every SLA clock of a ticket at ``now``, from its row (type, category, reported_at) and history."""
    events = sorted(events, key=lambda e: (e["at"], e.get("id", 0)))
    reported = ticket["reported_at"]
    limits = clock_limits(ticket["type"], ticket.get("category"), reported.astimezone(tz), policy)
    pauses = pause_intervals(events, now)
    reopen_at = None
    for e in events:
        if e["action"] == "revisit_dissatisfied":
            reopen_at = e["at"]
    ended = next((e["at"] for e in events if e["action"] in END_ACTIONS), None)
    states = []
    for name, limit in limits.items():
        start = reopen_at if (reopen_at is not None and name in RESTART_ON_REOPEN) else reported
        stop = next((e["at"] for e in events if e["action"] in STOP_ACTIONS[name] and e["at"] >= start), None)
        clock_pauses = [(a, b) for a, b in pauses if b is None or b > start]
        states.append(evaluate_clock(name, limit, start, stop, ended, clock_pauses, now, policy, tz))
    return states


# ------------------------------------------------------------------------------------------ R27 refund clock


@dataclass(frozen=True)
class RefundClock:
    started_at: datetime       # reported_at of the low-temperature complaint / 测温 request
    trigger_at: datetime       # refund liability starts if not fixed by then (24 h Tianjin, 48 h Luoyang/Ningxia)
    days_from: str             # 'report' (Ningxia) or 'test' (Luoyang): first refundable day
    triggered: bool            # at ``now``: not resolved before trigger_at


def refund_clock(ticket: dict, policy: dict, now: datetime) -> RefundClock | None:
    """R27: a 测温 or low-temperature ticket starts the refund trigger clock at ``reported_at``."""
    # an auto ticket is suspected non-compliance from IoT (R13), not a customer's report: no refund clock
    if ticket.get("channel") == "auto" or not (ticket.get("low_temperature") or ticket["type"] == "temp_test"):
        return None
    rc = policy["refund_clock"]
    trigger = ticket["reported_at"] + timedelta(hours=float(rc["trigger_hours"]))
    fixed = ticket.get("resolved_at")
    triggered = (fixed is None or fixed > trigger) and now >= trigger
    return RefundClock(ticket["reported_at"], trigger, rc["days_from"], triggered)


# ------------------------------------------------------------------------------------------ scheduled job


def run_sla_checks(conn, now: datetime, *, batch: int = 2000) -> dict:
    """Raise each warning / breach / escalation level once per ticket and clock (ticket_sla_notice),
    auditing it as a ticket event and telling the people who hold the level (ticketing.notifications →
    notify outbox), all in the caller's transaction: a rollback drops the notice and its messages
    together, and a rerun finds the notice and sends nothing twice. Idempotent: run it every minute.

    Summary: tickets looked at, levels raised (warning / breach / escalations), ``notifications`` queued,
    ``unheld`` roles that nobody held when their level was raised (recorded on the event), deemed_late.
    """
    from psycopg.rows import dict_row

    from core.config import get_settings
    from ticketing.model import ACTIVE

    tz = ZoneInfo(get_settings().timezone)
    summary = {"tickets": 0, "warning": 0, "breach": 0, "escalations": 0, "notifications": 0, "unheld": 0,
               "deemed_late": 0}
    policies: dict = {}
    after = 0
    while True:                                   # keyset batches over every active ticket
        with conn.cursor(row_factory=dict_row) as cur:
            tickets = cur.execute("""SELECT id, type, category, channel, status, reported_at, resolved_at, company_id,
                                            household_id, low_temperature FROM ticket
                                      WHERE status = ANY(%s) AND id > %s ORDER BY id LIMIT %s""",
                                  (sorted(ACTIVE), after, batch)).fetchall()
            ids = [t["id"] for t in tickets]
            events_by: dict[int, list[dict]] = {i: [] for i in ids}
            if ids:
                for e in cur.execute("""SELECT id, ticket_id, at, action FROM ticket_event
                                         WHERE ticket_id = ANY(%s) ORDER BY at, id""", (ids,)):
                    events_by[e["ticket_id"]].append(e)
        if not tickets:
            return summary
        after = ids[-1]
        _check_batch(conn, tickets, events_by, policies, summary, now, tz)


def _policy(conn, policies: dict, company_id: int | None, day: date) -> dict:
    """Merged policy per (company, reporting day), validated once: a level without recipients must stop
    the job loudly rather than be raised and heard by nobody."""
    from ticketing.policy import company_policy, sla_notify_levels

    key = (company_id, day)
    pol = policies.get(key)
    if pol is None:
        pol = company_policy(conn, company_id, day)
        sla_notify_levels(pol)
        policies[key] = pol
    return pol


def _check_batch(conn, tickets, events_by, policies, summary, now, tz) -> None:
    from ticketing import notifications
    from ticketing.store import add_event

    for t in tickets:
        summary["tickets"] += 1
        pol = _policy(conn, policies, t["company_id"], t["reported_at"].astimezone(tz).date())
        staff_view = None                         # loaded on the ticket's first raised level only
        for st in ticket_clocks(t, events_by[t["id"]], pol, now, tz):
            levels = []
            if st.warn and st.status in ("warning", "breached"):
                levels.append("warning")
            if st.status == "breached" and st.stopped_at is None:
                levels.append("breach")
                if st.level:
                    ladder = [s["level"] for s in sorted(pol["sla"]["escalation"], key=lambda s: s["share"])]
                    levels.extend(ladder[:ladder.index(st.level) + 1])
            if (st.name == "arrive" and "breach" in levels and t["type"] == "temp_test" and t["channel"] != "auto"
                    and pol["temp_test"].get("deem_late_on_breach")):
                summary["deemed_late"] += _deem_late(conn, t, now)
            for level in levels:
                row = conn.execute("""INSERT INTO ticket_sla_notice (ticket_id, clock, level, at)
                                      VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING ticket_id""",
                                   (t["id"], st.name, level, now)).fetchone()
                if row is None:
                    continue
                if staff_view is None:
                    staff_view = notifications.load_sla_ticket(conn, t["id"])
                notice = notifications.on_sla_level(conn, staff_view, clock=st.name, level=level, elapsed=st.elapsed,
                                                    limit=st.limit, due_at=st.due_at, policy=pol, now=now, tz=tz)
                action = {"warning": "sla_warning", "breach": "sla_breach"}.get(level, "sla_escalate")
                add_event(conn, t["id"], at=now, actor="sla", action=action, from_status=t["status"],
                          to_status=t["status"], data={"clock": st.name, "level": level,
                                                       "elapsed_minutes": round(st.elapsed.total_seconds() / 60, 1),
                                                       "limit_minutes": st.limit.total_seconds() / 60,
                                                       **notice.as_event_data()})
                summary["warning" if level == "warning" else "breach" if level == "breach" else "escalations"] += 1
                summary["notifications"] += notice.queued
                summary["unheld"] += len(notice.unheld)


def _deem_late(conn, ticket: dict, now: datetime) -> int:
    """R12 (where the region says so): a 测温 not done in time is deemed < 14 ℃ — once per ticket, and
    only when no test was recorded."""
    from ticketing.temptest import record_company_late

    if ticket["household_id"] is None or ticket["status"] == "reopened":
        return 0
    done = conn.execute("SELECT 1 FROM temp_test WHERE ticket_id = %s LIMIT 1", (ticket["id"],)).fetchone()
    if done:
        return 0
    record_company_late(conn, ticket["id"], actor="sla", now=now, note="测温超时未完成 (R12)")
    return 1
