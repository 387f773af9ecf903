"""Unknown faces a model keeps (issue #28): their groups, their chips, and what a person does with a group:
name it (a derived model), merge groups, move a face out of one, discard one; and corrections (kept faces
given to a person, a derived model).

The front keeps none of it: the broker stores the faces (app/broker/unknown.py) and every change is a
message to it, so two fronts acting on one group are served one after the other. `UnknownFaces` is the
one way a process of this front keeps faces (predict today; a video or a camera can call it the same way).
"""
from __future__ import annotations

import json
import time
from typing import Any

import cv2
import numpy as np
from flask import Blueprint, Response, g, jsonify, request

from app.shared.api_keys import Action
from app.shared.jobs import new_job_id
from app.web import broker_client as client
from app.web.context import caller_tenant, finished_job, settings
from app.web.errors import ApiError
from app.web.forms import parse_job_id, small_json
from app.web.security import principal, requires
from app.wire import protocol as p
from logger import logger
from preprocessor.errors import InputError
from preprocessor.uploads import clean_label

bp = Blueprint("unknown", __name__)
CHIP_QUALITY = 90  # JPEG quality of a kept chip (150x150: ~8 KB)


class UnknownFaces:
    """Faces to keep from one request, gathered as they are answered and sent to the broker in one message;
    each face's answer entry then gets its `unknown_id` (and `cluster`)."""

    def __init__(self) -> None:
        self.entries: list[dict] = []
        self.faces: list[dict] = []
        self.chips: list[bytes] = []

    def add(self, entry: dict, embedding: np.ndarray, chip: np.ndarray, quality: dict | None, box: list[int] | None,
            item: int) -> None:
        """One face to keep: its answer entry (given its id once kept), embedding, RGB chip, quality, box."""
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(chip), cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, CHIP_QUALITY])
        if not ok:
            return
        self.entries.append(entry)
        self.faces.append({"embedding": [float(v) for v in np.asarray(embedding, np.float32)],
                           "quality": quality, "box": [int(v) for v in box] if box is not None else None,
                           "item": item})
        self.chips.append(jpeg.tobytes())

    def send(self, model_id: str, answer: dict, kind: str = "predict") -> None:
        """Keep the gathered faces (durably, in the broker) and mark them in `answer`: each face's entry gets
        `unknown_id` and `cluster`; when they could not be kept (the tenant's byte quota, the store), the
        answer says why in `unknown_error` and the prediction stands."""
        if not self.faces:
            return
        s = settings()
        source: dict[str, Any] = {"kind": kind, "request": getattr(g, "request_id", None) or new_job_id(),
                                  "item": sorted({f["item"] for f in self.faces})[:50]}
        faces = [{k: v for k, v in f.items() if k != "item"} for f in self.faces]
        header = {"model": model_id, "tenant": caller_tenant(), "key": _key_id(), "source": source, "faces": faces}
        try:
            kept, _ = client.unknown(s.front_endpoint, s.front_keys_dir, p.UKEEP, header, s.broker_timeout_s,
                                     self.chips)
        except ApiError as exc:
            logger.warning("unknown faces of model {} not kept: {}", model_id, exc.code)
            answer["unknown_error"] = {"code": exc.code, "message": exc.message}
            return
        for entry, face in zip(self.entries, kept["faces"]):
            entry["unknown_id"], entry["cluster"] = face["unknown_id"], face["cluster"]
        answer["unknown_kept"] = len(kept["faces"])


def _key_id() -> str | None:
    key = getattr(principal(), "key_id", None)
    return key if isinstance(key, str) and len(key) == 12 else None


def _id(raw: str, what: str) -> str:
    """A group's or a face's id from the URL or the body; 404 for anything else (it names nothing)."""
    if not isinstance(raw, str) or not p.is_unknown_id(raw):
        raise ApiError(404, "NOT_FOUND", f"no {what} {str(raw)[:40]!r}")
    return raw


def _ask(command: bytes, header: dict) -> tuple[dict, list[bytes]]:
    s = settings()
    return client.unknown(s.front_endpoint, s.front_keys_dir, command, {**header, "tenant": caller_tenant()},
                          s.broker_timeout_s)


def _body() -> dict:
    return small_json(request)


@bp.get("/models/<job_id>/unknown")
@requires(Action.READ)
def groups(job_id: str):
    """The model's kept unknown faces in groups, largest first."""
    model = parse_job_id(job_id)
    answer, _ = _ask(p.UGROUPS, {"model": model})
    return jsonify({"status": 0, "id": model, **answer})


@bp.get("/models/<job_id>/unknown/<cluster>/faces/<face>")
@requires(Action.READ)
def chip(job_id: str, cluster: str, face: str):
    """A kept face's aligned chip (JPEG)."""
    model = parse_job_id(job_id)
    details, blobs = _ask(p.UCHIP, {"model": model, "cluster": _id(cluster, "group"), "face": _id(face, "face")})
    if len(blobs) != 1:
        raise ApiError(502, "BROKER_UNREADABLE", "the job broker sent a chip this front cannot read")
    return Response(blobs[0], mimetype="image/jpeg",
                    headers={"Cache-Control": "private, no-store", "X-Unknown-Seen": str(details.get("seen"))})


@bp.post("/models/<job_id>/unknown/<cluster>/name")
@requires(Action.BUILD)
def name(job_id: str, cluster: str):
    """Name a group: a new model, derived from this one plus the group's faces as photos of `label` (their
    embeddings: nothing is extracted again). 202 with its id and `parent`."""
    _, parent, _ = finished_job(job_id)
    group = _id(cluster, "group")
    body = _body()
    return _derive(parent, _label(body.get("label")), {"cluster": group}, body.get("name"))


@bp.post("/models/<job_id>/corrections")
@requires(Action.BUILD)
def corrections(job_id: str):
    """Give kept faces (a face the model missed, from any group) to a person: a new derived model, as naming
    a group derives. Body {"label": L, "faces": [unknown_id, ...]}. 202 with its id and `parent`."""
    _, parent, _ = finished_job(job_id)
    body = _body()
    label = _label(body.get("label"))
    faces = body.get("faces")
    if not isinstance(faces, list) or not 1 <= len(faces) <= p.MAX_KEEP:
        raise ApiError(400, "BAD_PARAMETER", f"faces must list 1 to {p.MAX_KEEP} unknown_ids")
    return _derive(parent, label, {"faces": [_id(f, "face") for f in faces]}, body.get("name"))


def _label(raw: Any) -> str:
    """The person a group or faces are given to: a clean label (a new person or one the model knows), or 400."""
    if not isinstance(raw, str):
        raise ApiError(400, "BAD_LABEL", "label must be a string: the name of the person")
    try:
        return clean_label(raw, settings().max_label_length)
    except InputError as exc:
        raise ApiError(400, exc.code, exc.message) from None


def _derive(parent: dict, label: str, which: dict, model_name: Any):
    """DERIVE with `unknown` ({cluster} or {faces}, and the label): the 202 answer."""
    s = settings()
    if model_name is not None and (not isinstance(model_name, str) or len(model_name) > s.max_name_length
                                   or any(ord(c) < 32 or ord(c) == 127 for c in model_name)):
        raise ApiError(400, "BAD_PARAMETER", f"name must be at most {s.max_name_length} printable characters")
    options: dict[str, Any] = {}
    try:
        options["seed"] = int(json.loads(parent["options"] or "{}")["seed"])
    except (ValueError, KeyError, TypeError):
        pass
    new_id = new_job_id()
    g.model_id, g.audit_extra = new_id, {"parent": parent["id"]}
    header = {"id": new_id, "parent": parent["id"], "tenant": caller_tenant(), "name": model_name or parent.get("name"),
              "options": options, "deadline": time.time() + s.request_timeout_s - 5.0, "remove": [], "callback": None,
              "files": [], "unknown": {**which, "label": label}}
    answer = client.derive(s.front_endpoint, s.front_keys_dir, header, [], s.broker_timeout_s)
    logger.info("accepted job {} derived from {}: kept unknown faces named", new_id, parent["id"])
    return jsonify({"status": 0, **answer}), 202


@bp.post("/models/<job_id>/unknown/merge")
@requires(Action.BUILD)
def merge(job_id: str):
    """Several groups into one: the largest keeps its id; the others answer 409 GROUP_MERGED from then on."""
    model = parse_job_id(job_id)
    clusters = _body().get("clusters")
    if not isinstance(clusters, list) or not 2 <= len(clusters) <= p.MAX_MERGE:
        raise ApiError(400, "BAD_PARAMETER", f"clusters must list 2 to {p.MAX_MERGE} group ids")
    answer, _ = _ask(p.UMERGE, {"model": model, "clusters": [_id(c, "group") for c in clusters]})
    return jsonify({"status": 0, **answer})


@bp.post("/models/<job_id>/unknown/<cluster>/faces/<face>/move")
@requires(Action.BUILD)
def move(job_id: str, cluster: str, face: str):
    """One face out of its group: into the group `to`, or (no `to`, or null) a group of its own."""
    model = parse_job_id(job_id)
    body = small_json(request) if request.content_length else {}
    to = body.get("to")
    header = {"model": model, "cluster": _id(cluster, "group"), "face": _id(face, "face"),
              "to": None if to is None else _id(to, "group")}
    answer, _ = _ask(p.UMOVE, header)
    return jsonify({"status": 0, **answer})


@bp.delete("/models/<job_id>/unknown/<cluster>")
@requires(Action.BUILD)
def discard(job_id: str, cluster: str):
    """Discard a group: its faces' chips and embeddings are deleted."""
    model = parse_job_id(job_id)
    answer, _ = _ask(p.UDISCARD, {"model": model, "cluster": _id(cluster, "group")})
    return jsonify({"status": 0, **answer})


def waiting_counts(ids: list[str]) -> dict[str, int]:
    """How many unknown faces wait in each of these models (for the model list); {} when the broker cannot say."""
    if not ids:
        return {}
    try:
        answer, _ = _ask(p.UCOUNT, {"ids": ids[:p.MAX_KNOWN]})
    except ApiError:
        return {}
    return answer.get("counts", {})
