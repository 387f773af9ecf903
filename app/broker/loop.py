"""The load-balancing broker: the front submits jobs, idle workers get tasks.

A job is cut into tasks so that every worker can help with one build: `extract` tasks (a chunk of photos
-> their embeddings), then, with optimize=1, `evaluate` tasks (one genome of the genetic search each),
then one `train` task (all embeddings -> the model bundle). One loop, one thread, the only writer of the
job store; it owns the sockets and hands each message to the part that deals with its kind:

  intake (SUBMIT, DERIVE)    planning (the queue)     search (optimize=1)    pool (the workers)
  results (DONE, FAILED)     deletion (DELETE)        erasure (ERASE)        reads (reader threads)

Callbacks and metrics are listeners on job events (app/broker/events.py).

Trust: both sockets are CURVE servers (app/wire/curve.py): only the service's own fronts reach the front
socket, only allowed workers the back one, and a key removed from `allowed/` is refused on its next
message. Every message is checked against its schema (app/wire/protocol.py) before anything reads it. A
message that does not fit is logged (escaped) and dropped: no message, and no failing disk or store,
stops the loop.

Crash recovery is part of the design: a job is durable (SQLite + files) before the front gets its id;
each finished chunk's embeddings are written to disk; a worker that misses its heartbeats loses its task
back to the head of the queue; a broker that starts queues again whatever is unfinished. The search is
checkpointed after every result and resumes from its last state.
"""
from __future__ import annotations

import shutil
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import zmq

from app.broker.cameras import Cameras
from app.broker.deletion import Deletion
from app.broker.erasure import Erasure
from app.broker.events import Callbacks, JobEvents, Metrics
from app.broker.fronts import Fronts
from app.broker.intake import Intake
from app.broker.planning import Planner
from app.broker.pool import WorkerPool
from app.broker.reader import BundleSums
from app.broker.reads import Reads
from app.broker.records import Records
from app.broker.results import Results
from app.broker.said import Said
from app.broker.search import Searches
from app.broker.store import JobStore
from app.broker.unknown import UnknownFaces
from app.shared.api_keys import KeyStore
from app.shared.storage import StorageFull, StoreUnavailable
from app.wire import protocol as p
from app.wire.curve import FRONTS, WORKERS, BrokerAuth
from app.wire.protocol import ProtocolError, Task, escape
from constants import Settings
from logger import logger

DISK_RETRY_S = 5.0          # a broker stalled by a full disk looks for room this often
MIN_ROOM = 16 * 1024 * 1024  # ... and resumes once this much is free


class Broker:
    def __init__(self, settings: Settings, ctx: zmq.Context | None = None):
        self.s = settings
        settings.ensure_dirs()
        self.ctx = ctx or zmq.Context.instance()
        self.auth = BrokerAuth(self.ctx, settings.keys_dir)
        self.front, self.back = self.ctx.socket(zmq.ROUTER), self.ctx.socket(zmq.ROUTER)
        self.auth.serve(self.front, FRONTS)
        self.auth.serve(self.back, WORKERS)
        p.tune(self.front, settings.heartbeat_s, max(settings.max_photo_bytes, p.MAX_HEADER_BYTES,
                                                     settings.max_video_bytes))
        p.tune(self.back, settings.heartbeat_s, p.MAX_RESULT_BYTES)
        self.front.bind(settings.front_endpoint)
        if settings.front_endpoint.startswith("ipc://"):
            Path(settings.front_endpoint[len("ipc://"):]).chmod(0o600)
        if settings.broker_front_tcp:  # fronts on other hosts (CURVE: only keys in allowed/fronts/)
            self.front.bind(settings.broker_front_tcp)
        self.back.bind(settings.broker_back)
        self.running = True
        self.said = Said()
        self.stalled_until: float | None = None  # the disk is full: no work handed out until then
        self._store: JobStore | None = None
        self._store_retry = 0.0
        self.keystore = KeyStore(settings.auth_db_path)
        self.sums = BundleSums()
        self.reads = Reads(settings, self.ctx, self.sums)
        self.compose()
        try:
            self.open_store()
        except StoreUnavailable as exc:
            logger.error("{}; retrying, builds are refused meanwhile", exc)

    def compose(self) -> None:
        """The parts, and who listens to job events."""
        s, store = self.s, lambda: self.store
        self.events = JobEvents()
        self.records = Records(s, store)
        self.planner = Planner(s, store, self.records, self.fail)
        self.pool = WorkerPool(s, self.back, self.auth, store, self.planner, self.fail, self.said)
        self.searches = self.planner.searches = Searches(s, store, self.planner, self.pool.genomes_held)
        self.intake = Intake(s, store, self.ctx, self.planner, self.records, self.events)
        self.deletion = Deletion(s, store, self.planner, self.pool, self.records, self.sums, self.events)
        self.erasure = Erasure(s, store, self.intake, self.deletion, self.pool, self.records, self.events)
        self.pool.results = Results(s, store, self.planner, self.searches, self.pool, self.records, self.deletion,
                                    self.sums, self.events, self.fail, self.end, self.said)
        self.callbacks = Callbacks(s)
        self.cameras = self.pool.cameras = Cameras(s, self.back, store, lambda: self.pool.workers,
                                                   lambda: self.callbacks.store, self.callbacks.sender.wake)
        self.fronts = Fronts(s, self.front, self.auth, self.keystore, self.reads, self.intake, self.deletion,
                             self.erasure, self.status, self.cameras)
        self.unknown = self.intake.unknown = self.fronts.unknown = UnknownFaces(s, store)
        for listener in (self.callbacks, Metrics(), self.planner, self.searches, self.records, self.unknown,
                         self.unknown.namings, self.cameras):
            self.events.add(listener)

    @property
    def queue(self) -> deque[Task]:
        return self.planner.queue

    def submit(self, header: dict, blobs: list[bytes]) -> dict:
        """Store a build durably, then queue its work, in one go, on the caller's thread (tests, tools)."""
        return self.intake.create(self.intake.admit(p.SUBMIT, header, blobs))

    # --- the store, reopened when it comes back ---------------------------------------------
    def open_store(self) -> JobStore:
        """Open the store and queue again every unfinished job (start, or the store came back)."""
        store = JobStore(self.s.db_path, self.s.uploads_dir)
        self._store = store
        swept = store.sweep_uploads(keep_done=self.s.keep_uploads, busy=frozenset(self.intake.storing)) + \
            store.sweep_models(self.s.dumps_dir)
        if swept:
            logger.info("removed {} folder(s) left behind by a stop: {}", len(swept), swept[:5])
        unfinished = store.unfinished()
        for job_id in unfinished:
            self.planner.plan(job_id)
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

    def status(self) -> dict:
        body = {**self.pool.counts(),
                "queued": len({t.job for t in self.queue}), "tasks_queued": len(self.queue),
                "searches": self.searches.active(),
                "disk_free_bytes": shutil.disk_usage(self.s.data_dir).free, "disk_full": self.stalled_until is not None,
                "store": {"ok": True}, "callbacks": self.callbacks.health()}
        try:
            body["builds"] = self.store.count_by_state()  # for /metrics of fronts on any host
        except StoreUnavailable as exc:
            body["store"] = {"ok": False, "message": str(exc)}
        return body

    # --- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        poller = zmq.Poller()
        for sock in (self.front, self.back, self.reads.socket, self.intake.writer.results):
            poller.register(sock, zmq.POLLIN)
        next_beat = time.monotonic()
        self.callbacks.start()
        logger.info("broker up: front {}{} back {}", self.s.front_endpoint,
                    f" and {self.s.broker_front_tcp}" if self.s.broker_front_tcp else "", self.s.broker_back)
        while self.running:
            events = dict(poller.poll(timeout=int(self.s.heartbeat_s * 1000 / 2)))
            if self.back in events:
                self.safely(self.pool.on_message, self.back.recv_multipart(copy=False))
            if self.front in events:
                self.safely(self.fronts.on_message, self.front.recv_multipart(copy=False))
            if self.reads.socket in events:
                self.safely(self.reads.on_answers, self.front)
            if self.intake.writer.results in events:
                self.safely(self.intake.on_stored, self.fronts.reply, self.fronts.refuse)
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
            if self.said.due(what):
                if isinstance(exc, (StoreUnavailable, StorageFull, ProtocolError)):
                    logger.error(what)
                else:
                    logger.exception(what)

    def beat(self) -> None:
        self.pool.beat(self.safely)
        self.resume()
        self.searches.check_budgets()
        self.deletion.expire_failed(time.time())
        self.unknown.expire(time.time())
        self.cameras.beat()

    def dispatch(self) -> None:
        """Hand queued tasks to idle workers (none while the disk is full)."""
        while self.queue and self.stalled_until is None:
            worker = self.pool.idle()
            if worker is None:
                return
            task = self.planner.next_task()
            if task is None:
                return
            self.pool.hand(worker, *task)

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
        queued = self.planner.plan_all(self.pool.held())
        self.stalled_until = None
        logger.info("the data disk has room again: {} task(s) queued", queued)

    # --- a job's end ---------------------------------------------------------------------------
    def fail(self, job_id: str, code: str, message: str, details: dict | None = None) -> None:
        self.store.fail(job_id, code, message, details)
        self.planner.drop(job_id)
        self.events.emit("forget", job_id)
        self.end(job_id)
        logger.info("job {} failed: {} {}", job_id, code, escape(message))

    def end(self, job_id: str) -> None:
        """A job is done or failed: listeners hear it (its callback is queued). Never raises: the end stands."""
        try:
            job = self.store.get(job_id)
        except StoreUnavailable as exc:
            logger.error("job {}: its callback could not be queued: {}", job_id, escape(exc))
            return
        if job is not None:
            self.events.emit("ended", job)

    def close(self) -> None:
        self.callbacks.close()
        self.cameras.close()
        self.intake.stop()
        self.unknown.close()
        self.reads.close()
        self.front.close(0)
        self.back.close(0)
        self.auth.stop()
        if self._store is not None:
            self._store.close()


def run_broker(settings: Settings) -> None:
    broker = Broker(settings)
    try:
        broker.run()
    finally:
        broker.close()
