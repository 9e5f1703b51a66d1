"""Import the household register (户籍/用户档案) from CSV: the contract written by simulators/city.py.

One row per room; the hierarchy company → branch → substation → community → building → unit →
household → room is upserted by code, so a re-import updates in place and never duplicates
(``ON CONFLICT … DO UPDATE … WHERE … IS DISTINCT FROM``, so unchanged rows are not even rewritten).
The columns are documented in simulators/city.py.

Why the shape of this module:
- Bad input never stops the import (ARCHITECTURE "bad input → a clear error"): each bad row becomes a
  ``RowError(line, column, message)`` in the summary and the rest is imported. A household whose rows
  disagree with each other (different unit, area, …) is rejected on the disagreeing row.
- Households are written in pipelined batches (``BATCH_HOUSEHOLDS``, one savepoint each; 10 000
  households ≈ 15 s). If the database refuses something in a batch, that batch is redone with one
  savepoint per household, so the error is recorded against that household's lines and the others stay.
- Personal data goes only through ``core.pii.store_contact`` (SM4-GCM + SM3-HMAC blind index, R57–R60);
  error messages mask phone numbers.
- Sensors that arrived before their household was known (ingest stores ``household_code``/``room_code``
  /``substation_code`` as captured) are linked at the end, so telemetry and the register meet whichever
  comes first.
- Rooms or households missing from a later file are *not* deleted: compliance results and tickets refer
  to them. Changing a household's status is done by re-importing it with the new status.
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psycopg
from psycopg import sql

from core.pii import FieldCipher, mask_phone, normalise_phone, store_contact

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("company_code", "company_name", "branch_code", "branch_name", "substation_code",
                    "substation_name", "community_code", "community_name", "building_code", "building_name",
                    "unit_code", "unit_name", "household_code", "area_m2", "room_code", "room_type")

ROOM_TYPES = ("bedroom", "living_room", "kitchen", "bathroom", "study", "other")
COMPLIANCE_ROOM_TYPES = ("bedroom", "living_room")        # R4 default when the column is empty
HEATING_STATUS = {"active": "active", "stopped": "stopped", "报停": "stopped", "停供": "stopped",
                  "供热": "active", "正常": "active"}
BILLING_METHODS = ("area", "two_part_meter", "allocation")
SEGMENTS = ("residential", "non_residential", "large")
HEATING_TYPES = ("radiator", "floor")
VENDORS = ("A", "B", "C")
PLACEMENT_CLASSES = ("top_floor", "ground_floor", "gable_end", "complaint", "normal")     # R17
#: households written per pipelined batch (a failing batch is redone household by household)
BATCH_HOUSEHOLDS = 500
_TRUE = {"true", "1", "yes", "y", "t", "是"}
_FALSE = {"false", "0", "no", "n", "f", "否"}


@dataclass(frozen=True)
class RowError:
    line: int            # line number in the file (header = 1)
    column: str          # column name, or "" when the whole row/file is concerned
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f" column {self.column}" if self.column else "")
        return f"{where}: {self.message}"


@dataclass
class ImportSummary:
    rows: int = 0
    rows_imported: int = 0
    created: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    unchanged: dict[str, int] = field(default_factory=dict)
    contacts_written: int = 0
    sensors_linked: int = 0
    errors: list[RowError] = field(default_factory=list)

    @property
    def rows_rejected(self) -> int:
        return len({e.line for e in self.errors})

    def count(self, table: str, status: str) -> None:
        d = getattr(self, status)
        d[table] = d.get(table, 0) + 1

    def __str__(self) -> str:
        def fmt(d: dict[str, int]) -> str:
            return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"
        text = (f"{self.rows_imported}/{self.rows} rows imported; created: {fmt(self.created)}; "
                f"updated: {fmt(self.updated)}; unchanged: {fmt(self.unchanged)}; contacts written {self.contacts_written}; "
                f"sensors linked {self.sensors_linked}; rejected rows {self.rows_rejected}")
        if self.errors:
            shown = "; ".join(str(e) for e in self.errors[:10])
            more = f" (+{len(self.errors) - 10} more)" if len(self.errors) > 10 else ""
            text += f" — {shown}{more}"
        return text


class _RowInvalid(Exception):
    def __init__(self, column: str, message: str):
        super().__init__(message)
        self.column, self.message = column, message


# --- parsing -------------------------------------------------------------------------------------

def _text(row: dict, col: str, *, required: bool = False, default: str | None = None) -> str | None:
    v = (row.get(col) or "").strip()
    if not v:
        if required:
            raise _RowInvalid(col, "is empty")
        return default
    return v


def _float(row: dict, col: str, *, required: bool = False, default: float | None = None,
           lo: float = -math.inf, hi: float = math.inf) -> float | None:
    v = _text(row, col, required=required)
    if v is None:
        return default
    try:
        x = float(v)
    except ValueError:
        raise _RowInvalid(col, f"{v!r} is not a number") from None
    if not math.isfinite(x) or not lo <= x <= hi:
        raise _RowInvalid(col, f"{v} is outside {lo:g}…{hi:g}")
    return x


def _int(row: dict, col: str, *, lo: int, hi: int) -> int | None:
    v = _text(row, col)
    if v is None:
        return None
    try:
        x = int(v)
    except ValueError:
        raise _RowInvalid(col, f"{v!r} is not an integer") from None
    if not lo <= x <= hi:
        raise _RowInvalid(col, f"{x} is outside {lo}…{hi}")
    return x


def _bool(row: dict, col: str, default: bool) -> bool:
    v = _text(row, col)
    if v is None:
        return default
    if v.lower() in _TRUE:
        return True
    if v.lower() in _FALSE:
        return False
    raise _RowInvalid(col, f"{v!r} is not true/false")


def _choice(row: dict, col: str, allowed, default: str) -> str:
    v = _text(row, col, default=default)
    if isinstance(allowed, dict):
        if v not in allowed:
            raise _RowInvalid(col, f"{v!r} is not one of {sorted(set(allowed))}")
        return allowed[v]
    if v not in allowed:
        raise _RowInvalid(col, f"{v!r} is not one of {list(allowed)}")
    return v


def _phone(row: dict) -> str | None:
    v = _text(row, "contact_phone")
    if v is None:
        return None
    digits = normalise_phone(v)
    if not 7 <= len(digits) <= 12:
        raise _RowInvalid("contact_phone", f"{mask_phone(v)} is not a phone number (7–12 digits)")
    return v


def parse_row(row: dict) -> dict[str, dict[str, Any]]:
    """One CSV row → the entity attributes it carries, keyed by entity. Raises _RowInvalid."""
    for col in REQUIRED_COLUMNS:
        _text(row, col, required=True)
    supply = _float(row, "design_supply_c", default=None, lo=20, hi=150)
    ret = _float(row, "design_return_c", default=None, lo=10, hi=150)
    heating_type = _choice(row, "heating_type", HEATING_TYPES, "radiator")
    if supply is None:
        supply = 75.0 if heating_type == "radiator" else 45.0          # R45 design defaults
    if ret is None:
        ret = 50.0 if heating_type == "radiator" else 35.0
    if ret >= supply:
        raise _RowInvalid("design_return_c", f"{ret:g} ℃ is not below design_supply_c {supply:g} ℃")
    floors = _int(row, "building_floors", lo=1, hi=200)
    floor = _int(row, "floor", lo=-5, hi=200)
    if floors is not None and floor is not None and floor > floors:
        raise _RowInvalid("floor", f"{floor} is above the building's {floors} floors")
    room_type = _choice(row, "room_type", ROOM_TYPES, "other")
    vendor = _text(row, "sensor_vendor")
    if vendor is not None and vendor not in VENDORS:
        raise _RowInvalid("sensor_vendor", f"{vendor!r} is not one of {list(VENDORS)}")
    station = _text(row, "weather_station_code")
    return {
        "company": {"code": _text(row, "company_code"), "name": _text(row, "company_name"),
                    "region_code": _text(row, "region_code", default="national")},
        "branch": {"code": _text(row, "branch_code"), "name": _text(row, "branch_name")},
        "station": {"code": station, "name": _text(row, "weather_station_name"),
                    "design_outdoor_temp_c": _float(row, "design_outdoor_temp_c", lo=-60, hi=20)},
        "substation": {"code": _text(row, "substation_code"), "name": _text(row, "substation_name"),
                       "heating_type": heating_type, "design_supply_c": supply, "design_return_c": ret,
                       "design_flow_m3h": _float(row, "design_flow_m3h", lo=0, hi=100000),
                       "weather_station_code": station},
        "community": {"code": _text(row, "community_code"), "name": _text(row, "community_name")},
        "building": {"code": _text(row, "building_code"), "name": _text(row, "building_name"), "floors": floors},
        "unit": {"code": _text(row, "unit_code"), "name": _text(row, "unit_name")},
        "household": {"code": _text(row, "household_code"), "floor": floor,
                      "area_m2": _float(row, "area_m2", required=True, lo=1, hi=1_000_000),
                      "heating_status": _choice(row, "heating_status", HEATING_STATUS, "active"),
                      "billing_method": _choice(row, "billing_method", BILLING_METHODS, "area"),
                      "segment": _choice(row, "segment", SEGMENTS, "residential"),
                      "placement_class": _choice(row, "placement_class", PLACEMENT_CLASSES, "normal"),
                      "individually_valved": _bool(row, "individually_valved", True)},
        "contact": {"name": _text(row, "contact_name"), "phone": _phone(row),
                    "address": _text(row, "contact_address")},
        "room": {"code": _text(row, "room_code"), "room_type": room_type,
                 "area_m2": _float(row, "room_area_m2", lo=0.5, hi=100_000),
                 "counts_for_compliance": _bool(row, "counts_for_compliance", room_type in COMPLIANCE_ROOM_TYPES),
                 "sensor_vendor": vendor},
    }


# Which CSV column each entity attribute comes from (for "line N column X" consistency errors).
_COLUMN = {
    ("company", "name"): "company_name", ("company", "region_code"): "region_code",
    ("branch", "name"): "branch_name", ("station", "name"): "weather_station_name",
    ("station", "design_outdoor_temp_c"): "design_outdoor_temp_c",
    ("substation", "name"): "substation_name", ("substation", "heating_type"): "heating_type",
    ("substation", "design_supply_c"): "design_supply_c", ("substation", "design_return_c"): "design_return_c",
    ("substation", "design_flow_m3h"): "design_flow_m3h", ("substation", "weather_station_code"): "weather_station_code",
    ("community", "name"): "community_name", ("building", "name"): "building_name",
    ("building", "floors"): "building_floors", ("unit", "name"): "unit_name",
    ("household", "floor"): "floor", ("household", "area_m2"): "area_m2",
    ("household", "heating_status"): "heating_status", ("household", "billing_method"): "billing_method",
    ("household", "segment"): "segment", ("household", "placement_class"): "placement_class",
    ("household", "individually_valved"): "individually_valved",
    ("contact", "name"): "contact_name", ("contact", "phone"): "contact_phone", ("contact", "address"): "contact_address",
}
# entity → (its key column, its parent entity, the parent key column)
_PARENT = {"branch": ("branch_code", "company"), "substation": ("substation_code", "branch"),
           "community": ("community_code", "substation"), "building": ("building_code", "community"),
           "unit": ("unit_code", "building"), "household": ("household_code", "unit")}
_ORDER = ("company", "branch", "substation", "community", "building", "unit", "household")


class _Consistency:
    """First row wins for an entity's attributes; later rows that disagree are rejected."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], tuple[int, dict, str | None]] = {}

    def check(self, line: int, ent: dict[str, dict]) -> None:
        for i, kind in enumerate(_ORDER):
            attrs = {**ent[kind]}
            if kind == "household":
                attrs["contact"] = tuple(sorted((ent["contact"] or {}).items()))
            parent = ent[_ORDER[i - 1]]["code"] if i else None
            key = (kind, attrs["code"])
            if key not in self.seen:
                self.seen[key] = (line, attrs, parent)
                continue
            first_line, first, first_parent = self.seen[key]
            if parent != first_parent:
                col, pkind = _PARENT[kind]
                raise _RowInvalid(f"{pkind}_code", f"{kind} {attrs['code']} belongs to {pkind} {first_parent} "
                                                   f"on line {first_line}, not {parent}")
            for k, v in attrs.items():
                if k == "contact" and v != first[k]:
                    raise _RowInvalid("contact_name", f"household {attrs['code']}: contact differs from line "
                                                      f"{first_line}")
                if v != first[k]:
                    col = _COLUMN.get((kind, k), k)
                    shown = "(masked)" if k == "phone" else repr(first[k])
                    raise _RowInvalid(col, f"{kind} {attrs['code']} has {col}={shown} on line {first_line}; "
                                           f"rows of the same {kind} must agree")


# --- writing -------------------------------------------------------------------------------------

def _upsert_sql(table: str, key: tuple[str, ...], cols: list[str]) -> sql.Composed:
    """INSERT … ON CONFLICT (key) DO UPDATE only when something changed, RETURNING id, inserted?

    An unchanged row returns nothing (the WHERE stops the update), so re-imports rewrite nothing."""
    upd = [c for c in cols if c not in key]
    tbl = sql.Identifier(table)
    return sql.SQL("INSERT INTO {t} ({cols}) VALUES ({vals}) ON CONFLICT ({key}) DO UPDATE SET {set} "
                   "WHERE ({old}) IS DISTINCT FROM ({new}) RETURNING id, (xmax = 0)").format(
        t=tbl, cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
        vals=sql.SQL(", ").join(sql.Placeholder() * len(cols)),
        key=sql.SQL(", ").join(map(sql.Identifier, key)),
        set=sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in upd),
        old=sql.SQL(", ").join(sql.SQL("{t}.{c}").format(t=tbl, c=sql.Identifier(c)) for c in upd),
        new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in upd))


def _status(row) -> str:
    return "unchanged" if row is None else "created" if row[1] else "updated"


def _upsert(conn: psycopg.Connection, table: str, key: tuple[str, ...], values: dict[str, Any]) -> tuple[int, str]:
    """One row → (id, created|updated|unchanged)."""
    cols = list(values)
    row = conn.execute(_upsert_sql(table, key, cols), [values[c] for c in cols]).fetchone()
    if row is not None:
        return row[0], _status(row)
    where = sql.SQL(" AND ").join(sql.SQL("{c} = %s").format(c=sql.Identifier(c)) for c in key)
    got = conn.execute(sql.SQL("SELECT id FROM {t} WHERE {w}").format(t=sql.Identifier(table), w=where),
                       [values[c] for c in key]).fetchone()
    return got[0], "unchanged"


def _executemany_status(cur: psycopg.Cursor, query, params: list[list]) -> list[str]:
    """executemany with RETURNING (pipelined by psycopg) → one status per parameter set."""
    if not params:
        return []
    cur.executemany(query, params, returning=True)
    out = []
    while True:
        out.append(_status(cur.fetchone()))
        if not cur.nextset():
            break
    return out


def _ensure_station(conn: psycopg.Connection, st: dict) -> None:
    """The station must exist (FK). Name/design from the file update it; without them it must be known."""
    if st["name"] is not None and st["design_outdoor_temp_c"] is not None:
        conn.execute("""INSERT INTO weather_station (code, name, design_outdoor_temp_c) VALUES (%s, %s, %s)
                        ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name,
                            design_outdoor_temp_c = EXCLUDED.design_outdoor_temp_c
                        WHERE (weather_station.name, weather_station.design_outdoor_temp_c)
                              IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.design_outdoor_temp_c)""",
                     (st["code"], st["name"], st["design_outdoor_temp_c"]))
    elif conn.execute("SELECT 1 FROM weather_station WHERE code = %s", (st["code"],)).fetchone() is None:
        raise _RowInvalid("weather_station_code", f"station {st['code']} is unknown; give weather_station_name "
                                                  f"and design_outdoor_temp_c (R6) or import it first")


class _Writer:
    def __init__(self, conn: psycopg.Connection, cipher: FieldCipher, summary: ImportSummary):
        self.conn, self.cipher, self.summary = conn, cipher, summary
        self.ids: dict[tuple[str, str], int] = {}
        self.stations: set[str] = set()

    def _entity(self, kind: str, ent: dict[str, dict], build: Callable[[], tuple[str, tuple, dict]]) -> int:
        code = ent[kind]["code"]
        if (kind, code) in self.ids:
            return self.ids[(kind, code)]
        table, key, values = build()
        with self.conn.transaction():
            rid, status = _upsert(self.conn, table, key, values)
        self.summary.count(table, status)
        self.ids[(kind, code)] = rid
        return rid

    def parents(self, ent: dict[str, dict]) -> int:
        """Upsert company … unit (each once per import, in its own savepoint); → unit id."""
        st = ent["station"]
        if st["code"] and st["code"] not in self.stations:
            with self.conn.transaction():
                _ensure_station(self.conn, st)
            self.stations.add(st["code"])
        c, b, s, cm, bl, u = (ent[k] for k in ("company", "branch", "substation", "community", "building", "unit"))
        cid = self._entity("company", ent, lambda: ("company", ("code",), c))
        bid = self._entity("branch", ent, lambda: ("branch", ("code",), {**b, "company_id": cid}))
        sid = self._entity("substation", ent, lambda: ("substation", ("code",), {**s, "branch_id": bid}))
        cmid = self._entity("community", ent, lambda: ("community", ("code",), {**cm, "substation_id": sid}))
        blid = self._entity("building", ent, lambda: ("building", ("code",), {**bl, "community_id": cmid}))
        return self._entity("unit", ent, lambda: ("unit", ("code",), {**u, "building_id": blid}))

    def household(self, unit_id: int, ent: dict[str, dict], rooms: list[dict]) -> None:
        """Household, its rooms and its contact in one savepoint."""
        with self.conn.transaction():
            hid, status = _upsert(self.conn, "household", ("code",), {**ent["household"], "unit_id": unit_id})
            statuses = [("household", status)]
            for r in rooms:
                values = {k: v for k, v in r.items() if k != "sensor_vendor"}
                _, rs = _upsert(self.conn, "room", ("household_id", "code"), {**values, "household_id": hid})
                statuses.append(("room", rs))
            contact = ent["contact"]
            wrote_contact = any(contact.values())
            if wrote_contact:
                store_contact(self.conn, self.cipher, hid, contact["name"], contact["phone"], contact["address"])
        for table, st in statuses:
            self.summary.count(table, st)
        self.summary.contacts_written += int(wrote_contact)


_HH_COLS = ["code", "floor", "area_m2", "heating_status", "billing_method", "segment", "placement_class",
            "individually_valved", "unit_id"]
_ROOM_COLS = ["household_id", "code", "room_type", "area_m2", "counts_for_compliance"]


class _Batch:
    """Households, rooms and contacts of many households in a few pipelined round trips.

    The fast path of the import; any database error rolls the batch's savepoint back and the caller
    redoes those households one by one (``_Writer.household``) to pin the error on its lines."""

    def __init__(self, writer: _Writer):
        self.w = writer

    def write(self, items: list[tuple[int, dict[str, dict], list[dict]]]) -> None:
        conn, summary = self.w.conn, self.w.summary
        hh_params = [[*(ent["household"][c] for c in _HH_COLS[:-1]), unit_id] for unit_id, ent, _ in items]
        with conn.transaction():
            cur = conn.cursor()
            hh_status = _executemany_status(cur, _upsert_sql("household", ("code",), _HH_COLS), hh_params)
            codes = [ent["household"]["code"] for _, ent, _ in items]
            ids = dict(conn.execute("SELECT code, id FROM household WHERE code = ANY(%s)", (codes,)).fetchall())
            room_params = [[ids[ent["household"]["code"]], r["code"], r["room_type"], r["area_m2"],
                            r["counts_for_compliance"]] for _, ent, rooms in items for r in rooms]
            room_status = _executemany_status(cur, _upsert_sql("room", ("household_id", "code"), _ROOM_COLS),
                                              room_params)
            contacts = 0
            with conn.pipeline():
                for _, ent, _ in items:
                    c = ent["contact"]
                    if any(c.values()):
                        store_contact(conn, self.w.cipher, ids[ent["household"]["code"]], c["name"], c["phone"],
                                      c["address"])
                        contacts += 1
        for st in hh_status:
            summary.count("household", st)
        for st in room_status:
            summary.count("room", st)
        summary.contacts_written += contacts


def link_sensors(conn: psycopg.Connection) -> int:
    """Fill sensor.household_id / room_id / substation_id where the captured codes now resolve."""
    n = conn.execute("""UPDATE sensor s SET household_id = h.id FROM household h
                        WHERE s.household_code = h.code AND s.household_id IS DISTINCT FROM h.id""").rowcount
    n += conn.execute("""UPDATE sensor s SET room_id = r.id FROM room r JOIN household h ON h.id = r.household_id
                         WHERE s.household_code = h.code AND s.room_code = r.code
                           AND s.room_id IS DISTINCT FROM r.id""").rowcount
    n += conn.execute("""UPDATE sensor s SET substation_id = st.id FROM substation st
                         WHERE s.substation_code = st.code AND s.substation_id IS DISTINCT FROM st.id""").rowcount
    # room thermometers carry no substation code: take it from the household's place in the hierarchy
    n += conn.execute("""UPDATE sensor s SET substation_id = c.substation_id
                         FROM household h JOIN unit u ON u.id = h.unit_id JOIN building b ON b.id = u.building_id
                              JOIN community c ON c.id = b.community_id
                         WHERE s.household_id = h.id AND s.substation_code IS NULL
                           AND s.substation_id IS DISTINCT FROM c.substation_id""").rowcount
    return n


def import_households(conn: psycopg.Connection, csv_path: str | Path, cipher: FieldCipher) -> ImportSummary:
    """Upsert the register from ``csv_path``. Runs in one transaction (a savepoint if the caller has one
    open); bad rows are reported in the summary and skipped, everything else is committed."""
    summary = ImportSummary()
    path = Path(csv_path)
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            summary.errors.append(RowError(1, missing[0], f"required column(s) missing from the header: "
                                                          f"{', '.join(missing)}"))
            return summary
        parsed: list[tuple[int, dict[str, dict]]] = []
        check = _Consistency()
        for row in reader:
            summary.rows += 1
            line = reader.line_num
            if None in row:                                  # more fields than the header
                summary.errors.append(RowError(line, "", f"{len(header) + len(row[None])} fields, header has "
                                                         f"{len(header)}"))
                continue
            try:
                ent = parse_row(row)
                check.check(line, ent)
            except _RowInvalid as e:
                summary.errors.append(RowError(line, e.column, e.message))
                continue
            parsed.append((line, ent))

    # group rows by household, keeping file order
    groups: dict[str, list[tuple[int, dict[str, dict]]]] = {}
    for line, ent in parsed:
        groups.setdefault(ent["household"]["code"], []).append((line, ent))

    writer = _Writer(conn, cipher, summary)
    batch = _Batch(writer)
    pending: list[tuple[str, list[int], int, dict[str, dict], list[dict]]] = []

    def record_db_error(code: str, lines: list[int], e: psycopg.DatabaseError) -> None:
        msg = (e.diag.message_primary if e.diag and e.diag.message_primary else str(e)).strip()
        log.warning("household %s (lines %s) not imported: %s", code, lines, msg)
        summary.errors.extend(RowError(ln, "", f"household {code}: database refused it: {msg}") for ln in lines)

    def flush() -> None:
        if not pending:
            return
        try:
            batch.write([(unit_id, ent, rooms) for _, _, unit_id, ent, rooms in pending])
            summary.rows_imported += sum(len(lines) for _, lines, _, _, _ in pending)
        except psycopg.DatabaseError:
            # find the culprit(s): one savepoint per household
            for code, lines, unit_id, ent, rooms in pending:
                try:
                    writer.household(unit_id, ent, rooms)
                    summary.rows_imported += len(lines)
                except psycopg.DatabaseError as e:
                    record_db_error(code, lines, e)
        pending.clear()

    with conn.transaction():
        for code, rows in groups.items():
            lines = [ln for ln, _ in rows]
            ent = rows[0][1]
            seen_rooms: dict[str, int] = {}
            rooms = []
            for ln, e in rows:
                rc = e["room"]["code"]
                if rc in seen_rooms:
                    summary.errors.append(RowError(ln, "room_code", f"room {rc} of household {code} already on "
                                                                    f"line {seen_rooms[rc]}"))
                    lines.remove(ln)
                    continue
                seen_rooms[rc] = ln
                rooms.append(e["room"])
            try:
                unit_id = writer.parents(ent)
            except _RowInvalid as e:
                summary.errors.extend(RowError(ln, e.column, e.message) for ln in lines)
                continue
            except psycopg.DatabaseError as e:
                record_db_error(code, lines, e)
                continue
            pending.append((code, lines, unit_id, ent, rooms))
            if len(pending) >= BATCH_HOUSEHOLDS:
                flush()
        flush()
        summary.sensors_linked = link_sensors(conn)
    log.info("households import %s: %s", path.name, summary)
    return summary
