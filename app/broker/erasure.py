"""Erasure (ERASE): a person out of every model that holds them, of one tenant when there are tenants.

Each such model is rebuilt without them (a derivation of it, or the same build again while it runs) and
then deleted with everything it kept (row, bundle, manifest, card, features, uploads); the person's cached
features go from this host and, by PURGE, from every worker's; the callback messages of those models
(by job id: nothing of another tenant's) and the job store's freed pages are wiped too (SQLite
secure_delete, then the write-ahead log folded in and emptied).
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from app.broker.deletion import Deletion
from app.broker.events import JobEvents
from app.broker.intake import DERIVED_OPTIONS, Intake
from app.broker.job import Job
from app.broker.pool import WorkerPool
from app.broker.records import Records
from app.broker.store import JobStore
from constants import Settings
from constants.states import JobState
from features.extract import FeatureCache, scoped_digest
from logger import logger
from preprocessor.uploads import Photo


class Erasure:
    def __init__(self, settings: Settings, store: Callable[[], JobStore], intake: Intake, deletion: Deletion,
                 pool: WorkerPool, records: Records, events: JobEvents):
        self.s = settings
        self._store = store
        self.intake, self.deletion, self.pool, self.records, self.events = intake, deletion, pool, records, events

    @property
    def store(self) -> JobStore:
        return self._store()

    def erase(self, label: str, tenant: str | None) -> dict:
        """The person out of every model of `tenant` (None: of every tenant). Each model that held them is
        rebuilt without them under a new id, or deleted when fewer than 2 people would be left or it had
        failed. An upload being written that holds them is refused when it is on disk (`cancelled`)."""
        jobs = self.store.jobs_of(tenant)
        # as a failed job's error details name them: "label" or "label/file.jpg" (JSON, escaped or not)
        named = [q[:-1] + end for q in {json.dumps(label), json.dumps(label, ensure_ascii=False)} for end in '"/']
        held = [j for j in jobs if not j.is_video and (label in self.records.labels_held(j) or any(
            n in (j.error_details or "") for n in named))]  # a model's videos go with it (Deletion.delete)
        for upload in self.intake.storing.values():
            if (tenant is None or upload.job.tenant == tenant) and label in upload.job.labels:
                upload.cancelled = True
        digests: set[str] = set()
        keys: set[str] = set()
        models, photos = [], 0
        for job in held:
            entry = self.erase_from(job, label)
            gone = entry.pop("gone")
            photos += len(gone)
            digests |= {scoped_digest(r["sha256"], job.tenant) for r in gone if r.get("sha256")}  # per tenant
            keys |= {r["key"] for r in gone if r.get("key")}
            models.append(entry)
        cached = self.deletion.drop_cache_entries(sorted(keys)) + self.purge_local_cache(sorted(digests))
        self.pool.purge(sorted(digests), sorted(keys))
        self.events.emit("erased", [j.id for j in held])
        self.deletion.wipe_freed_pages()
        logger.info("erased a person from {} model(s): {} photo(s), {} cached entries", len(models), photos, cached)
        return {"label": label, "models": models,
                "removed": {"models": len(models), "photos": photos, "cached_features": cached}}

    def erase_from(self, job: Job, label: str) -> dict:
        """One model without the person: rebuilt from what it holds of the others (a finished model from its
        records, as a derivation of it; a running one from its uploads and inherited records, as the same
        build again), then deleted. -> {id, state, new_id, action[, reason], gone: the person's records}."""
        options = {k: v for k, v in job.options.items() if k not in DERIVED_OPTIONS}
        entry: dict[str, Any] = {"id": job.id, "state": job.state.value, "new_id": None}
        new_photos: list[Photo] = []
        parent: str | None
        if job.state == JobState.DONE:
            records = self.records.of_model(job.id) or []
            others, parent, removed = [r for r in records if r["label"] != label], job.id, 1
        else:
            records = self.records.of_job(job.id)
            inherited = self.records.inherited(job.id)
            others = [r for r in inherited if r["label"] != label]
            parent = job.parent
            removed = int(job.options.get("removed_people", 0)) + (len(others) < len(inherited))
            index = self.store.load_index(job.id) if self.store.has_uploads(job.id) else []
            mine = [e for e in index if e["label"] != label]
            if mine and job.state != JobState.FAILED:
                new_photos = [Photo(e["label"], e["filename"], b)
                              for e, b in zip(mine, self.store.load_photos(job.id, mine))]
        entry["gone"] = [r for r in records if r["label"] == label]
        people = {r["label"] for r in others} | {p.label for p in new_photos}
        if job.state == JobState.FAILED:
            entry.update(action="deleted", reason="the build had failed")
        elif job.state == JobState.DONE and not records:
            entry.update(action="deleted", reason="built before models kept their photos' features: it cannot be "
                                                  "rebuilt without the person")
        elif len(people) < 2:
            entry.update(action="deleted", reason="fewer than 2 people would be left")
        else:
            new_id = str(uuid.uuid4())
            self.intake.create(self.intake.compose(new_id, job.name, options, parent, others, new_photos, removed,
                                                   job.tenant, None))
            if job.state != JobState.DONE:  # its client still waits for the end of this build
                self.events.emit("moved", job.id, new_id)
            else:  # what the model kept besides its photos (unknown faces) goes to its successor
                self.events.emit("replaced", job.id, new_id, label)
            entry.update(action="rebuilt", new_id=new_id)
        self.deletion.delete(job.id, purge_cache=False)
        return entry

    def purge_local_cache(self, digests: list[str]) -> int:
        """This host's cache entries of these photos (whatever job extracted them)."""
        if not digests:
            return 0
        return FeatureCache(self.s.cache_dir, self.s).purge(digests)
