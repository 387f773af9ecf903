"""The HTTP front (uWSGI + Flask): the app factory, one blueprint per area, the JSON errors (and what the
broker's answers mean over HTTP), the console and API reference, the request body guard, keys and headers,
and the caches of bundles and loaded recognizers. Entry point: app/web/wsgi.py."""
