"""Unknown faces a model keeps (issue #28): stored, grouped, merged, moved, discarded, named, expired.

The broker owns them, as it owns the job store: a web process sends the faces it could not name
(KEEP: the aligned chip as JPEG, the embedding, the quality, where they came from and the key that sent
them) and gets their ids once they are committed; every other change is a message too. One SQLite file
(`var/unknown.sqlite`, WAL, synchronous FULL, secure_delete) written by the broker's loop only, so a
face is kept once, never half, and two fronts changing one group are served one after the other. Any
process that finds faces (predict today; a video or a camera later) keeps them through `keep`, the
one way in.

Groups are made as faces arrive (modelization/grouping.py): a face joins the waiting group whose
template it is closest to, relative to the group's threshold from the model's stranger model, or
starts one. A group's id never changes as it grows; a merge keeps the largest group's id and
remembers where the others went, so a stale id is answered with the group it is now part of.

Naming a group is a derivation (app/broker/intake.py): its faces' embeddings become records of the new
model, no photo is extracted again. While it builds, the faces are marked with the new model; when it
is built, every face of the parent (the waiting ones too) moves to it, since that is the model the
client uses from then on; when it fails, they wait again. One naming per model at a time.
"""
from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.broker.job import Job, built_model
from app.broker.store import JobStore
from app.broker.unknown_naming import Namings
from app.shared.storage import sqlite_full
from app.wire.protocol import FrontError
from constants import Settings
from logger import logger
from modelization.grouping import GROUPING_FAR, best_group
from modelization.openset import STRANGER_MODEL, unit

SCHEMA = """
CREATE TABLE IF NOT EXISTS faces (
    id TEXT PRIMARY KEY,        -- the face's unknown_id
    model TEXT NOT NULL,        -- the model that keeps it (moves to the model a naming derives, once built)
    tenant TEXT,
    grp TEXT NOT NULL,          -- its group's id
    embedding BLOB NOT NULL,    -- float32 x 128, as the model named it
    quality TEXT, box TEXT,     -- JSON
    source TEXT NOT NULL,       -- JSON: {kind, request, item}
    key_id TEXT,                -- the API key that sent it
    seen REAL NOT NULL,
    expires REAL NOT NULL,
    chip BLOB NOT NULL,         -- JPEG of the aligned chip
    bytes INTEGER NOT NULL,
    named TEXT,                 -- the model a naming derived with it (NULL: waiting)
    label TEXT
);
CREATE INDEX IF NOT EXISTS faces_model ON faces (model, named);
CREATE INDEX IF NOT EXISTS faces_grp ON faces (grp);
CREATE INDEX IF NOT EXISTS faces_tenant ON faces (tenant);
CREATE INDEX IF NOT EXISTS faces_expires ON faces (expires);
CREATE TABLE IF NOT EXISTS merged (
    id TEXT PRIMARY KEY,        -- a group merged into another
    model TEXT NOT NULL,
    into_grp TEXT NOT NULL,
    at REAL NOT NULL
);
"""
EXPIRE_EVERY_S = 60.0
DIMENSION = 128


def new_id() -> str:
    """A face's or a group's id: 16 hex digits (app/wire/protocol.is_unknown_id)."""
    return secrets.token_hex(8)


class UnknownFaces:
    """The store and what can be done to it; every method runs on the broker's loop."""

    def __init__(self, settings: Settings, store: Callable[[], JobStore]):
        self.s = settings
        self._store = store
        self.path: Path = settings.unknown_db_path
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "secure_delete=ON", "busy_timeout=5000"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript(SCHEMA)
        self.path.chmod(0o600)
        self.namings = Namings(self.db, self.group_of)  # the groups being named (app/broker/unknown_naming.py)
        self._models: dict[str, tuple[float, ...]] = {}  # a model's stranger model, read once
        self.next_expiry = 0.0

    @property
    def store(self) -> JobStore:
        return self._store()

    def close(self) -> None:
        self.db.close()

    # --- checks ------------------------------------------------------------------------------
    def model_of(self, model: str, tenant: str | None) -> Job:
        """A built model of `tenant` (None: any), or NOT_FOUND (a video, another tenant's too) / NOT_READY."""
        return built_model(self.store, model, tenant)

    def group_of(self, model: str, group: str) -> list[sqlite3.Row]:
        """A waiting group's faces, oldest first; else GROUP_MERGED (naming the group it is part of now),
        GROUP_NAMED (its faces went to a naming) or NOT_FOUND."""
        rows = self.db.execute("SELECT * FROM faces WHERE model = ? AND grp = ? AND named IS NULL ORDER BY seen",
                               (model, group)).fetchall()
        if rows:
            return rows
        into = self.merged_into(model, group)
        if into is not None:
            raise FrontError("GROUP_MERGED", f"group {group} was merged into group {into}: use {into}")
        if self.db.execute("SELECT 1 FROM faces WHERE model = ? AND grp = ? LIMIT 1", (model, group)).fetchone():
            raise FrontError("GROUP_NAMED", f"group {group} is being named or was named")
        raise FrontError("NOT_FOUND", f"no group {group} of unknown faces in model {model}")

    def merged_into(self, model: str, group: str) -> str | None:
        """Where a merged group went (following merges of merges), or None."""
        into, seen = None, set()
        while group not in seen:
            seen.add(group)
            row = self.db.execute("SELECT into_grp FROM merged WHERE model = ? AND id = ?", (model, group)).fetchone()
            if row is None:
                break
            into = group = row["into_grp"]
        return into

    def bytes_of(self, tenant: str | None) -> int:
        """What a tenant's kept faces take (chips, embeddings, their details): part of its byte quota."""
        row = self.db.execute("SELECT COALESCE(SUM(bytes), 0) FROM faces WHERE tenant IS ?", (tenant,)).fetchone()
        return int(row[0])

    def stranger_model(self, model: str) -> tuple[float, ...]:
        """The stranger model of a built model's open set (its manifest), the grouping thresholds' source."""
        if model not in self._models:
            constants: Any = None
            try:
                manifest = json.loads((self.s.dumps_dir / model / "manifest.json").read_text())
                constants = (manifest.get("open_set") or {}).get("stranger_model")
            except (OSError, ValueError):
                pass
            ok = isinstance(constants, list) and len(constants) == 5 and all(
                isinstance(c, (int, float)) for c in constants)
            self._models[model] = tuple(float(c) for c in constants) if ok else STRANGER_MODEL
        return self._models[model]

    # --- keeping -------------------------------------------------------------------------------
    def keep(self, model: str, tenant: str | None, key_id: str | None, source: dict, faces: list[dict],
             chips: list[bytes], now: float | None = None) -> dict:
        """Keep faces a model could not name (checked by app/wire/protocol.check_keep), each in its group.
        -> {"faces": [{unknown_id, cluster}]}, once committed. QUOTA_EXCEEDED keeps none of them."""
        job = self.model_of(model, tenant)
        now = time.time() if now is None else now
        sizes = [len(c) + 4 * DIMENSION + len(json.dumps(f.get("quality"))) + 200 for f, c in zip(faces, chips)]
        if self.s.tenant_max_bytes:
            stored = self.store.stored_bytes(job.tenant, self.s.dumps_dir) + self.bytes_of(job.tenant)
            if stored + sum(sizes) > self.s.tenant_max_bytes:
                raise FrontError("QUOTA_EXCEEDED", f"this tenant stores {stored} bytes; keeping {sum(sizes)} more "
                                 f"would pass its quota of {self.s.tenant_max_bytes} (FR_TENANT_MAX_BYTES): no face "
                                 "was kept")
        groups, sums, counts = self.templates(model)
        stranger = self.stranger_model(model)
        expires = now + self.s.unknown_retention_days * 86400
        out = []
        with sqlite_full("the unknown faces' store"):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for face, chip, size in zip(faces, chips, sizes):
                    x = np.asarray(face["embedding"], np.float32)
                    i, _ = best_group(x, sums, counts, GROUPING_FAR, stranger)
                    if i is None:
                        groups.append(new_id())
                        sums = np.vstack([sums, unit(x[None, :])])
                        counts = np.append(counts, 1)
                        i = len(groups) - 1
                    else:
                        sums[i] += unit(x[None, :])[0]
                        counts[i] += 1
                    face_id = new_id()
                    self.db.execute(
                        "INSERT INTO faces (id, model, tenant, grp, embedding, quality, box, source, key_id, seen, "
                        "expires, chip, bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (face_id, model, job.tenant, groups[i], x.tobytes(), json.dumps(face.get("quality")),
                         json.dumps(face.get("box")), json.dumps(source), key_id, now, expires, chip, size))
                    out.append({"unknown_id": face_id, "cluster": groups[i]})
                self.db.execute("COMMIT")
            except BaseException:
                self.rollback()
                raise
        return {"faces": out}

    def rollback(self) -> None:
        """End a failed transaction, if SQLite has not ended it already (it rolls back itself on a full disk:
        a second ROLLBACK raised 'no transaction is active' in place of the full disk)."""
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def templates(self, model: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """A model's waiting groups: (ids, (k, 128) sums of their unit-length embeddings, (k,) sizes)."""
        rows = self.db.execute("SELECT grp, embedding FROM faces WHERE model = ? AND named IS NULL ORDER BY seen",
                               (model,)).fetchall()
        ids: dict[str, int] = {}
        for r in rows:
            ids.setdefault(r["grp"], len(ids))
        sums = np.zeros((len(ids), DIMENSION), np.float64)
        counts = np.zeros(len(ids), np.int64)
        if rows:
            x = unit(np.frombuffer(b"".join(r["embedding"] for r in rows), np.float32).reshape(-1, DIMENSION))
            idx = np.asarray([ids[r["grp"]] for r in rows])
            np.add.at(sums, idx, x)
            np.add.at(counts, idx, 1)
        return list(ids), sums, counts

    # --- reading -------------------------------------------------------------------------------
    def groups(self, model: str, tenant: str | None) -> dict:
        """{"clusters": [{id, size, faces, first_seen, last_seen}], "faces": n}: largest first."""
        self.model_of(model, tenant)
        rows = self.db.execute("SELECT id, grp, seen FROM faces WHERE model = ? AND named IS NULL ORDER BY seen",
                               (model,)).fetchall()
        by: dict[str, list] = {}
        for r in rows:
            by.setdefault(r["grp"], []).append(r)
        clusters = [{"id": g, "size": len(fs), "faces": [f["id"] for f in fs], "first_seen": fs[0]["seen"],
                     "last_seen": fs[-1]["seen"]} for g, fs in by.items()]
        clusters.sort(key=lambda c: (-c["size"], -c["last_seen"]))
        naming = self.namings.naming.get(model)
        return {"clusters": clusters, "faces": len(rows),
                "naming": None if naming is None else {"cluster": naming.group, "model": naming.model,
                                                       "label": naming.label}}

    def counts(self, models: list[str], tenant: str | None = None) -> dict[str, int]:
        """How many faces wait in each of these models (of `tenant`; None: of any)."""
        if not models:
            return {}
        marks = ",".join("?" * len(models))
        rows = self.db.execute(f"SELECT model, COUNT(*) FROM faces WHERE named IS NULL AND model IN ({marks}) "  # noqa: S608
                               "AND (? IS NULL OR tenant = ?) GROUP BY model", (*models, tenant, tenant)).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def chip(self, model: str, tenant: str | None, group: str, face: str) -> tuple[dict, bytes]:
        """A kept face's chip (JPEG) and details; NOT_FOUND unless that face is in that group of that model."""
        self.model_of(model, tenant)
        row = self.db.execute("SELECT * FROM faces WHERE id = ? AND model = ? AND grp = ?",
                              (face, model, group)).fetchone()
        if row is None:
            raise FrontError("NOT_FOUND", f"no face {face} in group {group} of model {model}")
        return {"unknown_id": row["id"], "cluster": row["grp"], "seen": row["seen"],
                "quality": json.loads(row["quality"] or "null"), "source": json.loads(row["source"])}, row["chip"]

    # --- acting on groups ----------------------------------------------------------------------
    def merge(self, model: str, tenant: str | None, groups: list[str]) -> dict:
        """Groups into one (the largest keeps its id; the others are remembered as merged into it)."""
        self.model_of(model, tenant)
        groups = list(dict.fromkeys(groups))
        if len(groups) < 2:
            raise FrontError("BAD_PARAMETER", "name at least two different groups to merge")
        self.namings.not_being_named(model, groups)
        sizes = {g: len(self.group_of(model, g)) for g in groups}
        keep = max(groups, key=lambda g: (sizes[g], -groups.index(g)))
        now = time.time()
        with sqlite_full("the unknown faces' store"):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for g in groups:
                    if g != keep:
                        self.db.execute("UPDATE faces SET grp = ? WHERE model = ? AND grp = ? AND named IS NULL",
                                        (keep, model, g))
                        self.db.execute("INSERT OR REPLACE INTO merged (id, model, into_grp, at) VALUES (?, ?, ?, ?)",
                                        (g, model, keep, now))
                self.db.execute("COMMIT")
            except BaseException:
                self.rollback()
                raise
        return {"cluster": keep, "size": sum(sizes.values()), "merged": [g for g in groups if g != keep]}

    def move(self, model: str, tenant: str | None, group: str, face: str, to: str | None) -> dict:
        """One face out of its group: into another waiting group `to`, or (None) a group of its own."""
        self.model_of(model, tenant)
        rows = self.group_of(model, group)
        self.namings.not_being_named(model, [group] + ([to] if to else []))
        if face not in {r["id"] for r in rows}:
            raise FrontError("NOT_FOUND", f"no face {face} in group {group}")
        if to is not None:
            if to == group:
                raise FrontError("BAD_PARAMETER", "the face is already in that group")
            self.group_of(model, to)
        target = to or new_id()
        self.db.execute("UPDATE faces SET grp = ? WHERE id = ?", (target, face))
        return {"unknown_id": face, "cluster": target, "from": group}

    def discard(self, model: str, tenant: str | None, group: str) -> dict:
        """A group's faces gone: chips, embeddings (the freed pages zeroed, the write-ahead log emptied)."""
        self.model_of(model, tenant)
        rows = self.group_of(model, group)
        self.namings.not_being_named(model, [group])
        self.db.execute("DELETE FROM faces WHERE model = ? AND grp = ? AND named IS NULL", (model, group))
        self.db.execute("DELETE FROM merged WHERE model = ? AND into_grp = ?", (model, group))
        self.wipe()
        return {"cluster": group, "removed": len(rows)}

    # --- job events (app/broker/events.py) ---------------------------------------------------------
    def on_replaced(self, old: str, new: str, label: str) -> None:
        """An erasure rebuilt a model without `label`: the faces it kept, but those named as that person, go
        to the rebuilt model (the person's go with the old model, `on_deleted`)."""
        self.db.execute("UPDATE faces SET model = ? WHERE model = ? AND label IS NOT ?", (new, old, label))
        self.db.execute("UPDATE merged SET model = ? WHERE model = ?", (new, old))

    def on_deleted(self, job_id: str) -> None:
        """A model deleted (or erased): every face it kept, and those named into it, go."""
        self.namings.forget(job_id)
        self._models.pop(job_id, None)
        cur = self.db.execute("DELETE FROM faces WHERE model = ? OR named = ?", (job_id, job_id))
        self.db.execute("DELETE FROM merged WHERE model = ?", (job_id,))
        if cur.rowcount:
            logger.info("model {}: {} kept unknown face(s) removed", job_id, cur.rowcount)
            self.wipe()

    def labelled(self, label: str, tenant: str | None) -> int:
        """How many kept faces were named as `label` (tenant None: in every tenant)."""
        return int(self.db.execute("SELECT COUNT(*) FROM faces WHERE label = ? AND (? IS NULL OR tenant = ?)",
                                   (label, tenant, tenant)).fetchone()[0])

    def erase(self, label: str, tenant: str | None) -> int:
        """A person erased: the faces named as them (tenant None: in every tenant). -> how many."""
        cur = self.db.execute("DELETE FROM faces WHERE label = ? AND (? IS NULL OR tenant = ?)",
                              (label, tenant, tenant))
        if cur.rowcount:
            self.wipe()
        return cur.rowcount

    def expire(self, now: float) -> int:
        """Faces kept longer than FR_UNKNOWN_RETENTION_DAYS: removed, looked for at most once a minute."""
        if now < self.next_expiry:
            return 0
        self.next_expiry = now + EXPIRE_EVERY_S
        sql = "DELETE FROM faces WHERE expires <= ?"
        building = self.namings.pending  # a naming being built keeps its faces until it ends
        if building:
            sql += f" AND (named IS NULL OR named NOT IN ({','.join('?' * len(building))}))"
        cur = self.db.execute(sql, (now, *building))
        if cur.rowcount:
            logger.info("{} kept unknown face(s) expired (FR_UNKNOWN_RETENTION_DAYS={:g})", cur.rowcount,
                        self.s.unknown_retention_days)
            self.wipe()
        return cur.rowcount

    def wipe(self) -> None:
        """No copy of deleted faces left in the write-ahead log (secure_delete zeroes the freed pages)."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
