"""The whole HTTP API as an OpenAPI 3.1 document (served at `/openapi.json`, read by `/docs`).

Written by hand, next to the routes it describes; test/test_openapi.py fails when a route of the app is
missing here or a path here is not a route, and validates the document (openapi-spec-validator).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from constants import VERSION
from constants.states import JobState, TaskKind

JSON = "application/json"


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: list[str] | None = None, **props: Any) -> dict:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    return out


def num(description: str = "", **extra: Any) -> dict:
    return {"type": "number", **({"description": description} if description else {}), **extra}


def integer(description: str = "", **extra: Any) -> dict:
    return {"type": "integer", **({"description": description} if description else {}), **extra}


def text(description: str = "", **extra: Any) -> dict:
    return {"type": "string", **({"description": description} if description else {}), **extra}


def nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


def answer(description: str, schema: dict | None = None, example: Any = None) -> dict:
    content: dict[str, Any] = {"schema": schema or ref("Ok")}
    if example is not None:
        content["example"] = example
    return {"description": description, "content": {JSON: content}}


def errors(*cases: tuple[int, str]) -> dict:
    """Error answers: (HTTP status, which codes and when)."""
    out: dict[str, dict] = {}
    for status, when in cases:
        out[str(status)] = {"description": when, "content": {JSON: {"schema": ref("Error")}}}
    return out


JOB_ID = {"name": "job_id", "in": "path", "required": True, "description": "the model's id (a uuid4)",
          "schema": {"type": "string", "format": "uuid"}}
ID_ERRORS = ((400, "`BAD_ID`: not a uuid4"), (404, "`NOT_FOUND`: no such model (or another tenant's)"),
             (503, "`STORE_UNAVAILABLE`: the job store cannot be read right now"))
MODEL_ERRORS = ID_ERRORS + ((409, "`NOT_READY` while the model builds (details: state, progress); "
                                  "`BUILD_FAILED` if it failed (details: the job's error)"),
                            (410, "`GONE`: the model's files are missing"))
LABEL = {"name": "label", "in": "path", "required": True, "description": "a person's label (as in the upload)",
         "schema": {"type": "string"}}
PUBLIC: list = []  # `security` of the routes that need no API key
AUTH_ERRORS = ((401, "`UNAUTHORIZED`: no key, or an unknown or revoked one"),
               (403, "`FORBIDDEN`: the key's role may not do this, or another site's page sent it"),
               (429, "`RATE_LIMITED`; `TOO_MANY_FAILURES` after too many failed key checks for this key id or from "
                     "this address (both with Retry-After)"))


def schemas() -> dict:
    """The components' schemas, in the order the reference shows them."""
    return {**_basic_schemas(), **_job_schemas(), **_use_schemas(), **_report_schemas(), **_video_schemas(),
            **_camera_schemas()}


REASON = {"enum": ["too_small", "too_blurred"],
          "description": "why a face found was not judged: smaller than FR_RECOGNISE_MIN_FACE_PX or softer than "
                         "FR_RECOGNISE_MIN_SHARPNESS (answered `unknown`, and never `same`, whatever its distance)"}


def _face_quality() -> dict:
    return obj(face_px=integer("the face's width in pixels"),
                       sharpness=num("variance of the Laplacian of the aligned chip"),
                       yaw=nullable(num("nose offset from the eyes' middle, in eye distances")),
                       roll=nullable(num("tilt of the eye line, degrees")),
                       problems={"type": "array", "items": {"enum": ["small", "blurred", "turned"]}})


def _search_progress() -> dict:
    return obj(
        generation=integer(), generations=integer(), evaluations=integer("networks trained so far"),
        phase={"enum": ["evolving", "confirming"]}, finalists=integer(), fold_evaluations=integer(),
        fold_evaluations_planned=integer(), cache_hits=integer(), seconds=num(), budget_s=num(),
        best=obj(balanced_accuracy=num(), open_set=nullable(num()), smallest_params=integer()),
        done={"type": "boolean"}, stop_reason=nullable(text()))


def _job_error() -> dict:
    return obj(["code", "message"], code=text(), message=text(), details={"type": "object"})


def _basic_schemas() -> dict:
    key_info: dict[str, Any] = dict(id=text("the key's public id (12 hex characters)"), tenant=text(),
                    role={"type": "string", "enum": ["admin", "builder", "user"]}, name=nullable(text()),
                    created=num("unix time"), revoked=nullable(num("unix time")))
    return {
        "NewKey": obj(["status", "key", "id"], status={"const": 0}, key=text("fr_<id>_<secret>: keep it"),
                      **key_info),
        "KeyList": obj(["status", "keys"], status={"const": 0}, keys={"type": "array", "items": obj(**key_info)}),
        "Ok": obj(["status"], status={"const": 0}),
        "Error": obj(["status", "error"], status={"const": 1},
                     error=obj(["code", "message"], code=text("machine-readable, e.g. `NOT_AN_IMAGE`"),
                               message=text("for people"),
                               details={"type": "object", "description": "e.g. `files`: every bad file and why"})),
    }


def _job_schemas() -> dict:
    search_progress, job_error = _search_progress(), _job_error()
    job = obj(["id", "state", "available", "progress"],
              id=text(format="uuid"), name=nullable(text()),
              state={"enum": [s.value for s in JobState],
                     "description": "queued → extracting (→ optimizing) → training → done, or failed; a "
                                    "video: queued → processing → done, or failed"},
              available={"enum": [0, 1]},
              progress=obj(stage=text("what the job is doing, e.g. `generation 2 of 6`"), done=integer(),
                           total=integer()),
              search=nullable(search_progress), error=nullable(job_error),
              created=num("unix time"), updated=num("unix time"), attempts=integer(), worker=nullable(text()),
              photos=integer(), people=integer(),
              parent=nullable(text("the model it was derived from (adding or removing people)", format="uuid")),
              callback=obj(url=text(), state=text("waiting for the job to end, pending, delivered or failed"),
                           webhook_id=text(), attempts=integer(), last_status=nullable(integer()),
                           last_error=nullable(text()), next_attempt=nullable(num("unix time"))))
    callback = obj(url=text(), secret=text("whsec_...: signs each delivery (Standard Webhooks); shown once"))
    return {
        "Job": {"allOf": [ref("Ok"), job]},
        "BuildAccepted": {"allOf": [ref("Ok"), obj(
            ["id", "photos", "people"], id=text(format="uuid"), photos=integer(), people=integer(),
            ignored={"type": "array", "items": {"type": "string"},
                     "description": "files of a zip that are not photos (`README.txt`)"},
            callback=callback)]},
        "DeriveAccepted": {"allOf": [ref("Ok"), obj(
            ["id", "parent", "photos", "people"], id=text("the new model's id", format="uuid"),
            parent=text(format="uuid"), photos=integer("photos of the new model, inherited and new"),
            people=integer(), added=obj(photos=integer(), people=integer()), removed=obj(people=integer()),
            duplicates={"type": "array", "items": text(), "description": "photos sent that the model already "
                                                                        "holds for that person (left out)"},
            ignored={"type": "array", "items": text()}, callback=callback)]},
        "Erased": {"allOf": [ref("Ok"), obj(
            ["label", "models", "removed"], label=text(),
            models={"type": "array", "items": obj(
                id=text("a model that held the person (it is deleted)", format="uuid"), state=text(),
                new_id=nullable(text("the model rebuilt without them", format="uuid")),
                action={"enum": ["rebuilt", "deleted"]}, reason=text())},
            removed=obj(models=integer(), photos=integer(), cached_features=integer()))]},
    }


def _use_schemas() -> dict:
    face_quality = _face_quality()
    return {
        "Verification": {"allOf": [ref("Ok"), obj(
            id=text(format="uuid"), mode={"enum": ["pair", "label"]}, label=text(),
            same={"type": "boolean"}, distance=num(), threshold=num("calibrated at build time (manifest "
                                                                     "`verification`)"),
            far=num("the false-accept rate per comparison that threshold was set for"),
            reason=nullable(REASON),
            face=nullable(obj(box={"type": "array", "items": {"type": "integer"}}, quality=face_quality,
                              faces_found=integer(), reason=nullable(REASON))),
            face2=nullable({"type": "object"}), embedding={"type": "array", "items": num()},
            embedding2={"type": "array", "items": num()},
            count=integer("a batch: how many results"),
            results={"type": "array", "items": {"type": "object"},
                     "description": "a batch: one entry per item, in order (`index`, `status`, and the fields "
                                    "above or its own `error`)"})]},
        "ModelList": {"allOf": [ref("Ok"), obj(
            ["models", "total"], models={"type": "array", "items": obj(
                id=text(format="uuid"), name=nullable(text()), state=text(), available={"enum": [0, 1]},
                created=num(), updated=num(), photos=integer(), people=integer(),
                keep_unknown={"type": "boolean", "description": "the model keeps the faces it cannot name"},
                unknown_waiting=integer("unknown faces kept and not named yet"))},
            total=integer(), limit=integer(), offset=integer())]},
        "Face": obj(["box", "label", "known"],
                    box={"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4,
                         "description": "[left, top, right, bottom] in the photo's pixels (after EXIF rotation)"},
                    label=text("the person, or `unknown`"), known={"type": "boolean"},
                    confidence=num("the classifier's probability for `candidate`"),
                    distance=num("the open-set score: distance to the candidate's template"),
                    threshold=num("the candidate's own threshold (known when distance <= threshold)"),
                    candidate=text("the nearest person, known or not"), quality=face_quality,
                    reason=nullable(REASON),
                    unknown_id=text("with keep_unknown: the id of this unknown face, kept"),
                    cluster=text("with keep_unknown: the group of unknown faces it joined")),
        "Prediction": {"allOf": [ref("Ok"), obj(
            ["count"], id=text(format="uuid"), count=integer("faces found, or results of a batch"), threshold=num(),
            faces={"type": "array", "items": ref("Face"),
                   "description": "with return_embeddings=1 each face has its `embedding` (128 numbers)"},
            faces_found=integer("more faces than FR_MAX_FACES_PER_PREDICT: how many there were"),
            unknown_kept=integer("with keep_unknown: how many unknown faces were kept"),
            unknown_error={**obj(["code", "message"], code=text(), message=text()),
                           "description": "with keep_unknown: why no face was kept (`QUOTA_EXCEEDED`, ...); the "
                                          "prediction stands"},
            message=text(),
            results={"type": "array", "items": {"type": "object"},
                     "description": "a batch: one entry per image or embedding, in order (`index`, `status`, "
                                    "`count`, `faces`, or its own `error`)"})]},
    }


def _report_schemas() -> dict:
    search_progress, job_error = _search_progress(), _job_error()
    candidate = obj(generation=nullable(integer("the generation whose batch first asked for it")),
                    genome={"type": "array", "items": {"type": "integer"}},
                    hidden={"type": "array", "items": {"type": "integer"}}, activation=nullable(text()),
                    cosine={"type": "boolean"}, params=integer(), balanced_accuracy=num(),
                    open_set=nullable(num()), score=num("mean of balanced_accuracy and open_set"))
    return {
        "Report": {"allOf": [ref("Job"), obj(
            metrics=nullable({"type": "object", "description": "held-out figures of the model trained without "
                                                               "the test photos; `confusions`"}),
            open_set={"type": "object", "description": "the rejection rule: thresholds, target_far, "
                                                       "operating_points (FAR/DIR trade-off)"},
            manifest={"type": "object", "description": "the bundle's whole manifest.json"})]},
        "Summary": {"allOf": [ref("Ok"), obj(
            id=text(format="uuid"), name=nullable(text()), state=text(), created=num(), photos=integer(),
            people=integer(), people_in_model=integer(), people_excluded={"type": "array", "items": text()},
            photos_used=integer(), photos_skipped=integer(),
            metrics=nullable(obj(test_accuracy=nullable(num()), balanced_accuracy=nullable(num()),
                                 test_photos=integer(), one_photo_people=integer(),
                                 one_photo_people_accepted_as_someone_else=integer())),
            open_set=obj(target_far=num(), threshold_range={"type": "array", "items": num()},
                         test_dir=nullable(num())),
            network=obj(hidden={"type": "array", "items": {"type": "integer"}}, params=integer()),
            optimized={"type": "boolean"}, format_version=integer())]},
        "PeoplePage": {"allOf": [ref("Ok"), obj(
            id=text(format="uuid"),
            people={"type": "array", "items": {"type": "object", "description": "as the manifest's `people`: "
                                               "label, photos, used, skipped, quality, in_model, measured figures"}},
            total=integer("people whose label contains `q` (all of them without it)"),
            people_total=integer("everyone in the model"), limit=integer(), offset=integer(), q=text())]},
        "Search": {"allOf": [ref("Ok"), obj(
            ["requested", "candidates"], id=text(format="uuid"), state=text(),
            requested={"type": "boolean", "description": "the build asked for a search (optimize=1)"},
            source=nullable({"enum": ["checkpoint", "manifest"]}), progress=nullable(search_progress),
            candidates={"type": "array", "items": candidate},
            logbook={"type": "array", "items": {"type": "object"}},
            pareto_front={"type": "array", "items": {"type": "object"}},
            finalists={"type": "array", "items": {"type": "object"}},
            chosen=nullable({"type": "object"}),
            baselines=nullable({"type": "object", "description": "1-NN, nearest centroid, logistic regression "
                                                                 "beside the pick (built models)"}),
            fallback=nullable(text()), stop_reason=nullable(text()))]},
        "Deleted": {"allOf": [ref("Ok"), obj(id=text(format="uuid"), removed=obj(
            job={"type": "boolean"}, model={"type": "boolean"}, uploads={"type": "boolean"},
            cached_features=integer()))]},
        "Alive": obj(["status", "alive"], status={"enum": [0, 1]}, alive={"type": "boolean"},
                     workers=integer(), busy=integer(), warming=integer(), queued=nullable(integer()),
                     disk_free_bytes=integer(), version=text(), error=job_error),
    }


def build_form() -> dict:
    return {"multipart/form-data": {"schema": obj(
        images={"type": "array", "items": {"type": "string", "format": "binary"},
                "description": "one part per photo; the folder in its filename names the person "
                               "(`filename=alice/1.jpg`)"},
        archive={"type": "string", "format": "binary",
                 "description": "a zip with one folder per person (`team/alice/1.jpg` is alice)"},
        name=text("a name for people"), seed=integer("fixes the split, the training and the search",
                                                     minimum=0, maximum=2**31 - 1),
        optimize={"enum": ["0", "1", "true", "false", "yes", "no", "on", "off"],
                  "description": "evolve the network (NSGA-II over the workers)"},
        population=integer("with optimize=1: 4-256, default 32, rounded up to a multiple of 4"),
        generations=integer("with optimize=1: 1-100, default 6"),
        time_budget=num("with optimize=1: seconds, 1-86400, default 300"),
        callback_url=text("POSTed the job's status when it ends, signed (Standard Webhooks); its host must be "
                          "in FR_WEBHOOK_ALLOW"),
        keep_unknown={"enum": ["0", "1", "true", "false", "yes", "no", "on", "off"],
                      "description": "the model keeps the faces it cannot name (GET /models/{id}/unknown)"})}}


def photo_json() -> dict:
    """The JSON body of predict and verify: one photo or embedding, or a batch."""
    b64 = text("a photo in base64, or a data: URI (`data:image/jpeg;base64,...`)")
    embedding = {"type": "array", "items": num(), "minItems": 128, "maxItems": 128,
                 "description": "a dlib face embedding computed by the client"}
    return {"image": b64, "images": {"type": "array", "items": b64, "description": "a batch (up to FR_MAX_BATCH)"},
            "embedding": embedding, "embeddings": {"type": "array", "items": embedding},
            "return_embeddings": {"type": "boolean", "description": "add each face's embedding to the answer"}}


def operations() -> dict:
    """Every path of the API, in the order the reference shows them."""
    return {**_page_paths(), **_metrics_path(), **_build_paths(), **_view_paths(),
            **_use_paths(), **_video_paths(), **_after_build_paths(), **_unknown_paths(), **_camera_paths(),
            **_key_paths(), **_health_path()}


def _page_paths() -> dict:
    """The console, this reference and their files."""
    page = {"200": {"description": "an HTML page", "content": {"text/html": {"schema": text()}}}}
    return {
        "/": {"get": {"tags": ["pages"], "summary": "The web console", "security": PUBLIC, "responses": page,
                      "description": "Models, new model, a model's report and search, try it. The page is "
                                     "public; its data comes from the API with the key typed once."}},
        "/docs": {"get": {"tags": ["pages"], "summary": "This reference, readable", "security": PUBLIC,
                          "responses": page}},
        "/static/{filename}": {"get": {
            "tags": ["pages"], "summary": "The pages' scripts and styles", "security": PUBLIC,
            "parameters": [{"name": "filename", "in": "path", "required": True, "schema": text()}],
            "responses": {"200": {"description": "the file"}, **errors((404, "`NOT_FOUND`"))}}},
        "/openapi.json": {"get": {"tags": ["pages"], "summary": "This document (OpenAPI 3.1)", "security": PUBLIC,
                                  "responses": {"200": answer("the document", {"type": "object"})}}},
    }


def _metrics_path() -> dict:
    return {
        "/metrics": {"get": {
            "tags": ["operations"], "summary": "Prometheus metrics",
            "description": "Requests by route and status with latency histograms, builds by state, queue, "
                           "workers connected and busy, task durations by kind, cache hits, faces predicted "
                           "(prometheus_client, summed over the web processes and the broker). With API "
                           "keys: admin keys only.",
            "responses": {"200": {"description": "Prometheus text format",
                                  "content": {"text/plain": {"schema": text()}}},
                          **errors((401, "`UNAUTHORIZED`"), (403, "`FORBIDDEN`: not an admin key"))}}},
    }


def _build_paths() -> dict:
    """Building a model and following it."""
    return {
        "/build_recognizer": {"post": {
            "tags": ["models"], "summary": "Build a model from labelled photos",
            "description": "Photos as `images` parts or one `archive` zip (one folder per person). Answered "
                           "once the upload is checked and stored; the work happens in the workers: poll "
                           "`/is_available/{job_id}`.",
            "requestBody": {"required": True, "content": build_form()},
            "responses": {"202": answer("accepted", ref("BuildAccepted"),
                                        {"status": 0, "id": "0d5c0a3e-5a4b-4c1e-9d7e-2f0a7c1b9e11", "photos": 6,
                                         "people": 2}),
                          **errors((400, "`NO_FILES`, `MISSING_LABEL`, `BAD_LABEL`, `BAD_FILENAME`, `NOT_AN_IMAGE`, "
                                         "`UNSUPPORTED_FORMAT`, `CORRUPT_IMAGE`, `IMAGE_TOO_LARGE`, "
                                         "`UNSAFE_ARCHIVE`, `BAD_ARCHIVE`, `TOO_FEW_PEOPLE`, `BAD_PARAMETER` "
                                         "(every bad file listed in `details.files`)"),
                                   (408, "`REQUEST_TIMEOUT`: the body arrived too slowly"),
                                   (413, "`REQUEST_TOO_LARGE`, `PHOTO_TOO_LARGE`, `ZIP_BOMB`, `TOO_MANY_FILES`"),
                                   (503, "`BROKER_UNAVAILABLE`, `STORE_UNAVAILABLE`, `DEADLINE_PASSED`"),
                                   (507, "`INSUFFICIENT_STORAGE`: nothing was stored"))}}},
        "/is_available": {"get": {
            "tags": ["models"], "summary": "A build's state and progress (id as a query parameter)",
            "parameters": [{"name": "id", "in": "query", "required": True, "schema": text(format="uuid")}],
            "responses": {"200": answer("the job", ref("Job")), **errors(*ID_ERRORS)}}},
        "/is_available/{job_id}": {"get": {
            "tags": ["models"], "summary": "A build's state and progress",
            "description": "`state` walks queued → extracting (→ optimizing) → training → done, or ends failed "
                           "with `error`. While a search runs, `search` holds its progress.",
            "parameters": [JOB_ID], "responses": {"200": answer("the job", ref("Job")), **errors(*ID_ERRORS)}}},
        "/models": {"get": {
            "tags": ["models"], "summary": "Models, newest first",
            "parameters": [{"name": "limit", "in": "query", "schema": integer(minimum=1, maximum=1000, default=100)},
                           {"name": "offset", "in": "query", "schema": integer(minimum=0, default=0)}],
            "responses": {"200": answer("a page of models", ref("ModelList")),
                          **errors((400, "`BAD_PARAMETER`"), (503, "`STORE_UNAVAILABLE`"))}}},
        "/models/{job_id}": {
            "get": {"tags": ["models"], "summary": "Download the model bundle (zip)", "parameters": [JOB_ID],
                    "responses": {"200": {"description": "the bundle: model.keras, labels.json, gallery.npz, "
                                                         "manifest.json, MODEL_CARD.md",
                                          "content": {"application/zip": {"schema": text(format="binary")}}},
                                  **errors(*MODEL_ERRORS)}},
            "delete": {"tags": ["models"], "summary": "Erase a model, its uploads and cached features",
                       "parameters": [JOB_ID],
                       "responses": {"200": answer("what was removed", ref("Deleted")),
                                     **errors(*ID_ERRORS, (503, "`BROKER_UNAVAILABLE`"))}}},
    }


def _view_paths() -> dict:
    """What a model measured, and its search."""
    return {
        "/models/{job_id}/report": {"get": {
            "tags": ["models"], "summary": "Status, held-out figures, open set and the whole manifest",
            "parameters": [JOB_ID], "responses": {"200": answer("the report", ref("Report")),
                                                  **errors(*MODEL_ERRORS)}}},
        "/models/{job_id}/summary": {"get": {
            "tags": ["models"], "summary": "A built model's headline figures (a few hundred bytes)",
            "parameters": [JOB_ID], "responses": {"200": answer("the summary", ref("Summary")),
                                                  **errors(*MODEL_ERRORS)}}},
        "/models/{job_id}/search": {"get": {
            "tags": ["models"], "summary": "The genetic search: every candidate, logbook, Pareto front, pick",
            "description": "Live while the search runs (from its checkpoint), from the manifest once built. "
                           "`requested` is false for a build without optimize=1.",
            "parameters": [JOB_ID], "responses": {"200": answer("the search", ref("Search")),
                                                  **errors(*MODEL_ERRORS)}}},
    }


def _use_paths() -> dict:
    """Naming faces with a model; verifying one against another."""
    return {
        "/models/{job_id}/predict": {"post": {
            "tags": ["use"], "summary": "Name every face in a photo",
            "parameters": [JOB_ID],
            "description": "A photo as a multipart `image` part (several: `images` parts), or a JSON body: "
                           "base64 or data: URIs, a batch, or dlib embeddings the client computed. A batch is "
                           "answered item by item, in order, each with its own error when it was bad.",
            "requestBody": {"required": True, "content": {
                "multipart/form-data": {"schema": obj(
                    image=text(format="binary"), images={"type": "array", "items": text(format="binary")},
                    threshold=num("one distance threshold for everybody instead of each person's own, (0, 4]"),
                    return_embeddings={"enum": ["0", "1", "true", "false"]},
                    keep_unknown={"enum": ["0", "1", "true", "false"],
                                  "description": "keep this request's unknown faces (default: the model's "
                                                 "keep_unknown)"})},
                JSON: {"schema": obj(**photo_json(), threshold=num("(0, 4]"), keep_unknown={"type": "boolean"})}}},
            "responses": {"200": answer("the faces, largest first (none: count 0 and a message)",
                                        ref("Prediction")),
                          **errors(*MODEL_ERRORS, (400, "`BAD_ID`, `NO_FILES`, `BAD_PARAMETER`, `NOT_AN_IMAGE`, "
                                                        "`UNSUPPORTED_FORMAT`, `CORRUPT_IMAGE`, `IMAGE_TOO_LARGE`, "
                                                        "`BAD_JSON`, `BAD_BASE64`, `BAD_DATA_URI`, `BAD_EMBEDDING`, "
                                                        "`EMPTY_BATCH`"),
                                   (413, "`PHOTO_TOO_LARGE`, `REQUEST_TOO_LARGE`, `BATCH_TOO_LARGE`"))}}},
        "/models/{job_id}/verify": {"post": {
            "tags": ["use"], "summary": "1:1: is this the same person as another photo, or as a person of the model?",
            "description": "`image` (or `images`, `embedding`, `embeddings`) against `image2` (or `embedding2`) "
                           "or against `label`. Each photo's largest face is compared; the threshold was "
                           "calibrated at build time for the false-accept rate in `far`.",
            "parameters": [JOB_ID],
            "requestBody": {"required": True, "content": {
                "multipart/form-data": {"schema": obj(
                    ["image"], image=text(format="binary"), images={"type": "array", "items": text(format="binary")},
                    image2=text(format="binary"), label=text("a person of the model"),
                    return_embeddings={"enum": ["0", "1", "true", "false"]})},
                JSON: {"schema": obj(**photo_json(), image2=text("base64 or a data: URI"),
                                     embedding2={"type": "array", "items": num()}, label=text())}}},
            "responses": {"200": answer("same or not, with the distance and the threshold", ref("Verification")),
                          **errors(*MODEL_ERRORS, (400, "`NO_FILES`, `NO_REFERENCE`, `NO_FACE`, `BAD_LABEL`, "
                                                        "`BAD_JSON`, `BAD_BASE64`, `BAD_DATA_URI`, `BAD_EMBEDDING`, "
                                                        "`EMPTY_BATCH`, `BAD_PARAMETER`, `NOT_AN_IMAGE`"),
                                   (413, "`PHOTO_TOO_LARGE`, `REQUEST_TOO_LARGE`, `BATCH_TOO_LARGE`"))}}},
    }


def _video_schemas() -> dict:
    box = {"type": "array", "items": integer(), "minItems": 4, "maxItems": 4,
           "description": "left, top, right, bottom in the video's pixels"}
    track = obj(["id", "label", "known", "confidence", "first", "last", "frames", "best", "thumbnail"],
                id=integer("1, 2, ... in order of first appearance"),
                label=text("the person, or `unknown`: named from the track's frames together (the quality-"
                           "weighted mean of their embeddings judged by the model); faces too small or blurred "
                           "to be named never name a track"),
                known={"type": "boolean"}, confidence=num("the model's confidence in that name"),
                first=num("second of the first frame the face was seen in"),
                last=num("second of the last frame the face was seen in"),
                frames=integer("sampled frames the face was seen in"),
                best=obj(t=num("second"), frame=integer("frame index in the video"), box=box,
                         quality=num("face width in pixels, discounted for blur and a turned head")),
                per_frame={"type": "object", "additionalProperties": integer(),
                           "description": "how each frame alone named the face (frames per label)"},
                unjudged=integer("frames whose face was too small or blurred to be named"),
                thumbnail=text("URL of the best frame's face (JPEG)"))
    result = obj(video=obj(width=integer(), height=integer(), fps=num(), frames=integer(), seconds=num()),
                 sampling=obj(fps=num(), frames=integer("frames sampled"), decoded=integer("frames decoded"),
                              seconds=num("the time of the last frame decoded")),
                 truncated={"type": "boolean", "description": "the file ended before its header said (cut "
                                                              "short): the tracks cover what could be read"},
                 naming=text(), model=text(format="uuid"), tracks={"type": "array", "items": track})
    return {
        "VideoAccepted": {"allOf": [ref("Ok"), obj(
            ["id", "model", "fps"], id=text("the video job's id", format="uuid"), model=text(format="uuid"),
            fps=num(), bytes=integer(), poll=text("where to follow it: `/videos/{id}`"),
            callback=obj(url=text(), secret=text("whsec_...: signs the delivery; shown once")))]},
        "Video": {"allOf": [ref("Job"), obj(
            kind={"enum": ["video"]}, model=text(format="uuid"), fps=num(), bytes=integer(),
            result=nullable(result))]},
        "VideoList": {"allOf": [ref("Ok"), obj(videos={"type": "array", "items": ref("Job")}, total=integer(),
                                               limit=integer(), offset=integer())]},
    }


def _video_paths() -> dict:
    """Recorded videos through a model."""
    video_id = {**JOB_ID, "description": "the video job's id (a uuid4)"}
    video_errors = ((400, "`BAD_ID`: not a uuid4"), (404, "`NOT_FOUND`: no such video (or another tenant's)"),
                    (503, "`STORE_UNAVAILABLE`"))
    return {
        "/models/{job_id}/video": {"post": {
            "tags": ["use"], "summary": "Who is seen in a recorded video, and when",
            "description": "A video (mp4, mov, mkv, webm, avi: what OpenCV's FFmpeg decodes) as the multipart part "
                           "`video`. Answered 202 once it is stored; a worker samples its frames at `fps`, follows "
                           "each face across frames (box overlap and embedding distance) and names each track "
                           "from its frames together. Poll `/videos/{id}` (or `/is_available/{id}`); "
                           "`callback_url` is called as for builds (`video.done` / `video.failed`). A video that "
                           "cannot be decoded, or that lasts longer than FR_MAX_VIDEO_SECONDS, ends `failed` with "
                           "`NOT_A_VIDEO` or `VIDEO_TOO_LONG`.",
            "parameters": [JOB_ID],
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": obj(
                ["video"], video=text(format="binary"),
                fps=num("frames sampled per second of video, (0.1, FR_MAX_VIDEO_FPS]; default 5"),
                callback_url=text("called when the video is processed or failed"))}}},
            "responses": {"202": answer("accepted", ref("VideoAccepted")),
                          **errors(*MODEL_ERRORS, (400, "`MISSING_VIDEO`, `EMPTY_FILE`, `NOT_A_VIDEO` (a photo, an "
                                                        "audio file, anything that is no video container), "
                                                        "`BAD_FILENAME`, `BAD_PARAMETER`, `CALLBACK_REFUSED`"),
                                   (413, "`VIDEO_TOO_LARGE`: over FR_MAX_VIDEO_BYTES"),
                                   (429, "`TOO_MANY_BUILDS`: the tenant's running jobs"),
                                   (507, "`INSUFFICIENT_STORAGE`, `QUOTA_EXCEEDED`"))}}},
        "/videos": {"get": {
            "tags": ["use"], "summary": "Videos, newest first",
            "parameters": [{"name": "limit", "in": "query", "schema": integer(minimum=1, maximum=1000, default=100)},
                           {"name": "offset", "in": "query", "schema": integer(minimum=0, default=0)}],
            "responses": {"200": answer("a page of videos", ref("VideoList")),
                          **errors((400, "`BAD_PARAMETER`"), (503, "`STORE_UNAVAILABLE`"))}}},
        "/videos/{job_id}": {
            "get": {"tags": ["use"], "summary": "A video's state and progress, then its tracks",
                    "description": "`state` walks queued → processing → done, or ends failed with `error`; "
                                   "`progress` counts the frames sampled. Once done, `result` holds the tracks.",
                    "parameters": [video_id], "responses": {"200": answer("the video", ref("Video")),
                                                            **errors(*video_errors)}},
            "delete": {"tags": ["use"], "summary": "Erase a video: its upload, tracks and thumbnails",
                       "parameters": [video_id],
                       "responses": {"200": answer("what was removed", ref("Deleted")),
                                     **errors(*video_errors)}}},
        "/videos/{job_id}/tracks/{track}.jpg": {"get": {
            "tags": ["use"], "summary": "A track's thumbnail: the face of its best frame",
            "parameters": [video_id, {"name": "track", "in": "path", "required": True, "schema": integer()}],
            "responses": {"200": {"description": "a JPEG",
                                  "content": {"image/jpeg": {"schema": text(format="binary")}}},
                          **errors(*video_errors, (409, "`NOT_READY`: not processed yet"))}}},
    }


def _after_build_paths() -> dict:
    """A model's card, its derivations, erasing a person."""
    return {
        "/models/{job_id}/card": {"get": {
            "tags": ["models"], "summary": "The model card (Markdown): people, figures, thresholds, limits, licences",
            "parameters": [JOB_ID],
            "responses": {"200": {"description": "MODEL_CARD.md of the bundle",
                                  "content": {"text/markdown": {"schema": text()}}}, **errors(*MODEL_ERRORS)}}},
        "/models/{job_id}/people": {"get": {
            "tags": ["models"], "summary": "The model's people, a page at a time",
            "description": "In the manifest's order; `q` keeps the labels that contain it (case-insensitive). "
                           "What the console's people table reads: a model of thousands of people need not "
                           "send its whole manifest (`/report`) to list them.",
            "parameters": [JOB_ID,
                           {"name": "limit", "in": "query", "schema": integer(minimum=1, maximum=500, default=100)},
                           {"name": "offset", "in": "query", "schema": integer(minimum=0, default=0)},
                           {"name": "q", "in": "query", "schema": text(maxLength=200)}],
            "responses": {"200": answer("a page of people", ref("PeoplePage")),
                          **errors(*MODEL_ERRORS, (400, "`BAD_PARAMETER`: limit, offset or q out of range"))}},
            "post": {
            "tags": ["models"], "summary": "Derive a new model: this one's people plus the photos sent",
            "description": "New people, or more photos of known ones, with the form of a build. The model "
                           "itself never changes: the answer names a new model (`parent`: this one), built "
                           "from this one's kept embeddings and the new photos only. Poll the new id.",
            "parameters": [JOB_ID], "requestBody": {"required": True, "content": build_form()},
            "responses": {"202": answer("accepted", ref("DeriveAccepted")),
                          **errors(*MODEL_ERRORS, (400, "as a build, and `NO_NEW_PHOTOS`, `TOO_FEW_PEOPLE`"),
                                   (413, "as a build, and `TOO_MANY_FILES` for the whole new model"),
                                   (429, "`TOO_MANY_BUILDS`"), (507, "`INSUFFICIENT_STORAGE`, `QUOTA_EXCEEDED`"))}}},
        "/models/{job_id}/people/{label}": {"delete": {
            "tags": ["models"], "summary": "Derive a new model without one person",
            "description": "This model stays as it is; erase the person everywhere with DELETE /people/{label}.",
            "parameters": [JOB_ID, LABEL] + [{"name": n, "in": "query", "schema": text()}
                                              for n in ("name", "seed", "callback_url")],
            "responses": {"202": answer("accepted", ref("DeriveAccepted")),
                          **errors(*MODEL_ERRORS, (400, "`BAD_LABEL`, `TOO_FEW_PEOPLE`"),
                                   (404, "`NOT_FOUND`, `UNKNOWN_PERSON`: not a person of the model"),
                                   (429, "`TOO_MANY_BUILDS`"))}}},
        "/people/{label}": {"delete": {
            "tags": ["models"], "summary": "Erase a person from every model of the key's tenant",
            "description": "Each model that held them is rebuilt without them under a new id (or deleted when "
                           "fewer than 2 people would be left), then deleted with its uploads, features, "
                           "cached embeddings and callback messages. Admins erase in their own tenant, in "
                           "another with `tenant=NAME`, in every tenant with `tenant=*`.",
            "parameters": [LABEL, {"name": "tenant", "in": "query", "schema": text(), "description": "admins only"}],
            "responses": {"200": answer("the models touched and their new ids", ref("Erased")),
                          **errors((400, "`BAD_LABEL`, `BAD_PARAMETER`"), *AUTH_ERRORS,
                                   (503, "`BROKER_UNAVAILABLE`, `STORE_UNAVAILABLE`"))}}},
    }


CLUSTER = {"name": "cluster", "in": "path", "required": True, "description": "a group's id (16 hex digits)",
           "schema": {"type": "string"}}
FACE = {"name": "face", "in": "path", "required": True, "description": "a kept face's unknown_id (16 hex digits)",
        "schema": {"type": "string"}}
GROUP_ERRORS = ((404, "`NOT_FOUND`: no such model (or another tenant's), group or face"),
                (409, "`NOT_READY`; `GROUP_MERGED` (the message names the group it is part of now); `GROUP_NAMED`; "
                      "`CONFLICT`: the group is being named"), *AUTH_ERRORS,
                (503, "`BROKER_UNAVAILABLE`, `STORE_UNAVAILABLE`"))


def _unknown_paths() -> dict:
    """Unknown faces a model keeps (keep_unknown), their groups, and what a person does with them."""
    cluster = obj(["id", "size", "faces", "first_seen", "last_seen"], id=text(), size=integer(),
                  faces={"type": "array", "items": text(), "description": "unknown_ids, oldest first"},
                  first_seen=num("unix time"), last_seen=num("unix time"))
    return {
        "/models/{job_id}/unknown": {"get": {
            "tags": ["unknown"], "summary": "The model's kept unknown faces, in groups (largest first)",
            "description": "Faces a model answered unknown with keep_unknown, grouped as they arrive: a face joins "
                           "the group it is closest to within the group's threshold (the model's stranger model), "
                           "else starts one. A group's id stays as it grows. Faces go after "
                           "FR_UNKNOWN_RETENTION_DAYS.",
            "parameters": [JOB_ID],
            "responses": {"200": answer("the groups", {"allOf": [ref("Ok"), obj(
                ["clusters"], id=text(format="uuid"), clusters={"type": "array", "items": cluster},
                faces=integer("faces waiting"),
                naming=nullable(obj(cluster=text(), model=text(), label=text())))]}),
                **errors(*GROUP_ERRORS)}}},
        "/models/{job_id}/unknown/{cluster}/faces/{face}": {"get": {
            "tags": ["unknown"], "summary": "A kept face's aligned chip",
            "parameters": [JOB_ID, CLUSTER, FACE],
            "responses": {"200": {"description": "the chip (150x150)",
                                  "content": {"image/jpeg": {"schema": text(format="binary")}}},
                          **errors(*GROUP_ERRORS)}}},
        **_naming_paths(),
    }


def _naming_paths() -> dict:
    """Acting on kept unknown faces: naming a group, correcting, merging, moving, discarding."""
    return {
        "/models/{job_id}/unknown/{cluster}/name": {"post": {
            "tags": ["unknown"], "summary": "Name a group: a new model that knows them",
            "description": "Derives a new model from this one plus the group's faces as photos of `label` (a new "
                           "person or one the model knows); their embeddings are used as kept, nothing is "
                           "extracted again. Once it is built, this model's other waiting groups move to it. One "
                           "naming per model at a time.",
            "parameters": [JOB_ID, CLUSTER],
            "requestBody": {"required": True, "content": {JSON: {"schema": obj(
                ["label"], label=text("the person"), name=text("the new model's name"))}}},
            "responses": {"202": answer("accepted", ref("DeriveAccepted")),
                          **errors((400, "`BAD_LABEL`, `BAD_JSON`, `BAD_PARAMETER`, `TOO_FEW_PEOPLE`"),
                                   *GROUP_ERRORS, (429, "`TOO_MANY_BUILDS`"), (507, "`QUOTA_EXCEEDED`"))}}},
        "/models/{job_id}/corrections": {"post": {
            "tags": ["unknown"], "summary": "Give kept faces to a person: a new model",
            "description": "A face the model missed (kept with keep_unknown, from any group) given to the right "
                           "person: a new model derived from this one plus those faces, as naming a group "
                           "derives. Faces the model named are not kept, so they cannot be corrected here.",
            "parameters": [JOB_ID],
            "requestBody": {"required": True, "content": {JSON: {"schema": obj(
                ["label", "faces"], label=text("the person"),
                faces={"type": "array", "items": text(), "minItems": 1, "description": "unknown_ids"},
                name=text("the new model's name"))}}},
            "responses": {"202": answer("accepted", ref("DeriveAccepted")),
                          **errors((400, "`BAD_LABEL`, `BAD_JSON`, `BAD_PARAMETER`, `TOO_FEW_PEOPLE`"),
                                   *GROUP_ERRORS, (429, "`TOO_MANY_BUILDS`"), (507, "`QUOTA_EXCEEDED`"))}}},
        "/models/{job_id}/unknown/merge": {"post": {
            "tags": ["unknown"], "summary": "Merge groups (the largest keeps its id)",
            "parameters": [JOB_ID],
            "requestBody": {"required": True, "content": {JSON: {"schema": obj(
                ["clusters"], clusters={"type": "array", "items": text(), "minItems": 2})}}},
            "responses": {"200": answer("the group they are now", {"allOf": [ref("Ok"), obj(
                cluster=text(), size=integer(), merged={"type": "array", "items": text()})]}),
                **errors((400, "`BAD_PARAMETER`, `BAD_JSON`"), *GROUP_ERRORS)}}},
        "/models/{job_id}/unknown/{cluster}/faces/{face}/move": {"post": {
            "tags": ["unknown"], "summary": "Move one face out of its group",
            "parameters": [JOB_ID, CLUSTER, FACE],
            "requestBody": {"content": {JSON: {"schema": obj(
                to=nullable(text("a waiting group; none or null: a group of its own")))}}},
            "responses": {"200": answer("where it is now", {"allOf": [ref("Ok"), {"type": "object", "properties": {
                "unknown_id": text(), "cluster": text(), "from": text("the group it left")}}]}),
                **errors((400, "`BAD_PARAMETER`, `BAD_JSON`"), *GROUP_ERRORS)}}},
        "/models/{job_id}/unknown/{cluster}": {"delete": {
            "tags": ["unknown"], "summary": "Discard a group: its chips and embeddings are deleted",
            "parameters": [JOB_ID, CLUSTER],
            "responses": {"200": answer("discarded", {"allOf": [ref("Ok"), obj(cluster=text(), removed=integer())]}),
                          **errors(*GROUP_ERRORS)}}},
    }


CAMERA_ID = {"name": "camera_id", "in": "path", "required": True, "description": "the camera's id (a uuid4)",
             "schema": {"type": "string", "format": "uuid"}}
CAMERA_ERRORS = ((400, "`BAD_ID`: not a uuid4"), (404, "`NOT_FOUND`: no such camera (or another tenant's)"))


def _camera_schemas() -> dict:
    box = {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4,
           "description": "[left, top, right, bottom] in the frame's pixels"}
    camera = obj(["id", "name", "url", "model", "fps", "state"],
                 id=text(format="uuid"), name=text(), model=text(format="uuid"), fps=num(),
                 url=text("the URL with its credentials replaced by *** (user:password@, and query parameters "
                          "named like a password, token or key)"),
                 state={"enum": ["connecting", "live", "offline"]},
                 reason=nullable(text("why it is offline (or was, while it connects again)")),
                 callback_url=nullable(text()), tenant=nullable(text()),
                 worker=nullable(text("the worker that holds it")), created=num(), updated=num(),
                 callback_secret=text("the webhook signing secret: in the answer to POST only"))
    event = obj(["id", "camera", "type", "track", "label", "known", "time"],
                id=integer("increasing per service: `after` and SSE's Last-Event-ID take it"),
                camera=text(format="uuid"), camera_name=nullable(text()), model=text(format="uuid"),
                type={"enum": ["track.start", "track.end"]}, track=integer("the track's number on this watch"),
                label=text("the person, or `unknown`"), known={"type": "boolean"},
                confidence=nullable(num()), time=num("seconds since the epoch: the frame's (start) or the last "
                                                     "sighting's (end)"),
                first=num(), last=num(), frames=integer(), box=box, boxes={"type": "array", "items": box},
                snapshot=nullable(text("the path of the event's JPEG (the frame with the boxes drawn)")))
    return {"Camera": camera, "CameraEvent": event}


def _camera_paths() -> dict:
    cam = answer("the camera", obj(["camera"], status=integer(), camera=ref("Camera")))
    return {
        "/cameras": {
            "post": {"tags": ["cameras"], "summary": "Watch a live camera with a model",
                     "description": "A worker holds the camera: it reads `fps` frames a second, names the faces "
                                    "with the model and follows them; each person's track sends an event when it "
                                    "starts and when it ends (webhook, SSE, MQTT). The URL is checked as callback "
                                    "URLs are: a private address must be listed in FR_CAMERA_ALLOW.",
                     "requestBody": {"required": True, "content": {
                         JSON: {"schema": obj(["name", "url", "model"], name=text(),
                                              url=text("rtsp://, rtsps://, or an http(s):// MJPEG stream or "
                                                       "snapshot URL; credentials as user:password@"),
                                              model=text(format="uuid"), fps=num("0.05 to 30, default 5"),
                                              callback_url=text("signed webhooks of the events (FR_WEBHOOK_ALLOW)"))},
                         "application/x-www-form-urlencoded": {"schema": obj(["name", "url", "model"])}}},
                     "responses": {"201": cam, **errors(
                         (400, "`BAD_CAMERA_URL`, `CAMERA_NOT_ALLOWED` (a private address FR_CAMERA_ALLOW does not "
                               "list), `CAMERA_UNRESOLVABLE`, `BAD_PARAMETER`, `BAD_CALLBACK_URL`"),
                         (404, "`NOT_FOUND`: no such model"), (409, "`NOT_READY`: the model is not built"),
                         (429, "`TOO_MANY_CAMERAS`: the tenant has FR_MAX_CAMERAS"), *AUTH_ERRORS)}},
            "get": {"tags": ["cameras"], "summary": "Every camera of the caller's tenant, with its state",
                    "responses": {"200": answer("the cameras", obj(["cameras"], status=integer(), cameras={
                        "type": "array", "items": ref("Camera")})), **errors(*AUTH_ERRORS)}}},
        "/cameras/{camera_id}": {
            "get": {"tags": ["cameras"], "summary": "One camera and its state", "parameters": [CAMERA_ID],
                    "responses": {"200": cam, **errors(*CAMERA_ERRORS, *AUTH_ERRORS)}},
            "delete": {"tags": ["cameras"], "summary": "Stop watching a camera; its events and snapshots go",
                       "parameters": [CAMERA_ID],
                       "responses": {"200": answer("removed"), **errors(*CAMERA_ERRORS, *AUTH_ERRORS)}}},
        "/cameras/{camera_id}/events": {"get": {
            "tags": ["cameras"], "summary": "A camera's events: JSON, or Server-Sent Events as they happen",
            "description": "With `Accept: text/event-stream`, a stream: `id:` the event id, `event:` its type, "
                           "`data:` the event as JSON; a comment line every 10 s; it ends after 15 minutes and "
                           "EventSource reconnects with Last-Event-ID.",
            "parameters": [CAMERA_ID, {"name": "after", "in": "query", "schema": integer(minimum=0),
                                       "description": "only events with a larger id"},
                           {"name": "limit", "in": "query", "schema": integer(minimum=1, maximum=1000)}],
            "responses": {"200": {"description": "the events", "content": {
                JSON: {"schema": obj(["events"], status=integer(), events={"type": "array",
                                                                           "items": ref("CameraEvent")})},
                "text/event-stream": {"schema": text()}}},
                **errors(*CAMERA_ERRORS, (503, "`BUSY`: too many streams open on this process"), *AUTH_ERRORS)}}},
        "/cameras/{camera_id}/events/{event}/snapshot": {"get": {
            "tags": ["cameras"], "summary": "An event's snapshot: the frame with every face's box and name",
            "parameters": [CAMERA_ID, {"name": "event", "in": "path", "required": True, "schema": integer()}],
            "responses": {"200": {"description": "JPEG", "content": {"image/jpeg": {"schema": text(
                format="binary")}}}, **errors(*CAMERA_ERRORS, *AUTH_ERRORS)}}},
    }


def _key_paths() -> dict:
    return {
        "/keys": {
            "post": {"tags": ["keys"], "summary": "Make an API key (admins)",
                     "description": "The key is in this answer and nowhere else, ever; it is stored as an "
                                    "scrypt hash.",
                     "requestBody": {"required": True, "content": {JSON: {"schema": obj(
                         ["tenant", "role"], tenant=text("the tenant the key belongs to: 1-63 of a-z 0-9 _ . -"),
                         role={"type": "string", "enum": ["admin", "builder", "user"]},
                         name=text("a note to tell keys apart"))}}},
                     "responses": {"201": answer("the key, shown once", ref("NewKey")),
                                   **errors((400, "`BAD_PARAMETER`"), *AUTH_ERRORS)}},
            "get": {"tags": ["keys"], "summary": "Every key (admins): ids, tenants, roles, never the keys",
                    "parameters": [{"name": "tenant", "in": "query", "schema": text()}],
                    "responses": {"200": answer("the keys", ref("KeyList")), **errors(*AUTH_ERRORS)}}},
        "/keys/{key_id}": {"delete": {
            "tags": ["keys"], "summary": "Revoke a key (admins): refused at once by every web process",
            "parameters": [{"name": "key_id", "in": "path", "required": True, "schema": text()}],
            "responses": {"200": answer("revoked"), **errors((404, "`NOT_FOUND`: no working key"), *AUTH_ERRORS)}}},
    }


def _health_path() -> dict:
    return {
        "/is_alive": {"get": {
            "tags": ["operations"], "summary": "Health: broker, workers, store and disk", "security": PUBLIC,
            "responses": {"200": answer("alive", ref("Alive")),
                          "503": answer("not alive: `BROKER_UNAVAILABLE`, `STORE_UNAVAILABLE`, "
                                        "`INSUFFICIENT_STORAGE`, `CALLBACKS_STUCK` or `NO_WORKERS` in "
                                        "`error.code`", ref("Alive"))}}},
    }


@lru_cache(maxsize=1)
def document() -> dict:
    """The OpenAPI 3.1 document (paths relative to where it is served)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "api-facial-recognition", "version": VERSION,
                 "description": "Builds face-recognition models on demand: upload labelled photos, poll the "
                                "build, download the bundle or name faces with it. Every answer is JSON but "
                                "the bundle and the pages; errors are `{\"status\": 1, \"error\": {\"code\", "
                                "\"message\", \"details\"?}}`. A build's tasks are of kinds "
                                + ", ".join(k.value for k in TaskKind) + "."},
        "servers": [{"url": "/"}],
        "tags": [{"name": "models", "description": "build, follow, derive, download, delete, erase a person"},
                 {"name": "use", "description": "name faces with a model, verify one against another"},
                 {"name": "unknown",
                  "description": "unknown faces a model keeps: groups, chips, name, merge, move, discard"},
                 {"name": "cameras", "description": "live cameras: who they see, as events"},
                 {"name": "operations", "description": "health and metrics"},
                 {"name": "keys", "description": "API keys (admins)"},
                 {"name": "pages", "description": "the console and this reference"}],
        "components": {
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                           "description": "a key of this service (`python run.py keys create`); when keys are "
                                          "off, no key is needed"},
                "Bearer": {"type": "http", "scheme": "bearer", "description": "the same key as a bearer token"}},
            "schemas": schemas()},
        "security": [{"ApiKey": []}, {"Bearer": []}],
        "paths": operations(),
    }
