"""Warm-up of a process that embeds faces (workers, web processes), logged; run in a background thread."""
from __future__ import annotations

import time

from constants import Settings
from logger import logger


def warm_up(settings: Settings, who: str) -> None:
    """Load dlib's models and the embedder now (modelization.recognizer.warm_up); never raises:
    a task or request that needs them would meet the same error and report it."""
    from modelization.recognizer import warm_up as load
    t0 = time.monotonic()
    try:
        load(settings)
        logger.info("{} warmed up in {:.1f} s (dlib models, {} embedder)", who, time.monotonic() - t0,
                    settings.embedder)
    except Exception:
        logger.exception("warm-up failed")
