"""The checks every request passes before its route runs, and the headers every answer carries.

- `requires(action)` marks a route with what it does (app/shared/api_keys.Action); a route without a mark is
  public (only `GET /is_alive`). The guard finds the caller's key, checks its role and its rate.
- A state-changing request from a page of another origin (`Origin`, or `Sec-Fetch-Site` when the
  browser sends no Origin) is refused unless FR_CORS_ORIGINS lists that origin: a multipart POST
  needs no preflight, so without this any web page could start builds with a visitor's cookies or
  network position.
- Answers carry nosniff, a Content-Security-Policy that forbids framing, no referrer, and
  `Cache-Control: no-store` (models, reports and keys are not for caches).
- Builds, derivations, downloads, deletions, erasures and key changes leave one line in the audit log, whatever
  their outcome (an erasure's line names no person).

The front's side of API keys lives here too: BrokerKeys (the key rows, asked of the broker: a front keeps none
of its own), the rate limit shared by the web processes, and the audit log (the keys themselves, roles and
tenants: app/shared/api_keys.py).
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from flask import Flask, current_app, g, request

from app.shared.api_keys import (
    OPEN,
    Action,
    AuthError,
    Keys,
    Principal,
    Role,
    check_tenant,
    parse_key,
    presented_key,
)
from app.web import broker_client as client
from app.web.body_guard import CLOSE
from app.web.errors import ApiError
from app.wire import protocol as p
from constants import Settings

F = TypeVar("F", bound=Callable)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
AUDITED = {"builds.build_recognizer": "build", "models.download": "download", "models.delete_model": "delete",
           "videos.analyse_video": "video", "videos.delete_video": "delete_video",
           "people.add_people": "derive", "people.remove_person": "derive", "people.erase_person": "erase",
           "keys.create_key": "key_create", "keys.revoke_key": "key_revoke"}


def requires(action: Action) -> Callable[[F], F]:
    """Mark a route with the action it performs; the guard lets only keys whose role allows it through."""
    def mark(view: F) -> F:
        view.action = action  # type: ignore[attr-defined]
        return view
    return mark


def principal():
    """The caller of the current request (app/shared/api_keys.Principal)."""
    return g.principal


def install(app: Flask, settings: Settings, keys: Keys) -> None:
    limiter = RateLimiter(settings.rate_limit_per_min)
    failures = RateLimiter(settings.auth_failures_per_min, "fail:")
    allowed_origins = settings.allowed_origins

    @app.before_request
    def _guard() -> None:
        g.principal = None
        g.model_id = None
        # A request refused here is refused before its body: its connection is closed, not drained
        # (app/web/body_guard.py), so that keyless and refused clients hold no thread. Lifted once it passes.
        request.environ[CLOSE] = True
        if request.method not in SAFE_METHODS:
            refuse_cross_origin(allowed_origins)
        view = app.view_functions.get(request.endpoint or "")
        action = getattr(view, "action", None)
        if action is None or request.method == "OPTIONS":
            if request.endpoint is not None:  # an unknown route (404, 405) is refused before its body too
                request.environ.pop(CLOSE)
            return  # public, unknown (404 follows) or a preflight
        if not settings.auth:
            request.environ.pop(CLOSE)
            g.principal = OPEN
            return
        caller = checked_key(keys, failures, presented_key(request.headers))
        g.principal = caller
        if not caller.may(action):
            raise AuthError(403, f"a {caller.role} key may not {action}")
        wait = limiter.hit(caller.key_id)
        if wait is not None:
            raise ApiError(429, "RATE_LIMITED", f"more than {settings.rate_limit_per_min} requests a minute with "
                           f"this key; try again in {wait} s", headers={"Retry-After": str(wait)})
        request.environ.pop(CLOSE)

    @app.after_request
    def _headers(response):
        origin = request.headers.get("Origin", "").rstrip("/")
        if origin and origin in allowed_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Headers"] = "X-API-Key, Authorization, Content-Type"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE"
            response.headers.add("Vary", "Origin")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["Referrer-Policy"] = "no-referrer"
        if request.endpoint != "static":  # models, reports and keys are for nobody's cache
            response.headers["Cache-Control"] = "no-store"
        event = "auth_failed" if g.get("auth_failed") else AUDITED.get(request.endpoint or "")
        if event:
            audit(event, response)
        return response


def checked_key(keys: Keys, failures: RateLimiter, key: str | None) -> Principal:
    """The caller `key` names (Keys.authenticate), with its failures counted per key id and per client
    address: past FR_AUTH_FAILURES_PER_MIN in a minute, 429 before any slow check, unless the key is one
    this process checked already (its owner is not locked out by someone else's guesses). Every failed
    check leaves an `auth_failed` line in the audit log (of the refusals, the first of each minute)."""
    if key is None:
        return keys.authenticate(None)  # 401: nothing presented, nothing slow was run
    parsed = parse_key(key)
    names = [f"ip:{request.remote_addr}"] + ([f"id:{parsed[0]}"] if parsed else [])
    audit_extra = {"key_id": parsed[0] if parsed else None}
    if any(failures.peek(name) is not None for name in names) and not keys.verified_before(key):
        counts = [failures.add(name) for name in names]
        if failures.per_minute + 1 in counts:  # the first refusal of this minute for that id or address
            g.auth_failed, g.audit_extra = True, audit_extra
        wait = failures.seconds_left()
        raise ApiError(429, "TOO_MANY_FAILURES", f"too many failed key checks from this address or for this key "
                       f"(FR_AUTH_FAILURES_PER_MIN={failures.per_minute}); try again in {wait} s",
                       headers={"Retry-After": str(wait)})
    try:
        return keys.authenticate(key)
    except AuthError:
        for name in names:
            failures.add(name)
        g.auth_failed, g.audit_extra = True, audit_extra
        raise


def refuse_cross_origin(allowed: frozenset[str]) -> None:
    """403 for a state-changing request a browser sends from another origin (not listed)."""
    origin = request.headers.get("Origin")
    if origin is not None:
        if origin.rstrip("/") == request.host_url.rstrip("/") or origin.rstrip("/") in allowed:
            return
        raise AuthError(403, f"cross-origin request from {origin[:100]!r} refused (FR_CORS_ORIGINS)")
    site = request.headers.get("Sec-Fetch-Site", "").lower()
    if site in ("cross-site", "same-site"):
        raise AuthError(403, "cross-origin request refused (FR_CORS_ORIGINS)")


def audit(event: str, response) -> None:
    """One line: time, event, key id, tenant, model, remote address, outcome (HTTP status and error code)."""
    caller = g.get("principal")
    outcome: dict = {"status": response.status_code}
    if response.status_code >= 400 and response.is_json:
        outcome["error"] = (response.get_json(silent=True) or {}).get("error", {}).get("code")
    line = {"time": round(time.time(), 3), "event": event,
            "key_id": caller.key_id if caller else None, "tenant": caller.tenant if caller else None,
            "model_id": g.get("model_id") or (request.view_args or {}).get("job_id"),
            "remote": request.remote_addr, "outcome": outcome}
    if g.get("audit_extra"):
        line.update(g.audit_extra)
    current_app.extensions["audit"].write(json.dumps(line, ensure_ascii=False))


class BrokerKeys(Keys):
    """Keys whose rows the broker keeps: what a front on any host uses (app/wire/client.py). The row of the
    presented key is asked for on every request (a revocation holds at the next request); a broker that
    does not answer is 503, never a pass."""

    def __init__(self, endpoint: str, keys_dir: Path, timeout_s: float, env_admin_key: str = ""):
        super().__init__(env_admin_key)
        self.endpoint, self.keys_dir, self.timeout_s = endpoint, Path(keys_dir), timeout_s

    def _call(self, frames: list[bytes]) -> dict:
        return client.call(self.endpoint, self.keys_dir, frames, self.timeout_s)

    def lookup(self, key_id: str) -> dict | None:
        row = self._call(p.pack(p.KEYGET, {"id": key_id})).get("key")
        if not isinstance(row, dict):
            return None
        try:
            return {"tenant": row["tenant"], "role": row["role"], "salt": bytes.fromhex(row["salt"]),
                    "hash": bytes.fromhex(row["hash"]), "revoked": row["revoked"]}
        except (KeyError, TypeError, ValueError):
            return None  # an answer this front cannot read lets nobody in

    def add(self, key_id: str, tenant: str, role: Role | str, name: str | None, salt: bytes, digest: bytes) -> dict:
        return self._call(p.pack(p.KEYADD, {"id": key_id, "tenant": check_tenant(tenant), "role": Role(role).value,
                                            "name": name, "salt": salt.hex(), "hash": digest.hex()}))["key"]

    def list(self, tenant: str | None = None) -> list[dict]:
        return self._call(p.pack(p.KEYLIST, {"tenant": tenant}))["keys"]

    def revoke(self, key_id: str) -> bool:
        return bool(self._call(p.pack(p.KEYREVOKE, {"id": key_id}))["revoked"])


class RateLimiter:
    """Events per minute per name (a key's requests, failed key checks per key id or address): a fixed
    one-minute window, shared by the web processes through uWSGI's cache (app.ini `cache2`), or per process
    outside uWSGI. `prefix` keeps one limiter's names apart from another's in the shared cache."""

    def __init__(self, per_minute: int, prefix: str = ""):
        self.per_minute, self.prefix = per_minute, prefix
        self._local: dict[str, int] = {}
        self._lock = threading.Lock()
        try:
            import uwsgi
            self.uwsgi = uwsgi if "cache2" in uwsgi.opt else None
        except ImportError:  # not under uWSGI
            self.uwsgi = None

    def _count(self, name: str, add: int) -> tuple[int, int]:
        """(events of `name` this minute after adding `add`, seconds left in the minute)."""
        window = int(time.time() // 60)
        name = f"{self.prefix}{name}:{window}"
        if self.uwsgi is not None:
            if add:
                self.uwsgi.cache_inc(name, add, 120, "ratelimit")
            count = int(self.uwsgi.cache_num(name, "ratelimit") or 0)
        else:
            with self._lock:
                self._local = {k: v for k, v in self._local.items() if k.endswith(f":{window}")}
                count = self._local[name] = self._local.get(name, 0) + add
        return count, self.seconds_left()

    def hit(self, key_id: str) -> int | None:
        """Count an event; -> seconds to wait when it is over the limit, else None."""
        if self.per_minute <= 0:
            return None
        count, wait = self._count(key_id, 1)
        return wait if count > self.per_minute else None

    def add(self, name: str) -> int:
        """Count an event; -> the events of `name` this minute."""
        return self._count(name, 1)[0]

    @staticmethod
    def seconds_left() -> int:
        """Until the next window (what Retry-After says)."""
        return max(1, int(60 - time.time() % 60) + 1)

    def peek(self, name: str) -> int | None:
        """Seconds to wait when `name` has reached the limit this minute (nothing counted), else None."""
        if self.per_minute <= 0:
            return None
        count, wait = self._count(name, 0)
        return wait if count >= self.per_minute else None


class Audit:
    """`var/logs/audit.log`: one JSON line per build, download, delete and key change. Each line is a
    single O_APPEND write, so the web processes can share the file."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def write(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode() + b"\n")
        finally:
            os.close(fd)
