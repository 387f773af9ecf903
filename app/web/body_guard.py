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

A pace alone lets a body sent just above `min_rate` hold its thread for as long as its size
allows (512 MiB at 16 KiB/s: 9 hours). So each body also has a total deadline: what its size
takes at `min_rate` after the grace period, at least `BODY_FLOOR_S`, and never more than the
request's own timeout (FR_REQUEST_TIMEOUT_S: a build whose body arrives later could not be
stored anyway, app/web/builds.py). Past it, 408 as well.

An answer given before the body was read (413 from Content-Length, 400 at the first bad
byte) would reach most clients as a connection reset: they send their whole body before
they read, and a socket closed with unread data resets. So the guard lingers as a web
server does: after the answer is sent it reads and discards what is still coming, for at
most `LINGER_S`, then closes. Not for a request the key guard refused (no key, a wrong
one, a refused origin or role, a rate limit, no such route; app/web/security.py marks it `CLOSE`): that
answer says `Connection: close` and the connection is closed at once, unread, so that
clients without a usable key cannot hold a thread for the linger.
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
BODY_FLOOR_S = 30.0  # the least total time a body is given, however small
CLOSE = "fr.close"   # environ key: the request was refused before its body; close, do not linger
# A read hands over whole chunks, and the body's last TAIL bytes in one piece: werkzeug's multipart decoder
# appends a stray CR to the last part when the closing boundary reaches it in pieces (pallets/werkzeug#3285,
# open in 3.1.9), which reads of whatever has arrived made happen (a photo stored one byte longer). TAIL is
# more than the longest closing delimiter (a boundary has at most 70 characters).
TAIL = 256


class BodyTooSlow(RequestTimeout):
    description = "the request body arrived too slowly; send it again on a faster connection"


def body_deadline_s(length: int, grace_s: float, min_rate: int, cap_s: float) -> float:
    """Seconds a body of `length` bytes may take in all: `grace_s` plus its size at `min_rate`, at least
    BODY_FLOOR_S, at most `cap_s` (the request's timeout)."""
    size_s = grace_s + length / min_rate if min_rate > 0 else cap_s
    return min(cap_s, max(BODY_FLOOR_S, size_s))


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

    def __init__(self, inner: Any, fd: int | None, grace_s: float, min_rate: int, length: int | None = None,
                 deadline_s: float = float("inf")):
        self.inner, self.fd = inner, fd
        self.grace_s, self.min_rate = grace_s, min_rate
        self.length = length  # Content-Length, when known
        self.deadline_s = deadline_s  # the whole body's time (body_deadline_s)
        self.started = time.monotonic()
        self.received = 0

    def _check(self) -> None:
        elapsed = time.monotonic() - self.started
        if self.min_rate > 0 and elapsed > self.grace_s and self.received < self.min_rate * elapsed:
            raise BodyTooSlow()
        if elapsed > self.deadline_s and self.received < (self.length or 0):
            raise BodyTooSlow(f"the request body did not arrive within its {self.deadline_s:.0f} s "
                              f"({self.length} bytes); send it again on a faster connection")

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
    """WSGI middleware: every request body is read through PacedInput, and lingered on (`Lingering`) unless
    the request was refused before its body (`CLOSE`): then the answer says `Connection: close` and nothing
    more of the body is read."""

    def __init__(self, app: Callable, grace_s: float, min_rate: int, timeout_s: float = float("inf")):
        self.app, self.grace_s, self.min_rate, self.timeout_s = app, grace_s, min_rate, timeout_s

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length <= 0:
            return self.app(environ, start_response)
        fd = uwsgi.connection_fd() if uwsgi is not None else None
        body = PacedInput(environ["wsgi.input"], fd, self.grace_s, self.min_rate, length,
                          body_deadline_s(length, self.grace_s, self.min_rate, self.timeout_s))
        environ["wsgi.input"] = body

        def start(status: str, headers: list, exc_info: Any = None) -> Callable:
            if environ.get(CLOSE):
                headers = [(k, v) for k, v in headers if k.lower() != "connection"] + [("Connection", "close")]
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)
        result = self.app(environ, start)
        if environ.get(CLOSE):
            return result
        return Lingering(result, body, length)
