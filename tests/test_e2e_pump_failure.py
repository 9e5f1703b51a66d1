"""End to end: a substation pump failure, from the simulated city to the dunning decisions.

Issues "compliance", "ticketing" and "dunning": one scenario through the real services —

  simulators (city, thermal model, MQTT backfill)  →  broker  →  `python -m ingest` (MQTT adapter, quality,
  writer)  →  PostgreSQL  →  analytics compliance job  →  ticketing auto-ticket passes  →  dunning job.

The story: S02's circulation pump stops at local midnight and restarts 24 h later, a few days before the
first dunning step of a past season. Room thermometers are backfilled over MQTT with their true (past)
timestamps. The Modbus/OPC UA simulators only serve live values, so the substations' history for those
days is written through ingest's own pipeline (IngestService: quality stage, batcher, writer), computed
by the same deterministic thermal model the publisher ran.

"Affected" is derived from the scenario and the city, never from results: the households of the failed
substation with active heating and at least one counted room (R4) whose thermometer the publisher
reported readings for (vendor C sends no timestamp and is never backfilled).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import numpy as np
import psycopg

from adapters.config import load_devices
from analytics import store as astore
from analytics.job import run_compliance
from analytics.policy import default_table
from core.config import DEFAULT_DEVICES_FILE, Settings
from core.db import connect, make_pool
from core.pii import FieldCipher, new_key_hex
from core.quality import Quality
from dunning import job as dunning_job
from dunning.ledger import generate_bills, record_payment
from dunning.policy import default_book, season_label
from ingest.households import import_households
from ingest.service import IngestService
from ingest.weather import import_weather
from simulators.city import generate_city
from simulators.run import sensor_meta
from simulators.scenario import ResolvedScenario, load_scenario
from simulators.thermal import ThermalModel
from simulators.weather import OutdoorModel
from tests.e2e_support import (TZ, counted_sensor_rooms, ingest_devices_yaml, local_midnight, pick_calendar,
                               substation_deliveries, truth_daily_means, write_scenario)
from tests.helpers import free_port, wait_for
from tests.test_adapters_mqtt import forget_session
from ticketing.auto import run_auto_tickets

ROOT = Path(__file__).resolve().parent.parent
SEED = 7
HOUSEHOLDS = 32                    # 8 per substation
FAILED = "S02"
SUBSTATION_STEP_S = 600            # substation history resolution (ticketing's silence limit is 30 min)
COMPANY = "HD"


def q(url: str, sql: str, params=()) -> list[tuple]:
    with psycopg.connect(url) as c:
        return c.execute(sql, params).fetchall()


def test_pump_failure_through_ingest_compliance_ticketing_and_dunning(fresh_db_url, mqtt_url, topic_prefix,
                                                                        tmp_path):
    url = fresh_db_url
    t_start = time.monotonic()

    # ------------------------------------------------------------------ the calendar (from the policies)
    city = generate_city(SEED, HOUSEHOLDS)
    book = default_book()
    policy = book.resolve(city.region_code, COMPANY)
    step1 = policy.ladder[0]
    region_policy = default_table()
    outdoor_plain = OutdoorModel(SEED)
    cal = pick_calendar(dt.datetime.now(TZ).date(),
                        first_step_offset_days=step1.offset_days, due_date=policy.due_date,
                        season_contains=lambda d: region_policy.resolve(city.region_code, d).season.season_of(d)
                        is not None,
                        outdoor_mean=outdoor_plain.daily_mean, design_outdoor_c=city.design_outdoor_temp_c)
    normal_day, fault_day, recovery_day, recovered_day = cal.days
    fault_start = local_midnight(fault_day)
    fault_end = local_midnight(recovery_day)                     # 24 h: exactly the whole local fault_day

    # ------------------------------------------------------------------ scenario, devices file, env
    scenario_file = tmp_path / "scenario.yaml"
    write_scenario(scenario_file, start=cal.end, fault_start=fault_start,
                   fault_hours=(fault_end - fault_start).total_seconds() / 3600, substations=[FAILED])
    scenario = load_scenario(scenario_file)
    devices_file = tmp_path / "devices.yaml"
    horizon_s = (dt.datetime.now(dt.timezone.utc) - cal.start).total_seconds() + 86400
    devices_file.write_text(ingest_devices_yaml(max_age_s=horizon_s), encoding="utf-8")
    cid = f"t-e2e-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEATDESK_")}
    env.update(HEATDESK_DATABASE_URL=url, HEATDESK_MQTT_URL=mqtt_url, HEATDESK_TOPIC_ROOT=topic_prefix,
               HEATDESK_MODBUS_PORT=str(free_port()), HEATDESK_OPCUA_PORT=str(free_port()),
               HEATDESK_DEVICES_FILE=str(devices_file), HEATDESK_DATA_DIR=str(tmp_path / "data"),
               HEATDESK_MQTT_CLIENT_ID=cid, HEATDESK_MQTT_SESSION_EXPIRY_S="600", HEATDESK_BATCH_MAX_AGE_S="0.2",
               PYTHONUNBUFFERED="1")
    sim_base = [sys.executable, "-m", "simulators", "--seed", str(SEED), "--households", str(HOUSEHOLDS),
                "--scenario", str(scenario_file)]
    n_days = len(cal.days)

    # ------------------------------------------------------------------ the register and the weather
    csv_path, weather_path = tmp_path / "households.csv", tmp_path / "weather.csv"
    subprocess.run(sim_base + ["--export-csv", str(csv_path), "--export-weather", str(weather_path),
                               "--weather-days", str(n_days + 1), "--backfill-days", str(n_days), "--export-only"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=60)
    assert csv_path.read_bytes() == city.households_csv().encode("utf-8"), "simulator and test must see one city"
    with connect(url) as conn:
        summary = import_households(conn, csv_path, FieldCipher(new_key_hex()))
        assert not summary.errors, summary
        wsum = import_weather(conn, weather_path)
        assert not wsum.errors, wsum
        conn.commit()
    # the official daily means are there for every day (the R6 extreme-cold exemption is really evaluated)
    assert {d for (d,) in q(url, "SELECT day FROM weather_daily WHERE station_code = %s",
                            (city.station_code,))} >= set(cal.days)

    # ------------------------------------------------------------------ ingest, as its own process
    log = open(tmp_path / "ingest.log", "wb")
    ingest = subprocess.Popen([sys.executable, "-m", "ingest"], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    sub_pool = None
    sub_service = None
    try:
        wait_for(lambda: ingest.poll() is not None or q(url, "SELECT 1 FROM device_status WHERE device_id = "
                                                            "'room-thermometers' AND connected"), 30,
                 message="ingest connected to the broker")
        assert ingest.poll() is None, (tmp_path / "ingest.log").read_text(errors="replace")

        # substation history through ingest's pipeline (quality → batcher → writer), same thermal model
        probe = ThermalModel(city, OutdoorModel(SEED))
        resolved = ResolvedScenario(scenario, cal.end.timestamp(), sensor_keys=probe.sensor_keys,
                                    sensor_meta=sensor_meta(probe), seed=SEED)
        model = ThermalModel(city, OutdoorModel(SEED, cold_snaps=resolved.cold_snaps()), pump_on=resolved.pump_on)
        config = load_devices(DEFAULT_DEVICES_FILE, env={"HEATDESK_MODBUS_PORT": env["HEATDESK_MODBUS_PORT"],
                                                         "HEATDESK_OPCUA_PORT": env["HEATDESK_OPCUA_PORT"]})
        deliveries, truth = substation_deliveries(model, config, cal.start, cal.end, SUBSTATION_STEP_S)
        settings = Settings(database_url=url, data_dir=tmp_path / "sub-data", batch_max_age_s=0.2)
        sub_pool = make_pool(url, min_size=1, max_size=2, name="e2e-substations")
        sub_service = IngestService(sub_pool, settings=settings, ranges=dict(config.ranges),
                                    spool_dir=tmp_path / "sub-spool")
        sub_service.start()

        for d in deliveries:
            sub_service.submit(d)
        # room thermometers: the simulators' backfill over the real broker (while the substations are written)
        stats_file = tmp_path / "published.json"
        sim = subprocess.run(sim_base + ["--mqtt-url", mqtt_url, "--topic-root", topic_prefix,
                                         "--backfill-days", str(n_days), "--no-modbus", "--no-opcua",
                                         "--exit-after", "0", "--stats-file", str(stats_file)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
        assert sim.returncode == 0, sim.stdout[-2000:] + sim.stderr[-2000:]
        assert sub_service.drain(60), sub_service.status()
        sub_rows = sum(len(d.readings) for d in deliveries)
        assert sub_service.totals["inserted"] == sub_rows, sub_service.status()

        published = json.loads(stats_file.read_text())
        expected = {k: v["expected_rows"] for k, v in published["per_sensor"].items() if v["expected_rows"]}
        assert published["malformed_messages"] == 0 and published["duplicate_messages"] == 0
        assert sum(expected.values()) == published["expected_rows"] > 0

        def room_rows() -> int:
            return q(url, "SELECT count(*) FROM readings r JOIN sensor s ON s.id = r.sensor_id "
                          "WHERE s.metric = 'room_temp'")[0][0]

        wait_for(lambda: room_rows() >= published["expected_rows"], 60,
                 message=f"{published['expected_rows']} room readings in the database")
        ingest.send_signal(signal.SIGTERM)
        assert ingest.wait(30) == 0, (tmp_path / "ingest.log").read_text(errors="replace")[-3000:]
    finally:
        if sub_service is not None:
            sub_service.stop()
        if sub_pool is not None:
            sub_pool.close()
        if ingest.poll() is None:
            ingest.kill()
            ingest.wait(10)
        log.close()
        forget_session(mqtt_url, f"{cid}-room-thermometers")

    # none lost, none duplicated, per sensor; every thermometer linked to its room, nothing rejected
    per_sensor = dict(q(url, """SELECT s.key, count(*) FROM readings r JOIN sensor s ON s.id = r.sensor_id
                                WHERE s.metric = 'room_temp' GROUP BY s.key"""))
    assert per_sensor == expected
    # past timestamps are accepted as good (no clock_skew); the only other quality allowed is ingest's
    # stuck-value flag (R16/field-lessons), and only on a reading that repeats its predecessor's value
    # (a floor-heated flat can sit on one 0.1 ℃ step for hours)
    flagged = q(url, """SELECT key, time, value, quality, prev FROM (
                          SELECT s.key, r.time, r.value, r.quality,
                                 lag(r.value) OVER (PARTITION BY r.sensor_id ORDER BY r.time) AS prev
                            FROM readings r JOIN sensor s ON s.id = r.sensor_id WHERE s.metric = 'room_temp') x
                        WHERE quality <> %s""", (int(Quality.GOOD),))
    assert all(f[3] == Quality.STALE and f[2] == f[4] for f in flagged), flagged
    assert q(url, "SELECT count(*) FROM sensor WHERE metric = 'room_temp' AND room_id IS NULL")[0][0] == 0
    assert q(url, "SELECT count(*) FROM rejects")[0][0] == 0
    t_ingested = time.monotonic()

    # ------------------------------------------------------------------ who is affected (scenario + city)
    counted = counted_sensor_rooms(city)
    reporting = {h.code for h in city.households
                 if any(f"room:{h.code}:{r}:room_temp" in expected for r in counted[h.code])}
    active = {h.code for h in city.households if h.heating_status == "active"}
    # R8: households billed by metered heat follow their contract: their days are exempt, never judged
    season_policy = region_policy.resolve(city.region_code, cal.days[0])
    metered = {h.code for h in city.households
               if season_policy.metered_exempt and h.billing_method == "two_part_meter"}
    judged = (reporting & active) - metered
    failed_subs = {s for f in scenario.faults if f.kind == "pump_failure" for s in f.targets.substations}
    by_sub = {h.code: h.substation_code for h in city.households}
    affected = {c for c in judged if by_sub[c] in failed_subs}
    unaffected = judged - affected
    assert affected and unaffected, "the city must have both affected and unaffected households"
    ids = dict(q(url, "SELECT code, id FROM household"))

    # ------------------------------------------------------------------ compliance (analytics job)
    with connect(url) as conn:
        astore.mirror_policies(conn)
        conn.commit()
        run_compliance(conn, cal.days[0], cal.days[-1], now=cal.end)
    verdict = {(code, day): status for code, day, status in q(
        url, """SELECT h.code, v.day, v.status FROM compliance_household_day v JOIN household h ON h.id = v.household_id
                WHERE v.day BETWEEN %s AND %s""", (cal.days[0], cal.days[-1]))}

    def non_compliant_on(day: dt.date) -> set[str]:
        return {c for (c, d), s in verdict.items() if d == day and s == "non_compliant"}

    # exactly the affected households are non-compliant on the whole-day failure, nobody on the normal day
    assert non_compliant_on(fault_day) == affected
    assert non_compliant_on(normal_day) == set()
    for code in judged:
        assert verdict.get((code, normal_day)) == "compliant", code
        assert verdict.get((code, fault_day)) == ("non_compliant" if code in affected else "compliant"), code
    for code in unaffected:
        assert all(verdict.get((code, d)) == "compliant" for d in cal.days), code
    # recovery days: the flats' own heat capacity decides, so the simulator's noise-free model is the oracle
    truth_means = truth_daily_means(truth, cal.days)
    threshold = region_policy.resolve(city.region_code, fault_day).compare_c
    for code in affected:
        for day in (recovery_day, recovered_day):
            means = [truth_means[(f"room:{code}:{r}:room_temp", day)] for r in counted[code]
                     if f"room:{code}:{r}:room_temp" in expected]
            assert all(abs(m - threshold) > 0.3 for m in means), f"{code} {day}: truth too close to the threshold"
            want = "non_compliant" if min(means) < threshold else "compliant"
            assert verdict.get((code, day)) == want, (code, day, means)
        assert verdict[(code, recovered_day)] == "compliant", "recovered within two days"
    # metered and 报停 households with data are exempt (R8, R6–R10); households without data for their
    # counted rooms (no thermometer, vendor C: never backfilled) have no verdict at all
    for code in reporting - judged:
        assert all(verdict.get((code, d)) == "exempt" for d in cal.days), code
    for code in set(by_sub) - reporting:
        assert all((code, d) not in verdict for d in cal.days), code
    t_compliance = time.monotonic()

    # ------------------------------------------------------------------ ticketing: the scheduler's passes
    s02_active = {c for c in active if by_sub[c] in failed_subs}
    passes = []
    with connect(url) as conn:
        now = cal.start + dt.timedelta(hours=1)
        while now < cal.end:
            summary = run_auto_tickets(conn, now)
            conn.commit()
            incidents = conn.execute("""SELECT t.id, s.code, t.status FROM ticket t JOIN substation s
                                        ON s.id = t.substation_id WHERE t.type = 'incident'""").fetchall()
            passes.append((now, summary, incidents))
            now += dt.timedelta(hours=1)
    during = [p for p in passes if fault_start < p[0] <= fault_end]
    before = [p for p in passes if p[0] <= fault_start]
    assert all(not inc for _, _, inc in before), "no incident before the failure"
    # inside the failure: exactly one incident, for the failed substation, open
    for now, summary, incidents in during:
        assert [(code, st in ("closed", "cancelled")) for _, code, st in incidents] == [(FAILED, False)], now
    incident_id = during[0][2][0][0]
    tickets = q(url, "SELECT id, type, channel, substation_id, household_id, status, closed_at FROM ticket")
    assert len([t for t in tickets if t[1] == "incident"]) == 1
    # no per-household ticket storm: no auto 测温 / maintenance tickets at all, for anyone
    assert [t for t in tickets if t[0] != incident_id] == []
    assert sum(p[1]["suppressed_by_incident"] for p in passes) > 0, "cold households were there to suppress"
    linked = {c for (c,) in q(url, """SELECT h.code FROM ticket_household th JOIN household h ON h.id = th.household_id
                                      WHERE th.ticket_id = %s""", (incident_id,))}
    assert linked == s02_active and affected <= linked
    # closed after recovery: not while the pump was off, by the recovery rule, before the story ends
    closes = q(url, """SELECT at, data->>'reason' FROM ticket_event WHERE ticket_id = %s AND action = 'auto_close'""",
               (incident_id,))
    assert len(closes) == 1 and closes[0][1] == "recovered", closes
    closed_at = closes[0][0]
    assert fault_end < closed_at < cal.end
    # the pump running again is not enough: the first passes after the restart keep the incident open
    after_restart = [p for p in passes if fault_end < p[0] <= fault_end + dt.timedelta(hours=3)]
    assert after_restart and all([st not in ("closed", "cancelled") for _, _, st in inc] == [True]
                                 for _, _, inc in after_restart)
    # …and when it closes, the simulator's rooms of the affected households are back above the threshold
    i_close = int(np.searchsorted(truth.times, closed_at.timestamp(), side="right")) - 1
    keys = [f"room:{c}:{r}:room_temp" for c in affected for r in counted[c] if f"room:{c}:{r}:room_temp" in expected]
    room_at_close = truth.room_c[i_close, [truth.sensor_keys.index(k) for k in keys]]
    assert (room_at_close >= threshold).all(), dict(zip(keys, room_at_close.round(1)))
    status_after = {t[0]: t[5] for t in tickets}
    assert status_after[incident_id] == "closed"
    # the households were told twice (R26): opened and closed, once each
    notices = q(url, "SELECT count(*) FROM notify_outbox WHERE source = 'ticketing'")[0][0]
    assert notices == 2 * len(s02_active)
    t_ticketing = time.monotonic()

    # ------------------------------------------------------------------ dunning
    with connect(url) as conn:
        created = generate_bills(conn, COMPANY, cal.season_year)
        assert created == len(city.households)
        bills = dict(conn.execute("SELECT household_id, amount FROM dunning_bill").fetchall())
        # every other household (by code) has paid in full; the rest are in arrears
        payers = {c for i, c in enumerate(sorted(by_sub)) if i % 2 == 0}
        paid_at = local_midnight(cal.as_of - dt.timedelta(days=2)) + dt.timedelta(hours=10)
        for code in payers:
            record_payment(conn, household_id=ids[code], amount=bills[ids[code]], channel="bank",
                           external_id=f"e2e-{code}", paid_at=paid_at)
        conn.commit()
        run_now = local_midnight(cal.as_of) + dt.timedelta(hours=9, minutes=30)
        first = dunning_job.run(conn, COMPANY, cal.as_of, now=run_now)
    arrears = set(by_sub) - payers
    groups = {"affected_arrears": affected & arrears, "affected_paid": affected & payers,
              "other_arrears": arrears - affected, "other_paid": payers - affected}
    assert all(groups.values()), {k: sorted(v) for k, v in groups.items()}
    assert first.accounts == len(city.households)
    season = season_label(cal.season_year)

    def decisions(run_id: int) -> dict[str, tuple]:
        return {r[0]: r[1:] for r in q(url, """SELECT h.code, d.action, d.reasons, d.step, d.outbox_id, d.ticket_id
                                               FROM dunning_decision d JOIN household h ON h.id = d.household_id
                                              WHERE d.run_id = %s""", (run_id,))}

    dec = decisions(first.run_id)
    outbox = {r[0]: r[1:] for r in q(url, """SELECT h.code, o.template_id, o.channel FROM notify_outbox o
                                            JOIN household h ON h.id = o.household_id WHERE o.source = 'dunning'""")}
    holds = {r[0]: r[1] for r in q(url, """SELECT h.code, d.reasons FROM dunning_hold d
                                          JOIN household h ON h.id = d.household_id WHERE d.ended_on IS NULL""")}
    refund_lines = {r[0]: r[1:] for r in q(url, """SELECT h.code, l.days, l.amount, l.provisional_days,
                                                         l.provisional_amount, l.basis
                                                  FROM dunning_refund_line l JOIN household h ON h.id = l.household_id
                                                 WHERE l.season = %s""", (season,))}
    temp_tests = {r[0]: r[1:] for r in q(url, """SELECT h.code, t.id, t.status, t.channel
                                                  FROM ticket t JOIN household h ON h.id = t.household_id
                                                 WHERE t.type = 'temp_test'""")}
    for code in groups["affected_arrears"]:
        action, reasons, step, outbox_id, ticket_id = dec[code]
        assert action == "hold" and "suspected_non_compliance" in reasons, (code, dec[code])
        assert outbox_id is None and code not in outbox, code
        assert "suspected_non_compliance" in holds[code]
        assert ticket_id is not None and temp_tests[code][0] == ticket_id and temp_tests[code][1] == "new", code
        links = q(url, """SELECT data->>'ref' FROM ticket_event WHERE ticket_id = %s AND action = 'link'
                          AND data->>'kind' = 'dunning_hold'""", (ticket_id,))
        assert links == [(f"{ids[code]}:{season}",)]
    # a refund line for every heated household of the failed substation, paid or not: the outage is the
    # supplier's own incident (R25), refunded now without a 测温 — 报停 households expect no heat (R29) —
    # and the fault day counts once, as a stoppage day, never also under a temperature tier (R24).
    # Other IoT-only days count once a 测温 confirms them unless the region lets IoT count (R13).
    for code in s02_active:
        days, amount, prov_days, prov_amount, basis = refund_lines[code]
        counted_lines = {ln["day"]: ln["basis"] for ln in basis["lines"]}
        assert counted_lines.get(fault_day.isoformat()) == "stoppage", (code, basis)
        assert fault_day.isoformat() not in {ln["day"] for ln in basis["provisional_lines"]}, (code, basis)
        assert days >= 1 and amount > Decimal("0"), (code, days, amount)
    for code in groups["affected_paid"] | groups["other_paid"]:
        assert dec[code][0] == "skip" and dec[code][1] == ["paid_up"], (code, dec[code])
    for code in groups["other_arrears"]:
        action, reasons, step, outbox_id, ticket_id = dec[code]
        assert (action, step) == ("send", step1.step), (code, dec[code])
        assert outbox[code][0] == step1.template, code
        assert code not in holds and code not in temp_tests, code
    assert set(refund_lines) == s02_active and affected <= s02_active
    assert set(holds) == groups["affected_arrears"]
    assert set(outbox) == groups["other_arrears"]

    # the same day again: nothing new goes out, no new ticket, no new hold
    def counts() -> tuple:
        return q(url, """SELECT (SELECT count(*) FROM notify_outbox), (SELECT count(*) FROM ticket),
                                (SELECT count(*) FROM dunning_hold), (SELECT count(*) FROM dunning_refund_line)""")[0]

    before_rerun = counts()
    with connect(url) as conn:
        second = dunning_job.run(conn, COMPANY, cal.as_of, now=run_now + dt.timedelta(hours=1))
    assert second.run_id != first.run_id
    assert counts() == before_rerun
    dec2 = decisions(second.run_id)
    for code in groups["other_arrears"]:
        assert dec2[code][0] == "skip" and "already_sent" in dec2[code][1], (code, dec2[code])
        assert dec2[code][3] is None
    for code in groups["affected_arrears"]:
        assert dec2[code][0] == "hold" and dec2[code][4] == dec[code][4], (code, dec2[code])
    t_end = time.monotonic()
    print(f"e2e story: {cal.days[0]}…{cal.days[-1]}, pump off {fault_start:%m-%d %H:%M}–{fault_end:%m-%d %H:%M}, "
          f"incident #{incident_id} closed {closed_at.astimezone(TZ):%m-%d %H:%M}; "
          f"{published['expected_rows']} room + {sub_rows} substation readings; affected {sorted(affected)}; "
          f"groups { {k: len(v) for k, v in groups.items()} }")
    print(f"e2e timings: ingest {t_ingested - t_start:.1f} s, compliance {t_compliance - t_ingested:.1f} s, "
          f"ticketing {t_ticketing - t_compliance:.1f} s ({len(passes)} passes), dunning {t_end - t_ticketing:.1f} s")
