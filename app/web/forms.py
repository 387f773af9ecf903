"""Request -> validated (photos, options), or an ApiError/InputError naming what is wrong."""
from __future__ import annotations

import json
import re
import uuid

from flask import Request

from app.shared.callbacks import CallbackRefused, callback_for
from app.web.errors import ApiError
from constants import Settings, parse_bool
from preprocessor.errors import InputError
from preprocessor.images import inspect_image
from preprocessor.uploads import InflateBudget, Photo, label_from_path, read_zip

_UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


SMALL_JSON_BYTES = 64 * 1024  # a body of ids, a label, a name or a URL: no route of these needs more


def read_at_most(request: Request, most: int, chunk: int) -> bytes:
    """The request's body up to `most` bytes (read no further), `chunk` bytes a read: a read returns what has
    arrived (app/web/body_guard.py), so this reads until the end or `most`."""
    chunks, size = [], 0
    while size < most:
        data = request.stream.read(min(chunk, most - size))
        if not data:
            break
        chunks.append(data)
        size += len(data)
    return b"".join(chunks)


def small_json(request: Request, limit: int = SMALL_JSON_BYTES) -> dict:
    """The JSON object of a small body (the unknown faces' acts, cameras, keys): 413 REQUEST_TOO_LARGE past
    `limit` bytes (read no further), 400 BAD_JSON for anything but a JSON object, a body nested deeper than
    Python's parser goes too (Flask's get_json let its RecursionError through: a 500)."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "REQUEST_TOO_LARGE", f"this route's JSON body may hold at most {limit} bytes")
    raw = read_at_most(request, limit + 1, 1 << 16)
    if len(raw) > limit:
        raise ApiError(413, "REQUEST_TOO_LARGE", f"this route's JSON body may hold at most {limit} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "BAD_JSON", f"the body is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "BAD_JSON", "send a JSON object (Content-Type: application/json)")
    return body


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    """The integer query parameter `name` of `request` in [low, high] (`default` when absent);
    400 BAD_PARAMETER otherwise."""
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(400, "BAD_PARAMETER", f"{name} must be an integer in [{low}, {high}]")
    return value


def parse_job_id(raw: str | None) -> str:
    """A canonical lower-case uuid4, or 400 BAD_ID."""
    if not raw:
        raise ApiError(400, "BAD_ID", "missing model id")
    value = raw.strip().lower()
    if not _UUID4.match(value):
        raise ApiError(400, "BAD_ID", f"{raw[:80]!r} is not a model id (a uuid4)")
    return str(uuid.UUID(value))


def _flag(name: str, raw: str | None) -> bool:
    if raw is None or raw == "":
        return False
    try:
        return parse_bool(raw, name)
    except ValueError as exc:
        raise ApiError(400, "BAD_PARAMETER", str(exc), {"field": name}) from None


def form_number(form, name: str, default, low, high, cast=int):
    """A numeric form field within [low, high], its default when absent, or 400 BAD_PARAMETER."""
    raw = form.get(name)
    if raw in (None, ""):
        return default
    kind = "an integer" if cast is int else "a number"
    try:
        value = cast(raw)
    except ValueError:
        raise ApiError(400, "BAD_PARAMETER", f"{name} must be {kind}, got {raw[:40]!r}") from None
    if not low <= value <= high:  # also refuses nan
        raise ApiError(400, "BAD_PARAMETER", f"{name} must be between {low} and {high}, got {raw[:40]}",
                       {"field": name, "min": low, "max": high})
    return value


def unprintable(c: str) -> bool:
    """A character the broker refuses in a single-line text (app/wire/protocol.text: C0 and DEL), or one
    that cannot travel to it at all (a lone surrogate is not UTF-8)."""
    return ord(c) < 32 or ord(c) == 127 or "\ud800" <= c <= "\udfff"


def parse_options(form, settings: Settings) -> tuple[str | None, dict]:
    """-> (name, options {optimize, seed[, population, generations, time_budget][, keep_unknown]}) from the form
    fields."""
    optimize = _flag("optimize", form.get("optimize"))
    limits = settings.option_limits
    defaults = {"seed": settings.default_seed, "population": settings.search_population,
                "generations": settings.search_generations, "time_budget": settings.search_budget_s}
    seed = form_number(form, "seed", defaults["seed"], *limits["seed"])
    search = {name: form_number(form, name, defaults[name], *limits[name])
              for name in ("population", "generations", "time_budget")}
    given = [k for k in search if form.get(k) not in (None, "")]
    if given and not optimize:
        raise ApiError(400, "BAD_PARAMETER", f"{', '.join(given)} only apply with optimize=1")
    name = form.get("name")
    if name is not None:
        name = name.strip() or None
        if name and (len(name) > settings.max_name_length or any(unprintable(c) for c in name)):
            raise ApiError(400, "BAD_PARAMETER",
                           f"name must be at most {settings.max_name_length} printable characters")
    options = {"optimize": optimize, "seed": seed}
    if optimize:
        options.update(search)
    if _flag("keep_unknown", form.get("keep_unknown")):  # the model keeps the faces it cannot name (#28)
        options["keep_unknown"] = True
    return name, options


def parse_callback(raw: str | None, settings: Settings) -> dict | None:
    """The `callback_url` field -> {url, secret} (a new signing secret), None when absent; 400 when the URL
    is malformed or names a host FR_WEBHOOK_ALLOW does not allow (or a private address it does not list)."""
    try:
        return callback_for(raw, settings)
    except CallbackRefused as exc:
        raise ApiError(400, exc.code, exc.message, {"field": "callback_url"}) from None


def collect_photos(request: Request, settings: Settings) -> tuple[list[Photo], list[str]]:
    """All labelled photos of the request (multipart `images` parts and `archive` zips), each checked as
    it is read: a readable image within the limits. -> (photos, ignored names); one error lists every bad
    file. A bad file's bytes are dropped at once, and all archive parts share one inflate budget, so a
    request holds at most its good photos in memory."""
    photos: list[Photo] = []
    ignored: list[str] = []
    bad: list[dict] = []

    def keep(photo: Photo) -> bool:
        try:
            inspect_image(photo.data, settings.max_image_pixels)
            return True
        except InputError as exc:
            bad.append({"file": photo.filename, "code": exc.code, "message": exc.message})
            return False

    for part in request.files.getlist("images"):
        if not part.filename:
            continue
        label = label_from_path(part.filename, settings.max_label_length)
        data = part.stream.read(settings.max_photo_bytes + 1)
        if len(data) > settings.max_photo_bytes:
            raise InputError("PHOTO_TOO_LARGE", f"{part.filename!r} is over the limit of "
                             f"{settings.max_photo_bytes} bytes a photo", {"files": [part.filename]})
        photo = Photo(label, part.filename, data)
        if keep(photo):
            photos.append(photo)
        if len(photos) > settings.max_files:
            raise ApiError(413, "TOO_MANY_FILES", f"more than {settings.max_files} photos")
    budget = InflateBudget(settings.max_zip_uncompressed_bytes)
    for part in request.files.getlist("archive"):
        got, skipped = read_zip(part.stream, max_total=settings.max_zip_uncompressed_bytes,
                                max_ratio=settings.max_zip_ratio, max_entries=settings.max_zip_entries,
                                max_label_length=settings.max_label_length, budget=budget,
                                max_entry=settings.max_photo_bytes, keep=keep)
        photos.extend(got)
        ignored.extend(skipped)
        if len(photos) > settings.max_files:
            raise ApiError(413, "TOO_MANY_FILES", f"more than {settings.max_files} photos")
    if bad:
        first = bad[0]
        raise InputError(first["code"], f"{len(bad)} file(s) are not usable images; first: "
                         f"{first['file']!r}: {first['message']}", {"files": bad[:200]})
    unknown = sorted(set(request.files) - {"images", "archive"})
    if not photos:
        hint = f" (got file field(s) {', '.join(unknown)})" if unknown else ""
        raise ApiError(400, "NO_FILES", "no photos: send multipart 'images' parts named '<person>/<file>' "
                       "or an 'archive' zip with one folder per person" + hint)
    return photos, ignored


def check_people(photos: list[Photo]) -> int:
    people = {p.label for p in photos}
    if len(people) < 2:
        raise ApiError(400, "TOO_FEW_PEOPLE", f"a recognizer tells people apart: it needs photos of at least "
                       f"2 people, got {len(people)} ({', '.join(sorted(people))})")
    return len(people)
