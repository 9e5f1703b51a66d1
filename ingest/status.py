"""`heatdesk status`: what ingest is doing, per protocol and device.

Two sources, so the answer still comes during a database outage:
* the database (device_status, ingest_counter): last seen, readings in the last minute, rejects in
  the last hour, connected / last error;
* ``<data_dir>/ingest-status.json``, written every few seconds by the running ingest process
  (ingest/runner.py): queue depth, un-acked MQTT messages, spool bytes, database reachability.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg

STATUS_FILE = "ingest-status.json"

DEVICES_SQL = """
WITH ids AS (
    SELECT device_id, protocol FROM device_status
    UNION SELECT DISTINCT device_id, protocol FROM ingest_counter WHERE minute >= now() - interval '1 day'
)
SELECT ids.device_id, ids.protocol, ds.last_seen, ds.connected, ds.last_error, ds.error_count,
       COALESCE((SELECT sum(readings) FROM ingest_counter c WHERE c.device_id = ids.device_id
                 AND c.minute >= date_trunc('minute', now()) - interval '1 minute'), 0) AS readings_last_minute,
       COALESCE((SELECT sum(rejects) FROM ingest_counter c WHERE c.device_id = ids.device_id
                 AND c.minute >= now() - interval '1 hour'), 0) AS rejects_last_hour
FROM ids LEFT JOIN device_status ds ON ds.device_id = ids.device_id
ORDER BY ids.protocol, ids.device_id
"""


def read_status_file(data_dir: Path | str) -> dict | None:
    p = Path(data_dir) / STATUS_FILE
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return {"error": f"unreadable {p}: {e}"}
    doc["age_s"] = round(time.time() - doc.get("written_unix", 0), 1)
    return doc


def write_status_file(data_dir: Path | str, status: dict) -> None:
    """Atomic replace, so readers never see half a file."""
    d = Path(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (STATUS_FILE + ".tmp")
    tmp.write_text(json.dumps({**status, "written_unix": time.time()}, default=str), encoding="utf-8")
    tmp.replace(d / STATUS_FILE)


def collect_status(conn: psycopg.Connection | None, data_dir: Path | str) -> dict:
    """Status per protocol and device. `conn` may be None (database down): backlog only."""
    ingest = read_status_file(data_dir)
    out: dict = {"generated_at": datetime.now(timezone.utc).isoformat(), "database": {"ok": False, "error": None},
                 "ingest": ingest, "protocols": {}}
    unacked = (ingest or {}).get("unacked_by_device", {}) or {}
    rows = []
    if conn is None:
        out["database"]["error"] = "no connection"
    else:
        try:
            rows = conn.execute(DEVICES_SQL).fetchall()
            out["database"]["ok"] = True
        except psycopg.Error as e:
            out["database"]["error"] = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    for dev, proto, last_seen, connected, last_error, errors, n_min, n_rej in rows:
        p = out["protocols"].setdefault(proto, {"devices": {}})
        p["devices"][dev] = {
            "last_seen": last_seen.isoformat() if last_seen else None,
            "readings_last_minute": int(n_min),
            "rejects_last_hour": int(n_rej),
            "connected": bool(connected) if connected is not None else None,
            "last_error": last_error,
            "error_count": int(errors or 0),
            "unacked": int(unacked.get(dev, 0)),
        }
    if ingest:
        out["backlog"] = {"spool_bytes": ingest.get("spool_bytes", 0), "unacked": ingest.get("unacked", 0),
                          "queue_depth": ingest.get("queue_depth", 0), "db_ok": ingest.get("db_ok")}
    return out


def format_status(st: dict) -> str:
    """A human table for `heatdesk status`."""
    lines = []
    db = st["database"]
    lines.append(f"database: {'ok' if db['ok'] else 'NOT AVAILABLE (' + str(db['error']) + ')'}")
    ing = st.get("ingest")
    if ing is None:
        lines.append("ingest: no status file (not running?)")
    elif "error" in ing and len(ing) <= 2:
        lines.append(f"ingest: {ing['error']}")
    else:
        stale = " (STALE: process not writing)" if ing.get("age_s", 0) > 15 else ""
        lines.append(f"ingest: queue {ing.get('queue_depth', 0)}, un-acked {ing.get('unacked', 0)}, "
                     f"spool {ing.get('spool_bytes', 0)} bytes, database {'ok' if ing.get('db_ok') else 'DOWN'}, "
                     f"updated {ing.get('age_s', '?')} s ago{stale}")
        if ing.get("last_error"):
            lines.append(f"  last error: {ing['last_error']}")
    hdr = f"{'protocol':8} {'device':24} {'conn':5} {'last seen':25} {'rd/min':>7} {'rej/h':>6} {'unacked':>8}  last error"
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for proto, p in sorted(st["protocols"].items()):
        for dev, d in sorted(p["devices"].items()):
            conn = "-" if d["connected"] is None else ("yes" if d["connected"] else "NO")
            lines.append(f"{proto:8} {dev:24} {conn:5} {d['last_seen'] or '-':25} {d['readings_last_minute']:>7} "
                         f"{d['rejects_last_hour']:>6} {d['unacked']:>8}  {d['last_error'] or ''}")
    return "\n".join(lines)
