"""Deleting a job: its queued tasks, row, uploads, model folder, callback and cached features, here and on
every connected worker's host; then the stores' freed pages and write-ahead logs wiped, so that nothing of
it outlives the delete. A failed build's photos go on their own FR_FAILED_RETENTION_HOURS after it failed."""
from __future__ import annotations

import time
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
from constants.states import JobState
from features.extract import scoped_digest
from logger import logger

EXPIRY_EVERY_S = 60.0  # how often failed builds' photos are looked for (more often for a retention under 10 min)


class Deletion:
    def __init__(self, settings: Settings, store: Callable[[], JobStore], planner: Planner, pool: WorkerPool,
                 records: Records, sums: BundleSums, events: JobEvents):
        self.s = settings
        self._store = store
        self.planner, self.pool, self.records, self.sums, self.events = planner, pool, records, sums, events
        self.next_expiry = 0.0

    @property
    def store(self) -> JobStore:
        return self._store()

    def delete(self, job_id: str, tenant: str | None = None, purge_cache: bool = True) -> dict:
        """Erase a job: its queued tasks, row, uploads, model folder, callback and cached features (here, and
        on every connected worker's host; not with `purge_cache=False`, when an erasure purges one person's).
        With `tenant`, only a job of that tenant. A model's videos go with it (their tracks and thumbnails name
        and show its people: an erasure, which deletes every model holding the person, takes them too)."""
        job = self.store.get(job_id)
        if tenant is not None and job is not None and job.tenant != tenant:
            raise FrontError("NOT_FOUND", f"no model with id {job_id}")
        videos = [] if job is None or job.is_video else self.store.videos_of(job_id)
        for video in videos:
            self.delete(video, purge_cache=False)
        self.planner.drop(job_id)
        self.events.emit("forget", job_id)
        n_chunks = self.planner.n_chunks(job.n_new if job else 0)
        keys, digests = self.records.erase_list(job_id, n_chunks) if purge_cache else ([], [])
        digests = [scoped_digest(d, job.tenant if job else None) for d in digests]  # the cache is per tenant
        # the row goes first: from then on the job is "not found" everywhere, never a model with files
        # half gone (a restart sweeps whatever files a crash here would leave)
        self.store.delete(job_id)
        self.sums.forget(job_id)
        removed: dict = {"job": job is not None,
                   "model": self.store.delete_model(self.s.dumps_dir, job_id),
                   "uploads": self.store.has_uploads(job_id),
                   "cached_features": self.drop_cache_entries(keys)}
        if videos:
            removed["videos"] = len(videos)
        self.pool.purge(digests, keys)
        self.events.emit("deleted", job_id)
        self.store.delete_uploads(job_id)
        logger.info("job {} deleted: {}", job_id, removed)
        return {"id": job_id, "removed": removed}

    def delete_and_wipe(self, job_id: str, tenant: str | None = None) -> dict:
        """DELETE from a front: `delete`, then no copy of the row left in the stores' write-ahead logs."""
        answer = self.delete(job_id, tenant)
        self.wipe_freed_pages()
        return answer

    def wipe_freed_pages(self) -> None:
        """Deleted rows leave no bytes: secure_delete zeroes them, and the write-ahead logs (which still hold
        the pages as they were) are folded in and truncated (retried while a reader holds the job store's)."""
        for _ in range(40):
            if not self.store.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
                break
            time.sleep(0.05)
        else:
            logger.warning("the job store's write-ahead log could not be emptied now (a reader held it)")
        self.events.emit("pages_wiped")

    def expire_failed(self, now: float) -> list[str]:
        """The photos (and extracted features) of builds that failed more than FR_FAILED_RETENTION_HOURS ago:
        removed, looked for at most once a minute. The job's row and error stay for its client. -> the jobs' ids."""
        if now < self.next_expiry:
            return []
        retention_s = self.s.failed_retention_hours * 3600
        self.next_expiry = now + min(EXPIRY_EVERY_S, max(1.0, retention_s / 10))
        cutoff = now - retention_s
        expired = []
        for folder in sorted(self.store.uploads_dir.iterdir()):
            job = None if folder.name.startswith(".") else self.store.get(folder.name)
            if job is not None and job.state == JobState.FAILED and job.updated <= cutoff:
                self.store.delete_uploads(job.id)
                expired.append(job.id)
        if expired:
            logger.info("removed the photos of {} build(s) failed over {:g} h ago", len(expired),
                        self.s.failed_retention_hours)
        return expired

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
