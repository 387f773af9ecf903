"""Built models: list, download, report, model card, delete. Their views for people (summary, search):
app/web/reports.py; using them (predict, verify): app/web/predict.py."""
from __future__ import annotations

import re
import zipfile

from flask import Blueprint, Response, jsonify, request, send_file

from app.shared.api_keys import Action
from app.shared.jobs import job_view
from app.web import broker_client as client
from app.web.context import built_model, caller_tenant, find_job, forget_model, settings
from app.web.errors import ApiError
from app.web.forms import parse_job_id, query_int
from app.web.security import principal, requires
from app.web.unknown import waiting_counts
from modelization.bundle import CARD_FILE, read_manifest

bp = Blueprint("models", __name__)


@bp.get("/models/<job_id>")
@requires(Action.READ)
def download(job_id: str):
    job, path = built_model(job_id)
    return send_file(path, mimetype="application/zip", as_attachment=True,
                     download_name=f"recognizer-{job['id']}.zip")


@bp.get("/models")
@requires(Action.READ)
def list_models():
    limit = query_int(request, "limit", 100, 1, 1000)
    offset = query_int(request, "offset", 0, 0, 10**9)
    caller = principal()
    tenant = request.args.get("tenant") if caller.may(Action.ADMIN) else caller.tenant  # admins filter at will
    if tenant and not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", tenant):
        raise ApiError(400, "BAD_PARAMETER", "tenant must be a tenant name (lower-case letters, digits, '_.-')")
    s = settings()
    rows, total = client.list_jobs(s.front_endpoint, s.front_keys_dir, limit, offset, s.broker_timeout_s,
                                   tenant or None)
    models = [{k: v for k, v in job_view(r).items() if k not in ("progress", "search", "error", "attempts", "worker")}
              for r in rows]
    waiting = waiting_counts([m["id"] for m in models if m["state"] == "done"])
    for m in models:  # unknown faces waiting to be named (issue #28)
        m["unknown_waiting"] = waiting.get(m["id"], 0)
    return jsonify({"status": 0, "models": models, "total": total, "limit": limit, "offset": offset})


@bp.get("/models/<job_id>/report")
@requires(Action.READ)
def report(job_id: str):
    job, path = built_model(job_id)
    manifest = read_manifest(path)
    return jsonify({"status": 0, **job, "metrics": manifest.get("metrics"), "open_set": manifest.get("open_set"),
                    "manifest": manifest})


@bp.get("/models/<job_id>/card")
@requires(Action.READ)
def model_card(job_id: str):
    """The bundle's MODEL_CARD.md (from this front's copy of the bundle), as Markdown."""
    job, path = built_model(job_id)
    try:
        with zipfile.ZipFile(path) as zf:
            card = zf.read(CARD_FILE)
    except KeyError:
        raise ApiError(404, "NOT_FOUND", f"model {job['id']} was built before model cards") from None
    return Response(card, mimetype="text/markdown; charset=utf-8")


@bp.delete("/models/<job_id>")
@requires(Action.DELETE)
def delete_model(job_id: str):
    s = settings()
    job, _ = find_job(parse_job_id(job_id))
    answer = client.delete(s.front_endpoint, s.front_keys_dir, job["id"], s.broker_timeout_s, caller_tenant())
    forget_model(job["id"])  # this host's copy; other fronts drop theirs at their next request for it or sweep
    return jsonify({"status": 0, **answer})
