"""Camera URLs: who may be reached (FR_CAMERA_ALLOW), how they are shown without credentials, and what the
wire accepts of the cameras' messages."""
from __future__ import annotations

import ipaddress
import uuid

import pytest

from app.shared.callbacks import AllowList
from app.shared.cameras import CameraRefused, check_camera_url, redact, scrub
from app.wire import protocol as p
from constants import Settings, SettingsError


def fixed(*addresses: str):
    return lambda host, port: [ipaddress.ip_address(a) for a in addresses]


def test_public_addresses_pass_private_ones_only_when_listed():
    none = AllowList.parse("")
    assert check_camera_url("rtsp://cam.example/stream", none, fixed("93.184.216.34"))
    for private in ("192.168.1.20", "10.0.0.5", "127.0.0.1", "169.254.1.1", "::1", "fd00::1"):
        with pytest.raises(CameraRefused) as info:
            check_camera_url("rtsp://cam.example/stream", none, fixed(private))
        assert info.value.code == "CAMERA_NOT_ALLOWED"
    home = AllowList.parse("192.168.1.0/24")
    assert check_camera_url("rtsp://192.168.1.20/stream", home)
    with pytest.raises(CameraRefused):
        check_camera_url("rtsp://192.168.2.20/stream", home)
    # a name that resolves to a public and a private address is refused for the private one
    with pytest.raises(CameraRefused):
        check_camera_url("http://cam.example/", none, fixed("93.184.216.34", "10.0.0.1"))
    assert check_camera_url("http://nvr.lan/", AllowList.parse("nvr.lan"), fixed("10.0.0.1"))


@pytest.mark.parametrize("url", ["ftp://cam/x", "file:///etc/passwd", "rtsp://", "http://a b/", "cam.example",
                                 "rtsp://cam:0/x", "http://[::1/x", "x" * 3000])
def test_what_is_not_a_camera_url(url):
    with pytest.raises(CameraRefused) as info:
        check_camera_url(url, AllowList.parse("0.0.0.0/0"), fixed("93.184.216.34"))
    assert info.value.code == "BAD_CAMERA_URL"


def test_credentials_are_never_shown():
    url = "rtsp://admin:p%40ss-w0rd@192.168.1.20:554/h264?channel=1&pwd=t0ken-x&user=bob"
    shown = redact(url)
    for secret in ("admin", "p%40ss-w0rd", "p@ss-w0rd", "t0ken-x", "bob"):
        assert secret not in shown
    assert shown.startswith("rtsp://***@192.168.1.20:554/h264?channel=1")
    message = "could not open rtsp://admin:p@ss-w0rd@192.168.1.20 (token t0ken-x)"
    assert "p@ss-w0rd" not in scrub(message, url) and "t0ken-x" not in scrub(message, url)
    assert redact("http://cam/x") == "http://cam/x"


def test_settings_check_the_camera_allow_list_and_mqtt_url():
    with pytest.raises(SettingsError, match="FR_CAMERA_ALLOW"):
        Settings.from_env(environ={"FR_CAMERA_ALLOW": "not a host!"})
    with pytest.raises(SettingsError, match="FR_MQTT_URL"):
        Settings.from_env(environ={"FR_MQTT_URL": "http://broker"})
    with pytest.raises(SettingsError, match="FR_MQTT_PREFIX"):
        Settings.from_env(environ={"FR_MQTT_PREFIX": "a/#"})


def event(**change):
    return {"type": "start", "track": 1, "label": "Ada", "confidence": 0.9, "time": 1.7e9, "first": 1.7e9,
            "last": 1.7e9, "frames": 2, "box": [1, 2, 30, 40], "boxes": [[1, 2, 30, 40]], **change}


def test_the_wire_checks_camera_messages():
    cam = str(uuid.uuid4())
    _, out, blobs = p.parse_worker(p.pack(p.CAMEVENT, {"camera": cam, "event": event()}, [b"\xff\xd8jpeg"]))
    assert out["event"]["label"] == "Ada" and blobs == [b"\xff\xd8jpeg"]
    for bad in (event(type="middle"), event(box=[1, 2, 3]), event(boxes="x"), event(time=-1.0),
                event(extra=1), event(confidence=2.0)):
        with pytest.raises(p.ProtocolError):
            p.parse_worker(p.pack(p.CAMEVENT, {"camera": cam, "event": bad}, [b"x"]))
    with pytest.raises(p.ProtocolError):  # an event without its snapshot
        p.parse_worker(p.pack(p.CAMEVENT, {"camera": cam, "event": event()}))
    with pytest.raises(p.ProtocolError):
        p.parse_worker(p.pack(p.CAMSTATE, {"camera": cam, "state": "asleep"}))
    with pytest.raises(p.ProtocolError):
        p.parse_worker(p.pack(p.HEARTBEAT, {"cameras": ["../etc"]}))
    s = Settings.from_env(environ={})
    ok = {"id": cam, "tenant": "t1", "name": "door", "url": "rtsp://x/y", "model": str(uuid.uuid4()), "fps": 5}
    assert p.parse_front(p.pack(p.CAMADD, ok), s)[1] == ok
    for bad in ({**ok, "fps": 0}, {**ok, "url": "a\nb"}, {**ok, "model": "x"}, {**ok, "more": 1}):
        with pytest.raises(p.ProtocolError):
            p.parse_front(p.pack(p.CAMADD, bad), s)
