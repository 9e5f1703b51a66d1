"""Compliance job through the real database: readings in, compliance_day out (R19–R21, R6, R10, R29)."""
from __future__ import annotations

import argparse
import datetime as dt

import numpy as np
import psycopg
import pytest

from analytics import store
from analytics.cli import register_cli
from analytics.job import process_dirty, run_compliance
from tests.test_analytics_support import add_household, day_series, local, make_site, write_series

D1 = dt.date(2026, 1, 10)
D2 = dt.date(2026, 1, 11)


@pytest.fixture
def site_db(fresh_db_url):
    with psycopg.connect(fresh_db_url) as conn:
        site = make_site(conn, region="tianjin")
        add_household(conn, site, "WARM")
        add_household(conn, site, "COLD")
        add_household(conn, site, "STOP", heating_status="stopped")
        add_household(conn, site, "GAPPY")
        add_household(conn, site, "KITCH", rooms=(("living", "living_room", 20.0, True),
                                                   ("kitchen", "kitchen", 6.0, False)))
        for day in (D1, D2):
            ts = day_series(day)
            write_series(conn, site.sensors[("WARM", "living")], ts, 19.0)
            write_series(conn, site.sensors[("WARM", "bed1")], ts, 18.6)
            write_series(conn, site.sensors[("COLD", "living")], ts, 17.5)   # shortfall 0.5 → 10 %
            write_series(conn, site.sensors[("COLD", "bed1")], ts, 19.0)
            write_series(conn, site.sensors[("STOP", "living")], ts, 12.0)
            write_series(conn, site.sensors[("STOP", "bed1")], ts, 12.0)
            # GAPPY: living only 00:00–11:55 (+ 40 min cutoff hold) → coverage 0.52 → unknown; bedroom fine
            write_series(conn, site.sensors[("GAPPY", "living")], day_series(day, end_min=720), 20.0)
            write_series(conn, site.sensors[("GAPPY", "bed1")], ts, 20.0)
            write_series(conn, site.sensors[("KITCH", "living")], ts, 18.4)
            write_series(conn, site.sensors[("KITCH", "kitchen")], ts, 9.0)   # kitchen does not count (R4)
        # D2: official daily mean −9.5 ℃ below the design −7 ℃ → extreme-cold exemption (R6)
        conn.execute("INSERT INTO weather_daily (station_code, day, mean_c, source) VALUES (%s, %s, -3.0, 'official'),"
                     " (%s, %s, -9.5, 'official')", (site.station, D1, site.station, D2))
        conn.commit()
        yield fresh_db_url, site


def _rows(conn, site):
    rows = conn.execute("""SELECT h.code, r.code, cd.day, cd.status, cd.reason, cd.refund_ratio, cd.mean_c, cd.coverage,
                                  cd.policy_code, cd.policy_version, cd.code_version
                             FROM compliance_day cd JOIN household h ON h.id = cd.household_id
                             JOIN room r ON r.id = cd.room_id ORDER BY 1, 2, 3""").fetchall()
    return {(hc.split("-", 1)[1], rc, day): tuple(rest) for hc, rc, day, *rest in rows}


def test_job_writes_room_and_household_verdicts(site_db):
    url, site = site_db
    with psycopg.connect(url) as conn:
        summary = run_compliance(conn, D1, D2)
        rows = _rows(conn, site)
        assert summary.households == 5
        assert ("KITCH", "kitchen", D1) not in rows                       # R4
        exp = {
            ("WARM", "living", D1): ("compliant", None, 0.0, 19.0, 1.0),
            ("WARM", "bed1", D1): ("compliant", None, 0.0, 18.6, 1.0),
            ("COLD", "living", D1): ("non_compliant", None, 0.10, 17.5, 1.0),
            ("COLD", "bed1", D1): ("compliant", None, 0.0, 19.0, 1.0),
            ("STOP", "living", D1): ("exempt", "stopped", 0.0, 12.0, 1.0),
            ("GAPPY", "living", D1): ("unknown", "low_coverage", 0.0, 20.0, 755 / 1440),  # 11:55 holds 40 min
            ("GAPPY", "bed1", D1): ("compliant", None, 0.0, 20.0, 1.0),
            ("COLD", "living", D2): ("exempt", "extreme_cold", 0.0, 17.5, 1.0),
            ("STOP", "living", D2): ("exempt", "stopped", 0.0, 12.0, 1.0),
        }
        for key, (status, reason, ratio, mean, cov) in exp.items():
            got = rows[key]
            assert (got[0], got[1]) == (status, reason), key
            assert got[2] == pytest.approx(ratio) and got[3] == pytest.approx(mean) and got[4] == pytest.approx(cov), key
            assert got[5:7] == ("tianjin", 1)
        hh = {c: store.household_days(conn, hid, D1, D2) for c, hid in site.households.items()}
        assert [r["status"] for r in hh["COLD"]] == ["non_compliant", "exempt"]
        assert hh["COLD"][0]["refund_ratio"] == pytest.approx(0.10)
        assert [r["status"] for r in hh["GAPPY"]] == ["unknown", "exempt"]
        assert [r["status"] for r in hh["WARM"]] == ["compliant", "exempt"]
        assert [r["status"] for r in hh["KITCH"]] == ["compliant", "exempt"]
        assert summary.household_days["non_compliant"] == 1 and summary.household_days["unknown"] == 1
        assert summary.household_days["exempt"] == 6 and summary.household_days["compliant"] == 2


def test_recompute_is_idempotent_and_late_data_marks_days(site_db):
    url, site = site_db
    with psycopg.connect(url) as conn:
        run_compliance(conn, D1, D2)
        first = _rows(conn, site)
        run_compliance(conn, D1, D2)
        assert _rows(conn, site) == first
        assert conn.execute("SELECT count(*) FROM compliance_day").fetchone()[0] == len(first)
        assert conn.execute("SELECT count(*) FROM compliance_run").fetchone()[0] == 2
        # late data: GAPPY's living room 12:00–24:00 of D1 arrives; the ingest writer marks the hours in
        # readings_dirty and its rollup turns them into compliance_dirty marks
        from ingest.rollup import refresh_rollups

        sid = site.sensors[("GAPPY", "living")]
        write_series(conn, sid, day_series(D1, start_min=720), 20.0)
        conn.execute("""INSERT INTO readings_dirty (sensor_id, hour)
                        SELECT DISTINCT %s, date_trunc('hour', time) FROM readings WHERE sensor_id = %s
                           AND time >= %s AND time < %s ON CONFLICT DO NOTHING""",
                     (sid, sid, local(D1, 720), local(D2)))
        conn.commit()
        refresh_rollups(url)
        dirty = conn.execute("SELECT day FROM compliance_dirty WHERE household_id = %s ORDER BY day",
                             (site.households["GAPPY"],)).fetchall()
        assert [d for (d,) in dirty] == [D1]
        # the day is not complete yet at 23:00 of D1: nothing recomputed, the mark stays
        s0 = process_dirty(conn, now=local(D1, 23 * 60))
        assert s0.room_days == 0
        s = process_dirty(conn, now=local(D2 + dt.timedelta(days=1), 60))
        # D1 and the day before (recomputed for the hold rule; no readings there: unknown/no_data), 2 rooms
        assert s.room_days == 4 and s.room_day_counts["unknown"] == 2
        after = _rows(conn, site)
        assert after[("GAPPY", "living", D1)][:2] == ("compliant", None)
        assert after[("GAPPY", "living", D1)][4] == pytest.approx(1.0)
        assert conn.execute("SELECT count(*) FROM compliance_dirty").fetchone()[0] == 0


def test_user_caused_ticket_exempts_days(site_db):
    url, site = site_db
    with psycopg.connect(url) as conn:
        conn.execute("""INSERT INTO ticket (no, type, channel, household_id, reported_at, closed_at, user_caused)
                        VALUES ('GD-T1', 'temp_test', 'phone', %s, %s, %s, 'radiator_covered')""",
                     (site.households["COLD"], local(D1, 600), local(D1, 900)))
        conn.commit()
        run_compliance(conn, D1, D1)
        rows = _rows(conn, site)
        assert rows[("COLD", "living", D1)][:3] == ("exempt", "user_caused", 0.0)


def test_cli_run_prints_summary(site_db, capsys):
    url, site = site_db
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", dest="database_url")
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["--database-url", url, "compliance", "run", "--from", "2026-01-10", "--to",
                              "2026-01-10", "--household", f"{site.prefix}-COLD", "--no-progress"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "households: 1" in out and "non_compliant=1" in out and "compliant=0" in out
    bad = parser.parse_args(["--database-url", url, "compliance", "run", "--from", "2026-01-10", "--to",
                             "2026-01-10", "--household", "NOPE"])
    assert bad.func(bad) == 2
    assert "unknown household" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["compliance", "run", "--from", "2026-13-01", "--to", "2026-01-10"])


def test_out_of_season_days_are_not_evaluated(site_db):
    url, site = site_db
    with psycopg.connect(url) as conn:
        s = run_compliance(conn, dt.date(2026, 7, 1), dt.date(2026, 7, 2))
        assert s.room_days == 0 and s.out_of_season_days == 2 * 5


def test_schedule_compliance_adds_two_jobs():
    from apscheduler.schedulers.background import BackgroundScheduler

    from analytics.job import drain_dirty, nightly, schedule_compliance

    sched = BackgroundScheduler()
    jobs = schedule_compliance(sched, "postgresql://example/db", dirty_every_s=120, nightly_at="02:15")
    assert {j.id for j in jobs} == {"compliance.dirty", "compliance.nightly"}
    by_id = {j.id: j for j in sched.get_jobs()}
    assert by_id["compliance.dirty"].func is drain_dirty and by_id["compliance.nightly"].func is nightly
    assert by_id["compliance.dirty"].trigger.interval.total_seconds() == 120
    assert "hour='2'" in str(by_id["compliance.nightly"].trigger) and "minute='15'" in str(by_id["compliance.nightly"].trigger)


def test_mirror_policies_into_region_policy(fresh_db_url):
    with psycopg.connect(fresh_db_url) as conn:
        n = store.mirror_policies(conn)
        rows = dict(conn.execute("SELECT code || ' v' || version, threshold_c FROM region_policy").fetchall())
        assert len(rows) == n and rows["heilongjiang v1"] == 20.0 and rows["ningxia v2"] == 20.0
        assert store.mirror_policies(conn) == n      # idempotent
        assert conn.execute("SELECT count(*) FROM region_policy").fetchone()[0] == n


def test_nightly_computes_yesterday(site_db):
    from analytics.job import nightly

    url, site = site_db
    s = nightly(url, now=local(D2, 90))          # 01:30 on D2 → computes D1
    assert s.households == 5 and s.household_days["non_compliant"] == 1
    with psycopg.connect(url) as conn:
        days = {d for (d,) in conn.execute("SELECT DISTINCT day FROM compliance_day").fetchall()}
        assert days == {D1}
        assert conn.execute("SELECT kind FROM compliance_run").fetchone()[0] == "nightly"


def test_two_thermometers_in_one_room_and_calibration_window(fresh_db_url):
    # a thermometer replaced at noon: the old one read 1.0 K low (offset +1.0 valid until noon)
    with psycopg.connect(fresh_db_url) as conn:
        site = make_site(conn)
        hid = add_household(conn, site, "SWAP", rooms=(("living", "living_room", 20.0, True),))
        old = site.sensors[("SWAP", "living")]
        conn.execute("UPDATE sensor SET calibration_offset = 1.0, calibration_valid_to = %s WHERE id = %s",
                     (local(D1, 720), old))
        new = conn.execute("""INSERT INTO sensor (key, metric, protocol, device_id, household_id, room_id)
                              VALUES ('room:new', 'room_temp', 'mqtt', 'th-new', %s, %s) RETURNING id""",
                           (hid, site.rooms[("SWAP", "living")])).fetchone()[0]
        write_series(conn, old, day_series(D1, end_min=720), 17.0)
        write_series(conn, old, [local(D1, 800)], 5.0, quality=3)          # device error: ignored
        write_series(conn, new, day_series(D1, start_min=720), 18.0)
        conn.commit()
        smp = store.load_room_samples(conn, [site.rooms[("SWAP", "living")]], local(D1), local(D2))
        assert len(smp) == 289 and (smp.t[1:] >= smp.t[:-1]).all()
        assert smp.offset[0] == 1.0 and smp.offset[-1] == 0.0
        run_compliance(conn, D1, D1)
        mean, n, cov, status = conn.execute(
            "SELECT mean_c, n_samples, coverage, status FROM compliance_day WHERE household_id = %s", (hid,)).fetchone()
        assert (mean, n, cov, status) == (pytest.approx(18.0), 288, pytest.approx(1.0), "compliant")


def test_room_that_stops_counting_loses_its_rows_on_recompute(site_db):
    url, site = site_db
    with psycopg.connect(url) as conn:
        run_compliance(conn, D1, D1)
        rid = site.rooms[("COLD", "bed1")]
        assert conn.execute("SELECT count(*) FROM compliance_day WHERE room_id = %s", (rid,)).fetchone()[0] == 1
        conn.execute("UPDATE room SET counts_for_compliance = false, room_type = 'study' WHERE id = %s", (rid,))
        conn.commit()
        run_compliance(conn, D1, D1)
        assert conn.execute("SELECT count(*) FROM compliance_day WHERE room_id = %s", (rid,)).fetchone()[0] == 0


def test_region_without_policy_in_force_is_reported_not_crashing(site_db):
    url, site = site_db
    with psycopg.connect(url) as conn:
        other = make_site(conn, region="xian")      # Xi'an rules start 2014-01-01
        add_household(conn, other, "OLD")
        write_series(conn, other.sensors[("OLD", "living")], day_series(dt.date(2013, 12, 1)), 17.0)
        conn.commit()
        s = run_compliance(conn, dt.date(2013, 12, 1), dt.date(2013, 12, 1))
        assert s.errors and s.errors[0][0] == "xian" and "no policy" in s.errors[0][1]
        assert sum(s.household_days.values()) == 5                  # the 5 tianjin households still computed


def test_parallel_workers_give_the_same_rows(site_db):
    url, site = site_db
    with psycopg.connect(url) as conn:
        run_compliance(conn, D1, D2, chunk=1)
        one = _rows(conn, site)
        conn.execute("DELETE FROM compliance_day")
        conn.commit()
        s = run_compliance(conn, D1, D2, chunk=1, workers=2, db_url=url)
        assert s.households == 5 and _rows(conn, site) == one


def test_a_day_alone_equals_the_day_inside_a_range(fresh_db_url):
    # samples every 25 min from 23:35 of the day before: the 23:35 hold spills 25 min into D1
    with psycopg.connect(fresh_db_url) as conn:
        site = make_site(conn)
        add_household(conn, site, "EDGE", rooms=(("living", "living_room", 20.0, True),))
        ts = [local(D1, int(m)) for m in np.arange(-25, 2 * 1440, 25)]
        write_series(conn, site.sensors[("EDGE", "living")], ts, 18.3)
        conn.commit()
        run_compliance(conn, D1 - dt.timedelta(days=1), D2)
        together = conn.execute("SELECT day, coverage, mean_c FROM compliance_day ORDER BY day").fetchall()
        conn.execute("DELETE FROM compliance_day")
        conn.commit()
        for d in (D1, D2):
            run_compliance(conn, d, d)
        alone = conn.execute("SELECT day, coverage, mean_c FROM compliance_day ORDER BY day").fetchall()
        assert alone == [r for r in together if r[0] in (D1, D2)]
        assert alone[0][1] == pytest.approx(1.0)
