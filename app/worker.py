"""A worker: one loop that talks to the broker while a thread runs the current task.

The loop never blocks on work, so heartbeats keep flowing during a long task.
The task thread posts its messages (progress, then the result) on an inproc
PUSH socket that the loop polls beside the broker's, so a result reaches the
broker the moment it is ready and the next task follows at once.
Killing a worker (even with -9) loses nothing: the broker stops hearing its
heartbeats and gives the task to another worker.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import traceback
import uuid

import zmq

from app import protocol as p
from constants import Settings
from logger import logger
from preprocessor.uploads import Photo


class Worker:
    def __init__(self, settings: Settings, connect: str, ctx: zmq.Context | None = None):
        self.s = settings
        self.connect = connect
        self.ctx = ctx or zmq.Context.instance()
        # host:pid in the identity makes `worker` in the job store point at a real process
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}".encode()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, self.identity)
        p.tune(self.sock, settings.heartbeat_s)
        self.sock.connect(connect)
        # Messages from the task thread (each task thread opens its own PUSH end).
        self.events_addr = f"inproc://worker-events-{uuid.uuid4().hex}"
        self.events = self.ctx.socket(zmq.PULL)
        self.events.bind(self.events_addr)
        self.task: dict | None = None  # the task being worked on
        self.warming = False  # the warm-up thread is loading models (reported in heartbeats)
        self.running = True

    def run(self) -> None:
        logger.info("worker {} connecting to {}", self.identity.decode(), self.connect)
        self.sock.send_multipart(p.pack(p.READY))
        if self.s.warm_up:  # in the background: the worker takes tasks meanwhile
            self.warming = True
            threading.Thread(target=self.warm_up, daemon=True, name="warm-up").start()
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.events, zmq.POLLIN)
        next_beat = 0.0
        while self.running:
            ready = dict(poller.poll(timeout=100))  # the timeout only paces heartbeats and `running`
            if self.sock in ready:
                command, header, blobs = p.unpack(self.sock.recv_multipart())
                if command == p.JOB:
                    self.start(header, blobs)
            if self.events in ready:
                self.forward_events()
            if time.monotonic() >= next_beat:
                try:  # never block on a heartbeat: with the broker away they would pile up to the HWM
                    self.sock.send_multipart(p.pack(p.HEARTBEAT, self.beat_body()), flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
                next_beat = time.monotonic() + self.s.heartbeat_s

    def beat_body(self) -> dict:
        body = {"task": self.task} if self.task else {}
        if self.warming:
            body["warming"] = True
        return body

    def warm_up(self) -> None:
        from app.warm import warm_up
        try:
            warm_up(self.s, "worker")
        finally:
            self.warming = False

    def start(self, header: dict, blobs: list[bytes]) -> None:
        if self.task is not None:  # should not happen; hand it back rather than lose it
            logger.warning("got a task of job {} while busy; handing it back", header["task"]["job"])
            self.sock.send_multipart(p.pack(p.REJECT, {"task": header["task"], "busy_with": self.task}))
            return
        self.task = header["task"]
        threading.Thread(target=self.work, args=(header, blobs), daemon=True, name="task").start()

    def work(self, header: dict, blobs: list[bytes]) -> None:
        """Runs in the task thread: do the task, then post DONE or FAILED."""
        from app.build import BuildError, evaluate_genome, extract_chunk, train_bundle
        task = header["task"]
        job_id = task["job"]
        last = [0.0]
        out = self.ctx.socket(zmq.PUSH)  # this thread's own end: zmq sockets are not shared across threads
        out.connect(self.events_addr)

        def post(command: bytes, body: dict, result: list[bytes] = ()) -> None:
            out.send_multipart(p.pack(command, body, result))

        def progress(state: str, stage: str, done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.5 or done == 0:  # rate-limit store writes
                last[0] = now
                post(p.PROGRESS, {"job": job_id, "state": state, "stage": stage, "done": done, "total": total})

        try:
            if task["kind"] == "extract":
                photos = [Photo(f["label"], f["filename"], b) for f, b in zip(header["files"], blobs)]
                result = json.dumps(extract_chunk(photos, self.s)).encode()
            elif task["kind"] == "evaluate":
                job = {"id": job_id, "options": header.get("options", {})}
                result = json.dumps(evaluate_genome(job, header["files"], blobs[0], task["genome"],
                                                    self.s)).encode()
            else:
                logger.info("job {}: training on {} photos", job_id, len(header["files"]))
                job = {"id": job_id, "name": header.get("name"), "options": header.get("options", {})}
                result = train_bundle(job, header["files"], json.loads(blobs[0]), self.s, progress,
                                      header.get("search"))
            post(p.DONE, {"task": task}, [result])
        except BuildError as exc:
            post(p.FAILED, {"task": task, "code": exc.code, "message": exc.message, "details": exc.details})
        except Exception as exc:
            logger.error("job {} {} task crashed:\n{}", job_id, task["kind"], traceback.format_exc())
            post(p.FAILED, {"task": task, "code": "BUILD_ERROR", "message": f"{type(exc).__name__}: {exc}"})
        finally:
            out.close()  # linger: what was posted is still delivered

    def forward_events(self) -> None:
        """Pass the task thread's messages on to the broker, as they are."""
        while True:
            try:
                frames = self.events.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            self.sock.send_multipart(frames)
            if frames[0] in (p.DONE, p.FAILED):  # the broker takes these as "ready for more"
                self.task = None


def run_worker(settings: Settings, connect: str) -> None:
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    Worker(settings, connect).run()
