"""People in built models: add photos or people to a model, remove a person from it (each a derivation: a
new model, 202 with its id), and erase a person from every model of a tenant.

As every route of a front, they read nothing of the broker's disk: a derivation and an erasure are
messages to the broker (DERIVE, ERASE).
"""
from __future__ import annotations

import json
import time

from flask import Blueprint, g, jsonify, request
from werkzeug.routing import BaseConverter

from app.shared.api_keys import TENANT_FORMAT, Action
from app.shared.jobs import new_job_id
from app.web import broker_client as client
from app.web.context import caller_tenant, finished_job, forget_model, settings
from app.web.errors import ApiError
from app.web.forms import collect_photos, parse_callback, parse_options
from app.web.security import principal, requires
from constants import Settings
from logger import logger
from preprocessor.errors import InputError
from preprocessor.uploads import Photo, clean_label

bp = Blueprint("people", __name__)


class LabelConverter(BaseConverter):
    """A person's label in a URL: the rest of the path, whatever it holds (a bad one gets 400 BAD_LABEL from
    `person_label`, not a 404 because no route matched a newline)."""
    regex = r"[\s\S]+"


@bp.record_once
def _label_converter(state) -> None:  # before the routes below are added to the app's URL map
    state.app.url_map.converters["label"] = LabelConverter


@bp.post("/models/<job_id>/people")
@requires(Action.BUILD)
def add_people(job_id: str):
    """A new model: this one's people and photos plus the photos sent (new people or more photos of
    known ones). Only the new photos are extracted. 202 with the new id."""
    s = settings()
    _, parent, _ = finished_job(job_id)  # (not its bundle: the broker derives from the features it kept)
    form = request.form
    callback = parse_callback(form.get("callback_url"), s)
    name, options = derived_options(form, parent, s)
    photos, ignored = collect_photos(request, s)
    body = submit_derivation(parent["id"], name, options, photos, [], callback, s)
    if ignored:
        body["ignored"] = ignored[:200]
    return jsonify(body), 202


@bp.delete("/models/<job_id>/people/<label:label>")
@requires(Action.BUILD)
def remove_person(job_id: str, label: str):
    """A new model without that person (this one stays as it is). 202 with the new id."""
    s = settings()
    _, parent, _ = finished_job(job_id)  # (not its bundle: the broker derives from the features it kept)
    label = person_label(label, s)
    values = request.values  # options as query arguments or form fields
    callback = parse_callback(values.get("callback_url"), s)
    name, options = derived_options(values, parent, s)
    return jsonify(submit_derivation(parent["id"], name, options, [], [label], callback, s)), 202


@bp.delete("/people/<label:label>")
@requires(Action.DELETE)
def erase_person(label: str):
    """Erase a person from every model of the caller's tenant: each model that held them is rebuilt
    without them under a new id (or deleted), and everything that held their photos or embeddings goes.
    An admin erases in its own tenant, in another with `?tenant=NAME`, or in every tenant with `?tenant=*`."""
    s = settings()
    label = person_label(label, s)
    caller = principal()
    tenant: str | None = caller.tenant
    asked = request.args.get("tenant")
    if asked not in (None, ""):
        if not caller.may(Action.ADMIN):
            raise ApiError(403, "FORBIDDEN", "only an admin key may name a tenant; a person is erased from the "
                           "models of the key's own tenant")
        if asked == "*":
            tenant = None
        elif TENANT_FORMAT.fullmatch(asked):
            tenant = asked
        else:
            raise ApiError(400, "BAD_PARAMETER", "tenant must be a tenant name (lower-case letters, digits, '_.-') "
                           "or * (every tenant)")
    timeout = max(s.broker_timeout_s, min(120.0, s.request_timeout_s - 10.0))
    answer = client.erase(s.front_endpoint, s.front_keys_dir, label, tenant, timeout)
    for model in answer.get("models", []):
        forget_model(model["id"])  # this front's copies; other fronts drop theirs at their next request or sweep
    logger.info("erasure: {} model(s) touched", len(answer.get("models", [])))
    return jsonify({"status": 0, **answer})


def person_label(raw: str, s: Settings) -> str:
    """A person's label from the URL (someone already enrolled, perhaps before invisible characters were refused),
    cleaned as `clean_label(enrolled=True)` cleans it; 400 BAD_LABEL otherwise."""
    try:
        return clean_label(raw, s.max_label_length, enrolled=True)
    except InputError as exc:
        raise ApiError(400, exc.code, exc.message) from None


def derived_options(form, parent: dict, s: Settings) -> tuple[str | None, dict]:
    """A derivation's name and options: the form's, with the parent's name and seed when not given."""
    name, options = parse_options(form, s)
    if form.get("seed") in (None, ""):
        try:
            options["seed"] = int(json.loads(parent["options"] or "{}")["seed"])
        except (ValueError, KeyError, TypeError):
            pass
    return name or parent.get("name"), options


def submit_derivation(parent: str, name: str | None, options: dict, photos: list[Photo], remove: list[str],
                      callback: dict | None, s: Settings) -> dict:
    """DERIVE over ZeroMQ, stored within the HTTP timeout or not at all (as a build). -> the 202 body."""
    job_id = new_job_id()
    g.model_id, g.audit_extra = job_id, {"parent": parent}
    deadline = g.started + s.request_timeout_s - 5.0
    header = {"id": job_id, "parent": parent, "tenant": caller_tenant(), "name": name, "options": options,
              "deadline": deadline, "remove": remove, "callback": callback,
              "files": [{"label": p.label, "filename": p.filename} for p in photos]}
    timeout = min(s.broker_timeout_s + len(photos) * s.broker_submit_s_per_photo + 5.0, deadline - time.time())
    if timeout <= 1.0:
        raise ApiError(503, "DEADLINE_PASSED", "the upload took too long to check; nothing was stored")
    answer = client.derive(s.front_endpoint, s.front_keys_dir, header, [p.data for p in photos], timeout)
    logger.info("accepted job {} derived from {}: {} photos added, {} people removed", job_id, parent, len(photos),
                len(remove))
    body = {"status": 0, **answer}
    if callback:
        body["callback"] = callback
    return body
