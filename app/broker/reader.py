"""The broker's read side: job rows, listings, bundle pieces and API-key rows for fronts on any host.

The broker's loop checks every front request against its schema (app/wire/protocol.py) and hands the read
requests to these threads over an inproc socket, so a slow read (a locked store, a bundle piece off a
cold disk, hashing a bundle the first time) never holds up the workers' heartbeats, dispatch or submits.
Each answer goes back through the loop, which alone owns the front socket. Readers only read: the job
store read-only (a connection per request, as the fronts used to open), `dumps/`, `var/auth.sqlite` and
`var/webhooks.sqlite` (a job's callback delivery, for GET /is_available).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import zmq

from app.broker.store import SEARCH_CHECKPOINT, THUMBS_DIR, VIDEO_FILE, connect, list_jobs, read_job
from app.broker.webhooks import delivery_view
from app.shared.api_keys import read_key
from app.shared.storage import StoreUnavailable, store_errors
from app.wire import protocol as p
from app.wire.protocol import ProtocolError, escape
from constants import Settings
from constants.states import JobState
from logger import logger
from modelization.bundle import BUNDLE_FILE
from optimization.evolution import Evolution


class NotFound(Exception):
    pass


class BundleSums:
    """sha256 of each model's bundle, computed once per file (size and mtime) and shared by the readers."""

    def __init__(self) -> None:
        self._sums: dict[str, tuple[int, int, str]] = {}
        self._lock = threading.Lock()

    def of(self, model_id: str, path: Path) -> tuple[str, int]:
        """(sha256, size) of the bundle at `path`; FileNotFoundError if it is gone."""
        st = path.stat()
        with self._lock:
            hit = self._sums.get(model_id)
        if hit and hit[0] == st.st_mtime_ns and hit[1] == st.st_size:
            return hit[2], hit[1]
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1024 * 1024):
                digest.update(block)
        self.put(model_id, path, digest.hexdigest())
        return digest.hexdigest(), st.st_size

    def put(self, model_id: str, path: Path, sha256: str) -> None:
        st = path.stat()
        with self._lock:
            self._sums[model_id] = (st.st_mtime_ns, st.st_size, sha256)

    def forget(self, model_id: str) -> None:
        with self._lock:
            self._sums.pop(model_id, None)


class Reader(threading.Thread):
    """One reader: says READY, then takes [front identity, command, header] from the loop and sends
    [front identity, "", answer...] back; the loop gives each request to an idle reader (the ZeroMQ guide's
    load-balancing pattern), so a slow read holds up only its own reader."""

    def __init__(self, settings: Settings, ctx: zmq.Context, address: str, sums: BundleSums, n: int):
        super().__init__(daemon=True, name=f"reader-{n}")
        self.s, self.ctx, self.address, self.sums = settings, ctx, address, sums
        self.running = True

    def run(self) -> None:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.address)
        sock.send_multipart([b"READY"])
        try:
            while self.running:
                if not sock.poll(200):
                    continue
                identity, command, header = sock.recv_multipart()
                sock.send_multipart([identity, b"", *self.answer(command, json.loads(header))])
        finally:
            sock.close(0)

    def answer(self, command: bytes, header: dict) -> list[bytes]:
        try:
            if command == p.GETJOB:
                body = self.get_job(header["id"], header.get("tenant"))
                if header.get("callback"):  # the job's callback delivery (var/webhooks.sqlite, read-only)
                    body["callback"] = delivery_view(self.s, header["id"])
                return p.pack(p.OK, body)
            if command == p.LIST:
                rows, total = list_jobs(self.s.db_path, header["limit"], header["offset"], header.get("tenant"),
                                        header.get("kind"))
                return p.pack(p.OK, {"jobs": [dict(r) for r in rows], "total": total})
            if command == p.BUNDLE:
                return self.bundle(header)
            if command == p.KNOWN:
                return p.pack(p.OK, {"done": self.known(header["ids"])})
            if command == p.SEARCH:
                return p.pack(p.OK, {"search": self.search_view(header["id"], header.get("tenant"))})
            if command == p.VIDEOGET:
                return self.video(header)
            if command == p.KEYGET:
                row = read_key(self.s.auth_db_path, header["id"])
                if row is not None:
                    row = {**row, "salt": bytes(row["salt"]).hex(), "hash": bytes(row["hash"]).hex()}
                return p.pack(p.OK, {"key": row})
            raise ProtocolError(f"not a read request: {escape(command, 20)}")
        except NotFound as exc:
            return p.pack(p.ERR, {"code": "NOT_FOUND", "message": str(exc)})
        except StoreUnavailable as exc:
            return p.pack(p.ERR, {"code": "STORE_UNAVAILABLE", "message": str(exc)})
        except Exception as exc:  # a reader never dies of one request
            logger.exception("reader: {} failed", escape(command, 20))
            return p.pack(p.ERR, {"code": "INTERNAL", "message": type(exc).__name__})

    def row(self, job_id: str, tenant: str | None) -> dict:
        """The job's row, NotFound for none or another tenant's (the same answer for both)."""
        row = read_job(self.s.db_path, job_id)
        if row is None or (tenant is not None and row["tenant"] != tenant):
            raise NotFound(f"no model with id {job_id}")
        return dict(row)

    def get_job(self, job_id: str, tenant: str | None) -> dict:
        row = self.row(job_id, tenant)
        body: dict = {"job": row}
        if row["state"] == JobState.DONE:
            try:
                sha, size = self.sums.of(job_id, self.s.dumps_dir / job_id / BUNDLE_FILE)
                body["bundle"] = {"sha256": sha, "size": size}
            except FileNotFoundError:
                pass  # the front answers 410 GONE
        return body

    def bundle(self, header: dict) -> list[bytes]:
        job_id, offset = header["id"], header["offset"]
        row = self.row(job_id, header.get("tenant"))
        if row["state"] != JobState.DONE:
            raise NotFound(f"model {job_id} has no bundle (state: {row['state']})")
        path = self.s.dumps_dir / job_id / BUNDLE_FILE
        try:
            sha, size = self.sums.of(job_id, path)
            if header.get("sha256") and header["sha256"] != sha:
                return p.pack(p.ERR, {"code": "CONFLICT", "message": "the bundle is not the one asked for"})
            if offset > size:
                raise ProtocolError("offset past the end of the bundle")
            fd = os.open(path, os.O_RDONLY)
            try:
                piece = os.pread(fd, p.BUNDLE_CHUNK, offset)
            finally:
                os.close(fd)
        except FileNotFoundError:
            return p.pack(p.ERR, {"code": "GONE", "message": f"the files of model {job_id} are missing"})
        except ProtocolError as exc:
            return p.pack(p.ERR, {"code": "BAD_REQUEST", "message": escape(exc)})
        return p.pack(p.OK, {"sha256": sha, "size": size, "offset": offset}, [piece])

    def video(self, header: dict) -> list[bytes]:
        """A finished video's result, or one of its thumbnails (by track id)."""
        job_id = header["id"]
        row = self.row(job_id, header.get("tenant"))
        if row.get("kind") != "video":
            raise NotFound(f"no video with id {job_id}")
        if row["state"] != JobState.DONE:
            return p.pack(p.ERR, {"code": "NOT_READY", "message": f"video {job_id} is not processed yet "
                                                                  f"(state: {row['state']})"})
        folder = self.s.dumps_dir / job_id
        try:
            if header.get("thumb") is not None:
                jpeg = (folder / THUMBS_DIR / f"{int(header['thumb'])}.jpg").read_bytes()
                return p.pack(p.OK, {"size": len(jpeg)}, [jpeg])
            return p.pack(p.OK, {"video": json.loads((folder / VIDEO_FILE).read_text())})
        except FileNotFoundError:
            raise NotFound(f"video {job_id} has no such track" if header.get("thumb") is not None
                           else f"the result of video {job_id} is missing") from None

    def search_view(self, job_id: str, tenant: str | None) -> dict | None:
        """A running search as `GET /models/<id>/search` shows it, from its last checkpoint (written atomically
        by the loop); None before its first. Read here, where the search runs: a front carries no DEAP."""
        self.row(job_id, tenant)
        try:
            state = json.loads((self.s.uploads_dir / job_id / SEARCH_CHECKPOINT).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # os.replace makes a torn read impossible: say so if it happens
            logger.warning("search checkpoint of {} unreadable: {}", job_id, escape(exc))
            return None
        evolution = Evolution.from_json(state)
        return {"fallback": evolution.fallback, "evaluations": evolution.evaluations,
                "cache_hits": evolution.cache_hits, "stop_reason": evolution.stop_reason,
                "logbook": evolution.logbook, "candidates": evolution.candidates(),
                "pareto_front": evolution.pareto_front(), "finalists": evolution.confirmation()["finalists"],
                "chosen": evolution.choose() if evolution.done else None}

    def known(self, ids: list[str]) -> list[str]:
        if not ids:
            return []
        conn = connect(self.s.db_path, readonly=True)
        try:
            with store_errors():
                marks = ",".join("?" * len(ids))
                rows = conn.execute(f"SELECT id FROM jobs WHERE state = ? AND id IN ({marks})",  # noqa: S608
                                    (JobState.DONE.value, *ids)).fetchall()
            return [r["id"] for r in rows]
        finally:
            conn.close()


def start_readers(settings: Settings, ctx: zmq.Context, sums: BundleSums, n: int) -> tuple[zmq.Socket, list[Reader]]:
    """The loop's end of the read side (a ROUTER it sends requests on and reads answers from) and its threads."""
    address = f"inproc://broker-readers-{id(sums)}"
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(address)
    readers = [Reader(settings, ctx, address, sums, i) for i in range(n)]
    for r in readers:
        r.start()
    return sock, readers
