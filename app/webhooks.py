"""Callbacks: when a job ends, its status is POSTed to the URL its client gave, signed.

Signing follows the Standard Webhooks convention (standardwebhooks.com): headers
`webhook-id` (the same on every retry of one message), `webhook-timestamp` (seconds
since the epoch, when this attempt was sent) and `webhook-signature: v1,<base64 of
HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`, the key being the base64 part of the
job's `whsec_...` secret.

Who may be called: only hosts in FR_WEBHOOK_ALLOW (names, `*.domain` suffixes, IP
addresses or networks), and only at public addresses unless the address (or its
network) is listed too: every address a name resolves to is checked, at submit and
again before each attempt, and the connection goes to an address that was checked (a
name that resolves elsewhere a second later gains nothing). Redirects are not followed
(a 3xx is a failed attempt). The service cannot be made to call into the operator's
network by a client.

Delivery: the broker records the message in `var/webhooks.sqlite` when the job ends (a
quick local write: the broker never waits on a receiver); a sender thread in the broker
process POSTs it, and retries with a doubling delay (FR_WEBHOOK_RETRY_S, capped at an
hour) for FR_WEBHOOK_RETRY_FOR_S while the receiver fails. The queue is on disk, so a
restart loses nothing: at-least-once delivery, deduplicated by `webhook-id`.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import ipaddress
import json
import secrets
import socket
import sqlite3
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from constants import Settings, webhook_allow_entries
from logger import logger

SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix of every secret, not one)
MAX_DELAY_S = 3600.0        # retries back off up to this
MAX_RESPONSE_BYTES = 64 * 1024
KEEP_DONE_S = 7 * 86400     # delivered or abandoned messages stay visible (GET /is_available) this long
DB_FILE = "webhooks.sqlite"
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class CallbackRefused(Exception):
    """A callback URL the service will not call; `code` for the API (400)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


# --- signing -----------------------------------------------------------------------------------
def new_secret() -> str:
    """A job's signing secret, as Standard Webhooks writes them: whsec_ + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">."""
    key = base64.b64decode(secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret)
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, msg_id, timestamp, body),
            "user-agent": "api-facial-recognition webhook"}


# --- who may be called -------------------------------------------------------------------------
@dataclass(frozen=True)
class AllowList:
    """FR_WEBHOOK_ALLOW: host names, `*.domain` (any name below it), IP addresses and networks."""
    names: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, raw: str) -> AllowList:
        names, suffixes, networks = set(), [], []
        for entry in webhook_allow_entries(raw):
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if entry.startswith("*."):
                suffixes.append(entry[1:])
            else:
                names.add(entry)
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def listed(self, address: Address) -> bool:
        return any(address.version == n.version and address in n for n in self.networks)

    def host_allowed(self, host: str) -> bool:
        address = ip_or_none(host)
        if address is not None:
            return self.listed(address)
        return host in self.names or any(host.endswith(s) for s in self.suffixes)

    def address_allowed(self, address: Address) -> bool:
        """A public address, or one the operator listed (a private, loopback or link-local address must be)."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if self.listed(address):
            return True
        return address.is_global and not address.is_multicast


def ip_or_none(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def resolve(host: str, port: int) -> list[Address]:
    """Every address `host` resolves to (an IP literal: itself)."""
    literal = ip_or_none(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise CallbackRefused("CALLBACK_UNRESOLVABLE", f"the callback host {host!r} does not resolve ({exc})") from None
    out: list[Address] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in out:
            out.append(address)
    return out


def split_url(url: str) -> tuple[str, str, int, str]:
    """-> (scheme, host, port, path with query) of an http(s) URL without credentials, or CallbackRefused."""
    if not isinstance(url, str) or not url or len(url) > 2048 or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise CallbackRefused("BAD_CALLBACK_URL", "callback_url must be an http or https URL of at most 2048 "
                              "characters, without spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackRefused("BAD_CALLBACK_URL", f"callback_url is not a URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused("BAD_CALLBACK_URL", "callback_url must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise CallbackRefused("BAD_CALLBACK_URL", "callback_url must not carry credentials (user:password@)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, parts.hostname.lower().rstrip("."), port or (443 if scheme == "https" else 80), path


def check_url(url: str, allow: AllowList, resolver: Callable[[str, int], list[Address]] = resolve
              ) -> list[Address]:
    """The addresses a callback URL may be reached at, every one of them allowed; CallbackRefused otherwise."""
    _, host, port, _ = split_url(url)
    if not allow.host_allowed(host):
        raise CallbackRefused("CALLBACK_NOT_ALLOWED", f"callbacks to {host!r} are not allowed: the operator lists "
                              "the hosts the service may call in FR_WEBHOOK_ALLOW")
    addresses = resolver(host, port)
    refused = [str(a) for a in addresses if not allow.address_allowed(a)]
    if refused or not addresses:
        raise CallbackRefused("CALLBACK_NOT_ALLOWED", f"{host!r} resolves to {', '.join(refused) or 'nothing'}: a "
                              "private, loopback or reserved address that FR_WEBHOOK_ALLOW does not list")
    return addresses


def callback_for(raw: str | None, settings: Settings) -> dict | None:
    """The front's check of a build's `callback_url` -> {url, secret} (a new secret), None when not given.
    Raises CallbackRefused."""
    if raw is None or raw == "":
        return None
    check_url(raw, AllowList.parse(settings.webhook_allow))
    return {"url": raw, "secret": new_secret()}


def post(url: str, addresses: list[Address], body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST `body` to `url`, connecting to one of the checked `addresses` (never resolving again), with no
    redirect followed. -> the HTTP status."""
    scheme, host, port, path = split_url(url)
    sock: socket.socket | None = None
    error: OSError = OSError("no address")
    for address in addresses:
        try:
            sock = socket.create_connection((str(address), port), timeout=timeout)
            break
        except OSError as exc:
            error = exc
    if sock is None:
        raise error
    try:
        if scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = sock
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(MAX_RESPONSE_BYTES)
        return response.status
    finally:
        sock.close()


# --- the durable queue ---------------------------------------------------------------------------
SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
    job_id TEXT PRIMARY KEY, url TEXT NOT NULL, secret TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,            -- webhook-id: the same on every attempt
    job_id TEXT NOT NULL, url TEXT NOT NULL, secret TEXT NOT NULL, body BLOB NOT NULL,
    state TEXT NOT NULL,            -- pending, delivered, failed (gave up)
    attempts INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL, next_at REAL NOT NULL, updated REAL NOT NULL,
    last_status INTEGER, last_error TEXT);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_at);
CREATE INDEX IF NOT EXISTS deliveries_job ON deliveries(job_id);
"""
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def db_path(settings: Settings) -> Path:
    return settings.var_dir / DB_FILE


class WebhookStore:
    """Subscriptions (job -> url, secret) and messages to deliver. One per thread: the broker records,
    the sender delivers, each on its own connection (SQLite serialises the short writes)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA secure_delete=ON")  # an erased message leaves no bytes behind
        self.db.executescript(SCHEMA)
        self.path.chmod(0o600)
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()

    def subscribe(self, job_id: str, callback: dict | None) -> None:
        if callback:
            self.db.execute("INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?, ?)",
                            (job_id, callback["url"], callback["secret"], time.time()))

    def move(self, old: str, new: str) -> None:
        """A job rebuilt under a new id (erasure) keeps its client's callback."""
        self.db.execute("UPDATE subscriptions SET job_id = ? WHERE job_id = ?", (new, old))

    def forget(self, job_id: str) -> None:
        """A deleted job: no callback, no message left."""
        self.db.execute("DELETE FROM subscriptions WHERE job_id = ?", (job_id,))
        self.db.execute("DELETE FROM deliveries WHERE job_id = ?", (job_id,))

    def enqueue(self, job_id: str, event: str, data: dict) -> str | None:
        """The job ended: its message goes in the queue (once). -> the message id, None without a callback."""
        row = self.db.execute("SELECT * FROM subscriptions WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        msg_id = f"msg_{uuid.uuid4().hex}"
        now = time.time()
        body = json.dumps({"type": event, "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
                           "data": data}, ensure_ascii=False, allow_nan=False).encode()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("INSERT INTO deliveries (id, job_id, url, secret, body, state, created, next_at, updated)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (msg_id, job_id, row["url"], row["secret"], body, PENDING, now, now, now))
            self.db.execute("DELETE FROM subscriptions WHERE job_id = ?", (job_id,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return msg_id

    def due(self, now: float, limit: int = 20) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM deliveries WHERE state = ? AND next_at <= ? ORDER BY next_at LIMIT ?",
                               (PENDING, now, limit)).fetchall()

    def next_due(self) -> float | None:
        row = self.db.execute("SELECT MIN(next_at) FROM deliveries WHERE state = ?", (PENDING,)).fetchone()
        return row[0] if row else None

    def record(self, msg_id: str, state: str, status: int | None, error: str | None, next_at: float) -> None:
        self.db.execute("UPDATE deliveries SET state = ?, attempts = attempts + 1, last_status = ?, last_error = ?, "
                        "next_at = ?, updated = ? WHERE id = ?", (state, status, error, next_at, time.time(), msg_id))

    def prune(self, now: float) -> None:
        self.db.execute("DELETE FROM deliveries WHERE state != ? AND updated < ?", (PENDING, now - KEEP_DONE_S))

    def scrub(self, text: str) -> int:
        """Remove every message whose body mentions `text` (a person being erased). -> how many."""
        needles = {text, json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]}
        n = 0
        for needle in needles:
            n += self.db.execute("DELETE FROM deliveries WHERE instr(CAST(body AS TEXT), ?) > 0", (needle,)).rowcount
        return n

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the file and empty it (what was deleted leaves no copy there)."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def delivery_view(settings: Settings, job_id: str) -> dict | None:
    """What the front shows of a job's callback (read-only): url, state, attempts, last answer. No secret."""
    path = db_path(settings)
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
        try:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM deliveries WHERE job_id = ? ORDER BY created DESC LIMIT 1",
                               (job_id,)).fetchone()
            if row is not None:
                return {"url": row["url"], "state": row["state"], "webhook_id": row["id"],
                        "attempts": row["attempts"], "last_status": row["last_status"],
                        "last_error": row["last_error"],
                        "next_attempt": row["next_at"] if row["state"] == PENDING else None}
            sub = conn.execute("SELECT url FROM subscriptions WHERE job_id = ?", (job_id,)).fetchone()
            return {"url": sub["url"], "state": "waiting for the job to end"} if sub else None
        finally:
            conn.close()
    except sqlite3.Error:
        return None


# --- the sender ------------------------------------------------------------------------------------
class Sender(threading.Thread):
    """Delivers queued messages, one at a time, retrying failures with a doubling delay; `wake()` when a
    message was queued so it goes at once. Runs in the broker process; `stop()` ends it."""

    def __init__(self, settings: Settings, post_fn: Callable[..., int] = post):
        super().__init__(daemon=True, name="webhooks")
        self.s = settings
        self.post = post_fn
        self._nudge = threading.Event()
        self._halt = threading.Event()

    def wake(self) -> None:
        self._nudge.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._halt.set()
        self._nudge.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        store: WebhookStore | None = None
        last_prune = 0.0
        while not self._halt.is_set():
            wait = 1.0
            try:
                if store is None:
                    store = WebhookStore(db_path(self.s))
                now = time.time()
                for row in store.due(now):
                    if self._halt.is_set():
                        break
                    self.deliver(store, row)
                if now - last_prune > 3600:
                    store.prune(now)
                    last_prune = now
                upcoming = store.next_due()
                if upcoming is not None:
                    wait = min(wait, max(0.0, upcoming - time.time()))
            except sqlite3.Error as exc:  # the queue stays on disk; try again shortly with a fresh connection
                logger.error("webhooks: the queue cannot be read ({}); retrying", exc)
                if store is not None:
                    store.close()
                store, wait = None, 5.0
            self._nudge.wait(wait)
            self._nudge.clear()
        if store is not None:
            store.close()

    def deliver(self, store: WebhookStore, row: sqlite3.Row) -> None:
        """One attempt at one message; the outcome and the next attempt are recorded before the next message."""
        body = bytes(row["body"])
        status: int | None = None
        host = urlsplit(row["url"]).hostname
        try:
            addresses = check_url(row["url"], AllowList.parse(self.s.webhook_allow))
            timestamp = int(time.time())
            status = self.post(row["url"], addresses, body, signed_headers(row["secret"], row["id"], timestamp, body),
                               self.s.webhook_timeout_s)
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except CallbackRefused as exc:
            error = exc.message
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
        attempts = row["attempts"] + 1
        if error is None:
            store.record(row["id"], DELIVERED, status, None, time.time())
            logger.info("webhooks: job {} callback delivered to {} (attempt {})", row["job_id"], host, attempts)
            return
        now = time.time()
        if now - row["created"] >= self.s.webhook_retry_for_s:
            store.record(row["id"], FAILED, status, error, now)
            logger.warning("webhooks: job {} callback to {} abandoned after {} attempts: {}", row["job_id"], host,
                           attempts, error)
            return
        delay = min(MAX_DELAY_S, self.s.webhook_retry_s * 2 ** (attempts - 1))
        store.record(row["id"], PENDING, status, error, now + delay)
        logger.info("webhooks: job {} callback to {} failed ({}); attempt {} in {:.1f} s", row["job_id"], host, error,
                    attempts + 1, delay)
