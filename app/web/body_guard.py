"""The HTTP edge's defence against slow clients: a request body must keep a minimum pace.

uWSGI hands a request to a worker thread once its headers are in; the thread
then reads the body itself (`post-buffering = 0` in app.ini: no spooling before
the app has looked at Content-Length, and clear of uWSGI 2.0's harakiri bug
with threads, README "Operations"). A client that sends its body at a byte a
second would hold that thread for as long as it likes; `BodyGuard` lets a body
start slowly for `grace_s`, then requires an average of `min_rate` bytes per
second, and answers 408 REQUEST_TIMEOUT otherwise, which frees the thread.

uWSGI's `wsgi.input.read(n)` returns only once it has all n bytes, so a guard
that checked the pace between reads could wait hours inside one read. The
guard asks the socket how much has arrived (FIONREAD) and never reads more than
that (at least one byte, which uWSGI waits for at most `socket-timeout`); a
`read(n)` gathers such reads until it has its n bytes, checking the pace between them.

An answer given before the body was read (413 from Content-Length, 400 at the first bad
byte) would reach most clients as a connection reset: they send their whole body before
they read, and a socket closed with unread data resets. So the guard lingers as a web
server does: after the answer is sent it reads and discards what is still coming, for at
most `LINGER_S`, then closes.
"""
from __future__ import annotations

import array
import fcntl
import select
import termios
import time
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.exceptions import RequestTimeout

try:  # under uWSGI: the fd of the connection a request arrives on
    import uwsgi
except ImportError:  # tests with Flask's client, `flask run`
    uwsgi = None


LINGER_S = 5.0
# A read hands over whole chunks, and the body's last TAIL bytes in one piece: werkzeug's multipart decoder
# appends a stray CR to the last part when the closing boundary reaches it in pieces (pallets/werkzeug#3285,
# open in 3.1.9), which reads of whatever has arrived made happen (a photo stored one byte longer). TAIL is
# more than the longest closing delimiter (a boundary has at most 70 characters).
TAIL = 256


class BodyTooSlow(RequestTimeout):
    description = "the request body arrived too slowly; send it again on a faster connection"


def _available(fd: int) -> int:
    """Bytes waiting in the socket's receive buffer."""
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buf, True)
    except OSError:
        return 0
    return buf[0]


class PacedInput:
    """A file-like request body that raises BodyTooSlow once it falls behind the pace."""

    def __init__(self, inner: Any, fd: int | None, grace_s: float, min_rate: int, length: int | None = None):
        self.inner, self.fd = inner, fd
        self.grace_s, self.min_rate = grace_s, min_rate
        self.length = length  # Content-Length, when known
        self.started = time.monotonic()
        self.received = 0

    def _check(self) -> None:
        elapsed = time.monotonic() - self.started
        if self.min_rate > 0 and elapsed > self.grace_s and self.received < self.min_rate * elapsed:
            raise BodyTooSlow()

    def _size(self, n: int) -> int:
        if self.fd is None:
            return n
        waiting = max(1, _available(self.fd))
        return waiting if n is None or n < 0 else min(n, waiting)

    def read(self, n: int = -1) -> bytes:
        self._check()
        if self.fd is None:
            data = self.inner.read(n) if n is not None else self.inner.read()
            self.received += len(data)
            return data
        if n is None or n < 0:  # read to the end, paced
            parts = []
            while chunk := self.read(1 << 16):
                parts.append(chunk)
            return b"".join(parts)
        want = n
        if self.length is not None:
            left = self.length - self.received
            if 0 < left - n <= TAIL:  # stop short: the next read takes the whole tail
                want = max(1, left - TAIL)
        parts, got = [], 0
        while got < want:  # each inner read takes what has arrived (>= 1 byte), the pace checked between
            if got:
                self._check()
            data = self.inner.read(self._size(want - got))
            if not data:
                break
            parts.append(data)
            got += len(data)
            self.received += len(data)
        return b"".join(parts)

    def readline(self, limit: int = -1) -> bytes:
        self._check()
        data = self.inner.readline(limit) if limit and limit > 0 else self.inner.readline()
        self.received += len(data)
        return data

    def __iter__(self):
        while line := self.readline():
            yield line


class Lingering:
    """The app's response; on close (after it was sent), what is left of the request body is read and
    dropped for at most LINGER_S, so the client reads the answer instead of a reset."""

    def __init__(self, result: Iterable[bytes], body: PacedInput, length: int):
        self.result, self.body, self.length = result, body, length

    def __iter__(self):
        return iter(self.result)

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.drain()

    def drain(self) -> None:
        left, fd = self.length - self.body.received, self.body.fd
        deadline = time.monotonic() + LINGER_S
        while left > 0 and fd is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                return
            try:
                data = self.body.inner.read(min(left, max(1, _available(fd)), 1 << 20))
            except OSError:
                return
            if not data:
                return
            left -= len(data)


class BodyGuard:
    """WSGI middleware: every request body is read through PacedInput, and lingered on (`Lingering`)."""

    def __init__(self, app: Callable, grace_s: float, min_rate: int):
        self.app, self.grace_s, self.min_rate = app, grace_s, min_rate

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length <= 0:
            return self.app(environ, start_response)
        fd = uwsgi.connection_fd() if uwsgi is not None else None
        body = PacedInput(environ["wsgi.input"], fd, self.grace_s, self.min_rate, length)
        environ["wsgi.input"] = body
        return Lingering(self.app(environ, start_response), body, length)
