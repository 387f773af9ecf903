"""HTTP endpoints: build, poll, download, health."""
from __future__ import annotations

import sqlite3

from flask import Blueprint, current_app, jsonify, request, send_file

from app import client
from app.broker import new_job_id
from app.errors import ApiError
from app.store import connect, job_view
from app.validation import check_images, check_people, collect_photos, parse_job_id, parse_options
from constants import DONE, FAILED, VERSION, Settings
from logger import logger
from modelization.bundle import BUNDLE_FILE

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
    client.submit(s.broker_front, header, [p.data for p in photos], s.broker_timeout_s)
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


@bp.get("/models/<job_id>")
def download(job_id: str):
    job = find_job(parse_job_id(job_id))
    if job["state"] == FAILED:
        raise ApiError(409, "BUILD_FAILED", f"model {job['id']} failed to build: {job['error']['message']}",
                       {"error": job["error"]})
    if job["state"] != DONE:
        raise ApiError(409, "NOT_READY", f"model {job['id']} is not ready (state: {job['state']}); "
                       "poll /is_available/<id>", {"state": job["state"], "progress": job["progress"]})
    path = settings().dumps_dir / job["id"] / BUNDLE_FILE
    if not path.exists():
        raise ApiError(410, "GONE", f"the files of model {job['id']} are missing")
    return send_file(path, mimetype="application/zip", as_attachment=True,
                     download_name=f"recognizer-{job['id']}.zip")


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
            "queued": st["queued"], "version": VERSION}
    if not alive:
        body["error"] = {"code": "NO_WORKERS", "message": "no worker is connected to the broker"}
    return jsonify(body), 200 if alive else 503
