"""The load-balancing broker: the front submits jobs, idle workers get them.

One loop, one thread, the only writer of the job store. Crash recovery is part
of the design: a job is durable (SQLite + files) before the front gets its id;
a worker that misses its heartbeats loses its job back to the head of the
queue; a broker that starts requeues every unfinished job.
"""
from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass

import zmq

from app import protocol as p
from app.store import JobStore
from constants import DONE, FAILED, TERMINAL_STATES, Settings
from logger import logger
from modelization.bundle import save_bundle
from preprocessor.uploads import Photo


@dataclass
class WorkerState:
    identity: bytes
    last_seen: float
    job: str | None = None
    attempt: int = 0


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
        self.queue: deque[str] = deque(self.store.requeue_unfinished())
        self.running = True
        if self.queue:
            logger.info("requeued {} unfinished job(s) from the store", len(self.queue))

    # --- inspection ----------------------------------------------------------
    def status(self) -> dict:
        busy = sum(1 for w in self.workers.values() if w.job)
        return {"workers": len(self.workers), "busy": busy, "idle": len(self.workers) - busy,
                "queued": len(self.queue)}

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

    # --- front -----------------------------------------------------------------
    def on_front(self, frames: list[bytes]) -> None:
        identity, _empty, *msg = frames
        command, header, blobs = p.unpack(msg)
        try:
            if command == p.SUBMIT:
                reply = p.pack(p.OK, self.submit(header, blobs))
            elif command == p.STATUS:
                reply = p.pack(p.OK, self.status())
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
        self.store.create(job_id, header.get("name"), header.get("options", {}),
                          len(photos), len({ph.label for ph in photos}))
        self.queue.append(job_id)
        logger.info("job {} queued: {} photos of {} people", job_id, len(photos), len({ph.label for ph in photos}))
        return {"id": job_id}

    # --- workers -----------------------------------------------------------------
    def on_worker(self, frames: list[bytes]) -> None:
        identity, *msg = frames
        command, header, blobs = p.unpack(msg)
        worker = self.workers.get(identity)
        if worker is None:
            worker = self.workers[identity] = WorkerState(identity, time.monotonic())
            logger.info("worker {} joined ({} connected)", identity.decode(errors="replace"), len(self.workers))
        worker.last_seen = time.monotonic()
        if command == p.READY:
            worker.job = None
        elif command == p.HEARTBEAT:
            # Only READY/DONE/FAILED make a worker idle: a heartbeat sent before it received
            # a job must not free it again. A worker met mid-job (we restarted) is busy.
            if header.get("job") and not worker.job:
                worker.job, worker.attempt = header["job"], header.get("attempt", 0)
        elif command == p.PROGRESS:
            self.store.progress(header["job"], header["state"], header["stage"], header["done"], header["total"])
        elif command == p.DONE:
            self.on_done(worker, header, blobs[0])
        elif command == p.FAILED:
            self.on_failed(worker, header)

    def on_done(self, worker: WorkerState, header: dict, bundle: bytes) -> None:
        job_id = header["job"]
        row = self.store.get(job_id)
        if worker.job == job_id:
            worker.job = None
        if row is None or row["state"] in TERMINAL_STATES:
            logger.info("ignoring late result for job {}", job_id)
            return
        try:
            save_bundle(self.s.dumps_dir, job_id, bundle)
        except Exception as exc:
            logger.exception("could not save the bundle of job {}", job_id)
            self.store.fail(job_id, "INTERNAL", f"could not save the model: {exc}")
            return
        self.store.finish(job_id)
        self._drop(job_id)
        if not self.s.keep_uploads:
            self.store.delete_uploads(job_id)
        logger.info("job {} done", job_id)

    def on_failed(self, worker: WorkerState, header: dict) -> None:
        job_id = header["job"]
        if worker.job == job_id:
            worker.job = None
        row = self.store.get(job_id)
        if row is None or row["state"] in TERMINAL_STATES:
            return
        self.store.fail(job_id, header["code"], header["message"], header.get("details"))
        self._drop(job_id)
        logger.info("job {} failed: {} {}", job_id, header["code"], header["message"])

    def _drop(self, job_id: str) -> None:
        try:
            self.queue.remove(job_id)
        except ValueError:
            pass

    def beat(self) -> None:
        """Heartbeat live workers; declare silent ones dead and put their jobs back first in line."""
        now = time.monotonic()
        for identity, worker in list(self.workers.items()):
            if now - worker.last_seen > self.s.heartbeat_expiry_s:
                del self.workers[identity]
                logger.warning("worker {} lost ({} left)", identity.decode(errors="replace"), len(self.workers))
                if worker.job:
                    self.recover(worker.job)
            else:
                self.back.send_multipart([identity, p.HEARTBEAT])

    def recover(self, job_id: str) -> None:
        row = self.store.get(job_id)
        if row is None or row["state"] in TERMINAL_STATES:
            return
        if any(w.job == job_id for w in self.workers.values()):
            return  # another worker has it (we met it mid-job after a restart)
        if row["attempts"] >= self.s.max_attempts:
            self.store.fail(job_id, "WORKER_LOST",
                            f"the job was lost with its worker {row['attempts']} times; giving up")
            return
        self.store.requeue(job_id)
        if job_id not in self.queue:
            self.queue.appendleft(job_id)
        logger.warning("job {} requeued after losing its worker", job_id)

    def dispatch(self) -> None:
        """Hand queued jobs to idle workers (least recently seen first is not needed: any idle one)."""
        while self.queue:
            idle = next((w for w in self.workers.values() if w.job is None), None)
            if idle is None:
                return
            job_id = self.queue.popleft()
            row = self.store.get(job_id)
            if row is None or row["state"] in TERMINAL_STATES:
                continue
            if not self.store.has_uploads(job_id):
                self.store.fail(job_id, "UPLOAD_LOST", "the uploaded photos of this job are gone")
                continue
            photos = self.store.load_uploads(job_id)
            attempt = self.store.assign(job_id, idle.identity.decode(errors="replace"))
            idle.job, idle.attempt = job_id, attempt
            header = {"job": job_id, "attempt": attempt, "name": row["name"],
                      "options": self.store.options(job_id),
                      "files": [{"label": ph.label, "filename": ph.filename} for ph in photos]}
            self.back.send_multipart([idle.identity, *p.pack(p.JOB, header, [ph.data for ph in photos])])
            logger.info("job {} (attempt {}) -> worker {}", job_id, attempt, idle.identity.decode(errors="replace"))


def new_job_id() -> str:
    return str(uuid.uuid4())


def run_broker(settings: Settings) -> None:
    broker = Broker(settings)
    try:
        broker.run()
    finally:
        broker.close()
