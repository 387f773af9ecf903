"""loguru set-up shared by every process: stderr plus a rotating file."""
from __future__ import annotations

import sys
from pathlib import Path

from loguru import logger

__all__ = ["logger", "setup_logging"]


def setup_logging(component: str, log_dir: Path | None = None, level: str = "INFO",
                  rotation: str = "20 MB", retention: int = 5, slot: int | None = None) -> None:
    """Log to stderr and, if `log_dir` is given, to a rotating `<log_dir>/<component>.log`.

    `slot` tells apart processes of the same component (`worker-1.log`, `web-2.log`):
    each file has one writer, since loguru's rotation renames the file it writes to
    and two processes rotating one file would each rename the other's.
    """
    logger.remove()
    fmt = ("{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | " + component +
           "[{process}] | {name}:{line} - {message}")
    logger.add(sys.stderr, level=level, format=fmt, backtrace=False, diagnose=False)
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        name = component if slot is None else f"{component}-{slot}"
        logger.add(Path(log_dir) / f"{name}.log", level=level, format=fmt,
                   rotation=rotation, retention=retention, backtrace=False, diagnose=False)
