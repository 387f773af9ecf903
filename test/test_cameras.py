"""Live cameras through the real service: an MJPEG stream and a snapshot URL served here, GStreamer's RTSP
server, Debian's mosquitto; real faces from ../shared/faces on a known timeline."""
from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from pathlib import Path

import pytest
import requests

from test.camera_feeds import MjpegServer, Mosquitto, RtspServer, Silent, Subscriber, Timeline, rtsp_available
from test.conftest import pick_people
from test.stack import photo_files
from test.waits import wait_until

N_PEOPLE, N_UPLOAD = 4, 8
PASSWORD = "s3cret-Pa55"


@pytest.fixture(scope="module")
def mqtt(tmp_path_factory):
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def stack(module_stacks, mqtt):
    return module_stacks.start("data", workers=2, env={
        "FR_CAMERA_ALLOW": "127.0.0.1", "FR_WEBHOOK_ALLOW": "127.0.0.1", "FR_CAMERA_TIMEOUT_S": "3",
        "FR_CAMERA_RETRY_MAX_S": "2", "FR_MAX_CAMERAS": "6", "FR_MQTT_URL": f"mqtt://127.0.0.1:{mqtt.port}",
        "FR_MQTT_PREFIX": "frtest"})


@pytest.fixture(scope="module")
def people(faces_dir):
    return pick_people(faces_dir, N_PEOPLE, N_UPLOAD + 2, subset="lfw62")


@pytest.fixture(scope="module")
def model_id(stack, people):
    r = stack.build(photo_files({p: paths[:N_UPLOAD] for p, paths in people.items()}), name="cams")
    assert r.status_code == 202, r.text
    stack.wait_state(r.json()["id"], ("done",))
    return r.json()["id"]


@pytest.fixture(scope="module")
def timeline(people):
    """Two people the model knows, each on photos it was not built with: A from 1 s to 4 s, B from 6.5 s to
    9.5 s, nobody in between, over and over (12 s)."""
    names = sorted(people)
    a, b = people[names[0]][N_UPLOAD], people[names[1]][N_UPLOAD]
    return Timeline([(1.0, 4.0, a), (6.5, 9.5, b)], 12.0)


@pytest.fixture(scope="module")
def mjpeg(timeline):
    server = MjpegServer(timeline).start()
    yield server
    server.stop()


def add(stack, model_id, url, name="door", fps=5, **extra) -> requests.Response:
    return stack.post("/cameras", json={"name": name, "url": url, "model": model_id, "fps": fps, **extra})


def camera(stack, camera_id) -> dict:
    r = stack.get(f"/cameras/{camera_id}")
    assert r.status_code == 200, r.text
    return r.json()["camera"]


def wait_state(stack, camera_id, state, timeout=60, reason=None) -> dict:
    def reached():
        c = camera(stack, camera_id)
        return c if c["state"] == state and (reason is None or reason in (c["reason"] or "")) else None
    try:
        return wait_until(reached, timeout, interval=0.2)
    except TimeoutError:
        raise AssertionError(f"camera not {state} ({reason}) after {timeout}s: {camera(stack, camera_id)}") from None


def events(stack, camera_id, after=0) -> list[dict]:
    r = stack.get(f"/cameras/{camera_id}/events", params={"after": after})
    assert r.status_code == 200, r.text
    return r.json()["events"]


def wait_events(stack, camera_id, pred, timeout=90, after=0) -> list[dict]:
    try:
        return wait_until(lambda: (lambda ev: ev if pred(ev) else None)(events(stack, camera_id, after)), timeout,
                          interval=0.5)
    except TimeoutError:
        raise AssertionError(f"events not there after {timeout}s: {events(stack, camera_id, after)}") from None


def starts(evs: list[dict]) -> list[str]:
    return [e["label"] for e in evs if e["type"] == "track.start"]


def test_bad_camera_input_is_a_clear_400(stack, model_id):
    cases = [("rtsp://10.1.2.3/cam", "CAMERA_NOT_ALLOWED"), ("http://127.0.0.2:8080/x", "CAMERA_NOT_ALLOWED"),
             ("ftp://127.0.0.1/cam", "BAD_CAMERA_URL"), ("not a url", "BAD_CAMERA_URL"), ("", "BAD_CAMERA_URL"),
             ("http://no-such-host.invalid/x", "CAMERA_UNRESOLVABLE")]
    for url, code in cases:
        r = add(stack, model_id, url)
        assert r.status_code == 400 and r.json()["error"]["code"] == code, (url, r.text)
    r = add(stack, model_id, "http://127.0.0.1:9/x", fps=0)
    assert r.status_code == 400 and r.json()["error"]["code"] == "BAD_PARAMETER"
    r = add(stack, str(uuid.uuid4()), "http://127.0.0.1:9/x")
    assert r.status_code == 404
    assert stack.get(f"/cameras/{uuid.uuid4()}").status_code == 404
    assert stack.delete(f"/cameras/{uuid.uuid4()}").status_code == 404
    assert stack.get("/cameras/nope").status_code in (400, 404)


def test_an_mjpeg_camera_names_the_right_people_over_sse_mqtt_and_webhooks(stack, model_id, people, mjpeg, mqtt):
    names = sorted(people)
    received: list[dict] = []

    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Hook(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            received.append({"headers": dict(self.headers),
                             "body": json.loads(self.rfile.read(int(self.headers["Content-Length"])))})
            self.send_response(204)
            self.end_headers()

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    sub = Subscriber(mqtt.port)
    r = add(stack, model_id, mjpeg.url("/auth/stream", f"viewer:{PASSWORD}"), name="front door",
            callback_url=f"http://127.0.0.1:{hook.server_address[1]}/hook")
    assert r.status_code == 201, r.text
    cam = r.json()["camera"]
    assert PASSWORD not in r.text and "viewer" not in cam["url"] and cam["url"].startswith("http://***@127.0.0.1")
    assert r.json()["camera"]["callback_secret"].startswith("whsec_")
    stream = requests.get(f"{stack.url}/cameras/{cam['id']}/events", headers={**stack.headers,
                          "Accept": "text/event-stream"}, stream=True, timeout=120)
    assert stream.status_code == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
    wait_state(stack, cam["id"], "live")
    evs = wait_events(stack, cam["id"], lambda ev: {names[0], names[1]} <= set(starts(ev)) and any(
        e["type"] == "track.end" and e["label"] == names[0] for e in ev))
    # the right people, and nobody else named
    assert set(starts(evs)) <= {names[0], names[1], "unknown"}, evs
    first = next(e for e in evs if e["type"] == "track.start")
    snap = stack.get(first["snapshot"])
    assert snap.status_code == 200 and snap.headers["Content-Type"] == "image/jpeg" and snap.content[:2] == b"\xff\xd8"
    # SSE: the same events as they were stored
    seen_sse: list[dict] = []
    for line in stream.iter_lines(decode_unicode=True):
        if line.startswith("data: ") and line != "data: {}":
            seen_sse.append(json.loads(line[6:]))
        if len(seen_sse) >= len(evs):
            break
    stream.close()
    assert [e["id"] for e in seen_sse] == [e["id"] for e in evs[:len(seen_sse)]]
    # MQTT: events per camera and per person, the sensor's state, Home Assistant's discovery
    tenant = cam["tenant"] or "_"
    base = f"frtest/{tenant}/cameras/{cam['id']}"
    wait_until(lambda: f"{base}/events" in sub.topics(), 30)
    topics = set(sub.topics())
    assert {f"{base}/events", f"{base}/person", f"{base}/state", f"{base}/availability"} <= topics, topics
    assert any(t.startswith(f"frtest/{tenant}/people/") for t in topics)
    config = next(json.loads(p) for t, p, _ in sub.messages if t.startswith("homeassistant/sensor/") and p)
    assert config["state_topic"] == f"{base}/person" and config["name"] == "front door"
    named = [json.loads(p)["label"] for t, p, _ in sub.messages if t == f"{base}/events"]
    assert names[0] in named
    sub.close()
    # signed webhooks, one per event
    wait_until(lambda: len(received) >= 2, 60)
    assert received[0]["headers"]["webhook-signature"].startswith("v1,")
    assert received[0]["body"]["type"] in ("track.start", "track.end")
    hook.shutdown()
    # credentials never logged nor answered
    listing = stack.get("/cameras")
    assert PASSWORD not in listing.text and "viewer:" not in listing.text
    logs = "".join(p.read_text(errors="replace") for p in Path(stack.data_dir).rglob("*.log")) + \
        stack.log.read_text(errors="replace")
    assert PASSWORD not in logs
    assert stack.delete(f"/cameras/{cam['id']}").status_code == 200
    assert stack.get(f"/cameras/{cam['id']}/events").status_code == 404


def test_bad_cameras_say_why_and_hang_nothing(stack, model_id, mjpeg):
    silent = Silent()
    try:
        cases = [(f"http://127.0.0.1:{silent.port}/cam", "no answer"),
                 (mjpeg.url("/garbage"), "not a camera stream"),
                 (mjpeg.url("/noise"), "could not be decoded"),
                 (mjpeg.url("/auth/stream", "viewer:wrong-password"), "refused the credentials"),
                 (mjpeg.url("/auth/stream"), "needs credentials")]
        ids = []
        for url, _ in cases:
            r = add(stack, model_id, url, name="bad")
            assert r.status_code == 201, r.text
            ids.append(r.json()["camera"]["id"])
        for camera_id, (_, reason) in zip(ids, cases):
            wait_state(stack, camera_id, "offline", timeout=60, reason=reason)
        # the workers still work: a good camera goes live beside them
        r = add(stack, model_id, mjpeg.url("/snapshot"), name="snap", fps=2)
        wait_state(stack, r.json()["camera"]["id"], "live")
        ids.append(r.json()["camera"]["id"])
        # FR_MAX_CAMERAS (6 here) per tenant
        r = add(stack, model_id, mjpeg.url(), name="one too many")
        assert r.status_code == 429 and r.json()["error"]["code"] == "TOO_MANY_CAMERAS", r.text
        # another tenant sees none of them, nor this tenant's model
        other = stack.post("/keys", json={"tenant": "elsewhere", "role": "builder"}).json()["key"]
        theirs = {"X-API-Key": other}
        assert requests.get(f"{stack.url}/cameras", headers=theirs, timeout=30).json()["cameras"] == []
        for path in (f"/cameras/{ids[-1]}", f"/cameras/{ids[-1]}/events"):
            assert requests.get(f"{stack.url}{path}", headers=theirs, timeout=30).status_code == 404
        assert requests.delete(f"{stack.url}/cameras/{ids[-1]}", headers=theirs, timeout=30).status_code == 404
        r = requests.post(f"{stack.url}/cameras", headers=theirs, timeout=30,
                          json={"name": "x", "url": mjpeg.url(), "model": model_id, "fps": 5})
        assert r.status_code == 404, r.text
        assert "wrong-password" not in stack.get("/cameras").text
        for camera_id in ids:
            assert stack.delete(f"/cameras/{camera_id}").status_code == 200
    finally:
        silent.close()


def test_a_camera_that_goes_away_comes_back(stack, model_id, people, timeline):
    server = MjpegServer(timeline).start()
    try:
        cam = add(stack, model_id, server.url()).json()["camera"]
        wait_state(stack, cam["id"], "live")
        server.stop()
        wait_state(stack, cam["id"], "offline", timeout=30)
        server.start()
        wait_state(stack, cam["id"], "live", timeout=30)
        last = max([e["id"] for e in events(stack, cam["id"])], default=0)
        evs = wait_events(stack, cam["id"], lambda ev: any(e["type"] == "track.start" and e["label"] != "unknown"
                                                           for e in ev), after=last)
        assert set(starts(evs)) <= set(people) | {"unknown"}
        assert stack.delete(f"/cameras/{cam['id']}").status_code == 200
    finally:
        server.stop()


def test_a_worker_killed_while_it_holds_a_camera_hands_it_over(stack, model_id, people, mjpeg):
    names = sorted(people)
    cam = add(stack, model_id, mjpeg.url(), name="handover").json()["camera"]
    held = wait_state(stack, cam["id"], "live")
    pid = int(held["worker"].split(":")[1])
    os.kill(pid, signal.SIGKILL)
    # the supervisor restarts the worker; the broker gives the camera to a live worker
    moved = wait_until(lambda: (lambda c: c if c["state"] == "live" and c["worker"] and
                                c["worker"] != held["worker"] else None)(camera(stack, cam["id"])), 90, interval=0.3)
    assert moved["worker"] != held["worker"]
    last = max([e["id"] for e in events(stack, cam["id"])], default=0)
    wait_events(stack, cam["id"], lambda ev: set(starts(ev)) & {names[0], names[1]}, after=last)
    assert stack.delete(f"/cameras/{cam['id']}").status_code == 200


def test_an_rtsp_camera_names_the_right_people(stack, model_id, people, timeline, tmp_path):
    missing = rtsp_available()
    if missing:
        pytest.fail(f"GStreamer's RTSP server is missing (make test installs it): {missing}")
    names = sorted(people)
    clip = timeline.write_clip(tmp_path / "clip.avi", repeat=20)
    server = RtspServer(clip, credentials=f"viewer:{PASSWORD}").start()
    try:
        wrong = add(stack, model_id, server.url("viewer:nope"), name="rtsp-wrong").json()["camera"]
        none = add(stack, model_id, server.url(""), name="rtsp-none").json()["camera"]
        cam = add(stack, model_id, server.url(), name="rtsp").json()["camera"]
        wait_state(stack, wrong["id"], "offline", reason="credentials")
        wait_state(stack, none["id"], "offline", reason="needs credentials")
        wait_state(stack, cam["id"], "live")
        evs = wait_events(stack, cam["id"], lambda ev: {names[0], names[1]} <= set(starts(ev)))
        assert set(starts(evs)) <= {names[0], names[1], "unknown"}
        logs = stack.log.read_text(errors="replace")
        assert PASSWORD not in logs and "nope@" not in logs
        for c in (wrong, none, cam):
            assert stack.delete(f"/cameras/{c['id']}").status_code == 200
    finally:
        server.stop()


def test_deleting_the_model_stops_its_cameras_and_removes_their_events(stack, people, mjpeg):
    r = stack.build(photo_files({p: paths[:N_UPLOAD] for p, paths in people.items()}), name="gone")
    stack.wait_state(r.json()["id"], ("done",))
    model = r.json()["id"]
    cam = add(stack, model, mjpeg.url(), name="to-go").json()["camera"]
    wait_events(stack, cam["id"], lambda ev: len(ev) >= 1)
    snaps = list((Path(stack.data_dir) / "var" / "events" / cam["id"]).glob("*.jpg"))
    assert snaps
    assert stack.delete(f"/models/{model}").status_code == 200
    c = wait_state(stack, cam["id"], "offline", reason="model was deleted", timeout=30)
    assert c["state"] == "offline"
    assert events(stack, cam["id"]) == []
    assert not any(s.exists() for s in snaps)
    stack.delete(f"/cameras/{cam['id']}")


def test_run_py_watch_prints_the_people_of_a_video_file_offline(stack, model_id, people, timeline, tmp_path):
    import subprocess
    import sys

    from test.stack import ROOT
    names = sorted(people)
    bundle = tmp_path / "model.zip"
    bundle.write_bytes(stack.get(f"/models/{model_id}").content)
    clip = timeline.write_clip(tmp_path / "clip.avi", repeat=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FR_")}
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "watch", "--model", str(bundle), "--fps", "5",
                          "--snapshots", str(tmp_path / "shots"), str(clip)], capture_output=True, text=True,
                         timeout=600, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    began = [e for e in lines if e["type"] == "start"]
    assert [e["label"] for e in began] == [names[0], names[1]], lines
    # the timeline's times: A from 1 s to 4 s, B from 6.5 s to 9.5 s (a start needs a second face: 0.2 s later)
    assert 1.0 <= began[0]["first"] <= 1.5 and 6.5 <= began[1]["first"] <= 7.0, began
    ended = {e["track"]: e for e in lines if e["type"] == "end"}
    assert 3.6 <= ended[began[0]["track"]]["last"] <= 4.0 and 9.0 <= ended[began[1]["track"]]["last"] <= 9.5
    assert all(Path(e["snapshot"]).read_bytes()[:2] == b"\xff\xd8" for e in lines)
    bad = subprocess.run([sys.executable, str(ROOT / "run.py"), "watch", "--model", str(bundle),
                          str(tmp_path / "model.zip")], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert bad.returncode == 1 and "not a video" in bad.stderr


def test_erasing_a_person_removes_their_events_and_the_camera_follows_the_rebuilt_model(stack, people, timeline):
    """Last in the module: it erases a person from every model of the tenant."""
    names = sorted(people)
    r = stack.build(photo_files({p: paths[:N_UPLOAD] for p, paths in people.items()}), name="erase")
    stack.wait_state(r.json()["id"], ("done",))
    model = r.json()["id"]
    server = MjpegServer(timeline).start()
    try:
        cam = add(stack, model, server.url(), name="erase").json()["camera"]
        wait_events(stack, cam["id"], lambda ev: {names[0], names[1]} <= set(starts(ev)))
        folder = Path(stack.data_dir) / "var" / "events" / cam["id"]
        theirs = [folder / f"{e['id']}.jpg" for e in events(stack, cam["id"]) if e["label"] == names[0]]
        assert theirs and all(p.exists() for p in theirs)
        answer = stack.delete(f"/people/{names[0]}")
        assert answer.status_code == 200, answer.text
        left = events(stack, cam["id"])
        assert names[0] not in {e["label"] for e in left} and names[1] in {e["label"] for e in left}
        assert not any(p.exists() for p in theirs)
        moved = camera(stack, cam["id"])
        assert moved["model"] != model
        stack.wait_state(moved["model"], ("done",))
        wait_state(stack, cam["id"], "live")
        last = max(e["id"] for e in events(stack, cam["id"]))
        later = wait_events(stack, cam["id"], lambda ev: names[1] in starts(ev), after=last)
        assert names[0] not in starts(later)
        assert stack.delete(f"/cameras/{cam['id']}").status_code == 200
    finally:
        server.stop()
