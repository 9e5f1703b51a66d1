"""Personal data in the API (PIPL arts. 5, 6, 51; domain.md R55–R60): decrypt, mask by role, log.

Every router that shows a household's name, phone or address goes through ``contact_view``: it
decrypts ``pii.household_contact`` (SM4-GCM, core/pii.py), masks for roles without the
``pii:contact`` scope (138****5678, 张*, address without unit/door) and writes one
``pii_access_log`` row per household shown — masked reads too, because a masked phone plus a
household id is still personal information. The log row is written in the request's transaction.
"""
from __future__ import annotations

import logging
from typing import Iterable

import psycopg
from fastapi import Request

from api.auth import User
from api.errors import ApiError
from core.pii import FieldCipher, mask_address, mask_name, mask_phone

log = logging.getLogger(__name__)

CONTACT_FIELDS = ("name", "phone", "address")


def get_cipher(request: Request) -> FieldCipher:
    cipher = getattr(request.app.state, "cipher", None)
    if cipher is None:
        raise ApiError(503, "pii_key_missing")
    return cipher


def log_pii_access(conn: psycopg.Connection, request: Request | None, user: User, household_ids: Iterable[int],
                   fields: Iterable[str], *, masked: bool, purpose: str) -> None:
    """Record who read which personal fields of which households, and why (R60)."""
    hids = list(dict.fromkeys(household_ids))
    if not hids:
        return
    fields = list(fields)
    rid = getattr(request.state, "request_id", None) if request is not None else None
    ip = request.client.host if request is not None and request.client else None
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO pii_access_log (user_id, username, role, household_id, fields, masked, purpose,
                                           request_id, client_ip)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            [(user.id, user.username, user.role, hid, fields, masked, purpose, rid, ip) for hid in hids])


#: Ticket states in which a technician still needs to reach the customer.
_OPEN_FOR_VISIT = ("closed", "cancelled", "merged")


def _technician_households(conn: psycopg.Connection, user: User, household_ids: list[int]) -> set[int]:
    """Households with a not-yet-closed ticket assigned to this technician (a 维修员 needs the address
    and phone of the flats he visits, not of every flat in the branch: minimum necessary, PIPL art. 6)."""
    if user.technician_id is None:
        return set()
    rows = conn.execute(
        """SELECT DISTINCT household_id FROM ticket
            WHERE household_id = ANY(%s) AND assignee_id = %s AND status <> ALL(%s)""",
        (household_ids, user.technician_id, list(_OPEN_FOR_VISIT))).fetchall()
    return {r[0] for r in rows}


def may_see_contact(user: User, household_id: int, visits: set[int] | None = None) -> bool:
    if user.role == "customer":
        return user.household_id == household_id
    if user.role == "technician":
        return user.can_see_contact and household_id in (visits or set())
    return user.can_see_contact


def contact_view(conn: psycopg.Connection, request: Request | None, user: User, household_ids: Iterable[int],
                 *, purpose: str, cipher: FieldCipher | None = None, force_mask: bool = False,
                 fields: tuple[str, ...] = CONTACT_FIELDS) -> dict[int, dict]:
    """{household_id: {"name", "phone", "address", "masked"}} for households the caller may already
    see (check object access first!), masked unless the role needs the clear values; logs the read.

    ``force_mask`` masks even for roles that may see clear values (lists, search results: minimum
    necessary — the clear values are shown on the card of the one household being served).
    """
    hids = list(dict.fromkeys(int(h) for h in household_ids))
    if not hids:
        return {}
    if cipher is None:
        if request is None:
            raise ValueError("contact_view needs a cipher or a request")
        cipher = get_cipher(request)
    rows = conn.execute(
        "SELECT household_id, name_enc, phone_enc, address_enc FROM pii.household_contact WHERE household_id = ANY(%s)",
        (hids,)).fetchall()
    visits = _technician_households(conn, user, hids) if user.role == "technician" and not force_mask else set()
    out: dict[int, dict] = {}
    clear_ids, masked_ids = [], []
    for hid, name_enc, phone_enc, addr_enc in rows:
        name, phone, address = cipher.decrypt(name_enc), cipher.decrypt(phone_enc), cipher.decrypt(addr_enc)
        clear = not force_mask and may_see_contact(user, hid, visits)
        if not clear:
            name, phone, address = mask_name(name), mask_phone(phone), mask_address(address)
        item = {"name": name, "phone": phone, "address": address, "masked": not clear}
        out[hid] = {k: v for k, v in item.items() if k in fields or k == "masked"}
        (clear_ids if clear else masked_ids).append(hid)
    if clear_ids:
        log_pii_access(conn, request, user, clear_ids, fields, masked=False, purpose=purpose)
    if masked_ids:
        log_pii_access(conn, request, user, masked_ids, fields, masked=True, purpose=purpose)
    return out


def hardship_view(conn: psycopg.Connection, request: Request | None, user: User, household_id: int, *,
                  purpose: str, cipher: FieldCipher | None = None) -> dict | None:
    """低保/特困 status (special identity, sensitive: R38, R57) for roles holding ``pii:hardship`` only.

    Returns None for every other role — not even "none on record", because the mere presence of a
    record reveals the category. For ``pii:hardship`` holders the read is logged, with or without a record.
    """
    if "pii:hardship" not in user.scopes:
        return None
    cipher = cipher or get_cipher(request)
    exists = conn.execute("SELECT to_regclass('pii.dunning_hardship') IS NOT NULL").fetchone()[0]
    row = conn.execute(
        "SELECT category_enc, valid_from, expires_on, verified_by FROM pii.dunning_hardship WHERE household_id = %s",
        (household_id,)).fetchone() if exists else None
    log_pii_access(conn, request, user, [household_id], ["hardship"], masked=False, purpose=purpose)
    if row is None:
        return {"on_record": False}
    return {"on_record": True, "category": cipher.decrypt(row[0]), "valid_from": row[1], "expires_on": row[2],
            "verified_by": row[3]}
