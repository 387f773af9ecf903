"""Photos and embeddings to recognise, from a multipart form or a JSON body, each one checked.

A *probe* is one thing to recognise: the bytes of a photo, or a 128-d embedding a client
computed itself with dlib. JSON bodies carry photos as base64 or `data:` URIs, under the
same limits as multipart parts (FR_MAX_PHOTO_BYTES, FR_MAX_IMAGE_PIXELS); a batch holds up
to FR_MAX_BATCH of them, and each bad item gets its own error in the answer instead of
failing the others.

Request-level problems raise ApiError (the whole request is refused); a bad photo or
embedding raises InputError, which a batch keeps beside that item.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from flask import Request

from app.web.errors import ApiError
from app.web.forms import read_at_most
from constants import Settings, parse_bool
from features.embeddings import EMBEDDING_SIZE
from preprocessor.errors import InputError
from preprocessor.images import inspect_image

MAX_EMBEDDING_VALUE = 100.0  # dlib's components lie within about +-0.5: a larger one is a client's bug
_SPACE = re.compile(rb"\s+")


@dataclass
class Probe:
    """One photo (`image`) or embedding to recognise; `error` when it could not be read (batches)."""
    image: bytes | None = None
    embedding: np.ndarray | None = None
    error: InputError | None = None


def read_json(request: Request, settings: Settings) -> dict:
    """The JSON object of the body, within FR_MAX_JSON_BYTES (413), or 400 BAD_JSON. NaN and Infinity
    literals are read as such so that an embedding holding them gets its own clear error."""
    limit = settings.max_json_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "REQUEST_TOO_LARGE", f"a JSON body may hold at most {limit} bytes (FR_MAX_JSON_BYTES); "
                       "send large photos as multipart parts")
    raw = read_at_most(request, limit + 1, 1 << 20)
    if len(raw) > limit:
        raise ApiError(413, "REQUEST_TOO_LARGE", f"a JSON body may hold at most {limit} bytes (FR_MAX_JSON_BYTES)")
    try:
        body = json.loads(raw, parse_constant=float)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "BAD_JSON", f"the body is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "BAD_JSON", "the body must be a JSON object")
    return body


def decode_image_field(value: Any, settings: Settings, name: str = "image") -> bytes:
    """A photo sent in JSON: base64 (standard or URL-safe alphabet, padding optional, line breaks allowed)
    or a `data:<type>;base64,<data>` URI -> its bytes, checked like an uploaded photo. Raises InputError."""
    if not isinstance(value, str):
        raise InputError("BAD_BASE64", f"{name} must be a string: a photo in base64, or a data: URI")
    text = value.encode("ascii", "replace")
    if text[:5].lower() == b"data:":
        head, sep, text = text.partition(b",")
        if not sep or not head.lower().endswith(b";base64"):
            raise InputError("BAD_DATA_URI", f"{name}: a data: URI must be 'data:<type>;base64,<data>'")
    compact = _SPACE.sub(b"", text)
    if len(compact) // 4 * 3 > settings.max_photo_bytes + 3:
        raise InputError("PHOTO_TOO_LARGE", f"{name} is over the limit of {settings.max_photo_bytes} bytes a photo")
    compact = compact.replace(b"-", b"+").replace(b"_", b"/")
    if compact.endswith(b"=") and len(compact) % 4:
        raise InputError("BAD_BASE64", f"{name} is not valid base64 (its padding is wrong)")
    compact += b"=" * (-len(compact) % 4)  # padding may be left out, as URL-safe encoders do
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("BAD_BASE64", f"{name} is not valid base64") from None
    if not data:
        raise InputError("BAD_BASE64", f"{name} is empty")
    if len(data) > settings.max_photo_bytes:
        raise InputError("PHOTO_TOO_LARGE", f"{name} is over the limit of {settings.max_photo_bytes} bytes a photo")
    inspect_image(data, settings.max_image_pixels, settings.predict_max_pixels)
    return data


def parse_embedding(value: Any, name: str = "embedding") -> np.ndarray:
    """A client's dlib embedding: a list of exactly 128 finite numbers. Raises InputError BAD_EMBEDDING."""
    if not isinstance(value, list):
        raise InputError("BAD_EMBEDDING", f"{name} must be a list of {EMBEDDING_SIZE} numbers")
    if len(value) != EMBEDDING_SIZE:
        raise InputError("BAD_EMBEDDING", f"{name} must hold exactly {EMBEDDING_SIZE} numbers, got {len(value)}",
                         {"length": len(value)})
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InputError("BAD_EMBEDDING", f"{name}[{i}] is not a number", {"index": i})
        if not math.isfinite(v):
            raise InputError("BAD_EMBEDDING", f"{name}[{i}] is {v}: only finite numbers are allowed", {"index": i})
        if abs(v) > MAX_EMBEDDING_VALUE:
            raise InputError("BAD_EMBEDDING", f"{name}[{i}] = {v} is out of range (a dlib embedding's numbers lie "
                             f"within +-{MAX_EMBEDDING_VALUE:g})", {"index": i})
    return np.asarray(value, np.float32)


def _probe(kind: str, value: Any, settings: Settings, name: str) -> Probe:
    if kind == "image":
        return Probe(image=decode_image_field(value, settings, name))
    return Probe(embedding=parse_embedding(value, name))


SIDES = {"image": ("image", "image"), "embedding": ("embedding", "embedding"),
         "images": ("image", "images"), "embeddings": ("embedding", "embeddings")}


def probes_from_json(body: dict, settings: Settings, singles: tuple[str, ...] = ("image", "embedding"),
                     batches: tuple[str, ...] = ("images", "embeddings")) -> tuple[list[Probe], bool]:
    """The probes of a JSON body: one of `image`, `embedding` (a single probe) or `images`, `embeddings`
    (a batch). -> (probes, is a batch). A single bad probe raises its InputError; a batch keeps each item's
    error in its Probe. Raises ApiError for a body that names none, several, or an empty or too large batch."""
    given = [k for k in (*singles, *batches) if k in body]
    if not given:
        raise ApiError(400, "NO_FILES", f"send one of {', '.join(singles + batches)}")
    if len(given) > 1:
        raise ApiError(400, "BAD_PARAMETER", f"send only one of {', '.join(given)}", {"fields": given})
    key = given[0]
    kind, _ = SIDES[key]
    if key in singles:
        return [_probe(kind, body[key], settings, key)], False
    items = body[key]
    if not isinstance(items, list):
        raise ApiError(400, "BAD_PARAMETER", f"{key} must be a list")
    if not items:
        raise ApiError(400, "EMPTY_BATCH", f"{key} is empty")
    if len(items) > settings.max_batch:
        raise ApiError(413, "BATCH_TOO_LARGE", f"{key} holds {len(items)} items; at most {settings.max_batch} "
                       "(FR_MAX_BATCH)", {"max": settings.max_batch})
    probes = []
    for i, item in enumerate(items):
        try:
            probes.append(_probe(kind, item, settings, f"{key}[{i}]"))
        except InputError as exc:
            probes.append(Probe(error=exc))
    return probes, True


def read_part(part, settings: Settings, name: str) -> bytes:
    """A multipart photo part within the photo limit, checked (InputError otherwise)."""
    data = part.stream.read(settings.max_photo_bytes + 1)
    if len(data) > settings.max_photo_bytes:
        raise InputError("PHOTO_TOO_LARGE", f"{name} is over the limit of {settings.max_photo_bytes} bytes a photo")
    inspect_image(data, settings.max_image_pixels, settings.predict_max_pixels)
    return data


def probes_from_form(request: Request, settings: Settings) -> tuple[list[Probe], bool]:
    """The probes of a multipart form: an `image` part, or `images` parts (a batch, each checked alone)."""
    single, many = request.files.get("image"), request.files.getlist("images")
    if single is not None and many:
        raise ApiError(400, "BAD_PARAMETER", "send either an 'image' part or 'images' parts, not both")
    if single is not None:
        return [Probe(image=read_part(single, settings, "image"))], False
    if not many:
        raise ApiError(400, "NO_FILES", "send the photo as a multipart 'image' part (or several 'images' parts), "
                       "or a JSON body")
    if len(many) > settings.max_batch:
        raise ApiError(413, "BATCH_TOO_LARGE", f"{len(many)} images; at most {settings.max_batch} (FR_MAX_BATCH)",
                       {"max": settings.max_batch})
    probes = []
    for i, part in enumerate(many):
        try:
            probes.append(Probe(image=read_part(part, settings, f"images[{i}]")))
        except InputError as exc:
            probes.append(Probe(error=exc))
    return probes, True


def flag(value: Any, name: str) -> bool:
    """A yes/no field from JSON (true/false, 0/1) or a form/query ("1", "true", ...); 400 otherwise."""
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        try:
            return parse_bool(value, name)
        except ValueError as exc:
            raise ApiError(400, "BAD_PARAMETER", str(exc), {"field": name}) from None
    raise ApiError(400, "BAD_PARAMETER", f"{name} must be true or false", {"field": name})


def check_fields(body: dict, allowed: set[str]) -> None:
    """400 for a JSON field the endpoint does not know (a typo would otherwise be ignored silently)."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, "BAD_PARAMETER", f"unknown field(s) {', '.join(repr(u)[:40] for u in unknown[:5])}; "
                       f"this endpoint takes {', '.join(sorted(allowed))}", {"fields": unknown[:20]})
