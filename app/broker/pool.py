"""The workers, as the broker knows them: plain records of who is connected, what each one holds, when
each was last heard from (the ZeroMQ guide's paranoid-pirate pattern).

A worker announces READY once; DONE/FAILED mean "ready for more". It heartbeats while it runs a task; one
silent for FR_HEARTBEAT_S x FR_HEARTBEAT_LIVENESS is dropped and its task goes back to the head of the
queue (attempt + 1; FR_MAX_ATTEMPTS losses fail the job). A task that reaches a busy worker comes back
(REJECT). A message counts only from the key the worker first came with.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq

from app.broker.job import Job
from app.broker.said import Said
from app.broker.store import JobStore
from app.wire import protocol as p
from app.wire.curve import WORKERS, BrokerAuth
from app.wire.protocol import ProtocolError, Task, escape
from constants import Settings
from constants.states import TASK_STATE, JobState, TaskKind
from logger import logger

if TYPE_CHECKING:
    from app.broker.cameras import Cameras
    from app.broker.planning import Planner
    from app.broker.results import Results


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


class WorkerPool:
    """The back socket's peers: one handler per message kind."""

    def __init__(self, settings: Settings, back: zmq.Socket, auth: BrokerAuth, store: Callable[[], JobStore],
                 planner: Planner, fail: Callable[[str, str, str], None], said: Said):
        self.s = settings
        self.back = back
        self.auth = auth
        self._store = store
        self.planner = planner
        self.fail = fail
        self.said = said
        self.results: Results  # set by the broker once both exist
        self.cameras: Cameras | None = None  # likewise
        self.workers: dict[bytes, WorkerState] = {}

    @property
    def store(self) -> JobStore:
        return self._store()

    # --- what the pool holds ------------------------------------------------------------------------
    def idle(self) -> WorkerState | None:
        return next((w for w in self.workers.values() if w.task is None), None)

    def holds(self, what: tuple) -> bool:
        """Some worker runs this work (whatever the attempt)."""
        return any(w.task and w.task.what == what for w in self.workers.values())

    def held(self) -> set[tuple]:
        return {w.task.what for w in self.workers.values() if w.task}

    def genomes_held(self, job_id: str) -> set[str]:
        return {w.task.genome for w in self.workers.values() if w.task and w.task.job == job_id}

    def counts(self) -> dict[str, int]:
        busy = sum(1 for w in self.workers.values() if w.task)
        return {"workers": len(self.workers), "busy": busy, "idle": len(self.workers) - busy,
                "warming": sum(1 for w in self.workers.values() if w.warming)}

    # --- messages ---------------------------------------------------------------------------------------
    def on_message(self, frames: list[zmq.Frame]) -> None:
        if len(frames) < 2:
            return
        key = str(frames[-1].get("User-Id"))
        if not self.auth.allowed[WORKERS].permits(key):
            self.said.warn(f"dropped messages from a worker key that is no longer allowed: {escape(key, 60)}")
            return
        identity = frames[0].bytes
        worker = self.workers.get(identity)
        try:
            command, header, blobs = p.parse_worker([f.bytes for f in frames[1:]])
        except ProtocolError as exc:
            who = worker.name if worker else escape(identity, 80)
            self.said.warn(f"worker {who}: dropped a message: {escape(exc)}")
            return
        if worker is None:
            worker = self.workers[identity] = WorkerState(identity, key, time.monotonic())
            logger.info("worker {} joined ({} connected)", worker.name, len(self.workers))
        elif worker.key != key:
            self.said.warn(f"worker {worker.name}: dropped a message signed by another key")
            return
        worker.last_seen = time.monotonic()
        handler = {p.READY: self.on_ready, p.HEARTBEAT: self.on_heartbeat, p.REJECT: self.on_reject,
                   p.PROGRESS: self.on_progress}.get(command)
        if handler is not None:
            handler(worker, header)
        elif command in (p.DONE, p.FAILED):
            self.results.on_result(worker, command, header, blobs)
        elif command == p.CAMSTATE and self.cameras is not None:
            self.cameras.on_state(worker, header)
        elif command == p.CAMEVENT and self.cameras is not None:
            self.cameras.on_event(worker, header, blobs[0])

    def on_ready(self, worker: WorkerState, header: dict) -> None:
        if worker.task:  # it restarted: what it was doing is lost
            self.recover(worker.task)
        worker.task = None
        if self.cameras is not None:  # ... and the cameras it watched
            self.cameras.lost(worker)

    def on_heartbeat(self, worker: WorkerState, header: dict) -> None:
        worker.warming = header["warming"]
        if self.cameras is not None:
            self.cameras.on_heartbeat(worker, header["cameras"])
        # Only READY/DONE/FAILED make a worker idle: a heartbeat sent before it received a task must
        # not free it again. A worker met mid-task (this broker restarted) is busy with that task.
        task: Task | None = header.get("task")
        if task and worker.task is None and self.adoptable(task):
            worker.task = task

    def on_reject(self, worker: WorkerState, header: dict) -> None:
        task: Task | None = header.get("task")
        if task is not None and worker.task == task:
            worker.task = header["busy_with"] if self.adoptable(header["busy_with"]) else None
            worker.since = 0.0
            self.planner.queue.appendleft(task)

    def on_progress(self, worker: WorkerState, header: dict) -> None:
        task: Task | None = header.get("task")
        if worker.task is not None and task is not None and worker.task.what == task.what \
                and task.kind != TaskKind.EVALUATE:  # a search's progress is the broker's own
            self.store.progress(task.job, TASK_STATE[task.kind], header["stage"], header["done"], header["total"])

    def adoptable(self, task: Task) -> bool:
        """A task a worker says it runs, which this broker did not give it (it restarted): the job
        must be running and nobody else may hold that work."""
        job = self.store.get(task.job)
        return job is not None and not job.final and not self.holds(task.what)

    # --- tasks --------------------------------------------------------------------------------------
    def hand(self, worker: WorkerState, task: Task, job: Job, frames: list[bytes]) -> None:
        self.store.assign(task.job, worker.name, task.attempt)
        if job.state == JobState.QUEUED and task.kind == TaskKind.VIDEO:
            self.store.progress(task.job, JobState.PROCESSING, JobState.PROCESSING, 0, 0)
        elif job.state == JobState.QUEUED:
            self.store.progress(task.job, JobState.EXTRACTING, JobState.EXTRACTING, 0, job.n_new)
        worker.task, worker.since = task, time.monotonic()
        self.back.send_multipart([worker.identity, *frames])
        logger.debug("job {} {} {} (attempt {}) -> {}", task.job, task.kind, task.chunk, task.attempt, worker.name)

    def recover(self, task: Task) -> None:
        """A task lost with its worker goes back to the head of the queue (or fails its job after
        FR_MAX_ATTEMPTS losses), unless nobody needs it any more or another worker has it."""
        job = self.store.get(task.job)
        if not self.planner.useful(task, job):
            return
        if self.holds(task.what):
            return  # another worker has it (we met it mid-task after a restart)
        if task.attempt >= self.s.max_attempts:
            self.fail(task.job, "WORKER_LOST", f"a {task.kind} task was lost with its worker "
                      f"{task.attempt} times; giving up")
            return
        self.planner.queue.appendleft(Task(task.job, task.kind, task.chunk, task.attempt + 1, task.genome))
        logger.warning("job {}: {} task {} requeued after losing its worker", task.job, task.kind, task.chunk)

    def beat(self, safely: Callable) -> None:
        """Heartbeat live workers; declare silent ones dead and put their tasks back first in line."""
        while self.back.poll(0):  # after a long step (a big upload) read what workers sent meanwhile
            safely(self.on_message, self.back.recv_multipart(copy=False))
        now = time.monotonic()
        for identity, worker in list(self.workers.items()):
            if now - worker.last_seen > self.s.heartbeat_expiry_s:
                del self.workers[identity]
                logger.warning("worker {} lost ({} left)", worker.name, len(self.workers))
                if worker.task:
                    safely(self.recover, worker.task)
                if self.cameras is not None:
                    safely(self.cameras.lost, worker)
            else:
                self.back.send_multipart([identity, p.HEARTBEAT])

    def purge(self, digests: list[str], keys: list | tuple = (), only: WorkerState | None = None) -> None:
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
