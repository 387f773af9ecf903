"""Callbacks: when a job ends, its status is POSTed to the URL its client gave, signed (the rules of who
may be called and of the signature: app/shared/callbacks.py).

Delivery: the broker records the message in `var/webhooks.sqlite` when the job ends (a
quick local write: the broker never waits on a receiver); a sender thread in the broker
process hands due messages to a small pool of threads (FR_WEBHOOK_SENDERS) that POST
them, and retries with a doubling delay (FR_WEBHOOK_RETRY_S, capped at an hour) for
FR_WEBHOOK_RETRY_FOR_S while the receiver fails. The queue is on disk, so a restart
loses nothing: at-least-once delivery, deduplicated by `webhook-id`.

No tenant can stop another's callbacks: at most one delivery per tenant is in flight, so a
slow receiver holds one thread of the pool and delays only its own tenant's messages; an
attempt has one deadline (FR_WEBHOOK_TIMEOUT_S) for connecting, sending and every read
together (a receiver dripping a byte a second gains nothing); whatever one delivery
raises is logged and recorded as its failure, never the end of the sender. `health()`
says whether the sender turns and no delivery outlived its deadline (`/is_alive`).
"""
from __future__ import annotations

import http.client
import json
import socket
import sqlite3
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from app.shared.callbacks import Address, AllowList, CallbackRefused, check_url, signed_headers, split_url
from constants import Settings
from logger import logger

MAX_DELAY_S = 3600.0        # retries back off up to this
MAX_RESPONSE_BYTES = 64 * 1024
KEEP_DONE_S = 7 * 86400     # delivered or abandoned messages stay visible (GET /is_available) this long
DB_FILE = "webhooks.sqlite"


def post(url: str, addresses: list[Address], body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST `body` to `url`, connecting to one of the checked `addresses` (never resolving again), with no
    redirect followed, all within `timeout` seconds (connect, TLS, send and every read together: a watchdog
    shuts the socket at the deadline). -> the HTTP status; TimeoutError past the deadline."""
    scheme, host, port, path = split_url(url)
    deadline = time.monotonic() + timeout
    sock = connect(addresses, port, deadline)
    current = [sock]
    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), cut, (current,))
    watchdog.daemon = True
    watchdog.start()
    try:
        if scheme == "https":
            current[0] = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = current[0]
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(MAX_RESPONSE_BYTES)
        if time.monotonic() >= deadline:  # a read the watchdog cut short may look like a whole answer
            raise TimeoutError(f"no whole answer within {timeout:g} s")
        return response.status
    except (OSError, http.client.HTTPException):
        if time.monotonic() >= deadline:  # what the watchdog's cut looked like to http.client
            raise TimeoutError(f"no whole answer within {timeout:g} s") from None
        raise
    finally:
        watchdog.cancel()
        current[0].close()


def connect(addresses: list[Address], port: int, deadline: float) -> socket.socket:
    """A connection to the first of `addresses` that answers before `deadline` (monotonic)."""
    error: OSError = OSError("no address")
    for address in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no connection within the deadline")
        try:
            return socket.create_connection((str(address), port), timeout=left)
        except OSError as exc:
            error = exc
    raise error


def cut(current: list[socket.socket]) -> None:
    """The deadline passed: shut the socket (the raw one, under TLS too), which ends any blocked read."""
    try:
        socket.socket.shutdown(current[0], socket.SHUT_RDWR)
    except OSError:
        pass


# --- the durable queue ---------------------------------------------------------------------------
SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
    job_id TEXT PRIMARY KEY, url TEXT NOT NULL, secret TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,            -- webhook-id: the same on every attempt
    job_id TEXT NOT NULL, url TEXT NOT NULL, secret TEXT NOT NULL, body BLOB NOT NULL,
    state TEXT NOT NULL,            -- pending, delivered, failed (gave up)
    attempts INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL, next_at REAL NOT NULL, updated REAL NOT NULL,
    last_status INTEGER, last_error TEXT, tenant TEXT);
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
        if "tenant" not in {r[1] for r in self.db.execute("PRAGMA table_info(deliveries)")}:  # a queue of 0.x
            self.db.execute("ALTER TABLE deliveries ADD COLUMN tenant TEXT")
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

    def enqueue(self, job_id: str, event: str, data: dict, tenant: str | None = None) -> str | None:
        """The job (of `tenant`) ended: its message goes in the queue (once). -> the message id, None without
        a callback."""
        row = self.db.execute("SELECT * FROM subscriptions WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        msg_id = f"msg_{uuid.uuid4().hex}"
        now = time.time()
        body = json.dumps({"type": event, "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
                           "data": data}, ensure_ascii=False, allow_nan=False).encode()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("INSERT INTO deliveries (id, job_id, url, secret, body, state, created, next_at, updated,"
                            " tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (msg_id, job_id, row["url"], row["secret"], body, PENDING, now, now, now, tenant))
            self.db.execute("DELETE FROM subscriptions WHERE job_id = ?", (job_id,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return msg_id

    def enqueue_message(self, key: str, url: str, secret: str, event: str, data: dict,
                        tenant: str | None = None) -> str:
        """One message of a stream (a camera's events, under the camera's id as `key`): queued as a job's
        message is, delivered in order with the tenant's others. -> the message id."""
        msg_id = f"msg_{uuid.uuid4().hex}"
        now = time.time()
        body = json.dumps({"type": event, "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
                           "data": data}, ensure_ascii=False, allow_nan=False).encode()
        self.db.execute("INSERT INTO deliveries (id, job_id, url, secret, body, state, created, next_at, updated,"
                        " tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (msg_id, key, url, secret, body, PENDING, now, now, now, tenant))
        return msg_id

    def due(self, now: float, limit: int = 200) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM deliveries WHERE state = ? AND next_at <= ? ORDER BY next_at LIMIT ?",
                               (PENDING, now, limit)).fetchall()

    def heads(self, now: float, limit: int = 1000) -> list[sqlite3.Row]:
        """The first due message of each tenant (SQLite takes a bare column from the row MIN() picked): one
        tenant's backlog never hides another's message."""
        return self.db.execute("SELECT *, MIN(next_at) FROM deliveries WHERE state = ? AND next_at <= ? "
                               "GROUP BY coalesce(tenant, '') ORDER BY MIN(next_at) LIMIT ?",
                               (PENDING, now, limit)).fetchall()

    def next_due(self) -> float | None:
        row = self.db.execute("SELECT MIN(next_at) FROM deliveries WHERE state = ?", (PENDING,)).fetchone()
        return row[0] if row else None

    def record(self, msg_id: str, state: str, status: int | None, error: str | None, next_at: float) -> None:
        self.db.execute("UPDATE deliveries SET state = ?, attempts = attempts + 1, last_status = ?, last_error = ?, "
                        "next_at = ?, updated = ? WHERE id = ?", (state, status, error, next_at, time.time(), msg_id))

    def prune(self, now: float) -> None:
        self.db.execute("DELETE FROM deliveries WHERE state != ? AND updated < ?", (PENDING, now - KEEP_DONE_S))

    def forget_jobs(self, job_ids: list[str]) -> int:
        """Every message and subscription of these jobs (a person erased from them). -> messages removed."""
        n = 0
        for job_id in job_ids:
            n += self.db.execute("DELETE FROM deliveries WHERE job_id = ?", (job_id,)).rowcount
            self.db.execute("DELETE FROM subscriptions WHERE job_id = ?", (job_id,))
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


def host_of(url: str) -> str:
    """The host a log line names (never a failure of its own)."""
    try:
        return str(urlsplit(url).hostname)
    except ValueError:
        return "?"


# --- the sender ------------------------------------------------------------------------------------
STUCK_AFTER_S = 60.0   # a sender loop that has not turned for this long is stuck
LATE_AFTER_S = 60.0    # ... and so is a delivery this far past its deadline (its watchdog failed)


class Sender(threading.Thread):
    """Hands due messages to at most FR_WEBHOOK_SENDERS delivery threads at once, at most one in flight per
    tenant; each attempt's outcome and next attempt (a doubling delay) are recorded by the thread that made it
    (daemon threads: a stop never waits on a receiver). `wake()` when a message was queued so it goes at once.
    Runs in the broker process; `stop()` ends it."""

    def __init__(self, settings: Settings, post_fn: Callable[..., int] = post):
        super().__init__(daemon=True, name="webhooks")
        self.s = settings
        self.post = post_fn
        self._nudge = threading.Event()
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._flying: dict[str, tuple[str, float]] = {}  # tenant -> (message id, started, monotonic)
        self._held: dict[str, float] = {}  # message id -> not before (monotonic): its outcome could not be stored
        self.turned = time.monotonic()     # when the loop last went round (health)

    def wake(self) -> None:
        self._nudge.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._halt.set()
        self._nudge.set()
        if self.is_alive():
            self.join(timeout)

    def health(self) -> dict:
        """{"ok": True} while the loop turns and no delivery has outlived its deadline; else why not."""
        now = time.monotonic()
        if self.ident is not None and not self.is_alive() and not self._halt.is_set():
            return {"ok": False, "message": "the callbacks' sender thread has stopped"}
        if self.is_alive() and now - self.turned > STUCK_AFTER_S:
            return {"ok": False, "message": f"the callbacks' sender has not turned for {now - self.turned:.0f} s"}
        with self._lock:
            oldest = min((started for _, started in self._flying.values()), default=now)
        if now - oldest > self.s.webhook_timeout_s + LATE_AFTER_S:
            return {"ok": False, "message": f"a callback delivery has run {now - oldest:.0f} s, past its "
                                            f"{self.s.webhook_timeout_s:g} s deadline"}
        return {"ok": True}

    def run(self) -> None:
        store: WebhookStore | None = None
        last_prune = 0.0
        while not self._halt.is_set():
            self.turned = time.monotonic()
            wait = 1.0
            try:
                if store is None:
                    store = WebhookStore(db_path(self.s))
                now = time.time()
                self.dispatch(store.heads(now))
                if now - last_prune > 3600:
                    store.prune(now)
                    last_prune = now
                upcoming = store.next_due()
                if upcoming is not None:
                    wait = min(wait, max(0.05, upcoming - time.time()))
            except Exception as exc:  # the queue stays on disk; try again shortly with a fresh connection
                logger.error("webhooks: the queue cannot be read ({}: {}); retrying", type(exc).__name__, exc)
                if store is not None:
                    store.close()
                store, wait = None, 5.0
            self._nudge.wait(wait)
            self._nudge.clear()
        if store is not None:
            store.close()

    def dispatch(self, rows: list[sqlite3.Row]) -> None:
        """Hand each due message to the pool unless its tenant already has one in flight (or the pool is full)."""
        now = time.monotonic()
        with self._lock:
            for row in rows:
                tenant = row["tenant"] or ""
                if len(self._flying) >= self.s.webhook_senders or self._halt.is_set():
                    return
                if tenant in self._flying or self._held.get(row["id"], 0.0) > now:
                    continue
                self._held.pop(row["id"], None)
                self._flying[tenant] = (row["id"], now)
                threading.Thread(target=self.attempt, args=(tenant, row), daemon=True, name="webhook").start()

    def attempt(self, tenant: str, row: sqlite3.Row) -> None:
        """One attempt, in a delivery thread with its own connection to the queue. Whatever it raises is
        logged; the sender goes on."""
        store: WebhookStore | None = None
        try:
            store = WebhookStore(db_path(self.s))
            self.deliver(store, row)
        except Exception as exc:
            logger.exception("webhooks: job {}: the outcome of an attempt could not be recorded ({}: {})",
                             row["job_id"], type(exc).__name__, str(exc)[:200])
            with self._lock:
                self._held[row["id"]] = time.monotonic() + self.s.webhook_retry_s
        finally:
            if store is not None:
                store.close()
            with self._lock:
                self._flying.pop(tenant, None)
            self._nudge.set()

    def outcome(self, row: sqlite3.Row) -> tuple[int | None, str | None]:
        """POST the message once -> (HTTP status or None, error or None). Any exception is a failed attempt."""
        body = bytes(row["body"])
        status: int | None = None
        try:
            addresses = check_url(row["url"], AllowList.parse(self.s.webhook_allow))
            timestamp = int(time.time())
            status = self.post(row["url"], addresses, body, signed_headers(row["secret"], row["id"], timestamp, body),
                               self.s.webhook_timeout_s)
            return status, None if 200 <= status < 300 else f"HTTP {status}"
        except CallbackRefused as exc:
            return status, exc.message
        except Exception as exc:  # one receiver's answer, or a URL no check foresaw: its failure, not the sender's
            if not isinstance(exc, (OSError, http.client.HTTPException, ssl.SSLError)):
                logger.exception("webhooks: job {}: unexpected failure of an attempt", row["job_id"])
            return status, f"{type(exc).__name__}: {str(exc)[:200]}"

    def deliver(self, store: WebhookStore, row: sqlite3.Row) -> None:
        """One attempt at one message; its outcome and the next attempt are recorded."""
        status, error = self.outcome(row)
        host = host_of(row["url"])
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
