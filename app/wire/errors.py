"""What a call to the broker can end in besides its OK answer: the wire's own errors, with no HTTP in them.

The HTTP front maps them to statuses (app/web/errors.py); anything else that talks to the broker decides
for itself what they mean.
"""
from __future__ import annotations


class BrokerError(Exception):
    """A call to the broker that brought no OK answer; `code` says why, `message` says it for a person."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class BrokerUnavailable(BrokerError):
    """No answer: the broker did not answer in time, or this side has no keys to reach it."""

    def __init__(self, message: str):
        super().__init__("BROKER_UNAVAILABLE", message)


class BrokerUnreadable(BrokerError):
    """An answer this side cannot read (not the protocol, or not the frames the request asked for)."""

    def __init__(self, message: str):
        super().__init__("BROKER_ERROR", message)


class BrokerRefused(BrokerError):
    """The broker read the request and refused it: `code` is the broker's (NOT_FOUND, TOO_MANY_BUILDS, ...)."""
