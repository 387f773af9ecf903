"""A worker's video task: a recorded video and a model's bundle -> the video's tracks and thumbnails (JSON).

The video travels in the task message (so a worker on another host needs nothing but the socket) and is
written to a temporary file under the data dir for FFmpeg, removed when the task ends. The model's
recognizer is kept for the next video through the same model (by the bundle's sha256).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable

from app.worker.tasks import BuildError
from app.worker.temp import TEMP_PREFIX
from constants import Settings
from modelization.recognizer import Recognizer, load_bundle
from modelization.video import analyse_video
from preprocessor.video import VideoError

_loaded: dict[str, Recognizer] = {}  # bundle sha256 -> its recognizer (the last one only)
_lock = threading.Lock()


def recognizer_of(bundle: bytes, settings: Settings) -> Recognizer:
    digest = hashlib.sha256(bundle).hexdigest()
    with _lock:
        if digest not in _loaded:
            _loaded.clear()
            _loaded[digest] = load_bundle(bundle, settings)
        return _loaded[digest]


def run_video(options: dict, video: bytes, bundle: bytes, settings: Settings,
              progress: Callable[[str, str, int, int], None]) -> bytes:
    """-> the result as JSON bytes: modelization.video.analyse_video's, with `thumbnails` (base64 JPEGs, one
    per track). Raises BuildError(NOT_A_VIDEO | VIDEO_TOO_LONG) for a video that cannot be used."""
    fps = float(options.get("fps", 5.0))
    recognizer = recognizer_of(bundle, settings)
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".bin", dir=settings.var_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(video)
        result, thumbs = analyse_video(path, recognizer, fps, settings,
                                       lambda done, total: progress("processing", "frames", done, total))
    except VideoError as exc:
        raise BuildError(exc.code, exc.message) from None
    finally:
        os.unlink(path)
    result["model"] = options.get("model")
    result["thumbnails"] = [base64.b64encode(t).decode("ascii") for t in thumbs]
    return json.dumps(result, allow_nan=False).encode()
