"""Field encryption for personal data (PIPL art. 51; domain.md R57–R59).

Phone numbers, names and addresses are encrypted with **SM4-GCM** (国密, via `cryptography`'s
OpenSSL build) and a deterministic **SM3-HMAC blind index** allows equality search by phone
without decrypting. Ciphertext layout: version byte | 12-byte nonce | ciphertext | 16-byte tag.
The key comes from configuration (HEATDESK_FIELD_KEY_HEX, 32 bytes hex: 16 for SM4, 16 for the
index key), never from the repository.
"""
from __future__ import annotations

import os
import re
import unicodedata

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY_VERSION = 1
_NONCE = 12
_TAG = 16


class FieldCipher:
    def __init__(self, key_hex: str):
        key = bytes.fromhex(key_hex)
        if len(key) != 32:
            raise ValueError("field key must be 32 bytes (64 hex chars): 16 for SM4, 16 for the SM3-HMAC index")
        self._enc_key, self._idx_key = key[:16], key[16:]

    def encrypt(self, text: str | None) -> bytes | None:
        if text is None or text == "":
            return None
        nonce = os.urandom(_NONCE)
        enc = Cipher(algorithms.SM4(self._enc_key), modes.GCM(nonce)).encryptor()
        ct = enc.update(text.encode("utf-8")) + enc.finalize()
        return bytes([KEY_VERSION]) + nonce + ct + enc.tag

    def decrypt(self, blob: bytes | memoryview | None) -> str | None:
        if blob is None:
            return None
        blob = bytes(blob)
        nonce, ct, tag = blob[1:1 + _NONCE], blob[1 + _NONCE:-_TAG], blob[-_TAG:]
        dec = Cipher(algorithms.SM4(self._enc_key), modes.GCM(nonce, tag)).decryptor()
        return (dec.update(ct) + dec.finalize()).decode("utf-8")

    def phone_index(self, phone: str) -> bytes:
        """Deterministic keyed hash of the normalised phone number (digits only, no +86)."""
        h = hmac.HMAC(self._idx_key, hashes.SM3())
        h.update(normalise_phone(phone).encode("ascii"))
        return h.finalize()


    def name_index(self, name: str) -> bytes:
        """Deterministic keyed hash of a full name (NFKC, no spaces): exact-name search without decrypting.
        Domain-separated from the phone index, so equal strings never give equal index values across fields."""
        h = hmac.HMAC(self._idx_key, hashes.SM3())
        h.update(b"name\x00" + normalise_name(name).encode("utf-8"))
        return h.finalize()


def normalise_name(name: str) -> str:
    """Full-width/half-width folded (NFKC) and without any whitespace: '王 伟' and '王伟' are one name."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", name or ""))


def normalise_phone(phone: str) -> str:
    digits = re.sub(r"\D", "", phone or "")
    if digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    return digits


def mask_phone(phone: str | None) -> str | None:
    """138****5678 (PIPL minimum necessary, R60)."""
    if not phone:
        return phone
    p = normalise_phone(phone)
    if len(p) < 7:
        return "*" * len(p)
    return p[:3] + "*" * (len(p) - 7) + p[-4:]


def mask_name(name: str | None) -> str | None:
    """张** / 王*: keep the surname only."""
    if not name:
        return name
    return name[0] + "*" * max(1, len(name) - 1)


def mask_address(address: str | None) -> str | None:
    """Keep the community/building part, hide unit and door numbers."""
    if not address:
        return address
    return re.sub(r"\d+单元.*$|\d+室$|\d+-\d+$", "****", address)


def new_key_hex() -> str:
    return os.urandom(32).hex()


def store_contact(conn, cipher: FieldCipher, household_id: int, name: str | None, phone: str | None,
                  address: str | None) -> None:
    """Upsert a household's contact, encrypted; the only writer of pii.household_contact."""
    conn.execute(
        """INSERT INTO pii.household_contact (household_id, name_enc, phone_enc, phone_index, address_enc, key_version,
                                             name_index)
           VALUES (%s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (household_id) DO UPDATE SET name_enc = EXCLUDED.name_enc, phone_enc = EXCLUDED.phone_enc,
               phone_index = EXCLUDED.phone_index, address_enc = EXCLUDED.address_enc,
               key_version = EXCLUDED.key_version, name_index = EXCLUDED.name_index, updated_at = now()""",
        (household_id, cipher.encrypt(name), cipher.encrypt(phone),
         cipher.phone_index(phone) if phone else None, cipher.encrypt(address), KEY_VERSION,
         cipher.name_index(name) if name else None),
    )


def backfill_name_index(conn, cipher: FieldCipher, batch: int = 5000) -> int:
    """Fill name_index for contacts stored before it existed (decrypts each such name once); returns the
    count. Idempotent and cheap when nothing is missing: run at API bootstrap."""
    done = 0
    while True:
        rows = conn.execute("""SELECT household_id, name_enc FROM pii.household_contact
                                WHERE name_index IS NULL AND name_enc IS NOT NULL ORDER BY household_id LIMIT %s""",
                            (batch,)).fetchall()
        if not rows:
            return done
        with conn.cursor() as cur:
            cur.executemany("UPDATE pii.household_contact SET name_index = %s WHERE household_id = %s",
                            [(cipher.name_index(cipher.decrypt(blob) or ""), hid) for hid, blob in rows])
        conn.commit()
        done += len(rows)
