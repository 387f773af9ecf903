"""WSGI entry point for uWSGI (`module = app.web.wsgi:application` in app.ini)."""
import threading

from werkzeug.wsgi import get_path_info

from app.web.factory import create_app
from app.web.request_log import log_path
from constants import Settings
from logger import setup_logging

try:  # under uWSGI each process logs to its own file (web-1.log, web-2.log)
    import uwsgi
    _slot = uwsgi.worker_id()
except ImportError:
    _slot = None

_settings = Settings.from_env()
setup_logging("web", _settings.log_dir, _settings.log_level, _settings.log_rotation, _settings.log_retention, _slot)
_app = create_app(_settings)


def application(environ, start_response):
    try:
        # uWSGI's request log shows the path with a person's label masked (app/web/request_log.py)
        uwsgi.set_logvar("fr_path", log_path(_app.url_map, get_path_info(environ), environ.get("REQUEST_METHOD", "")))
    except NameError:  # not under uWSGI
        pass
    return _app(environ, start_response)

# Predictions run here: their models load in the background, not on a request. Only in a process that
# serves (app.ini's lazy-apps loads the app after uWSGI's fork): a master that ran TensorFlow would fork
# children that hang in their first TensorFlow call.
if _settings.warm_up and _slot != 0:
    from app.shared.warm_up import warm_up
    threading.Thread(target=warm_up, args=(_settings, "web process"), daemon=True, name="warm-up").start()
