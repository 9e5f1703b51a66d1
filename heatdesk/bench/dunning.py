"""Benchmark: one dunning run (compliance gate included) over N accounts (default 100 000).

Seeds a scratch database set-based (households, rooms, contacts, bills, payments, compliance days,
hardship, instalments, open complaints), then times `dunning.job.run` for one company on D+7 — the
timed part is exactly what `heatdesk dunning run` does: batched snapshot loading, the gate,
outbox enqueues, holds, 测温 tickets via ticketing, refund lines and decision rows.

    heatdesk bench dunning --accounts 100000 --json
"""
from __future__ import annotations

import datetime as dt
import os
import time
import uuid

import psycopg

from core.db import apply_schema, connect, drop_database, ensure_database
from heatdesk.bench.common import release, server_url

TZ = dt.timezone(dt.timedelta(hours=8))
DUE = dt.date(2026, 12, 31)




def seed(conn, n: int) -> None:
    q = conn.execute
    q("INSERT INTO weather_station (code, name, design_outdoor_temp_c) VALUES ('TJ', '天津', -7.0) ON CONFLICT DO NOTHING")
    q("INSERT INTO company (code, name, region_code) VALUES ('HD', '滨海热力', 'tianjin')")
    q("INSERT INTO branch (company_id, code, name) VALUES (1, 'B1', 'b')")
    q("INSERT INTO substation (branch_id, code, name, weather_station_code) VALUES (1, 'S01', 's', 'TJ')")
    q("INSERT INTO community (substation_id, code, name) VALUES (1, 'C1', 'c')")
    units = max(1, n // 100)
    q("INSERT INTO building (community_id, code, name) SELECT 1, 'B' || g, 'b' FROM generate_series(1, %s) g", (units,))
    q("INSERT INTO unit (building_id, code, name) SELECT g, 'U' || g, 'u' FROM generate_series(1, %s) g", (units,))
    q("""INSERT INTO household (unit_id, code, area_m2, segment, heating_status)
         SELECT 1 + mod(g - 1, %s), 'H' || g, 60 + mod(g, 80),
                CASE WHEN mod(g, 50) = 0 THEN 'non_residential' ELSE 'residential' END,
                CASE WHEN mod(g, 40) = 0 THEN 'stopped' ELSE 'active' END
           FROM generate_series(1, %s) g""", (units, n))
    q("""INSERT INTO room (household_id, code, room_type, area_m2, counts_for_compliance)
         SELECT id, 'living', 'living_room', 25, true FROM household
         UNION ALL SELECT id, 'bed1', 'bedroom', 15, true FROM household""")
    # contact presence only (the bench never delivers): dummy ciphertext
    q("""INSERT INTO pii.household_contact (household_id, phone_enc, address_enc)
         SELECT id, '\\x01'::bytea, '\\x01'::bytea FROM household""")
    q("""INSERT INTO dunning_bill (household_id, season, period_start, period_end, due_date, amount, base_amount, tariff_code)
         SELECT id, '2026-2027', '2026-11-15', '2027-03-15', %s, round((area_m2 * 25)::numeric, 2),
                round((area_m2 * 7.5)::numeric, 2), 'residential.area' FROM household""", (DUE,))
    # 10 % paid in full, 10 % partly
    q("""INSERT INTO dunning_payment (household_id, season, amount, channel, external_id, paid_at)
         SELECT h.id, '2026-2027', CASE WHEN mod(h.id, 10) = 1 THEN b.amount ELSE round(b.amount / 2, 2) END, 'bank',
                'B' || h.id, '2026-12-10T10:00+08'
           FROM household h JOIN dunning_bill b ON b.household_id = h.id WHERE mod(h.id, 10) IN (1, 2)""")
    # 5 % suspected non-compliant on 5 days of the lookback; 2 % with unknown days
    q("""INSERT INTO compliance_day (household_id, room_id, day, stat_c, threshold_c, coverage, status, refund_ratio,
                                     policy_code, policy_version, code_version)
         SELECT r.household_id, r.id, d::date, CASE WHEN r.code = 'living' AND mod(r.household_id, 20) = 3 THEN 15.5 ELSE 19 END,
                18, CASE WHEN mod(r.household_id, 50) = 7 THEN 0.3 ELSE 0.95 END,
                CASE WHEN r.code = 'living' AND mod(r.household_id, 20) = 3 THEN 'non_compliant'
                     WHEN mod(r.household_id, 50) = 7 THEN 'unknown' ELSE 'compliant' END,
                CASE WHEN r.code = 'living' AND mod(r.household_id, 20) = 3 THEN 0.5 ELSE 0 END, 'tianjin', 1, 'bench'
           FROM room r CROSS JOIN generate_series(%s::date, %s::date, interval '1 day') d
          WHERE mod(r.household_id, 20) = 3 OR mod(r.household_id, 50) = 7""",
      (DUE - dt.timedelta(days=4), DUE))
    # 1 % open low-temperature complaints (some on unknown-day households → 测温)
    q("""INSERT INTO ticket (no, type, channel, status, household_id, low_temperature)
         SELECT 'B-' || id, 'complaint', 'phone', 'new', id, true FROM household WHERE mod(id, 100) = 7""")
    # 3 % hardship, 2 % instalment plans on track
    q("""INSERT INTO pii.dunning_hardship (household_id, category_enc, valid_from, expires_on, verified_by)
         SELECT id, '\\x01'::bytea, '2026-10-01', '2027-09-30', 'bench' FROM household WHERE mod(id, 33) = 5""")
    q("""INSERT INTO dunning_instalment_plan (household_id, season, total, created_on, created_by)
         SELECT b.household_id, '2026-2027', b.amount, '2026-12-20', 'bench' FROM dunning_bill b
          WHERE mod(b.household_id, 50) = 9""")
    q("""INSERT INTO dunning_instalment (plan_id, seq, due_date, amount)
         SELECT p.id, s, '2026-12-20'::date + (s - 1) * 30, round(p.total / 3, 2)
           FROM dunning_instalment_plan p CROSS JOIN generate_series(1, 3) s""")
    q("""INSERT INTO dunning_payment (household_id, season, amount, channel, external_id, paid_at)
         SELECT household_id, season, round(total / 3, 2), 'wechat', 'I' || id, '2026-12-20T10:00+08'
           FROM dunning_instalment_plan""")
    conn.commit()
    conn.execute("ANALYZE")
    conn.commit()


def run(args) -> dict:
    from dunning import job
    n = getattr(args, "accounts", None) or getattr(args, "n", None) or 100_000
    admin_url, private = server_url(args, prefix='hd-bench-pg-')
    name = f"hd_bench_dunning_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = ensure_database(admin_url, name)
    try:
        apply_schema(url)
        with connect(url) as conn:
            t0 = time.perf_counter()
            seed(conn, n)
            seed_s = time.perf_counter() - t0
            as_of = DUE + dt.timedelta(days=7)
            now = dt.datetime.combine(as_of, dt.time(9, 30), TZ)
            t0 = time.perf_counter()
            s = job.run(conn, "HD", as_of, now=now)
            seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            again = job.run(conn, "HD", as_of, now=now)
            rerun_s = time.perf_counter() - t0
            outbox = conn.execute("SELECT count(*) FROM notify_outbox").fetchone()[0]
    finally:
        drop_database(admin_url, name)
        release(private)
    result = {"accounts": s.accounts, "seconds": round(seconds, 2), "sent": s.actions.get("send", 0)
              + s.actions.get("soften", 0), "held": s.actions.get("hold", 0), "skipped": s.actions.get("skip", 0),
              "tickets_opened": s.tickets_opened, "outbox_rows": outbox, "rerun_seconds": round(rerun_s, 2),
              "rerun_sent": again.actions.get("send", 0) + again.actions.get("soften", 0),
              "accounts_per_s": round(s.accounts / seconds) if seconds else None, "seed_seconds": round(seed_s, 2),
              "reasons": dict(s.reasons.most_common())}
    if not getattr(args, "json", False):
        for k, v in result.items():
            print(f"{k:>16}: {v}")
    return result
