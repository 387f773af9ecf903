"""Live cameras: add, list, show, stop; their events as JSON or as Server-Sent Events; event snapshots
(blueprint "cameras"). The broker keeps the cameras and hands each to a worker (app/broker/cameras.py)."""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator

from flask import Blueprint, Response, jsonify, request

from app.shared.api_keys import Action
from app.shared.callbacks import AllowList
from app.shared.cameras import CameraRefused, check_camera_url
from app.web import broker_client as client
from app.web.context import caller_tenant, settings
from app.web.errors import ApiError
from app.web.forms import parse_callback, parse_job_id, query_int, small_json
from app.web.security import principal, requires
from app.wire import protocol as p

bp = Blueprint("cameras", __name__)

SSE_MAX_S = 15 * 60     # a stream ends after this long; EventSource reconnects with Last-Event-ID
SSE_POLL_S = 0.25       # how often a stream asks the broker for new events
SSE_PING_S = 10.0       # a comment line this often keeps proxies (and uWSGI's http-timeout) from cutting it
_streams = threading.BoundedSemaphore(1)  # replaced at the first stream by one sized to FR_WEB_THREADS
_streams_lock = threading.Lock()
_streams_sized = False


def _call(command: bytes, header: dict) -> dict:
    s = settings()
    return client.call(s.front_endpoint, s.front_keys_dir, p.pack(command, header), s.broker_timeout_s)


def _field(body: dict, name: str, default=None):
    value = body.get(name, default)
    return value.strip() if isinstance(value, str) else value


@bp.post("/cameras")
@requires(Action.BUILD)
def add_camera():
    """JSON or a form: name, url, model, fps (default 5), callback_url (optional)."""
    s = settings()
    body = small_json(request) if request.is_json else request.form.to_dict()
    if not isinstance(body, dict):
        raise ApiError(400, "BAD_REQUEST", "send a JSON object or a form with name, url, model and fps")
    name, url, model = _field(body, "name"), _field(body, "url"), _field(body, "model")
    if not isinstance(name, str) or not 1 <= len(name) <= s.max_name_length or not name.isprintable():
        raise ApiError(400, "BAD_PARAMETER", f"name must be 1 to {s.max_name_length} printable characters",
                       {"field": "name"})
    if not isinstance(url, str) or not url:
        raise ApiError(400, "BAD_CAMERA_URL", "url is required: rtsp://, rtsps://, or an http(s):// MJPEG stream or "
                       "snapshot URL", {"field": "url"})
    try:
        check_camera_url(url, AllowList.parse(s.camera_allow))
    except CameraRefused as exc:
        raise ApiError(400, exc.code, exc.message, {"field": "url"}) from None
    if not isinstance(model, str):
        raise ApiError(400, "BAD_PARAMETER", "model (a model id) is required", {"field": "model"})
    model = parse_job_id(model)
    raw_fps = body.get("fps", 5)
    try:
        fps = float(raw_fps)
    except (TypeError, ValueError):
        fps = -1.0
    if isinstance(raw_fps, bool) or not 0.05 <= fps <= 30:
        raise ApiError(400, "BAD_PARAMETER", "fps must be a number from 0.05 to 30", {"field": "fps"})
    callback = parse_callback(body.get("callback_url") or None, s)
    tenant = principal().tenant
    header = {"id": str(uuid.uuid4()), "tenant": tenant, "name": name, "url": url, "model": model, "fps": fps,
              "callback": callback}
    answer = _call(p.CAMADD, header)
    camera = answer["camera"]
    if callback:
        camera["callback_secret"] = callback["secret"]  # shown once, as for builds
    return jsonify({"status": 0, "camera": camera}), 201


@bp.get("/cameras")
@requires(Action.READ)
def list_cameras():
    header = {"tenant": caller_tenant()}
    return jsonify({"status": 0, "cameras": _call(p.CAMLIST, header)["cameras"]})


@bp.get("/cameras/<camera_id>")
@requires(Action.READ)
def show_camera(camera_id: str):
    answer = _call(p.CAMEVENTS, {"id": parse_job_id(camera_id), "tenant": caller_tenant(), "after": 2**62,
                                 "limit": 1})
    return jsonify({"status": 0, "camera": answer["camera"]})


@bp.delete("/cameras/<camera_id>")
@requires(Action.DELETE)
def delete_camera(camera_id: str):
    answer = _call(p.CAMDEL, {"id": parse_job_id(camera_id), "tenant": caller_tenant()})
    return jsonify({"status": 0, **answer})


@bp.get("/cameras/<camera_id>/events/<int:event>/snapshot")
@requires(Action.READ)
def event_snapshot(camera_id: str, event: int):
    s = settings()
    _, blobs = client.exchange(s.front_endpoint, s.front_keys_dir,
                               p.pack(p.CAMSNAP, {"id": parse_job_id(camera_id), "tenant": caller_tenant(),
                                                  "event": max(1, min(event, 2**62))}), s.broker_timeout_s)
    return Response(blobs[0], mimetype="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@bp.get("/cameras/<camera_id>/events")
@requires(Action.READ)
def events(camera_id: str):
    """The camera's events after `after` (an event id), oldest first: JSON, or a Server-Sent Events stream
    (`Accept: text/event-stream`) that sends each new event as it is stored."""
    camera_id = parse_job_id(camera_id)
    tenant = caller_tenant()
    after = _after()
    if "text/event-stream" not in request.headers.get("Accept", ""):
        limit = query_int(request, "limit", 100, 1, 1000)
        answer = _call(p.CAMEVENTS, {"id": camera_id, "tenant": tenant, "after": after, "limit": limit})
        return jsonify({"status": 0, "events": answer["events"]})
    _call(p.CAMEVENTS, {"id": camera_id, "tenant": tenant, "after": after, "limit": 1})  # 404 before streaming
    slots = _slots()
    if not slots.acquire(blocking=False):
        raise ApiError(503, "BUSY", "too many event streams are open on this process; try again shortly",
                       headers={"Retry-After": "5"})
    s = settings()
    response = Response(_stream(s, camera_id, tenant, after), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    # the slot goes back when the server closes the response, whether or not its body was ever read: a
    # generator's `finally` runs only once it has started, and a HEAD request's body is never started (eight
    # HEADs took every stream of a process for good)
    response.call_on_close(slots.release)
    return response


def _stream(s, camera_id: str, tenant: str | None, after: int) -> Iterator[str]:
    """Each new event as `id: <event id>`, `event: track.start|track.end`, `data: <JSON>`; a comment line
    every SSE_PING_S; ends after SSE_MAX_S, or when the camera is gone (`event: gone`)."""
    from app.wire import client as wire
    from app.wire.errors import BrokerError
    end, ping = time.monotonic() + SSE_MAX_S, time.monotonic() + SSE_PING_S
    yield "retry: 1000\n\n"
    while time.monotonic() < end:
        try:
            answer = wire.call(s.front_endpoint, s.front_keys_dir,
                               p.pack(p.CAMEVENTS, {"id": camera_id, "tenant": tenant, "after": after,
                                                    "limit": 100}), s.broker_timeout_s)
        except BrokerError as exc:
            if getattr(exc, "code", "") == "NOT_FOUND":
                yield "event: gone\ndata: {}\n\n"
                return
            answer = {"events": []}
        for event in answer["events"]:
            after = event["id"]
            yield f"id: {after}\nevent: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"
        if time.monotonic() >= ping:
            ping = time.monotonic() + SSE_PING_S
            yield ": ping\n\n"
        if not answer["events"]:
            time.sleep(SSE_POLL_S)


def _slots() -> threading.BoundedSemaphore:
    """At most half of a process's threads hold event streams: the rest still answer requests."""
    global _streams, _streams_sized
    with _streams_lock:
        if not _streams_sized:
            _streams = threading.BoundedSemaphore(max(1, settings().web_threads // 2))
            _streams_sized = True
    return _streams


def _after() -> int:
    raw = request.headers.get("Last-Event-ID") or request.args.get("after") or "0"
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= 2**62:
        raise ApiError(400, "BAD_PARAMETER", "after (or Last-Event-ID) must be an event id, 0 or more")
    return value
