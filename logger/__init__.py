"""loguru set-up shared by every process: stderr plus a rotating file."""
from __future__ import annotations

import sys
from pathlib import Path

from loguru import logger

__all__ = ["logger", "setup_logging"]


def setup_logging(component: str, log_dir: Path | None = None, level: str = "INFO",
                  rotation: str = "20 MB", retention: int = 5) -> None:
    """Log to stderr and, if `log_dir` is given, to a rotating `<log_dir>/<component>.log`."""
    logger.remove()
    fmt = ("{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | " + component +
           "[{process}] | {name}:{line} - {message}")
    logger.add(sys.stderr, level=level, format=fmt, backtrace=False, diagnose=False)
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        logger.add(Path(log_dir) / f"{component}.log", level=level, format=fmt,
                   rotation=rotation, retention=retention, backtrace=False, diagnose=False)
