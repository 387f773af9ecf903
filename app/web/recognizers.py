"""Loaded recognizers, kept per web process with a bound (LRU), so predictions don't reload."""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from app.shared import metrics
from modelization.recognizer import Recognizer, load_bundle


class RecognizerCache:
    """id -> Recognizer; an entry is dropped when its bundle file changes (another file, or the same name
    written anew) or disappears."""

    def __init__(self, size: int):
        self.size = max(1, size)
        self._items: OrderedDict[str, tuple[tuple, Recognizer]] = OrderedDict()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self.loads = 0  # how many times a bundle was read from disk (for tests and metrics)

    def get(self, model_id: str, path: Path, settings) -> Recognizer:
        st = path.stat()  # FileNotFoundError if deleted: the caller answers 404
        # Which file, not when it was touched: the bundle cache bumps a file's mtime on every use (its LRU
        # order), and a key with the mtime reloaded the bundle on every prediction.
        which = (str(path), st.st_ino, st.st_size)
        with self._lock:
            hit = self._items.get(model_id)
            if hit and hit[0] == which:
                self._items.move_to_end(model_id)
                metrics.model_cache("hit")
                return hit[1]
        with self._load_lock:  # one load at a time (Keras'), outside the cache's lock: loading takes a while
            with self._lock:
                hit = self._items.get(model_id)
            recognizer = hit[1] if hit and hit[0] == which else load_bundle(path, settings)
        with self._lock:
            self.loads += 1
            metrics.model_cache("load")
            self._items[model_id] = (which, recognizer)
            self._items.move_to_end(model_id)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return recognizer

    def evict(self, model_id: str) -> None:
        with self._lock:
            self._items.pop(model_id, None)

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._items
