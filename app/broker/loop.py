"""The load-balancing broker: the front submits jobs, idle workers get tasks.

A job is cut into tasks so that every worker can help with one build:
`extract` tasks (a chunk of photos -> their embeddings), then, with optimize=1,
`evaluate` tasks (one genome of the genetic search each: the broker runs the
NSGA-II state machine of optimization/evolution.py, workers train candidates),
then one `train` task (all embeddings -> the model bundle). One loop, one
thread, the only writer of the job store.

Trust: both sockets are CURVE servers (app/wire/curve.py): only the service's own
fronts reach the front socket, only allowed workers the back one, and a key
removed from `allowed/` is refused on its next message. Every message is checked
against its schema (app/wire/protocol.py) before anything reads it; a result counts
only from the worker its task was given to, for that job and kind of task. A
message that does not fit is logged (escaped) and dropped: no message, and no
failing disk or store, stops the loop.

Crash recovery is part of the design: a job is durable (SQLite + files) before
the front gets its id; each finished chunk's embeddings are written to disk; a
worker that misses its heartbeats loses its task back to the head of the queue;
a broker that starts queues again whatever is unfinished. The search is
checkpointed after every result and resumes from its last state.
"""
from __future__ import annotations

import hashlib
import io
import json
import queue
import shutil
import sqlite3
import threading
import time
import uuid
import zipfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import zmq

from app.broker import webhooks
from app.broker.derivation import ERASE_FILE, INHERITED_FILE, Derivations, as_task_features
from app.broker.reader import BundleSums, start_readers
from app.broker.store import JobStore
from app.shared import metrics
from app.shared.api_keys import KeyStore
from app.shared.jobs import job_view
from app.shared.storage import StorageFull, StoreUnavailable, disk_errors
from app.wire import protocol as p
from app.wire.curve import FRONTS, WORKERS, BrokerAuth
from app.wire.protocol import FrontError, ProtocolError, Task, escape
from constants import Settings
from constants.states import TASK_STATE, JobState, TaskKind
from features.extract import PhotoFeatures
from logger import logger
from modelization.bundle import BUNDLE_FILE, MANIFEST_FILE, save_bundle
from optimization.evolution import Controls, Evolution
from preprocessor.uploads import Photo

MAX_MANIFEST_BYTES = 64 * 1024 * 1024
DISK_RETRY_S = 5.0          # a broker stalled by a full disk looks for room this often
MIN_ROOM = 16 * 1024 * 1024  # ... and resumes once this much is free
MAX_PENDING_READS = 10_000   # fronts' reads waiting for a reader thread; beyond, BUSY (503)


@dataclass
class Upload:
    """A submit (or derivation) being written: who to answer, and what to register once the photos are on disk."""
    identity: bytes
    header: dict
    photos: list[Photo]
    size: int
    register: Callable[[], dict] | None = None  # a derivation's (Derivations.register_job); None: a submit's
    inherited: list[dict] = field(default_factory=list)  # a derivation's records taken from its parent
    tenant: str | None = None  # whose job it will be (a derivation: its parent's tenant)
    cancelled: bool = False  # an erasure of someone it holds came meanwhile: refused once written

    @property
    def labels(self) -> set[str]:
        return {ph.label for ph in self.photos} | {r["label"] for r in self.inherited}


class UploadWriter:
    """One thread that writes submits' photos (one fsynced pack each) so that the broker's loop never
    waits on a disk write of up to FR_MAX_REQUEST_BYTES; each result goes back on an inproc socket the
    loop polls: (job id, None) or (job id, the ERR header to answer)."""

    def __init__(self, write: Callable[[str, list[Photo], list[dict] | None], None], ctx: zmq.Context):
        self.write = write
        self.address = f"inproc://broker-uploads-{uuid.uuid4().hex}"
        self.results = ctx.socket(zmq.PULL)
        self.results.bind(self.address)
        self.ctx = ctx
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self.run, daemon=True, name="upload-writer")
        self.thread.start()

    def put(self, job_id: str, photos: list[Photo], inherited: list[dict] | None = None) -> None:
        """Write a job's photos (and, for a derivation, the records it inherits) in the background."""
        self.queue.put((job_id, photos, inherited))

    def run(self) -> None:
        out = self.ctx.socket(zmq.PUSH)
        out.connect(self.address)
        try:
            while (item := self.queue.get()) is not None:
                job_id, photos, inherited = item
                error = None
                try:
                    self.write(job_id, photos, inherited)
                except StorageFull:
                    error = {"code": "INSUFFICIENT_STORAGE", "message": "the data disk is full; nothing was stored"}
                except Exception as exc:
                    logger.exception("storing the photos of job {} failed", job_id)
                    error = {"code": "INTERNAL", "message": type(exc).__name__}
                out.send_json([job_id, error])
        finally:
            out.close()

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join(10)
        self.results.close(0)


@dataclass
class WorkerState:
    identity: bytes
    key: str            # the CURVE public key it authenticated with (z85)
    last_seen: float
    task: Task | None = None
    warming: bool = False  # still loading its models (it takes tasks meanwhile)
    since: float = 0.0     # when its task was handed out (metrics: task durations)

    @property
    def name(self) -> str:
        return escape(self.identity, 80)


class Broker(Derivations):
    def __init__(self, settings: Settings, ctx: zmq.Context | None = None):
        self.s = settings
        settings.ensure_dirs()
        self.ctx = ctx or zmq.Context.instance()
        self.auth = BrokerAuth(self.ctx, settings.keys_dir)
        self.front = self.ctx.socket(zmq.ROUTER)
        self.back = self.ctx.socket(zmq.ROUTER)
        self.auth.serve(self.front, FRONTS)
        self.auth.serve(self.back, WORKERS)
        p.tune(self.front, settings.heartbeat_s, max(settings.max_photo_bytes, p.MAX_HEADER_BYTES))
        p.tune(self.back, settings.heartbeat_s, p.MAX_RESULT_BYTES)
        self.front.bind(settings.front_endpoint)
        if settings.front_endpoint.startswith("ipc://"):
            Path(settings.front_endpoint[len("ipc://"):]).chmod(0o600)
        if settings.broker_front_tcp:  # fronts on other hosts (CURVE: only keys in allowed/fronts/)
            self.front.bind(settings.broker_front_tcp)
        self.back.bind(settings.broker_back)
        self.keystore = KeyStore(settings.auth_db_path)
        self.sums = BundleSums()
        self.reads, self.readers = start_readers(settings, self.ctx, self.sums, settings.broker_readers)
        self.idle_readers: deque[bytes] = deque()
        self.storing: dict[str, Upload] = {}  # submits whose photos the upload writer is writing
        self.writer = UploadWriter(self.store_uploads, self.ctx)
        self.stored = self.writer.results
        self.pending_reads: deque[list[bytes]] = deque()  # reads waiting for a free reader
        self.workers: dict[bytes, WorkerState] = {}
        self.queue: deque[Task] = deque()
        self.searches: dict[str, Evolution] = {}   # jobs in or past their genetic search
        self.payloads: dict[str, bytes] = {}       # job -> all its features (JSON), for evaluate/train tasks
        self._done: dict[str, set[int]] = {}       # job -> chunks whose features are on disk (done_chunks)
        self._indexes: dict[str, list[dict]] = {}  # job -> its photo index (index)
        self._inherited: dict[str, list[dict]] = {}  # job -> the records it took from its parent (inherited)
        self.running = True
        self._said: dict[str, float] = {}          # rate limit of repeated error lines
        self._store: JobStore | None = None
        self._store_retry = 0.0
        self.stalled_until: float | None = None    # the disk is full: no work handed out until then
        self.sender = webhooks.Sender(settings)    # delivers callbacks from var/webhooks.sqlite, in its own thread
        self._webhooks: webhooks.WebhookStore | None = None
        try:
            self.open_store()
        except StoreUnavailable as exc:
            logger.error("{}; retrying, builds are refused meanwhile", exc)

    # --- the store, reopened when it comes back ---------------------------------------------
    def open_store(self) -> JobStore:
        """Open the store and queue again every unfinished job (start, or the store came back)."""
        store = JobStore(self.s.db_path, self.s.uploads_dir)
        self._store = store
        swept = store.sweep_uploads(keep_done=self.s.keep_uploads, busy=frozenset(self.storing)) + \
            store.sweep_models(self.s.dumps_dir)
        if swept:
            logger.info("removed {} folder(s) left behind by a stop: {}", len(swept), swept[:5])
        unfinished = store.unfinished()
        for job_id in unfinished:
            self.plan(job_id)
        if unfinished:
            logger.info("queued {} unfinished job(s) again from the store", len(unfinished))
        return store

    @property
    def store(self) -> JobStore:
        if self._store is None:
            if time.monotonic() < self._store_retry:
                raise StoreUnavailable("the job store is unavailable")
            self._store_retry = time.monotonic() + 5.0
            return self.open_store()
        return self._store

    # --- inspection ----------------------------------------------------------
    def status(self) -> dict:
        busy = sum(1 for w in self.workers.values() if w.task)
        body = {"workers": len(self.workers), "busy": busy, "idle": len(self.workers) - busy,
                "warming": sum(1 for w in self.workers.values() if w.warming),
                "queued": len({t.job for t in self.queue}), "tasks_queued": len(self.queue),
                "searches": len([e for e in self.searches.values() if not e.done]),
                "disk_free_bytes": shutil.disk_usage(self.s.data_dir).free, "disk_full": self.stalled_until is not None,
                "store": {"ok": True}}
        try:
            body["builds"] = self.store.count_by_state()  # for /metrics of fronts on any host
        except StoreUnavailable as exc:
            body["store"] = {"ok": False, "message": str(exc)}
        return body

    # --- the loop --------------------------------------------------------------
    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        poller.register(self.reads, zmq.POLLIN)
        poller.register(self.stored, zmq.POLLIN)
        next_beat = time.monotonic()
        self.sender.start()
        logger.info("broker up: front {}{} back {}", self.s.front_endpoint,
                    f" and {self.s.broker_front_tcp}" if self.s.broker_front_tcp else "", self.s.broker_back)
        while self.running:
            events = dict(poller.poll(timeout=int(self.s.heartbeat_s * 1000 / 2)))
            if self.back in events:
                self.safely(self.on_worker, self.back.recv_multipart(copy=False))
            if self.front in events:
                self.safely(self.on_front, self.front.recv_multipart(copy=False))
            if self.reads in events:
                self.safely(self.on_read_answer)
            if self.stored in events:
                self.safely(self.on_stored)
            if time.monotonic() >= next_beat:
                self.safely(self.beat)
                next_beat = time.monotonic() + self.s.heartbeat_s
            self.safely(self.dispatch)

    def safely(self, handler: Callable, *args) -> None:
        """Run one step of the loop; whatever it raises is logged (once per 10 s per kind), never fatal.
        A full disk stalls the work until there is room again (`stall`)."""
        try:
            handler(*args)
        except StorageFull:
            self.stall()
        except Exception as exc:
            what = f"{handler.__name__}: {type(exc).__name__}: {escape(exc, 300)}"
            now = time.monotonic()
            if now - self._said.get(what, 0.0) >= 10.0:
                self._said[what] = now
                if isinstance(exc, (StoreUnavailable, StorageFull, ProtocolError)):
                    logger.error(what)
                else:
                    logger.exception(what)

    def stall(self) -> None:
        """The data disk is full: hand out no work; running builds wait. What a step could not write
        (a chunk's features, a state, a bundle) is redone once there is room (`resume`)."""
        if self.stalled_until is None:
            logger.error("the data disk is full: builds wait until there is room (checked every {:.0f} s)",
                         DISK_RETRY_S)
        self.stalled_until = time.monotonic() + DISK_RETRY_S

    def resume(self) -> None:
        """Room again: plan every unfinished job anew from the store, as a restart does."""
        if self.stalled_until is None or time.monotonic() < self.stalled_until:
            return
        if shutil.disk_usage(self.s.data_dir).free < MIN_ROOM:
            self.stalled_until = time.monotonic() + DISK_RETRY_S
            return
        held = {w.task.what for w in self.workers.values() if w.task}
        self.queue = deque()
        for job_id in self.store.unfinished():
            self.plan(job_id)
        self.queue = deque(t for t in self.queue if t.what not in held)
        self.stalled_until = None
        logger.info("the data disk has room again: {} task(s) queued", len(self.queue))

    def store_uploads(self, job_id: str, photos: list[Photo], inherited: list[dict] | None = None) -> None:
        """In the upload writer's thread: files only, no store connection (SQLite's is the loop's). A derived
        job's inherited records go in the same folder, renamed into place with its photos."""
        JobStore.save_uploads_in(self.s.uploads_dir, job_id, photos, {INHERITED_FILE: inherited} if inherited else None)

    def close(self) -> None:
        self.sender.stop()
        if self._webhooks is not None:
            self._webhooks.close()
        self.writer.stop()
        for reader in self.readers:
            reader.running = False
        for reader in self.readers:
            reader.join(2)
        self.reads.close(0)
        self.front.close(0)
        self.back.close(0)
        self.auth.stop()
        if self._store is not None:
            self._store.close()

    # --- planning: which tasks a job still needs ----------------------------------
    def n_chunks(self, n_photos: int) -> int:
        return -(-n_photos // self.s.chunk_photos)

    def missing_chunks(self, job_id: str, n_photos: int) -> list[int]:
        done = self.done_chunks(job_id, n_photos)
        return [k for k in range(self.n_chunks(n_photos)) if k not in done]

    def done_chunks(self, job_id: str, n_photos: int) -> set[int]:
        """The chunks of a job whose features are on disk, read once per job and then kept in memory (a
        result is checked against this set, not against the disk, so a task costs no directory scan).
        Feature files are written without fsync (they can be made again): one that a crash left empty or
        cut short is removed here and its chunk extracted again."""
        done = self._done.get(job_id)
        if done is None:
            done = set()
            for k in range(self.n_chunks(n_photos)):
                if self.store.chunk_done(job_id, k):
                    try:
                        self.store.load_chunk(job_id, k)
                        done.add(k)
                    except (OSError, ValueError):
                        logger.warning("job {}: features of chunk {} unreadable; extracting them again", job_id, k)
                        self.store.drop_chunk(job_id, k)
            self._done[job_id] = done
        return done

    def index(self, job_id: str) -> list[dict]:
        """A job's photo index, read once per job (OSError if its uploads are gone)."""
        index = self._indexes.get(job_id)
        if index is None:
            index = self._indexes[job_id] = self.store.load_index(job_id)
        return index

    def photos_extracted(self, n_photos: int, missing: list[int]) -> int:
        """Photos in finished chunks (the last chunk may be short)."""
        size = self.s.chunk_photos
        return n_photos - sum(min(size, n_photos - k * size) for k in missing)

    def plan(self, job_id: str) -> None:
        """Queue the job's missing work: extract tasks for chunks without results, else training."""
        row = self.store.get(job_id)
        if row is None or JobState(row["state"]).final:
            return
        if not self.store.has_uploads(job_id):
            self.fail(job_id, "UPLOAD_LOST", "the uploaded photos of this job are gone")
            return
        n = self.n_new(row)
        missing = self.missing_chunks(job_id, n)
        if missing:
            self.queue.extend(Task(job_id, TaskKind.EXTRACT, k) for k in missing)
            done = self.photos_extracted(n, missing)
            if done:
                self.store.progress(job_id, JobState.EXTRACTING, JobState.EXTRACTING, done, n)
        else:
            self.after_extraction(job_id, row)

    def after_extraction(self, job_id: str, row) -> None:
        """All features are in: search first (optimize=1), else train."""
        options = json.loads(row["options"])
        if options.get("optimize"):
            self.start_search(job_id, options)
        else:
            self.store.progress(job_id, JobState.TRAINING, JobState.TRAINING, 0, self.s.max_epochs)
            self.queue.appendleft(Task(job_id, TaskKind.TRAIN))  # finish started jobs first

    # --- the genetic search --------------------------------------------------------
    def start_search(self, job_id: str, options: dict) -> None:
        """Resume the job's search from its checkpoint, or begin it."""
        state = self.store.load_search(job_id)
        if state is not None:
            evolution = Evolution.from_json(state)
            logger.info("job {}: search resumed at generation {} ({} evaluations)", job_id,
                        evolution.generation, evolution.evaluations)
        else:
            evolution = Evolution(Controls(
                population=int(options.get("population", self.s.search_population)),
                generations=int(options.get("generations", self.s.search_generations)),
                budget_s=float(options.get("time_budget", self.s.search_budget_s)),
                seed=int(options.get("seed", self.s.default_seed)), epsilon=self.s.search_epsilon,
                finalists=self.s.search_finalists, folds=self.s.search_folds,
                confirm_share=self.s.search_confirm_share))
        self.searches[job_id] = evolution
        self.search_step(job_id)

    def search_step(self, job_id: str) -> None:
        """Advance the search as far as results allow, checkpoint it, queue what it needs next."""
        evolution = self.searches[job_id]
        while not evolution.done and not evolution.needed():
            evolution.advance()  # a batch fully answered from the fitness cache moves on at once
        self.store.save_search(job_id, evolution.to_json())
        progress = evolution.progress()
        if evolution.done:
            self.queue = deque(t for t in self.queue if not (t.job == job_id and t.kind == TaskKind.EVALUATE))
            self.store.progress(job_id, JobState.TRAINING, JobState.TRAINING, 0, 1, progress)
            if not any(t.job == job_id and t.kind == TaskKind.TRAIN for t in self.queue):
                self.queue.appendleft(Task(job_id, TaskKind.TRAIN))
            logger.info("job {}: search finished ({}), {} evaluations in {:.1f} s", job_id,
                        evolution.stop_reason, evolution.evaluations, evolution.seconds())
            return
        pending = {t.genome for t in self.queue if t.job == job_id} | {
            w.task.genome for w in self.workers.values() if w.task and w.task.job == job_id}
        self.queue.extend(Task(job_id, TaskKind.EVALUATE, genome=k) for k in evolution.needed() if k not in pending)
        if progress["phase"] == "confirming":  # the finalists' cross-validation
            done, total = progress["fold_evaluations"], progress["fold_evaluations_planned"]
            stage = f"cross-validating {progress['finalists']} finalists: {done} of {total}"
        else:
            done, total = progress["generation"], evolution.controls.generations
            stage = f"generation {done} of {total}"
        self.store.progress(job_id, JobState.OPTIMIZING, stage, done, total, progress)

    def check_budgets(self) -> None:
        for job_id, evolution in list(self.searches.items()):
            if evolution.check_budget():
                self.search_step(job_id)

    # --- front -----------------------------------------------------------------
    def on_front(self, frames: list[zmq.Frame]) -> None:
        if len(frames) < 3 or frames[1].bytes != b"":
            logger.warning("front: dropped a message that is not a request envelope")
            return
        if not self.auth.allowed[FRONTS].permits(str(frames[-1].get("User-Id"))):
            logger.warning("front: dropped a message from a key that is no longer allowed")
            return
        identity, msg = frames[0].bytes, [f.bytes for f in frames[2:]]
        try:
            command, header, blobs = p.parse_front(msg, self.s)
        except ProtocolError as exc:
            logger.warning("front: refused a request: {}", escape(exc))
            self.front.send_multipart([identity, b"", *p.pack(p.ERR, {"code": "BAD_REQUEST",
                                                                      "message": escape(exc)})])
            return
        self.reply(identity, lambda: self.serve_front(identity, command, header, blobs))

    def serve_front(self, identity: bytes, command: bytes, header: dict, blobs: list[bytes]) -> dict | None:
        """A checked front request -> its answer, or None when it is answered later: reads by a reader
        thread (app/broker/reader.py), submits once the upload writer has stored their photos (`on_stored`)."""
        if command in p.READ_COMMANDS:
            if len(self.pending_reads) >= MAX_PENDING_READS:
                raise FrontError("BUSY", "the broker has too many reads waiting; try again")
            self.pending_reads.append([identity, command, json.dumps(header).encode()])
            self.hand_reads()
            return None
        if command == p.SUBMIT:
            photos = self.admit(header, blobs)
            self.storing[header["id"]] = Upload(identity, header, photos, sum(len(b) for b in blobs),
                                                tenant=header.get("tenant"))
            self.writer.put(header["id"], photos)
            return None
        if command == p.DERIVE:
            job = self.admit_derive(header, blobs)
            self.storing[job.id] = Upload(identity, header, job.fresh, sum(len(ph.data) for ph in job.fresh),
                                          partial(self.register_job, job), job.inherited, job.tenant)
            self.writer.put(job.id, job.fresh, job.inherited)
            return None
        if command == p.ERASE:
            return self.erase(header["label"], header["tenant"])
        if command == p.STATUS:
            return self.status()
        if command == p.KEYADD:
            return {"key": self.add_key(header)}
        if command == p.KEYREVOKE:
            return {"id": header["id"], "revoked": self.keystore.revoke(header["id"])}
        if command == p.KEYLIST:
            return {"keys": self.keystore.list(header.get("tenant"))}
        return self.delete(header["id"], header.get("tenant"))

    def add_key(self, header: dict) -> dict:
        """A key a front made (its hash: the secret never reaches the broker)."""
        if self.keystore.lookup(header["id"]) is not None:  # ids are random: this is a replay
            raise FrontError("CONFLICT", "a key with this id exists")
        return self.keystore.add(header["id"], header["tenant"], header["role"], header.get("name"),
                                 bytes.fromhex(header["salt"]), bytes.fromhex(header["hash"]))

    def on_read_answer(self) -> None:
        """A reader's answers go back to the fronts that asked (the loop alone owns the front socket); the
        reader is free again."""
        while True:
            try:
                reader, *frames = self.reads.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if frames != [b"READY"]:
                self.front.send_multipart(frames)
            self.idle_readers.append(reader)
        self.hand_reads()

    def hand_reads(self) -> None:
        """Waiting reads to idle readers, the longest idle first."""
        while self.pending_reads and self.idle_readers:
            self.reads.send_multipart([self.idle_readers.popleft(), *self.pending_reads.popleft()])

    def submit(self, header: dict, blobs: list[bytes]) -> dict:
        """Store a job durably, then queue its work, in one go (the loop itself stores in the background:
        `admit`, the upload writer, `register`). Refused (nothing left behind) when its deadline passes
        first, when the disk would fill, or when the id is taken."""
        photos = self.admit(header, blobs)
        self.store.save_uploads(header["id"], photos)
        return self.register(header, photos)

    def admit(self, header: dict, blobs: list[bytes]) -> list[Photo]:
        """The quick checks of a submit, before its photos are written: deadline, free disk (counting the
        uploads being written), the id, the tenant's quotas. -> the photos to store."""
        job_id = header["id"]
        self.check_deadline(header.get("deadline"))
        size = sum(len(b) for b in blobs)
        self.check_room(size)
        if job_id in self.storing or self.store.get(job_id) is not None or self.store.has_uploads(job_id):
            raise FrontError("CONFLICT", "a job with this id exists")
        self.check_quotas(header.get("tenant"), size)
        return [Photo(f["label"], f["filename"], b) for f, b in zip(header["files"], blobs)]

    def register(self, header: dict, photos: list[Photo]) -> dict:
        """The photos are on disk (fsynced): the job's row, unless its deadline passed meanwhile, then its work."""
        job_id = header["id"]
        try:
            self.check_deadline(header.get("deadline"))
            n_people = len({ph.label for ph in photos})
            self.webhooks_call("subscribe", job_id, header.get("callback"))
            self.store.create(job_id, header.get("name"), header.get("options", {}), len(photos), n_people,
                              header.get("tenant"))
        except BaseException:
            self.store.delete_uploads(job_id)
            self.webhooks_call("forget", job_id)
            raise
        self.plan(job_id)
        logger.info("job {} queued: {} photos of {} people", job_id, len(photos), n_people)
        return {"id": job_id}

    def on_stored(self) -> None:
        """The upload writer finished some submits: register them and answer their fronts."""
        while True:
            try:
                job_id, error = self.stored.recv_json(zmq.NOBLOCK)
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
                self.reply(upload.identity, upload.register or partial(self.register, upload.header, upload.photos))
            else:
                self.front.send_multipart([upload.identity, b"", *p.pack(p.ERR, error)])

    def reply(self, identity: bytes, answer: Callable[[], dict | None]) -> None:
        """Answer a front with OK and what `answer` returns (nothing yet if None), or ERR with the code of
        what it raised."""
        try:
            body = answer()
            if body is None:
                return
            frames = p.pack(p.OK, body)
        except FrontError as exc:
            frames = p.pack(p.ERR, {"code": exc.code, "message": exc.message})
        except StoreUnavailable as exc:
            frames = p.pack(p.ERR, {"code": "STORE_UNAVAILABLE", "message": str(exc)})
        except StorageFull:
            frames = p.pack(p.ERR, {"code": "INSUFFICIENT_STORAGE", "message": "the data disk is full"})
        except Exception as exc:  # never let one request take the broker down
            logger.exception("front request failed")
            frames = p.pack(p.ERR, {"code": "INTERNAL", "message": f"{type(exc).__name__}"})
        self.front.send_multipart([identity, b"", *frames])

    def check_quotas(self, tenant: str | None, size: int) -> None:
        """A tenant's unfinished builds (FR_MAX_ACTIVE_BUILDS) and stored bytes (FR_TENANT_MAX_BYTES)."""
        active = self.store.active_jobs(tenant)
        if active >= self.s.max_active_builds:
            raise FrontError("TOO_MANY_BUILDS", f"{active} builds of this tenant are still running "
                                                f"(FR_MAX_ACTIVE_BUILDS={self.s.max_active_builds}); try again later")
        if self.s.tenant_max_bytes:
            stored = self.store.stored_bytes(tenant, self.s.dumps_dir)
            if stored + size > self.s.tenant_max_bytes:
                raise FrontError("QUOTA_EXCEEDED", f"this tenant stores {stored} bytes; {size} more would pass its "
                                                   f"quota of {self.s.tenant_max_bytes} (FR_TENANT_MAX_BYTES): "
                                                   "delete models it no longer needs")

    @staticmethod
    def check_deadline(deadline: float | None) -> None:
        """A submit the front has stopped waiting for must not be stored (its client never learns the id)."""
        if deadline is not None and time.time() > deadline - 1.0:
            raise FrontError("DEADLINE_PASSED", "the upload took too long to store; nothing was kept")

    def delete(self, job_id: str, tenant: str | None = None, purge_cache: bool = True) -> dict:
        """Erase a job: its queued tasks, row, uploads, model folder, callback and cached features (here, and
        on every connected worker's host; not with `purge_cache=False`, when an erasure purges one person's).
        With `tenant`, only a job of that tenant."""
        row = self.store.get(job_id)
        if tenant is not None and row is not None and row["tenant"] != tenant:
            raise FrontError("NOT_FOUND", f"no model with id {job_id}")
        self.queue = deque(t for t in self.queue if t.job != job_id)
        self.forget(job_id)
        keys, digests = self.erase_list(job_id, self.n_new(row) if row else 0) if purge_cache else ([], [])
        # the row goes first: from then on the job is "not found" everywhere, never a model with files
        # half gone (a restart sweeps whatever files a crash here would leave)
        self.store.delete(job_id)
        self.sums.forget(job_id)
        removed = {"job": row is not None,
                   "model": self.store.delete_model(self.s.dumps_dir, job_id),
                   "uploads": self.store.has_uploads(job_id),
                   "cached_features": self.drop_cache_entries(keys)}
        self.purge_workers(digests, keys)
        self.webhooks_call("forget", job_id)
        self.store.delete_uploads(job_id)
        logger.info("job {} deleted: {}", job_id, removed)
        return {"id": job_id, "removed": removed}

    def erase_list(self, job_id: str, n_photos: int) -> tuple[list[str], list[str]]:
        """(feature-cache keys, photo digests) of a job: from its model folder, or from its uploads."""
        saved = self.s.dumps_dir / job_id / ERASE_FILE
        if saved.exists():
            erase = json.loads(saved.read_text())
            return erase["cache_keys"], erase["photos"]
        old = self.s.dumps_dir / job_id / "cache_keys.json"  # models built by 0.1.0
        if old.exists():
            return json.loads(old.read_text()), []
        keys = [f.get("key") for k in range(self.n_chunks(n_photos)) if self.store.chunk_done(job_id, k)
                for f in self.store.load_chunk(job_id, k)]
        inherited = self.inherited(job_id)
        keys += [r.get("key") for r in inherited]
        return [k for k in keys if k], self.store.photo_digests(job_id) + [r["sha256"] for r in inherited
                                                                           if r.get("sha256")]

    def drop_cache_entries(self, keys: list) -> int:
        """Remove this host's cache entries by key. -> how many there were."""
        n = 0
        for key in keys:
            if not (isinstance(key, str) and p.is_digest(key)):
                continue
            try:
                (self.s.cache_dir / key[:2] / f"{key}.json").unlink()
                n += 1
            except FileNotFoundError:
                pass
        return n

    def purge_workers(self, digests: list[str], keys: list | tuple = (), only: WorkerState | None = None) -> None:
        """Ask workers (all connected, or one) to forget the cached features of these photos (by the
        photos' sha256, which every host turns into its own cache keys) or of these cache keys."""
        keys = [k for k in keys if isinstance(k, str) and p.is_digest(k)]
        if not digests and not keys:
            return
        frames = p.pack(p.PURGE, {"photos": digests, "keys": keys})
        for worker in [only] if only else list(self.workers.values()):
            try:
                self.back.send_multipart([worker.identity, *frames], flags=zmq.NOBLOCK)
            except zmq.Again:
                logger.warning("worker {} did not take a purge; its cache keeps those entries", worker.name)

    # --- workers -----------------------------------------------------------------
    def on_worker(self, frames: list[zmq.Frame]) -> None:
        if len(frames) < 2:
            return
        key = str(frames[-1].get("User-Id"))
        if not self.auth.allowed[WORKERS].permits(key):
            self.said_once(f"dropped messages from a worker key that is no longer allowed: {escape(key, 60)}")
            return
        identity = frames[0].bytes
        worker = self.workers.get(identity)
        try:
            command, header, blobs = p.parse_worker([f.bytes for f in frames[1:]])
        except ProtocolError as exc:
            who = worker.name if worker else escape(identity, 80)
            self.said_once(f"worker {who}: dropped a message: {escape(exc)}")
            return
        if worker is None:
            worker = self.workers[identity] = WorkerState(identity, key, time.monotonic())
            logger.info("worker {} joined ({} connected)", worker.name, len(self.workers))
        elif worker.key != key:
            self.said_once(f"worker {worker.name}: dropped a message signed by another key")
            return
        worker.last_seen = time.monotonic()
        task: Task | None = header.get("task")
        if command == p.READY:
            if worker.task:  # it restarted: what it was doing is lost
                self.recover(worker.task)
            worker.task = None
        elif command == p.HEARTBEAT:
            worker.warming = header["warming"]
            # Only READY/DONE/FAILED make a worker idle: a heartbeat sent before it received a task must
            # not free it again. A worker met mid-task (this broker restarted) is busy with that task.
            if task and worker.task is None and self.adoptable(task):
                worker.task = task
        elif command == p.REJECT:
            if task is not None and worker.task == task:
                worker.task = header["busy_with"] if self.adoptable(header["busy_with"]) else None
                worker.since = 0.0
                self.queue.appendleft(task)
        elif command == p.PROGRESS:
            if worker.task is not None and task is not None and worker.task.what == task.what \
                    and task.kind != TaskKind.EVALUATE:  # a search's progress is the broker's own
                self.store.progress(task.job, TASK_STATE[task.kind], header["stage"], header["done"], header["total"])
        elif command in (p.DONE, p.FAILED):
            self.on_result(worker, command, header, blobs)

    def adoptable(self, task: Task) -> bool:
        """A task a worker says it runs, which this broker did not give it (it restarted): the job
        must be running and nobody else may hold that work."""
        row = self.store.get(task.job)
        return row is not None and not JobState(row["state"]).final and \
            not any(w.task and w.task.what == task.what for w in self.workers.values())

    def on_result(self, worker: WorkerState, command: bytes, header: dict, blobs: list[bytes]) -> None:
        task: Task = header["task"]
        if worker.task != task:
            self.said_once(f"worker {worker.name}: dropped a result for a task it was not given "
                           f"({task.kind} of job {task.job})")
            return
        worker.task = None
        if worker.since:  # 0: a task adopted from a worker met mid-task, its start unknown here
            metrics.task_done(task.kind, "done" if command == p.DONE else "failed", time.monotonic() - worker.since)
            worker.since = 0.0
        row = self.store.get(task.job)
        if row is None:  # deleted meanwhile: what the worker cached for it goes too
            logger.info("discarding a late {} result for deleted job {}", task.kind, task.job)
            if command == p.DONE and task.kind == TaskKind.EXTRACT:
                self.discard_features(worker, blobs[0])
            return
        if JobState(row["state"]).final:
            logger.info("ignoring a late result for job {}", task.job)
            return
        if command == p.FAILED:
            self.fail(task.job, header["code"], header["message"], header["details"])
            return
        try:
            if task.kind == TaskKind.EXTRACT:
                self.on_chunk(task, row, blobs[0])
            elif task.kind == TaskKind.EVALUATE:
                self.on_evaluation(task, blobs[0])
            else:
                self.on_bundle(task, blobs[0])
        except ProtocolError as exc:
            logger.warning("worker {}: a bad {} result for job {}: {}; the task runs again elsewhere",
                           worker.name, task.kind, task.job, escape(exc))
            self.recover(task)

    def discard_features(self, worker: WorkerState, result: bytes) -> None:
        try:
            items = p.decode_json(result, p.MAX_RESULT_BYTES, "features")
            keys = [f.get("key") for f in items if isinstance(f, dict)] if isinstance(items, list) else []
        except ProtocolError:
            return
        self.drop_cache_entries(keys)
        self.purge_workers([], keys, only=worker)  # the worker's own host, wherever it is

    def on_chunk(self, task: Task, row, result: bytes) -> None:
        n = self.n_new(row)
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
        metrics.feature_cache(hits, len(items) - hits)
        done = self.done_chunks(task.job, n)
        if task.chunk not in done:
            self.store.save_chunk(task.job, task.chunk, result)
            done.add(task.chunk)
        chunks = self.n_chunks(n)
        if len(done) < chunks:  # (no scan of every chunk per result: a build of 20,000 photos has 1,250)
            last = n - (chunks - 1) * self.s.chunk_photos  # the last chunk may be short
            extracted = len(done) * self.s.chunk_photos - (self.s.chunk_photos - last if chunks - 1 in done else 0)
            self.store.progress(task.job, JobState.EXTRACTING, JobState.EXTRACTING, extracted, n)
            return
        self.after_extraction(task.job, row)

    def on_evaluation(self, task: Task, result: bytes) -> None:
        evolution = self.searches.get(task.job)
        if evolution is None or evolution.done:
            return  # a late answer after the budget ran out
        try:
            evolution.tell(task.genome, p.decode_json(result, 1024 * 1024, "scores"))
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"scores: {escape(exc)}") from None
        self.search_step(task.job)

    def on_bundle(self, task: Task, bundle: bytes) -> None:
        check_bundle(bundle, task.job)
        with disk_errors():
            folder = save_bundle(self.s.dumps_dir, task.job, bundle)
        if (folder / BUNDLE_FILE).stat().st_size == len(bundle):  # (a re-delivered result keeps the first)
            self.sums.put(task.job, folder / BUNDLE_FILE, hashlib.sha256(bundle).hexdigest())  # fronts ask at once
        row = self.store.get(task.job)
        keys, digests = self.erase_list(task.job, self.n_new(row) if row else 0)
        records = self.keep_features(task.job, row) if row else []  # what a derivation starts from
        erase = self.s.dumps_dir / task.job / ERASE_FILE
        with disk_errors(erase):  # for DELETE and ERASE
            erase.write_text(json.dumps({"cache_keys": keys, "photos": digests,
                                         "labels": sorted({r["label"] for r in records})}, ensure_ascii=False))
        self.store.finish(task.job)
        self.ended(task.job)
        self.forget(task.job)
        if not self.s.keep_uploads:
            self.store.delete_uploads(task.job)
        logger.info("job {} done", task.job)

    def fail(self, job_id: str, code: str, message: str, details: dict | None = None) -> None:
        self.store.fail(job_id, code, message, details)
        self.queue = deque(t for t in self.queue if t.job != job_id)
        self.forget(job_id)
        self.ended(job_id)
        logger.info("job {} failed: {} {}", job_id, code, escape(message))

    def forget(self, job_id: str) -> None:
        """Drop what the broker holds in memory for a finished, failed or deleted job."""
        self.searches.pop(job_id, None)
        self.payloads.pop(job_id, None)
        self._done.pop(job_id, None)
        self._indexes.pop(job_id, None)
        self._inherited.pop(job_id, None)

    def ended(self, job_id: str) -> None:
        """A job is done or failed: its callback (if it has one) is queued for the sender. Never raises: a
        callback that cannot be queued is logged, the job's end stands."""
        try:
            row = self.store.get(job_id)
            if row is None:
                return
            view = job_view(row)
            data = {k: view[k] for k in ("id", "name", "state", "available", "created", "updated", "photos", "people")}
            data["parent"] = json.loads(row["options"]).get("parent")
            # the code and message only: details may list files, and so people's names
            data["error"] = {k: view["error"][k] for k in ("code", "message")} if view["error"] else None
            event = "model.done" if row["state"] == JobState.DONE else "model.failed"
            if self.webhooks_call("enqueue", job_id, event, data):
                self.sender.wake()
        except (StoreUnavailable, ValueError, KeyError) as exc:
            logger.error("job {}: its callback could not be queued: {}", job_id, escape(exc))

    @property
    def webhooks(self) -> webhooks.WebhookStore:
        if self._webhooks is None:
            self._webhooks = webhooks.WebhookStore(webhooks.db_path(self.s))
        return self._webhooks

    def webhooks_call(self, method: str, *args):
        """A call on the callback queue. A subscription that cannot be stored refuses its build (503); any
        other failure is logged and the queue reopened on the next call."""
        try:
            return getattr(self.webhooks, method)(*args)
        except sqlite3.Error as exc:
            if self._webhooks is not None:
                self._webhooks.close()
            self._webhooks = None
            if method == "subscribe" and args[1]:
                raise FrontError("CALLBACK_UNAVAILABLE", f"the callback could not be recorded ({exc})") from None
            logger.error("webhooks: {} failed: {}", method, escape(exc))
            return None

    def said_once(self, line: str) -> None:
        """A warning about a peer, at most once per 10 s for the same line (a flood cannot fill the log)."""
        now = time.monotonic()
        if now - self._said.get(line, 0.0) >= 10.0:
            self._said[line] = now
            logger.warning(line)
            if len(self._said) > 10_000:
                self._said = {k: v for k, v in self._said.items() if now - v < 10.0}

    def beat(self) -> None:
        """Heartbeat live workers; declare silent ones dead and put their tasks back first in line."""
        while self.back.poll(0):  # after a long step (a big upload) read what workers sent meanwhile
            self.safely(self.on_worker, self.back.recv_multipart(copy=False))
        now = time.monotonic()
        for identity, worker in list(self.workers.items()):
            if now - worker.last_seen > self.s.heartbeat_expiry_s:
                del self.workers[identity]
                logger.warning("worker {} lost ({} left)", worker.name, len(self.workers))
                if worker.task:
                    self.safely(self.recover, worker.task)
            else:
                self.back.send_multipart([identity, p.HEARTBEAT])
        self.resume()
        self.check_budgets()

    def recover(self, task: Task) -> None:
        row = self.store.get(task.job)
        if row is None or JobState(row["state"]).final:
            return
        if task.kind == TaskKind.EXTRACT and task.chunk in self.done_chunks(task.job, self.n_new(row)):
            return
        if task.kind == TaskKind.EVALUATE and not self.search_wants(task):
            return
        if any(w.task and w.task.what == task.what for w in self.workers.values()):
            return  # another worker has it (we met it mid-task after a restart)
        if task.attempt >= self.s.max_attempts:
            self.fail(task.job, "WORKER_LOST", f"a {task.kind} task was lost with its worker "
                      f"{task.attempt} times; giving up")
            return
        self.queue.appendleft(Task(task.job, task.kind, task.chunk, task.attempt + 1, task.genome))
        logger.warning("job {}: {} task {} requeued after losing its worker", task.job, task.kind, task.chunk)

    def dispatch(self) -> None:
        """Hand queued tasks to idle workers (none while the disk is full)."""
        while self.queue and self.stalled_until is None:
            idle = next((w for w in self.workers.values() if w.task is None), None)
            if idle is None:
                return
            task = self.queue.popleft()
            row = self.store.get(task.job)
            if row is None or JobState(row["state"]).final:
                continue
            if task.kind == TaskKind.EXTRACT and task.chunk in self.done_chunks(task.job, self.n_new(row)):
                continue
            if task.kind == TaskKind.EVALUATE and not self.search_wants(task):
                continue
            frames = self.task_frames(task, row)
            if frames is None:
                continue
            self.store.assign(task.job, idle.name, task.attempt)
            if row["state"] == JobState.QUEUED:
                self.store.progress(task.job, JobState.EXTRACTING, JobState.EXTRACTING, 0, self.n_new(row))
            idle.task, idle.since = task, time.monotonic()
            self.back.send_multipart([idle.identity, *frames])
            logger.debug("job {} {} {} (attempt {}) -> {}", task.job, task.kind, task.chunk, task.attempt, idle.name)

    def task_frames(self, task: Task, row) -> list[bytes] | None:
        try:
            index = self.index(task.job)
        except OSError:
            self.fail(task.job, "UPLOAD_LOST", "the uploaded photos of this job are gone")
            return None
        header = {"task": task.to_wire(), "name": row["name"], "options": json.loads(row["options"])}
        if task.kind == TaskKind.EXTRACT:
            part = index[task.chunk * self.s.chunk_photos:(task.chunk + 1) * self.s.chunk_photos]
            header["files"] = [{"label": e["label"], "filename": e["filename"]} for e in part]
            return p.pack(p.JOB, header, self.store.load_photos(task.job, part))
        inherited = self.inherited(task.job)  # a derivation's photos taken from its parent, first
        header["files"] = [{"label": e["label"], "filename": e["filename"]} for e in inherited + index]
        if task.job not in self.payloads:  # read once per job, not once per candidate
            features = [as_task_features(r) for r in inherited]
            features += self.store.load_chunks(task.job, self.n_chunks(len(index)))
            self.payloads[task.job] = json.dumps(features).encode()
        if task.kind == TaskKind.TRAIN and task.job in self.searches:
            header["search"] = self.searches[task.job].report()
        return p.pack(p.JOB, header, [self.payloads[task.job]])

    def search_wants(self, task: Task) -> bool:
        """An evaluate task is still useful: its search runs and still needs that evaluation."""
        evolution = self.searches.get(task.job)
        return evolution is not None and evolution.wants(task.genome)


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


def run_broker(settings: Settings) -> None:
    broker = Broker(settings)
    try:
        broker.run()
    finally:
        broker.close()
