"""WSGI entry point for uWSGI (`module = app.wsgi:application` in app.ini)."""
import threading

from app.web import create_app
from constants import Settings
from logger import logger, setup_logging

try:  # under uWSGI each process logs to its own file (web-1.log, web-2.log)
    import uwsgi
    _slot = uwsgi.worker_id()
except ImportError:
    _slot = None

_settings = Settings.from_env()
setup_logging("web", _settings.log_dir, _settings.log_level, _settings.log_rotation, _settings.log_retention, _slot)
application = create_app(_settings)


def _warm_up() -> None:
    """dlib's models and Keras loaded in the background, so the first prediction of a process does not
    pay for the import (the same warm-up as a worker's, FR_WARM_UP)."""
    from app.build import warm_up
    try:
        warm_up()
    except Exception:  # the first prediction would meet the same error and report it
        logger.exception("warm-up failed")


if _settings.warm_up:
    threading.Thread(target=_warm_up, daemon=True, name="warm-up").start()
