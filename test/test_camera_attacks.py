"""A hostile client and a hostile camera against the cameras' code, on loopback and in unit: URLs that
parsers read differently or that reach the service's own network (numeric forms, IPv4-mapped IPv6,
userinfo, backslashes, DNS rebinding), frames that would blow a worker's memory (JPEG and PNG bombs, endless
parts, parts of a gigabyte), snapshot URLs that drip, and MQTT topics that two tenants or two people would
share. Each server here is the test's own, on 127.0.0.1, and stops with it."""
from __future__ import annotations

import http.server
import ipaddress
import socket
import struct
import threading
import time
import zlib

import cv2
import numpy as np
import pytest

from app.broker import mqtt as m
from app.shared.callbacks import AllowList
from app.shared.cameras import CameraRefused, check_camera_url
from app.worker import sources
from app.worker.sources import HttpSource, SourceError, decode_jpeg, open_source, pinned_url

NONE = AllowList.parse("")
JPEG = cv2.imencode(".jpg", np.full((48, 64, 3), 128, np.uint8))[1].tobytes()


# --- who a URL reaches ------------------------------------------------------------------------------
@pytest.mark.parametrize("url", [
    "http://2130706433/", "http://017700000001/", "http://0x7f000001/", "http://0x7f.1/", "http://127.1/",
    "http://0/", "http://0.0.0.0/", "http://[::]/", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/", "http://[0:0:0:0:0:ffff:a9fe:a9fe]/", "http://169.254.169.254/latest/meta-data/",
    "http://localhost/", "http://localhost./", "http://LOCALHOST/", "http://cam.example@127.0.0.1/",
    "http://cam.example:80@127.0.0.1:8080/", "rtsp://admin:pw@[fe80::1%25lo]/x", "http://[fd00::1]/",
    "http://100.64.0.1/", "http://224.0.0.1/", "http://255.255.255.255/", "http://[::7f00:1]/",
    "http://[64:ff9b::7f00:1]/", "http://[64:ff9b::a9fe:a9fe]/", "http://[2002:7f00:1::]/",
    "http://[2002:c0a8:0101::1]/", "http://[::ffff:0:7f00:1]/", "http://[fec0::1]/"])
def test_every_form_of_a_private_address_is_refused(url):
    with pytest.raises(CameraRefused) as info:
        check_camera_url(url, NONE)
    assert info.value.code in ("CAMERA_NOT_ALLOWED", "BAD_CAMERA_URL", "CAMERA_UNRESOLVABLE"), info.value.message


@pytest.mark.parametrize("url", ["http://[64:ff9b::808:808]/", "http://[2002:808:808::1]/", "http://8.8.8.8/",
                                 "http://[2606:4700::1111]/"])
def test_public_addresses_in_any_form_pass(url):
    assert check_camera_url(url, NONE)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1\\@8.8.8.8/", "http://8.8.8.8\\@127.0.0.1/", "http://127.0.0.1\\.8.8.8.8/",
    "rtsp://127.0.0.1\\@8.8.8.8/live", "http://8.8.8.8/{x}", "http://8.8.8.8/a|b", 'http://8.8.8.8/"',
    "http://127.0.0.1:80#@8.8.8.8/", "http://127.0.0.1?@8.8.8.8/", "http://u:p@127.0.0.1@8.8.8.8/",
    "http://8.8.8.8:80:80/", "http://[::ffff:8.8.8.8]@127.0.0.1/", "http://8.8.8.8%2f@127.0.0.1/"])
def test_a_url_is_checked_for_the_host_it_is_fetched_from(url):
    """Either refused, or the host the check read (urlsplit) is the host requests' urllib3 connects to."""
    from urllib.parse import urlsplit

    from urllib3.util import parse_url
    try:
        check_camera_url(url, NONE)
    except CameraRefused:
        return
    fetched = parse_url(url.replace("rtsp://", "http://", 1)).host
    assert fetched is not None and fetched.strip("[]") == urlsplit(url).hostname, (url, fetched)


class Recorder(http.server.ThreadingHTTPServer):
    daemon_threads = True


def serve(handler_body, host: str = "127.0.0.1"):
    """A loopback HTTP server answering every GET with `handler_body(handler)`; -> (server, hits)."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.headers.get("Host", ""))
            try:
                handler_body(self)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = Recorder((host, 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, hits


def snapshot(handler):
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Content-Length", str(len(JPEG)))
    handler.end_headers()
    handler.wfile.write(JPEG)


@pytest.fixture
def rebinding(monkeypatch):
    """`cam.test` resolves to 127.0.0.2 the first time (what FR_CAMERA_ALLOW lists) and to 127.0.0.1 after."""
    real = socket.getaddrinfo
    calls: list[str] = []

    def fake(host, port, *args, **kwargs):
        if host == "cam.test":
            calls.append(host)
            return real("127.0.0.2" if len(calls) == 1 else "127.0.0.1", port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return calls


def test_a_name_that_resolves_elsewhere_after_the_check_is_not_fetched_there(rebinding):
    server, hits = serve(snapshot)
    try:
        with pytest.raises(SourceError, match="could not connect"):
            open_source(f"http://cam.test:{server.server_port}/snap.jpg", 2.0, AllowList.parse("127.0.0.2"))
        assert hits == [] and rebinding == ["cam.test"]
    finally:
        server.shutdown()


def test_a_pinned_camera_still_speaks_to_its_name(monkeypatch):
    """Pinned to the checked address, the request still says Host: the camera's name (and TLS would check it)."""
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: real("127.0.0.1" if host == "cam.test" else
                                                                          host, *a, **k))
    server, hits = serve(snapshot)
    try:
        source = open_source(f"http://cam.test:{server.server_port}/snap.jpg", 2.0, AllowList.parse("127.0.0.1"))
        assert source.read().shape == (48, 64, 3) and source.read().shape == (48, 64, 3)
        source.close()
        assert hits == [f"cam.test:{server.server_port}"] * 2
    finally:
        server.shutdown()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_camera_that_redirects_elsewhere_is_not_followed(status):
    """A public camera answering 'go to http://127.0.0.1:<port>/' (the metadata service, the admin page):
    the worker says so and goes nowhere."""
    inner, inner_hits = serve(snapshot)

    def redirect(handler):
        handler.send_response(status)
        handler.send_header("Location", f"http://127.0.0.1:{inner.server_port}/latest/meta-data/")
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    outer, outer_hits = serve(redirect)
    try:
        with pytest.raises(SourceError, match="redirect"):
            open_source(f"http://127.0.0.1:{outer.server_port}/cam", 2.0, AllowList.parse("127.0.0.1/32"))
        assert len(outer_hits) == 1 and inner_hits == []
    finally:
        outer.shutdown()
        inner.shutdown()


def test_an_rtsp_url_is_pinned_to_the_checked_address_with_its_credentials():
    url = "rtsp://admin:p%40ss@cam.test:8554/live/ch1?subtype=0"
    assert pinned_url(url, ipaddress.ip_address("10.0.0.5")) == "rtsp://admin:p%40ss@10.0.0.5:8554/live/ch1?subtype=0"
    assert pinned_url("rtsp://cam.test/x", ipaddress.ip_address("fd00::5")) == "rtsp://[fd00::5]/x"


# --- what a hostile camera sends ----------------------------------------------------------------------
def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(JPEG)
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("bomb", [jpeg_claiming(30000, 30000), jpeg_claiming(9000, 9000), png_claiming(60000, 60000),
                                  png_claiming(65535, 1200)],
                         ids=["jpeg-30000x30000", "jpeg-9000x9000", "png-60000x60000", "png-65535x1200"])
def test_a_frame_that_claims_billions_of_pixels_is_refused_before_it_is_decoded(bomb, monkeypatch):
    """~600 bytes claiming 30000x30000 pixels made OpenCV allocate 2.7 GB in the worker before it gave up."""
    def never(*args):
        raise AssertionError("decoded")
    monkeypatch.setattr(sources.cv2, "imdecode", never)
    with pytest.raises(SourceError, match="larger than this service reads"):
        decode_jpeg(bomb)


@pytest.mark.parametrize("garbage", [b"\0" * 100, b"<html>hello</html>", JPEG[:30], b"GIF89a" + b"\0" * 50,
                                     b"BM" + b"\xff" * 60], ids=["zeros", "html", "cut-jpeg", "gif", "bmp"])
def test_a_frame_that_is_not_a_jpeg_or_png_is_a_reason_not_a_crash(garbage):
    with pytest.raises(SourceError, match="not a camera stream"):
        decode_jpeg(garbage)


def test_a_good_png_frame_is_read():
    assert decode_jpeg(cv2.imencode(".png", np.zeros((20, 30, 3), np.uint8))[1].tobytes()).shape == (20, 30, 3)


def stream(parts):
    """A handler sending an MJPEG stream's headers, then what `parts(wfile)` writes."""
    def body(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        handler.end_headers()
        parts(handler.wfile)
    return body


def endless_part(out):
    out.write(b"--frame\r\nContent-Type: image/jpeg\r\n\r\n")
    chunk, end = b"\xab" * 65536, time.monotonic() + 60
    while time.monotonic() < end:
        out.write(chunk)


def gigabyte_part(out):
    out.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: 1073741824\r\n\r\n" + b"\xab" * 65536)


def endless_headers(out):
    out.write(b"--frame\r\n")
    end = time.monotonic() + 60
    while time.monotonic() < end:
        out.write(b"X-Pad: " + b"a" * 8000 + b"\r\n")


def dripping_part(out):
    out.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n")
    end = time.monotonic() + 60
    while time.monotonic() < end:
        out.write(b"\xab")
        out.flush()
        time.sleep(0.01)


def dripping_snapshot(handler):
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.end_headers()
    end = time.monotonic() + 60
    while time.monotonic() < end:
        handler.wfile.write(b"\xab")
        handler.wfile.flush()
        time.sleep(0.01)


@pytest.mark.parametrize("body,reason", [
    (stream(endless_part), "over 16777216 bytes|no whole frame within"), (stream(gigabyte_part), "1073741824 bytes"),
    (stream(endless_headers), "not a camera stream|no frame within"), (stream(dripping_part), "no whole frame within"),
    (dripping_snapshot, "longer than")],
    ids=["endless-part", "gigabyte-part", "endless-headers", "dripping-part", "dripping-snapshot"])
def test_a_hostile_camera_is_a_reason_within_its_timeout_not_a_hang_nor_a_gigabyte(body, reason):
    """Every read ends (the server would go on for a minute) with a reason; what is held is bounded by
    MAX_FRAME_BYTES, not by what the camera sends. (An endless part or header block ends at its byte bound or
    at the 1 s timeout, whichever a loaded machine reaches first: both are the bound.)"""
    server, _ = serve(body)
    try:
        with pytest.raises(SourceError, match=reason):
            source = HttpSource(f"http://127.0.0.1:{server.server_port}/video", 1.0)
            try:
                while True:
                    source.read()
            finally:
                assert len(source.buffer) <= sources.MAX_HEADER_BYTES + sources.MAX_FRAME_BYTES + 65536
                source.close()
    finally:
        server.shutdown()


# --- MQTT topics -------------------------------------------------------------------------------------
class Published:
    def __init__(self):
        self.topics: list[str] = []

    def publish(self, topic, data, qos=0, retain=False):
        self.topics.append(topic)


def test_no_two_tenants_nor_two_people_share_an_mqtt_topic():
    from constants import Settings
    mq = m.Mqtt(Settings.from_env(environ={}))
    mq.client = Published()
    tenants = ["a.b", "a_b", "a-b", "ab", None]
    labels = ["Bob", "bob", "bob_", "李雷", "王芳", "a/b", "a+b", "a#b", "x\x00y", "+", "#", "/", "..", "$SYS"]
    for i, tenant in enumerate(tenants):
        row = {"tenant": tenant, "id": f"cam{i}", "name": "front door"}
        for label in labels:
            mq.event(row, {"type": "track.start", "track": 1, "label": label})
    people = [t for t in mq.client.topics if "/people/" in t]
    assert len(set(people)) == len(tenants) * len(labels)
    for topic in mq.client.topics:
        levels = topic.split("/")
        assert not any(c in topic for c in "+#\x00") and all(levels), topic
        assert len(levels) in (5, 6) and levels[0] == "facial-recognition"
    assert m.level("acme") == "acme" and m.level("a.b") == "a.b" and m.level(None) == "_"


# --- event streams ----------------------------------------------------------------------------------------
def test_event_streams_opened_and_dropped_give_their_slot_back(tmp_path, monkeypatch):
    """A reader key sending HEAD (a body never started) or dropping a stream at once must not keep a slot:
    eight HEADs took every event stream of a process for good (503 BUSY to everyone after)."""
    import uuid

    from app.web import cameras
    from app.web.factory import create_app
    from constants import Settings
    key = "attack-admin-key-" + "k" * 40
    app = create_app(Settings.from_env(environ={"FR_ADMIN_KEY": key}, data_dir=tmp_path))
    monkeypatch.setattr(cameras, "_call", lambda command, header: {"events": []})  # the camera exists
    monkeypatch.setattr(cameras, "_streams_sized", False)
    client = app.test_client()
    headers = {"X-API-Key": key, "Accept": "text/event-stream"}
    path = f"/cameras/{uuid.uuid4()}/events"
    for _ in range(20):  # more than the slots (FR_WEB_THREADS // 2: 8 by default)
        for method in ("HEAD", "GET"):  # the server closes each response, as uWSGI does when the client goes
            r = client.open(path, method=method, headers=headers, buffered=False)
            assert r.status_code == 200
            r.close()
    held = [client.get(path, headers=headers, buffered=False) for _ in range(64)]
    try:
        codes = [r.status_code for r in held]
        assert codes[0] == 200 and 503 in codes  # bounded, and a slot was free
    finally:
        for r in held:
            r.close()
    assert client.get(path, headers=headers, buffered=False).status_code == 200


def test_a_failure_nobody_foresaw_is_logged_without_the_cameras_credentials(monkeypatch):
    """An exception whose message quotes the URL (a library's ValueError) was logged whole, traceback and
    message, by logger.exception: the password reached the log."""
    from app.worker import watch as w
    from constants import Settings
    from logger import logger
    url = "http://admin:s3cret-pw@127.0.0.1:9/cam?token=t0k3n-x"

    def boom(*args, **kwargs):
        raise ValueError(f"cannot parse {url}")

    monkeypatch.setattr(w, "open_source", boom)
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG")
    watcher = w.Watch({"id": "c" * 36, "url": url, "fps": 1, "name": "x"}, None, Settings.from_env(environ={}),
                      lambda state, reason: watcher.stop() if state == "offline" else None, lambda *a: None, None)
    try:
        watcher.run()
    finally:
        logger.remove(sink)
    text = "".join(lines)
    assert "opening failed" in text and "ValueError" in text
    assert "s3cret-pw" not in text and "t0k3n-x" not in text and "admin" not in text


def test_an_event_snapshot_is_not_kept_by_any_cache(tmp_path, monkeypatch):
    """A snapshot is a face: no cache may keep it past the erasure of its person (the route says max-age=3600;
    the security hook's `no-store` for every answer but static files wins)."""
    import uuid

    from app.web import cameras
    from app.web.factory import create_app
    from constants import Settings
    key = "attack-admin-key-" + "k" * 40
    app = create_app(Settings.from_env(environ={"FR_ADMIN_KEY": key}, data_dir=tmp_path))
    monkeypatch.setattr(cameras.client, "exchange", lambda *args: ({}, [JPEG]))  # the broker's answer
    r = app.test_client().get(f"/cameras/{uuid.uuid4()}/events/1/snapshot", headers={"X-API-Key": key})
    assert r.status_code == 200 and r.data == JPEG
    assert r.headers["Cache-Control"] == "no-store"
