"""Waiting on state, not on the clock: a test polls for what it needs to see, with a generous bound that
only fails it when that never comes (a loaded machine makes it slower, never red).

No product imports here, so the unit tests can use it without starting anything."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 60.0, interval: float = 0.1,
               what: str | Callable[[], str] = "") -> T:
    """Call `condition` until it returns something truthy, and return that. After `timeout` seconds
    without it: AssertionError naming `what` (a string, or a function giving one, e.g. a log's tail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"not within {timeout:.0f} s: {said or getattr(condition, '__name__', condition)}"
                                 f" (last: {value!r})")
        time.sleep(interval)


def never_within(condition: Callable[[], object], seconds: float, interval: float = 0.05) -> None:
    """For a 'must not happen' check: `condition` stays false for `seconds` (AssertionError at once when it
    turns true). A window like this proves nothing on its own; use it only after waiting on the state that
    would make the unwanted thing happen, so the window is slack, not the proof."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert not condition(), f"happened: {getattr(condition, '__name__', condition)}"
        time.sleep(interval)
