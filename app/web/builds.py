"""Builds: `POST /build_recognizer` (photos and options -> a job, 202) and `GET /is_available[/<id>]` (its
state, progress and callback delivery). Derivations of a built model: app/web/people.py."""
from __future__ import annotations

import time

from flask import Blueprint, g, jsonify, request

from app.shared.api_keys import Action
from app.shared.jobs import job_view, new_job_id
from app.web import broker_client as client
from app.web.context import job_answer, settings
from app.web.errors import ApiError
from app.web.forms import check_people, collect_photos, parse_callback, parse_job_id, parse_options
from app.web.security import principal, requires
from logger import logger

bp = Blueprint("builds", __name__)


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
        body["callback"] = callback  # the secret is shown here only: it signs the callback (app/broker/webhooks.py)
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
