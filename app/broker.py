"""The load-balancing broker: the front submits jobs, idle workers get tasks.

A job is cut into tasks so that every worker can help with one build:
`extract` tasks (a chunk of photos -> their embeddings), then, with optimize=1,
`evaluate` tasks (one genome of the genetic search each: the broker runs the
NSGA-II state machine of optimization/evolution.py, workers train candidates),
then one `train` task (all embeddings -> the model bundle). One loop, one
thread, the only writer of the job store.

Crash recovery is part of the design: a job is durable (SQLite + files) before
the front gets its id; each finished chunk's embeddings are written to disk; a
worker that misses its heartbeats loses its task back to the head of the queue;
a broker that starts queues again whatever is unfinished. The search is
checkpointed after every result and resumes from its last state.
"""
from __future__ import annotations

import json
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass

import zmq

from app import protocol as p
from app.store import JobStore
from constants import EXTRACTING, OPTIMIZING, QUEUED, TERMINAL_STATES, TRAINING, Settings
from logger import logger
from modelization.bundle import save_bundle
from optimization.evolution import Controls, Evolution
from preprocessor.uploads import Photo

EXTRACT, EVALUATE, TRAIN = "extract", "evaluate", "train"


@dataclass(frozen=True)
class Task:
    job: str
    kind: str          # EXTRACT, EVALUATE or TRAIN
    chunk: int = 0     # which slice of the photos (extract only)
    attempt: int = 1
    genome: str = ""   # the evaluation's key: genome key[/fold] (evaluate only)

    @property
    def what(self) -> tuple:
        """The work itself, whatever the attempt."""
        return self.job, self.kind, self.chunk, self.genome


@dataclass
class WorkerState:
    identity: bytes
    last_seen: float
    task: Task | None = None
    warming: bool = False  # still loading its models (it takes tasks meanwhile)

    @property
    def name(self) -> str:
        return self.identity.decode(errors="replace")


class Broker:
    def __init__(self, settings: Settings, ctx: zmq.Context | None = None):
        self.s = settings
        settings.ensure_dirs()
        self.store = JobStore(settings.db_path, settings.uploads_dir)
        self.ctx = ctx or zmq.Context.instance()
        self.front = self.ctx.socket(zmq.ROUTER)
        self.back = self.ctx.socket(zmq.ROUTER)
        for sock, endpoint in ((self.front, settings.broker_front), (self.back, settings.broker_back)):
            p.tune(sock, settings.heartbeat_s)
            sock.bind(endpoint)
        self.workers: dict[bytes, WorkerState] = {}
        self.queue: deque[Task] = deque()
        self.searches: dict[str, Evolution] = {}   # jobs in or past their genetic search
        self.payloads: dict[str, bytes] = {}       # job -> all its features (JSON), for evaluate/train tasks
        self.running = True
        swept = self.store.sweep_uploads(keep_done=settings.keep_uploads)
        if swept:
            logger.info("removed {} upload folder(s) left behind by a stop: {}", len(swept), swept[:5])
        unfinished = self.store.unfinished()
        for job_id in unfinished:
            self.plan(job_id)
        if unfinished:
            logger.info("queued {} unfinished job(s) again from the store", len(unfinished))

    # --- inspection ----------------------------------------------------------
    def status(self) -> dict:
        busy = sum(1 for w in self.workers.values() if w.task)
        return {"workers": len(self.workers), "busy": busy, "idle": len(self.workers) - busy,
                "warming": sum(1 for w in self.workers.values() if w.warming),
                "queued": len({t.job for t in self.queue}), "tasks_queued": len(self.queue),
                "searches": len([e for e in self.searches.values() if not e.done])}

    # --- the loop --------------------------------------------------------------
    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        next_beat = time.monotonic()
        logger.info("broker up: front {} back {}", self.s.broker_front, self.s.broker_back)
        while self.running:
            events = dict(poller.poll(timeout=int(self.s.heartbeat_s * 1000 / 2)))
            if self.back in events:
                self.on_worker(self.back.recv_multipart())
            if self.front in events:
                self.on_front(self.front.recv_multipart())
            if time.monotonic() >= next_beat:
                self.beat()
                next_beat = time.monotonic() + self.s.heartbeat_s
            self.dispatch()

    def close(self) -> None:
        self.front.close(0)
        self.back.close(0)
        self.store.db.close()

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
        if row is None or row["state"] in TERMINAL_STATES:
            return
        if not self.store.has_uploads(job_id):
            self.store.fail(job_id, "UPLOAD_LOST", "the uploaded photos of this job are gone")
            return
        n = row["n_photos"]
        missing = self.missing_chunks(job_id, n)
        if missing:
            self.queue.extend(Task(job_id, EXTRACT, k) for k in missing)
            done = self.photos_extracted(n, missing)
            if done:
                self.store.progress(job_id, EXTRACTING, EXTRACTING, done, n)
        else:
            self.after_extraction(job_id, row)

    def after_extraction(self, job_id: str, row) -> None:
        """All features are in: search first (optimize=1), else train."""
        options = json.loads(row["options"])
        if options.get("optimize"):
            self.start_search(job_id, options)
        else:
            self.store.progress(job_id, TRAINING, TRAINING, 0, self.s.max_epochs)
            self.queue.appendleft(Task(job_id, TRAIN))  # finish started jobs first

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
            self.queue = deque(t for t in self.queue if not (t.job == job_id and t.kind == EVALUATE))
            self.store.progress(job_id, TRAINING, TRAINING, 0, 1, progress)
            if not any(t.job == job_id and t.kind == TRAIN for t in self.queue):
                self.queue.appendleft(Task(job_id, TRAIN))
            logger.info("job {}: search finished ({}), {} evaluations in {:.1f} s", job_id,
                        evolution.stop_reason, evolution.evaluations, evolution.seconds())
            return
        pending = {t.genome for t in self.queue if t.job == job_id} | {
            w.task.genome for w in self.workers.values() if w.task and w.task.job == job_id}
        self.queue.extend(Task(job_id, EVALUATE, genome=k) for k in evolution.needed() if k not in pending)
        if progress["phase"] == "confirming":  # the finalists' cross-validation
            done, total = progress["fold_evaluations"], progress["fold_evaluations_planned"]
            stage = f"cross-validating {progress['finalists']} finalists: {done} of {total}"
        else:
            done, total = progress["generation"], evolution.controls.generations
            stage = f"generation {done} of {total}"
        self.store.progress(job_id, OPTIMIZING, stage, done, total, progress)

    def on_evaluation(self, task: Task, result: bytes) -> None:
        evolution = self.searches.get(task.job)
        if evolution is None or evolution.done:
            return  # a late answer after the budget ran out
        evolution.tell(task.genome, json.loads(result))
        self.search_step(task.job)

    def check_budgets(self) -> None:
        for job_id, evolution in self.searches.items():
            if evolution.check_budget():
                self.search_step(job_id)

    # --- front -----------------------------------------------------------------
    def on_front(self, frames: list[bytes]) -> None:
        identity, _empty, *msg = frames
        command, header, blobs = p.unpack(msg)
        try:
            if command == p.SUBMIT:
                reply = p.pack(p.OK, self.submit(header, blobs))
            elif command == p.STATUS:
                reply = p.pack(p.OK, self.status())
            elif command == p.DELETE:
                reply = p.pack(p.OK, self.delete(header["id"]))
            else:
                reply = p.pack(p.ERR, {"code": "BAD_COMMAND", "message": f"unknown command {command!r}"})
        except Exception as exc:  # never let one bad request take the broker down
            logger.exception("front request failed")
            reply = p.pack(p.ERR, {"code": "INTERNAL", "message": str(exc)})
        self.front.send_multipart([identity, b"", *reply])

    def submit(self, header: dict, blobs: list[bytes]) -> dict:
        job_id = header["id"]
        files = header["files"]
        if len(files) != len(blobs):
            raise ValueError("file list and photo frames differ in length")
        photos = [Photo(f["label"], f["filename"], b) for f, b in zip(files, blobs)]
        self.store.save_uploads(job_id, photos)  # durable before we answer
        n_people = len({ph.label for ph in photos})
        self.store.create(job_id, header.get("name"), header.get("options", {}), len(photos), n_people)
        self.plan(job_id)
        logger.info("job {} queued: {} photos of {} people", job_id, len(photos), n_people)
        return {"id": job_id}

    def delete(self, job_id: str) -> dict:
        """Erase a job: its queued tasks, row, uploads, model folder and cached features."""
        self.queue = deque(t for t in self.queue if t.job != job_id)
        self.forget(job_id)
        row = self.store.get(job_id)
        keys = self.cache_keys(job_id, row["n_photos"] if row else 0)
        removed = {"job": row is not None,
                   "model": self.store.delete_model(self.s.dumps_dir, job_id),
                   "uploads": self.store.has_uploads(job_id),
                   "cached_features": self.store.delete_cache_entries(self.s.cache_dir, keys)}
        self.store.delete_uploads(job_id)
        self.store.delete(job_id)
        logger.info("job {} deleted: {}", job_id, removed)
        return {"id": job_id, "removed": removed}

    def cache_keys(self, job_id: str, n_photos: int) -> list[str]:
        """Feature-cache keys of a job's photos: from its model folder, or from its extracted chunks."""
        saved = self.s.dumps_dir / job_id / "cache_keys.json"
        if saved.exists():
            return json.loads(saved.read_text())
        keys = []
        for k in range(self.n_chunks(n_photos)):
            if self.store.chunk_done(job_id, k):
                keys.extend(f.get("key") for f in self.store.load_chunk(job_id, k))
        return [k for k in keys if k]

    # --- workers -----------------------------------------------------------------
    def on_worker(self, frames: list[bytes]) -> None:
        identity, *msg = frames
        command, header, blobs = p.unpack(msg)
        worker = self.workers.get(identity)
        if worker is None:
            worker = self.workers[identity] = WorkerState(identity, time.monotonic())
            logger.info("worker {} joined ({} connected)", worker.name, len(self.workers))
        worker.last_seen = time.monotonic()
        if command == p.READY:
            worker.task = None
        elif command == p.REJECT:
            task = Task(**header["task"])
            worker.task = Task(**header["busy_with"])
            self.queue.appendleft(task)
        elif command == p.HEARTBEAT:
            worker.warming = bool(header.get("warming"))
            # Only READY/DONE/FAILED make a worker idle: a heartbeat sent before it received
            # a task must not free it again. A worker met mid-task (we restarted) is busy.
            if header.get("task") and worker.task is None:
                worker.task = Task(**header["task"])
        elif command == p.PROGRESS:
            self.store.progress(header["job"], header["state"], header["stage"], header["done"], header["total"])
        elif command in (p.DONE, p.FAILED):
            task = Task(**header["task"])
            if worker.task == task:
                worker.task = None
            row = self.store.get(task.job)
            if row is None or row["state"] in TERMINAL_STATES:
                logger.info("ignoring a late result for job {}", task.job)
            elif command == p.FAILED:
                self.fail(task.job, header["code"], header["message"], header.get("details"))
            elif task.kind == EXTRACT:
                self.on_chunk(task, row, blobs[0])
            elif task.kind == EVALUATE:
                self.on_evaluation(task, blobs[0])
            else:
                self.on_bundle(task, blobs[0])

    def on_chunk(self, task: Task, row, features: bytes) -> None:
        if not self.store.chunk_done(task.job, task.chunk):
            self.store.save_chunk(task.job, task.chunk, features)
        n = row["n_photos"]
        missing = self.missing_chunks(task.job, n)
        if missing:
            self.store.progress(task.job, EXTRACTING, EXTRACTING, self.photos_extracted(n, missing), n)
            return
        self.after_extraction(task.job, row)

    def on_bundle(self, task: Task, bundle: bytes) -> None:
        try:
            save_bundle(self.s.dumps_dir, task.job, bundle)
        except Exception as exc:
            logger.exception("could not save the bundle of job {}", task.job)
            self.fail(task.job, "INTERNAL", f"could not save the model: {exc}")
            return
        keys = self.cache_keys(task.job, self.store.get(task.job)["n_photos"])
        (self.s.dumps_dir / task.job / "cache_keys.json").write_text(json.dumps(keys))  # for DELETE
        self.store.finish(task.job)
        self.forget(task.job)
        if not self.s.keep_uploads:
            self.store.delete_uploads(task.job)
        logger.info("job {} done", task.job)

    def fail(self, job_id: str, code: str, message: str, details: dict | None = None) -> None:
        self.store.fail(job_id, code, message, details)
        self.queue = deque(t for t in self.queue if t.job != job_id)
        self.forget(job_id)
        logger.info("job {} failed: {} {}", job_id, code, message)

    def forget(self, job_id: str) -> None:
        """Drop what the broker holds in memory for a finished, failed or deleted job."""
        self.searches.pop(job_id, None)
        self.payloads.pop(job_id, None)

    def beat(self) -> None:
        """Heartbeat live workers; declare silent ones dead and put their tasks back first in line."""
        while self.back.poll(0):  # after a long step (a big upload) read what workers sent meanwhile
            self.on_worker(self.back.recv_multipart())
        now = time.monotonic()
        for identity, worker in list(self.workers.items()):
            if now - worker.last_seen > self.s.heartbeat_expiry_s:
                del self.workers[identity]
                logger.warning("worker {} lost ({} left)", worker.name, len(self.workers))
                if worker.task:
                    self.recover(worker.task)
            else:
                self.back.send_multipart([identity, p.HEARTBEAT])
        self.check_budgets()

    def recover(self, task: Task) -> None:
        row = self.store.get(task.job)
        if row is None or row["state"] in TERMINAL_STATES:
            return
        if task.kind == EXTRACT and self.store.chunk_done(task.job, task.chunk):
            return
        if task.kind == EVALUATE and not self.search_wants(task):
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
        """Hand queued tasks to idle workers."""
        while self.queue:
            idle = next((w for w in self.workers.values() if w.task is None), None)
            if idle is None:
                return
            task = self.queue.popleft()
            row = self.store.get(task.job)
            if row is None or row["state"] in TERMINAL_STATES:
                continue
            if task.kind == EXTRACT and self.store.chunk_done(task.job, task.chunk):
                continue
            if task.kind == EVALUATE and not self.search_wants(task):
                continue
            frames = self.task_frames(task, row)
            if frames is None:
                continue
            self.store.assign(task.job, idle.name, task.attempt)
            if row["state"] == QUEUED:
                self.store.progress(task.job, EXTRACTING, EXTRACTING, 0, row["n_photos"])
            idle.task = task
            self.back.send_multipart([idle.identity, *frames])
            logger.debug("job {} {} {} (attempt {}) -> {}", task.job, task.kind, task.chunk, task.attempt, idle.name)

    def task_frames(self, task: Task, row) -> list[bytes] | None:
        try:
            index = self.store.load_index(task.job)
        except OSError:
            self.fail(task.job, "UPLOAD_LOST", "the uploaded photos of this job are gone")
            return None
        header = {"task": asdict(task), "name": row["name"], "options": json.loads(row["options"])}
        if task.kind == EXTRACT:
            part = index[task.chunk * self.s.chunk_photos:(task.chunk + 1) * self.s.chunk_photos]
            header["files"] = [{"label": e["label"], "filename": e["filename"]} for e in part]
            return p.pack(p.JOB, header, self.store.load_photos(task.job, part))
        header["files"] = [{"label": e["label"], "filename": e["filename"]} for e in index]
        if task.job not in self.payloads:  # read once per job, not once per candidate
            features = self.store.load_chunks(task.job, self.n_chunks(len(index)))
            self.payloads[task.job] = json.dumps(features).encode()
        if task.kind == TRAIN and task.job in self.searches:
            header["search"] = self.searches[task.job].report()
        return p.pack(p.JOB, header, [self.payloads[task.job]])

    def search_wants(self, task: Task) -> bool:
        """An evaluate task is still useful: its search runs and still needs that evaluation."""
        evolution = self.searches.get(task.job)
        return evolution is not None and evolution.wants(task.genome)


def new_job_id() -> str:
    return str(uuid.uuid4())


def run_broker(settings: Settings) -> None:
    broker = Broker(settings)
    try:
        broker.run()
    finally:
        broker.close()
