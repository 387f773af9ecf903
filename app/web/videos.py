"""Recorded videos through a model: `POST /models/<id>/video` (a video -> a job, 202), `GET /videos[/<id>]`
(its state and progress, then its tracks), a track's thumbnail, `DELETE /videos/<id>`.

The front only checks and forwards: the size before the body is read, the container by its first bytes
(preprocessor/video.sniff: a photo, an audio file or an empty part are refused here); the decoding and
everything after run on a worker (app/worker/video.py). A video belongs to its model's tenant and goes with
the model."""
from __future__ import annotations

import time

from flask import Blueprint, Response, g, jsonify, request

from app.shared.api_keys import Action
from app.shared.jobs import job_view, new_job_id
from app.web import broker_client as client
from app.web.context import caller_tenant, finished_job, job_answer, settings
from app.web.errors import ApiError
from app.web.forms import form_number, parse_callback, parse_job_id, query_int
from app.web.security import principal, requires
from logger import logger
from preprocessor.errors import InputError
from preprocessor.uploads import check_filename
from preprocessor.video import VideoError, sniff

bp = Blueprint("videos", __name__)

FORM_SLACK = 1024 * 1024  # a multipart body's boundaries and small fields, over the video itself
STORE_RATE = 50 * 1024 * 1024  # bytes a second the broker is given to store a video (added to its timeout)


@bp.post("/models/<job_id>/video")
@requires(Action.PREDICT)
def analyse_video(job_id: str):
    s = settings()
    if request.content_length is not None and request.content_length > s.max_video_bytes + FORM_SLACK:
        raise ApiError(413, "VIDEO_TOO_LARGE", f"the video is larger than the limit of {s.max_video_bytes} bytes "
                       "(FR_MAX_VIDEO_BYTES)", {"limit": s.max_video_bytes})
    job, _, _ = finished_job(job_id)
    fps = form_number(request.form, "fps", 5.0, 0.1, s.max_video_fps, float)
    callback = parse_callback(request.form.get("callback_url"), s)
    parts = request.files.getlist("video")
    if not parts:
        raise ApiError(400, "MISSING_VIDEO", "send the video as the multipart part `video`")
    if len(parts) > 1:  # which one the client meant is not ours to guess
        raise ApiError(400, "BAD_PARAMETER", f"send one video: the request holds {len(parts)} parts named `video`",
                       {"field": "video"})
    part = parts[0]
    try:
        name = check_filename(part.filename or "video")
    except InputError as exc:
        raise ApiError(400, exc.code, exc.message, exc.details) from None
    data = part.read(s.max_video_bytes + 1)
    if len(data) > s.max_video_bytes:
        raise ApiError(413, "VIDEO_TOO_LARGE", f"the video is larger than the limit of {s.max_video_bytes} bytes "
                       "(FR_MAX_VIDEO_BYTES)", {"limit": s.max_video_bytes})
    if not data:
        raise ApiError(400, "EMPTY_FILE", "the video is empty (0 bytes)", {"file": name})
    try:
        container = sniff(data)
    except VideoError as exc:
        raise ApiError(400, exc.code, f"{name[:200]}: {exc.message}", {"file": name}) from None
    video_id = new_job_id()
    g.model_id, g.audit_extra = job["id"], {"video": video_id}
    deadline = g.started + s.request_timeout_s - 5.0
    timeout = min(s.broker_timeout_s + len(data) / STORE_RATE, deadline - time.time())
    if timeout <= 1.0:
        raise ApiError(503, "DEADLINE_PASSED", "the upload took too long to check; nothing was stored")
    header = {"id": video_id, "model": job["id"], "tenant": principal().tenant, "name": name, "fps": fps,
              "deadline": deadline, "callback": callback}
    client.video(s.front_endpoint, s.front_keys_dir, header, data, timeout)
    logger.info("accepted video {} for model {}: {} bytes ({})", video_id, job["id"], len(data), container)
    body = {"status": 0, "id": video_id, "model": job["id"], "fps": fps, "bytes": len(data),
            "poll": f"/videos/{video_id}"}
    if callback:
        body["callback"] = callback  # the secret is shown here only (app/broker/webhooks.py signs with it)
    return jsonify(body), 202


def video_row(raw_id: str) -> dict:
    """A video job's row (404 for none, another tenant's, or a model's id)."""
    video_id = parse_job_id(raw_id)
    answer = job_answer(video_id, callback=True)
    row = answer["job"]
    if row.get("kind") != "video":
        raise ApiError(404, "NOT_FOUND", f"no video with id {video_id}")
    if answer.get("callback"):
        row = {**row, "_callback": answer["callback"]}
    return row


@bp.get("/videos/<job_id>")
@requires(Action.READ)
def video(job_id: str):
    """The video job's state and progress (frames sampled of frames to sample), then its result: the header of
    the video, the sampling, `truncated`, and the tracks, each with the URL of its thumbnail."""
    row = video_row(job_id)
    body: dict = {"status": 0, **job_view(row)}
    if row.get("_callback"):
        body["callback"] = row["_callback"]
    body["result"] = None
    if row["state"] == "done":
        s = settings()
        result = client.video_result(s.front_endpoint, s.front_keys_dir, row["id"], s.broker_timeout_s,
                                     caller_tenant())
        for track in result.get("tracks", []):
            track["thumbnail"] = f"/videos/{row['id']}/tracks/{int(track['id'])}.jpg"
        body["result"] = result
    return jsonify(body)


@bp.get("/videos/<job_id>/tracks/<int:track>.jpg")
@requires(Action.READ)
def thumbnail(job_id: str, track: int):
    """A track's thumbnail: the face of its best frame (JPEG)."""
    row = video_row(job_id)
    if row["state"] != "done":
        raise ApiError(409, "NOT_READY", f"video {row['id']} is not processed yet (state: {row['state']})")
    if not 1 <= track <= 100_000:
        raise ApiError(404, "NOT_FOUND", f"video {row['id']} has no track {track}")
    s = settings()
    jpeg = client.video_thumbnail(s.front_endpoint, s.front_keys_dir, row["id"], track, s.broker_timeout_s,
                                  caller_tenant())
    return Response(jpeg, mimetype="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@bp.get("/videos")
@requires(Action.READ)
def list_videos():
    """The caller's videos, newest first (`limit`, `offset`)."""
    limit, offset = query_int(request, "limit", 100, 1, 1000), query_int(request, "offset", 0, 0, 10**9)
    s = settings()
    rows, total = client.list_jobs(s.front_endpoint, s.front_keys_dir, limit, offset, s.broker_timeout_s,
                                   caller_tenant(), kind="video")
    videos = [{k: v for k, v in job_view(r).items() if k not in ("search", "attempts", "worker", "people", "parent")}
              for r in rows]
    return jsonify({"status": 0, "videos": videos, "total": total, "limit": limit, "offset": offset})


@bp.delete("/videos/<job_id>")
@requires(Action.DELETE)
def delete_video(job_id: str):
    row = video_row(job_id)
    s = settings()
    answer = client.delete(s.front_endpoint, s.front_keys_dir, row["id"], s.broker_timeout_s, caller_tenant())
    return jsonify({"status": 0, **answer})
