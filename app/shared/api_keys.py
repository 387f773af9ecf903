"""Who may do what: API keys, roles and tenants.

A key looks like `fr_<key id>_<secret>`. The key id (12 hex characters) is public: it
names the key in lists, logs and the audit trail. The secret is shown once, when the key
is made, and stored only as an scrypt hash (hashlib) beside its salt. Keys live in
`var/auth.sqlite`, apart from the job store, because every web process and the command
line (`run.py keys`) write them; every request reads its key's row, so a revoked key is
refused at once in every process, while the slow hash is checked once per process and key.
Fronts on any host read and change them through the broker (app/web/security.BrokerKeys): a front has no
`var/auth.sqlite` of its own and the secret of a new key never leaves the front that made it.

Roles (a key has one, and belongs to one tenant):
    admin    everything, every tenant; manages keys; /metrics
    builder  builds, derives, uses, lists, downloads and deletes its tenant's models; erases a person
             from them
    user     predicts and verifies with, lists, reads the reports and cards of and downloads its tenant's
             models

An operator's admin key can also come from the environment (FR_ADMIN_KEY); otherwise the
first start of `serve` makes one and writes it to `var/admin.key` (owner-only).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from app.shared.storage import store_errors

SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}  # ~50 ms a check: slow to guess, once per process and key
KEY_FORMAT = re.compile(r"fr_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
TENANT_FORMAT = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
ENV_KEY_ID = "env-admin"  # how FR_ADMIN_KEY appears in logs and the audit trail
ADMIN_TENANT = "admin"

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,      -- public: fr_<id>_<secret>
    tenant TEXT NOT NULL,
    role TEXT NOT NULL,
    name TEXT,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,       -- scrypt(secret, salt)
    created REAL NOT NULL,
    revoked REAL              -- when it was revoked; NULL while it works
);
"""


class Role(StrEnum):
    ADMIN = "admin"
    BUILDER = "builder"
    USER = "user"


class Action(StrEnum):
    """What a route does, for the role check."""
    READ = "read"          # list, status, report, download
    PREDICT = "predict"    # use a model
    BUILD = "build"        # build or derive a model
    DELETE = "delete"      # erase models and people
    ADMIN = "admin"        # keys, metrics, other tenants


ALLOWED: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.BUILDER: frozenset({Action.READ, Action.PREDICT, Action.BUILD, Action.DELETE}),
    Role.USER: frozenset({Action.READ, Action.PREDICT}),
}


class AuthError(Exception):
    """401 (no usable key) or 403 (a key that may not do this)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's id, tenant and role (or nobody in particular, with keys off)."""
    key_id: str
    tenant: str
    role: Role

    def may(self, action: Action) -> bool:
        return action in ALLOWED[self.role]

    def sees(self, tenant: str | None) -> bool:
        """Whether a model of `tenant` exists for this caller (another tenant's is 'not found')."""
        return self.role == Role.ADMIN or tenant == self.tenant


OPEN = Principal("none", ADMIN_TENANT, Role.ADMIN)  # FR_AUTH=0 (loopback only): everything, as before keys


def check_tenant(tenant: str) -> str:
    if not TENANT_FORMAT.fullmatch(tenant or ""):
        raise ValueError("a tenant is 1 to 63 characters: lower-case letters, digits, '_', '.', '-' "
                         "(starting with a letter or digit)")
    return tenant


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, **SCRYPT)


def parse_key(value: str) -> tuple[str, str] | None:
    match = KEY_FORMAT.fullmatch(value)
    return (match.group(1), match.group(2)) if match else None


def presented_key(headers) -> str | None:
    """The key a request carries: `X-API-Key: <key>` or `Authorization: Bearer <key>`; None if neither."""
    value = headers.get("X-API-Key")
    if value is None:
        auth = headers.get("Authorization")
        if auth is None:
            return None
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise AuthError(401, "send the API key as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'")
        value = token
    return value.strip()


class Keys:
    """What every key store does: make keys (the secret and its scrypt hash made here, in the caller's
    process) and check a presented key against its row. Subclasses say where the rows live: this host's
    `var/auth.sqlite` (KeyStore) or the broker's, over ZeroMQ (BrokerKeys, for fronts on any host).
    A row is read on every request, so a revocation holds at once; the slow hash is checked once per
    process and key (its sha256 is remembered)."""

    def __init__(self, env_admin_key: str = ""):
        self.env_admin = hashlib.sha256(env_admin_key.encode()).digest() if env_admin_key else None
        self._verified: dict[str, bytes] = {}  # key id -> sha256(secret) that passed scrypt here
        self._lock = threading.Lock()

    # --- where rows live (subclasses) ---------------------------------------------------------------
    def lookup(self, key_id: str) -> dict | None:
        """{tenant, role, salt, hash, revoked} of a key id, or None."""
        raise NotImplementedError

    def add(self, key_id: str, tenant: str, role: Role, name: str | None, salt: bytes, digest: bytes) -> dict:
        """Store a new key's row; -> its public description."""
        raise NotImplementedError

    def list(self, tenant: str | None = None) -> list[dict]:
        raise NotImplementedError

    def revoke(self, key_id: str) -> bool:
        """-> whether a working key was revoked."""
        raise NotImplementedError

    # --- the keys -------------------------------------------------------------------------------
    def create(self, tenant: str, role: Role | str, name: str | None = None) -> tuple[str, dict]:
        """A new key: (the key itself, to show once; its public description)."""
        role = Role(role)
        check_tenant(tenant)
        if name is not None and (len(name) > 200 or any(ord(c) < 32 for c in name)):
            raise ValueError("a key's name is at most 200 printable characters")
        key_id, secret = secrets.token_hex(6), base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()[:43]
        salt = secrets.token_bytes(16)
        info = self.add(key_id, tenant, role, name, salt, _hash(secret, salt))
        return f"fr_{key_id}_{secret}", info

    # --- checking a request ---------------------------------------------------------------------
    def verified_before(self, key: str) -> bool:
        """Whether `key` is the operator's key or passed the slow check in this process already: a cheap
        comparison, so that a key id locked by someone else's wrong guesses still lets its owner in."""
        if self.env_admin is not None and hmac.compare_digest(hashlib.sha256(key.encode()).digest(), self.env_admin):
            return True
        parsed = parse_key(key)
        if parsed is None:
            return False
        with self._lock:
            known = self._verified.get(parsed[0])
        return known is not None and hmac.compare_digest(known, hashlib.sha256(parsed[1].encode()).digest())

    def authenticate(self, key: str | None) -> Principal:
        """The caller a key names, or AuthError(401). Constant-time comparisons throughout."""
        if not key:
            raise AuthError(401, "this route needs an API key: send 'X-API-Key: <key>'")
        if self.env_admin is not None and hmac.compare_digest(hashlib.sha256(key.encode()).digest(), self.env_admin):
            return Principal(ENV_KEY_ID, ADMIN_TENANT, Role.ADMIN)
        parsed = parse_key(key)
        if parsed is None:
            raise AuthError(401, "not an API key of this service")
        key_id, secret = parsed
        row = self.lookup(key_id)
        if row is None or row["revoked"] is not None:
            raise AuthError(401, "unknown or revoked API key")
        digest = hashlib.sha256(secret.encode()).digest()
        with self._lock:
            known = self._verified.get(key_id)
        if known is None or not hmac.compare_digest(known, digest):
            if not hmac.compare_digest(_hash(secret, row["salt"]), row["hash"]):
                raise AuthError(401, "unknown or revoked API key")
            with self._lock:
                self._verified[key_id] = digest
        return Principal(key_id, row["tenant"], Role(row["role"]))


class KeyStore(Keys):
    """The keys table in `var/auth.sqlite` on the broker's host. Safe to share between the threads of a
    process; any number of processes (the broker, `run.py keys`)."""

    def __init__(self, db_path: Path, env_admin_key: str = ""):
        super().__init__(env_admin_key)
        self.db_path = Path(db_path)
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            with store_errors():
                conn = sqlite3.connect(self.db_path, timeout=5, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(SCHEMA)
            os.chmod(self.db_path, 0o600)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def execute(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with store_errors():
            return self._db().execute(sql, args)

    def lookup(self, key_id: str) -> dict | None:
        row = self.execute("SELECT tenant, role, salt, hash, revoked FROM keys WHERE id = ?", (key_id,)).fetchone()
        return dict(row) if row is not None else None

    def add(self, key_id: str, tenant: str, role: Role | str, name: str | None, salt: bytes, digest: bytes) -> dict:
        self.execute("INSERT INTO keys (id, tenant, role, name, salt, hash, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (key_id, check_tenant(tenant), Role(role).value, name, salt, digest, time.time()))
        return self.describe(key_id)

    def describe(self, key_id: str) -> dict:
        row = self.execute("SELECT id, tenant, role, name, created, revoked FROM keys WHERE id = ?",
                           (key_id,)).fetchone()
        if row is None:
            raise KeyError(key_id)
        return {"id": row["id"], "tenant": row["tenant"], "role": row["role"], "name": row["name"],
                "created": row["created"], "revoked": row["revoked"]}

    def list(self, tenant: str | None = None) -> list[dict]:
        rows = self.execute("SELECT id FROM keys WHERE ? IS NULL OR tenant = ? ORDER BY created",
                            (tenant, tenant)).fetchall()
        return [self.describe(r["id"]) for r in rows]

    def revoke(self, key_id: str) -> bool:
        cur = self.execute("UPDATE keys SET revoked = ? WHERE id = ? AND revoked IS NULL", (time.time(), key_id))
        return cur.rowcount == 1

    def has_admin(self) -> bool:
        return self.execute("SELECT 1 FROM keys WHERE role = ? AND revoked IS NULL LIMIT 1",
                            (Role.ADMIN.value,)).fetchone() is not None


def read_key(db_path: Path, key_id: str) -> dict | None:
    """A key's row read-only (the broker's reader threads): None if there is no such key or no key file yet.
    Raises StoreUnavailable when the file cannot be read."""
    if not Path(db_path).exists():
        return None
    with store_errors():
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=2.0)
        try:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT tenant, role, salt, hash, revoked FROM keys WHERE id = ?",
                               (key_id,)).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        finally:
            conn.close()
    return dict(row) if row is not None else None


def bootstrap_admin(store: KeyStore, key_file: Path, env_admin_key: str) -> Path | None:
    """First start: an admin key in `key_file` (0600) unless the operator gave one (FR_ADMIN_KEY) or an
    admin key exists. -> the file written, or None."""
    if env_admin_key or store.has_admin():
        return None
    key, _ = store.create(ADMIN_TENANT, Role.ADMIN, "made on first start")
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    os.chmod(key_file, 0o600)
    return key_file
