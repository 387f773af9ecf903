"""Watching a camera: frames in, track events out.

A worker holds each camera it is given in a `Watch` (two threads: one reads frames as fast as the camera
sends them and keeps only the latest, one takes the latest every 1/fps seconds through the face pipeline
and the tracker). Faces are found, embedded and judged by the model's Recognizer
(modelization/recognizer.py, the same code as /predict); features/tracking.py's Tracker follows them
across frames and says when a person's track starts and ends; each event carries a snapshot (the frame,
JPEG, with every face's box and name drawn). A camera that cannot be read is `offline` with the reason
and tried again after 1, 2, 4 ... s (at most FR_CAMERA_RETRY_MAX_S); it is `live` from its first frame.

`FrameJudge` is the part without threads or sockets: `run.py watch` uses it on a video file too.
"""
from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable

import cv2
import numpy as np

from app.shared.callbacks import AllowList
from app.shared.cameras import redact, scrub
from app.worker.sources import Source, SourceError, open_source
from constants import Settings
from features.tracking import UNKNOWN, FaceSeen, Track, Tracker
from logger import logger
from modelization.recognizer import Recognizer

StateFn = Callable[[str, "str | None"], None]      # (connecting | live | offline, reason)
EventFn = Callable[[dict, bytes], None]             # (event as protocol.check_event reads it, snapshot JPEG)
MIN_FRAMES = 2        # faces a track needs before its start event: a detector's one-frame mistake is nobody
JPEG_QUALITY = 85


def draw(frame: np.ndarray, faces: list[tuple[list[int], str]]) -> bytes:
    """The frame (BGR) as a JPEG with each face's box and name drawn."""
    canvas = frame.copy()
    scale = max(1, round(max(frame.shape[:2]) / 640))
    for box, label in faces:
        colour = (60, 200, 60) if label != UNKNOWN else (40, 160, 240)
        cv2.rectangle(canvas, (box[0], box[1]), (box[2], box[3]), colour, 2 * scale)
        cv2.putText(canvas, label[:40], (box[0], max(12 * scale, box[1] - 4 * scale)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5 * scale, colour, scale, cv2.LINE_AA)
    ok, data = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return data.tobytes() if ok else b""


class FrameJudge:
    """Frames (BGR, with their time in seconds) -> track events with snapshots."""

    def __init__(self, recognizer: Recognizer, settings: Settings, fps: float):
        self.r, self.s = recognizer, settings

        def judge(embedding: np.ndarray) -> tuple[str | None, float]:
            label, confidence, *_ = recognizer.identify(embedding[None, :])[0]
            return label, confidence

        self.tracker = Tracker(judge=judge, min_frames=MIN_FRAMES, max_gap_s=max(2.0, 3.0 / fps))
        self.best: dict[int, tuple[FaceSeen, bytes]] = {}  # id(track) -> its best face, and that frame's JPEG
        self.frames = 0

    def frame(self, t: float, frame: np.ndarray) -> list[tuple[dict, bytes]]:
        """One sampled frame at `t` seconds -> [(event, snapshot JPEG)] of the tracks it starts and ends."""
        self.frames += 1
        rgb = np.ascontiguousarray(frame[:, :, ::-1])
        faces, _, x = self.r.faces_and_embeddings(rgb, max_faces=self.s.max_faces_per_predict)
        seen = [FaceSeen(t, tuple(f.box), x[i], quality=float((f.quality or {}).get("face_px") or 0.0),  # type: ignore[arg-type]
                         reason=f.reason, label=f.label or UNKNOWN, confidence=f.confidence, frame=self.frames)
                for i, f in enumerate(faces) if f.box is not None]
        events = self.tracker.update(t, seen)
        self.tracker.forget_ended()  # a camera runs for days: ended tracks are reported, not kept
        shown: bytes | None = None

        def snapshot() -> bytes:
            nonlocal shown
            if shown is None:
                named = {id(f): f for f in seen}
                labels = {id(tr.best): tr.label for tr in self.tracker.open_tracks()}
                shown = draw(frame, [(list(f.box), labels.get(k, f.label)) for k, f in named.items()])
            return shown

        # keep the frame of each track's best face, for its end: of every open track, confirmed or not (a best
        # face seen before the track was confirmed was never kept, and its end showed the empty frame instead)
        for tr in self.tracker._open:
            held = self.best.get(id(tr))
            if held is None or held[0] is not tr.best:
                if tr.best.t == t:
                    self.best[id(tr)] = (tr.best, snapshot())
        out = []
        for ev in events:
            if ev.kind == "start":
                out.append((self.event("start", ev.track, t, [list(f.box) for f in seen]), snapshot()))
            else:
                held = self.best.pop(id(ev.track), None)
                out.append((self.event("end", ev.track, ev.track.last, [list(ev.track.best.box)]),
                            held[1] if held else snapshot()))
        for key in [k for k in self.best if k not in {id(tr) for tr in self.tracker._open}]:
            self.best.pop(key)  # a track dropped before it was confirmed
        return out

    def close(self) -> list[tuple[dict, bytes]]:
        """The watch stops: the tracks still open end."""
        out = []
        for ev in self.tracker.close():
            held = self.best.pop(id(ev.track), None)
            out.append((self.event("end", ev.track, ev.track.last, [list(ev.track.best.box)]),
                        held[1] if held else b""))
        self.tracker.forget_ended()
        return out

    @staticmethod
    def event(kind: str, tr: Track, t: float, boxes: list[list[int]]) -> dict:
        return {"type": kind, "track": tr.id, "label": None if tr.label == UNKNOWN else tr.label,
                "confidence": round(min(1.0, max(0.0, float(tr.confidence))), 6), "time": round(t, 3),
                "first": round(tr.first, 3), "last": round(tr.last, 3), "frames": tr.frames,
                "box": [int(v) for v in tr.best.box], "boxes": [[int(v) for v in b] for b in boxes[:64]]}


class Watch:
    """One camera held by a worker (or by `run.py watch`): connect, read, judge, report; until `stop()`."""

    def __init__(self, camera: dict, recognizer: Recognizer, settings: Settings, on_state: StateFn,
                 on_event: EventFn, allow: AllowList | None):
        self.camera, self.r, self.s = camera, recognizer, settings
        self.on_state, self.on_event, self.allow = on_state, on_event, allow
        self.url: str = camera["url"]
        self.fps = float(camera["fps"])
        self.stopping = threading.Event()
        self.frames = 0          # frames judged (tests, bench)
        self.state: tuple[str, str | None] = ("", None)

    def stop(self) -> None:
        self.stopping.set()

    def say(self, state: str, reason: str | None) -> None:
        reason = scrub(reason, self.url) if reason else None
        if (state, reason) != self.state:
            self.state = (state, reason)
            self.on_state(state, reason)

    def run(self) -> None:
        """Until stopped: connect, watch, and after a failure wait 1, 2, 4 ... s (FR_CAMERA_RETRY_MAX_S) and
        connect again. Never raises."""
        delay = 1.0
        name = redact(self.url)
        while not self.stopping.is_set():
            self.say("connecting", self.state[1] if self.state[0] == "offline" else None)
            try:
                source = open_source(self.url, self.s.camera_timeout_s, self.allow)
            except SourceError as exc:
                reason = exc.reason
            except Exception as exc:  # a failure nobody foresaw is this camera's, never the worker's
                # its traceback, with the URL's secrets out of every line (an exception's message may quote it)
                trace = "".join(traceback.format_exception(exc)).rstrip()
                logger.error("camera {}: opening failed\n{}", name, scrub(trace, self.url))
                reason = f"{type(exc).__name__}"
            else:
                before = self.frames
                try:
                    reason = self.watch(source)
                    delay = 1.0 if self.frames > before else delay  # it gave frames: back off from 1 s again
                finally:
                    source.close()
            if self.stopping.is_set():
                break
            logger.info("camera {} offline: {}; retrying in {:.0f} s", name, scrub(reason, self.url), delay)
            self.say("offline", reason)
            self.stopping.wait(delay)
            delay = min(self.s.camera_retry_max_s, delay * 2)

    def watch(self, source: Source) -> str:
        """Read and judge frames until the source fails (-> the reason) or the watch stops."""
        judge = FrameJudge(self.r, self.s, self.fps)
        latest: list = [None, 0.0, 0]  # frame, its time, its number
        failure: list[str | None] = [None]
        fresh = threading.Condition()

        def reader() -> None:
            n = 0
            try:
                while not self.stopping.is_set():
                    frame = source.read()
                    n += 1
                    with fresh:
                        latest[:] = [frame, time.time(), n]
                        fresh.notify()
            except SourceError as exc:
                failure[0] = exc.reason
            except Exception as exc:
                failure[0] = f"the stream could not be read ({type(exc).__name__})"
            with fresh:
                fresh.notify()

        thread = threading.Thread(target=reader, daemon=True, name=f"camera-{self.camera['id'][:8]}")
        thread.start()
        period, seen, last_t = 1.0 / self.fps, 0, 0.0
        try:
            while not self.stopping.is_set():
                with fresh:
                    deadline = time.monotonic() + self.s.camera_timeout_s
                    while latest[2] == seen and failure[0] is None and not self.stopping.is_set():
                        fresh.wait(timeout=0.25)  # short: a stop is seen at once
                        if latest[2] == seen and time.monotonic() > deadline:
                            failure[0] = f"no frame within {self.s.camera_timeout_s:g} s"
                    if failure[0] is not None or self.stopping.is_set():
                        break
                    frame, t, seen = latest
                if self.state[0] != "live":
                    self.say("live", None)
                t = max(t, last_t)
                last_t = t
                self.frames += 1
                for event, snapshot in judge.frame(t, frame):
                    self.on_event(event, snapshot)
                rest = period - (time.time() - t)
                if rest > 0:
                    self.stopping.wait(rest)
        finally:
            for event, snapshot in judge.close():
                if snapshot:
                    self.on_event(event, snapshot)
        thread.join(timeout=self.s.camera_timeout_s + 1)
        return failure[0] or "stopped"
