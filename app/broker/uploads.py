"""Uploads being written: one thread writes each new job's photos (one fsynced pack each) so that the
broker's loop never waits on a disk write of up to FR_MAX_REQUEST_BYTES."""
from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from app.shared.storage import StorageFull
from logger import logger
from preprocessor.uploads import Photo


@dataclass
class NewJob:
    """A build or derivation checked and waiting to be stored: its row's fields, what it inherits and its new
    photos (the only ones written and extracted), and the answer its front gets once it is registered."""
    id: str
    name: str | None
    options: dict
    parent: str | None
    tenant: str | None
    inherited: list[dict]
    fresh: list[Photo]
    callback: dict | None
    deadline: float | None
    answer: dict
    kind: str | None = None  # "video": one recorded video (its only "photo"), no people

    @property
    def labels(self) -> set[str]:
        if self.kind == "video":
            return set()
        return {ph.label for ph in self.fresh} | {r["label"] for r in self.inherited}

    @property
    def n_photos(self) -> int:
        return len(self.inherited) + len(self.fresh)

    @property
    def size(self) -> int:
        return sum(len(ph.data) for ph in self.fresh)


@dataclass
class Upload:
    """A new job being written: who to answer once its photos are on disk."""
    identity: bytes
    job: NewJob
    cancelled: bool = False  # an erasure of someone it holds came meanwhile: refused once written


class UploadWriter:
    """The writer thread; each result goes back on an inproc socket the loop polls: (job id, None) or
    (job id, the ERR header to answer)."""

    def __init__(self, write: Callable[[str, list[Photo], list[dict] | None], None], ctx: zmq.Context):
        self.write = write
        self.address = f"inproc://broker-uploads-{uuid.uuid4().hex}"
        self.results = ctx.socket(zmq.PULL)
        self.results.bind(self.address)
        self.ctx = ctx
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self.run, daemon=True, name="upload-writer")
        self.thread.start()

    def put(self, job: NewJob) -> None:
        """Write a job's photos (and, for a derivation, the records it inherits) in the background."""
        self.queue.put((job.id, job.fresh, job.inherited or None))

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
