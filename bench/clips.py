"""Videos with a known timeline, composed from LFW's real faces (tests and bench/video.py; nothing composed
is committed).

A clip is a cluttered background (bench/compose.clutter) across which people walk: each `Appearance` is a
person (their photos), the seconds they enter and leave, where they walk from and to, and how large their
face is. Within an appearance the face changes photo every `hold_s` seconds (a real face turns and changes
expression; a still photo sliding across would make every frame the same), and each frame gets a little
sensor noise. `write_clip` encodes it with OpenCV's VideoWriter (mp4v in .mp4, MJPG in .avi) and returns
the truth: who is visible when, and where.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bench.compose import clutter, load_rgb, paste_face

CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


@dataclass(frozen=True)
class Appearance:
    """`label` (or "unknown" for a stranger) is seen from `start` to `end` seconds, walking from (x0, y0) to
    (x1, y1) (fractions of the frame), its face `face_px` wide, through `photos` in turn."""
    label: str
    photos: tuple[Path, ...]
    start: float
    end: float
    x0: float = 0.2
    y0: float = 0.45
    x1: float = 0.8
    y1: float = 0.45
    face_px: int = 110
    hold_s: float = 0.6

    def at(self, t: float, w: int, h: int) -> tuple[float, float] | None:
        """The face's centre at `t` seconds (None when not visible)."""
        if not self.start <= t < self.end:
            return None
        a = (t - self.start) / max(self.end - self.start, 1e-6)
        return (self.x0 + a * (self.x1 - self.x0)) * w, (self.y0 + a * (self.y1 - self.y0)) * h


def render(appearances: list[Appearance], seconds: float, fps: float, size: tuple[int, int] = (640, 360),
           seed: int = 0):
    """The frames of a clip (RGB arrays), one after the other."""
    rng = np.random.default_rng(seed)
    w, h = size
    background = clutter(w, h, rng)
    crops: dict[Path, np.ndarray] = {}
    noises = [rng.normal(0, 2.0, (h, w, 3)).astype(np.int16) for _ in range(5)]  # drawn once: per frame is slow
    for k in range(int(round(seconds * fps))):
        t = k / fps
        frame = background.copy()
        for app in appearances:
            where = app.at(t, w, h)
            if where is None:
                continue
            photo = app.photos[int((t - app.start) / app.hold_s) % len(app.photos)]
            if photo not in crops:
                crops[photo] = load_rgb(photo)
            paste_face(frame, crops[photo], app.face_px, *where)
        yield np.clip(frame + noises[k % len(noises)], 0, 255).astype(np.uint8)


def write_clip(path: Path, appearances: list[Appearance], seconds: float, fps: float = 25.0,
               size: tuple[int, int] = (640, 360), seed: int = 0) -> Path:
    """Encode the clip to `path` (.mp4: mp4v, .avi/.mkv: MJPG). Raises RuntimeError if OpenCV cannot write."""
    fourcc = cv2.VideoWriter.fourcc(*CODECS[Path(path).suffix])
    writer = cv2.VideoWriter(str(path), fourcc, fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    try:
        for frame in render(appearances, seconds, fps, size, seed):
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return Path(path)


def truth(appearances: list[Appearance]) -> list[tuple[str, float, float]]:
    """(label, start, end) of each appearance, in order of start."""
    return sorted(((a.label, a.start, a.end) for a in appearances), key=lambda x: x[1])
