"""A model's life after its build, on the broker's side: derive, erase, and the files they rely on.

A built model never changes. A *derivation* is a new job whose photos are partly its
parent's, taken as they were extracted (their features), and partly new photos, which are
the only ones extracted; its model is split, measured, calibrated and bundled like any
build's. Where the parent's features come from: every finished job keeps them beside its
model, `dumps/<id>/features.json` (per photo: label, file name, sha256, cache key and
features; about as large as the bundle's gallery in JSON), so they outlive the uploads,
which are deleted once a build is done. A derived job copies the part it keeps into its
own uploads folder (`inherited.json`) when it is submitted, so a parent deleted or erased
meanwhile takes nothing from it.

*Erasure* removes a person from every model that holds them (of one tenant, when there are
tenants): each such model is rebuilt without them (a derivation) and then deleted with
everything it kept (row, bundle, manifest, card, features, uploads), the person's cached
features go from this host and, by PURGE, from every worker's; their callback messages and
the job store's freed pages are wiped too (SQLite secure_delete, then the write-ahead log
folded in and emptied).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.shared.storage import disk_errors
from app.wire.protocol import FrontError
from constants.states import JobState
from features.extract import FeatureCache, PhotoFeatures
from logger import logger
from preprocessor.uploads import Photo

if TYPE_CHECKING:
    from app.broker.store import JobStore
    from constants import Settings

FEATURES_FILE = "features.json"    # dumps/<id>/: every photo's label, file name, sha256, cache key, features
INHERITED_FILE = "inherited.json"  # uploads/<id>/: a derived job's photos taken from its parent, as records
ERASE_FILE = "erase.json"          # dumps/<id>/: its photos' digests, cache keys and labels, for DELETE and ERASE
DERIVED_OPTIONS = ("parent", "inherited", "removed_people")  # options the broker sets, never the front
_FEATURE_FIELDS = tuple(f.name for f in fields(PhotoFeatures))


# --- records: one photo's label, file name, digest, cache key and features --------------------------
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


class Derivations:
    """The broker's derive and erase requests (a mixin of app.broker.loop.Broker: the same loop, store and queue)."""

    if TYPE_CHECKING:  # what the broker provides
        s: Settings
        storing: dict[str, Any]  # job id -> app.broker.loop.Upload being written
        _inherited: dict[str, list[dict]]  # job id -> its inherited records (`inherited`)

        @property
        def store(self) -> JobStore: ...
        def plan(self, job_id: str) -> None: ...
        def delete(self, job_id: str, tenant: str | None = None, purge_cache: bool = True) -> dict: ...
        def store_uploads(self, job_id: str, photos: list[Photo], inherited: list[dict] | None = None) -> None: ...
        def check_quotas(self, tenant: str | None, size: int) -> None: ...
        @staticmethod
        def check_deadline(deadline: float | None) -> None: ...
        def drop_cache_entries(self, keys: list) -> int: ...
        def purge_workers(self, digests: list[str], keys: list | tuple = ()) -> None: ...
        def webhooks_call(self, method: str, *args) -> Any: ...

    # --- what a job holds -------------------------------------------------------------------------
    def inherited(self, job_id: str) -> list[dict]:
        """The records a derived job took from its parent ([] for a plain build), read once per job (every
        evaluate task of a search is sent them; `forget` drops them when the job ends)."""
        records = self._inherited.get(job_id)
        if records is None:
            path = self.store.uploads_dir / job_id / INHERITED_FILE
            records = self._inherited[job_id] = read_json(path) if path.exists() else []
        return records

    def n_new(self, row) -> int:
        """Photos the job itself uploaded (the ones to extract): all of them but those inherited."""
        return int(row["n_photos"]) - int(json.loads(row["options"]).get("inherited", 0))

    def model_records(self, job_id: str) -> list[dict] | None:
        """A finished model's per-photo records; None for a model built before they were kept."""
        path = self.s.dumps_dir / job_id / FEATURES_FILE
        return read_json(path) if path.exists() else None

    def job_records(self, job_id: str, row) -> list[dict]:
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

    def keep_features(self, job_id: str, row) -> list[dict]:
        """On a job's end: its records beside its model (what a derivation of it starts from)."""
        records = self.job_records(job_id, row)
        folder = self.s.dumps_dir / job_id
        write_json(folder / FEATURES_FILE, records)
        return records

    def labels_held(self, row) -> set[str]:
        """The people whose photos a job holds (uploaded, inherited, or in its model)."""
        job_id = row["id"]
        if row["state"] == JobState.DONE:
            erase = self.s.dumps_dir / job_id / ERASE_FILE
            if erase.exists():
                labels = read_json(erase).get("labels")
                if labels is not None:
                    return set(labels)
            manifest = self.s.dumps_dir / job_id / "manifest.json"
            return {p["label"] for p in read_json(manifest).get("people", [])} if manifest.exists() else set()
        labels = {r["label"] for r in self.inherited(job_id)}
        if self.store.has_uploads(job_id):
            labels |= {e["label"] for e in self.store.load_index(job_id)}
        return labels

    # --- derive ---------------------------------------------------------------------------------------
    def derive(self, header: dict, blobs: list[bytes]) -> dict:
        """DERIVE in one go (the loop itself stores in the background: `admit_derive`, the upload writer,
        `register_job`)."""
        job = self.admit_derive(header, blobs)
        self.store_uploads(job.id, job.fresh, job.inherited)
        return self.register_job(job)

    def admit_derive(self, header: dict, blobs: list[bytes]) -> NewJob:
        """The checks of a DERIVE, before anything is written: deadline, room, the id, the parent (built, of the
        caller's tenant, with its photos' features kept), the people to remove, the tenant's quotas.
        -> the job to store (the new model belongs to its parent's tenant)."""
        job_id, parent = header["id"], header["parent"]
        self.check_deadline(header.get("deadline"))
        size = sum(len(b) for b in blobs)
        self.check_room(size)
        if job_id in self.storing or self.store.get(job_id) is not None or self.store.has_uploads(job_id):
            raise FrontError("CONFLICT", "a job with this id exists")
        row = self.store.get(parent)
        if row is None or (header.get("tenant") is not None and row["tenant"] != header["tenant"]):
            raise FrontError("NOT_FOUND", f"no model with id {parent}")
        if row["state"] != JobState.DONE:
            raise FrontError("NOT_READY", f"model {parent} is not built (state: {row['state']})")
        records = self.model_records(parent)
        if records is None:
            raise FrontError("NOT_DERIVABLE", f"model {parent} was built before models kept their photos' features: "
                             "build it again to derive from it")
        remove = list(dict.fromkeys(header.get("remove", [])))
        held = {r["label"] for r in records}
        unknown = [label for label in remove if label not in held]
        if unknown:
            raise FrontError("UNKNOWN_PERSON", f"{unknown[0]!r} is not a person of model {parent}")
        keep = [r for r in records if r["label"] not in remove]
        photos = [Photo(f["label"], f["filename"], b) for f, b in zip(header["files"], blobs)]
        options = {k: v for k, v in header.get("options", {}).items() if k not in DERIVED_OPTIONS}
        options.setdefault("seed", json.loads(row["options"]).get("seed", self.s.default_seed))  # the parent's split
        job = self.plan_job(job_id, header.get("name"), options, parent, keep, photos, len(remove), row["tenant"],
                            header.get("callback"), header.get("deadline"))
        self.check_quotas(row["tenant"], size)
        return job

    def check_room(self, size: int) -> None:
        """Room for `size` bytes of photos, counting the uploads being written, or INSUFFICIENT_STORAGE."""
        free = shutil.disk_usage(self.s.uploads_dir).free - sum(u.size for u in self.storing.values())
        if free - 2 * size < self.s.min_free_bytes:  # the photos, then their features and the model
            raise FrontError("INSUFFICIENT_STORAGE", f"not enough free disk for {size} bytes of photos "
                                                     f"({free} bytes free, {self.s.min_free_bytes} kept in reserve)")

    def plan_job(self, job_id: str, name: str | None, options: dict, parent: str | None, inherited: list[dict],
                 photos: list[Photo], removed_people: int, tenant: str | None, callback: dict | None,
                 deadline: float | None = None) -> NewJob:
        """A job made of inherited records and new photos, checked (nothing written). A new photo identical to
        one the job inherits for the same person is left out (listed in `duplicates`)."""
        seen = {(r["label"], r.get("sha256")) for r in inherited}
        fresh, duplicates = [], []
        for photo in photos:
            key = (photo.label, hashlib.sha256(photo.data).hexdigest())
            if key in seen:
                duplicates.append(photo.filename)
            else:
                seen.add(key)
                fresh.append(photo)
        if photos and not fresh and not removed_people:
            raise FrontError("NO_NEW_PHOTOS", "every photo sent is already in the model")
        old_people = {r["label"] for r in inherited}
        people = old_people | {p.label for p in fresh}
        if len(people) < 2:
            raise FrontError("TOO_FEW_PEOPLE", f"the model would hold {len(people)} person: a recognizer needs 2")
        total = len(inherited) + len(fresh)
        if total > self.s.max_files:
            raise FrontError("TOO_MANY_FILES", f"the model would hold {total} photos; at most {self.s.max_files}")
        if parent is not None:
            options = {**options, "parent": parent, "inherited": len(inherited)}
            if removed_people:
                options["removed_people"] = removed_people
        answer = {"id": job_id, "parent": parent, "photos": total, "people": len(people),
                  "added": {"photos": len(fresh), "people": len(people - old_people)},
                  "removed": {"people": removed_people}, "duplicates": duplicates[:200]}
        return NewJob(job_id, name, options, parent, tenant, inherited, fresh, callback, deadline, answer)

    def register_job(self, job: NewJob) -> dict:
        """Its photos are on disk (fsynced): the job's row, unless its deadline passed or its parent went
        meanwhile (an erasure while the photos were written: what it inherited may hold the person), then its
        work. -> the answer to the front."""
        try:
            self.check_deadline(job.deadline)
            if job.parent is not None and job.inherited and self.store.get(job.parent) is None:
                raise FrontError("NOT_FOUND", f"model {job.parent} was deleted while this was stored; nothing was "
                                              "kept")
            self.webhooks_call("subscribe", job.id, job.callback)
            self.store.create(job.id, job.name, job.options, job.answer["photos"], job.answer["people"], job.tenant)
        except BaseException:
            self.store.delete_uploads(job.id)
            self.webhooks_call("forget", job.id)
            raise
        self.plan(job.id)
        if job.parent is not None:
            logger.info("job {} derived from {}: {} photos inherited, {} added, {} people removed", job.id,
                        job.parent, len(job.inherited), len(job.fresh), job.answer["removed"]["people"])
        return job.answer

    def create_job(self, job_id: str, name: str | None, options: dict, parent: str | None,
                   inherited: list[dict], photos: list[Photo], removed_people: int, tenant: str | None) -> dict:
        """Plan, store and register a job at once (an erasure's rebuilds, on the loop)."""
        job = self.plan_job(job_id, name, options, parent, inherited, photos, removed_people, tenant, None)
        self.store_uploads(job.id, job.fresh, job.inherited)
        return self.register_job(job)

    # --- erase ----------------------------------------------------------------------------------------
    def erase(self, label: str, tenant: str | None) -> dict:
        """ERASE: the person out of every model of `tenant` (None: of every tenant). Each model that held them
        is rebuilt without them under a new id, or deleted when fewer than 2 people would be left or it had
        failed. An upload being written that holds them is refused when it is on disk (`cancelled`)."""
        rows = self.store.execute("SELECT * FROM jobs WHERE ? IS NULL OR tenant = ? ORDER BY created",
                                  (tenant, tenant)).fetchall()
        # as a failed job's error details name them: "label" or "label/file.jpg" (JSON, escaped or not)
        named = [q[:-1] + end for q in {json.dumps(label), json.dumps(label, ensure_ascii=False)} for end in '"/']
        held = [r for r in rows if label in self.labels_held(r) or any(n in (r["error_details"] or "") for n in named)]
        for upload in self.storing.values():
            if (tenant is None or upload.tenant == tenant) and label in upload.labels:
                upload.cancelled = True
        digests: set[str] = set()
        keys: set[str] = set()
        models, photos = [], 0
        for row in held:
            entry = self.erase_from(row, label)
            gone = entry.pop("gone")
            photos += len(gone)
            digests |= {r["sha256"] for r in gone if r.get("sha256")}
            keys |= {r["key"] for r in gone if r.get("key")}
            models.append(entry)
        cached = self.drop_cache_entries(sorted(keys)) + self.purge_local_cache(sorted(digests))
        self.purge_workers(sorted(digests), sorted(keys))
        self.webhooks_call("scrub", label)
        self.wipe_freed_pages()
        logger.info("erased a person from {} model(s): {} photo(s), {} cached entries", len(models), photos, cached)
        return {"label": label, "models": models,
                "removed": {"models": len(models), "photos": photos, "cached_features": cached}}

    def erase_from(self, row, label: str) -> dict:
        """One model without the person: rebuilt from what it holds of the others (a finished model from its
        records, as a derivation of it; a running one from its uploads and inherited records, as the same
        build again), then deleted. -> {id, state, new_id, action[, reason], gone: the person's records}."""
        job_id, state = row["id"], JobState(row["state"])
        old = json.loads(row["options"])
        options = {k: v for k, v in old.items() if k not in DERIVED_OPTIONS}
        entry: dict[str, Any] = {"id": job_id, "state": state.value, "new_id": None}
        new_photos: list[Photo] = []
        if state == JobState.DONE:
            records = self.model_records(job_id) or []
            others, parent, removed = [r for r in records if r["label"] != label], job_id, 1
        else:
            records = self.job_records(job_id, row)
            inherited = self.inherited(job_id)
            others = [r for r in inherited if r["label"] != label]
            parent = old.get("parent")
            removed = int(old.get("removed_people", 0)) + (len(others) < len(inherited))
            index = self.store.load_index(job_id) if self.store.has_uploads(job_id) else []
            mine = [e for e in index if e["label"] != label]
            if mine and state != JobState.FAILED:
                new_photos = [Photo(e["label"], e["filename"], b) for e, b in zip(mine, self.store.load_photos(job_id,
                                                                                                            mine))]
        entry["gone"] = [r for r in records if r["label"] == label]
        people = {r["label"] for r in others} | {p.label for p in new_photos}
        if state == JobState.FAILED:
            entry.update(action="deleted", reason="the build had failed")
        elif state == JobState.DONE and not records:
            entry.update(action="deleted", reason="built before models kept their photos' features: it cannot be "
                                                  "rebuilt without the person")
        elif len(people) < 2:
            entry.update(action="deleted", reason="fewer than 2 people would be left")
        else:
            new_id = str(uuid.uuid4())
            self.create_job(new_id, row["name"], options, parent, others, new_photos, removed, row["tenant"])
            if state != JobState.DONE:  # its client still waits for the end of this build
                self.webhooks_call("move", job_id, new_id)
            entry.update(action="rebuilt", new_id=new_id)
        self.delete(job_id, purge_cache=False)
        return entry

    def purge_local_cache(self, digests: list[str]) -> int:
        """This host's cache entries of these photos (whatever job extracted them)."""
        if not digests:
            return 0
        return FeatureCache(self.s.cache_dir, self.s).purge(digests)

    def wipe_freed_pages(self) -> None:
        """Deleted rows leave no bytes: secure_delete zeroes them, and the write-ahead log (which still holds
        the pages as they were) is folded in and truncated (retried while a reader holds it)."""
        for _ in range(40):
            if not self.store.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
                break
            time.sleep(0.05)
        else:
            logger.warning("the job store's write-ahead log could not be emptied now (a reader held it)")
        self.webhooks_call("checkpoint")
