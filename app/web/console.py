"""The service's own pages: the web console at `/`, the API's reference at `/docs` (from
`/openapi.json`), their files under `static/`, and `/metrics` for Prometheus.

The pages hold no data: they are public, and every figure on them comes from the API, called by the
page's script with the API key the person typed once (kept in the browser's sessionStorage, sent as
`X-API-Key`). Everything is served from here, nothing from a CDN, and no page has an inline script or
style, so the strict Content-Security-Policy below holds (issue #16 sends the same on every answer).
"""
from __future__ import annotations

import time
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, jsonify, request, send_from_directory

from app.shared import metrics
from app.web import broker_client as client
from app.web.openapi import document
from app.web.reports import bp as reports_bp
from app.web.reports import needs
from constants import Settings

STATIC = Path(__file__).resolve().parents[2] / "static"
CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

bp = Blueprint("console", __name__)


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


@bp.get("/")
def console():
    return send_from_directory(STATIC, "console.html", max_age=0)


@bp.get("/docs")
def docs():
    return send_from_directory(STATIC, "docs.html", max_age=0)


@bp.get("/static/<path:filename>")
def static(filename: str):
    """The pages' scripts and styles (send_from_directory refuses paths that leave the folder: 404)."""
    return send_from_directory(STATIC, filename, max_age=0)


@bp.get("/openapi.json")
def openapi():
    return jsonify(document())


@bp.get("/metrics")
@needs("admin")  # with API keys (#16): admins only
def prometheus():
    s: Settings = current_app.config["SETTINGS"]
    live = metrics.Live(s, lambda: client.status(s.front_endpoint, s.front_keys_dir, min(s.broker_timeout_s, 2.0)))
    body, content_type = metrics.exposition(live)
    return Response(body, content_type=content_type)


def install(app: Flask, settings: Settings) -> None:
    """The pages, the reports and the request metrics on `app`."""
    metrics.join(settings)
    app.register_blueprint(reports_bp)
    app.register_blueprint(bp)

    @app.after_request
    def _count(response: Response) -> Response:
        started = request.environ.get("fr.started")
        route = request.url_rule.rule if request.url_rule is not None else metrics.UNMATCHED
        seconds = time.perf_counter() - started if started is not None else 0.0
        metrics.request_done(route, request.method, response.status_code, seconds)
        if (request.endpoint or "").endswith("predict") and response.status_code == 200 and response.is_json:
            metrics.faces_predicted(*metrics.count_faces(response.get_json(silent=True)))
        return response

    app.wsgi_app = metrics.Clock(app.wsgi_app)  # type: ignore[method-assign]
