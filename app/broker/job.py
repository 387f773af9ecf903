"""A job as the broker reads it from the store: a typed record, its options parsed once."""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Protocol

from app.wire.protocol import FrontError
from constants.states import JobState


@dataclass(frozen=True)
class Job:
    """One row of the jobs table (app/broker/store.py's SCHEMA)."""
    id: str
    name: str | None
    state: JobState
    created: float
    updated: float
    options: dict[str, Any]
    n_photos: int
    n_people: int
    tenant: str | None
    stage: str | None = None
    done: int | None = None
    total: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    error_details: str | None = None  # JSON, as stored: it may name files, and so people
    attempts: int = 0
    worker: str | None = None
    detail: str | None = None         # JSON: what the current stage shows (the search's progress)
    kind: str | None = None           # None: a model's build; "video": a recorded video (options: model, fps)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        values = dict(row)
        values["state"] = JobState(values["state"])
        values["options"] = json.loads(values["options"] or "{}")
        return cls(**values)

    @property
    def final(self) -> bool:
        return self.state.final

    @property
    def is_video(self) -> bool:
        return self.kind == "video"

    @property
    def parent(self) -> str | None:
        """The model it was derived from (None: a build from photos)."""
        return self.options.get("parent")

    @property
    def n_new(self) -> int:
        """Photos the job itself uploaded (the ones to extract): all of them but those inherited from a parent."""
        return self.n_photos - int(self.options.get("inherited", 0))

    def as_row(self) -> dict[str, Any]:
        """The row as the store keeps it (options as JSON), as app/shared/jobs.py job_view reads it."""
        return {**self.__dict__, "state": self.state.value, "options": json.dumps(self.options)}


class _Rows(Protocol):
    def get(self, job_id: str) -> Job | None: ...


def built_model(store: _Rows, model: str, tenant: str | None) -> Job:
    """A built model (not a video) of `tenant` (None: any) -> its row; NOT_FOUND for none, a video or another
    tenant's (as for an id that never was), NOT_READY while it builds. What every use of a model checks first."""
    row = store.get(model)
    if row is None or row.is_video or (tenant is not None and row.tenant != tenant):
        raise FrontError("NOT_FOUND", f"no model with id {model}")
    if row.state != JobState.DONE:
        raise FrontError("NOT_READY", f"model {model} is not built (state: {row.state})")
    return row
