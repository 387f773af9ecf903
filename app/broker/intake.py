"""Intake: one path for every new job, a build from photos (SUBMIT) or a derivation of a model (DERIVE).

`admit` makes the quick checks before anything is written (deadline, free disk counting the uploads being
written, the id, a derivation's parent and people, the tenant's quotas); the upload writer then stores the
photos (fsynced) off the loop; `register` writes the job's row, unless its deadline passed or its parent
went meanwhile, and plans its work. A submit the front has stopped waiting for is never kept.
"""
from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from functools import partial

import zmq

from app.broker.events import JobEvents
from app.broker.job import built_model
from app.broker.planning import Planner
from app.broker.records import INHERITED_FILE, Records
from app.broker.store import JobStore
from app.broker.unknown import UnknownFaces
from app.broker.uploads import NewJob, Upload, UploadWriter
from app.wire import protocol as p
from app.wire.protocol import FrontError
from constants import Settings
from logger import logger
from modelization.bundle import BUNDLE_FILE
from preprocessor.uploads import Photo

DERIVED_OPTIONS = ("parent", "inherited", "removed_people")  # options the broker sets, never the front
VIDEO_LABEL = "video"  # the label a video job's one upload is stored under (it names nobody)


class Intake:
    def __init__(self, settings: Settings, store: Callable[[], JobStore], ctx: zmq.Context, planner: Planner,
                 records: Records, events: JobEvents):
        self.s = settings
        self._store = store
        self.planner, self.records, self.events = planner, records, events
        self.storing: dict[str, Upload] = {}  # new jobs whose photos the upload writer is writing
        self.writer = UploadWriter(self.save, ctx)
        self.unknown: UnknownFaces | None = None  # the kept unknown faces, a group of which a DERIVE may name

    @property
    def store(self) -> JobStore:
        return self._store()

    def save(self, job_id: str, photos: list[Photo], inherited: list[dict] | None = None) -> None:
        """In the upload writer's thread: files only, no store connection (SQLite's is the loop's). A derived
        job's inherited records go in the same folder, renamed into place with its photos."""
        JobStore.save_uploads_in(self.s.uploads_dir, job_id, photos, {INHERITED_FILE: inherited} if inherited else None)

    # --- before the photos are written ----------------------------------------------------------------
    def admit(self, command: bytes, header: dict, blobs: list[bytes]) -> NewJob:
        """The quick checks of a SUBMIT or DERIVE -> the job to store."""
        self.check_deadline(header.get("deadline"))
        size = sum(len(b) for b in blobs)
        self.check_room(size)
        if header["id"] in self.storing or self.store.get(header["id"]) is not None or \
                self.store.has_uploads(header["id"]):
            raise FrontError("CONFLICT", "a job with this id exists")
        if command == p.VIDEO:
            job = self.video(header, blobs[0])
            self.check_quotas(job.tenant, size)
            return job
        photos = [Photo(f["label"], f["filename"], b) for f, b in zip(header["files"], blobs)]
        if command == p.DERIVE:
            job = self.derivation(header, photos)
        else:
            job = NewJob(header["id"], header.get("name"), header.get("options", {}), None, header.get("tenant"),
                         [], photos, header.get("callback"), header.get("deadline"), {"id": header["id"]})
        try:
            self.check_quotas(job.tenant, size)
        except FrontError:
            self.release(job.id)
            raise
        return job

    def release(self, job_id: str) -> None:
        """A derivation that names a group of unknown faces was refused: the group waits again."""
        if self.unknown is not None:
            self.unknown.namings.release(job_id)

    def begin(self, identity: bytes, job: NewJob) -> None:
        """Its photos to the writer; the front is answered once they are on disk (`on_stored`)."""
        self.storing[job.id] = Upload(identity, job)
        self.writer.put(job)

    def video(self, header: dict, data: bytes) -> NewJob:
        """A VIDEO's model checked (built, a model and not a video, of the caller's tenant, its bundle on disk)
        -> the video job, which belongs to the model's tenant."""
        model = header["model"]
        row = built_model(self.store, model, header.get("tenant"))
        if not (self.s.dumps_dir / model / BUNDLE_FILE).exists():
            raise FrontError("GONE", f"the files of model {model} are missing")
        name = header.get("name") or "video"
        options = {"model": model, "fps": header["fps"], "bytes": len(data)}
        return NewJob(header["id"], name, options, None, row.tenant, [], [Photo(VIDEO_LABEL, "video", data)],
                      header.get("callback"), header.get("deadline"),
                      {"id": header["id"], "model": model, "fps": header["fps"]}, kind="video")

    def derivation(self, header: dict, photos: list[Photo]) -> NewJob:
        """A DERIVE's parent (built, of the caller's tenant, with its photos' features kept) and the people to
        remove, checked. The new model belongs to its parent's tenant and keeps its split's seed."""
        parent = header["parent"]
        row = built_model(self.store, parent, header.get("tenant"))
        records = self.records.of_model(parent)
        if records is None:
            raise FrontError("NOT_DERIVABLE", f"model {parent} was built before models kept their photos' features: "
                             "build it again to derive from it")
        remove = list(dict.fromkeys(header.get("remove", [])))
        held = {r["label"] for r in records}
        unknown = [label for label in remove if label not in held]
        if unknown:
            raise FrontError("UNKNOWN_PERSON", f"{unknown[0]!r} is not a person of model {parent}")
        keep = [r for r in records if r["label"] not in remove]
        options = {k: v for k, v in header.get("options", {}).items() if k not in DERIVED_OPTIONS}
        options.setdefault("seed", row.options.get("seed", self.s.default_seed))  # the parent's split
        if row.options.get("keep_unknown"):  # a model that keeps unknown faces is derived into one that does
            options.setdefault("keep_unknown", True)
        named = header.get("unknown")
        if named is not None:  # a group of unknown faces named: their embeddings are the new records
            if self.unknown is None:
                raise FrontError("NOT_FOUND", "this broker keeps no unknown faces")
            claimed = self.unknown.namings.claim(parent, named.get("cluster"), named["label"], header["id"],
                                         named.get("faces"))
            keep = keep + claimed
        try:
            job = self.compose(header["id"], header.get("name"), options, parent, keep, photos, len(remove),
                               row.tenant, header.get("callback"), header.get("deadline"))
        except FrontError:
            self.release(header["id"])
            raise
        if named is not None:
            job.answer["named"] = {"cluster": named.get("cluster"), "label": named["label"], "faces": len(claimed)}
        return job

    def compose(self, job_id: str, name: str | None, options: dict, parent: str | None, inherited: list[dict],
                photos: list[Photo], removed_people: int, tenant: str | None, callback: dict | None,
                deadline: float | None = None) -> NewJob:
        """A job made of inherited records and new photos, checked (nothing written). A new photo identical to
        one the job inherits for the same person is left out (listed in `duplicates`)."""
        seen = {(r["label"], r.get("sha256")) for r in inherited}
        fresh, duplicates = [], []
        for photo in photos:
            key = (photo.label, hashlib.sha256(photo.data).hexdigest())
            if key in seen:
                duplicates.append(photo.filename)
            else:
                seen.add(key)
                fresh.append(photo)
        if photos and not fresh and not removed_people:
            raise FrontError("NO_NEW_PHOTOS", "every photo sent is already in the model")
        old_people = {r["label"] for r in inherited}
        people = old_people | {p.label for p in fresh}
        if len(people) < 2:
            raise FrontError("TOO_FEW_PEOPLE", f"the model would hold {len(people)} person: a recognizer needs 2")
        total = len(inherited) + len(fresh)
        if total > self.s.max_files:
            raise FrontError("TOO_MANY_FILES", f"the model would hold {total} photos; at most {self.s.max_files}")
        if parent is not None:
            options = {**options, "parent": parent, "inherited": len(inherited)}
            if removed_people:
                options["removed_people"] = removed_people
        answer = {"id": job_id, "parent": parent, "photos": total, "people": len(people),
                  "added": {"photos": len(fresh), "people": len(people - old_people)},
                  "removed": {"people": removed_people}, "duplicates": duplicates[:200]}
        return NewJob(job_id, name, options, parent, tenant, inherited, fresh, callback, deadline, answer)

    def check_room(self, size: int) -> None:
        """Room for `size` bytes of photos, counting the uploads being written, or INSUFFICIENT_STORAGE."""
        free = shutil.disk_usage(self.s.uploads_dir).free - sum(u.job.size for u in self.storing.values())
        if free - 2 * size < self.s.min_free_bytes:  # the photos, then their features and the model
            raise FrontError("INSUFFICIENT_STORAGE", f"not enough free disk for {size} bytes of photos "
                                                     f"({free} bytes free, {self.s.min_free_bytes} kept in reserve)")

    def check_quotas(self, tenant: str | None, size: int) -> None:
        """A tenant's unfinished builds (FR_MAX_ACTIVE_BUILDS) and stored bytes (FR_TENANT_MAX_BYTES), each
        counting its uploads still being written: those have no row yet, and a burst of submits must not pass
        the check together (the loop admits one at a time, so counting them makes the check atomic)."""
        writing = [u.job for u in self.storing.values() if u.job.tenant == tenant]
        active = self.store.active_jobs(tenant) + len(writing)
        if active >= self.s.max_active_builds:
            raise FrontError("TOO_MANY_BUILDS", f"{active} builds of this tenant are still running or being stored "
                                                f"(FR_MAX_ACTIVE_BUILDS={self.s.max_active_builds}); try again later")
        if self.s.tenant_max_bytes:
            stored = self.store.stored_bytes(tenant, self.s.dumps_dir) + sum(job.size for job in writing) + \
                (self.unknown.bytes_of(tenant) if self.unknown is not None else 0)
            if stored + size > self.s.tenant_max_bytes:
                raise FrontError("QUOTA_EXCEEDED", f"this tenant stores {stored} bytes; {size} more would pass its "
                                                   f"quota of {self.s.tenant_max_bytes} (FR_TENANT_MAX_BYTES): "
                                                   "delete models it no longer needs")

    @staticmethod
    def check_deadline(deadline: float | None) -> None:
        """A submit the front has stopped waiting for must not be stored (its client never learns the id)."""
        if deadline is not None and time.time() > deadline - 1.0:
            raise FrontError("DEADLINE_PASSED", "the upload took too long to store; nothing was kept")

    # --- once the photos are on disk ------------------------------------------------------------------
    def on_stored(self, reply: Callable[[bytes, Callable[[], dict | None]], None],
                  refuse: Callable[[bytes, dict], None]) -> None:
        """The upload writer finished some jobs' photos: register them and answer their fronts."""
        while True:
            try:
                job_id, error = self.writer.results.recv_json(zmq.NOBLOCK)
            except zmq.Again:
                return
            upload = self.storing.pop(job_id, None)
            if upload is None:
                continue
            if error is None and upload.cancelled:
                self.store.delete_uploads(job_id)
                error = {"code": "CONFLICT", "message": "a person in this upload was erased while it was stored; "
                                                        "nothing was kept"}
            if error is None:
                reply(upload.identity, partial(self.register, upload.job))
            else:
                self.release(job_id)
                refuse(upload.identity, error)

    def register(self, job: NewJob) -> dict:
        """Its photos are on disk (fsynced): the job's row, unless its deadline passed or its parent went
        meanwhile (an erasure while the photos were written: what it inherited may hold the person), then its
        work. -> the answer to the front."""
        try:
            self.check_deadline(job.deadline)
            if job.parent is not None and job.inherited and self.store.get(job.parent) is None:
                raise FrontError("NOT_FOUND", f"model {job.parent} was deleted while this was stored; nothing was "
                                              "kept")
            self.events.emit("registering", job.id, job.callback)
            self.store.create(job.id, job.name, job.options, job.n_photos, len(job.labels), job.tenant, job.kind)
            if self.unknown is not None:
                self.unknown.namings.named(job.id)  # a named group's faces leave the waiting ones with the row
        except BaseException:
            self.store.delete_uploads(job.id)
            self.events.emit("register_failed", job.id)
            raise
        self.planner.plan(job.id)
        if job.kind == "video":
            logger.info("video {} queued: {} bytes through model {}", job.id, job.size, job.options["model"])
        elif job.parent is not None:
            logger.info("job {} derived from {}: {} photos inherited, {} added, {} people removed", job.id,
                        job.parent, len(job.inherited), len(job.fresh), job.answer["removed"]["people"])
        else:
            logger.info("job {} queued: {} photos of {} people", job.id, job.n_photos, len(job.labels))
        return job.answer

    def create(self, job: NewJob) -> dict:
        """Store and register a job at once, on the loop (an erasure's rebuilds; tests)."""
        self.save(job.id, job.fresh, job.inherited)
        return self.register(job)

    def stop(self) -> None:
        self.writer.stop()
