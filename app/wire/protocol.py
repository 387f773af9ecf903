"""The ZeroMQ wire format, and the check every message passes before it is used.

A message is a command frame, a JSON header frame, then binary frames.

Front (REQ, the HTTP app) -> broker ROUTER:
    SUBMIT {id, name, options, files, deadline, tenant, callback?} photo...  -> OK {id} | ERR {code, message}
    DERIVE {id, parent, tenant, name, options, files, remove, deadline, callback?} photo...
                                      -> OK {id, parent, photos, people, added, removed, duplicates}
                                         (the parent must be `tenant`'s, None: any; the new model is its tenant's)
    STATUS                                            -> OK {workers, busy, idle, warming, queued, store, disk}
    DELETE {id, tenant}                               -> OK {id, removed} | ERR NOT_FOUND (another tenant's)
    ERASE {label, tenant}                             -> OK {label, models, removed}  (tenant None: every tenant)
    VIDEO {id, model, tenant, name, fps, deadline, callback?} video
                                      -> OK {id, model, fps}  (the model must be `tenant`'s and built)
  unknown faces (app/broker/unknown.py; on the loop, the only writer of var/unknown.sqlite):
    UKEEP {model, tenant, key, source, faces: [{embedding, quality, box}]} chip...
                                                      -> OK {faces: [{unknown_id, cluster}]}
    UGROUPS {model, tenant}                           -> OK {clusters, faces, naming}
    UCOUNT {ids, tenant}                              -> OK {counts: {model id: faces waiting}}
    UCHIP {model, tenant, cluster, face}              -> OK {unknown_id, cluster, seen, quality, source} jpeg
    UMERGE {model, tenant, clusters}                  -> OK {cluster, size, merged}
    UMOVE {model, tenant, cluster, face, to}          -> OK {unknown_id, cluster, from}
    UDISCARD {model, tenant, cluster}                 -> OK {cluster, removed}
    (naming a group is a DERIVE with `unknown: {cluster, label}` and no photos; a correction `unknown: {faces,
    label}`)
  read side (served by the broker's reader threads, app/broker/reader.py; a front on another host has no disk of ours):
    GETJOB {id, tenant, callback?}                    -> OK {job: row, bundle?: {sha256, size}, callback?: delivery}
                                                         | ERR NOT_FOUND
    LIST {limit, offset, tenant, kind?}               -> OK {jobs: [row...], total}  (kind "video": videos,
                                                         else models)
    VIDEOGET {id, tenant, thumb?}                     -> OK {video: the result} | OK {size} thumbnail JPEG
    BUNDLE {id, tenant, sha256, offset}               -> OK {sha256, size, offset} chunk  (at most BUNDLE_CHUNK bytes)
    KNOWN {ids}                                       -> OK {done: [ids of these that are finished models]}
    SEARCH {id, tenant}                               -> OK {search: the running search's view | null}
    KEYGET {id}                                       -> OK {key: {tenant, role, salt, hash, revoked} | null}
    KEYLIST {tenant}                                  -> OK {keys: [...]}  (no salts, no hashes; on the loop)
  key changes (the broker's loop writes var/auth.sqlite; the front made the hash, the secret never travels):
    KEYADD {id, tenant, role, name, salt, hash}       -> OK {key: description}
    KEYREVOKE {id}                                    -> OK {id, revoked}
  cameras (app/broker/cameras.py, on the loop; `tenant` None: any tenant's, for admins):
    CAMADD {id, tenant, name, url, model, fps, callback?}  -> OK {camera}  (the model must be `tenant`'s, built)
    CAMLIST {tenant}                                  -> OK {cameras}   (URLs with their credentials redacted)
    CAMDEL {id, tenant}                               -> OK {id, removed}
    CAMEVENTS {id, tenant, after, limit}              -> OK {events}    (events of a camera with id > after)
    CAMSNAP {id, event, tenant}                       -> OK {} jpeg     (an event's snapshot)
Worker (DEALER) -> broker ROUTER:
    READY                           idle and asking for work (sent once, on start)
    HEARTBEAT {task?, warming?}     alive; the task it is running, if any; still loading its models
    PROGRESS {task, stage, done, total}   the job's state follows from the task's kind, never from the worker
    DONE {task} result              result: features JSON (extract), scores JSON (evaluate) or bundle zip (train)
    FAILED {task, code, message, details}   DONE and FAILED also mean "ready for more"
    REJECT {task, busy_with}        got a task while busy: the broker takes it back
    CAMSTATE {camera, state, reason}      a camera it watches is connecting, live or offline (why)
    CAMEVENT {camera, event} snapshot     a track started or ended on a camera (a JPEG with the boxes drawn)
Broker -> worker:
    JOB {task, name, options, files} photo...            task = {job, kind: extract, chunk, attempt}
    JOB {task, name, options, files} features            task = {job, kind: evaluate, genome, attempt}
    JOB {task, name, options, files, search?} features   task = {job, kind: train, attempt}
    JOB {task, name, options, files, tenant} video bundle  task = {job, kind: video, attempt}
    WATCH {camera: {id, url, name, model, fps}} bundle   hold this camera (the model's bundle zip)
    UNWATCH {id}                    stop watching this camera
    PURGE {photos, keys}            forget cached features: of these photos (sha256 of their bytes), these keys
    HEARTBEAT

Every frame list that arrives is checked by `parse_front` / `parse_worker` (or
`parse_job` on a worker): the command, the number of frames, the header's
fields and their types, sizes and ranges. What does not fit raises
ProtocolError and is dropped by the receiver; nothing of it reaches a path, the
store or a log line unescaped.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import zmq

from constants import Settings
from constants.states import TaskKind
from preprocessor.errors import InputError
from preprocessor.uploads import MAX_FILENAME, check_filename, clean_label

SUBMIT, STATUS, DELETE, OK, ERR = b"SUBMIT", b"STATUS", b"DELETE", b"OK", b"ERR"
DERIVE, ERASE, VIDEO, VIDEOGET = b"DERIVE", b"ERASE", b"VIDEO", b"VIDEOGET"
READY, HEARTBEAT, PROGRESS, DONE, FAILED, JOB = b"READY", b"HEARTBEAT", b"PROGRESS", b"DONE", b"FAILED", b"JOB"
REJECT, PURGE = b"REJECT", b"PURGE"
UKEEP, UGROUPS, UCOUNT, UCHIP = b"UKEEP", b"UGROUPS", b"UCOUNT", b"UCHIP"
UMERGE, UMOVE, UDISCARD = b"UMERGE", b"UMOVE", b"UDISCARD"
UNKNOWN_COMMANDS = (UKEEP, UGROUPS, UCOUNT, UCHIP, UMERGE, UMOVE, UDISCARD)
CAMADD, CAMLIST, CAMDEL, CAMEVENTS, CAMSNAP = b"CAMADD", b"CAMLIST", b"CAMDEL", b"CAMEVENTS", b"CAMSNAP"
CAMSTATE, CAMEVENT, WATCH, UNWATCH = b"CAMSTATE", b"CAMEVENT", b"WATCH", b"UNWATCH"
CAMERA_COMMANDS = (CAMADD, CAMLIST, CAMDEL, CAMEVENTS, CAMSNAP)
CAMERA_STATES = ("connecting", "live", "offline")
EVENT_TYPES = ("start", "end")
MAX_SNAPSHOT_BYTES = 8 * 1024 * 1024
MAX_BOXES = 64
MAX_CAMERAS_HELD = 10_000
GETJOB, LIST, BUNDLE, KNOWN, SEARCH = b"GETJOB", b"LIST", b"BUNDLE", b"KNOWN", b"SEARCH"
KEYGET, KEYLIST, KEYADD, KEYREVOKE = b"KEYGET", b"KEYLIST", b"KEYADD", b"KEYREVOKE"

READ_COMMANDS = (GETJOB, LIST, BUNDLE, KNOWN, SEARCH, KEYGET, VIDEOGET)  # answered off the broker's loop
FRONT_COMMANDS = (SUBMIT, STATUS, DELETE, DERIVE, ERASE, VIDEO, KEYADD, KEYREVOKE, KEYLIST, *READ_COMMANDS,
                  *UNKNOWN_COMMANDS, *CAMERA_COMMANDS)
WORKER_COMMANDS = (READY, HEARTBEAT, PROGRESS, DONE, FAILED, REJECT, CAMSTATE, CAMEVENT)

MAX_HEADER_BYTES = 16 * 1024 * 1024   # a submit's header lists every photo's label and file name
MAX_RESULT_BYTES = 1024 * 1024 * 1024  # a worker's result: features JSON or a bundle
BUNDLE_CHUNK = 1024 * 1024            # a bundle travels to a front in pieces this size: no long send blocks the broker
MAX_BUNDLE_BYTES = 4 * 1024**3
MAX_KNOWN = 1000                      # model ids a front may ask about at once
ROLES = ("admin", "builder", "user")
MAX_STAGE = 200
MAX_MESSAGE = 4000
# The codes a worker may end a task with (app/worker/tasks.py raises the first ones; BUILD_ERROR is a crash).
WORKER_FAILURES = frozenset({"NO_FACE_FOUND", "TOO_FEW_PEOPLE", "BUILD_ERROR", "INSUFFICIENT_STORAGE",
                             "NOT_A_VIDEO", "VIDEO_TOO_LONG"})  # the last two: a video task's (preprocessor/video)
MAX_THUMBNAILS = 100_000  # a video's tracks (and thumbnails) the broker takes from a worker

_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_EVAL_KEY = re.compile(r"[0-9]{1,4}(,[0-9]{1,4}){0,63}(/[0-9]{1,4})?")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_TENANT = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_KEY_ID = re.compile(r"[0-9a-f]{12}")
_HEX = re.compile(r"[0-9a-f]{1,128}")
_CODE = re.compile(r"[A-Z][A-Z_]{0,39}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SECRET = re.compile(r"whsec_[A-Za-z0-9+/]{32,88}={0,2}")
MAX_URL = 2048
MAX_REMOVE = 1000      # people removed by one derivation
MAX_KEEP = 1000        # unknown faces kept by one message
MAX_CHIP = 256 * 1024  # a kept face's chip (JPEG of 150x150 pixels: ~10 KB)
MAX_MERGE = 100        # groups merged at once
_UNKNOWN_ID = re.compile(r"[0-9a-f]{16}")


class ProtocolError(ValueError):
    """A message that does not fit its schema; it is dropped (and logged, escaped)."""


class FrontError(Exception):
    """A front request refused with a code (BrokerRefused on the front's side, which app/web/errors.py maps
    to an HTTP status)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def escape(value: Any, limit: int = 200) -> str:
    """Untrusted text for a log line: printable, one line, bounded (a newline cannot forge a line)."""
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


# --- building blocks -----------------------------------------------------------------------
def is_job_id(value: Any) -> bool:
    """A canonical lower-case uuid4: the only job ids that ever reach a path."""
    return isinstance(value, str) and _UUID4.fullmatch(value) is not None


def is_digest(value: Any) -> bool:
    """A sha256 in lower-case hex (photo digests, cache keys)."""
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


def job_id(value: Any) -> str:
    if not is_job_id(value):
        raise ProtocolError(f"not a job id: {escape(value, 60)}")
    return value


def tenant(value: Any) -> str | None:
    """A tenant name as app/shared/api_keys.py makes them, or None (a job from before tenants, or any tenant)."""
    if value is not None and not (isinstance(value, str) and _TENANT.fullmatch(value)):
        raise ProtocolError(f"not a tenant: {escape(value, 60)}")
    return value


def integer(value: Any, low: int, high: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProtocolError(f"{name} must be an integer in [{low}, {high}]")
    return value


def number(value: Any, low: float, high: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ProtocolError(f"{name} must be a number in [{low}, {high}]")
    return float(value)


def text(value: Any, limit: int, name: str, *, single_line: bool = True) -> str:
    if not isinstance(value, str) or len(value) > limit or (single_line and _CONTROL.search(value)):
        raise ProtocolError(f"{name} must be a string of at most {limit} printable characters")
    return value


def mapping(value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        raise ProtocolError(f"{name} must be an object")
    return value


def _reject_constant(name: str) -> float:
    raise ProtocolError(f"{name} is not a number JSON allows")


def decode_json(frame: bytes, limit: int, name: str) -> Any:
    """JSON of a frame no longer than `limit` (NaN and Infinity refused)."""
    if len(frame) > limit:
        raise ProtocolError(f"{name} is {len(frame)} bytes, limit {limit}")
    try:
        return json.loads(frame, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"{name} is not JSON ({escape(exc, 80)})") from None


def header_of(frames: list[bytes], *, required: bool) -> dict:
    if len(frames) < 2 or not frames[1]:
        if required:
            raise ProtocolError("missing header frame")
        return {}
    return mapping(decode_json(frames[1], MAX_HEADER_BYTES, "header"), "header")


# --- tasks ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One piece of a job's work, as the broker hands it out and a worker names it back."""
    job: str
    kind: TaskKind
    chunk: int = 0     # which slice of the photos (extract only)
    attempt: int = 1
    genome: str = ""   # the evaluation's key: genome key[/fold] (evaluate only)

    @property
    def what(self) -> tuple:
        """The work itself, whatever the attempt."""
        return self.job, self.kind, self.chunk, self.genome

    def to_wire(self) -> dict:
        return {**asdict(self), "kind": self.kind.value}

    @classmethod
    def from_wire(cls, value: Any) -> Task:
        d = mapping(value, "task")
        if set(d) - {"job", "kind", "chunk", "attempt", "genome"}:
            raise ProtocolError("task has unknown fields")
        try:
            kind = TaskKind(str(d.get("kind")))
        except ValueError:
            raise ProtocolError(f"unknown task kind {escape(d.get('kind'), 40)}") from None
        genome = d.get("genome", "")
        if kind == TaskKind.EVALUATE:
            if not isinstance(genome, str) or not _EVAL_KEY.fullmatch(genome):
                raise ProtocolError("an evaluate task needs a genome key")
        elif genome != "":
            raise ProtocolError("only evaluate tasks carry a genome")
        chunk = integer(d.get("chunk", 0), 0, 10**7, "chunk")
        if kind != TaskKind.EXTRACT and chunk != 0:
            raise ProtocolError("only extract tasks have a chunk")
        return cls(job_id(d.get("job")), kind, chunk, integer(d.get("attempt", 1), 1, 10**6, "attempt"), genome)


# --- front messages ---------------------------------------------------------------------------
def check_options(value: Any, settings: Settings) -> dict:
    """A build's options as the HTTP front makes them (app/web/forms.parse_options), with its limits."""
    options = mapping(value, "options")
    limits = settings.option_limits
    allowed = {"optimize", "seed", "keep_unknown"} | (set(limits) if options.get("optimize") else set())
    if set(options) - allowed:
        raise ProtocolError(f"unexpected options {escape(sorted(set(options) - allowed), 80)}")
    for name in ("optimize", "keep_unknown"):
        if not isinstance(options.get(name, False), bool):
            raise ProtocolError(f"{name} must be true or false")
    for name, value_ in options.items():
        if name in limits:
            low, high, cast = limits[name]
            (integer if cast is int else number)(value_, low, high, name)
    return options


def check_label(value: Any, settings: Settings, enrolled: bool = False) -> str:
    """A person's label exactly as the HTTP front cleans it (`enrolled`: one that names someone already in a
    model, preprocessor.uploads.clean_label)."""
    try:
        if clean_label(value, settings.max_label_length, enrolled=enrolled) != value:
            raise ProtocolError("label is not in its clean form")
    except (InputError, TypeError, AttributeError):
        raise ProtocolError(f"bad label {escape(value, 60)}") from None
    return value


def check_callback(value: Any) -> dict:
    """A build's callback: an http(s) URL the front checked against FR_WEBHOOK_ALLOW, and its signing secret."""
    callback = mapping(value, "callback")
    if set(callback) != {"url", "secret"}:
        raise ProtocolError("a callback takes exactly url and secret")
    url = text(callback["url"], MAX_URL, "callback url")
    if not url.lower().startswith(("http://", "https://")) or not url.isascii():
        raise ProtocolError("a callback url must be http or https, normalised to ASCII by the front")
    if not isinstance(callback["secret"], str) or not _SECRET.fullmatch(callback["secret"]):
        raise ProtocolError("a callback secret must be whsec_ and base64")
    return callback


def check_submit(header: dict, blobs: list[bytes], settings: Settings) -> dict:
    """A SUBMIT as the HTTP front would send it: the same limits, labels and options."""
    if set(header) - {"id", "name", "options", "files", "deadline", "tenant", "callback"}:
        raise ProtocolError("submit has unknown fields")
    return _check_job(header, blobs, settings, least=1)


def check_derive(header: dict, blobs: list[bytes], settings: Settings) -> dict:
    """A DERIVE: a new model from a built one (`parent`), plus photos (`files`), minus people (`remove`)."""
    if set(header) - {"id", "parent", "tenant", "name", "options", "files", "remove", "deadline", "callback",
                      "unknown"}:
        raise ProtocolError("derive has unknown fields")
    job_id(header.get("parent"))
    if header.get("unknown") is not None:  # a group of unknown faces named, or kept faces given to a person
        named = _fields(mapping(header["unknown"], "unknown"), {"cluster", "faces", "label"}, {"label"}, "unknown")
        if ("cluster" in named) == ("faces" in named):
            raise ProtocolError("unknown names a cluster or lists faces")
        if "cluster" in named:
            unknown_id(named["cluster"], "cluster")
        elif not isinstance(named["faces"], list) or not 1 <= len(named["faces"]) <= MAX_KEEP:
            raise ProtocolError(f"unknown faces must list 1 to {MAX_KEEP} ids")
        for value in named.get("faces", []):
            unknown_id(value, "face")
        check_label(named["label"], settings)
    remove = header.get("remove", [])
    if not isinstance(remove, list) or len(remove) > MAX_REMOVE:
        raise ProtocolError(f"remove must list at most {MAX_REMOVE} people")
    for label in remove:
        check_label(label, settings, enrolled=True)
    _check_job(header, blobs, settings, least=0)
    if not header["files"] and not remove and header.get("unknown") is None:
        raise ProtocolError("a derivation adds photos, removes people or names a group of unknown faces")
    return header


def check_video(header: dict, blobs: list[bytes], settings: Settings) -> dict:
    """A VIDEO: a recorded video to run through a built model (`model`) at `fps` frames a second."""
    _fields(header, {"id", "model", "tenant", "name", "fps", "deadline", "callback"}, {"id", "model", "fps"}, "video")
    job_id(header["id"])
    job_id(header["model"])
    tenant(header.get("tenant"))
    if header.get("name") is not None:
        text(header["name"], settings.max_name_length, "name")
    number(header["fps"], 0.01, settings.max_video_fps, "fps")
    if "deadline" in header:
        number(header["deadline"], 0, 1e11, "deadline")
    if header.get("callback") is not None:
        check_callback(header["callback"])
    if len(blobs) != 1 or not 0 < len(blobs[0]) <= settings.max_video_bytes:
        raise ProtocolError(f"a video takes one frame of 1 to {settings.max_video_bytes} bytes")
    return header


def check_erase(header: dict, settings: Settings) -> dict:
    """An ERASE: a person's label, and the tenant whose models it covers (None: every tenant's)."""
    _fields(header, {"label", "tenant"}, {"label", "tenant"}, "erase")
    check_label(header["label"], settings, enrolled=True)
    tenant(header["tenant"])
    return header


def _check_job(header: dict, blobs: list[bytes], settings: Settings, least: int) -> dict:
    """The fields a SUBMIT and a DERIVE share: id, name, options, deadline, callback, and the photos."""
    job_id(header.get("id"))
    tenant(header.get("tenant"))
    name = header.get("name")
    if name is not None:
        text(name, settings.max_name_length, "name")
    check_options(header.get("options", {}), settings)
    if "deadline" in header:
        number(header["deadline"], 0, 1e11, "deadline")
    if header.get("callback") is not None:
        check_callback(header["callback"])
    files = header.get("files")
    if not isinstance(files, list) or not least <= len(files) <= settings.max_files:
        raise ProtocolError(f"files must list {least} to {settings.max_files} photos")
    if len(files) != len(blobs):
        raise ProtocolError("the file list and the photo frames differ in length")
    total = 0
    for f, blob in zip(files, blobs):
        f = mapping(f, "file")
        if set(f) != {"label", "filename"}:
            raise ProtocolError("a file needs exactly a label and a filename")
        check_label(f["label"], settings)
        try:  # the rule the HTTP front applied (preprocessor/uploads.py): a front that lets one through is wrong
            check_filename(f["filename"])
        except InputError:
            raise ProtocolError(f"a filename must be at most {MAX_FILENAME} printable characters") from None
        if not 0 < len(blob) <= settings.max_photo_bytes:
            raise ProtocolError(f"a photo must be 1 to {settings.max_photo_bytes} bytes")
        total += len(blob)
    if total > settings.max_request_bytes:
        raise ProtocolError(f"photos total {total} bytes, limit {settings.max_request_bytes}")
    return header


def _fields(header: dict, allowed: set[str], required: set[str], what: str) -> dict:
    if set(header) - allowed or required - set(header):
        raise ProtocolError(f"{what} takes {', '.join(sorted(allowed))} ({', '.join(sorted(required)) or 'none'} "
                            "required)")
    return header


def key_id(value: Any) -> str:
    if not (isinstance(value, str) and _KEY_ID.fullmatch(value)):
        raise ProtocolError(f"not a key id: {escape(value, 40)}")
    return value


def hex_bytes(value: Any, n: int, name: str) -> str:
    """`n` bytes written as lower-case hex."""
    if not (isinstance(value, str) and len(value) == 2 * n and _HEX.fullmatch(value)):
        raise ProtocolError(f"{name} must be {n} bytes in lower-case hex")
    return value


def check_read(command: bytes, header: dict) -> dict:
    """The read side's requests and key changes: exact fields, ids in their only forms, bounded numbers."""
    if command == GETJOB:
        _fields(header, {"id", "tenant", "callback"}, {"id"}, "getjob")
        job_id(header["id"])
        if not isinstance(header.get("callback", False), bool):
            raise ProtocolError("callback must be true or false")
    elif command == SEARCH:
        _fields(header, {"id", "tenant"}, {"id"}, "search")
        job_id(header["id"])
    elif command == LIST:
        _fields(header, {"limit", "offset", "tenant", "kind"}, {"limit", "offset"}, "list")
        integer(header["limit"], 1, 1000, "limit")
        integer(header["offset"], 0, 10**9, "offset")
        if header.get("kind") not in (None, "video"):
            raise ProtocolError("kind must be video or absent")
    elif command == VIDEOGET:
        _fields(header, {"id", "tenant", "thumb"}, {"id"}, "videoget")
        job_id(header["id"])
        if header.get("thumb") is not None:
            integer(header["thumb"], 1, MAX_THUMBNAILS, "thumb")
    elif command == BUNDLE:
        _fields(header, {"id", "tenant", "sha256", "offset"}, {"id", "offset"}, "bundle")
        job_id(header["id"])
        integer(header["offset"], 0, MAX_BUNDLE_BYTES, "offset")
        if header.get("sha256") is not None and not is_digest(header["sha256"]):
            raise ProtocolError("sha256 must be a sha256 in lower-case hex")
    elif command == KNOWN:
        _fields(header, {"ids"}, {"ids"}, "known")
        if not isinstance(header["ids"], list) or len(header["ids"]) > MAX_KNOWN:
            raise ProtocolError(f"ids must list at most {MAX_KNOWN} job ids")
        for value in header["ids"]:
            job_id(value)
    elif command in (KEYGET, KEYREVOKE):
        _fields(header, {"id"}, {"id"}, command.decode().lower())
        key_id(header["id"])
    elif command == KEYLIST:
        _fields(header, {"tenant"}, set(), "keylist")
    elif command == KEYADD:
        _fields(header, {"id", "tenant", "role", "name", "salt", "hash"}, {"id", "tenant", "role", "salt", "hash"},
                "keyadd")
        key_id(header["id"])
        if header["tenant"] is None:
            raise ProtocolError("a key belongs to a tenant")
        if header["role"] not in ROLES:
            raise ProtocolError(f"role must be one of {', '.join(ROLES)}")
        if header.get("name") is not None:
            text(header["name"], 200, "name")
        hex_bytes(header["salt"], 16, "salt")
        hex_bytes(header["hash"], 32, "hash")
    tenant(header.get("tenant"))
    return header


def is_unknown_id(value: Any) -> bool:
    """A kept face's or a group's id: 16 lower-case hex digits."""
    return isinstance(value, str) and _UNKNOWN_ID.fullmatch(value) is not None


def unknown_id(value: Any, name: str = "id") -> str:
    """A kept face's or a group's id (16 lower-case hex digits)."""
    if not is_unknown_id(value):
        raise ProtocolError(f"{name} is not an unknown face's or group's id: {escape(value, 40)}")
    return value


def check_unknown(command: bytes, header: dict, blobs: list[bytes]) -> dict:
    """The unknown-face messages: exact fields, ids in their only forms, embeddings of 128 finite numbers,
    one bounded JPEG per kept face."""
    fields = {UKEEP: {"model", "tenant", "key", "source", "faces"}, UGROUPS: {"model", "tenant"},
              UCOUNT: {"ids", "tenant"},
              UCHIP: {"model", "tenant", "cluster", "face"}, UMERGE: {"model", "tenant", "clusters"},
              UMOVE: {"model", "tenant", "cluster", "face", "to"}, UDISCARD: {"model", "tenant", "cluster"}}[command]
    _fields(header, fields, fields - {"tenant", "to", "key"}, command.decode().lower())
    tenant(header.get("tenant"))
    if command == UCOUNT:
        if not isinstance(header["ids"], list) or len(header["ids"]) > MAX_KNOWN:
            raise ProtocolError(f"ids must list at most {MAX_KNOWN} job ids")
        for value in header["ids"]:
            job_id(value)
    else:
        job_id(header["model"])
    for name in ("cluster", "face"):
        if name in header:
            unknown_id(header[name], name)
    if header.get("to") is not None:
        unknown_id(header["to"], "to")
    if command == UMERGE:
        if not isinstance(header["clusters"], list) or not 1 <= len(header["clusters"]) <= MAX_MERGE:
            raise ProtocolError(f"clusters must list 1 to {MAX_MERGE} groups")
        for value in header["clusters"]:
            unknown_id(value, "cluster")
    if command == UKEEP:
        if header.get("key") is not None:
            key_id(header["key"])
        source = mapping(header["source"], "source")
        if set(source) - {"kind", "request", "item", "camera"} or len(json.dumps(source)) > 1024:
            raise ProtocolError("source takes kind, request, item and camera, in at most 1 KB")
        faces = header["faces"]
        if not isinstance(faces, list) or not 1 <= len(faces) <= MAX_KEEP or len(faces) != len(blobs):
            raise ProtocolError(f"keep sends 1 to {MAX_KEEP} faces, one chip frame each")
        for face, chip in zip(faces, blobs):
            face = mapping(face, "face")
            if set(face) - {"embedding", "quality", "box"}:
                raise ProtocolError("a kept face takes embedding, quality and box")
            vector = face.get("embedding")
            if not (isinstance(vector, list) and len(vector) == 128 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vector)):
                raise ProtocolError("a kept face's embedding is 128 finite numbers")
            if face.get("quality") is not None and len(json.dumps(mapping(face["quality"], "quality"))) > 2048:
                raise ProtocolError("a kept face's quality is too large")
            box = face.get("box")
            if box is not None and not (isinstance(box, list) and len(box) == 4 and all(
                    isinstance(v, int) and not isinstance(v, bool) and abs(v) < 10**6 for v in box)):
                raise ProtocolError("a kept face's box is 4 integers")
            if not 0 < len(chip) <= MAX_CHIP or not chip.startswith(b"\xff\xd8"):
                raise ProtocolError(f"a kept face's chip is a JPEG of at most {MAX_CHIP} bytes")
    elif blobs:
        raise ProtocolError(f"{command.decode()} takes no data frames")
    return header


def parse_front(frames: list[bytes], settings: Settings) -> tuple[bytes, dict, list[bytes]]:
    """A front request (after the ROUTER's identity and empty delimiter) -> (command, header, blobs)."""
    if not frames or frames[0] not in FRONT_COMMANDS:
        raise ProtocolError(f"unknown front command {escape(frames[0] if frames else b'', 40)}")
    command, blobs = frames[0], list(frames[2:])
    if command == SUBMIT:
        return command, check_submit(header_of(frames, required=True), blobs, settings), blobs
    if command == DERIVE:
        return command, check_derive(header_of(frames, required=True), blobs, settings), blobs
    if command == VIDEO:
        return command, check_video(header_of(frames, required=True), blobs, settings), blobs
    if command in UNKNOWN_COMMANDS:
        return command, check_unknown(command, header_of(frames, required=True), blobs), blobs
    header = header_of(frames, required=command not in (STATUS, KEYLIST, CAMLIST))
    if blobs:
        raise ProtocolError(f"{command.decode()} takes no data frames")
    if command == DELETE:
        if set(header) - {"id", "tenant"} or "id" not in header:
            raise ProtocolError("delete takes an id (and the tenant it must belong to)")
        job_id(header["id"])
        tenant(header.get("tenant"))
    elif command == ERASE:
        check_erase(header, settings)
    elif command == STATUS:
        if header:
            raise ProtocolError("status takes no header")
    elif command in CAMERA_COMMANDS:
        check_camera_request(command, header, settings)
    else:
        check_read(command, header)
    return command, header, blobs


def check_camera_request(command: bytes, header: dict, settings: Settings) -> dict:
    """The cameras' front requests: exact fields, ids in their only form, bounded numbers."""
    if command == CAMADD:
        _fields(header, {"id", "tenant", "name", "url", "model", "fps", "callback"},
                {"id", "tenant", "name", "url", "model", "fps"}, "camadd")
        job_id(header["id"])
        job_id(header["model"])
        text(header["name"], settings.max_name_length, "name")
        text(header["url"], MAX_URL, "url")
        number(header["fps"], 0.05, 30, "fps")
        if header.get("callback") is not None:
            check_callback(header["callback"])
    elif command == CAMLIST:
        _fields(header, {"tenant"}, set(), "camlist")
    elif command == CAMDEL:
        _fields(header, {"id", "tenant"}, {"id"}, "camdel")
        job_id(header["id"])
    elif command == CAMEVENTS:
        _fields(header, {"id", "tenant", "after", "limit"}, {"id", "after", "limit"}, "camevents")
        job_id(header["id"])
        integer(header["after"], 0, 2**62, "after")
        integer(header["limit"], 1, 1000, "limit")
    elif command == CAMSNAP:
        _fields(header, {"id", "tenant", "event"}, {"id", "event"}, "camsnap")
        job_id(header["id"])
        integer(header["event"], 1, 2**62, "event")
    tenant(header.get("tenant"))
    return header


def check_event(value: Any) -> dict:
    """A camera event as a worker sends it: a track's start or end."""
    event = mapping(value, "event")
    _fields(event, {"type", "track", "label", "confidence", "time", "first", "last", "frames", "box", "boxes"},
            {"type", "track", "label", "time", "first", "last", "frames", "box"}, "event")
    if event["type"] not in EVENT_TYPES:
        raise ProtocolError(f"an event's type is one of {', '.join(EVENT_TYPES)}")
    integer(event["track"], 0, 2**62, "track")
    if event["label"] is not None:
        text(event["label"], 200, "label")
    if event.get("confidence") is not None:
        number(event["confidence"], 0.0, 1.0, "confidence")
    for name in ("time", "first", "last"):
        number(event[name], 0.0, 1e11, name)
    integer(event["frames"], 0, 10**9, "frames")
    if not isinstance(event.get("boxes", []), list) or len(event.get("boxes", [])) > MAX_BOXES:
        raise ProtocolError(f"boxes lists at most {MAX_BOXES} boxes")
    for box in [event["box"], *event.get("boxes", [])]:
        if not (isinstance(box, list) and len(box) == 4):
            raise ProtocolError("a box is [left, top, right, bottom]")
        for v in box:
            integer(v, -100_000, 100_000, "box")
    return event


# --- worker messages --------------------------------------------------------------------------
def _details(value: Any) -> dict:
    details = mapping(value if value is not None else {}, "details")
    if len(json.dumps(details)) > 1024 * 1024:
        raise ProtocolError("details are too large")
    return details


def parse_worker(frames: list[bytes]) -> tuple[bytes, dict, list[bytes]]:
    """A worker's message (after the ROUTER's identity) -> (command, header, blobs), `task` as a Task."""
    if not frames or frames[0] not in WORKER_COMMANDS:
        raise ProtocolError(f"unknown worker command {escape(frames[0] if frames else b'', 40)}")
    command, blobs = frames[0], list(frames[2:])
    header = header_of(frames, required=command in (PROGRESS, DONE, FAILED, REJECT, CAMSTATE, CAMEVENT))
    out: dict[str, Any] = {}
    if command in (PROGRESS, DONE, FAILED, REJECT) or header.get("task"):
        out["task"] = Task.from_wire(header.get("task"))
    if command == READY:
        if header or blobs:
            raise ProtocolError("ready takes nothing")
    elif command in (HEARTBEAT, CAMSTATE, CAMEVENT):
        out.update(_check_beat_or_camera(command, header, blobs))
    elif command == PROGRESS:
        if set(header) != {"task", "stage", "done", "total"}:
            raise ProtocolError("progress takes task, stage, done and total")
        out["stage"] = text(header["stage"], MAX_STAGE, "stage")
        out["total"] = integer(header["total"], 0, 10**9, "total")
        out["done"] = integer(header["done"], 0, out["total"], "done")
    elif command == DONE:
        if set(header) != {"task"} or len(blobs) != 1:
            raise ProtocolError("done takes a task and exactly one result frame")
        if len(blobs[0]) > MAX_RESULT_BYTES:
            raise ProtocolError("result too large")
    elif command == FAILED:
        if set(header) - {"task", "code", "message", "details"}:
            raise ProtocolError("failed has unknown fields")
        code = header.get("code")
        if not isinstance(code, str) or not _CODE.fullmatch(code) or code not in WORKER_FAILURES:
            raise ProtocolError(f"a worker cannot end a task with code {escape(code, 40)}")
        out["code"] = code
        out["message"] = text(header.get("message", ""), MAX_MESSAGE, "message", single_line=False)
        out["details"] = _details(header.get("details"))
    elif command == REJECT:
        if set(header) != {"task", "busy_with"}:
            raise ProtocolError("reject takes task and busy_with")
        out["busy_with"] = Task.from_wire(header["busy_with"])
    if command not in (DONE, CAMEVENT) and blobs:
        raise ProtocolError(f"{command.decode()} takes no data frames")
    return command, out, blobs


def _check_beat_or_camera(command: bytes, header: dict, blobs: list[bytes]) -> dict[str, Any]:
    """A worker's HEARTBEAT (what it is warming and which cameras it holds), CAMSTATE or CAMEVENT -> its
    checked fields."""
    out: dict[str, Any] = {}
    if command == HEARTBEAT:
        if set(header) - {"task", "warming", "cameras"}:
            raise ProtocolError("heartbeat has unknown fields")
        warming = header.get("warming", False)
        if not isinstance(warming, bool):
            raise ProtocolError("warming must be true or false")
        out["warming"] = warming
        cameras = header.get("cameras", [])
        if not isinstance(cameras, list) or len(cameras) > MAX_CAMERAS_HELD:
            raise ProtocolError("cameras must list camera ids")
        out["cameras"] = [job_id(c) for c in cameras]
    elif command == CAMSTATE:
        _fields(header, {"camera", "state", "reason"}, {"camera", "state"}, "camstate")
        out["camera"] = job_id(header["camera"])
        if header["state"] not in CAMERA_STATES:
            raise ProtocolError(f"state must be one of {', '.join(CAMERA_STATES)}")
        out["state"] = header["state"]
        reason = header.get("reason")
        out["reason"] = None if reason is None else text(reason, 500, "reason")
    elif command == CAMEVENT:
        _fields(header, {"camera", "event"}, {"camera", "event"}, "camevent")
        if len(blobs) != 1 or not 0 < len(blobs[0]) <= MAX_SNAPSHOT_BYTES:
            raise ProtocolError(f"an event carries one snapshot of 1 to {MAX_SNAPSHOT_BYTES} bytes")
        out["camera"] = job_id(header["camera"])
        out["event"] = check_event(header["event"])
    return out


def parse_job(frames: list[bytes]) -> tuple[bytes, dict, list[bytes]]:
    """What a worker receives from its (authenticated) broker: JOB, PURGE or HEARTBEAT."""
    if not frames or frames[0] not in (JOB, PURGE, HEARTBEAT, WATCH, UNWATCH):
        raise ProtocolError(f"unknown broker command {escape(frames[0] if frames else b'', 40)}")
    command = frames[0]
    header = header_of(frames, required=command != HEARTBEAT)
    blobs = list(frames[2:])
    if command == JOB:
        header["task"] = Task.from_wire(header.get("task"))
        files = header.get("files")
        if not isinstance(files, list) or not isinstance(header.get("options", {}), dict):
            raise ProtocolError("a job needs files and options")
        if header["task"].kind == TaskKind.EXTRACT and len(blobs) != len(files):
            raise ProtocolError("an extract task needs one photo frame per file")
        if header["task"].kind == TaskKind.VIDEO:
            if len(blobs) != 2:
                raise ProtocolError("a video task carries the video and the model's bundle")
        elif header["task"].kind != TaskKind.EXTRACT and len(blobs) != 1:
            raise ProtocolError("evaluate and train tasks carry one features frame")
        tenant(header.get("tenant"))  # an extract task's: whose feature cache it uses
    elif command == WATCH:
        _fields(header, {"camera"}, {"camera"}, "watch")
        camera = mapping(header["camera"], "camera")
        _fields(camera, {"id", "url", "name", "model", "fps", "tenant"}, {"id", "url", "model", "fps"}, "camera")
        job_id(camera["id"])
        job_id(camera["model"])
        text(camera["url"], MAX_URL, "url")
        number(camera["fps"], 0.05, 30, "fps")
        if len(blobs) != 1:
            raise ProtocolError("watch carries the model's bundle")
    elif command == UNWATCH:
        _fields(header, {"id"}, {"id"}, "unwatch")
        job_id(header["id"])
    elif command == PURGE:
        if set(header) != {"photos", "keys"} or not all(
                isinstance(v, list) and all(is_digest(h) for h in v) for v in header.values()):
            raise ProtocolError("purge lists photos' sha256 and cache keys")
    return command, header, blobs


# --- framing ----------------------------------------------------------------------------------
def pack(command: bytes, header: dict | None = None, blobs: list[bytes] | tuple = ()) -> list[bytes]:
    frames = [command]
    if header is not None or blobs:
        frames.append(json.dumps(header or {}, ensure_ascii=False, allow_nan=False).encode())
    frames.extend(blobs)
    return frames


def unpack(frames: list[bytes]) -> tuple[bytes, dict, list[bytes]]:
    """-> (command, header, blobs), for answers from the broker (the only peer a client trusts)."""
    command = frames[0] if frames else b""
    header = header_of(frames, required=False) if len(frames) > 1 else {}
    return command, header, list(frames[2:])


def tune(sock: zmq.Socket, heartbeat_s: float, max_message: int | None = None) -> None:
    """Transport-level heartbeats catch half-open TCP links that app heartbeats would only see late;
    `max_message` caps each inbound frame (a peer that sends more is disconnected)."""
    ms = int(heartbeat_s * 1000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.HEARTBEAT_IVL, ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ms * 5)
    sock.setsockopt(zmq.HEARTBEAT_TTL, ms * 5)
    if max_message:
        sock.setsockopt(zmq.MAXMSGSIZE, max_message)
