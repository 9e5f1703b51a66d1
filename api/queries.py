"""SQL for the api's own routers (households, devices). Handlers call these; no SQL in handlers.

Every query takes the caller's ``branch_ids`` and filters by them in SQL, so a list can never show
an object outside the caller's scope (object-level authorisation, OWASP API1); single objects are
checked with ``api.deps.require_household_access`` first.

Personal data is never selected here except through ``pii.household_contact`` blobs handed to
``api.privacy`` for decryption/masking/logging.
"""
from __future__ import annotations

import re
from datetime import datetime

import psycopg
from psycopg.rows import dict_row

from core.pii import FieldCipher, normalise_name, normalise_phone

_HOUSEHOLD_LIST_COLS = """
    h.id AS household_id, h.code, h.floor, h.area_m2, h.heating_status, c.name AS community, c.code AS community_code,
    bd.name AS building, u.name AS unit, s.code AS substation_code, s.name AS substation, br.code AS branch_code"""

_HOUSEHOLD_JOINS = """
    FROM household h JOIN unit u ON u.id = h.unit_id JOIN building bd ON bd.id = u.building_id
    JOIN community c ON c.id = bd.community_id JOIN substation s ON s.id = c.substation_id
    JOIN branch br ON br.id = s.branch_id"""

#: Name search decrypts contacts inside the caller's scope (names are SM4-GCM with random nonces, so
#: there is no SQL equality on them). Bounded so one search cannot decrypt a whole city.
NAME_SCAN_MAX = 20000

_ADDR_BUILDING = re.compile(r"(\d+)\s*(?:号楼|栋|幢|#)")
_ADDR_UNIT = re.compile(r"(\d+)\s*单元")
_ADDR_ROOM = re.compile(r"(\d{3,4})\s*(?:室|号)?\s*$")


def classify_query(q: str) -> str:
    """Guess what a search box holds: phone (11-digit mobile), code (户号: ASCII letters/digits),
    address (Chinese text with numbers or 号楼/单元/小区…) or name (other Chinese text)."""
    q = q.strip()
    if re.fullmatch(r"[\d\s+\-()]+", q):
        n = normalise_phone(q)
        if len(n) == 11 and n.startswith("1"):
            return "phone"
        return "code"
    if re.fullmatch(r"[A-Za-z0-9_\-]+", q):
        return "code"
    if re.search(r"\d|号楼|单元|栋|幢|小区|花园|家园|苑|里|路|街|室", q):
        return "address"
    return "name"


def search_by_phone(conn: psycopg.Connection, cipher: FieldCipher, branch_ids, phone: str, limit: int,
                    offset: int) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"""SELECT {_HOUSEHOLD_LIST_COLS} {_HOUSEHOLD_JOINS}
                  JOIN pii.household_contact pc ON pc.household_id = h.id
                 WHERE pc.phone_index = %s AND br.id = ANY(%s)
                 ORDER BY h.code LIMIT %s OFFSET %s""",
            (cipher.phone_index(phone), list(branch_ids), limit, offset)).fetchall()


def search_by_code(conn: psycopg.Connection, branch_ids, code: str, limit: int, offset: int) -> list[dict]:
    code = code.strip()
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"""SELECT {_HOUSEHOLD_LIST_COLS} {_HOUSEHOLD_JOINS}
                 WHERE (h.code = %s OR h.code LIKE %s) AND br.id = ANY(%s)
                 ORDER BY (h.code = %s) DESC, h.code LIMIT %s OFFSET %s""",
            (code, code.replace("%", r"\%").replace("_", r"\_") + "%", list(branch_ids), code, limit, offset)
        ).fetchall()


def search_by_address(conn: psycopg.Connection, branch_ids, address: str, limit: int, offset: int) -> list[dict]:
    """Address search over the (non-personal) hierarchy: community name, building no., unit no., room.

    Addresses are stored encrypted; the structured parts (小区/楼/单元/楼层+门牌) are plain in the
    site tables, so "海景花园3号楼2单元502" is answered without decrypting anything.
    """
    text = address.strip()
    building = _ADDR_BUILDING.search(text)
    unit = _ADDR_UNIT.search(text)
    room = _ADDR_ROOM.search(text) if not text.endswith(("号楼", "单元")) else None
    # The community part: what is left before the first number.
    community = re.split(r"\d", text, maxsplit=1)[0]
    for noise in ("天津市", "滨海新区", "小区"):
        community = community.replace(noise, "")
    where, params = ["br.id = ANY(%s)"], [list(branch_ids)]
    if community.strip():
        where.append("c.name LIKE %s")
        params.append("%" + community.strip().replace("%", r"\%").replace("_", r"\_") + "%")
    if building:
        where.append("bd.name = %s")
        params.append(f"{int(building.group(1))}号楼")
    if unit:
        where.append("u.name = %s")
        params.append(f"{int(unit.group(1))}单元")
    if room:
        # 502 = floor 5, door 02. The door number is only in the (encrypted) address, so match the
        # floor: a stairwell has 2–4 doors per floor, the agent picks from that short list.
        where.append("h.floor = %s")
        params.append(int(room.group(1)[:-2]))
    if len(where) == 1:
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"""SELECT {_HOUSEHOLD_LIST_COLS} {_HOUSEHOLD_JOINS}
                 WHERE {' AND '.join(where)} ORDER BY c.name, bd.name, u.name, h.floor, h.code LIMIT %s OFFSET %s""",
            params + [limit, offset]).fetchall()


def search_by_name(conn: psycopg.Connection, cipher: FieldCipher, branch_ids, name: str, limit: int,
                   offset: int) -> tuple[list[dict], bool]:
    """(rows, truncated). Exact full names first — found through the name blind index in the whole scope,
    however large — then partial matches from a decrypting scan of at most NAME_SCAN_MAX contacts
    (``truncated`` says that scan did not reach every contact in scope)."""
    name = name.strip()
    with conn.cursor() as cur:
        exact = [r[0] for r in cur.execute(
            f"""SELECT h.id {_HOUSEHOLD_JOINS} JOIN pii.household_contact pc ON pc.household_id = h.id
                 WHERE br.id = ANY(%s) AND pc.name_index = %s ORDER BY h.id""",
            (list(branch_ids), cipher.name_index(name))).fetchall()]
        partial: list[int] = []
        truncated = False
        if offset + limit > len(exact):
            blobs = cur.execute(
                f"""SELECT h.id, pc.name_enc, pc.name_index IS NULL {_HOUSEHOLD_JOINS}
                      JOIN pii.household_contact pc ON pc.household_id = h.id
                     WHERE br.id = ANY(%s) AND pc.name_enc IS NOT NULL ORDER BY h.id LIMIT %s""",
                (list(branch_ids), NAME_SCAN_MAX + 1)).fetchall()
            truncated = len(blobs) > NAME_SCAN_MAX
            seen = set(exact)
            wanted = normalise_name(name)
            for hid, blob, unindexed in blobs[:NAME_SCAN_MAX]:
                if hid in seen:
                    continue
                full = normalise_name(cipher.decrypt(blob) or "")
                if full == wanted and unindexed:
                    exact.append(hid)          # stored before the index existed (backfill_name_index)
                elif wanted in full:
                    partial.append(hid)
    ids = (exact + partial)[offset:offset + limit]
    if not ids:
        return [], truncated
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(f"SELECT {_HOUSEHOLD_LIST_COLS} {_HOUSEHOLD_JOINS} WHERE h.id = ANY(%s)", (ids,)).fetchall()
    order = {hid: i for i, hid in enumerate(ids)}
    return sorted(rows, key=lambda r: order[r["household_id"]]), truncated


def household_card(conn: psycopg.Connection, household_id: int, *, now: datetime, days: int = 14) -> dict:
    """Hierarchy, rooms with their sensors and last reading, recent daily verdicts, open tickets."""
    with conn.cursor(row_factory=dict_row) as cur:
        hh = cur.execute(
            f"""SELECT h.id AS household_id, h.code, h.floor, h.area_m2, h.heating_status, h.billing_method,
                       h.segment, h.placement_class, h.individually_valved,
                       co.code AS company_code, co.name AS company, br.code AS branch_code, br.name AS branch,
                       s.id AS substation_id, s.code AS substation_code, s.name AS substation, s.heating_type,
                       c.id AS community_id, c.code AS community_code, c.name AS community,
                       bd.id AS building_id, bd.name AS building, bd.floors AS building_floors,
                       u.id AS unit_id, u.name AS unit
                  {_HOUSEHOLD_JOINS} JOIN company co ON co.id = br.company_id
                 WHERE h.id = %s""", (household_id,)).fetchone()
        rooms = cur.execute(
            """SELECT r.id AS room_id, r.code, r.room_type, r.area_m2, r.counts_for_compliance
                 FROM room r WHERE r.household_id = %s ORDER BY r.code""", (household_id,)).fetchall()
        sensors = cur.execute(
            """SELECT se.id AS sensor_id, se.key, se.metric, se.unit, se.protocol, se.device_id, se.room_id,
                      last.time AS last_time, last.value AS last_value, last.quality AS last_quality,
                      ds.connected AS device_connected, ds.last_seen AS device_last_seen
                 FROM sensor se
                 LEFT JOIN LATERAL (SELECT time, value, quality FROM readings rd WHERE rd.sensor_id = se.id
                                     ORDER BY time DESC LIMIT 1) last ON true
                 LEFT JOIN device_status ds ON ds.device_id = se.device_id
                WHERE se.household_id = %s ORDER BY se.key""", (household_id,)).fetchall()
        verdicts = cur.execute(
            """SELECT day, status, worst_stat_c, refund_ratio, min_coverage FROM compliance_household_day
                WHERE household_id = %s AND day > (%s AT TIME ZONE 'Asia/Shanghai')::date - %s
                ORDER BY day DESC""", (household_id, now, days)).fetchall()
        tickets = cur.execute(
            """SELECT id, no, type, status, priority, channel, reported_at, closed_at, low_temperature
                 FROM ticket WHERE household_id = %s ORDER BY reported_at DESC LIMIT 20""",
            (household_id,)).fetchall()
    by_room: dict[int | None, list] = {}
    for s in sensors:
        by_room.setdefault(s["room_id"], []).append(s)
    for r in rooms:
        r["sensors"] = by_room.get(r["room_id"], [])
    hh["rooms"] = rooms
    hh["unassigned_sensors"] = by_room.get(None, [])
    hh["daily_verdicts"] = verdicts
    hh["tickets"] = tickets
    hh["open_tickets"] = sum(1 for t in tickets if t["closed_at"] is None
                             and t["status"] not in ("closed", "cancelled", "merged"))
    return hh


# --------------------------------------------------------------------------------------------- devices

# A device belongs to the branches of the substations / households its sensors are linked to.
_DEVICE_BRANCH = """
    SELECT DISTINCT se.device_id, coalesce(bs.id, bh.id) AS branch_id
      FROM sensor se
      LEFT JOIN substation ss ON ss.id = se.substation_id LEFT JOIN branch bs ON bs.id = ss.branch_id
      LEFT JOIN household h ON h.id = se.household_id LEFT JOIN unit u ON u.id = h.unit_id
      LEFT JOIN building bd ON bd.id = u.building_id LEFT JOIN community c ON c.id = bd.community_id
      LEFT JOIN substation hs ON hs.id = c.substation_id LEFT JOIN branch bh ON bh.id = hs.branch_id"""


def _device_scope_sql(include_unlinked: bool) -> str:
    """WHERE fragment: the device has a sensor in the caller's branches (or, for company-wide callers,
    no linked sensor at all — unknown devices are the ingest team's to see)."""
    linked = "d.device_id IN (SELECT device_id FROM device_branch WHERE branch_id = ANY(%(branches)s))"
    if include_unlinked:
        return (f"({linked} OR NOT EXISTS (SELECT 1 FROM device_branch db WHERE db.device_id = d.device_id "
                "AND db.branch_id IS NOT NULL))")
    return linked


def company_branch_ids(conn: psycopg.Connection, company_id: int) -> list[int]:
    return [r[0] for r in conn.execute("SELECT id FROM branch WHERE company_id = %s", (company_id,)).fetchall()]


def list_devices(conn: psycopg.Connection, branch_ids, *, include_unlinked: bool, protocol: str | None,
                 connected: bool | None, limit: int, offset: int) -> list[dict]:
    where = [_device_scope_sql(include_unlinked)]
    params: dict = {"branches": list(branch_ids), "limit": limit, "offset": offset}
    if protocol:
        where.append("d.protocol = %(protocol)s")
        params["protocol"] = protocol
    if connected is not None:
        where.append("d.connected = %(connected)s")
        params["connected"] = connected
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"""WITH device_branch AS ({_DEVICE_BRANCH})
                SELECT d.device_id, d.protocol, d.connected, d.last_seen, d.last_error, d.error_count, d.updated_at,
                       coalesce(c.readings, 0) AS readings_last_hour, coalesce(c.rejects, 0) AS rejects_last_hour
                  FROM device_status d
                  LEFT JOIN (SELECT device_id, sum(readings)::bigint AS readings, sum(rejects)::bigint AS rejects
                               FROM ingest_counter WHERE minute >= now() - interval '1 hour' GROUP BY device_id) c
                         ON c.device_id = d.device_id
                 WHERE {' AND '.join(where)}
                 ORDER BY d.connected, d.device_id LIMIT %(limit)s OFFSET %(offset)s""", params).fetchall()


def device_visible(conn: psycopg.Connection, branch_ids, company_id: int, device_id: str,
                   include_unlinked: bool) -> bool | None:
    """None when the device is unknown or linked only to another company's branches (404: existence
    is not revealed), else whether the caller may see it (False → 403)."""
    with conn.cursor() as cur:
        known = cur.execute(
            "SELECT EXISTS (SELECT 1 FROM device_status WHERE device_id = %(d)s) "
            "OR EXISTS (SELECT 1 FROM sensor WHERE device_id = %(d)s) "
            "OR EXISTS (SELECT 1 FROM rejects WHERE device_id = %(d)s)", {"d": device_id}).fetchone()[0]
        if not known:
            return None
        branches = cur.execute(
            f"""WITH device_branch AS ({_DEVICE_BRANCH})
                SELECT db.branch_id, b.company_id FROM device_branch db JOIN branch b ON b.id = db.branch_id
                 WHERE db.device_id = %(d)s""", {"d": device_id}).fetchall()
    if not branches:
        return include_unlinked
    if all(company != company_id for _, company in branches):
        return None
    return any(b in set(branch_ids) for b, _ in branches)


def device_detail(conn: psycopg.Connection, device_id: str, *, minutes: int) -> dict:
    with conn.cursor(row_factory=dict_row) as cur:
        status = cur.execute(
            """SELECT device_id, protocol, connected, last_seen, last_error, error_count, updated_at
                 FROM device_status WHERE device_id = %s""", (device_id,)).fetchone()
        counters = cur.execute(
            """SELECT minute, readings, rejects FROM ingest_counter
                WHERE device_id = %s AND minute >= now() - make_interval(mins => %s) ORDER BY minute""",
            (device_id, minutes)).fetchall()
        gaps = cur.execute(
            """SELECT started_at, ended_at, reason FROM device_gap WHERE device_id = %s
                ORDER BY started_at DESC LIMIT 20""", (device_id,)).fetchall()
        sensors = cur.execute(
            """SELECT id AS sensor_id, key, metric, unit, point, substation_code, household_code
                 FROM sensor WHERE device_id = %s ORDER BY key LIMIT 500""", (device_id,)).fetchall()
    return {"device_id": device_id, "status": status, "counters": counters, "gaps": gaps, "sensors": sensors,
            "window_minutes": minutes,
            "readings": sum(c["readings"] for c in counters), "rejects": sum(c["rejects"] for c in counters)}


def recent_rejects(conn: psycopg.Connection, branch_ids, *, include_unlinked: bool, start: datetime, end: datetime,
                   device_id: str | None, reason: str | None, source: str | None, limit: int,
                   offset: int) -> list[dict]:
    where = ["r.received_at >= %(start)s", "r.received_at < %(end)s",
             _device_scope_sql(include_unlinked).replace("d.device_id", "r.device_id")]
    params: dict = {"branches": list(branch_ids), "start": start, "end": end, "limit": limit, "offset": offset}
    if include_unlinked:
        # Rejects without any device id (e.g. a topic we could not parse) belong to company-wide callers.
        where[-1] = f"(r.device_id IS NULL OR {where[-1]})"
    for key, value in (("device_id", device_id), ("reason", reason), ("source", source)):
        if value:
            where.append(f"r.{key} = %({key})s")
            params[key] = value
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""WITH device_branch AS ({_DEVICE_BRANCH})
                SELECT r.id, r.received_at, r.source, r.device_id, r.address, r.reason, r.detail,
                       substring(r.payload from 1 for 256) AS payload_head, octet_length(r.payload) AS payload_bytes
                  FROM rejects r WHERE {' AND '.join(where)}
                 ORDER BY r.received_at DESC, r.id DESC LIMIT %(limit)s OFFSET %(offset)s""", params).fetchall()
    for r in rows:
        head = r.pop("payload_head")
        r["payload_preview"] = bytes(head).decode("utf-8", errors="replace") if head is not None else None
    return rows


def reject_summary(conn: psycopg.Connection, branch_ids, *, include_unlinked: bool, start: datetime,
                   end: datetime) -> list[dict]:
    scope = _device_scope_sql(include_unlinked).replace("d.device_id", "r.device_id")
    if include_unlinked:
        scope = f"(r.device_id IS NULL OR {scope})"
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"""WITH device_branch AS ({_DEVICE_BRANCH})
                SELECT r.source, r.reason, count(*) AS count, max(r.received_at) AS last_at
                  FROM rejects r WHERE r.received_at >= %(start)s AND r.received_at < %(end)s AND {scope}
                 GROUP BY r.source, r.reason ORDER BY count DESC""",
            {"branches": list(branch_ids), "start": start, "end": end}).fetchall()


def pii_access_log(conn: psycopg.Connection, branch_ids, *, household_id: int | None, user_id: int | None,
                   start: datetime, end: datetime, limit: int, offset: int) -> list[dict]:
    where = ["l.at >= %(start)s", "l.at < %(end)s",
             f"(l.household_id IS NULL OR l.household_id IN (SELECT h.id {_HOUSEHOLD_JOINS} WHERE br.id = ANY(%(branches)s)))"]
    params: dict = {"start": start, "end": end, "branches": list(branch_ids), "limit": limit, "offset": offset}
    if household_id is not None:
        where.append("l.household_id = %(hid)s")
        params["hid"] = household_id
    if user_id is not None:
        where.append("l.user_id = %(uid)s")
        params["uid"] = user_id
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"""SELECT l.id, l.at, l.user_id, l.username, l.role, l.household_id, l.fields, l.masked, l.purpose,
                       l.request_id FROM pii_access_log l WHERE {' AND '.join(where)}
                 ORDER BY l.at DESC, l.id DESC LIMIT %(limit)s OFFSET %(offset)s""", params).fetchall()


def household_bill_seasons(conn: psycopg.Connection, household_id: int, limit: int = 3) -> list[str]:
    """Seasons with a heat-fee bill (dunning_bill, owned by dunning/), newest first."""
    return [r[0] for r in conn.execute(
        "SELECT season FROM dunning_bill WHERE household_id = %s ORDER BY season DESC LIMIT %s",
        (household_id, limit)).fetchall()]
