"""The broker's calls as the HTTP front makes them: app/wire/client.py, whose failures (app/wire/errors.py)
arrive here as ApiError with the HTTP status they mean (app/web/errors.from_broker).

Routes and caches call these, never app/wire/client directly, so a refusal of the broker is an answer of
the API wherever it happens (a route, the bundle cache's sweep, an API key's lookup)."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from app.web.errors import from_broker
from app.wire import client as wire
from app.wire.errors import BrokerError

P = ParamSpec("P")
R = TypeVar("R")


def _http(call: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(call)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return call(*args, **kwargs)
        except BrokerError as exc:
            raise from_broker(exc) from None
    return wrapped


exchange = _http(wire.exchange)
call = _http(wire.call)
submit = _http(wire.submit)
status = _http(wire.status)
delete = _http(wire.delete)
get_job = _http(wire.get_job)
list_jobs = _http(wire.list_jobs)
bundle_chunk = _http(wire.bundle_chunk)
known = _http(wire.known)
search_view = _http(wire.search_view)
derive = _http(wire.derive)
erase = _http(wire.erase)
unknown = _http(wire.unknown)
video = _http(wire.video)
video_result = _http(wire.video_result)
video_thumbnail = _http(wire.video_thumbnail)
