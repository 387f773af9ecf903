"""Flask app factory: config from `constants.Settings`, one blueprint, JSON errors."""
from __future__ import annotations

from flask import Flask

from app.edge import BodyGuard
from app.errors import register_error_handlers
from constants import Settings


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    settings.ensure_dirs()
    app = Flask("api-facial-recognition")
    app.config.update(
        SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        MAX_FORM_PARTS=settings.max_files + 100,  # werkzeug's default (1000) is below a real upload
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    from app import lifecycle  # noqa: F401 (adds derive, erase, verify and card to the blueprint)
    from app.recognizers import RecognizerCache
    from app.routes import bp
    app.extensions["recognizers"] = RecognizerCache(settings.model_cache_size)
    app.register_blueprint(bp)
    register_error_handlers(app)
    app.wsgi_app = BodyGuard(app.wsgi_app, settings.upload_grace_s, settings.min_upload_rate)  # type: ignore[method-assign]
    return app
