"""HTTP endpoints: build, poll, download, health; use a model: predict, list, report, delete."""
from __future__ import annotations

import json
import time
from pathlib import Path

from flask import Blueprint, current_app, g, jsonify, request, send_file

from app import client
from app.broker import new_job_id
from app.errors import ApiError
from app.store import StoreUnavailable, job_view, list_jobs, read_job
from app.usage import predict_request
from app.validation import check_people, collect_photos, parse_callback, parse_job_id, parse_options
from app.webhooks import delivery_view
from constants import VERSION, Settings
from constants.states import JobState
from logger import logger
from modelization.bundle import BUNDLE_FILE, MANIFEST_FILE
from modelization.recognizer import Recognizer

bp = Blueprint("api", __name__)


def settings() -> Settings:
    return current_app.config["SETTINGS"]


def find_job(job_id: str) -> dict:
    """The job's view, 404 NOT_FOUND, or (StoreUnavailable) 503: never a 404 for a store that fails."""
    row = read_job(settings().db_path, job_id)
    if row is None:
        raise ApiError(404, "NOT_FOUND", f"no model with id {job_id}")
    return job_view(row)


@bp.before_request
def _started() -> None:
    g.started = time.time()


@bp.post("/build_recognizer")
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
    header = {"id": job_id, "name": name, "options": options, "deadline": deadline, "callback": callback,
              "files": [{"label": p.label, "filename": p.filename} for p in photos]}
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
def is_available(job_id: str | None = None):
    job = find_job(parse_job_id(job_id or request.args.get("id")))
    callback = delivery_view(settings(), job["id"])
    return jsonify({"status": 0, **job, **({"callback": callback} if callback else {})})


def built_model(raw_id: str) -> tuple[dict, Path]:
    """The job and its bundle path, or the error saying why there is no model (404/409/410)."""
    job = find_job(parse_job_id(raw_id))
    if job["state"] == JobState.FAILED:
        raise ApiError(409, "BUILD_FAILED", f"model {job['id']} failed to build: {job['error']['message']}",
                       {"error": job["error"]})
    if job["state"] != JobState.DONE:
        raise ApiError(409, "NOT_READY", f"model {job['id']} is not ready (state: {job['state']}); "
                       "poll /is_available/<id>", {"state": job["state"], "progress": job["progress"]})
    path = settings().dumps_dir / job["id"] / BUNDLE_FILE
    if not path.exists():
        raise ApiError(410, "GONE", f"the files of model {job['id']} are missing")
    return job, path


@bp.get("/models/<job_id>")
def download(job_id: str):
    job, path = built_model(job_id)
    return send_file(path, mimetype="application/zip", as_attachment=True,
                     download_name=f"recognizer-{job['id']}.zip")


@bp.get("/models")
def list_models():
    limit = _int_arg("limit", 100, 1, 1000)
    offset = _int_arg("offset", 0, 0, 10**9)
    rows, total = list_jobs(settings().db_path, limit, offset)
    models = [{k: v for k, v in job_view(r).items() if k not in ("progress", "search", "error", "attempts", "worker")}
              for r in rows]
    return jsonify({"status": 0, "models": models, "total": total, "limit": limit, "offset": offset})


@bp.get("/models/<job_id>/report")
def report(job_id: str):
    job, path = built_model(job_id)
    manifest = json.loads((path.parent / MANIFEST_FILE).read_text())
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
def predict(job_id: str):
    """Every face of a photo (or several photos, or embeddings: app/usage.py), named or unknown."""
    job, path = built_model(job_id)
    return jsonify(predict_request(job["id"], load_recognizer(job, path), request, settings()))


@bp.delete("/models/<job_id>")
def delete_model(job_id: str):
    s = settings()
    job = find_job(parse_job_id(job_id))
    answer = client.delete(s.front_endpoint, s.front_keys_dir, job["id"], s.broker_timeout_s)
    current_app.extensions["recognizers"].evict(job["id"])
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
    """Alive when the broker answers, at least one worker is connected, the store can be read (by the
    broker and by this front) and the data disk has its reserve free."""
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
        try:
            list_jobs(s.db_path, 1, 0)
        except StoreUnavailable as exc:
            problem = ("STORE_UNAVAILABLE", str(exc))
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
