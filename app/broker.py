"""The load-balancing broker: the front submits jobs, idle workers get tasks.

A job is cut into tasks so that every worker can help with one build:
`extract` tasks (a chunk of photos -> their embeddings), then, with optimize=1,
`evaluate` tasks (one genome of the genetic search each: the broker runs the
NSGA-II state machine of optimization/evolution.py, workers train candidates),
then one `train` task (all embeddings -> the model bundle). One loop, one
thread, the only writer of the job store.

Trust: both sockets are CURVE servers (app/keys.py): only the service's own
fronts reach the front socket, only allowed workers the back one, and a key
removed from `allowed/` is refused on its next message. Every message is checked
against its schema (app/protocol.py) before anything reads it; a result counts
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

import io
import json
import shutil
import sqlite3
import time
import uuid
import zipfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq

from app import protocol as p
from app import webhooks
from app.derivation import ERASE_FILE, Derivations, as_task_features
from app.keys import FRONTS, WORKERS, BrokerAuth
from app.protocol import FrontError, ProtocolError, Task, escape
from app.store import JobStore, StorageFull, StoreUnavailable, disk_errors, job_view
from constants import Settings
from constants.states import TASK_STATE, JobState, TaskKind
from features.extract import PhotoFeatures
from logger import logger
from modelization.bundle import MANIFEST_FILE, save_bundle
from optimization.evolution import Controls, Evolution
from preprocessor.uploads import Photo

MAX_MANIFEST_BYTES = 64 * 1024 * 1024
DISK_RETRY_S = 5.0          # a broker stalled by a full disk looks for room this often
MIN_ROOM = 16 * 1024 * 1024  # ... and resumes once this much is free


@dataclass
class WorkerState:
    identity: bytes
    key: str            # the CURVE public key it authenticated with (z85)
    last_seen: float
    task: Task | None = None
    warming: bool = False  # still loading its models (it takes tasks meanwhile)

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
        self.back.bind(settings.broker_back)
        self.workers: dict[bytes, WorkerState] = {}
        self.queue: deque[Task] = deque()
        self.searches: dict[str, Evolution] = {}   # jobs in or past their genetic search
        self.payloads: dict[str, bytes] = {}       # job -> all its features (JSON), for evaluate/train tasks
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
        swept = store.sweep_uploads(keep_done=self.s.keep_uploads) + store.sweep_models(self.s.dumps_dir)
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
            self.store.check()
        except StoreUnavailable as exc:
            body["store"] = {"ok": False, "message": str(exc)}
        return body

    # --- the loop --------------------------------------------------------------
    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        next_beat = time.monotonic()
        self.sender.start()
        logger.info("broker up: front {} back {}", self.s.front_endpoint, self.s.broker_back)
        while self.running:
            events = dict(poller.poll(timeout=int(self.s.heartbeat_s * 1000 / 2)))
            if self.back in events:
                self.safely(self.on_worker, self.back.recv_multipart(copy=False))
            if self.front in events:
                self.safely(self.on_front, self.front.recv_multipart(copy=False))
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

    def close(self) -> None:
        self.sender.stop()
        if self._webhooks is not None:
            self._webhooks.close()
        self.front.close(0)
        self.back.close(0)
        self.auth.stop()
        if self._store is not None:
            self._store.close()

    # --- planning: which tasks a job still needs ----------------------------------
    def n_chunks(self, n_photos: int) -> int:
        return -(-n_photos // self.s.chunk_photos)

    def missing_chunks(self, job_id: str, n_photos: int) -> list[int]:
        return [k for k in range(self.n_chunks(n_photos)) if not self.store.chunk_done(job_id, k)]

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
            if command == p.SUBMIT:
                reply = p.pack(p.OK, self.submit(header, blobs))
            elif command == p.STATUS:
                reply = p.pack(p.OK, self.status())
            elif command == p.DERIVE:
                reply = p.pack(p.OK, self.derive(header, blobs))
            elif command == p.ERASE:
                reply = p.pack(p.OK, self.erase(header["label"], header.get("tenant")))
            else:
                reply = p.pack(p.OK, self.delete(header["id"]))
        except ProtocolError as exc:
            logger.warning("front: refused a request: {}", escape(exc))
            reply = p.pack(p.ERR, {"code": "BAD_REQUEST", "message": escape(exc)})
        except FrontError as exc:
            reply = p.pack(p.ERR, {"code": exc.code, "message": exc.message})
        except StoreUnavailable as exc:
            reply = p.pack(p.ERR, {"code": "STORE_UNAVAILABLE", "message": str(exc)})
        except StorageFull:
            reply = p.pack(p.ERR, {"code": "INSUFFICIENT_STORAGE", "message": "the data disk is full"})
        except Exception as exc:  # never let one request take the broker down
            logger.exception("front request failed")
            reply = p.pack(p.ERR, {"code": "INTERNAL", "message": f"{type(exc).__name__}"})
        self.front.send_multipart([identity, b"", *reply])

    def submit(self, header: dict, blobs: list[bytes]) -> dict:
        """Store a job durably, then queue its work. Refused (nothing left behind) when its deadline
        passes first, when the disk would fill, or when the id is taken."""
        job_id = header["id"]
        deadline = header.get("deadline")
        self.check_deadline(deadline)
        self.check_room(sum(len(b) for b in blobs))
        if self.store.get(job_id) is not None or self.store.has_uploads(job_id):
            raise FrontError("CONFLICT", "a job with this id exists")
        photos = [Photo(f["label"], f["filename"], b) for f, b in zip(header["files"], blobs)]
        self.store.save_uploads(job_id, photos)  # durable before we answer
        try:
            self.check_deadline(deadline)
            n_people = len({ph.label for ph in photos})
            self.webhooks_call("subscribe", job_id, header.get("callback"))
            self.store.create(job_id, header.get("name"), header.get("options", {}), len(photos), n_people)
        except BaseException:
            self.store.delete_uploads(job_id)
            self.webhooks_call("forget", job_id)
            raise
        self.plan(job_id)
        logger.info("job {} queued: {} photos of {} people", job_id, len(photos), n_people)
        return {"id": job_id}

    @staticmethod
    def check_deadline(deadline: float | None) -> None:
        """A submit the front has stopped waiting for must not be stored (its client never learns the id)."""
        if deadline is not None and time.time() > deadline - 1.0:
            raise FrontError("DEADLINE_PASSED", "the upload took too long to store; nothing was kept")

    def delete(self, job_id: str, purge_cache: bool = True) -> dict:
        """Erase a job: its queued tasks, row, uploads, model folder, callback and cached features (here, and
        on every connected worker's host; not with `purge_cache=False`, when an erasure purges one person's)."""
        self.queue = deque(t for t in self.queue if t.job != job_id)
        self.forget(job_id)
        row = self.store.get(job_id)
        keys, digests = self.erase_list(job_id, self.n_new(row) if row else 0) if purge_cache else ([], [])
        removed = {"job": row is not None,
                   "model": self.store.delete_model(self.s.dumps_dir, job_id),
                   "uploads": self.store.has_uploads(job_id),
                   "cached_features": self.drop_cache_entries(keys)}
        self.purge_workers(digests, keys)
        self.webhooks_call("forget", job_id)
        self.store.delete_uploads(job_id)
        self.store.delete(job_id)
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
        if not self.store.chunk_done(task.job, task.chunk):
            self.store.save_chunk(task.job, task.chunk, result)
        missing = self.missing_chunks(task.job, n)
        if missing:
            self.store.progress(task.job, JobState.EXTRACTING, JobState.EXTRACTING,
                                self.photos_extracted(n, missing), n)
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
            save_bundle(self.s.dumps_dir, task.job, bundle)
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
        if task.kind == TaskKind.EXTRACT and self.store.chunk_done(task.job, task.chunk):
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
            if task.kind == TaskKind.EXTRACT and self.store.chunk_done(task.job, task.chunk):
                continue
            if task.kind == TaskKind.EVALUATE and not self.search_wants(task):
                continue
            frames = self.task_frames(task, row)
            if frames is None:
                continue
            self.store.assign(task.job, idle.name, task.attempt)
            if row["state"] == JobState.QUEUED:
                self.store.progress(task.job, JobState.EXTRACTING, JobState.EXTRACTING, 0, self.n_new(row))
            idle.task = task
            self.back.send_multipart([idle.identity, *frames])
            logger.debug("job {} {} {} (attempt {}) -> {}", task.job, task.kind, task.chunk, task.attempt, idle.name)

    def task_frames(self, task: Task, row) -> list[bytes] | None:
        try:
            index = self.store.load_index(task.job)
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


def new_job_id() -> str:
    return str(uuid.uuid4())


def run_broker(settings: Settings) -> None:
    broker = Broker(settings)
    try:
        broker.run()
    finally:
        broker.close()
