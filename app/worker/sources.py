"""Where a camera's frames come from: an RTSP stream (OpenCV's FFmpeg), an HTTP(S) MJPEG stream, or a
snapshot URL polled; and, for `run.py watch`, a video file.

`open_source(url, ...)` connects and returns a Source whose `read()` gives the next frame (BGR) or raises
SourceError with a reason a person can act on ("no answer within 10 s", "the camera refused the
credentials (HTTP 401)", "not a camera stream: it answered text/html"). Every wait is bounded
(FR_CAMERA_TIMEOUT_S): nothing here can hang the worker. The URL is checked against FR_CAMERA_ALLOW
before every connection; no reason or log line holds its credentials (`scrub`).
"""
from __future__ import annotations

import io
import os
import re
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app.shared.callbacks import Address, AllowList
from app.shared.cameras import CameraRefused, check_camera_url, has_credentials, host_port, scrub
from preprocessor.video import OPTIONS_ENV, ffmpeg_options

MAX_FRAME_BYTES = 16 * 1024 * 1024   # one JPEG of an MJPEG stream or a snapshot
MAX_HEADER_BYTES = 16 * 1024          # one part's headers in an MJPEG stream
MAX_PIXELS = 8192 * 8192
FRAME_FORMATS = ("JPEG", "PNG")  # what MJPEG streams and snapshot URLs send; their size is read before decoding
# FFmpeg prints what it meets to stderr; quiet, it cannot print a URL there
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
# a camera's FFmpeg options (the operator's, or TCP: no UDP ports to open), set at its open only: a video task
# of the same worker opens its upload with its own (preprocessor/video.ffmpeg_options takes turns)
CAMERA_OPTIONS = os.environ.get(OPTIONS_ENV) or "rtsp_transport;tcp"
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


def frame_size(data: bytes) -> tuple[int, int]:
    """(width, height) a JPEG or PNG frame says it has, from its header alone (nothing decoded); SourceError
    for anything else. A few hundred bytes can claim 60000x60000 pixels: OpenCV would allocate them (10 GB)
    before it found the data missing, so the size is checked first."""
    from PIL import Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FRAME_FORMATS)
            return im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise SourceError(f"frames of more than {MAX_PIXELS} pixels are larger than this service reads") from None
    except Exception:
        raise SourceError("not a camera stream: a frame could not be decoded as a JPEG or PNG image") from None


def decode_jpeg(data: bytes) -> np.ndarray:
    """A frame (JPEG or PNG) -> BGR pixels; SourceError for garbage or one over MAX_PIXELS (checked before
    decoding)."""
    if not data:
        raise SourceError("an empty frame")
    width, height = frame_size(data)
    if width * height > MAX_PIXELS or width <= 0 or height <= 0:
        raise SourceError(f"frames of {width}x{height} pixels are larger than this service reads")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise SourceError("not a camera stream: a frame could not be decoded as an image")
    if image.shape[0] * image.shape[1] > MAX_PIXELS:  # what was decoded is what counts
        raise SourceError(f"frames of {image.shape[1]}x{image.shape[0]} pixels are larger than this service reads")
    return image


# --- HTTP: MJPEG streams and snapshots --------------------------------------------------------------
class HttpSource(Source):
    """An MJPEG stream (multipart/x-mixed-replace) read part by part, or a snapshot URL fetched again at
    each read (image/*)."""

    def __init__(self, url: str, timeout: float, addresses: list[Address] | None = None):
        import requests  # only where a camera is watched
        self.url, self.timeout = url, timeout
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy of the host's environment sees the camera's credentials
        if addresses:
            adapter = _pinned_adapter(addresses)
            self.session.mount("http://", adapter)
            self.session.mount("https://", adapter)
        self.response: Any = None
        self.buffer = bytearray()  # grown in place: a frame of 16 MB is not copied once per 64 KB read
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
        searched = 0  # what was searched already (a hostile part must not cost a search of it all per read)
        while self.buffer.find(b"\r\n\r\n", max(0, searched - 3)) < 0:
            searched = len(self.buffer)
            if len(self.buffer) > MAX_HEADER_BYTES + MAX_FRAME_BYTES:
                raise SourceError("not a camera stream: no part headers in what it sent")
            if time.monotonic() > deadline:
                raise SourceError(f"no frame within {self.timeout:g} s")
            self.more()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        if len(head) > MAX_HEADER_BYTES:
            # bytes before the first boundary (a preamble) or garbage: keep only from the last boundary
            head = head[head.rfind(mark):] if mark in head else head
            if len(head) > MAX_HEADER_BYTES:
                raise SourceError("not a camera stream: a part's headers are too long")
        m = re.search(rb"content-length:\s*(\d+)", head, re.I)
        if m:
            # every digit read (the first 9 of "1073741824" said 107 MB), without int() of a million of them
            length = int(m.group(1)) if len(m.group(1)) <= 18 else 10**18
            if length > MAX_FRAME_BYTES:
                raise SourceError(f"a frame of {length} bytes, over {MAX_FRAME_BYTES}")
            while len(self.buffer) < length:
                if time.monotonic() > deadline:
                    raise SourceError(f"no whole frame within {self.timeout:g} s")
                self.more()
            frame, self.buffer = bytes(self.buffer[:length]), self.buffer[length:]
            return frame
        searched = 0
        while self.buffer.find(mark, max(0, searched - len(mark))) < 0:
            searched = len(self.buffer)
            if len(self.buffer) > MAX_FRAME_BYTES:
                raise SourceError(f"a frame over {MAX_FRAME_BYTES} bytes, or no boundary in the stream")
            if time.monotonic() > deadline:
                raise SourceError(f"no whole frame within {self.timeout:g} s")
            self.more()
        part, _, rest = self.buffer.partition(mark)
        self.buffer = bytearray(mark + rest)
        return bytes(part.rstrip(b"\r\n"))

    def close(self) -> None:
        if self.response is not None:
            self.response.close()
        self.session.close()


def _pinned_adapter(addresses: list[Address]):
    """A requests adapter whose connections go to the checked `addresses` only: the host name is not resolved
    again, so a name that answers a public address to the check and 127.0.0.1 to the fetch (DNS rebinding)
    reaches nothing it should not. TLS still checks the certificate against the URL's host name."""
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
    from urllib3.exceptions import NewConnectionError

    def pinned(base: type) -> type:
        class Pinned(base):
            def _new_conn(self):
                name: str = self._dns_host  # type: ignore[has-type]
                try:
                    for i, address in enumerate(addresses):
                        self._dns_host = str(address)  # where urllib3 connects; Host and SNI stay the name
                        try:
                            return super()._new_conn()
                        except NewConnectionError:
                            if i == len(addresses) - 1:
                                raise
                finally:
                    self._dns_host = name
        return Pinned

    class Http(HTTPConnectionPool):
        ConnectionCls = pinned(HTTPConnection)

    class Https(HTTPSConnectionPool):
        ConnectionCls = pinned(HTTPSConnection)

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": Http, "https": Https}

    return Adapter()


def pinned_url(url: str, address: Address) -> str:
    """An rtsp:// URL with its host replaced by the checked address, so that FFmpeg does not resolve the name
    again (DNS rebinding); its credentials, port, path and query kept. RTSP servers serve by path."""
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0] + "@" if "@" in parts.netloc else ""
    host = f"[{address}]" if address.version == 6 else str(address)
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, userinfo + host + port, parts.path, parts.query, parts.fragment))


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
def rtsp_probe(url: str, timeout: float, addresses: list[Address] | None = None) -> None:
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
        with socket.create_connection((str(addresses[0]) if addresses else host, port), timeout=timeout) as sock:
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
    def __init__(self, url: str, timeout: float, addresses: list[Address] | None = None):
        ms = int(timeout * 1000)
        # rtsp://: FFmpeg connects to the checked address (rtsps:// keeps the name, which TLS's SNI sends:
        # FFmpeg resolves it again, a window for DNS rebinding left open, docs/security.md)
        target = pinned_url(url, addresses[0]) if addresses and url.lower().startswith("rtsp:") else url
        with ffmpeg_options(CAMERA_OPTIONS):
            self.cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                                              cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        if not self.cap.isOpened():
            self.cap.release()
            # FFmpeg does not say why; ask the server ourselves, after the fact (a DESCRIBE before FFmpeg's
            # upset GStreamer's shared media, and costs every good camera a round trip)
            rtsp_probe(url, timeout, addresses)
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
    addresses: list[Address] | None = None
    if allow is not None:
        try:
            addresses = check_camera_url(url, allow)
        except CameraRefused as exc:
            raise SourceError(exc.message) from None
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("rtsp", "rtsps"):
        return RtspSource(url, timeout, addresses)
    if scheme in ("http", "https"):
        return HttpSource(url, timeout, addresses)
    return FileSource(url)
