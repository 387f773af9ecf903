"""The one exception type of the preprocessor: a machine-readable code plus a message."""
from __future__ import annotations


class InputError(ValueError):
    """Bad input from a client. `code` is stable (used in JSON errors), `message` is for humans."""

    def __init__(self, code: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}
