"""HTTP endpoints: build, poll, download, health; use a model: predict, list, report, delete; API keys.

Every route but `GET /is_alive` says what it does (`@requires`); app/security.py checks the caller's key
against it. A model of another tenant is answered exactly as a model that does not exist (404).
The front keeps no state of its own: job rows, listings and bundles come from the broker (app/client.py,
app/bundles.py), so fronts run on any host and any number of them.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from flask import Blueprint, current_app, g, jsonify, request, send_file

from app import client
from app.auth import Action, Role
from app.errors import ApiError
from app.protocol import new_job_id
from app.security import principal, requires
from app.store import job_view
from app.usage import predict_request
from app.validation import check_people, collect_photos, parse_callback, parse_job_id, parse_options
from constants import VERSION, Settings
from constants.states import JobState
from logger import logger
from modelization.bundle import read_manifest
from modelization.recognizer import Recognizer

bp = Blueprint("api", __name__)


def settings() -> Settings:
    return current_app.config["SETTINGS"]


def caller_tenant() -> str | None:
    """The tenant whose models the caller may see (None: every tenant, for admins)."""
    caller = principal()
    return None if caller.may(Action.ADMIN) else caller.tenant


def job_answer(job_id: str, callback: bool = False) -> dict:
    """The broker's answer for a job: {job: its row, bundle?: {sha256, size}, callback?: its delivery}.
    404 NOT_FOUND (also for another tenant's: the broker checks the tenant, and so does this front), or
    503 STORE_UNAVAILABLE: never a 404 for a store that fails. A model the broker no longer has leaves
    this process at once (its cached bundle and loaded recognizer), whichever front deleted it."""
    s = settings()
    try:
        answer = client.get_job(s.front_endpoint, s.front_keys_dir, job_id, s.broker_timeout_s, caller_tenant(),
                                callback)
    except ApiError as exc:
        if exc.code == "NOT_FOUND":  # (or another tenant's: dropping a live model's copy costs a fetch)
            forget_model(job_id)
        raise
    row = answer.get("job")
    if not isinstance(row, dict) or row.get("id") != job_id or not principal().sees(row.get("tenant")):
        raise ApiError(404, "NOT_FOUND", f"no model with id {job_id}")
    return answer


def forget_model(model_id: str) -> None:
    """Drop what this process holds of a model that is gone: its loaded recognizer and its cached bundle."""
    current_app.extensions["recognizers"].evict(model_id)
    current_app.extensions["bundles"].forget(model_id)


def find_row(job_id: str) -> tuple[dict, dict | None]:
    """(the job's row, its bundle's {sha256, size} when built); errors as `job_answer`."""
    answer = job_answer(job_id)
    return answer["job"], answer.get("bundle")


def find_job(job_id: str) -> tuple[dict, dict | None]:
    """(the job's view as the API shows it, its bundle's {sha256, size} when built); see find_row."""
    row, bundle = find_row(job_id)
    return job_view(row), bundle


@bp.before_request
def _started() -> None:
    g.started = time.time()


@bp.post("/build_recognizer")
@requires(Action.BUILD)
def build_recognizer():
    s = settings()
    name, options = parse_options(request.form, s)
    callback = parse_callback(request.form.get("callback_url"), s)
    photos, ignored = collect_photos(request, s)
    n_people = check_people(photos)
    job_id = new_job_id()
    # Stored within the HTTP timeout, or not at all: past the deadline the broker keeps nothing,
    # since a client whose request was cut never learns the id.
    deadline = g.started + s.request_timeout_s - 5.0
    g.model_id = job_id
    header = {"id": job_id, "name": name, "options": options, "deadline": deadline, "callback": callback,
              "tenant": principal().tenant, "files": [{"label": p.label, "filename": p.filename} for p in photos]}
    timeout = min(s.broker_timeout_s + len(photos) * s.broker_submit_s_per_photo, deadline - time.time())
    if timeout <= 1.0:
        raise ApiError(503, "DEADLINE_PASSED", "the upload took too long to check; nothing was stored")
    client.submit(s.front_endpoint, s.front_keys_dir, header, [p.data for p in photos], timeout)
    logger.info("accepted job {}: {} photos, {} people", job_id, len(photos), n_people)
    body = {"status": 0, "id": job_id, "photos": len(photos), "people": n_people}
    if callback:
        body["callback"] = callback  # the secret is shown here only: it signs the callback (app/webhooks.py)
    if ignored:
        body["ignored"] = ignored[:200]
    return jsonify(body), 202


@bp.get("/is_available")
@bp.get("/is_available/<job_id>")
@requires(Action.READ)
def is_available(job_id: str | None = None):
    answer = job_answer(parse_job_id(job_id or request.args.get("id")), callback=True)
    callback = answer.get("callback")
    return jsonify({"status": 0, **job_view(answer["job"]), **({"callback": callback} if callback else {})})


def finished_job(raw_id: str) -> tuple[dict, dict, dict | None]:
    """(the job's view, its row, its bundle's {sha256, size}) of a model that was built, or the error saying
    why there is none (404/409)."""
    row, bundle = find_row(parse_job_id(raw_id))
    job = job_view(row)
    if job["state"] == JobState.FAILED:
        raise ApiError(409, "BUILD_FAILED", f"model {job['id']} failed to build: {job['error']['message']}",
                       {"error": job["error"]})
    if job["state"] != JobState.DONE:
        raise ApiError(409, "NOT_READY", f"model {job['id']} is not ready (state: {job['state']}); "
                       "poll /is_available/<id>", {"state": job["state"], "progress": job["progress"]})
    return job, row, bundle


def built_model(raw_id: str) -> tuple[dict, Path]:
    """The job and its bundle's file on this front (fetched from the broker once, checked by sha256), or
    the error saying why there is no model (404/409/410)."""
    job, _, bundle = finished_job(raw_id)
    if not bundle:
        raise ApiError(410, "GONE", f"the files of model {job['id']} are missing")
    path = current_app.extensions["bundles"].path(job["id"], bundle["sha256"], bundle["size"], caller_tenant())
    return job, path


@bp.get("/models/<job_id>")
@requires(Action.READ)
def download(job_id: str):
    job, path = built_model(job_id)
    return send_file(path, mimetype="application/zip", as_attachment=True,
                     download_name=f"recognizer-{job['id']}.zip")


@bp.get("/models")
@requires(Action.READ)
def list_models():
    limit = _int_arg("limit", 100, 1, 1000)
    offset = _int_arg("offset", 0, 0, 10**9)
    caller = principal()
    tenant = request.args.get("tenant") if caller.may(Action.ADMIN) else caller.tenant  # admins filter at will
    if tenant and not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", tenant):
        raise ApiError(400, "BAD_PARAMETER", "tenant must be a tenant name (lower-case letters, digits, '_.-')")
    s = settings()
    rows, total = client.list_jobs(s.front_endpoint, s.front_keys_dir, limit, offset, s.broker_timeout_s,
                                   tenant or None)
    models = [{k: v for k, v in job_view(r).items() if k not in ("progress", "search", "error", "attempts", "worker")}
              for r in rows]
    return jsonify({"status": 0, "models": models, "total": total, "limit": limit, "offset": offset})


@bp.get("/models/<job_id>/report")
@requires(Action.READ)
def report(job_id: str):
    job, path = built_model(job_id)
    manifest = read_manifest(path)
    return jsonify({"status": 0, **job, "metrics": manifest.get("metrics"), "open_set": manifest.get("open_set"),
                    "manifest": manifest})


def load_recognizer(job: dict, path: Path) -> Recognizer:
    """The job's recognizer from this process's LRU, or 404 when its bundle went meanwhile."""
    try:
        return current_app.extensions["recognizers"].get(job["id"], path, settings())
    except FileNotFoundError:
        current_app.extensions["recognizers"].evict(job["id"])
        raise ApiError(404, "NOT_FOUND", f"no model with id {job['id']}") from None


@bp.post("/models/<job_id>/predict")
@requires(Action.PREDICT)
def predict(job_id: str):
    """Every face of a photo (or several photos, or embeddings: app/usage.py), named or unknown."""
    job, path = built_model(job_id)
    return jsonify(predict_request(job["id"], load_recognizer(job, path), request, settings()))


@bp.delete("/models/<job_id>")
@requires(Action.DELETE)
def delete_model(job_id: str):
    s = settings()
    job, _ = find_job(parse_job_id(job_id))
    answer = client.delete(s.front_endpoint, s.front_keys_dir, job["id"], s.broker_timeout_s, caller_tenant())
    forget_model(job["id"])  # this host's copy; other fronts drop theirs at their next request for it or sweep
    return jsonify({"status": 0, **answer})


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(400, "BAD_PARAMETER", f"{name} must be an integer in [{low}, {high}]")
    return value


@bp.get("/is_alive")
def is_alive():
    """Alive when the broker answers, at least one worker is connected, the broker can read its store
    and its data disk has its reserve free."""
    s = settings()
    try:
        st = client.status(s.front_endpoint, s.front_keys_dir, min(s.broker_timeout_s, 3.0))
    except ApiError as exc:
        return jsonify({"status": 1, "alive": False, "workers": 0, "queued": None, "version": VERSION,
                        "error": {"code": exc.code, "message": exc.message}}), 503
    body = {"status": 0, "alive": True, "workers": st["workers"], "busy": st["busy"],
            "warming": st.get("warming", 0), "queued": st["queued"], "disk_free_bytes": st["disk_free_bytes"],
            "version": VERSION}
    problem = None
    if not st["store"]["ok"]:
        problem = ("STORE_UNAVAILABLE", st["store"].get("message", "the job store cannot be read"))
    else:
        try:  # what the fronts' reads meet: a fresh read-only connection in a broker's reader thread
            client.list_jobs(s.front_endpoint, s.front_keys_dir, 1, 0, min(s.broker_timeout_s, 3.0))
        except ApiError as exc:
            problem = (exc.code, exc.message)
    if problem is None and st.get("disk_full"):
        problem = ("INSUFFICIENT_STORAGE", "the data disk is full: builds wait until there is room")
    if problem is None and st["disk_free_bytes"] < s.min_free_bytes:
        problem = ("INSUFFICIENT_STORAGE", f"{st['disk_free_bytes']} bytes free on the data disk, "
                                           f"{s.min_free_bytes} needed in reserve")
    if problem is None and st["workers"] == 0:
        problem = ("NO_WORKERS", "no worker is connected to the broker")
    if problem:
        body.update(status=1, alive=False, error={"code": problem[0], "message": problem[1]})
    return jsonify(body), 503 if problem else 200


# --- API keys (admins) -----------------------------------------------------------------------------
def _keys():
    return current_app.extensions["keys"]


@bp.post("/keys")
@requires(Action.ADMIN)
def create_key():
    """A new key: JSON or form fields `tenant`, `role` (admin, builder, user), `name`. The key is in this
    answer and nowhere else, ever."""
    body = request.get_json(silent=True) if request.is_json else request.form.to_dict()
    fields: dict = body if isinstance(body, dict) else {}
    tenant, role, name = fields.get("tenant"), fields.get("role"), fields.get("name")
    if not isinstance(tenant, str) or not isinstance(role, str) or role not in {r.value for r in Role} \
            or (name is not None and not isinstance(name, str)):
        raise ApiError(400, "BAD_PARAMETER", "give a tenant and a role (admin, builder or user), and optionally "
                       "a name", {"roles": [r.value for r in Role]})
    try:
        key, info = _keys().create(tenant, role, name)
    except ValueError as exc:
        raise ApiError(400, "BAD_PARAMETER", str(exc)) from None
    g.audit_extra = {"subject_key": info["id"], "subject_tenant": info["tenant"], "subject_role": info["role"]}
    logger.info("key {} made for tenant {} ({}) by {}", info["id"], info["tenant"], info["role"], principal().key_id)
    return jsonify({"status": 0, "key": key, **info}), 201


@bp.get("/keys")
@requires(Action.ADMIN)
def list_keys():
    return jsonify({"status": 0, "keys": _keys().list(request.args.get("tenant") or None)})


@bp.delete("/keys/<key_id>")
@requires(Action.ADMIN)
def revoke_key(key_id: str):
    if not re.fullmatch(r"[0-9a-f]{12}", key_id):
        raise ApiError(404, "NOT_FOUND", "no such key")
    g.audit_extra = {"subject_key": key_id}
    if not _keys().revoke(key_id):
        raise ApiError(404, "NOT_FOUND", f"no working key {key_id}")
    logger.info("key {} revoked by {}", key_id, principal().key_id)
    return jsonify({"status": 0, "id": key_id, "revoked": True})
