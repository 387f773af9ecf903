"""HTTP endpoints: build, poll, download, health; use a model: predict, list, report, delete."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from flask import Blueprint, current_app, jsonify, request, send_file

from app import client
from app.broker import new_job_id
from app.errors import ApiError
from app.store import connect, job_view
from app.validation import check_images, check_people, collect_photos, parse_job_id, parse_options
from constants import DONE, FAILED, VERSION, Settings
from logger import logger
from modelization.bundle import BUNDLE_FILE, MANIFEST_FILE
from preprocessor.images import inspect_image

bp = Blueprint("api", __name__)


def settings() -> Settings:
    return current_app.config["SETTINGS"]


def find_job(job_id: str) -> dict:
    try:
        db = connect(settings().db_path, readonly=True)
    except sqlite3.OperationalError:
        raise ApiError(404, "NOT_FOUND", f"no model with id {job_id}") from None
    try:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    except sqlite3.OperationalError:  # no table yet: the broker never ran here
        row = None
    finally:
        db.close()
    if row is None:
        raise ApiError(404, "NOT_FOUND", f"no model with id {job_id}")
    return job_view(row)


@bp.post("/build_recognizer")
def build_recognizer():
    s = settings()
    name, options = parse_options(request.form, s)
    photos, ignored = collect_photos(request, s)
    n_people = check_people(photos)
    check_images(photos, s)
    job_id = new_job_id()
    header = {"id": job_id, "name": name, "options": options,
              "files": [{"label": p.label, "filename": p.filename} for p in photos]}
    # the broker fsyncs every photo before it answers: a big upload gets time for that
    timeout = s.broker_timeout_s + len(photos) * s.broker_submit_s_per_photo
    client.submit(s.broker_front, header, [p.data for p in photos], timeout)
    logger.info("accepted job {}: {} photos, {} people", job_id, len(photos), n_people)
    body = {"status": 0, "id": job_id, "photos": len(photos), "people": n_people}
    if ignored:
        body["ignored"] = ignored[:200]
    return jsonify(body), 202


@bp.get("/is_available")
@bp.get("/is_available/<job_id>")
def is_available(job_id: str | None = None):
    job = find_job(parse_job_id(job_id or request.args.get("id")))
    return jsonify({"status": 0, **job})


def built_model(raw_id: str) -> tuple[dict, Path]:
    """The job and its bundle path, or the error saying why there is no model (404/409/410)."""
    job = find_job(parse_job_id(raw_id))
    if job["state"] == FAILED:
        raise ApiError(409, "BUILD_FAILED", f"model {job['id']} failed to build: {job['error']['message']}",
                       {"error": job["error"]})
    if job["state"] != DONE:
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
    try:
        db = connect(settings().db_path, readonly=True)
        try:
            rows = db.execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ? OFFSET ?", (limit, offset)).fetchall()
            total = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError:
        rows, total = [], 0
    models = [{k: v for k, v in job_view(r).items() if k not in ("progress", "search", "error", "attempts", "worker")}
              for r in rows]
    return jsonify({"status": 0, "models": models, "total": total, "limit": limit, "offset": offset})


@bp.get("/models/<job_id>/report")
def report(job_id: str):
    job, path = built_model(job_id)
    manifest = json.loads((path.parent / MANIFEST_FILE).read_text())
    return jsonify({"status": 0, **job, "metrics": manifest.get("metrics"), "open_set": manifest.get("open_set"),
                    "manifest": manifest})


@bp.post("/models/<job_id>/predict")
def predict(job_id: str):
    s = settings()
    job, path = built_model(job_id)
    part = request.files.get("image")
    if part is None:
        raise ApiError(400, "NO_FILES", "send the photo as a multipart 'image' part")
    threshold = request.form.get("threshold")
    if threshold not in (None, ""):
        try:
            threshold = float(threshold)
        except ValueError:
            threshold = -1.0
        if not 0.0 < threshold <= 4.0:
            raise ApiError(400, "BAD_PARAMETER", "threshold must be a distance in (0, 4]")
    else:
        threshold = None
    data = part.read()
    inspect_image(data, s.max_image_pixels)
    try:
        recognizer = current_app.extensions["recognizers"].get(job["id"], path, s)
    except FileNotFoundError:
        current_app.extensions["recognizers"].evict(job["id"])
        raise ApiError(404, "NOT_FOUND", f"no model with id {job['id']}") from None
    faces = recognizer.predict(data, threshold)
    body = {"status": 0, "id": job["id"], "count": len(faces), "faces": [f.as_dict() for f in faces],
            "threshold": recognizer.threshold if threshold is None else threshold}
    if not faces:
        body["message"] = "no face found in the photo"
    return jsonify(body)


@bp.delete("/models/<job_id>")
def delete_model(job_id: str):
    s = settings()
    job = find_job(parse_job_id(job_id))
    answer = client.delete(s.broker_front, job["id"], s.broker_timeout_s)
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
    s = settings()
    try:
        st = client.status(s.broker_front, min(s.broker_timeout_s, 3.0))
    except ApiError as exc:
        return jsonify({"status": 1, "alive": False, "workers": 0, "queued": None, "version": VERSION,
                        "error": {"code": exc.code, "message": exc.message}}), 503
    alive = st["workers"] > 0
    body = {"status": 0 if alive else 1, "alive": alive, "workers": st["workers"], "busy": st["busy"],
            "warming": st.get("warming", 0), "queued": st["queued"], "version": VERSION}
    if not alive:
        body["error"] = {"code": "NO_WORKERS", "message": "no worker is connected to the broker"}
    return jsonify(body), 200 if alive else 503
