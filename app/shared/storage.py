"""What goes wrong with what the service stores, named: a store that cannot be read, a full disk.

Used by the job store (app/broker/store.py), the API-key store (app/shared/api_keys.py) and the broker's
uploads; the HTTP front maps them to 503 STORE_UNAVAILABLE and 507 INSUFFICIENT_STORAGE (app/web/errors.py).
"""
from __future__ import annotations

import errno
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class StoreUnavailable(Exception):
    """The job store cannot be read or written (locked, missing, corrupt)."""


class StorageFull(OSError):
    """The disk is full (or over quota): nothing half-written was left behind."""


@contextmanager
def store_errors() -> Iterator[None]:
    """sqlite3's errors -> StoreUnavailable, saying why."""
    try:
        yield
    except sqlite3.Error as exc:
        if _disk_full(exc):
            raise StorageFull(errno.ENOSPC, f"the job store cannot grow: {exc}") from None
        raise StoreUnavailable(f"the job store is unavailable ({type(exc).__name__}: {exc})") from None


@contextmanager
def sqlite_full(what: str) -> Iterator[None]:
    """A SQLite store that cannot grow (SQLITE_FULL: the disk, or its page limit) -> StorageFull; other errors
    as they are. Unlike `disk_errors`, nothing is removed: the store keeps what it had (its transaction
    rolled back by its writer)."""
    try:
        yield
    except sqlite3.Error as exc:
        if _disk_full(exc):
            raise StorageFull(errno.ENOSPC, f"{what} cannot grow: the data disk is full") from None
        raise


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "disk is full" in str(exc) or "database or disk is full" in str(exc)


@contextmanager
def disk_errors(*cleanup: Path) -> Iterator[None]:
    """A full disk -> StorageFull, after removing `cleanup` (what the block was writing)."""
    try:
        yield
    except OSError as exc:
        if not _disk_full(exc):
            raise
        for path in cleanup:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise StorageFull(exc.errno, "no space left on the data disk") from None
