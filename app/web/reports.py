"""Views of a model for people and dashboards: a short summary, its people page by page, and the genetic
search as it runs.

- `GET /models/<id>/summary`: the headline figures of a built model (what a list of models shows),
  a few hundred bytes instead of the whole manifest of `/report`.
- `GET /models/<id>/people`: the model's people, a page at a time (`limit`, `offset`, `q`: a part of the
  label): a model of thousands of people lists them without sending its whole manifest (issue #28).
- `GET /models/<id>/search`: every network a search evaluated (with the generation it was bred for),
  the logbook, the Pareto front, the finalists and the pick; while the search runs, the broker's
  checkpoint (written after every result, atomically; asked of the broker: a front has no disk of
  its), once the model is built, from its manifest (with the baselines measured beside the pick).

Both use the same look-ups as the API's routes (app/web/context.py), so an id answers here exactly as it
does there (400 BAD_ID, 404 NOT_FOUND, 409 NOT_READY / BUILD_FAILED, 503 STORE_UNAVAILABLE).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from flask import Blueprint, current_app, jsonify, request

from app.shared.jobs import job_view
from app.web import broker_client as client
from app.web.context import built_model, caller_tenant, find_row
from app.web.errors import ApiError
from app.web.forms import parse_job_id, query_int
from constants import Settings
from constants.states import JobState
from modelization.bundle import read_manifest

bp = Blueprint("reports", __name__)


def needs(action: str):
    """What a route does, for the API-key guard (issue #16 reads `view.action`; the same words as its
    app/shared/api_keys.Action: read, predict, build, delete, admin). Without keys it changes nothing."""
    def mark(view):
        view.action = action
        return view
    return mark


def settings() -> Settings:
    return current_app.config["SETTINGS"]


def manifest_of(bundle: Path) -> dict:
    """A built model's manifest (inside its bundle, as this front cached it)."""
    return read_manifest(bundle)


@lru_cache(maxsize=1024)
def _figures(path: str, mtime: float) -> dict:
    """The summary's part that comes from a manifest, kept per web process: a model never changes once
    built (its cached bundle is named by sha256; the mtime guards a file written again), and a list of
    models asks for many."""
    return figures_of(read_manifest(Path(path)))


def figures_of(manifest: dict) -> dict:
    people = manifest.get("people") or []
    metrics = manifest.get("metrics") or {}
    open_set = manifest.get("open_set") or {}
    optimization = manifest.get("optimization") or {}
    network = manifest.get("network") or {}
    return {
        "people_in_model": sum(1 for p in people if p.get("in_model")),
        "people_excluded": [p["label"] for p in people if not p.get("in_model")],
        "photos_used": sum(int(p.get("used", 0)) for p in people),
        "photos_skipped": sum(len(p.get("skipped") or []) for p in people),
        "metrics": {k: metrics.get(k) for k in ("test_accuracy", "balanced_accuracy", "test_photos",
                                                 "one_photo_people", "one_photo_people_accepted_as_someone_else")}
        if metrics else None,
        "open_set": {k: open_set.get(k) for k in ("target_far", "threshold_range", "test_dir")},
        "network": {"hidden": network.get("hidden"), "params": network.get("params")},
        "optimized": bool(optimization.get("performed")),
        "format_version": manifest.get("format_version"),
    }


@bp.get("/models/<job_id>/summary")
@needs("read")
def summary(job_id: str):
    job, path = built_model(job_id)
    return jsonify({"status": 0, **{k: job[k] for k in ("id", "name", "state", "created", "photos", "people")},
                    **_figures(str(path), path.stat().st_mtime)})


@lru_cache(maxsize=16)
def _people(path: str, mtime: float) -> tuple[dict, ...]:
    """A built model's people entries (its manifest's `people`), kept per web process for its pages: a
    model of 2,500 people has a manifest of megabytes, parsed once rather than at every page."""
    return tuple(read_manifest(Path(path)).get("people") or [])


PEOPLE_PAGE, PEOPLE_PAGE_MAX, QUERY_MAX = 100, 500, 200




@bp.get("/models/<job_id>/people")
@needs("read")
def people(job_id: str):
    """One page of the model's people, in the manifest's order: `limit` (1-500, default 100) from `offset`,
    only labels containing `q` (case-insensitive) when given. -> {people, total (matching), people_total,
    limit, offset, q}."""
    limit = query_int(request, "limit", PEOPLE_PAGE, 1, PEOPLE_PAGE_MAX)
    offset = query_int(request, "offset", 0, 0, 10**9)
    q = request.args.get("q", "")
    if len(q) > QUERY_MAX:
        raise ApiError(400, "BAD_PARAMETER", f"q must be at most {QUERY_MAX} characters")
    job, path = built_model(job_id)
    everyone = _people(str(path), path.stat().st_mtime)
    wanted = q.casefold()
    matching = [p for p in everyone if wanted in str(p.get("label", "")).casefold()] if wanted else everyone
    return jsonify({"status": 0, "id": job["id"], "people": list(matching[offset:offset + limit]),
                    "total": len(matching), "people_total": len(everyone), "limit": limit, "offset": offset,
                    "q": q})


def running_search(job_id: str) -> dict | None:
    """The running search as the broker last saved it, in the view's fields; None before its first save (or
    gone). The broker reads the checkpoint (app/broker/reader.py): the front carries no genetic search."""
    s = settings()
    return client.search_view(s.front_endpoint, s.front_keys_dir, job_id, s.broker_timeout_s, caller_tenant())


@bp.get("/models/<job_id>/search")
@needs("read")
def search(job_id: str):
    row, _ = find_row(parse_job_id(job_id))
    job = job_view(row)
    requested = bool(json.loads(row["options"] or "{}").get("optimize"))
    body: dict = {"status": 0, "id": job["id"], "state": job["state"], "requested": requested,
                  "progress": job["search"]}
    if job["state"] == JobState.DONE:
        _, path = built_model(job["id"])
        report = manifest_of(path).get("optimization")
        if not report:
            return jsonify({**body, "requested": False, "source": None})
        keep = ("fallback", "note", "controls", "evaluations", "cache_hits", "seconds", "stop_reason", "choice_rule",
                "chosen", "logbook", "pareto_front", "candidates", "baselines")
        return jsonify({**body, "source": "manifest", **{k: report.get(k) for k in keep},
                        "finalists": (report.get("cross_validation") or {}).get("finalists", [])})
    view = running_search(job["id"])
    if view is None:
        # queued or extracting (the search starts after the photos), a build without a search, or a
        # finished job whose checkpoint went with its uploads
        return jsonify({**body, "source": None, "candidates": [],
                        "logbook": [], "pareto_front": [], "finalists": [], "chosen": None})
    return jsonify({**body, "source": "checkpoint", **view})
