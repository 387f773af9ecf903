"""The temporary copies of videos a worker decodes from (FFmpeg reads a file): their name, and the sweep of
those a worker killed mid-task left behind. Light on purpose: the worker's loop calls it at start."""
from __future__ import annotations

import time

from constants import Settings

TEMP_PREFIX = ".video-"  # in the data dir's var/


def sweep_temp(settings: Settings) -> int:
    """Remove the temporary videos of workers killed mid-task (this host's, any worker's): those older than
    any task could run (twice FR_MAX_VIDEO_SECONDS, plus an hour). -> how many went."""
    cutoff = time.time() - 2 * settings.max_video_seconds - 3600
    removed = 0
    for path in settings.var_dir.glob(f"{TEMP_PREFIX}*"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except OSError:
            pass
    return removed
