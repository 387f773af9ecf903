"""Where a camera's frames come from: an RTSP stream (OpenCV's FFmpeg), an HTTP(S) MJPEG stream, or a
snapshot URL polled; and, for `run.py watch`, a video file.

`open_source(url, ...)` connects and returns a Source whose `read()` gives the next frame (BGR) or raises
SourceError with a reason a person can act on ("no answer within 10 s", "the camera refused the
credentials (HTTP 401)", "not a camera stream: it answered text/html"). Every wait is bounded
(FR_CAMERA_TIMEOUT_S): nothing here can hang the worker. The URL is checked against FR_CAMERA_ALLOW
before every connection; no reason or log line holds its credentials (`scrub`).
"""
from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app.shared.callbacks import AllowList
from app.shared.cameras import CameraRefused, check_camera_url, has_credentials, host_port, scrub

MAX_FRAME_BYTES = 16 * 1024 * 1024   # one JPEG of an MJPEG stream or a snapshot
MAX_HEADER_BYTES = 16 * 1024          # one part's headers in an MJPEG stream
MAX_PIXELS = 8192 * 8192
# FFmpeg prints what it meets to stderr; quiet, it cannot print a URL there
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


class SourceError(Exception):
    """A camera that cannot be read now; `reason` says why, without the URL's credentials."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Source:
    """A connected camera: `read()` -> the next frame (BGR uint8), or SourceError. `close()` frees it."""
    live = True      # a camera (frames as they come) rather than a file (every frame, in order)
    fps: float = 0.0  # a file's frame rate (0: unknown)

    def read(self) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


def decode_jpeg(data: bytes) -> np.ndarray:
    if not data:
        raise SourceError("an empty frame")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise SourceError("not a camera stream: a frame could not be decoded as an image")
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise SourceError(f"frames of {image.shape[1]}x{image.shape[0]} pixels are larger than this service reads")
    return image


# --- HTTP: MJPEG streams and snapshots --------------------------------------------------------------
class HttpSource(Source):
    """An MJPEG stream (multipart/x-mixed-replace) read part by part, or a snapshot URL fetched again at
    each read (image/*)."""

    def __init__(self, url: str, timeout: float):
        import requests  # only where a camera is watched
        self.url, self.timeout = url, timeout
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy of the host's environment sees the camera's credentials
        self.response: Any = None
        self.buffer = b""
        self.boundary: bytes | None = None
        self.snapshot = False
        self.first: np.ndarray | None = None
        self.connect()

    def get(self):
        import requests
        from requests.auth import HTTPDigestAuth
        try:
            r = self.session.get(self.url, stream=True, timeout=(self.timeout, self.timeout), allow_redirects=False)
            if r.status_code == 401 and has_credentials(self.url) and "digest" in \
                    r.headers.get("www-authenticate", "").lower():
                r.close()
                user, password = _userinfo(self.url)
                r = self.session.get(self.url, stream=True, timeout=(self.timeout, self.timeout),
                                     allow_redirects=False, auth=HTTPDigestAuth(user, password))
        except requests.exceptions.ConnectTimeout:
            raise SourceError(f"no answer within {self.timeout:g} s") from None
        except requests.exceptions.ReadTimeout:
            raise SourceError(f"connected, but no answer within {self.timeout:g} s") from None
        except requests.exceptions.SSLError:
            raise SourceError("the camera's TLS certificate was not accepted") from None
        except requests.exceptions.ConnectionError as exc:
            raise SourceError(f"could not connect ({_cause(exc, self.url)})") from None
        except requests.exceptions.RequestException as exc:
            raise SourceError(f"the request failed ({_cause(exc, self.url)})") from None
        if r.status_code in (401, 403):
            r.close()
            raise SourceError(f"the camera refused the credentials (HTTP {r.status_code})" if has_credentials(self.url)
                              else f"the camera needs credentials (HTTP {r.status_code}): put them in its URL")
        if 300 <= r.status_code < 400:
            r.close()
            raise SourceError(f"the camera answered a redirect (HTTP {r.status_code}), which is not followed: give "
                              "the URL it points to")
        if r.status_code != 200:
            r.close()
            raise SourceError(f"the camera answered HTTP {r.status_code}")
        return r

    def connect(self) -> None:
        r = self.get()
        kind = r.headers.get("content-type", "").lower()
        if kind.startswith("multipart/"):
            m = re.search(r'boundary="?([^";]+)"?', r.headers.get("content-type", ""), re.I)  # its case kept
            if m is None:
                r.close()
                raise SourceError("not a camera stream: a multipart answer without a boundary")
            self.boundary = m.group(1).strip().removeprefix("--").encode("latin-1")
            self.response = r
        elif kind.startswith("image/"):
            self.snapshot = True
            self.first = decode_jpeg(self.body(r))
        else:
            r.close()
            shown = re.sub(r"[^\w/.+-]", "", kind.split(";")[0])[:60] or "nothing it named"
            raise SourceError(f"not a camera stream: it answered {shown}, not an MJPEG stream or an image")

    def body(self, r) -> bytes:
        """A snapshot's bytes, at most MAX_FRAME_BYTES, within the deadline."""
        deadline = time.monotonic() + self.timeout
        data = bytearray()
        try:
            while True:
                chunk = r.raw.read1(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > MAX_FRAME_BYTES:
                    raise SourceError(f"a snapshot over {MAX_FRAME_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise SourceError(f"a snapshot took longer than {self.timeout:g} s to arrive")
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"the snapshot was cut ({_cause(exc, self.url)})") from None
        finally:
            r.close()
        return bytes(data)

    def more(self) -> None:
        try:
            chunk = self.response.raw.read1(65536)
        except Exception as exc:
            raise SourceError(f"the stream was cut ({_cause(exc, self.url)})") from None
        if not chunk:
            raise SourceError("the stream ended")
        self.buffer += chunk

    def read(self) -> np.ndarray:
        if self.snapshot:
            if self.first is not None:
                image, self.first = self.first, None
                return image
            r = self.get()
            if not r.headers.get("content-type", "").lower().startswith("image/"):
                r.close()
                raise SourceError("the snapshot URL stopped answering images")
            return decode_jpeg(self.body(r))
        return decode_jpeg(self.next_part())

    def next_part(self) -> bytes:
        """One part of the multipart stream: its headers skipped, its body by Content-Length or up to the
        next boundary."""
        assert self.boundary is not None
        mark = b"--" + self.boundary
        deadline = time.monotonic() + self.timeout
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > MAX_HEADER_BYTES + MAX_FRAME_BYTES:
                raise SourceError("not a camera stream: no part headers in what it sent")
            if time.monotonic() > deadline:
                raise SourceError(f"no frame within {self.timeout:g} s")
            self.more()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        if len(head) > MAX_HEADER_BYTES:
            # bytes before the first boundary (a preamble) or garbage: keep only from the last boundary
            head = head[head.rfind(mark):] if mark in head else head
            if len(head) > MAX_HEADER_BYTES:
                raise SourceError("not a camera stream: a part's headers are too long")
        m = re.search(rb"content-length:\s*(\d{1,9})", head, re.I)
        if m:
            length = int(m.group(1))
            if length > MAX_FRAME_BYTES:
                raise SourceError(f"a frame of {length} bytes, over {MAX_FRAME_BYTES}")
            while len(self.buffer) < length:
                if time.monotonic() > deadline:
                    raise SourceError(f"no whole frame within {self.timeout:g} s")
                self.more()
            frame, self.buffer = self.buffer[:length], self.buffer[length:]
            return frame
        while mark not in self.buffer:
            if len(self.buffer) > MAX_FRAME_BYTES:
                raise SourceError(f"a frame over {MAX_FRAME_BYTES} bytes, or no boundary in the stream")
            if time.monotonic() > deadline:
                raise SourceError(f"no whole frame within {self.timeout:g} s")
            self.more()
        frame, _, rest = self.buffer.partition(mark)
        self.buffer = mark + rest
        return frame.rstrip(b"\r\n")

    def close(self) -> None:
        if self.response is not None:
            self.response.close()
        self.session.close()


def _userinfo(url: str) -> tuple[str, str]:
    from urllib.parse import unquote, urlsplit
    parts = urlsplit(url)
    return unquote(parts.username or ""), unquote(parts.password or "")


def _cause(exc: BaseException, url: str) -> str:
    """The innermost useful words of a connection error, without the URL's secrets."""
    text = str(exc)
    for pattern in (r"\[Errno -?\d+\] ([^'\")\]]+)", r"(Connection refused|Name or service not known|timed out|"
                    r"Connection reset by peer|Remote end closed connection without response)"):
        m = re.search(pattern, text)
        if m:
            return scrub(m.group(1).strip(), url)[:120]
    return type(exc).__name__


# --- RTSP --------------------------------------------------------------------------------------------
def rtsp_probe(url: str, timeout: float) -> None:
    """Ask an rtsp:// server what it serves (DESCRIBE, without credentials) so that a failed open has a reason:
    no answer, not an RTSP server, credentials needed, no such stream. Raises SourceError; a 401 is fine
    when the URL carries credentials (FFmpeg answers the challenge)."""
    scheme, host, port = host_port(url)
    if scheme != "rtsp":
        return
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    path = parts.path or "/"
    target = f"rtsp://{host}:{port}{path}" + (f"?{parts.query}" if parts.query else "")
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(f"DESCRIBE {target} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n"
                         f"User-Agent: api-facial-recognition\r\n\r\n".encode())
            answer = b""
            deadline = time.monotonic() + timeout
            while b"\r\n" not in answer and len(answer) < 4096 and time.monotonic() < deadline:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
    except TimeoutError:
        raise SourceError(f"no answer within {timeout:g} s") from None
    except OSError as exc:
        raise SourceError(f"could not connect ({scrub(exc.strerror or type(exc).__name__, url)})") from None
    status = re.match(rb"RTSP/1\.\d (\d{3})", answer)
    if status is None:
        raise SourceError("not an RTSP server: it answered something else" if answer else
                          "the server closed the connection without an answer")
    code = int(status.group(1))
    if code == 401 and not has_credentials(url):
        raise SourceError("the camera needs credentials (RTSP 401): put them in its URL")
    if code == 404:
        raise SourceError("the camera has no stream at this path (RTSP 404)")
    if code >= 400 and code != 401:
        raise SourceError(f"the camera answered RTSP {code}")


class RtspSource(Source):
    def __init__(self, url: str, timeout: float):
        ms = int(timeout * 1000)
        os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")  # no UDP ports to open
        self.cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                                          cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        if not self.cap.isOpened():
            self.cap.release()
            # FFmpeg does not say why; ask the server ourselves, after the fact (a DESCRIBE before FFmpeg's
            # upset GStreamer's shared media, and costs every good camera a round trip)
            rtsp_probe(url, timeout)
            raise SourceError("the camera refused the credentials, or its stream could not be opened"
                              if has_credentials(url) else "the stream could not be opened (not a video stream?)")

    def read(self) -> np.ndarray:
        ok, frame = self.cap.read()
        if not ok or frame is None:
            raise SourceError("the stream ended or stalled")
        return frame

    def close(self) -> None:
        self.cap.release()


class FileSource(Source):
    """A video file, every frame in order (`run.py watch`)."""
    live = False

    def __init__(self, path: str):
        self.cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
        if not self.cap.isOpened():
            raise SourceError(f"{Path(path).name}: not a video OpenCV can read")
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)

    def read(self) -> np.ndarray:
        ok, frame = self.cap.read()
        if not ok or frame is None:
            raise EOFError
        return frame

    def close(self) -> None:
        self.cap.release()


def open_source(url: str, timeout: float, allow: AllowList | None) -> Source:
    """Connect to a camera (`allow`: FR_CAMERA_ALLOW, checked first; None: no check, for a file or the
    offline `run.py watch`). Raises SourceError."""
    if allow is not None:
        try:
            check_camera_url(url, allow)
        except CameraRefused as exc:
            raise SourceError(exc.message) from None
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("rtsp", "rtsps"):
        return RtspSource(url, timeout)
    if scheme in ("http", "https"):
        return HttpSource(url, timeout)
    return FileSource(url)
