"""Authentication and the user store: argon2id passwords, signed bearer tokens, hashed API keys.

Why these choices:
- Passwords are hashed with argon2id (argon2-cffi) — slow on purpose, per OWASP.
- Bearer tokens are ``base64url(json).base64url(HMAC-SHA256)`` signed with ``settings.token_secret``.
  They carry only the user id, an expiry and the user's ``token_version``; every request re-reads the
  user from the database, so a disabled user, a changed role or a logout (version bump) takes effect
  at once (OWASP API2: broken authentication).
- API keys (service accounts) are 32 random bytes; only SHA-256 of the secret is stored. A fast hash
  is right here because the secret has full entropy (no dictionary to attack), and it keeps
  per-request verification cheap.

Roles (docs/ARCHITECTURE.md): agent, supervisor, engineer, dispatcher, technician, finance, auditor,
admin — plus ``customer`` for the self-service page, bound to one household.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass, field

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from psycopg.rows import dict_row

log = logging.getLogger(__name__)

STAFF_ROLES = ("agent", "supervisor", "engineer", "dispatcher", "technician", "finance", "auditor", "admin")
ROLES = STAFF_ROLES + ("customer",)

#: Capabilities per role (minimum necessary, PIPL art. 6 / domain.md R60). A route asks for a scope
#: with ``deps.require_scopes``; ``deps.require_roles`` is the coarser check.
ROLE_SCOPES: dict[str, frozenset[str]] = {
    # 客服: talks to the customer, needs name/phone/address of the household on the line.
    "agent": frozenset({"households:read", "pii:contact", "tickets:read", "tickets:write", "curves:read",
                        "dunning:read"}),
    "supervisor": frozenset({"households:read", "pii:contact", "tickets:read", "tickets:write",
                             "tickets:assign", "curves:read", "dunning:read", "reports:read",
                             "substations:read", "devices:read"}),
    # 运行工程师: substations and analytics; no contact data.
    "engineer": frozenset({"households:read", "curves:read", "substations:read", "substations:write",
                           "devices:read", "reports:read", "tickets:read"}),
    "dispatcher": frozenset({"households:read", "pii:contact", "tickets:read", "tickets:write",
                             "tickets:assign", "curves:read", "substations:read", "reports:read"}),
    # 维修员: visits the flat, needs address and phone of his orders.
    "technician": frozenset({"households:read", "pii:contact", "tickets:read", "tickets:work", "curves:read"}),
    # 收费: bills go to the named payer; hardship status (特定身份, R57) only here.
    "finance": frozenset({"households:read", "pii:contact", "pii:hardship", "dunning:read", "dunning:write",
                          "curves:read", "reports:read", "tickets:read"}),
    # 审计: reads everything masked, plus the PII access log.
    "auditor": frozenset({"households:read", "tickets:read", "curves:read", "dunning:read", "reports:read",
                          "substations:read", "devices:read", "audit:read"}),
    # 管理员: users and configuration; sees personal data masked (not needed for administration).
    "admin": frozenset({"households:read", "tickets:read", "curves:read", "dunning:read", "reports:read",
                        "substations:read", "devices:read", "audit:read", "users:admin"}),
    "customer": frozenset({"self:read", "self:write", "curves:read"}),
}

TOKEN_TTL_S = 12 * 3600

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class User:
    """The authenticated caller. ``branch_ids`` is always the concrete list of branches in scope."""

    id: int
    username: str
    role: str
    company_id: int
    branch_ids: tuple[int, ...]
    scopes: frozenset[str]
    display_name: str = ""
    household_id: int | None = None      # role customer only
    technician_id: int | None = None     # role technician: ticketing's technician.id ("my orders")
    is_service: bool = False
    token_version: int = 1
    company_ids: tuple[int, ...] = field(default=())

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    @property
    def can_see_contact(self) -> bool:
        return "pii:contact" in self.scopes

    @property
    def can_see_hardship(self) -> bool:
        return "pii:hardship" in self.scopes


# --------------------------------------------------------------------------------------------- throttle


class LoginThrottle:
    """Failed logins per key (username and client address) in a sliding window (OWASP API2).

    After ``max_failures`` failures within ``window_s`` seconds the key is refused until the oldest
    failure leaves the window. Per process: with several workers each counts its own (documented).
    """

    def __init__(self, max_failures: int = 5, window_s: float = 300.0):
        self.max_failures, self.window_s = max_failures, window_s
        self._failures: dict[str, list[float]] = {}

    def _recent(self, key: str, now: float) -> list[float]:
        kept = [t for t in self._failures.get(key, []) if now - t < self.window_s]
        if kept:
            self._failures[key] = kept
        else:
            self._failures.pop(key, None)
        return kept

    def retry_after(self, keys: list[str], now: float) -> int:
        """Seconds until a login may be tried again (0 = allowed)."""
        wait = 0.0
        for key in keys:
            recent = self._recent(key, now)
            if len(recent) >= self.max_failures:
                wait = max(wait, self.window_s - (now - recent[-self.max_failures]))
        return int(wait) + (1 if wait else 0)

    def failure(self, keys: list[str], now: float) -> None:
        for key in keys:
            self._recent(key, now)
            self._failures.setdefault(key, []).append(now)
        if len(self._failures) > 100_000:          # bound memory under a spray of usernames
            for key in list(self._failures)[:50_000]:
                del self._failures[key]

    def success(self, keys: list[str]) -> None:
        for key in keys:
            self._failures.pop(key, None)


# --------------------------------------------------------------------------------------------- tokens

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(secret: str, user_id: int, token_version: int, *, now: float | None = None,
                ttl_s: int = TOKEN_TTL_S) -> str:
    now = time.time() if now is None else now
    payload = json.dumps({"uid": user_id, "ver": token_version, "iat": int(now), "exp": int(now + ttl_s)},
                         separators=(",", ":")).encode()
    body = _b64(payload)
    sig = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(sig)}"


def verify_token(secret: str, token: str, *, now: float | None = None) -> dict | None:
    """The token's claims, or None when the signature is wrong, it is malformed or expired."""
    now = time.time() if now is None else now
    try:
        body, sig = token.split(".", 1)
        expected = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(sig)):
            return None
        claims = json.loads(_unb64(body))
    except (ValueError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(claims, dict) or not isinstance(claims.get("uid"), int):
        return None
    if claims.get("exp", 0) < now:
        return None
    return claims


# --------------------------------------------------------------------------------------------- API keys

API_KEY_PREFIX = "hdk"


def new_api_key() -> tuple[str, str, bytes]:
    """(full key shown once, public prefix, sha256 of the secret)."""
    prefix = f"{API_KEY_PREFIX}_{secrets.token_hex(6)}"
    secret = secrets.token_urlsafe(32)
    return f"{prefix}.{secret}", prefix, hashlib.sha256(secret.encode()).digest()


def split_api_key(key: str) -> tuple[str, bytes] | None:
    if not key.startswith(API_KEY_PREFIX + "_") or "." not in key:
        return None
    prefix, secret = key.split(".", 1)
    return prefix, hashlib.sha256(secret.encode()).digest()


# --------------------------------------------------------------------------------------------- store

_USER_COLS = ("u.id, u.username, u.display_name, u.password_hash, u.role, u.company_id, u.household_id, "
              "u.is_service, u.active, u.token_version, u.technician_id")


def _scope_branches(conn: psycopg.Connection, user_id: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Concrete branch ids (and company ids) of a user's scope rows (NULL branch = whole company)."""
    rows = conn.execute(
        """SELECT DISTINCT b.id, b.company_id FROM app_user_scope s
             JOIN branch b ON b.company_id = s.company_id AND (s.branch_id IS NULL OR b.id = s.branch_id)
            WHERE s.user_id = %s ORDER BY b.id""", (user_id,)).fetchall()
    return tuple(r[0] for r in rows), tuple(sorted({r[1] for r in rows}))


# The same scope as _scope_branches, as columns of the user's own row: every request loads its user, and
# one round trip instead of two is measurable in the screen-pop latency (issue 4).
_SCOPE_COLS = """, (SELECT coalesce(array_agg(DISTINCT b.id ORDER BY b.id), '{}') FROM app_user_scope s
                    JOIN branch b ON b.company_id = s.company_id AND (s.branch_id IS NULL OR b.id = s.branch_id)
                   WHERE s.user_id = u.id) AS scope_branch_ids,
                 (SELECT coalesce(array_agg(DISTINCT b.company_id ORDER BY b.company_id), '{}') FROM app_user_scope s
                    JOIN branch b ON b.company_id = s.company_id AND (s.branch_id IS NULL OR b.id = s.branch_id)
                   WHERE s.user_id = u.id) AS scope_company_ids"""


def _to_user(conn: psycopg.Connection, row: dict, extra_scopes: frozenset[str] | None = None) -> User:
    if "scope_branch_ids" in row:
        branches, companies = tuple(row["scope_branch_ids"]), tuple(row["scope_company_ids"])
    else:
        branches, companies = _scope_branches(conn, row["id"])
    scopes = ROLE_SCOPES[row["role"]]
    if extra_scopes:
        # An API key can only narrow its account's scopes, never widen them.
        scopes = scopes & extra_scopes
    return User(id=row["id"], username=row["username"], role=row["role"], company_id=row["company_id"],
                branch_ids=branches, scopes=scopes, display_name=row["display_name"] or "",
                household_id=row["household_id"], is_service=row["is_service"],
                token_version=row["token_version"], company_ids=companies or (row["company_id"],),
                technician_id=row["technician_id"])


def load_user(conn: psycopg.Connection, user_id: int) -> User | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {_USER_COLS}{_SCOPE_COLS} FROM app_user u WHERE u.id = %s AND u.active",
                          (user_id,)).fetchone()
    return _to_user(conn, row) if row else None


def user_from_token(conn: psycopg.Connection, secret: str, token: str) -> User | None:
    claims = verify_token(secret, token)
    if claims is None:
        return None
    user = load_user(conn, claims["uid"])
    if user is None or user.token_version != claims.get("ver"):
        return None
    return user


def user_from_api_key(conn: psycopg.Connection, key: str) -> User | None:
    parts = split_api_key(key)
    if parts is None:
        return None
    prefix, digest = parts
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"""SELECT {_USER_COLS}{_SCOPE_COLS}, k.id AS key_id, k.secret_hash, k.scopes AS key_scopes
                  FROM api_key k JOIN app_user u ON u.id = k.user_id
                 WHERE k.prefix = %s AND k.revoked_at IS NULL AND u.active""", (prefix,)).fetchone()
    if row is None or not hmac.compare_digest(bytes(row["secret_hash"]), digest):
        return None
    conn.execute("UPDATE api_key SET last_used_at = now() WHERE id = %s", (row["key_id"],))
    return _to_user(conn, row, frozenset(row["key_scopes"]) if row["key_scopes"] else None)


def authenticate(conn: psycopg.Connection, username: str, password: str) -> User | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {_USER_COLS} FROM app_user u WHERE u.username = %s AND u.active",
                          (username,)).fetchone()
    if row is None:
        # Spend the same time as a real verification, so usernames cannot be probed by timing.
        verify_password(_DUMMY_HASH, password)
        return None
    if row["is_service"] or not verify_password(row["password_hash"], password):
        return None
    if _hasher.check_needs_rehash(row["password_hash"]):
        conn.execute("UPDATE app_user SET password_hash = %s WHERE id = %s", (hash_password(password), row["id"]))
    conn.execute("UPDATE app_user SET last_login_at = now() WHERE id = %s", (row["id"],))
    return _to_user(conn, row)


_DUMMY_HASH = _hasher.hash("not-a-real-password")


def revoke_tokens(conn: psycopg.Connection, user_id: int) -> None:
    conn.execute("UPDATE app_user SET token_version = token_version + 1 WHERE id = %s", (user_id,))


def create_user(conn: psycopg.Connection, *, username: str, role: str, company_id: int,
                password: str | None = None, display_name: str = "", branch_ids: list[int] | None = None,
                household_id: int | None = None, is_service: bool = False,
                technician_id: int | None = None) -> int:
    """Insert or update a user and replace its scope rows; returns the id.

    ``branch_ids`` None = the whole company; a list = only these branches.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if role == "customer" and household_id is None:
        raise ValueError("role customer needs household_id")
    pw_hash = hash_password(password) if password else None
    row = conn.execute(
        """INSERT INTO app_user (username, display_name, password_hash, role, company_id, household_id, is_service,
                                 technician_id)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (username) DO UPDATE SET display_name = EXCLUDED.display_name,
               password_hash = coalesce(EXCLUDED.password_hash, app_user.password_hash), role = EXCLUDED.role,
               company_id = EXCLUDED.company_id, household_id = EXCLUDED.household_id,
               is_service = EXCLUDED.is_service, technician_id = EXCLUDED.technician_id, active = true
           RETURNING id""",
        (username, display_name, pw_hash, role, company_id, household_id, is_service, technician_id)).fetchone()
    user_id = row[0]
    conn.execute("DELETE FROM app_user_scope WHERE user_id = %s", (user_id,))
    if branch_ids is None:
        conn.execute("INSERT INTO app_user_scope (user_id, company_id) VALUES (%s, %s)", (user_id, company_id))
    else:
        for b in branch_ids:
            conn.execute(
                """INSERT INTO app_user_scope (user_id, company_id, branch_id)
                   SELECT %s, company_id, id FROM branch WHERE id = %s AND company_id = %s""",
                (user_id, b, company_id))
    return user_id


def create_api_key(conn: psycopg.Connection, user_id: int, scopes: list[str] | None = None) -> str:
    key, prefix, digest = new_api_key()
    conn.execute("INSERT INTO api_key (user_id, prefix, secret_hash, scopes) VALUES (%s, %s, %s, %s)",
                 (user_id, prefix, digest, scopes or []))
    return key


def revoke_api_key(conn: psycopg.Connection, prefix: str) -> bool:
    cur = conn.execute("UPDATE api_key SET revoked_at = now() WHERE prefix = %s AND revoked_at IS NULL", (prefix,))
    return cur.rowcount > 0


def scope_objects(conn: psycopg.Connection, user: User) -> dict:
    """Branches and substations in the user's scope (names and codes: no personal data)."""
    with conn.cursor(row_factory=dict_row) as cur:
        company = cur.execute("SELECT id, code, name, region_code FROM company WHERE id = %s",
                              (user.company_id,)).fetchone()
        branches = cur.execute("SELECT id, code, name FROM branch WHERE id = ANY(%s) ORDER BY code",
                               (list(user.branch_ids),)).fetchall()
        substations = cur.execute(
            """SELECT s.id, s.code, s.name, s.branch_id, s.heating_type,
                      (SELECT count(*) FROM community c WHERE c.substation_id = s.id) AS communities
                 FROM substation s WHERE s.branch_id = ANY(%s) ORDER BY s.code""",
            (list(user.branch_ids),)).fetchall()
    return {"company": company, "branches": branches, "substations": substations}
