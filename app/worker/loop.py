"""A worker: one loop that talks to the broker while a thread runs the current task.

It authenticates to the broker with its CURVE key pair (app/wire/curve.py) and checks
the broker's key in turn; every message it receives is checked before use
(`protocol.parse_job`). The loop never blocks on work, so heartbeats keep flowing during a long task.
The task thread posts its messages (progress, then the result) on an inproc
PUSH socket that the loop polls beside the broker's, so a result reaches the
broker the moment it is ready and the next task follows at once.
Killing a worker (even with -9) loses nothing: the broker stops hearing its
heartbeats and gives the task to another worker.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import zmq

from app.wire import curve
from app.wire import protocol as p
from app.wire.protocol import ProtocolError, Task
from constants import Settings
from constants.states import TaskKind
from features.extract import FeatureCache
from logger import logger
from preprocessor.uploads import Photo


class Worker:
    def __init__(self, settings: Settings, connect: str, keys_dir: Path, ctx: zmq.Context | None = None):
        self.s = settings
        self.connect = connect
        self.ctx = ctx or zmq.Context.instance()
        # host:pid in the identity makes `worker` in the job store point at a real process
        host = "".join(c for c in socket.gethostname() if c.isalnum() or c in "-.")[:40] or "host"
        self.identity = f"{host}:{os.getpid()}:{uuid.uuid4().hex[:6]}".encode()
        self.sock = curve.client_socket(self.ctx, zmq.DEALER, keys_dir, "worker")
        self.sock.setsockopt(zmq.IDENTITY, self.identity)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 100)      # zmq reconnects by itself, backing off to 5 s
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
        p.tune(self.sock, settings.heartbeat_s, 4 * 1024**3)
        self.sock.connect(connect)
        self.cache = FeatureCache(settings.cache_dir, settings)
        # Messages from the task thread (each task thread opens its own PUSH end).
        self.events_addr = f"inproc://worker-events-{uuid.uuid4().hex}"
        self.events = self.ctx.socket(zmq.PULL)
        self.events.bind(self.events_addr)
        self.task: Task | None = None  # the task being worked on
        self.watches: dict[str, Any] = {}  # camera id -> its Watch (app/worker/watch.py), beside any task
        self.recognizers: dict[str, Any] = {}  # bundle sha256 -> Recognizer, shared by the cameras of a model
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
                self.on_broker(self.sock.recv_multipart())
            if self.events in ready:
                self.forward_events()
            if time.monotonic() >= next_beat:
                try:  # never block on a heartbeat: with the broker away they would pile up to the HWM
                    self.sock.send_multipart(p.pack(p.HEARTBEAT, self.beat_body()), flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
                next_beat = time.monotonic() + self.s.heartbeat_s

    def on_broker(self, frames: list[bytes]) -> None:
        try:
            command, header, blobs = p.parse_job(frames)
        except ProtocolError as exc:
            logger.warning("dropped a message from the broker: {}", p.escape(exc))
            return
        if command == p.JOB:
            self.start(header, blobs)
        elif command == p.WATCH:
            self.watch(header["camera"], blobs[0])
        elif command == p.UNWATCH:
            watch = self.watches.pop(header["id"], None)
            if watch is not None:
                watch.stop()
                logger.info("camera {}: no longer watched here", header["id"])
        elif command == p.PURGE:
            removed = self.cache.purge(header["photos"]) + self.cache.purge_keys(header["keys"])
            logger.info("forgot {} cached photo(s) of a deleted job", removed)

    def beat_body(self) -> dict:
        body: dict = {"task": self.task.to_wire()} if self.task else {}
        if self.watches:
            body["cameras"] = sorted(self.watches)
        if self.warming:
            body["warming"] = True
        return body

    def warm_up(self) -> None:
        from app.shared.warm_up import warm_up
        try:
            warm_up(self.s, "worker")
        finally:
            self.warming = False

    def start(self, header: dict, blobs: list[bytes]) -> None:
        if self.task is not None:  # should not happen; hand it back rather than lose it
            logger.warning("got a task of job {} while busy; handing it back", header["task"].job)
            self.sock.send_multipart(p.pack(p.REJECT, {"task": header["task"].to_wire(),
                                                       "busy_with": self.task.to_wire()}))
            return
        self.task = header["task"]
        threading.Thread(target=self.work, args=(header, blobs), daemon=True, name="task").start()

    def work(self, header: dict, blobs: list[bytes]) -> None:
        """Runs in the task thread: do the task, then post DONE or FAILED."""
        from app.worker.tasks import BuildError, evaluate_genome, extract_chunk, train_bundle
        task: Task = header["task"]
        job_id = task.job
        last = [0.0]
        out = self.ctx.socket(zmq.PUSH)  # this thread's own end: zmq sockets are not shared across threads
        out.connect(self.events_addr)

        def post(command: bytes, body: dict, result: tuple[bytes, ...] = ()) -> None:
            out.send_multipart(p.pack(command, body, result))

        def progress(state: str, stage: str, done: int, total: int) -> None:
            # `state` is what the build reports; the broker derives the job's state from the task's kind
            now = time.monotonic()
            if now - last[0] >= 0.5 or done == 0:  # rate-limit store writes
                last[0] = now
                post(p.PROGRESS, {"task": task.to_wire(), "stage": stage, "done": done, "total": total})

        try:
            if task.kind == TaskKind.EXTRACT:
                photos = [Photo(f["label"], f["filename"], b) for f, b in zip(header["files"], blobs)]
                result = json.dumps(extract_chunk(photos, self.s, header.get("tenant")), allow_nan=False).encode()
            elif task.kind == TaskKind.VIDEO:
                from app.worker.video import run_video
                result = run_video(header.get("options", {}), blobs[0], blobs[1], self.s, progress)
            elif task.kind == TaskKind.EVALUATE:
                job = {"id": job_id, "options": header.get("options", {})}
                result = json.dumps(evaluate_genome(job, header["files"], blobs[0], task.genome,
                                                    self.s), allow_nan=False).encode()
            else:
                logger.info("job {}: training on {} photos", job_id, len(header["files"]))
                job = {"id": job_id, "name": header.get("name"), "options": header.get("options", {})}
                result = train_bundle(job, header["files"], json.loads(blobs[0]), self.s, progress,
                                      header.get("search"))
            post(p.DONE, {"task": task.to_wire()}, (result,))
        except BuildError as exc:
            post(p.FAILED, {"task": task.to_wire(), "code": exc.code, "message": exc.message,
                            "details": exc.details})
        except Exception as exc:
            logger.error("job {} {} task crashed:\n{}", job_id, task.kind, traceback.format_exc())
            post(p.FAILED, {"task": task.to_wire(), "code": "BUILD_ERROR",
                            "message": f"{type(exc).__name__}: {exc}"[:2000]})
        finally:
            out.close()  # linger: what was posted is still delivered

    def watch(self, camera: dict, bundle: bytes) -> None:
        """Hold a camera (WATCH): a thread runs its Watch and posts its states and events to this loop."""
        from app.shared.callbacks import AllowList
        from app.worker.watch import Watch
        from modelization.recognizer import load_bundle
        camera_id = camera["id"]
        if camera_id in self.watches:
            return
        digest = hashlib.sha256(bundle).hexdigest()
        try:
            recognizer = self.recognizers.get(digest) or load_bundle(bundle, self.s)
        except Exception as exc:
            why = f"its model could not be loaded ({type(exc).__name__})"
            self.sock.send_multipart(p.pack(p.CAMSTATE, {"camera": camera_id, "state": "offline", "reason": why}))
            return
        self.recognizers[digest] = recognizer
        posts: dict[str, zmq.Socket] = {}

        def post(command: bytes, body: dict, blobs: tuple[bytes, ...] = ()) -> None:
            out = posts.get("out")
            if out is None:  # created in the watch's own thread: zmq sockets are not shared across threads
                out = posts["out"] = self.ctx.socket(zmq.PUSH)
                out.connect(self.events_addr)
            if self.watches.get(camera_id) is watch:  # a camera handed away says nothing more
                out.send_multipart(p.pack(command, body, blobs))

        watch = Watch(camera, recognizer, self.s,
                      lambda state, reason: post(p.CAMSTATE, {"camera": camera_id, "state": state, "reason": reason}),
                      lambda event, snapshot: post(p.CAMEVENT, {"camera": camera_id, "event": event}, (snapshot,)),
                      AllowList.parse(self.s.camera_allow))
        self.watches[camera_id] = watch

        def run() -> None:
            try:
                watch.run()
            finally:
                if "out" in posts:
                    posts["out"].close()
                self.forget_models()

        threading.Thread(target=run, daemon=True, name=f"watch-{camera_id[:8]}").start()
        logger.info("camera {}: watching", camera_id)

    def forget_models(self) -> None:
        """Drop the recognizers no camera uses any more."""
        used = {id(w.r) for w in list(self.watches.values())}
        for digest, recognizer in list(self.recognizers.items()):
            if id(recognizer) not in used:
                self.recognizers.pop(digest, None)

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


def run_worker(settings: Settings, connect: str, keys_dir: Path) -> None:
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    from app.worker.temp import sweep_temp
    if settings.var_dir.exists():
        sweep_temp(settings)  # a video copied here by a worker killed mid-task
    Worker(settings, connect, keys_dir).run()
