"""Flask app factory: config from `constants.Settings`, one blueprint, JSON errors, keys and headers."""
from __future__ import annotations

from flask import Flask

from app.web.body_guard import BodyGuard
from app.web.errors import register_error_handlers
from constants import Settings


def create_app(settings: Settings | None = None) -> Flask:
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
    import threading

    from app.web import lifecycle  # noqa: F401 (adds derive, erase, verify and card to the blueprint)
    from app.web.bundles import BundleCache
    from app.web.recognizers import RecognizerCache
    from app.web.routes import bp
    from app.web.security import Audit, BrokerKeys, install
    app.extensions["recognizers"] = RecognizerCache(settings.model_cache_size)
    # everything a front knows comes from the broker: it runs on any host (`run.py web --broker`)
    app.extensions["keys"] = keys = BrokerKeys(settings.front_endpoint, settings.front_keys_dir,
                                               settings.broker_timeout_s, settings.admin_key)
    app.extensions["bundles"] = bundles = BundleCache(settings.front_cache_dir, settings.front_cache_max_bytes,
                                                      settings.front_endpoint, settings.front_keys_dir,
                                                      settings.broker_timeout_s)
    threading.Thread(target=bundles.sweep_forever, daemon=True, name="bundle-sweep").start()
    app.extensions["audit"] = Audit(settings.audit_log_path)
    app.register_blueprint(bp)
    register_error_handlers(app)
    install(app, settings, keys)
    from app.web.console import install as install_console
    install_console(app, settings)  # the web console, /docs, /openapi.json, /metrics and the request metrics
    app.wsgi_app = BodyGuard(app.wsgi_app, settings.upload_grace_s, settings.min_upload_rate)  # type: ignore[method-assign]
    return app
