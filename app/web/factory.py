"""Flask app factory: config from `constants.Settings`, one blueprint per area, JSON errors, keys and headers."""
from __future__ import annotations

import threading

from flask import Flask

from app.web import builds, cameras, health, keys, models, people, predict, unknown, videos
from app.web.body_guard import BodyGuard
from app.web.bundles import BundleCache
from app.web.console import install as install_console
from app.web.context import note_start
from app.web.errors import register_error_handlers
from app.web.recognizers import RecognizerCache
from app.web.security import Audit, BrokerKeys, install
from constants import Settings

# the API's areas (the console, its pages and the reports: app/web/console.py)
BLUEPRINTS = (builds.bp, people.bp, models.bp, predict.bp, videos.bp, unknown.bp, keys.bp, health.bp,
              cameras.bp)


def create_app(settings: Settings | None = None) -> Flask:
    """The HTTP front's app for `settings` (default: from the environment): its blueprints, error handlers,
    key guard and headers, the console, and the caches of bundles and loaded recognizers."""
    settings = settings or Settings.from_env()
    settings.ensure_dirs()
    app = Flask("api-facial-recognition", static_folder=None)  # the console serves static/ (app/web/console.py)
    app.config.update(
        SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        MAX_FORM_PARTS=settings.max_files + 100,  # werkzeug's default (1000) is below a real upload
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["recognizers"] = RecognizerCache(settings.model_cache_size)
    # everything a front knows comes from the broker: it runs on any host (`run.py web --broker`)
    app.extensions["keys"] = broker_keys = BrokerKeys(settings.front_endpoint, settings.front_keys_dir,
                                                      settings.broker_timeout_s, settings.admin_key)
    app.extensions["bundles"] = bundles = BundleCache(settings.front_cache_dir, settings.front_cache_max_bytes,
                                                      settings.front_endpoint, settings.front_keys_dir,
                                                      settings.broker_timeout_s)
    threading.Thread(target=bundles.sweep_forever, daemon=True, name="bundle-sweep").start()
    app.extensions["audit"] = Audit(settings.audit_log_path)
    for bp in BLUEPRINTS:
        app.register_blueprint(bp)
    register_error_handlers(app)
    install(app, settings, broker_keys)
    install_console(app, settings)  # the web console, /docs, /openapi.json, /metrics and the request metrics
    app.before_request(note_start)  # after the key guard: a build's deadline counts from here
    app.wsgi_app = BodyGuard(app.wsgi_app, settings.upload_grace_s, settings.min_upload_rate,  # type: ignore[method-assign]
                             settings.request_timeout_s)
    return app
