"""Recorded videos: what a file is (by its first bytes), and its frames sampled at a rate, through OpenCV's
bundled FFmpeg.

`sniff(data)` tells a video container (mp4/mov, mkv/webm, avi) from what is not one (a photo, an audio
file, text) before anything is stored; `probe(path)` opens a video and reads its header; `sample(path, fps)`
yields the frames at `fps` (each as RGB, scaled down to `max_side`, and the scale), decoding every frame
but converting only the sampled ones. VideoError carries the code the API answers with.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np

NOT_A_VIDEO, VIDEO_TOO_LONG = "NOT_A_VIDEO", "VIDEO_TOO_LONG"
CONTAINERS = ("mp4", "mov", "mkv", "webm", "avi")
# FFmpeg's own time limits for opening and reading (they matter for streams; a file never waits on them)
_TIMEOUTS = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 15000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 15000]
# FFmpeg's demuxer for each container sniff knows: an upload is opened by that demuxer and no other, so FFmpeg
# cannot take it for a playlist (HLS, ffconcat) that names local files or URLs to read
_DEMUXERS = {"mp4": "mov", "matroska": "matroska", "avi": "avi"}
MAX_FPS = 1000.0  # no video this service reads runs faster: a frame's time is at least its index / MAX_FPS
OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_options_lock = threading.Lock()


@contextmanager
def ffmpeg_options(options: str) -> Iterator[None]:
    """FFmpeg's options ("key;value|key;value") for the VideoCapture opened inside. OpenCV reads them from the
    environment at each open, so the opens of one process (a video task, a camera's reconnection) take turns."""
    with _options_lock:
        before = os.environ.get(OPTIONS_ENV)
        os.environ[OPTIONS_ENV] = options
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(OPTIONS_ENV, None)
            else:
                os.environ[OPTIONS_ENV] = before


class VideoError(Exception):
    """A video that cannot be used: `code` (NOT_A_VIDEO, VIDEO_TOO_LONG) and a message for the client."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


_AUDIO_BRANDS = (b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B ")


def sniff(data: bytes) -> str:
    """The container of a video file from its first bytes: "mp4" (also mov, m4v, 3gp), "matroska" (mkv,
    webm) or "avi". Raises VideoError(NOT_A_VIDEO) naming what it is instead, when it can tell."""
    head = bytes(data[:64])
    if not head:
        raise VideoError(NOT_A_VIDEO, "the file is empty")
    if head[4:8] == b"ftyp":
        if head[8:12] in _AUDIO_BRANDS:
            raise VideoError(NOT_A_VIDEO, "an audio file (MPEG-4 audio), not a video")
        return "mp4"
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):  # QuickTime files without ftyp
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    what = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"GIF8": "a GIF image",
            b"ID3": "an audio file (MP3)", b"fLaC": "an audio file (FLAC)", b"OggS": "an Ogg file (audio)",
            b"PK\x03\x04": "a zip archive", b"%PDF": "a PDF document"}
    for magic, name in what.items():
        if head.startswith(magic):
            raise VideoError(NOT_A_VIDEO, f"{name}, not a video")
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        raise VideoError(NOT_A_VIDEO, "an audio file (WAV), not a video")
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        raise VideoError(NOT_A_VIDEO, "a WebP image, not a video")
    if head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        raise VideoError(NOT_A_VIDEO, "an audio file (MP3), not a video")
    raise VideoError(NOT_A_VIDEO, f"not a video this service reads ({', '.join(CONTAINERS)})")


@dataclass(frozen=True)
class VideoInfo:
    """A video's header: frame size, its frame rate, frames and seconds (as the container says)."""
    width: int
    height: int
    fps: float
    frames: int
    seconds: float

    def as_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "fps": round(self.fps, 3), "frames": self.frames,
                "seconds": round(self.seconds, 3)}


def _open(path: str) -> cv2.VideoCapture:
    """The video at `path`, opened only if sniff knows its container, by that container's demuxer, reading
    nothing but the local file (FFmpeg's protocol whitelist)."""
    with open(path, "rb") as fh:
        container = sniff(fh.read(64))
    with ffmpeg_options(f"protocol_whitelist;file|input_format;{_DEMUXERS[container]}"):
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, _TIMEOUTS)
    if not cap.isOpened():
        cap.release()
        raise VideoError(NOT_A_VIDEO, "the video cannot be decoded: it is cut short, damaged, or holds no video "
                                      "stream")
    return cap


def _info(cap: cv2.VideoCapture) -> VideoInfo:
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if not np.isfinite(fps) or not 0.1 <= fps <= MAX_FPS:
        fps = 0.0  # unknown: times come from the frames' timestamps
    frames = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
    return VideoInfo(width, height, fps, frames, frames / fps if fps else 0.0)


def probe(path: str, max_seconds: float | None = None) -> VideoInfo:
    """A video's header, checked: a video stream of a sane size, within `max_seconds` as the header says.
    Raises VideoError."""
    cap = _open(path)
    try:
        info = _info(cap)
    finally:
        cap.release()
    _check(info, max_seconds)
    return info


def _check(info: VideoInfo, max_seconds: float | None) -> None:
    if info.width <= 0 or info.height <= 0 or info.width * info.height > 80_000_000:
        raise VideoError(NOT_A_VIDEO, "the file holds no video stream of a usable size (audio only?)")
    if max_seconds is not None and info.seconds > max_seconds:
        raise VideoError(VIDEO_TOO_LONG, f"the video lasts {info.seconds:.1f} s; at most {max_seconds:g} s "
                                         "(FR_MAX_VIDEO_SECONDS)")


@dataclass
class Frame:
    """One sampled frame: `t` seconds from the start, its index in the video, its pixels (RGB, scaled down by
    `scale` <= 1 to fit max_side) and the full-size frame (BGR, as decoded) for thumbnails."""
    t: float
    index: int
    rgb: np.ndarray
    scale: float
    full_bgr: np.ndarray


@dataclass
class Sampling:
    """What `sample` found on its way, filled in as it goes: the header, frames decoded, whether the video
    ended before its header said it would (cut short)."""
    info: VideoInfo
    decoded: int = 0
    sampled: int = 0
    last_t: float = 0.0
    truncated: bool = False


def sample(path: str, fps: float, max_side: int, max_seconds: float | None = None,
           sampling: Sampling | None = None) -> Iterator[Frame]:
    """The frames of a video at `fps` per second (the first, then one each 1/fps seconds of video time).

    Every frame is decoded (a compressed video cannot skip), only the sampled ones are converted and scaled.
    Raises VideoError: not decodable, no video stream, longer than `max_seconds` by its header or, when the
    header says less than the truth, as soon as a frame passes it. A video cut short ends where its frames
    end (`sampling.truncated`); a video whose first frame cannot be read is NOT_A_VIDEO.
    """
    cap = _open(path)
    try:
        info = _info(cap)
        _check(info, max_seconds)
        state = sampling if sampling is not None else Sampling(info)
        state.info = info
        step, next_t, index = 1.0 / float(fps), 0.0, -1
        while cap.grab():
            index += 1
            t = index / info.fps if info.fps else float(cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0) / 1000.0
            # timestamps that stand still or run backwards cannot make the frames decoded unbounded
            t = max(t, index / MAX_FPS)
            state.decoded, state.last_t = index + 1, t
            if max_seconds is not None and t > max_seconds:
                raise VideoError(VIDEO_TOO_LONG, f"the video runs past {max_seconds:g} s (FR_MAX_VIDEO_SECONDS)")
            if t + 1e-6 < next_t:
                continue
            ok, bgr = cap.retrieve()
            if not ok or bgr is None:
                continue
            next_t = (int(t / step + 1e-6) + 1) * step  # the next sample time after t
            side = max(bgr.shape[:2])
            scale = min(1.0, max_side / side)
            small = bgr if scale == 1.0 else cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            state.sampled += 1
            yield Frame(t, index, cv2.cvtColor(small, cv2.COLOR_BGR2RGB), scale, bgr)
        if state.decoded == 0:
            raise VideoError(NOT_A_VIDEO, "no frame of the video can be decoded (damaged, cut short, or audio only)")
        # a header that promised more frames than could be read: the file was cut (a few frames of slack:
        # containers round their counts)
        state.truncated = bool(info.frames) and state.decoded < info.frames - max(2, int(0.02 * info.frames))
    finally:
        cap.release()
