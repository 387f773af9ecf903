"""The path as uWSGI's request log shows it (app.ini's log-format, `%(fr_path)`): a person's label never.

Erasing someone (`DELETE /people/<label>`) must not write their name into a log the erasure cannot reach.
The label is found the way the request itself is routed: by the route the app's URL map matches (whatever
slashes or escapes the path holds), its `label` argument shown as `<label>`. A path that matches no route
(404, 405, a redirect) runs nothing, but may still carry a name: everything after a `people` segment is
masked there too, after decoding and merging slashes as a client could write them.
"""
from __future__ import annotations

import re
from urllib.parse import unquote

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, RequestRedirect

_PLACEHOLDER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_AFTER_PEOPLE = re.compile(r"(?i)(/people)(/.*)?$", re.DOTALL)
MAX_SHOWN = 300


def log_path(url_map: Map, path: str, method: str = "GET") -> str:
    """The request path as the request log shows it: a person's label -> <label>; nothing unprintable."""
    try:
        rule, args = url_map.bind("localhost").match(path, method or "GET", return_rule=True)
    except (HTTPException, RequestRedirect):
        shown = unmatched(path)
    except Exception:  # a log line must never fail a request: show nothing of the path
        shown = "?"
    else:
        shown = _PLACEHOLDER.sub(lambda m: "<label>" if m.group(1) == "label" else str(args.get(m.group(1), "")),
                                 rule.rule) if "label" in args else path
    return "".join(c if " " < c < "\x7f" else "?" for c in shown)[:MAX_SHOWN]


def unmatched(path: str) -> str:
    """A path no route takes, decoded (up to three times) with its slashes merged, masked after `people`."""
    for _ in range(3):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    path = re.sub(r"[/\\]+", "/", path)
    return _AFTER_PEOPLE.sub(r"\1/<label>", path)
