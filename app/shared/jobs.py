"""A job as the API shows it, and a new job's id: what the HTTP front and the broker agree on."""
from __future__ import annotations

import json
import sqlite3
import uuid

from constants.states import JobState


def new_job_id() -> str:
    """A new job's id: a uuid4, which the broker's schemas require of every job id (app/wire/protocol.py)."""
    return str(uuid.uuid4())


def job_view(row: sqlite3.Row | dict) -> dict:
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
        "available": 1 if row["state"] == JobState.DONE else 0,
        "progress": {"stage": row["stage"] or row["state"], "done": row["done"] or 0, "total": row["total"] or 0},
        "search": json.loads(row["detail"]) if "detail" in row.keys() and row["detail"] else None,
        "error": error,
        "created": row["created"],
        "updated": row["updated"],
        "attempts": row["attempts"],
        "worker": row["worker"],
        "photos": row["n_photos"],
        "people": row["n_people"],
        "parent": json.loads(row["options"] or "{}").get("parent"),  # a derived model's (issue #18)
        "keep_unknown": bool(json.loads(row["options"] or "{}").get("keep_unknown")),  # issue #28
        **(_video(row) if "kind" in row.keys() and row["kind"] == "video" else {}),
    }


def _video(row: sqlite3.Row | dict) -> dict:
    """What a video job adds: its kind, the model it runs through, the sampling rate, the video's bytes."""
    options = json.loads(row["options"] or "{}")
    return {"kind": "video", "model": options.get("model"), "fps": options.get("fps"), "bytes": options.get("bytes")}
