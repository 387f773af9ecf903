"""The broker's camera registry without the service: retention of events, what a worker may say, views."""
from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import zmq

from app.broker.cameras import Cameras
from constants import Settings


def cameras(tmp_path, **settings) -> Cameras:
    s = Settings.from_env(environ={}, data_dir=tmp_path, **settings)
    s.ensure_dirs()
    back = zmq.Context.instance().socket(zmq.ROUTER)
    return Cameras(s, back, lambda: None, lambda: {}, lambda: None, lambda: None)  # type: ignore[arg-type,return-value]


def event(**change) -> dict:
    now = time.time()
    return {"type": "start", "track": 1, "label": "Ada", "confidence": 0.9, "time": now, "first": now, "last": now,
            "frames": 2, "box": [1, 2, 30, 40], "boxes": [[1, 2, 30, 40]], **change}


def test_events_older_than_the_retention_go_with_their_snapshots(tmp_path):
    cams = cameras(tmp_path, event_retention_days=1.0)
    camera_id = str(uuid.uuid4())
    cams.store.add({"id": camera_id, "tenant": "t", "name": "door", "url": "rtsp://u:p@cam/x",
                    "model": str(uuid.uuid4()), "fps": 5.0})
    worker = SimpleNamespace(identity=b"w1", name="w1")
    cams.holder[camera_id] = b"w1"
    cams.on_event(worker, {"camera": camera_id, "event": event()}, b"\xff\xd8old")  # type: ignore[arg-type]
    cams.on_event(worker, {"camera": camera_id, "event": event(label="Bob")}, b"\xff\xd8new")  # type: ignore[arg-type]
    old, new = cams.store.events(camera_id, 0, 10)
    cams.store.db.execute("UPDATE events SET created = ? WHERE seq = ?", (time.time() - 2 * 86400, old["seq"]))
    cams.sweep()
    left = cams.store.events(camera_id, 0, 10)
    assert [e["seq"] for e in left] == [new["seq"]]
    assert not (tmp_path / "var" / "events" / camera_id / f"{old['seq']}.jpg").exists()
    assert (tmp_path / "var" / "events" / camera_id / f"{new['seq']}.jpg").read_bytes() == b"\xff\xd8new"
    cams.close()


def test_only_the_holder_of_a_camera_is_heard_and_its_url_is_never_shown(tmp_path):
    cams = cameras(tmp_path)
    camera_id = str(uuid.uuid4())
    cams.store.add({"id": camera_id, "tenant": "t", "name": "door", "url": "rtsp://viewer:pw-9x@cam/x",
                    "model": str(uuid.uuid4()), "fps": 5.0})
    cams.holder[camera_id] = b"w1"
    stranger = SimpleNamespace(identity=b"w2", name="w2")
    cams.on_event(stranger, {"camera": camera_id, "event": event()}, b"\xff\xd8")  # type: ignore[arg-type]
    cams.on_state(stranger, {"camera": camera_id, "state": "live", "reason": None})  # type: ignore[arg-type]
    assert cams.store.events(camera_id, 0, 10) == []
    shown = cams.list_cameras({"tenant": "t"})["cameras"]
    assert shown[0]["state"] == "connecting" and "pw-9x" not in str(shown) and "viewer" not in str(shown)
    assert cams.list_cameras({"tenant": "other"})["cameras"] == []
    cams.close()
