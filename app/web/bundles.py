"""A front's cache of model bundles fetched from the broker (fronts share no disk with it).

A bundle is fetched once per front host, in pieces (`protocol.BUNDLE_CHUNK`), into a temporary file that
is renamed into place only when its size and sha256 are the ones the broker announced: a file in the cache
is always a whole, checked bundle. Files are named `<model id>.<sha256>.zip`, so a model's bundle is found
without asking for more than its row, and a bundle that changed is a new file. The folder is bounded
(FR_FRONT_CACHE_MAX_BYTES, least recently used out first); a deleted model's file goes at once on the
front that deleted it and, on other fronts, at their next sweep (`sweep`, once a minute), since the data
is biometric and must not outlive its model anywhere.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from pathlib import Path

from app.web import broker_client as client
from app.web.errors import ApiError
from logger import logger

NAME = re.compile(r"([0-9a-f-]{36})\.([0-9a-f]{64})\.zip")
SWEEP_S = 60.0


class BundleCache:
    def __init__(self, folder: Path, max_bytes: int, endpoint: str, keys_dir: Path, timeout_s: float):
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.endpoint, self.keys_dir, self.timeout_s = endpoint, Path(keys_dir), timeout_s
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.fetches = 0  # bundles transferred by this process (tests, metrics)
        self._swept = time.monotonic()

    def path(self, model_id: str, sha256: str, size: int, tenant: str | None) -> Path:
        """The local file of a model's bundle, fetched from the broker if this host does not have it."""
        final = self.folder / f"{model_id}.{sha256}.zip"
        if final.exists():
            os.utime(final)  # recently used
            return final
        with self._guard:
            lock = self._locks.setdefault(sha256, threading.Lock())
        with lock:  # one transfer per bundle and process (a second thread waits, then finds the file)
            if not final.exists():
                self.fetch(model_id, sha256, size, tenant, final)
        with self._guard:
            self._locks.pop(sha256, None)
        self.prune(keep=final)
        return final

    def fetch(self, model_id: str, sha256: str, size: int, tenant: str | None, final: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{model_id}.{os.getpid()}.{threading.get_ident()}.tmp"
        digest, offset = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as fh:
                while offset < size:
                    header, piece = client.bundle_chunk(self.endpoint, self.keys_dir, model_id, sha256, offset,
                                                        self.timeout_s, tenant)
                    if header.get("offset") != offset or not piece or header.get("size") != size:
                        raise ApiError(502, "BROKER_ERROR", "the broker sent a bundle piece out of order")
                    fh.write(piece)
                    digest.update(piece)
                    offset += len(piece)
            if offset != size or digest.hexdigest() != sha256:
                logger.error("bundle of model {}: {} bytes with sha256 {}, expected {} bytes with {}; discarded",
                             model_id, offset, digest.hexdigest(), size, sha256)
                raise ApiError(502, "BROKER_ERROR", "the model's bundle arrived damaged; try again")
            os.replace(tmp, final)
            self.fetches += 1
            logger.info("model {}: bundle fetched from the broker ({} bytes, sha256 checked)", model_id, size)
        finally:
            tmp.unlink(missing_ok=True)

    def files(self) -> list[Path]:
        try:
            return [f for f in self.folder.iterdir() if NAME.fullmatch(f.name)]
        except FileNotFoundError:
            return []

    def prune(self, keep: Path | None = None) -> None:
        """Least recently used bundles out until the folder is within its bound."""
        entries = []
        for f in self.files():
            try:
                st = f.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime, st.st_size, f))
        total = sum(e[1] for e in entries)
        for _, size, f in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            if f != keep:
                f.unlink(missing_ok=True)
                total -= size

    def forget(self, model_id: str) -> None:
        """Remove a model's bundles from this host (it was deleted)."""
        for f in self.files():
            if f.name.startswith(model_id + "."):
                f.unlink(missing_ok=True)

    def sweep(self) -> int:
        """Remove the bundles of models the broker no longer has (deleted through another front). -> removed."""
        by_id: dict[str, list[Path]] = {}
        for f in self.files():
            match = NAME.fullmatch(f.name)
            if match:
                by_id.setdefault(match.group(1), []).append(f)
        ids, removed = sorted(by_id), 0
        for start in range(0, len(ids), 1000):
            part = ids[start:start + 1000]
            alive = client.known(self.endpoint, self.keys_dir, part, self.timeout_s)
            for model_id in set(part) - alive:
                for f in by_id[model_id]:
                    f.unlink(missing_ok=True)
                    removed += 1
        return removed

    def sweep_forever(self, every_s: float = SWEEP_S) -> None:
        """A web process's background thread: `sweep` every `every_s` (an unreachable broker: next time)."""
        while True:
            time.sleep(every_s)
            try:
                removed = self.sweep()
                if removed:
                    logger.info("removed {} cached bundle(s) of deleted models", removed)
            except ApiError as exc:
                logger.warning("bundle cache sweep skipped: {}", exc.message)
            except Exception:
                logger.exception("bundle cache sweep failed")
