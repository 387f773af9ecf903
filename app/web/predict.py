"""Using a model over HTTP: `POST /models/<id>/predict` (who is in this photo?) and `POST /models/<id>/verify`
(is this the same person?), run in this web process from the bundle it cached.

Both take a multipart form or a JSON body (app/web/probes.py): one photo or embedding, or a
batch answered item by item, in order, each with its own error when it was bad.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from flask import Blueprint, Request, jsonify, request

from app.shared.api_keys import Action
from app.web.context import built_model, load_recognizer, settings
from app.web.errors import ApiError
from app.web.probes import (
    Probe,
    check_fields,
    decode_image_field,
    flag,
    parse_embedding,
    probes_from_form,
    probes_from_json,
    read_json,
    read_part,
)
from app.web.security import requires
from app.web.unknown import UnknownFaces
from constants import Settings
from modelization.recognizer import FacePrediction, Recognizer
from preprocessor.errors import InputError
from preprocessor.uploads import clean_label


def threshold_value(raw: Any) -> float | None:
    """The `threshold` field (form text or JSON number): a distance in (0, 4], or None for the bundle's own."""
    if raw is None or raw == "":
        return None
    try:
        value = float(raw) if not isinstance(raw, bool) else -1.0
    except (TypeError, ValueError):
        value = -1.0
    if not 0.0 < value <= 4.0:  # also refuses nan
        raise ApiError(400, "BAD_PARAMETER", "threshold must be a distance in (0, 4]", {"field": "threshold"})
    return value


def _embedding_list(x: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(x, np.float32)]


def error_entry(index: int, exc: InputError | ApiError) -> dict:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.details:
        error["details"] = exc.details
    return {"index": index, "status": 1, "error": error}


# --- predict -------------------------------------------------------------------------------------
PREDICT_FIELDS = {"image", "images", "embedding", "embeddings", "threshold", "return_embeddings", "keep_unknown"}


def predict_request(model_id: str, recognizer: Recognizer, request: Request, s: Settings,
                    keep_default: bool = False) -> tuple[dict, UnknownFaces | None]:
    """The answer to POST /models/<id>/predict (single or batch), and the faces to keep when unknown faces
    are kept (`keep_unknown`: the request's, else the model's `keep_default`)."""
    if request.is_json:
        body = read_json(request, s)
        check_fields(body, PREDICT_FIELDS)
        threshold = threshold_value(body.get("threshold"))
        embeddings = flag(body.get("return_embeddings", request.args.get("return_embeddings")), "return_embeddings")
        keep_raw = body.get("keep_unknown", request.args.get("keep_unknown"))
        probes, batch = probes_from_json(body, s)
    else:
        threshold = threshold_value(request.form.get("threshold"))
        embeddings = flag(request.form.get("return_embeddings", request.args.get("return_embeddings")),
                          "return_embeddings")
        keep_raw = request.form.get("keep_unknown", request.args.get("keep_unknown"))
        probes, batch = probes_from_form(request, s)
    keep = UnknownFaces() if (flag(keep_raw, "keep_unknown") if keep_raw not in (None, "") else keep_default) \
        else None
    shown = recognizer.threshold if threshold is None else threshold
    if not batch:
        return {"status": 0, "id": model_id, **predict_one(recognizer, probes[0], threshold, s, embeddings, keep, 0),
                "threshold": shown}, keep
    results = []
    for i, probe in enumerate(probes):
        try:
            if probe.error is not None:
                raise probe.error
            results.append({"index": i, "status": 0,
                            **predict_one(recognizer, probe, threshold, s, embeddings, keep, i)})
        except InputError as exc:
            results.append(error_entry(i, exc))
    return {"status": 0, "id": model_id, "count": len(results), "threshold": shown, "results": results}, keep


def predict_one(recognizer: Recognizer, probe: Probe, threshold: float | None, s: Settings,
                with_embeddings: bool, keep: UnknownFaces | None = None, item: int = 0) -> dict:
    """{count, faces[, faces_found, message]} for one photo or embedding. Raises InputError (bad photo).
    With `keep`, the photo's faces answered unknown (without a `reason`) are added to it."""
    chips: list[np.ndarray] = []
    if probe.embedding is not None:
        x = probe.embedding[None, :]
        faces = [FacePrediction(None, *r) for r in recognizer.identify(x, threshold)]
        found = 1
    else:
        assert probe.image is not None
        faces, found, x = recognizer.faces_and_embeddings(probe.image, threshold, s.max_faces_per_predict,
                                                          chips_out=chips if keep is not None else None)
    listed = [f.as_dict() for f in faces]
    if keep is not None and chips:
        for found_face, entry, v, chip in zip(faces, listed, x, chips):
            if found_face.label is None and found_face.reason is None:
                keep.add(entry, v, chip, found_face.quality, found_face.box, item)
    if with_embeddings:
        for face, v in zip(listed, x):
            face["embedding"] = _embedding_list(v)
    out: dict[str, Any] = {"count": len(faces), "faces": listed}
    if found > len(faces):
        out["faces_found"] = found
        out["message"] = f"{found} faces found; the {len(faces)} largest were identified (FR_MAX_FACES_PER_PREDICT)"
    if not faces:
        out["message"] = "no face found in the photo"
    return out


# --- verify --------------------------------------------------------------------------------------
VERIFY_FIELDS = {"image", "images", "embedding", "embeddings", "image2", "embedding2", "label", "return_embeddings"}


def _face(recognizer: Recognizer, probe: Probe, name: str) -> tuple[np.ndarray, dict | None]:
    """A probe's embedding and what was found (box, quality, faces found; None for an embedding).
    Raises InputError NO_FACE when the photo shows none."""
    if probe.embedding is not None:
        return probe.embedding, None
    assert probe.image is not None
    box, x, quality, found = recognizer.largest_face(probe.image)
    if x is None or box is None:
        raise InputError("NO_FACE", f"no face found in {name}", {"field": name})
    return x, {"box": box.as_list(), "quality": quality, "faces_found": found,
               "reason": recognizer.unrecognisable(quality)}


def _not_judged(out: dict, *faces: dict | None) -> dict:
    """A comparison with a face too small or too blurred to be recognised is not a match, whatever the
    distance: `same` false and the face's `reason` (null when both faces could be judged)."""
    out["reason"] = next((f["reason"] for f in faces if f and f.get("reason")), None)
    if out["reason"]:
        out["same"] = False
    return out


def verify_request(model_id: str, recognizer: Recognizer, request: Request, s: Settings) -> dict:
    """The answer to POST /models/<id>/verify: each photo (or embedding) against a second one (`image2`,
    `embedding2`) or a person of the model (`label`)."""
    ref_probe, label_raw, embeddings, probes, batch = _verify_inputs(request, s)
    label = None
    if ref_probe is None:
        label = _model_label(recognizer, label_raw, s)
        ref_x, ref_face = None, None
    else:
        ref_x, ref_face = _face(recognizer, ref_probe, "image2")

    def one(probe: Probe, name: str) -> dict:
        x, face = _face(recognizer, probe, name)
        if label is not None:
            out = {"mode": "label", "label": label, **recognizer.verify_label(x, label)}
        else:
            assert ref_x is not None
            out = {"mode": "pair", **recognizer.verify_pair(x, ref_x)}
        _not_judged(out, face, ref_face)
        out["face"] = face
        if embeddings:
            out["embedding"] = _embedding_list(x)
        return out

    top: dict[str, Any] = {"status": 0, "id": model_id}
    if ref_probe is not None:
        top["face2"] = ref_face
        if embeddings and ref_x is not None:
            top["embedding2"] = _embedding_list(ref_x)
    if not batch:
        return {**top, **one(probes[0], "image" if probes[0].image is not None else "embedding")}
    results = []
    for i, probe in enumerate(probes):
        try:
            if probe.error is not None:
                raise probe.error
            results.append({"index": i, "status": 0, **one(probe, f"item {i}")})
        except InputError as exc:
            results.append(error_entry(i, exc))
    return {**top, "count": len(results), "results": results}


def _verify_inputs(request: Request, s: Settings) -> tuple[Probe | None, Any, bool, list[Probe], bool]:
    """A verify request's fields, from JSON or a form: (the second photo or embedding, or None; the `label`
    asked for; return_embeddings; the probes; whether it is a batch)."""
    ref_probe: Probe | None = None
    if request.is_json:
        body = read_json(request, s)
        check_fields(body, VERIFY_FIELDS)
        refs = [k for k in ("image2", "embedding2", "label") if k in body]
        _one_reference(refs)
        if refs[0] == "image2":
            ref_probe = Probe(image=decode_image_field(body["image2"], s, "image2"))
        elif refs[0] == "embedding2":
            ref_probe = Probe(embedding=parse_embedding(body["embedding2"], "embedding2"))
        embeddings = flag(body.get("return_embeddings", request.args.get("return_embeddings")), "return_embeddings")
        probes, batch = probes_from_json(body, s)
        return ref_probe, body.get("label"), embeddings, probes, batch
    part2 = request.files.get("image2")
    label_raw = request.form.get("label")
    _one_reference([k for k, v in (("image2", part2), ("label", label_raw)) if v is not None])
    if part2 is not None:
        ref_probe = Probe(image=read_part(part2, s, "image2"))
    embeddings = flag(request.form.get("return_embeddings", request.args.get("return_embeddings")),
                      "return_embeddings")
    probes, batch = probes_from_form(request, s)
    return ref_probe, label_raw, embeddings, probes, batch


def _one_reference(given: list[str]) -> None:
    if not given:
        raise ApiError(400, "NO_REFERENCE", "say what to compare with: a second photo ('image2'), an embedding "
                       "('embedding2', JSON only) or a person of the model ('label')")
    if len(given) > 1:
        raise ApiError(400, "BAD_PARAMETER", f"compare with one of {', '.join(given)}, not several",
                       {"fields": given})


def _model_label(recognizer: Recognizer, raw: Any, s: Settings) -> str:
    """The `label` field: a person of the model (404 UNKNOWN_PERSON), or 400 BAD_LABEL."""
    if not isinstance(raw, str):
        raise ApiError(400, "BAD_LABEL", "label must be a string: the name of a person in the model")
    label = clean_label(raw, s.max_label_length, enrolled=True)  # a person enrolled perhaps before today's rules
    if label not in recognizer.labels:
        raise ApiError(404, "UNKNOWN_PERSON", f"{label!r} is not a person of this model", {"label": label})
    return label


bp = Blueprint("predict", __name__)


@bp.post("/models/<job_id>/predict")
@requires(Action.PREDICT)
def predict(job_id: str):
    """Every face of a photo (or several photos, or embeddings), named or unknown; with keep_unknown (the
    request's or the model's), the unknown ones are kept and answered with their `unknown_id`."""
    job, path = built_model(job_id)
    answer, keep = predict_request(job["id"], load_recognizer(job, path), request, settings(),
                                   bool(job.get("keep_unknown")))
    if keep is not None:
        keep.send(job["id"], answer)
    return jsonify(answer)


@bp.post("/models/<job_id>/verify")
@requires(Action.PREDICT)
def verify(job_id: str):
    """1:1: is the face of `image` the same person as `image2`'s, or as the person `label`?"""
    job, path = built_model(job_id)
    return jsonify(verify_request(job["id"], load_recognizer(job, path), request, settings()))
