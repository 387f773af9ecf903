"""What happens to jobs, told to whoever listens: callbacks, metrics and the parts' memory hang here.

The loop and its parts say what happened (`events.emit("ended", job_id)`); listeners do what follows
from it, each in its own method `on_<event>` (dramatiq's middleware, for a broker). An event before
something is decided (`registering`) may be refused by a listener raising; any other listener's failure
is logged and the others still hear the event.

Events: registering(job_id, callback), register_failed(job_id), ended(job), forget(job_id),
deleted(job_id), moved(old_id, new_id),
replaced(old_id, new_id, label) (an erasure rebuilt a model without a person), erased(job_ids), pages_wiped(),
task_finished(kind, outcome, seconds),
chunk_extracted(hits, misses).
"""
from __future__ import annotations

import sqlite3
from typing import Any

from app.broker import webhooks
from app.broker.job import Job
from app.shared import metrics
from app.shared.jobs import job_view
from app.shared.storage import StoreUnavailable
from app.wire.protocol import FrontError, escape
from constants import Settings
from constants.states import JobState
from logger import logger

REFUSABLE = frozenset({"registering"})


class JobEvents:
    """The listeners, in the order they were added."""

    def __init__(self) -> None:
        self.listeners: list[Any] = []

    def add(self, listener: Any) -> None:
        self.listeners.append(listener)

    def emit(self, event: str, *args: Any) -> None:
        for listener in self.listeners:
            handler = getattr(listener, f"on_{event}", None)
            if handler is None:
                continue
            if event in REFUSABLE:
                handler(*args)
                continue
            try:
                handler(*args)
            except Exception as exc:
                logger.error("{}: {} failed: {}: {}", type(listener).__name__, event, type(exc).__name__,
                             escape(exc, 300))


class Metrics:
    """Task durations and feature-cache hits, for /metrics."""

    @staticmethod
    def on_task_finished(kind: str, outcome: str, seconds: float) -> None:
        metrics.task_done(kind, outcome, seconds)

    @staticmethod
    def on_chunk_extracted(hits: int, misses: int) -> None:
        metrics.feature_cache(hits, misses)


class Callbacks:
    """A job's callback: subscribed when it is registered, queued when it ends, moved to the build that
    replaces it, forgotten with it. The queue is `var/webhooks.sqlite`; its sender thread delivers."""

    def __init__(self, settings: Settings):
        self.s = settings
        self.sender = webhooks.Sender(settings)
        self._store: webhooks.WebhookStore | None = None

    @property
    def store(self) -> webhooks.WebhookStore:
        if self._store is None:
            self._store = webhooks.WebhookStore(webhooks.db_path(self.s))
        return self._store

    def call(self, method: str, *args: Any) -> Any:
        """A call on the callback queue. A subscription that cannot be stored refuses its build (503); any
        other failure is logged and the queue reopened on the next call."""
        try:
            return getattr(self.store, method)(*args)
        except sqlite3.Error as exc:
            if self._store is not None:
                self._store.close()
            self._store = None
            if method == "subscribe" and args[1]:
                raise FrontError("CALLBACK_UNAVAILABLE", f"the callback could not be recorded ({exc})") from None
            logger.error("webhooks: {} failed: {}", method, escape(exc))
            return None

    def on_registering(self, job_id: str, callback: dict | None) -> None:
        self.call("subscribe", job_id, callback)

    def on_register_failed(self, job_id: str) -> None:
        self.call("forget", job_id)

    def on_deleted(self, job_id: str) -> None:
        self.call("forget", job_id)

    def on_moved(self, old: str, new: str) -> None:
        self.call("move", old, new)

    def on_erased(self, job_ids: list[str]) -> None:
        """A person erased from these jobs (of the caller's tenant): their messages go, by job, never by
        matching the person's name in other messages (of any tenant)."""
        self.call("forget_jobs", job_ids)

    def on_pages_wiped(self) -> None:
        self.call("checkpoint")

    def on_ended(self, job: Job) -> None:
        """Its callback (if it has one) queued for the sender. A callback that cannot be queued is logged; the
        job's end stands."""
        try:
            view = job_view(job.as_row())
            data = {k: view[k] for k in ("id", "name", "state", "available", "created", "updated", "photos", "people")}
            data["parent"] = job.parent
            # the code and message only: details may list files, and so people's names
            data["error"] = {k: view["error"][k] for k in ("code", "message")} if view["error"] else None
            event = "model.done" if job.state == JobState.DONE else "model.failed"
            if job.is_video:  # the video's tracks are not sent: the receiver GETs /videos/<id> (its key decides)
                data.update(kind="video", model=job.options.get("model"), url=f"/videos/{job.id}")
                event = "video.done" if job.state == JobState.DONE else "video.failed"
            if self.call("enqueue", job.id, event, data, job.tenant):
                self.sender.wake()
        except (StoreUnavailable, ValueError, KeyError) as exc:
            logger.error("job {}: its callback could not be queued: {}", job.id, escape(exc))

    def start(self) -> None:
        self.sender.start()

    def health(self) -> dict:
        """The sender's: {"ok": True}, or {"ok": False, "message": why} (GET /is_alive says it)."""
        return self.sender.health()

    def close(self) -> None:
        self.sender.stop()
        if self._store is not None:
            self._store.close()
