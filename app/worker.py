"""A worker: one loop that talks to the broker while a thread runs the current task.

The loop never blocks on work, so heartbeats keep flowing during a long task;
the task thread reports through a queue that the loop forwards to the broker.
Killing a worker (even with -9) loses nothing: the broker stops hearing its
heartbeats and gives the task to another worker.
"""
from __future__ import annotations

import json
import os
import queue
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
        self.events: queue.Queue = queue.Queue()  # (command, header, blobs) from the task thread
        self.task: dict | None = None  # the task being worked on
        self.running = True

    def run(self) -> None:
        logger.info("worker {} connecting to {}", self.identity.decode(), self.connect)
        self.sock.send_multipart(p.pack(p.READY))
        next_beat = 0.0
        while self.running:
            if self.sock.poll(timeout=100):  # short: events from the task thread wait at most this
                command, header, blobs = p.unpack(self.sock.recv_multipart())
                if command == p.JOB:
                    self.start(header, blobs)
            self.forward_events()
            if time.monotonic() >= next_beat:
                try:  # never block on a heartbeat: with the broker away they would pile up to the HWM
                    self.sock.send_multipart(p.pack(p.HEARTBEAT, {"task": self.task} if self.task else {}),
                                             flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
                next_beat = time.monotonic() + self.s.heartbeat_s

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

        def progress(state: str, stage: str, done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.5 or done == 0:  # rate-limit store writes
                last[0] = now
                self.events.put((p.PROGRESS, {"job": job_id, "state": state, "stage": stage,
                                              "done": done, "total": total}, []))

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
            self.events.put((p.DONE, {"task": task}, [result]))
        except BuildError as exc:
            self.events.put((p.FAILED, {"task": task, "code": exc.code, "message": exc.message,
                                        "details": exc.details}, []))
        except Exception as exc:
            logger.error("job {} {} task crashed:\n{}", job_id, task["kind"], traceback.format_exc())
            self.events.put((p.FAILED, {"task": task, "code": "BUILD_ERROR",
                                        "message": f"{type(exc).__name__}: {exc}"}, []))

    def forward_events(self) -> None:
        while True:
            try:
                command, header, blobs = self.events.get_nowait()
            except queue.Empty:
                return
            self.sock.send_multipart(p.pack(command, header, blobs))
            if command in (p.DONE, p.FAILED):  # the broker takes these as "ready for more"
                self.task = None


def run_worker(settings: Settings, connect: str) -> None:
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    Worker(settings, connect).run()
