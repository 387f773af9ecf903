"""What the routes of every blueprint work from: the settings, the caller's tenant, a model's row and bundle
as the broker answers for them (as the caller may see them), and its loaded recognizer.

A model of another tenant is answered exactly as a model that does not exist (404). The front keeps no
state of its own: job rows, listings and bundles come from the broker (app/web/broker_client.py,
app/web/bundles.py), so fronts run on any host and any number of them.
"""
from __future__ import annotations

import time
from pathlib import Path

from flask import current_app, g

from app.shared.api_keys import Action
from app.shared.jobs import job_view
from app.web import broker_client as client
from app.web.errors import ApiError
from app.web.forms import parse_job_id
from app.web.security import principal
from constants import Settings
from constants.states import JobState
from modelization.recognizer import Recognizer


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


def note_start() -> None:
    """When this request began (after its key was checked): a build must be stored within the HTTP timeout."""
    g.started = time.time()


def finished_job(raw_id: str) -> tuple[dict, dict, dict | None]:
    """(the job's view, its row, its bundle's {sha256, size}) of a model that was built, or the error saying
    why there is none (404/409)."""
    row, bundle = find_row(parse_job_id(raw_id))
    if row.get("kind") == "video":  # a video's job is no model (GET /videos/<id>)
        raise ApiError(404, "NOT_FOUND", f"no model with id {row['id']}")
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


def load_recognizer(job: dict, path: Path) -> Recognizer:
    """The job's recognizer from this process's LRU, or 404 when its bundle went meanwhile."""
    try:
        return current_app.extensions["recognizers"].get(job["id"], path, settings())
    except FileNotFoundError:
        current_app.extensions["recognizers"].evict(job["id"])
        raise ApiError(404, "NOT_FOUND", f"no model with id {job['id']}") from None
