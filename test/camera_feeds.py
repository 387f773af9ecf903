"""Real cameras for the tests and benchmarks: a timeline of real faces (../shared/faces) as frames, served as
an HTTP MJPEG stream (and a snapshot URL) by a thread here, or as RTSP by GStreamer's RTSP server (Debian's
gir1.2-gst-rtsp-server-1.0 with python3-gi, in Debian's own Python: test/rtsp_server.py), and Debian's
mosquitto as the MQTT broker."""
from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

from test.stack import ROOT, free_port

SIZE = (640, 480)


class Timeline:
    """Who is in view when: [(start s, end s, photo path)] on a grey background; frame(t) is the picture."""

    def __init__(self, segments: list[tuple[float, float, Path]], length: float):
        self.segments, self.length = segments, length
        self.photos = {p: cv2.imread(str(p)) for _, _, p in segments}
        self.t0 = time.time()
        self.served: list[tuple[float, str | None]] = []  # (wall time, who) of the frames served

    def who(self, t: float) -> Path | None:
        t = t % self.length
        return next((p for a, b, p in self.segments if a <= t < b), None)

    def frame(self, t: float) -> np.ndarray:
        canvas = np.full((SIZE[1], SIZE[0], 3), 90, np.uint8)
        photo = self.who(t)
        if photo is not None:
            img = self.photos[photo]
            h, w = img.shape[:2]
            y, x = (SIZE[1] - h) // 2, (SIZE[0] - w) // 2
            canvas[y:y + h, x:x + w] = img
        return canvas

    def jpeg(self) -> bytes:
        t = time.time()
        self.served.append((t, self.who(t - self.t0).parent.name if self.who(t - self.t0) else None))
        return cv2.imencode(".jpg", self.frame(t - self.t0), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()

    def write_clip(self, path: Path, fps: int = 10, repeat: int = 1) -> Path:
        """The timeline (`repeat` times over) as an MJPEG AVI (OpenCV's VideoWriter), for the RTSP server and
        `run.py watch`."""
        out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, SIZE)
        for i in range(int(self.length * fps * repeat)):
            out.write(self.frame(i / fps))
        out.release()
        return path


class MjpegServer:
    """`/stream` (multipart/x-mixed-replace at `fps`), `/snapshot` (one JPEG), `/auth/stream` (basic auth
    user:secret), `/garbage` (an HTML page), `/noise` (a multipart stream of random bytes). `stop()` and
    `start()` again take the camera away and bring it back on the same port."""

    def __init__(self, timeline: Timeline, fps: float = 10.0, port: int | None = None):
        self.timeline, self.fps = timeline, fps
        self.port = port or free_port()
        self.server: ThreadingHTTPServer | None = None

    def url(self, path: str = "/stream", credentials: str = "") -> str:
        return f"http://{credentials + '@' if credentials else ''}127.0.0.1:{self.port}{path}"

    def start(self) -> MjpegServer:
        feed = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.startswith("/auth/"):
                    want = "Basic " + base64.b64encode(b"viewer:s3cret-Pa55").decode()
                    if self.headers.get("Authorization") != want:
                        self.send_response(401)
                        self.send_header("WWW-Authenticate", 'Basic realm="cam"')
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.path = self.path[len("/auth"):]
                if self.path == "/snapshot":
                    body = feed.timeline.jpeg()
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if self.path == "/garbage":
                    body = b"<html><body>not a camera</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if self.path not in ("/stream", "/noise"):
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frameEdge")
                self.end_headers()
                try:
                    while feed.server is not None:
                        body = feed.timeline.jpeg() if self.path == "/stream" else np.random.bytes(5000)
                        self.wfile.write(b"--frameEdge\r\nContent-Type: image/jpeg\r\nContent-Length: " +
                                         str(len(body)).encode() + b"\r\n\r\n" + body + b"\r\n")
                        time.sleep(1.0 / feed.fps)
                except OSError:
                    pass

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()


class Silent:
    """A port that takes connections and never answers (a camera that hangs)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


SYSTEM_PYTHON = "/usr/bin/python3"


def rtsp_available() -> str | None:
    """None when Debian's GStreamer RTSP server can run here, else what is missing."""
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                            "from gi.repository import GstRtspServer"], capture_output=True, timeout=60)
    return None if probe.returncode == 0 else probe.stderr.decode()[-300:]


class RtspServer:
    """GStreamer's RTSP server (Debian's Python, test/rtsp_server.py) serving a clip at its pace at
    rtsp://127.0.0.1:<port>/cam, with `user:password` when given."""

    def __init__(self, clip: Path, port: int | None = None, credentials: str = ""):
        self.clip, self.port, self.credentials = clip, port or free_port(), credentials
        self.proc: subprocess.Popen | None = None

    def url(self, credentials: str | None = None) -> str:
        creds = self.credentials if credentials is None else credentials
        return f"rtsp://{creds + '@' if creds else ''}127.0.0.1:{self.port}/cam"

    def start(self, timeout: float = 30) -> RtspServer:
        args = [SYSTEM_PYTHON, str(ROOT / "test" / "rtsp_server.py"), str(self.clip), str(self.port)]
        if self.credentials:
            args.append(self.credentials)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    said = self.proc.stdout.read().decode()[-500:]  # type: ignore[union-attr]
                    raise RuntimeError(f"the RTSP server stopped: {said}") from None
                time.sleep(0.2)
        raise RuntimeError("the RTSP server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Mosquitto:
    """Debian's mosquitto on a free port (no persistence, anonymous, loopback only)."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "mosquitto.conf").write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                                               "persistence false\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(self.folder / "mosquitto.conf")],
                                     stdout=open(self.folder / "mosquitto.log", "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)


class Subscriber:
    """A paho client subscribed to `#`: every message seen, as (topic, payload, retained)."""

    def __init__(self, port: int):
        import paho.mqtt.client as paho
        self.messages: list[tuple[str, bytes, bool]] = []
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-subscriber")
        self.client.on_connect = lambda c, u, f, rc, props=None: c.subscribe("#", qos=1)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload, m.retain))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def topics(self) -> list[str]:
        return [t for t, _, _ in list(self.messages)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
