"""Deleting a job: its queued tasks, row, uploads, model folder, callback and cached features, here and on
every connected worker's host."""
from __future__ import annotations

from collections.abc import Callable

from app.broker.events import JobEvents
from app.broker.planning import Planner
from app.broker.pool import WorkerPool
from app.broker.reader import BundleSums
from app.broker.records import Records
from app.broker.store import JobStore
from app.wire import protocol as p
from app.wire.protocol import FrontError
from constants import Settings
from features.extract import scoped_digest
from logger import logger


class Deletion:
    def __init__(self, settings: Settings, store: Callable[[], JobStore], planner: Planner, pool: WorkerPool,
                 records: Records, sums: BundleSums, events: JobEvents):
        self.s = settings
        self._store = store
        self.planner, self.pool, self.records, self.sums, self.events = planner, pool, records, sums, events

    @property
    def store(self) -> JobStore:
        return self._store()

    def delete(self, job_id: str, tenant: str | None = None, purge_cache: bool = True) -> dict:
        """Erase a job: its queued tasks, row, uploads, model folder, callback and cached features (here, and
        on every connected worker's host; not with `purge_cache=False`, when an erasure purges one person's).
        With `tenant`, only a job of that tenant."""
        job = self.store.get(job_id)
        if tenant is not None and job is not None and job.tenant != tenant:
            raise FrontError("NOT_FOUND", f"no model with id {job_id}")
        self.planner.drop(job_id)
        self.events.emit("forget", job_id)
        n_chunks = self.planner.n_chunks(job.n_new if job else 0)
        keys, digests = self.records.erase_list(job_id, n_chunks) if purge_cache else ([], [])
        digests = [scoped_digest(d, job.tenant if job else None) for d in digests]  # the cache is per tenant
        # the row goes first: from then on the job is "not found" everywhere, never a model with files
        # half gone (a restart sweeps whatever files a crash here would leave)
        self.store.delete(job_id)
        self.sums.forget(job_id)
        removed = {"job": job is not None,
                   "model": self.store.delete_model(self.s.dumps_dir, job_id),
                   "uploads": self.store.has_uploads(job_id),
                   "cached_features": self.drop_cache_entries(keys)}
        self.pool.purge(digests, keys)
        self.events.emit("deleted", job_id)
        self.store.delete_uploads(job_id)
        logger.info("job {} deleted: {}", job_id, removed)
        return {"id": job_id, "removed": removed}

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
