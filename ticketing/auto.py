"""Tickets from telemetry (proactive service, R13, R48): idempotent, run by the scheduler.

One pass (``run_auto_tickets(conn, now)``), in this order:

1. **Substation faults** (R48): secondary supply collapse (recent mean fell ≥ ``supply_drop_k`` below its
   baseline, or below ``supply_min_c``), pump stopped (last ``pump_status`` 0), device offline
   (``device_status`` not seen for ``offline_minutes``, or the station's points went silent). A fault
   opens ONE ``incident`` per substation and links every household it serves (``ticket_household``,
   network topology R25) — one incident, not a storm of alarms (field-lessons.md "Stale data").
   While it is open no per-household 测温 ticket is opened for those households.
2. **Incident recovery**: the fault is gone AND the linked households' rooms are back at or above the
   threshold over ``recover_hours`` → ``auto_close``.
3. **Low room temperature**: a household whose counted rooms (R4) stayed below the threshold every hour
   for ``low_temp.hours`` with coverage ≥ ``min_coverage`` gets ONE auto 测温 ticket (a partial unique
   index in schema.sql refuses a second open one). It closes only after the temperature has recovered.
4. **Sensor offline**: a room sensor silent for ``sensor_offline.hours`` opens ONE maintenance ticket;
   when many sensors go silent at once (``storm_share`` of those reporting, ≥ ``storm_min``) the cause
   is upstream (broker, gateway, ingest): one platform incident instead. Closed when data returns.

Only quality-0 samples count (core/quality.py). Thresholds come from the policy in force (analytics R1).
Heat-related checks run only inside the company's statutory season (R41); open auto 测温/incident tickets
are closed with reason ``season_ended`` when it ends. Windows and thresholds of this pass are read from
the default policy (``auto`` in policy.yaml); the temperature threshold is per company and day.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from psycopg.rows import dict_row

from notify.outbox import enqueue
from ticketing import store
from ticketing.model import OPEN
from ticketing.policy import company_policy, local_day, parse_duration
from ticketing.sla import in_season

log = logging.getLogger(__name__)

ACTOR = "auto"
_OPEN = sorted(OPEN)
_CAL = """CASE WHEN (s.calibration_valid_from IS NULL OR s.calibration_valid_from <= r.time)
                AND (s.calibration_valid_to IS NULL OR s.calibration_valid_to > r.time)
               THEN s.calibration_offset ELSE 0 END"""


def _policy(conn, company_id, now, cache):
    key = (company_id, local_day(now))
    if key not in cache:
        cache[key] = company_policy(conn, company_id, key[1])
    return cache[key]


# ------------------------------------------------------------------------------------------ substations


def substation_faults(conn, now: datetime, cfg: dict) -> dict[int, list[dict]]:
    """Fault findings per substation id at ``now`` (empty list = healthy or no data)."""
    window = parse_duration(cfg["window"])
    baseline = parse_duration(cfg["baseline"])
    offline = timedelta(minutes=float(cfg["offline_minutes"]))
    out: dict[int, list[dict]] = {}
    with conn.cursor(row_factory=dict_row) as cur:
        supply = cur.execute(
            f"""SELECT s.substation_id,
                       avg(r.value + {_CAL}) FILTER (WHERE r.time >= %(w0)s) AS recent,
                       count(*) FILTER (WHERE r.time >= %(w0)s) AS n_recent,
                       avg(r.value + {_CAL}) FILTER (WHERE r.time < %(w0)s) AS base,
                       count(*) FILTER (WHERE r.time < %(w0)s) AS n_base
                  FROM sensor s JOIN readings r ON r.sensor_id = s.id
                 WHERE s.metric = 'supply_temp_2' AND s.substation_id IS NOT NULL AND r.quality = 0
                   AND r.time >= %(b0)s AND r.time <= %(now)s
                 GROUP BY s.substation_id""",
            {"w0": now - window, "b0": now - window - baseline, "now": now}).fetchall()
        pumps = cur.execute(
            """SELECT DISTINCT ON (s.substation_id, s.id) s.substation_id, s.key, r.value, r.time
                 FROM sensor s JOIN readings r ON r.sensor_id = s.id
                WHERE s.metric = 'pump_status' AND s.substation_id IS NOT NULL AND r.quality = 0
                  AND r.time >= %s AND r.time <= %s
                ORDER BY s.substation_id, s.id, r.time DESC""", (now - window, now)).fetchall()
        silent = cur.execute(
            """SELECT s.substation_id, s.device_id, max(r.time) AS last_time
                 FROM sensor s JOIN readings r ON r.sensor_id = s.id
                WHERE s.substation_id IS NOT NULL AND s.household_id IS NULL AND r.time >= %s AND r.time <= %s
                GROUP BY s.substation_id, s.device_id
               HAVING max(r.time) < %s""", (now - window - baseline, now, now - offline)).fetchall()
        status = cur.execute(
            """SELECT DISTINCT s.substation_id, d.device_id, d.last_seen, d.connected, d.last_error
                 FROM device_status d JOIN sensor s ON s.device_id = d.device_id
                WHERE s.substation_id IS NOT NULL AND s.household_id IS NULL
                  AND NOT d.connected AND (d.last_seen IS NULL OR d.last_seen < %s)""",
            (now - offline,)).fetchall()
    for r in supply:
        if not r["n_recent"]:
            continue
        findings = []
        if r["n_base"] and r["base"] - r["recent"] >= float(cfg["supply_drop_k"]):
            findings.append({"rule": "supply_collapse", "recent_c": round(r["recent"], 1),
                             "baseline_c": round(r["base"], 1)})
        elif r["recent"] < float(cfg["supply_min_c"]):
            findings.append({"rule": "supply_below_floor", "recent_c": round(r["recent"], 1),
                             "floor_c": float(cfg["supply_min_c"])})
        out.setdefault(r["substation_id"], []).extend(findings)
    if cfg.get("pump_stop"):
        for r in pumps:
            if r["value"] < 0.5:
                out.setdefault(r["substation_id"], []).append({"rule": "pump_stop", "point": r["key"],
                                                               "at": r["time"].isoformat()})
    seen = set()
    for r in silent:
        seen.add((r["substation_id"], r["device_id"]))
        out.setdefault(r["substation_id"], []).append({"rule": "device_silent", "device_id": r["device_id"],
                                                       "last_reading": r["last_time"].isoformat()})
    for r in status:
        if (r["substation_id"], r["device_id"]) in seen:
            continue
        out.setdefault(r["substation_id"], []).append({
            "rule": "device_offline", "device_id": r["device_id"],
            "last_seen": r["last_seen"].isoformat() if r["last_seen"] else None, "error": r["last_error"]})
    return out


def _open_incident(conn, substation_id: int) -> dict | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("""SELECT id, status, company_id FROM ticket WHERE channel = 'auto' AND type = 'incident'
                               AND substation_id = %s AND status = ANY(%s)""", (substation_id, _OPEN)).fetchone()


def _notify_households(conn, incident_id: int, household_ids: list[int], kind: str, cfg: dict, policy: dict) -> int:
    """Outage notice to each affected household (R26: notify within 2 h); idempotent per incident/kind."""
    if not cfg.get("notify_households") or not household_ids:
        return 0
    row = conn.execute("""SELECT t.no, c.name FROM ticket t LEFT JOIN company c ON c.id = t.company_id
                           WHERE t.id = %s""", (incident_id,)).fetchone()
    message = cfg[f"notice_{kind}"].format(ticket_no=row[0], service_phone=policy["service_phone"])
    n = 0
    for hid in household_ids:
        if enqueue(conn, idempotency_key=f"ticket:{incident_id}:incident_{kind}:household:{hid}", household_id=hid,
                   channel="sms", template="generic", context={"company_name": row[1] or "", "message": message},
                   source="ticketing") is not None:
            n += 1
    return n


def _link_households(conn, incident_id: int, substation_id: int, now: datetime) -> list[int]:
    rows = conn.execute(
        """INSERT INTO ticket_household (ticket_id, household_id)
           SELECT %s, h.id FROM household h JOIN unit u ON u.id = h.unit_id JOIN building b ON b.id = u.building_id
             JOIN community c ON c.id = b.community_id
            WHERE c.substation_id = %s AND h.heating_status = 'active'
           ON CONFLICT DO NOTHING RETURNING household_id""", (incident_id, substation_id)).fetchall()
    # per-household auto 测温 tickets already open are linked under the incident (one story, one owner)
    linked = conn.execute(
        """UPDATE ticket t SET parent_id = %s, link_kind = 'incident', updated_at = %s
            WHERE t.channel = 'auto' AND t.type = 'temp_test' AND t.status = ANY(%s) AND t.parent_id IS NULL
              AND t.household_id IN (SELECT household_id FROM ticket_household WHERE ticket_id = %s)
           RETURNING t.id, t.status""", (incident_id, now, _OPEN, incident_id)).fetchall()
    for tid, st in linked:
        store.add_event(conn, tid, at=now, actor=ACTOR, action="link_incident", from_status=st, to_status=st,
                        data={"incident_id": incident_id})
    return [r[0] for r in rows]


def _rooms_recovered(conn, household_ids: list[int], now: datetime, hours: float, threshold: float,
                     min_coverage: float) -> tuple[bool, dict]:
    """True when every counted room sensor with data over the last ``hours`` stayed ≥ threshold each hour,
    and at least one had enough coverage (no data → not proven recovered)."""
    stats = _room_hourly(conn, now, hours, household_ids)
    covered = [s for s in stats if s["hours"] / hours >= min_coverage]
    cold = [s for s in stats if s["min_mean"] < threshold]
    ok = bool(covered) and not cold
    return ok, {"sensors": len(stats), "covered": len(covered), "cold": len(cold)}


def _room_hourly(conn, now: datetime, hours: float, household_ids: list[int] | None = None) -> list[dict]:
    """Per counted room sensor: number of hours (of the last ``hours``) with good samples, min/max hourly mean."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"""WITH hourly AS (
                  SELECT s.household_id, s.id AS sensor_id,
                         floor(extract(epoch FROM (%(now)s - r.time)) / 3600)::int AS bucket,
                         avg(r.value + {_CAL}) AS mean
                    FROM sensor s
                    JOIN household h ON h.id = s.household_id AND h.heating_status = 'active'
                    LEFT JOIN room rm ON rm.id = s.room_id
                    JOIN readings r ON r.sensor_id = s.id
                   WHERE s.metric = 'room_temp' AND coalesce(rm.counts_for_compliance, true)
                     AND r.quality = 0 AND r.time > %(start)s AND r.time <= %(now)s
                     AND (%(ids)s::int[] IS NULL OR s.household_id = ANY(%(ids)s::int[]))
                   GROUP BY 1, 2, 3)
                SELECT household_id, sensor_id, count(*) AS hours, min(mean) AS min_mean, max(mean) AS max_mean
                  FROM hourly GROUP BY household_id, sensor_id""",
            {"now": now, "start": now - timedelta(hours=hours), "ids": household_ids}).fetchall()


# ------------------------------------------------------------------------------------------ the pass


def run_auto_tickets(conn, now: datetime) -> dict:
    """One idempotent pass; returns counts. Safe to call every few minutes and concurrently (the second
    concurrent caller skips). The caller commits."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    got = conn.execute("SELECT pg_try_advisory_xact_lock(hashtext('heatdesk.ticketing.auto'))").fetchone()[0]
    if not got:
        return {"skipped": "another run holds the lock"}
    summary = {"incidents_opened": 0, "incidents_closed": 0, "households_linked": 0, "temp_tests_opened": 0,
               "temp_tests_closed": 0, "maintenance_opened": 0, "maintenance_closed": 0,
               "platform_incidents_opened": 0, "suppressed_by_incident": 0, "households_notified": 0}
    cache: dict = {}
    base = _policy(conn, None, now, cache)["auto"]
    day = local_day(now)

    def heating(company_id) -> bool:
        """Heat-related auto tickets only in the statutory season (R41) of the company's region: off
        season, cold rooms and cold secondary supply are normal."""
        return in_season(day, _policy(conn, company_id, now, cache)["season"])

    with conn.cursor() as cur:
        sub_company = dict(cur.execute("""SELECT s.id, br.company_id FROM substation s
                                           JOIN branch br ON br.id = s.branch_id""").fetchall())

    # 1. substation faults → one incident each
    faults = substation_faults(conn, now, base["substation"])
    for sub_id, findings in faults.items():
        if not findings or not heating(sub_company.get(sub_id)):
            continue
        inc = _open_incident(conn, sub_id)
        if inc is None:
            res = store.create_ticket(conn, type="incident", channel="auto", actor=ACTOR, now=now,
                                      substation_id=sub_id, priority=1, category="outage",
                                      auto_key=f"substation:{sub_id}", link_duplicates=False,
                                      description="换热站故障: " + ", ".join(sorted({f['rule'] for f in findings})))
            store.add_event(conn, res.ticket_id, at=now, actor=ACTOR, action="fault", from_status="new",
                            to_status="new", data={"findings": findings})
            summary["incidents_opened"] += 1
            inc_id = res.ticket_id
        else:
            inc_id = inc["id"]
        new = _link_households(conn, inc_id, sub_id, now)
        summary["households_linked"] += len(new)
        summary["households_notified"] += _notify_households(conn, inc_id, new, "opened", base["substation"],
                                                             _policy(conn, None, now, cache))

    # 2. incident recovery: fault gone and rooms back above threshold
    with conn.cursor(row_factory=dict_row) as cur:
        open_incidents = cur.execute(
            """SELECT id, status, substation_id, company_id FROM ticket
                WHERE channel = 'auto' AND type = 'incident' AND substation_id IS NOT NULL AND status = ANY(%s)""",
            (_OPEN,)).fetchall()
    for inc in open_incidents:
        if not heating(inc["company_id"]):
            store.transition(conn, inc["id"], "auto_close", actor=ACTOR, now=now, data={"reason": "season_ended"})
            summary["incidents_closed"] += 1
            continue
        if faults.get(inc["substation_id"]):
            continue
        pol = _policy(conn, inc["company_id"], now, cache)
        hh = [r[0] for r in conn.execute("SELECT household_id FROM ticket_household WHERE ticket_id = %s",
                                         (inc["id"],)).fetchall()]
        ok, stats = _rooms_recovered(conn, hh, now, float(pol["auto"]["substation"]["recover_hours"]),
                                     pol["threshold_c"], float(pol["auto"]["low_temp"]["min_coverage"]))
        if ok:
            store.transition(conn, inc["id"], "auto_close", actor=ACTOR, now=now,
                             data={"reason": "recovered", "rooms": stats})
            summary["incidents_closed"] += 1
            summary["households_notified"] += _notify_households(conn, inc["id"], hh, "closed",
                                                                 pol["auto"]["substation"], pol)

    # 3. low room temperature → one auto 测温 per household; recovery closes it
    lt = base["low_temp"]
    hours = float(lt["hours"])
    with conn.cursor(row_factory=dict_row) as cur:
        blocked = {r["household_id"] for r in cur.execute(
            """SELECT th.household_id FROM ticket_household th JOIN ticket t ON t.id = th.ticket_id
                WHERE t.type = 'incident' AND t.status = ANY(%s)""", (_OPEN,))}
        open_auto = {r["household_id"]: r for r in cur.execute(
            """SELECT id, household_id, status, company_id FROM ticket
                WHERE channel = 'auto' AND type = 'temp_test' AND status = ANY(%s)""", (_OPEN,))}
        customer_open = {r["household_id"] for r in cur.execute(
            """SELECT DISTINCT household_id FROM ticket WHERE channel <> 'auto' AND household_id IS NOT NULL
                 AND status = ANY(%s) AND (type = 'temp_test' OR low_temperature)""", (_OPEN,))}
        companies = {r["id"]: r["company_id"] for r in cur.execute(
            """SELECT h.id, br.company_id FROM household h JOIN unit u ON u.id = h.unit_id
                 JOIN building b ON b.id = u.building_id JOIN community c ON c.id = b.community_id
                 JOIN substation s ON s.id = c.substation_id JOIN branch br ON br.id = s.branch_id""")}
    per_household: dict[int, list[dict]] = {}
    for s in _room_hourly(conn, now, hours):
        per_household.setdefault(s["household_id"], []).append(s)
    for hid, sensors in per_household.items():
        if hid in open_auto or hid in customer_open or not heating(companies.get(hid)):
            continue
        pol = _policy(conn, companies.get(hid), now, cache)
        cold = [s for s in sensors if s["hours"] / hours >= float(lt["min_coverage"])
                and s["max_mean"] < pol["threshold_c"]]
        if not cold:
            continue
        if hid in blocked:
            summary["suppressed_by_incident"] += 1
            continue
        res = store.create_ticket(
            conn, type="temp_test", channel="auto", actor=ACTOR, now=now, household_id=hid, priority=2,
            category="low_temp", auto_key=f"low_temp:{hid}", link_duplicates=False,
            description=f"室温连续 {hours:g} 小时低于 {pol['threshold_c']:g} ℃ (IoT, 疑似不达标, R13)")
        store.add_event(conn, res.ticket_id, at=now, actor=ACTOR, action="evidence", from_status="new",
                        to_status="new",
                        data={"rule": "low_temp", "hours": hours, "threshold_c": pol["threshold_c"],
                              "sensors": [{"sensor_id": s["sensor_id"], "hours": s["hours"],
                                           "max_hourly_mean_c": round(s["max_mean"], 1)} for s in cold]})
        summary["temp_tests_opened"] += 1
    for hid, t in open_auto.items():
        if not heating(t["company_id"]):
            store.transition(conn, t["id"], "auto_close", actor=ACTOR, now=now, data={"reason": "season_ended"})
            summary["temp_tests_closed"] += 1
            continue
        pol = _policy(conn, t["company_id"], now, cache)
        ok, stats = _rooms_recovered(conn, [hid], now, float(lt["recover_hours"]), pol["threshold_c"],
                                     float(lt["min_coverage"]))
        if ok:
            store.transition(conn, t["id"], "auto_close", actor=ACTOR, now=now,
                             data={"reason": "recovered", "rooms": stats})
            summary["temp_tests_closed"] += 1

    # 4. offline room sensors → maintenance tickets, or one platform incident in a storm
    _sensor_offline(conn, now, base["sensor_offline"], summary,
                    in_season_households={h for h, c in companies.items() if heating(c)})
    return summary


def _sensor_offline(conn, now: datetime, cfg: dict, summary: dict, in_season_households: set[int]) -> None:
    """Room sensors of households in their heating season only (battery devices may sleep off season)."""
    silent_after = now - timedelta(hours=float(cfg["hours"]))
    lookback = now - parse_duration(cfg["lookback"])
    with conn.cursor(row_factory=dict_row) as cur:
        # last reading per room sensor within the lookback (index on (sensor_id, time))
        rows = cur.execute(
            """SELECT s.id AS sensor_id, s.key, s.household_id, lr.last_time
                 FROM sensor s
                 JOIN household h ON h.id = s.household_id AND h.heating_status = 'active'
                 CROSS JOIN LATERAL (SELECT max(r.time) AS last_time FROM readings r
                                      WHERE r.sensor_id = s.id AND r.time >= %s AND r.time <= %s) lr
                WHERE s.metric = 'room_temp' AND lr.last_time IS NOT NULL""", (lookback, now)).fetchall()
        open_maint = {r["sensor_id"]: r for r in cur.execute(
            """SELECT id, sensor_id, status FROM ticket WHERE channel = 'auto' AND type = 'maintenance'
                 AND sensor_id IS NOT NULL AND status = ANY(%s)""", (_OPEN,))}
        platform = cur.execute(
            """SELECT id FROM ticket WHERE channel = 'auto' AND type = 'incident' AND auto_key = 'platform:sensors'
                 AND status = ANY(%s)""", (_OPEN,)).fetchone()
    rows = [r for r in rows if r["household_id"] in in_season_households]
    silent = [r for r in rows if r["last_time"] < silent_after]
    storm = len(silent) >= int(cfg["storm_min"]) and rows and len(silent) / len(rows) >= float(cfg["storm_share"])
    if storm:
        if platform is None:
            res = store.create_ticket(conn, type="incident", channel="auto", actor=ACTOR, now=now, priority=1,
                                      category="platform", auto_key="platform:sensors", link_duplicates=False,
                                      description=f"{len(silent)}/{len(rows)} 个室温采集器同时离线: 检查网关/消息服务/采集服务")
            store.add_event(conn, res.ticket_id, at=now, actor=ACTOR, action="fault", from_status="new",
                            to_status="new", data={"rule": "sensor_storm", "silent": len(silent),
                                                   "reporting": len(rows)})
            summary["platform_incidents_opened"] += 1
        return
    if platform is not None and not silent:
        store.transition(conn, platform["id"], "auto_close", actor=ACTOR, now=now,
                         data={"reason": "sensors_back", "reporting": len(rows)})
    for r in silent:
        if r["sensor_id"] in open_maint:
            continue
        store.create_ticket(conn, type="maintenance", channel="auto", actor=ACTOR, now=now,
                            household_id=r["household_id"], sensor_id=r["sensor_id"], priority=3,
                            category="sensor_offline", auto_key=f"sensor:{r['key']}", link_duplicates=False,
                            description=f"室温采集器 {r['key']} 自 {r['last_time'].isoformat()} 起无数据")
        summary["maintenance_opened"] += 1
    back = {r["sensor_id"] for r in rows if r["last_time"] >= silent_after}
    for sid, t in open_maint.items():
        if sid in back:
            store.transition(conn, t["id"], "auto_close", actor=ACTOR, now=now, data={"reason": "sensor_back"})
            summary["maintenance_closed"] += 1


# ------------------------------------------------------------------------------------------ scheduling


def run_auto_job(db_url: str, now: datetime | None = None) -> dict:
    """One scheduled pass in its own transaction (the wall clock is read here, at the edge)."""
    from core.db import connect

    now = now or datetime.now(timezone.utc)
    with connect(db_url) as conn:
        summary = run_auto_tickets(conn, now)
        conn.commit()
    log.info("auto tickets: %s", summary)
    return summary


def run_sla_job(db_url: str, now: datetime | None = None) -> dict:
    from core.db import connect
    from ticketing.sla import run_sla_checks

    now = now or datetime.now(timezone.utc)
    with connect(db_url) as conn:
        summary = run_sla_checks(conn, now)
        conn.commit()
    if summary["warning"] or summary["breach"] or summary["escalations"]:
        log.info("sla checks: %s", summary)
    return summary


def schedule_auto_tickets(scheduler, db_url: str, *, auto_every_s: int = 300, sla_every_s: int = 60) -> list:
    """Add the auto-ticket pass and the SLA checker to an APScheduler scheduler; returns the jobs.

    Both are idempotent (advisory lock, partial unique indexes, ticket_sla_notice), so a missed or
    doubled run is harmless; ``max_instances=1`` and ``coalesce`` keep a slow run from piling up.
    """
    from apscheduler.triggers.interval import IntervalTrigger

    return [
        scheduler.add_job(run_auto_job, IntervalTrigger(seconds=auto_every_s), args=[db_url],
                          id="ticketing.auto_tickets", replace_existing=True, max_instances=1, coalesce=True),
        scheduler.add_job(run_sla_job, IntervalTrigger(seconds=sla_every_s), args=[db_url],
                          id="ticketing.sla_checks", replace_existing=True, max_instances=1, coalesce=True),
    ]
