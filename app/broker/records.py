"""What a job holds, photo by photo: the records a derivation starts from and an erasure looks through.

A built model never changes; each finished job keeps, beside its model, every photo's label, file name,
sha256, cache key and features (`dumps/<id>/features.json`, about as large as the bundle's gallery in
JSON), so they outlive the uploads, which are deleted once a build is done. A derived job copies the part
it keeps into its own uploads folder (`inherited.json`) when it is submitted, so a parent deleted or
erased meanwhile takes nothing from it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from app.broker.job import Job
from app.broker.store import JobStore
from app.shared.storage import disk_errors
from constants import Settings
from constants.states import JobState
from features.extract import PhotoFeatures

FEATURES_FILE = "features.json"    # dumps/<id>/: every photo's label, file name, sha256, cache key, features
INHERITED_FILE = "inherited.json"  # uploads/<id>/: a derived job's photos taken from its parent, as records
ERASE_FILE = "erase.json"          # dumps/<id>/: its photos' digests, cache keys and labels, for DELETE and ERASE
_FEATURE_FIELDS = tuple(f.name for f in fields(PhotoFeatures))


def record(entry: dict, features: dict) -> dict:
    """A photo's record from its upload index entry and its extracted features (as a worker sent them)."""
    return {"label": entry["label"], "filename": entry["filename"], "sha256": entry.get("sha256"),
            "key": features.get("key"), "features": {k: features[k] for k in _FEATURE_FIELDS if k in features}}


def as_task_features(rec: dict) -> dict:
    """A record's features as a train task takes them: not extracted by this job, so no cache hit, no time."""
    return {**rec["features"], "cached": False, "seconds": 0.0}


def write_json(path: Path, value: Any) -> None:
    """Atomic and durable (fsync, rename); StorageFull (nothing left behind) on a full disk."""
    tmp = path.with_suffix(".tmp")
    with disk_errors(tmp):
        with open(tmp, "w") as fh:
            json.dump(value, fh, ensure_ascii=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


class Records:
    """The records of jobs and models, read from their files (a derived job's inherited ones kept in memory
    while it runs: every evaluate task of a search is sent them)."""

    def __init__(self, settings: Settings, store: Callable[[], JobStore]):
        self.s = settings
        self._store = store
        self._inherited: dict[str, list[dict]] = {}

    @property
    def store(self) -> JobStore:
        return self._store()

    def inherited(self, job_id: str) -> list[dict]:
        """The records a derived job took from its parent ([] for a plain build), read once per job."""
        records = self._inherited.get(job_id)
        if records is None:
            path = self.store.uploads_dir / job_id / INHERITED_FILE
            records = self._inherited[job_id] = read_json(path) if path.exists() else []
        return records

    def on_forget(self, job_id: str) -> None:
        self._inherited.pop(job_id, None)

    def of_model(self, job_id: str) -> list[dict] | None:
        """A finished model's per-photo records; None for a model built before they were kept."""
        path = self.s.dumps_dir / job_id / FEATURES_FILE
        return read_json(path) if path.exists() else None

    def of_job(self, job_id: str) -> list[dict]:
        """Every photo record of a job that has not finished: inherited, then its uploads (features when
        extracted, else none)."""
        index = self.store.load_index(job_id) if self.store.has_uploads(job_id) else []
        size = self.s.chunk_photos
        out = list(self.inherited(job_id))
        for i, entry in enumerate(index):
            chunk = i // size
            feats: dict = {}
            if self.store.chunk_done(job_id, chunk):
                feats = self.store.load_chunk(job_id, chunk)[i - chunk * size]
            out.append(record(entry, feats))
        return out

    def keep(self, job_id: str) -> list[dict]:
        """On a job's end: its records beside its model (what a derivation of it starts from)."""
        records = self.of_job(job_id)
        write_json(self.s.dumps_dir / job_id / FEATURES_FILE, records)
        return records

    def labels_held(self, job: Job) -> set[str]:
        """The people whose photos a job holds (uploaded, inherited, or in its model)."""
        if job.state == JobState.DONE:
            erase = self.s.dumps_dir / job.id / ERASE_FILE
            if erase.exists():
                labels = read_json(erase).get("labels")
                if labels is not None:
                    return set(labels)
            manifest = self.s.dumps_dir / job.id / "manifest.json"
            return {p["label"] for p in read_json(manifest).get("people", [])} if manifest.exists() else set()
        labels = {r["label"] for r in self.inherited(job.id)}
        if self.store.has_uploads(job.id):
            labels |= {e["label"] for e in self.store.load_index(job.id)}
        return labels

    def erase_list(self, job_id: str, n_chunks: int) -> tuple[list[str], list[str]]:
        """(feature-cache keys, photo digests) of a job: from its model folder, or from its uploads."""
        saved = self.s.dumps_dir / job_id / ERASE_FILE
        if saved.exists():
            erase = read_json(saved)
            return erase["cache_keys"], erase["photos"]
        old = self.s.dumps_dir / job_id / "cache_keys.json"  # models built by 0.1.0
        if old.exists():
            return read_json(old), []
        keys = [f.get("key") for k in range(n_chunks) if self.store.chunk_done(job_id, k)
                for f in self.store.load_chunk(job_id, k)]
        inherited = self.inherited(job_id)
        keys += [r.get("key") for r in inherited]
        return [k for k in keys if k], self.store.photo_digests(job_id) + [r["sha256"] for r in inherited
                                                                           if r.get("sha256")]
