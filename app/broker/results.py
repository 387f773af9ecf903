"""What workers send back: a chunk's features, a candidate's scores, a job's bundle, or a failure.

A result counts only from the worker its task was given to, for that job and kind of task, and is
checked (features of the right count and shape, finite scores, a bundle of that job); a bad one sends the
task elsewhere. A result for a job that ended is ignored; one for a deleted job has what it cached removed.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import shutil
import time
import zipfile
from collections.abc import Callable

from app.broker.deletion import Deletion
from app.broker.events import JobEvents
from app.broker.job import Job
from app.broker.planning import Planner
from app.broker.pool import WorkerPool, WorkerState
from app.broker.reader import BundleSums
from app.broker.records import ERASE_FILE, Records
from app.broker.said import Said
from app.broker.search import Searches
from app.broker.store import THUMBS_DIR, VIDEO_FILE, JobStore
from app.shared.storage import disk_errors
from app.wire import protocol as p
from app.wire.protocol import ProtocolError, Task, escape
from constants import Settings
from constants.states import JobState, TaskKind
from features.extract import PhotoFeatures
from logger import logger
from modelization.bundle import BUNDLE_FILE, MANIFEST_FILE, save_bundle

MAX_MANIFEST_BYTES = 64 * 1024 * 1024


class Results:
    def __init__(self, settings: Settings, store: Callable[[], JobStore], planner: Planner, searches: Searches,
                 pool: WorkerPool, records: Records, deletion: Deletion, sums: BundleSums, events: JobEvents,
                 fail: Callable[[str, str, str, dict | None], None], end: Callable[[str], None], said: Said):
        self.s = settings
        self._store = store
        self.planner, self.searches, self.pool = planner, searches, pool
        self.records, self.deletion, self.sums, self.events = records, deletion, sums, events
        self.fail, self.end = fail, end
        self.said = said

    @property
    def store(self) -> JobStore:
        return self._store()

    def on_result(self, worker: WorkerState, command: bytes, header: dict, blobs: list[bytes]) -> None:
        task: Task = header["task"]
        if worker.task != task:
            self.said.warn(f"worker {worker.name}: dropped a result for a task it was not given "
                           f"({task.kind} of job {task.job})")
            return
        worker.task = None
        if worker.since:  # 0: a task adopted from a worker met mid-task, its start unknown here
            self.events.emit("task_finished", task.kind, "done" if command == p.DONE else "failed",
                             time.monotonic() - worker.since)
            worker.since = 0.0
        job = self.store.get(task.job)
        if job is None:  # deleted meanwhile: what the worker cached for it goes too
            logger.info("discarding a late {} result for deleted job {}", task.kind, task.job)
            if command == p.DONE and task.kind == TaskKind.EXTRACT:
                self.discard_features(worker, blobs[0])
            return
        if job.final:
            logger.info("ignoring a late result for job {}", task.job)
            return
        if command == p.FAILED:
            self.fail(task.job, header["code"], header["message"], header["details"])
            return
        try:
            if task.kind == TaskKind.EXTRACT:
                self.on_chunk(task, job, blobs[0])
            elif task.kind == TaskKind.EVALUATE:
                self.searches.tell(task, blobs[0])
            elif task.kind == TaskKind.VIDEO:
                self.on_video(task, blobs[0])
            else:
                self.on_bundle(task, blobs[0])
        except ProtocolError as exc:
            logger.warning("worker {}: a bad {} result for job {}: {}; the task runs again elsewhere",
                           worker.name, task.kind, task.job, escape(exc))
            self.pool.recover(task)

    def discard_features(self, worker: WorkerState, result: bytes) -> None:
        try:
            items = p.decode_json(result, p.MAX_RESULT_BYTES, "features")
            keys = [f.get("key") for f in items if isinstance(f, dict)] if isinstance(items, list) else []
        except ProtocolError:
            return
        self.deletion.drop_cache_entries(keys)
        self.pool.purge([], keys, only=worker)  # the worker's own host, wherever it is

    def on_chunk(self, task: Task, job: Job, result: bytes) -> None:
        n = job.n_new
        expected = min(self.s.chunk_photos, n - task.chunk * self.s.chunk_photos)
        items = p.decode_json(result, p.MAX_RESULT_BYTES, "features")
        if not isinstance(items, list) or len(items) != expected:
            raise ProtocolError(f"expected the features of {expected} photos")
        try:
            for item in items:
                PhotoFeatures.from_wire(item)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"features: {exc}") from None
        hits = sum(1 for item in items if item.get("cached"))
        self.events.emit("chunk_extracted", hits, len(items) - hits)
        done = self.planner.done_chunks(task.job, n)
        if task.chunk not in done:
            self.store.save_chunk(task.job, task.chunk, result)
            done.add(task.chunk)
        if len(done) < self.planner.n_chunks(n):  # (no scan of every chunk per result: 20,000 photos are 1,250)
            extracted = self.planner.extracted(task.job, n)
            self.store.progress(task.job, JobState.EXTRACTING, JobState.EXTRACTING, extracted, n)
            return
        self.planner.after_extraction(job)

    def on_bundle(self, task: Task, bundle: bytes) -> None:
        check_bundle(bundle, task.job)
        with disk_errors():
            folder = save_bundle(self.s.dumps_dir, task.job, bundle)
        if (folder / BUNDLE_FILE).stat().st_size == len(bundle):  # (a re-delivered result keeps the first)
            self.sums.put(task.job, folder / BUNDLE_FILE, hashlib.sha256(bundle).hexdigest())  # fronts ask at once
        job = self.store.get(task.job)
        n_chunks = self.planner.n_chunks(job.n_new if job else 0)
        keys, digests = self.records.erase_list(task.job, n_chunks)
        records = self.records.keep(task.job) if job else []  # what a derivation starts from
        erase = self.s.dumps_dir / task.job / ERASE_FILE
        with disk_errors(erase):  # for DELETE and ERASE
            erase.write_text(json.dumps({"cache_keys": keys, "photos": digests,
                                         "labels": sorted({r["label"] for r in records})}, ensure_ascii=False))
        self.store.finish(task.job)
        self.end(task.job)
        self.events.emit("forget", task.job)
        if not self.s.keep_uploads:
            self.store.delete_uploads(task.job)
        logger.info("job {} done", task.job)


    def on_video(self, task: Task, result: bytes) -> None:
        """A video's tracks and thumbnails: checked, written to dumps/<id>/ (video.json, thumbs/<track>.jpg) in
        one folder renamed into place, then the job is done and its upload (the video) goes."""
        body, thumbs = check_video_result(result)
        folder = self.s.dumps_dir / task.job
        tmp = self.s.dumps_dir / f".{task.job}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with disk_errors(tmp):
            (tmp / THUMBS_DIR).mkdir(parents=True)
            for track, jpeg in zip(body["tracks"], thumbs):
                (tmp / THUMBS_DIR / f"{track['id']}.jpg").write_bytes(jpeg)
            (tmp / VIDEO_FILE).write_text(json.dumps(body, ensure_ascii=False))
            shutil.rmtree(folder, ignore_errors=True)  # a result delivered again replaces the first
            os.rename(tmp, folder)
        self.store.finish(task.job)
        self.end(task.job)
        self.events.emit("forget", task.job)
        if not self.s.keep_uploads:
            self.store.delete_uploads(task.job)
        logger.info("video {} done: {} track(s)", task.job, len(body["tracks"]))


MAX_THUMB_BYTES = 1024 * 1024


def check_video_result(result: bytes) -> tuple[dict, list[bytes]]:
    """A video task's result -> (its JSON without the thumbnails, the thumbnails' JPEGs). ProtocolError for
    anything else than tracks with their fields and one JPEG each."""
    body = p.mapping(p.decode_json(result, p.MAX_RESULT_BYTES, "video result"), "video result")
    tracks, encoded = body.pop("tracks", None), body.pop("thumbnails", None)
    if not isinstance(tracks, list) or not isinstance(encoded, list) or len(tracks) != len(encoded) \
            or len(tracks) > p.MAX_THUMBNAILS:
        raise ProtocolError("a video result holds tracks and one thumbnail each")
    thumbs, ids = [], set()
    for track, b64 in zip(tracks, encoded):
        track = p.mapping(track, "track")
        p.integer(track.get("id"), 1, p.MAX_THUMBNAILS, "track id")
        p.text(track.get("label"), 1000, "track label")
        for name in ("first", "last", "confidence"):
            p.number(track.get(name), 0, 1e9, f"track {name}")
        p.integer(track.get("frames"), 1, 10**9, "track frames")
        p.mapping(track.get("best"), "track best")
        if track["id"] in ids:
            raise ProtocolError("two tracks have the same id")
        ids.add(track["id"])
        try:
            jpeg = base64.b64decode(p.text(b64, 2 * MAX_THUMB_BYTES, "thumbnail"), validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("a thumbnail is not base64") from None
        if not jpeg.startswith(b"\xff\xd8\xff") or len(jpeg) > MAX_THUMB_BYTES:
            raise ProtocolError("a thumbnail is not a JPEG of at most 1 MiB")
        thumbs.append(jpeg)
    body["tracks"] = tracks
    return body, thumbs


def check_bundle(bundle: bytes, job_id: str) -> None:
    """A train result must be a readable bundle of this job (ProtocolError otherwise)."""
    try:
        with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
            info = zf.getinfo(MANIFEST_FILE)
            if info.file_size > MAX_MANIFEST_BYTES:
                raise ProtocolError("the bundle's manifest is too large")
            manifest = json.loads(zf.read(info))
            missing = {"model.keras", "labels.json"} - set(zf.namelist())
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise ProtocolError(f"not a bundle ({escape(exc, 80)})") from None
    if missing:
        raise ProtocolError(f"the bundle lacks {sorted(missing)}")
    if not isinstance(manifest, dict) or manifest.get("model_id") != job_id:
        raise ProtocolError("the bundle belongs to another job")
