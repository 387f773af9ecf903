"""Live cameras, as the broker keeps them: the registry (var/cameras.sqlite), who watches each one, and
what their events become (a stored event with its snapshot, a signed webhook, MQTT messages).

A camera is not a task: a worker holds it for as long as it lives, beside whatever task it runs. The
broker hands each camera that nobody holds to the connected worker that holds the fewest (`WATCH`, with
the model's bundle); a worker says what it holds in every heartbeat, so a broker that restarts adopts
what its workers already watch, and a worker that goes silent loses its cameras to the others at the
next beat (their state says so meanwhile). A camera whose model is deleted stops (offline, with the
reason); its events and snapshots go with the model, and an erased person's events go with the person.
Events are kept FR_EVENT_RETENTION_DAYS days.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from app.broker.mqtt import Mqtt
from app.broker.store import JobStore
from app.shared.cameras import redact
from app.wire import protocol as p
from app.wire.protocol import FrontError, escape
from constants import Settings
from constants.states import JobState
from logger import logger
from modelization.bundle import BUNDLE_FILE

if TYPE_CHECKING:
    from app.broker.pool import WorkerState

DB_FILE = "cameras.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS cameras (
    id TEXT PRIMARY KEY, tenant TEXT, name TEXT NOT NULL, url TEXT NOT NULL, model TEXT NOT NULL,
    fps REAL NOT NULL, callback_url TEXT, callback_secret TEXT,
    state TEXT NOT NULL, reason TEXT, worker TEXT, stopped INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, camera TEXT NOT NULL, tenant TEXT, model TEXT NOT NULL,
    type TEXT NOT NULL, track INTEGER NOT NULL, label TEXT, confidence REAL, time REAL NOT NULL,
    first REAL NOT NULL, last REAL NOT NULL, frames INTEGER NOT NULL, box TEXT NOT NULL, boxes TEXT NOT NULL,
    snapshot TEXT, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS events_camera ON events(camera, seq);
CREATE INDEX IF NOT EXISTS events_model ON events(model);
CREATE INDEX IF NOT EXISTS events_created ON events(created);
"""
ADOPT_GRACE_BEATS = 2  # after a start, workers' heartbeats say what they hold before anything is handed out


class CameraStore:
    """The cameras and their events (SQLite WAL, written by the broker's loop only)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA secure_delete=ON")  # an erased person's events leave no bytes behind
        self.db.executescript(SCHEMA)
        path.chmod(0o600)  # camera URLs hold credentials
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()

    def get(self, camera_id: str, tenant: str | None = None) -> sqlite3.Row | None:
        row = self.db.execute("SELECT * FROM cameras WHERE id = ?", (camera_id,)).fetchone()
        if row is None or (tenant is not None and row["tenant"] != tenant):
            return None
        return row

    def all(self, tenant: str | None = None) -> list[sqlite3.Row]:
        if tenant is None:
            return self.db.execute("SELECT * FROM cameras ORDER BY created").fetchall()
        return self.db.execute("SELECT * FROM cameras WHERE tenant = ? ORDER BY created", (tenant,)).fetchall()

    def count(self, tenant: str | None) -> int:
        return self.db.execute("SELECT COUNT(*) FROM cameras WHERE tenant IS ?", (tenant,)).fetchone()[0]

    def add(self, header: dict) -> None:
        now = time.time()
        callback = header.get("callback") or {}
        self.db.execute("INSERT INTO cameras (id, tenant, name, url, model, fps, callback_url, callback_secret, "
                        "state, reason, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'connecting', "
                        "'waiting for a worker', ?, ?)",
                        (header["id"], header["tenant"], header["name"], header["url"], header["model"],
                         header["fps"], callback.get("url"), callback.get("secret"), now, now))

    def set_state(self, camera_id: str, state: str, reason: str | None, worker: str | None = None,
                  stopped: bool | None = None) -> None:
        sets, args = "state = ?, reason = ?, updated = ?", [state, reason, time.time()]
        if worker is not None:
            sets += ", worker = ?"
            args.append(worker or None)
        if stopped is not None:
            sets += ", stopped = ?"
            args.append(int(stopped))
        self.db.execute(f"UPDATE cameras SET {sets} WHERE id = ?", (*args, camera_id))  # noqa: S608 (fixed names)

    def remove(self, camera_id: str) -> list[str]:
        """Drop a camera and its events; -> their snapshots' paths."""
        snaps = [r[0] for r in self.db.execute("SELECT snapshot FROM events WHERE camera = ? AND snapshot IS NOT "
                                               "NULL", (camera_id,))]
        self.db.execute("DELETE FROM events WHERE camera = ?", (camera_id,))
        self.db.execute("DELETE FROM cameras WHERE id = ?", (camera_id,))
        return snaps

    def add_event(self, camera: sqlite3.Row, event: dict, snapshot: str | None) -> int:
        cur = self.db.execute(
            "INSERT INTO events (camera, tenant, model, type, track, label, confidence, time, first, last, frames, "
            "box, boxes, snapshot, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (camera["id"], camera["tenant"], camera["model"], event["type"], event["track"], event["label"],
             event.get("confidence"), event["time"], event["first"], event["last"], event["frames"],
             json.dumps(event["box"]), json.dumps(event.get("boxes", [])), snapshot, time.time()))
        return int(cur.lastrowid or 0)

    def events(self, camera_id: str, after: int, limit: int) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM events WHERE camera = ? AND seq > ? ORDER BY seq LIMIT ?",
                               (camera_id, after, limit)).fetchall()

    def event(self, camera_id: str, seq: int) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM events WHERE camera = ? AND seq = ?", (camera_id, seq)).fetchone()

    def drop_events(self, where: str, args: tuple) -> list[str]:
        """Delete the events matching `where`; -> their snapshots' paths."""
        snaps = [r[0] for r in self.db.execute(f"SELECT snapshot FROM events WHERE {where} AND snapshot IS NOT NULL",  # noqa: S608
                                               args)]
        self.db.execute(f"DELETE FROM events WHERE {where}", args)  # noqa: S608 (fixed clauses)
        return snaps


def event_view(row: sqlite3.Row, camera_name: str | None = None) -> dict:
    """An event as the API, webhooks and MQTT show it."""
    label = row["label"]
    return {"id": row["seq"], "camera": row["camera"], "camera_name": camera_name, "model": row["model"],
            "type": f"track.{row['type']}", "track": row["track"],
            "label": label if label is not None else "unknown", "known": label is not None,
            "confidence": row["confidence"], "time": row["time"], "first": row["first"], "last": row["last"],
            "frames": row["frames"], "box": json.loads(row["box"]), "boxes": json.loads(row["boxes"]),
            "snapshot": f"/cameras/{row['camera']}/events/{row['seq']}/snapshot" if row["snapshot"] else None}


def camera_view(row: sqlite3.Row) -> dict:
    """A camera as the API shows it: its URL without credentials, never the callback's secret."""
    return {"id": row["id"], "name": row["name"], "url": redact(row["url"]), "model": row["model"],
            "fps": row["fps"], "state": row["state"], "reason": row["reason"],
            "callback_url": row["callback_url"], "tenant": row["tenant"], "worker": row["worker"],
            "created": row["created"],
            "updated": row["updated"]}


class Cameras:
    """The broker's part for cameras: front requests, the workers' camera messages, handover and retention."""

    def __init__(self, settings: Settings, back: zmq.Socket, jobs: Callable[[], JobStore],
                 workers: Callable[[], dict[bytes, WorkerState]], callbacks_store: Callable[[], Any],
                 wake_sender: Callable[[], None]):
        self.s = settings
        self.back = back
        self._jobs = jobs
        self.workers = workers
        self.callbacks_store = callbacks_store
        self.wake_sender = wake_sender
        self.store = CameraStore(settings.var_dir / DB_FILE)
        self.events_dir = settings.var_dir / "events"
        self.holder: dict[str, bytes] = {}      # camera id -> the worker identity watching it
        self.handed: dict[str, int] = {}        # camera id -> the beat it was handed out at
        self.beats = 0
        self.next_sweep = 0.0
        self.mqtt = Mqtt(settings)
        self.erasing: list[str] | None = None  # models deleted by the erasure under way

    @property
    def jobs(self) -> JobStore:
        return self._jobs()

    # --- front requests ------------------------------------------------------------------------------
    def handlers(self) -> dict[bytes, Callable[[dict], dict]]:
        return {p.CAMADD: self.add, p.CAMLIST: self.list_cameras, p.CAMDEL: self.delete, p.CAMEVENTS: self.events}

    def add(self, h: dict) -> dict:
        job = self.jobs.get(h["model"])
        if job is None or (h["tenant"] is not None and job.tenant != h["tenant"]):
            raise FrontError("NOT_FOUND", f"model {h['model']} not found")
        if job.state != JobState.DONE:
            raise FrontError("NOT_READY", f"model {h['model']} is not built ({job.state.value})")
        if h["tenant"] is not None and self.s.max_cameras and self.store.count(h["tenant"]) >= self.s.max_cameras:
            raise FrontError("TOO_MANY_CAMERAS", f"tenant {h['tenant']} has {self.s.max_cameras} cameras, the most "
                             "FR_MAX_CAMERAS allows; delete one first")
        if self.store.get(h["id"]) is not None:
            raise FrontError("CONFLICT", "a camera with this id exists")
        self.store.add({**h, "tenant": h["tenant"] if h["tenant"] is not None else job.tenant})
        logger.info("camera {} added: {} with model {}", h["id"], redact(h["url"]), h["model"])
        self.assign()
        row = self.store.get(h["id"])
        assert row is not None
        return {"camera": camera_view(row)}

    def list_cameras(self, h: dict) -> dict:
        return {"cameras": [camera_view(r) for r in self.store.all(h.get("tenant"))]}

    def delete(self, h: dict) -> dict:
        row = self.store.get(h["id"], h.get("tenant"))
        if row is None:
            raise FrontError("NOT_FOUND", f"camera {h['id']} not found")
        self.unwatch(row["id"])
        self.unlink(self.store.remove(row["id"]))
        shutil.rmtree(self.events_dir / row["id"], ignore_errors=True)
        self.mqtt.camera_removed(row)
        logger.info("camera {} deleted", row["id"])
        return {"id": row["id"], "removed": True}

    def events(self, h: dict) -> dict:
        row = self.store.get(h["id"], h.get("tenant"))
        if row is None:
            raise FrontError("NOT_FOUND", f"camera {h['id']} not found")
        return {"events": [event_view(e, row["name"]) for e in self.store.events(row["id"], h["after"], h["limit"])],
                "camera": camera_view(row)}

    def snapshot(self, h: dict) -> tuple[dict, list[bytes]]:
        row = self.store.get(h["id"], h.get("tenant"))
        event = self.store.event(h["id"], h["event"]) if row is not None else None
        if event is None or not event["snapshot"]:
            raise FrontError("NOT_FOUND", "no such event snapshot")
        try:
            return {}, [Path(event["snapshot"]).read_bytes()]
        except OSError:
            raise FrontError("NOT_FOUND", "the event's snapshot is gone") from None

    # --- workers --------------------------------------------------------------------------------------
    def on_heartbeat(self, worker: WorkerState, held: list[str]) -> None:
        """What a worker says it watches: adopt what nobody else holds, stop what it should not hold."""
        for camera_id in held:
            row = self.store.get(camera_id)
            owner = self.holder.get(camera_id)
            if row is None or row["stopped"] or (owner is not None and owner != worker.identity):
                self.send(worker.identity, p.pack(p.UNWATCH, {"id": camera_id}))
                continue
            if owner is None:
                self.holder[camera_id] = worker.identity
                self.store.set_state(camera_id, row["state"], row["reason"], worker=worker.name)
        for camera_id, owner in list(self.holder.items()):
            # handed out a beat ago and still not in its list: the WATCH was lost (the worker restarted)
            if owner == worker.identity and camera_id not in held and self.beats - self.handed.get(camera_id, 0) > 2:
                self.holder.pop(camera_id, None)

    def on_state(self, worker: WorkerState, h: dict) -> None:
        if self.holder.get(h["camera"]) != worker.identity:
            return
        row = self.store.get(h["camera"])
        if row is None:
            return
        if (row["state"], row["reason"]) != (h["state"], h["reason"]):
            logger.info("camera {} ({}): {}{}", row["id"], escape(row["name"], 60), h["state"],
                        f" ({escape(h['reason'], 200)})" if h["reason"] else "")
            self.store.set_state(row["id"], h["state"], h["reason"])
            self.mqtt.camera_state(row, h["state"], h["reason"])

    def on_event(self, worker: WorkerState, h: dict, snapshot: bytes) -> None:
        camera_id, event = h["camera"], h["event"]
        if self.holder.get(camera_id) != worker.identity:
            return
        row = self.store.get(camera_id)
        if row is None:
            return
        folder = self.events_dir / camera_id
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{time.time_ns()}.jpg"
        tmp.write_bytes(snapshot)
        seq = self.store.add_event(row, event, None)
        path = folder / f"{seq}.jpg"
        tmp.rename(path)
        self.store.db.execute("UPDATE events SET snapshot = ? WHERE seq = ?", (str(path), seq))
        stored = self.store.event(camera_id, seq)
        assert stored is not None
        view = event_view(stored, row["name"])
        self.mqtt.event(row, view)
        if row["callback_url"]:
            data = {**view, "received": time.time()}
            if self.callbacks_store().enqueue_message(camera_id, row["callback_url"], row["callback_secret"],
                                                      view["type"], data, row["tenant"]):
                self.wake_sender()

    # --- handing cameras out ------------------------------------------------------------------------------
    def beat(self) -> None:
        self.beats += 1
        self.assign()
        if time.monotonic() >= self.next_sweep:
            self.next_sweep = time.monotonic() + 60
            self.sweep()

    def lost(self, worker: WorkerState) -> None:
        """A worker went silent: its cameras go to the others at once."""
        for camera_id, owner in list(self.holder.items()):
            if owner == worker.identity:
                del self.holder[camera_id]
                self.store.set_state(camera_id, "connecting", f"its worker {worker.name} was lost; handing over",
                                     worker="")
        self.assign()

    def assign(self) -> None:
        """Hand every camera nobody watches to the worker holding the fewest (after the start's grace, so
        that workers already watching say so first)."""
        workers = self.workers()
        if not workers or self.beats < ADOPT_GRACE_BEATS:
            return
        for row in self.store.all():
            if row["stopped"] or row["id"] in self.holder:
                continue
            load = {ident: 0 for ident in workers}
            for owner in self.holder.values():
                if owner in load:
                    load[owner] += 1
            identity = min(load, key=lambda i: load[i])
            job = self.jobs.get(row["model"])
            if job is None:
                self.stop(row, "its model was deleted")
                continue
            if job.state != JobState.DONE:
                if job.final:
                    self.stop(row, f"its model's build {job.state.value}")
                continue  # it is being built (rebuilt after an erasure): the camera waits
            try:
                bundle = (self.s.dumps_dir / row["model"] / BUNDLE_FILE).read_bytes()
            except OSError:
                self.stop(row, "its model's bundle is gone")
                continue
            camera = {"id": row["id"], "url": row["url"], "name": row["name"], "model": row["model"],
                      "fps": row["fps"], "tenant": row["tenant"]}
            if self.send(identity, p.pack(p.WATCH, {"camera": camera}, [bundle])):
                self.holder[row["id"]] = identity
                self.handed[row["id"]] = self.beats
                self.store.set_state(row["id"], "connecting", None, worker=workers[identity].name)

    def send(self, identity: bytes, frames: list[bytes]) -> bool:
        try:
            self.back.send_multipart([identity, *frames], flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def unwatch(self, camera_id: str) -> None:
        owner = self.holder.pop(camera_id, None)
        if owner is not None:
            self.send(owner, p.pack(p.UNWATCH, {"id": camera_id}))

    def stop(self, row: sqlite3.Row, reason: str) -> None:
        self.unwatch(row["id"])
        self.store.set_state(row["id"], "offline", reason, worker="", stopped=True)
        self.mqtt.camera_state(row, "offline", reason)

    # --- what goes with models and people ----------------------------------------------------------------
    def on_deleted(self, job_id: str) -> None:
        """A model deleted: its cameras stop, its events and snapshots go. During an erasure the model may be
        rebuilt under a new id: `erase_person` decides then."""
        if self.erasing is not None:
            self.erasing.append(job_id)
            return
        for row in self.store.all():
            if row["model"] == job_id:
                self.stop(row, "its model was deleted")
        self.unlink(self.store.drop_events("model = ?", (job_id,)))

    def erase(self, erase: Callable[[str, str | None], dict], label: str, tenant: str | None) -> dict:
        """ERASE: the erasure itself (`erase`), then the cameras follow it. A model rebuilt without the person
        keeps its cameras and the others' events under its new id (its cameras wait for it to be built); a
        model deleted stops its cameras. The person's events and snapshots go."""
        self.erasing = []
        try:
            answer = erase(label, tenant)
        finally:
            deleted, self.erasing = self.erasing, None
        removed = self.erase_person(label, tenant)
        rebuilt = {m["id"]: m["new_id"] for m in answer.get("models", []) if m.get("action") == "rebuilt"}
        for old in deleted:
            if old not in rebuilt:
                self.on_deleted(old)
                continue
            new = rebuilt[old]
            self.store.db.execute("UPDATE events SET model = ? WHERE model = ?", (new, old))
            for row in self.store.all():
                if row["model"] == old:
                    self.unwatch(row["id"])
                    self.store.db.execute("UPDATE cameras SET model = ? WHERE id = ?", (new, row["id"]))
                    self.store.set_state(row["id"], "connecting", "waiting for its model, rebuilt without an "
                                         "erased person", worker="", stopped=False)
        return {**answer, "events": removed}

    def erase_person(self, label: str, tenant: str | None) -> int:
        """An erased person's events (of `tenant`'s cameras; None: every tenant's) and snapshots go."""
        if tenant is None:
            snaps = self.store.drop_events("label = ?", (label,))
        else:
            snaps = self.store.drop_events("label = ? AND tenant = ?", (label, tenant))
        self.unlink(snaps)
        self.store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.mqtt.person_erased(label, tenant)
        return len(snaps)

    def sweep(self) -> None:
        """Events older than FR_EVENT_RETENTION_DAYS go with their snapshots."""
        cutoff = time.time() - self.s.event_retention_days * 86400
        snaps = self.store.drop_events("created < ?", (cutoff,))
        if snaps:
            self.unlink(snaps)
            logger.info("removed {} camera event(s) older than {} days", len(snaps), self.s.event_retention_days)

    @staticmethod
    def unlink(paths: list[str]) -> None:
        for path in paths:
            Path(path).unlink(missing_ok=True)

    def close(self) -> None:
        self.mqtt.close()
        self.store.close()
