"""A recorded video through a model: sampled frames -> faces -> tracks, each named from its frames together.

Works offline as the service runs it on a worker:

    rec = load_bundle("model.zip")
    result, thumbnails = analyse_video("clip.mp4", rec, fps=5)
    result["tracks"]  # [{id, label, known, confidence, first, last, frames, best: {t, frame, box}, ...}]

`faces_in_video` is the lower step (each sampled frame's faces as FaceSeen), for callers that follow the
faces themselves (bench/video.py compares track naming with per-frame naming on it).
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator

import cv2
import numpy as np

from constants import Settings
from features.tracking import UNKNOWN, FaceSeen, Track, Tracker
from modelization.recognizer import Recognizer
from preprocessor.video import Frame, Sampling, probe, sample

THUMB_SIDE = 192     # a thumbnail's longer side, in pixels
THUMB_QUALITY = 85
Progress = Callable[[int, int], None]  # (frames sampled, frames to sample)


def face_quality(quality: dict | None) -> float:
    """How good a view of a face is, for a track's best frame: its width in pixels, discounted when blurred
    (sharpness under 50, the variance of the chip's Laplacian) or turned (|yaw|, in eye distances)."""
    if not quality:
        return 0.0
    sharp = min(1.0, float(quality.get("sharpness") or 0.0) / 50.0)
    yaw = quality.get("yaw")
    turn = 1.0 - min(1.0, abs(float(yaw))) if yaw is not None else 0.5
    return float(quality.get("face_px") or 0) * (0.5 + 0.5 * sharp) * (0.25 + 0.75 * turn)


def judge_with(recognizer: Recognizer) -> Callable[[np.ndarray], tuple[str | None, float]]:
    """The model as a tracker's judge: one embedding -> (label or None, confidence)."""
    def judge(embedding: np.ndarray) -> tuple[str | None, float]:
        label, confidence, *_ = recognizer.identify(np.asarray(embedding, np.float32)[None, :])[0]
        return label, confidence
    return judge


def faces_in_video(path: str, recognizer: Recognizer, fps: float, settings: Settings | None = None,
                   sampling: Sampling | None = None) -> Iterator[tuple[Frame, list[FaceSeen]]]:
    """Each sampled frame and its faces (largest first, up to FR_MAX_FACES_PER_PREDICT), each named on its own
    (label, confidence, or `reason` when it must not be named), its box in the video's pixels. Raises
    preprocessor.video.VideoError."""
    s = settings or recognizer.settings
    for frame in sample(path, fps, s.video_max_side, s.max_video_seconds, sampling):
        faces, _, embeddings = recognizer.faces_and_embeddings(frame.rgb, max_faces=s.max_faces_per_predict)
        seen = []
        for f, e in zip(faces, embeddings):
            box = tuple(int(round(v / frame.scale)) for v in (f.box or [0, 0, 0, 0]))
            seen.append(FaceSeen(t=frame.t, box=box, embedding=np.asarray(e, np.float32),  # type: ignore[arg-type]
                                 quality=face_quality(f.quality), reason=f.reason,
                                 label=f.label if f.label is not None else UNKNOWN,
                                 confidence=f.confidence, frame=frame.index))
        yield frame, seen


def thumbnail(frame_bgr: np.ndarray, box: tuple[int, int, int, int]) -> bytes:
    """A JPEG of the face at `box` with a margin of half its size around it, its longer side THUMB_SIDE."""
    h, w = frame_bgr.shape[:2]
    left, top, right, bottom = box
    m = max(right - left, bottom - top) // 2
    x0, y0, x1, y1 = max(0, left - m), max(0, top - m), min(w, right + m), min(h, bottom + m)
    crop = frame_bgr[y0:y1, x0:x1] if x1 > x0 and y1 > y0 else frame_bgr
    scale = THUMB_SIDE / max(crop.shape[:2])
    if scale < 1:
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY])
    if not ok:
        raise ValueError("a thumbnail could not be encoded")
    return jpeg.tobytes()


def track_view(track: Track) -> dict:
    """A track as the API shows it: `Track.as_dict` and how its frames were named one by one (`per_frame`:
    label -> frames, of the faces that could be named; `unjudged`: those too small or blurred to be)."""
    votes = Counter(track.per_frame)
    return {**track.as_dict(), "per_frame": dict(votes.most_common()), "unjudged": track.unjudged}


def analyse_video(path: str, recognizer: Recognizer, fps: float = 5.0, settings: Settings | None = None,
                  progress: Progress | None = None, naming: str = "mean") -> tuple[dict, list[bytes]]:
    """A video's tracks -> (result, thumbnails: one JPEG per track, in the order of result["tracks"]).

    result: {video: header, sampling: {fps, frames, decoded}, truncated, tracks: [track_view...]}. Raises
    preprocessor.video.VideoError (NOT_A_VIDEO, VIDEO_TOO_LONG)."""
    s = settings or recognizer.settings
    info = probe(path, s.max_video_seconds)
    state = Sampling(info)
    total = max(1, math.ceil(info.seconds * fps - 1e-6)) if info.seconds else 0  # samples at 0, 1/fps, ... < end
    tracker = Tracker(judge=judge_with(recognizer), naming=naming, max_gap_s=max(2.0, 3.0 / fps))
    thumbs: dict[int, tuple[FaceSeen, bytes]] = {}  # id(track) -> (the face its thumbnail shows, JPEG)
    for frame, faces in faces_in_video(path, recognizer, fps, s, state):
        tracker.update(frame.t, faces)
        for track in tracker.open_tracks():  # a better view of a face than its thumbnail's: a new thumbnail
            best = track.best
            if best.frame == frame.index and (id(track) not in thumbs or thumbs[id(track)][0] is not best):
                thumbs[id(track)] = (best, thumbnail(frame.full_bgr, best.box))
        if progress:
            progress(state.sampled, max(total, state.sampled))
    tracker.close()
    tracks = tracker.tracks()
    result = {"video": info.as_dict(), "sampling": {"fps": fps, "frames": state.sampled, "decoded": state.decoded,
                                                   "seconds": round(state.last_t, 3)},
              "truncated": state.truncated, "naming": naming, "tracks": [track_view(tr) for tr in tracks]}
    return result, [thumbs[id(tr)][1] for tr in tracks]
