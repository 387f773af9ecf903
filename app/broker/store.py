"""Durable job state in SQLite (WAL) and the uploaded photos on disk.

The broker is the only writer; fronts read it through the broker (app/broker/reader.py). A job row is the
truth about a job: after a crash or restart, every job that is not finished is
put back in the queue (see `unfinished`). A job's state only moves as
`constants.states.TRANSITIONS` allows: every write is an UPDATE guarded by the
states it may come from.

Failures are named, never disguised: a store that is locked, missing its
schema or corrupt raises StoreUnavailable (the API answers 503
STORE_UNAVAILABLE, never "not found" or an empty list); a full disk raises
StorageFull after removing what it had half-written.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from app.broker.job import Job
from app.shared.storage import disk_errors, store_errors
from constants.states import RUNNING_STATES, JobState, predecessors
from preprocessor.uploads import Photo

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    options TEXT NOT NULL,          -- JSON: optimize, seed, ...
    n_photos INTEGER NOT NULL,
    n_people INTEGER NOT NULL,
    stage TEXT, done INTEGER, total INTEGER,
    error_code TEXT, error_message TEXT, error_details TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    detail TEXT,                    -- JSON: what the current stage shows (the search's progress)
    tenant TEXT,                    -- who owns it (the tenant of the key that built it)
    kind TEXT                       -- NULL: a model's build; "video": a recorded video through a model
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, created);
"""

PACK_FILE, INDEX_FILE = "photos.pack", "index.json"
SEARCH_CHECKPOINT = "search.json"  # in uploads/<id>/: the genetic search's last state (save_search)
VIDEO_FILE, THUMBS_DIR = "video.json", "thumbs"  # in dumps/<id>/ of a video job: its tracks, their JPEGs
READ_TIMEOUT_S = 2.0  # a reader waits this long for a lock, then says the store is unavailable


def connect(db_path: Path, readonly: bool = False) -> sqlite3.Connection:
    """The broker's read-write connection (creates the schema), or a front's read-only one.
    Raises StoreUnavailable if the file is missing (read-only), locked past the timeout, or corrupt."""
    db_path = Path(db_path)
    with store_errors():
        if readonly:
            conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=READ_TIMEOUT_S,
                                   check_same_thread=False)
        else:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(db_path, timeout=10, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA secure_delete=ON")  # a deleted row leaves no bytes behind (erasure, #18)
            conn.executescript(SCHEMA)
            columns = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
            for column in ("detail", "tenant", "kind"):  # stores made by earlier versions
                if column not in columns:
                    conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT")
            conn.execute("CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs(tenant, state)")
            os.chmod(db_path, 0o600)
        conn.row_factory = sqlite3.Row
    return conn


def read_job(db_path: Path, job_id: str) -> sqlite3.Row | None:
    """One job row for the front; None if there is no such job. Raises StoreUnavailable."""
    conn = connect(db_path, readonly=True)
    try:
        with store_errors():
            return conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        conn.close()


def list_jobs(db_path: Path, limit: int, offset: int, tenant: str | None = None,
              kind: str | None = None) -> tuple[list[sqlite3.Row], int]:
    """Newest first (of one tenant, or all), and the total: models, or the jobs of `kind` ("video").
    Raises StoreUnavailable."""
    conn = connect(db_path, readonly=True)
    try:
        with store_errors():
            rows = conn.execute("SELECT * FROM jobs WHERE (? IS NULL OR tenant = ?) AND kind IS ? "
                                "ORDER BY created DESC LIMIT ? OFFSET ?",
                                (tenant, tenant, kind, limit, offset)).fetchall()
            total = conn.execute("SELECT COUNT(*) FROM jobs WHERE (? IS NULL OR tenant = ?) AND kind IS ?",
                                 (tenant, tenant, kind)).fetchone()[0]
        return rows, total
    finally:
        conn.close()


def _folder_bytes(folder: Path | str) -> int:
    """Bytes of the files under `folder` (0 if there is none). os.scandir, not Path.rglob: a tenant's byte
    quota walks every folder of its jobs on each submit, on the loop (1,000 jobs: 254 -> 105 ms, medians of 5
    alternating runs on the loaded 2-core machine)."""
    total = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += _folder_bytes(entry.path)
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            pass
    return total


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JobStore:
    """Jobs table + upload folders. Each method commits on its own; every job id is a checked uuid4."""

    def __init__(self, db_path: Path, uploads_dir: Path):
        self.db_path = Path(db_path)
        self.uploads_dir = Path(uploads_dir)
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        self.db = connect(self.db_path)

    def execute(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with store_errors():
            return self.db.execute(sql, args)

    def check(self) -> None:
        """Raises StoreUnavailable unless the store answers a query now."""
        self.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (JobState.QUEUED.value,)).fetchone()

    def count_by_state(self) -> dict[str, int]:
        """Jobs in each state (every state named, 0 when none). Raises StoreUnavailable."""
        counts = {state.value: 0 for state in JobState}
        for state, n in self.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall():
            counts[state] = n
        return counts

    # --- uploads -------------------------------------------------------------
    def _upload_dir(self, job_id: str) -> Path:
        return self.uploads_dir / job_id

    def save_uploads(self, job_id: str, photos: list[Photo], extra: dict[str, Any] | None = None) -> None:
        self.save_uploads_in(self.uploads_dir, job_id, photos, extra)

    @staticmethod
    def save_uploads_in(uploads_dir: Path, job_id: str, photos: list[Photo],
                        extra: dict[str, Any] | None = None) -> None:
        """Write the photos to `uploads/<id>/` as one pack file and an index, fsynced, then renamed
        into place (one fsync for a whole upload, not one per photo); `extra`: JSON files (name -> value)
        renamed into place with them. Files only: any thread may call it. Raises StorageFull."""
        tmp = uploads_dir / f".{job_id}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with disk_errors(tmp):
            tmp.mkdir(parents=True)
            index, offset = [], 0
            with open(tmp / PACK_FILE, "wb") as fh:
                for p in photos:
                    fh.write(p.data)
                    index.append({"label": p.label, "filename": p.filename, "offset": offset,
                                  "size": len(p.data), "sha256": hashlib.sha256(p.data).hexdigest()})
                    offset += len(p.data)
                fh.flush()
                os.fsync(fh.fileno())
            for name, value in [(INDEX_FILE, index), *(extra or {}).items()]:
                with open(tmp / name, "w") as fh:
                    json.dump(value, fh, ensure_ascii=False)
                    fh.flush()
                    os.fsync(fh.fileno())
            os.rename(tmp, uploads_dir / job_id)
            _fsync_dir(uploads_dir)

    def load_index(self, job_id: str) -> list[dict]:
        """[{label, filename, offset, size, sha256}] of a job's photos, in upload order."""
        return json.loads((self._upload_dir(job_id) / INDEX_FILE).read_text())

    def load_photos(self, job_id: str, index: list[dict]) -> list[bytes]:
        d = self._upload_dir(job_id)
        if any("file" in e for e in index):  # an upload stored by 0.1.0: one file per photo
            return [(d / e["file"]).read_bytes() for e in index]
        out = []
        with open(d / PACK_FILE, "rb") as fh:
            for e in index:
                fh.seek(e["offset"])
                out.append(fh.read(e["size"]))
        return out

    def photo_digests(self, job_id: str) -> list[str]:
        """sha256 of each of a job's photos (what the feature caches are keyed by); [] without uploads."""
        try:
            index = self.load_index(job_id)
            if any("sha256" not in e for e in index):  # stored by 0.1.0
                return [hashlib.sha256(b).hexdigest() for b in self.load_photos(job_id, index)]
            return [e["sha256"] for e in index]
        except (OSError, ValueError, KeyError):
            return []

    def delete_uploads(self, job_id: str) -> None:
        shutil.rmtree(self._upload_dir(job_id), ignore_errors=True)

    def sweep_uploads(self, keep_done: bool, busy: frozenset[str] = frozenset()) -> list[str]:
        """Remove upload folders a crash left behind: half-written ones (`.<id>.tmp`), those of
        deleted jobs, and (unless `keep_done`) those of finished jobs. -> the names removed.
        `busy`: ids of uploads being written right now (their folders have no row yet)."""
        removed = []
        for folder in self.uploads_dir.iterdir():
            if folder.name.strip(".").split(".")[0] in busy:
                continue
            if folder.name.startswith("."):
                stale = True
            else:
                row = self.get(folder.name)
                stale = row is None or (row.state == JobState.DONE and not keep_done)
            if stale:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
        return removed

    def sweep_models(self, dumps_dir: Path) -> list[str]:
        """Remove model folders without a finished job (deleted while the broker was down) and the
        half-written `.<id>.*` folders of an interrupted save. -> the names removed."""
        removed = []
        for folder in Path(dumps_dir).iterdir():
            if not folder.is_dir():
                continue
            row = None if folder.name.startswith(".") else self.get(folder.name)
            if row is None or row.state != JobState.DONE:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
        return removed

    def has_uploads(self, job_id: str) -> bool:
        return (self._upload_dir(job_id) / INDEX_FILE).exists()

    # --- extracted features, one file per chunk of photos ---------------------
    def _chunk_path(self, job_id: str, chunk: int) -> Path:
        return self._upload_dir(job_id) / f"features-{chunk:05d}.json"

    def save_chunk(self, job_id: str, chunk: int, data: bytes) -> None:
        """Write a chunk's features (tmp + rename). No fsync: features can be made again, and an fsync per
        task bounded the broker to a few dozen tasks a second; after a crash the broker reads each
        chunk file once and extracts again any that is not whole (Broker.done_chunks).
        Raises StorageFull (nothing left behind) when the disk is full."""
        path = self._chunk_path(job_id, chunk)
        tmp = path.with_suffix(".tmp")
        with disk_errors(tmp):
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)

    def drop_chunk(self, job_id: str, chunk: int) -> None:
        self._chunk_path(job_id, chunk).unlink(missing_ok=True)

    def chunk_done(self, job_id: str, chunk: int) -> bool:
        return self._chunk_path(job_id, chunk).exists()

    def load_chunks(self, job_id: str, n_chunks: int) -> list[dict]:
        out = []
        for k in range(n_chunks):
            out.extend(self.load_chunk(job_id, k))
        return out

    def load_chunk(self, job_id: str, chunk: int) -> list[dict]:
        return json.loads(self._chunk_path(job_id, chunk).read_bytes())

    # --- the genetic search's checkpoint ------------------------------------------
    def _search_path(self, job_id: str) -> Path:
        return self._upload_dir(job_id) / SEARCH_CHECKPOINT

    def save_search(self, job_id: str, state: dict) -> None:
        """Atomic write: a crash leaves the previous checkpoint whole. Raises StorageFull."""
        path = self._search_path(job_id)
        tmp = path.with_suffix(".tmp")
        with disk_errors(tmp):
            tmp.write_text(json.dumps(state))
            os.replace(tmp, path)

    def load_search(self, job_id: str) -> dict | None:
        path = self._search_path(job_id)
        return json.loads(path.read_text()) if path.exists() else None

    # --- erasing ---------------------------------------------------------------
    @staticmethod
    def delete_model(dumps_dir: Path, job_id: str) -> bool:
        folder = Path(dumps_dir) / job_id
        existed = folder.exists()
        shutil.rmtree(folder, ignore_errors=True)
        return existed

    def delete(self, job_id: str) -> None:
        self.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # --- jobs ----------------------------------------------------------------
    def create(self, job_id: str, name: str | None, options: dict, n_photos: int, n_people: int,
               tenant: str | None = None, kind: str | None = None) -> None:
        now = time.time()
        self.execute(
            "INSERT INTO jobs (id, name, state, created, updated, options, n_photos, n_people, stage, done, total,"
            " tenant, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
            (job_id, name, JobState.QUEUED.value, now, now, json.dumps(options), n_photos, n_people,
             JobState.QUEUED.value, n_photos, tenant, kind))

    def videos_of(self, model_id: str) -> list[str]:
        """Ids of the video jobs run through a model (they go with it)."""
        rows = self.execute("SELECT id FROM jobs WHERE kind = 'video' AND json_extract(options, '$.model') = ?",
                            (model_id,)).fetchall()
        return [r["id"] for r in rows]

    def active_jobs(self, tenant: str | None) -> int:
        """Unfinished jobs of a tenant."""
        return self.execute("SELECT COUNT(*) FROM jobs WHERE tenant IS ? AND state NOT IN (?, ?)",
                            (tenant, JobState.DONE.value, JobState.FAILED.value)).fetchone()[0]

    def stored_bytes(self, tenant: str | None, dumps_dir: Path) -> int:
        """Bytes a tenant keeps on disk: every upload and model folder of its jobs."""
        ids = [r["id"] for r in self.execute("SELECT id FROM jobs WHERE tenant IS ?", (tenant,)).fetchall()]
        return sum(_folder_bytes(folder) for job in ids for folder in (self._upload_dir(job), Path(dumps_dir) / job))

    def get(self, job_id: str) -> Job | None:
        row = self.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else Job.from_row(row)

    def jobs_of(self, tenant: str | None) -> list[Job]:
        """Every job of a tenant (None: of every tenant), oldest first."""
        rows = self.execute("SELECT * FROM jobs WHERE ? IS NULL OR tenant = ? ORDER BY created", (tenant, tenant))
        return [Job.from_row(row) for row in rows.fetchall()]

    def assign(self, job_id: str, worker: str, attempt: int) -> None:
        """Record that a task of the job went to `worker`; `attempts` keeps the highest attempt."""
        self.execute("UPDATE jobs SET worker = ?, attempts = MAX(attempts, ?), updated = ? WHERE id = ?",
                     (worker, attempt, time.time(), job_id))

    def _move(self, job_id: str, state: JobState | str, sets: str, args: tuple) -> bool:
        """UPDATE the job to `state` if the transition table allows it from where it is. -> moved?"""
        state = JobState(state)
        allowed = predecessors(state)
        marks = ",".join("?" * len(allowed))
        cur = self.execute(f"UPDATE jobs SET state = ?, {sets}, updated = ? WHERE id = ? "  # noqa: S608 (our SQL)
                           f"AND state IN ({marks})", (state.value, *args, time.time(), job_id, *allowed))
        return cur.rowcount == 1

    def progress(self, job_id: str, state: JobState | str, stage: str, done: int, total: int,
                 detail: dict | None = None) -> bool:
        """Move a running job on. `detail` (the search's progress) is kept until a new one is given."""
        return self._move(job_id, state, "stage = ?, done = ?, total = ?, detail = COALESCE(?, detail)",
                          (stage, done, total, json.dumps(detail) if detail else None))

    def finish(self, job_id: str) -> bool:
        return self._move(job_id, JobState.DONE, "stage = ?, done = total, worker = NULL", (JobState.DONE.value,))

    def fail(self, job_id: str, code: str, message: str, details: dict | None = None) -> bool:
        return self._move(job_id, JobState.FAILED,
                          "stage = ?, error_code = ?, error_message = ?, error_details = ?, worker = NULL",
                          (JobState.FAILED.value, code, message, json.dumps(details) if details else None))

    def unfinished(self) -> list[str]:
        """Ids of jobs not done nor failed, oldest first: after a (re)start, all go back to the queue."""
        running = tuple(s.value for s in RUNNING_STATES)
        marks = ",".join("?" * len(running))
        self.execute(f"UPDATE jobs SET worker = NULL WHERE state IN ({marks})", running)  # noqa: S608 (our SQL)
        rows = self.execute("SELECT id FROM jobs WHERE state NOT IN (?, ?) ORDER BY created",
                            (JobState.DONE.value, JobState.FAILED.value)).fetchall()
        return [r["id"] for r in rows]

    def close(self) -> None:
        self.db.close()
