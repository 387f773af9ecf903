"""The namings of unknown faces under way (app/broker/unknown.py): a group, or a correction's faces, claimed
for the derived model that names them, until that model is built (the faces follow it) or fails (they wait
again). One naming per model at a time; every method runs on the broker's loop."""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from app.broker.job import Job
from app.wire.protocol import FrontError
from constants.states import JobState


@dataclass
class Naming:
    """A naming under way: the group named (None for a correction of single faces), the model it derives,
    the label, and the faces claimed."""
    group: str | None
    model: str
    label: str
    faces: list[str]


def _figures(quality: dict | None) -> dict | None:
    """A kept face's quality as a build's features carry it: the figures, not predict's list of problems."""
    return None if quality is None else {k: v for k, v in quality.items() if k != "problems"}


class Namings:
    """The namings under way, over the unknown-face store's connection; a listener of job events."""

    def __init__(self, db: sqlite3.Connection, group_of: Callable[[str, str], list[sqlite3.Row]]):
        self.db, self.group_of = db, group_of
        self.naming: dict[str, Naming] = {}  # model -> the naming under way (one at a time)
        self.pending: dict[str, str] = {}  # new model id -> its parent, while that naming builds

    def not_being_named(self, model: str, groups: list[str]) -> None:
        naming = self.naming.get(model)
        if naming is not None and naming.group in groups:
            raise FrontError("CONFLICT", f"group {naming.group} is being named (model {naming.model}); wait for that "
                                         "build")

    # --- naming (a derivation: app/broker/intake.py) -----------------------------------------------
    def claim(self, model: str, group: str | None, label: str, new_model: str,
              faces: list[str] | None = None) -> list[dict]:
        """A group to name (or, `faces`, kept faces to give to a person: a correction): their faces as the
        records a derivation inherits. One naming per model at a time (the second is refused, CONFLICT);
        `release` or `named` ends the claim. The faces are the ones claimed now: a face that joins the group
        meanwhile is not part of it."""
        naming = self.naming.get(model)
        if naming is not None:
            raise FrontError("CONFLICT", f"group {naming.group or '(a correction)'} of this model is being named into "
                                         f"model {naming.model}; name the next one on that model once it is built")
        if group is not None:
            rows = self.group_of(model, group)
        else:
            wanted = list(dict.fromkeys(faces or []))
            marks = ",".join("?" * len(wanted))
            rows = self.db.execute(f"SELECT * FROM faces WHERE model = ? AND named IS NULL AND id IN ({marks}) "  # noqa: S608
                                   "ORDER BY seen", (model, *wanted)).fetchall()
            missing = sorted(set(wanted) - {r["id"] for r in rows})
            if not wanted or missing:
                raise FrontError("NOT_FOUND", f"no waiting face {missing[0] if missing else ''} in model {model}")
        self.naming[model] = Naming(group, new_model, label, [r["id"] for r in rows])
        self.pending[new_model] = model
        return [{"label": label, "filename": f"unknown-{r['id']}.jpg", "sha256": None, "key": None,
                 "features": {"faces": 1, "box": json.loads(r["box"] or "null") or [0, 0, 1, 1],
                              "embedding": [float(v) for v in np.frombuffer(r["embedding"], np.float32)],
                              "quality": _figures(json.loads(r["quality"] or "null"))}} for r in rows]

    def named(self, new_model: str) -> None:
        """The naming's model is registered: its faces (those claimed) leave the waiting groups."""
        parent = self.pending.get(new_model)
        if parent is None:
            return
        naming = self.naming[parent]
        marks = ",".join("?" * len(naming.faces))
        self.db.execute(f"UPDATE faces SET named = ?, label = ? WHERE model = ? AND named IS NULL "  # noqa: S608
                        f"AND id IN ({marks})", (new_model, naming.label, parent, *naming.faces))

    def release(self, new_model: str, back: bool = True) -> None:
        """The naming did not happen (refused, or its build failed): its faces wait again (`back`)."""
        parent = self.pending.pop(new_model, None)
        if parent is None:
            return
        self.naming.pop(parent, None)
        if back:
            self.db.execute("UPDATE faces SET named = NULL, label = NULL WHERE named = ?", (new_model,))

    def on_register_failed(self, job_id: str) -> None:
        self.release(job_id)

    def on_ended(self, job: Job) -> None:
        """A naming's build ended: built, every face of its parent moves to it (the model the client uses
        from now on; the groups keep their ids); failed, the faces wait again."""
        parent = self.pending.get(job.id)
        if parent is None:
            return
        if job.state == JobState.DONE:
            self.release(job.id, back=False)
            self.db.execute("UPDATE faces SET model = ? WHERE model = ?", (job.id, parent))
            self.db.execute("UPDATE merged SET model = ? WHERE model = ?", (job.id, parent))
        else:
            self.release(job.id)

    def forget(self, model: str) -> None:
        """A model deleted: its own naming (as the new model) is released, and a naming of it (as the parent)
        dropped."""
        self.release(model)
        parent_naming = self.naming.pop(model, None)
        if parent_naming is not None:
            self.pending.pop(parent_naming.model, None)
