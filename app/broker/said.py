"""Warnings about peers, at most once per 10 s for the same line: a flood cannot fill the log."""
from __future__ import annotations

import time

from logger import logger


class Said:
    def __init__(self, every_s: float = 10.0):
        self.every_s = every_s
        self.last: dict[str, float] = {}

    def due(self, line: str) -> bool:
        """Whether `line` may be logged now (and remember that it was)."""
        now = time.monotonic()
        if now - self.last.get(line, 0.0) < self.every_s:
            return False
        self.last[line] = now
        if len(self.last) > 10_000:
            self.last = {k: v for k, v in self.last.items() if now - v < self.every_s}
        return True

    def warn(self, line: str) -> None:
        if self.due(line):
            logger.warning(line)
