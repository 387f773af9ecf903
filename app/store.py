"""Durable job state in SQLite (WAL) and the uploaded photos on disk.

The broker is the only writer; the HTTP front only reads. A job row is the
truth about a job: after a crash or restart, every job that is not finished is
put back in the queue (see `requeue_unfinished`).
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

from constants import DONE, FAILED, QUEUED, RUNNING_STATES
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
    detail TEXT                     -- JSON: what the current stage shows (the search's progress)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, created);
"""


def connect(db_path: Path, readonly: bool = False) -> sqlite3.Connection:
    db_path = Path(db_path)
    if readonly:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10, check_same_thread=False)
    else:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(db_path, timeout=10, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        if "detail" not in {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}:  # stores from 0.1.0
            conn.execute("ALTER TABLE jobs ADD COLUMN detail TEXT")
    conn.row_factory = sqlite3.Row
    return conn


def job_view(row: sqlite3.Row) -> dict:
    """A job row as the API shows it."""
    error = None
    if row["error_code"]:
        error = {"code": row["error_code"], "message": row["error_message"]}
        if row["error_details"]:
            error["details"] = json.loads(row["error_details"])
    return {
        "id": row["id"],
        "name": row["name"],
        "state": row["state"],
        "available": 1 if row["state"] == DONE else 0,
        "progress": {"stage": row["stage"] or row["state"], "done": row["done"] or 0, "total": row["total"] or 0},
        "search": json.loads(row["detail"]) if "detail" in row.keys() and row["detail"] else None,
        "error": error,
        "created": row["created"],
        "updated": row["updated"],
        "attempts": row["attempts"],
        "worker": row["worker"],
        "photos": row["n_photos"],
        "people": row["n_people"],
    }


class JobStore:
    """Jobs table + upload folders. Methods are small and each commits on its own."""

    def __init__(self, db_path: Path, uploads_dir: Path):
        self.db = connect(db_path)
        self.uploads_dir = Path(uploads_dir)
        self.uploads_dir.mkdir(parents=True, exist_ok=True)

    # --- uploads -------------------------------------------------------------
    def _upload_dir(self, job_id: str) -> Path:
        return self.uploads_dir / job_id

    def save_uploads(self, job_id: str, photos: list[Photo]) -> None:
        """Write photos to `uploads/<id>/` (fsynced, then renamed into place)."""
        tmp = self.uploads_dir / f".{job_id}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        index = []
        for i, p in enumerate(photos):
            fname = f"{i:06d}.bin"
            with open(tmp / fname, "wb") as fh:
                fh.write(p.data)
                fh.flush()
                os.fsync(fh.fileno())
            index.append({"label": p.label, "filename": p.filename, "file": fname})
        (tmp / "index.json").write_text(json.dumps(index, ensure_ascii=False))
        os.rename(tmp, self._upload_dir(job_id))

    def load_index(self, job_id: str) -> list[dict]:
        """[{label, filename, file}] of a job's photos, in upload order."""
        return json.loads((self._upload_dir(job_id) / "index.json").read_text())

    def load_photos(self, job_id: str, index: list[dict]) -> list[bytes]:
        d = self._upload_dir(job_id)
        return [(d / e["file"]).read_bytes() for e in index]

    def delete_uploads(self, job_id: str) -> None:
        shutil.rmtree(self._upload_dir(job_id), ignore_errors=True)

    def sweep_uploads(self, keep_done: bool) -> list[str]:
        """Remove upload folders a crash left behind: half-written ones (`.<id>.tmp`), those of
        deleted jobs, and (unless `keep_done`) those of finished jobs. -> the names removed."""
        removed = []
        for folder in self.uploads_dir.iterdir():
            if folder.name.startswith(".") and folder.name.endswith(".tmp"):
                stale = True
            else:
                row = self.get(folder.name)
                stale = row is None or (row["state"] == DONE and not keep_done)
            if stale:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
        return removed

    def has_uploads(self, job_id: str) -> bool:
        return (self._upload_dir(job_id) / "index.json").exists()

    # --- extracted features, one file per chunk of photos ---------------------
    def _chunk_path(self, job_id: str, chunk: int) -> Path:
        return self._upload_dir(job_id) / f"features-{chunk:05d}.json"

    def save_chunk(self, job_id: str, chunk: int, data: bytes) -> None:
        path = self._chunk_path(job_id, chunk)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

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
        return self._upload_dir(job_id) / "search.json"

    def save_search(self, job_id: str, state: dict) -> None:
        """Atomic write: a crash leaves the previous checkpoint whole."""
        path = self._search_path(job_id)
        tmp = path.with_suffix(".tmp")
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

    @staticmethod
    def delete_cache_entries(cache_dir: Path, keys: list[str]) -> int:
        n = 0
        for key in keys:
            try:
                (Path(cache_dir) / key[:2] / f"{key}.json").unlink()
                n += 1
            except FileNotFoundError:
                pass
        return n

    def delete(self, job_id: str) -> None:
        self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # --- jobs ----------------------------------------------------------------
    def create(self, job_id: str, name: str | None, options: dict, n_photos: int, n_people: int) -> None:
        now = time.time()
        self.db.execute(
            "INSERT INTO jobs (id, name, state, created, updated, options, n_photos, n_people, stage, done, total)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
            (job_id, name, QUEUED, now, now, json.dumps(options), n_photos, n_people, QUEUED, n_photos))

    def get(self, job_id: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()


    def assign(self, job_id: str, worker: str, attempt: int) -> None:
        """Record that a task of the job went to `worker`; `attempts` keeps the highest attempt."""
        self.db.execute("UPDATE jobs SET worker = ?, attempts = MAX(attempts, ?), updated = ? WHERE id = ?",
                        (worker, attempt, time.time(), job_id))

    def progress(self, job_id: str, state: str, stage: str, done: int, total: int,
                 detail: dict | None = None) -> None:
        """Move a running job on. `detail` (the search's progress) is kept until a new one is given."""
        self.db.execute("UPDATE jobs SET state = ?, stage = ?, done = ?, total = ?, updated = ?,"
                        " detail = COALESCE(?, detail) WHERE id = ? AND state NOT IN (?, ?)",
                        (state, stage, done, total, time.time(), json.dumps(detail) if detail else None,
                         job_id, DONE, FAILED))

    def finish(self, job_id: str) -> None:
        self.db.execute("UPDATE jobs SET state = ?, stage = ?, done = total, worker = NULL, updated = ?"
                        " WHERE id = ?", (DONE, DONE, time.time(), job_id))

    def fail(self, job_id: str, code: str, message: str, details: dict | None = None) -> None:
        self.db.execute("UPDATE jobs SET state = ?, stage = ?, error_code = ?, error_message = ?,"
                        " error_details = ?, worker = NULL, updated = ? WHERE id = ?",
                        (FAILED, FAILED, code, message, json.dumps(details) if details else None,
                         time.time(), job_id))

    def unfinished(self) -> list[str]:
        """Ids of jobs not done nor failed, oldest first: after a (re)start, all go back to the queue."""
        marks = ",".join("?" * len(RUNNING_STATES))
        self.db.execute(f"UPDATE jobs SET worker = NULL WHERE state IN ({marks})", RUNNING_STATES)  # noqa: S608 (placeholders only)
        rows = self.db.execute("SELECT id FROM jobs WHERE state NOT IN (?, ?) ORDER BY created",
                               (DONE, FAILED)).fetchall()
        return [r["id"] for r in rows]
