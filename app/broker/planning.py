"""Planning: which tasks a job still needs, in what order, and what each task message carries.

A job is cut into `extract` tasks (a chunk of FR_CHUNK_PHOTOS photos each), then, with optimize=1,
the search's `evaluate` tasks (app/broker/search.py), then one `train` task. A video job is one `video`
task: its video and its model's bundle to one worker, which sends back the tracks. What is done is read from
disk (each finished chunk's features are written next to the photos), so planning a job again after a
restart or a full disk queues only the missing work.
"""
from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from app.broker.job import Job
from app.broker.records import Records, as_task_features
from app.broker.store import JobStore
from app.wire import protocol as p
from app.wire.protocol import Task
from constants import Settings
from constants.states import JobState, TaskKind
from logger import logger
from modelization.bundle import BUNDLE_FILE

if TYPE_CHECKING:
    from app.broker.search import Searches


class Planner:
    """The queue of tasks and what it takes to plan them: each job's chunks done and photo index, read once."""

    def __init__(self, settings: Settings, store: Callable[[], JobStore], records: Records,
                 fail: Callable[[str, str, str], None]):
        self.s = settings
        self._store = store
        self.records = records
        self.fail = fail
        self.searches: Searches  # set by the broker once both exist (each asks the other)
        self.queue: deque[Task] = deque()
        self.payloads: dict[str, bytes] = {}       # job -> all its features (JSON), for evaluate/train tasks
        self._done: dict[str, set[int]] = {}       # job -> chunks whose features are on disk (done_chunks)
        self._indexes: dict[str, list[dict]] = {}  # job -> its photo index (index)

    @property
    def store(self) -> JobStore:
        return self._store()

    def on_forget(self, job_id: str) -> None:
        """Drop what is held in memory for a finished, failed or deleted job."""
        self.payloads.pop(job_id, None)
        self._done.pop(job_id, None)
        self._indexes.pop(job_id, None)

    def drop(self, job_id: str) -> None:
        """Its queued tasks go."""
        self.queue = deque(t for t in self.queue if t.job != job_id)

    # --- what is done ---------------------------------------------------------------------------
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

    def extracted(self, job_id: str, n_photos: int) -> int:
        """Photos in finished chunks (the last chunk may be short), from the chunks known done."""
        size, chunks, done = self.s.chunk_photos, self.n_chunks(n_photos), self.done_chunks(job_id, n_photos)
        last = n_photos - (chunks - 1) * size
        return len(done) * size - (size - last if chunks - 1 in done else 0)

    def index(self, job_id: str) -> list[dict]:
        """A job's photo index, read once per job (OSError if its uploads are gone)."""
        index = self._indexes.get(job_id)
        if index is None:
            index = self._indexes[job_id] = self.store.load_index(job_id)
        return index

    # --- what comes next ------------------------------------------------------------------------
    def plan(self, job_id: str) -> None:
        """Queue the job's missing work: extract tasks for chunks without results, else what follows them."""
        job = self.store.get(job_id)
        if job is None or job.final:
            return
        if not self.store.has_uploads(job_id):
            self.fail(job_id, "UPLOAD_LOST", "the uploaded photos of this job are gone")
            return
        if job.is_video:
            self.queue.append(Task(job_id, TaskKind.VIDEO))
            return
        missing = self.missing_chunks(job_id, job.n_new)
        if missing:
            self.queue.extend(Task(job_id, TaskKind.EXTRACT, k) for k in missing)
            done = self.extracted(job_id, job.n_new)
            if done:
                self.store.progress(job_id, JobState.EXTRACTING, JobState.EXTRACTING, done, job.n_new)
        else:
            self.after_extraction(job)

    def after_extraction(self, job: Job) -> None:
        """All features are in: search first (optimize=1), else train."""
        if job.options.get("optimize"):
            self.searches.start(job.id, job.options)
        else:
            self.store.progress(job.id, JobState.TRAINING, JobState.TRAINING, 0, self.s.max_epochs)
            self.queue.appendleft(Task(job.id, TaskKind.TRAIN))  # finish started jobs first

    def plan_all(self, held: set[tuple]) -> int:
        """Every unfinished job planned anew from the store (the disk has room again), but the work that
        workers hold. -> tasks queued."""
        self.queue = deque()
        for job_id in self.store.unfinished():
            self.plan(job_id)
        self.queue = deque(t for t in self.queue if t.what not in held)
        return len(self.queue)

    def useful(self, task: Task, job: Job | None) -> bool:
        """A task is still worth running: its job runs and still needs that work."""
        if job is None or job.final:
            return False
        if task.kind == TaskKind.EXTRACT and task.chunk in self.done_chunks(task.job, job.n_new):
            return False
        return not (task.kind == TaskKind.EVALUATE and not self.searches.wants(task))

    def next_task(self) -> tuple[Task, Job, list[bytes]] | None:
        """The first queued task still worth running, its job and its message; None when there is none."""
        while self.queue:
            task = self.queue.popleft()
            job = self.store.get(task.job)
            if not self.useful(task, job):
                continue
            assert job is not None
            frames = self.task_frames(task, job)
            if frames is not None:
                return task, job, frames
        return None

    def task_frames(self, task: Task, job: Job) -> list[bytes] | None:
        """A task's message: the chunk's photos (extract), or every feature of the job (evaluate, train)."""
        try:
            index = self.index(task.job)
        except OSError:
            self.fail(task.job, "UPLOAD_LOST", "the uploaded photos of this job are gone")
            return None
        header: dict[str, Any] = {"task": task.to_wire(), "name": job.name, "options": job.options}
        if task.kind == TaskKind.VIDEO:
            model = job.options.get("model", "")
            try:
                bundle = (self.s.dumps_dir / model / BUNDLE_FILE).read_bytes()
            except OSError:
                self.fail(task.job, "MODEL_GONE", f"model {model} was deleted before the video was read")
                return None
            header["files"] = [{"label": e["label"], "filename": e["filename"]} for e in index]
            header["tenant"] = job.tenant
            return p.pack(p.JOB, header, [*self.store.load_photos(task.job, index[:1]), bundle])
        if task.kind == TaskKind.EXTRACT:
            part = index[task.chunk * self.s.chunk_photos:(task.chunk + 1) * self.s.chunk_photos]
            header["files"] = [{"label": e["label"], "filename": e["filename"]} for e in part]
            header["tenant"] = job.tenant  # whose feature cache the photos go through (one per tenant)
            return p.pack(p.JOB, header, self.store.load_photos(task.job, part))
        inherited = self.records.inherited(task.job)  # a derivation's photos taken from its parent, first
        header["files"] = [{"label": e["label"], "filename": e["filename"]} for e in inherited + index]
        if task.job not in self.payloads:  # read once per job, not once per candidate
            features = [as_task_features(r) for r in inherited]
            features += self.store.load_chunks(task.job, self.n_chunks(len(index)))
            self.payloads[task.job] = json.dumps(features).encode()
        if task.kind == TaskKind.TRAIN and task.job in self.searches.running:
            header["search"] = self.searches.running[task.job].report()
        return p.pack(p.JOB, header, [self.payloads[task.job]])
