"""Recorded videos through the real service (issue #27): a clip with a known timeline, composed at test time
from ../shared/faces, posted to a built model; the worker's tracks name the right people at the right
seconds, thumbnails are served, the callback is called; tenants are kept apart; every bad video gets a
clear error and the worker goes on; a model's videos go with it."""
from __future__ import annotations

import json
import os
import re
import signal

import cv2
import numpy as np
import pytest

from bench.clips import Appearance, write_clip
from test.conftest import pick_people
from test.stack import photo_files
from test.test_callbacks import Receiver, verify_signature
from test.test_video import check_timeline, jpeg_bytes, wav_bytes

MAX_BYTES, MAX_SECONDS = 3_000_000, 12
STACK = {"workers": 1, "env": {"FR_MAX_VIDEO_BYTES": str(MAX_BYTES), "FR_MAX_VIDEO_SECONDS": str(MAX_SECONDS),
                               "FR_WEBHOOK_ALLOW": "127.0.0.1"}}


@pytest.fixture(scope="module")
def people(faces_dir):
    return pick_people(faces_dir, 4, 14)


@pytest.fixture(scope="module")
def model_id(stack, people):
    r = stack.build(photo_files({p: paths[:8] for p, paths in people.items()}), name="video")
    assert r.status_code == 202, r.text
    stack.wait_state(r.json()["id"], ("done",))
    return r.json()["id"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory, people, faces_dir):
    names = list(people)
    stranger = sorted((faces_dir / "strangers").glob("*.jpg"))[3]
    # two lanes far enough apart that neither face hides the other when they pass (a pasted LFW crop is
    # about 2.3 faces wide); the unit tests (test_video.py) have them cross on one line
    timeline = [Appearance(names[2], tuple(people[names[2]][8:14]), 1.0, 5.0, x0=0.15, x1=0.6, y0=0.3, y1=0.3,
                           face_px=80),
                Appearance(names[3], tuple(people[names[3]][8:14]), 3.0, 8.0, x0=0.85, x1=0.3, y0=0.72, y1=0.72,
                           face_px=80),
                Appearance("unknown", (stranger,), 8.5, 10.0, x0=0.5, x1=0.5)]
    path = write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", timeline, 10.0, fps=10)
    return timeline, path


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


def post_video(stack, model_id: str, data: bytes, name: str = "clip.mp4", key: str | None = None, **form):
    return stack.post(f"/models/{model_id}/video", files={"video": (name, data, "video/mp4")}, data=form,
                      key=key, timeout=120)


def error_of(r) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


@pytest.fixture(scope="module")
def processed(stack, model_id, clip, receiver):
    """The clip through the service at 5 fps, with a callback: (its id, the 202's body, its final status)."""
    _, path = clip
    r = post_video(stack, model_id, path.read_bytes(), callback_url=receiver.url("/video"))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["model"] == model_id and body["fps"] == 5 and body["poll"] == f"/videos/{body['id']}"
    stack.wait_state(body["id"], ("done",))
    return body["id"], body


def test_a_clip_gives_the_right_people_at_the_right_times(stack, processed, clip, model_id):
    video_id, _ = processed
    timeline, _ = clip
    r = stack.get(f"/videos/{video_id}", timeout=30)
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["state"] == "done" and view["kind"] == "video" and view["model"] == model_id
    assert view["progress"]["done"] == view["progress"]["total"] == 50
    result = view["result"]
    assert result["video"]["frames"] == 100 and result["sampling"]["frames"] == 50 and not result["truncated"]
    check_timeline(result["tracks"], timeline)
    for track in result["tracks"]:
        thumb = stack.get(track["thumbnail"], timeout=30)
        assert thumb.status_code == 200 and thumb.headers["Content-Type"] == "image/jpeg"
        image = cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and max(image.shape[:2]) <= 192
    assert error_of(stack.get(f"/videos/{video_id}/tracks/999.jpg", timeout=30)) == (404, "NOT_FOUND")
    # polled like a build, listed with the videos and not with the models
    assert stack.status(video_id)["state"] == "done"
    assert video_id in [v["id"] for v in stack.get("/videos", timeout=30).json()["videos"]]
    assert video_id not in [m["id"] for m in stack.get("/models", timeout=30).json()["models"]]
    # a video's id is no model, and a model's id is no video
    assert error_of(stack.get(f"/videos/{model_id}", timeout=30)) == (404, "NOT_FOUND")
    assert error_of(stack.post(f"/models/{video_id}/predict", files={"image": ("a.jpg", b"x")}, timeout=30)) == \
        (404, "NOT_FOUND")


def test_the_callback_is_called_signed(processed, receiver):
    video_id, body = processed
    (call,) = receiver.wait("/video", 1)
    payload = verify_signature(call, body["callback"]["secret"])
    assert payload["type"] == "video.done" and payload["data"]["id"] == video_id
    assert payload["data"]["url"] == f"/videos/{video_id}" and payload["data"]["model"] == body["model"]


def test_another_tenant_sees_nothing(stack, processed, model_id, clip):
    video_id, _ = processed
    r = stack.post("/keys", json={"tenant": "globex", "role": "builder"}, timeout=10)
    assert r.status_code == 201, r.text
    other = r.json()["key"]
    assert error_of(post_video(stack, model_id, clip[1].read_bytes(), key=other)) == (404, "NOT_FOUND")
    for path in (f"/videos/{video_id}", f"/videos/{video_id}/tracks/1.jpg"):
        assert error_of(stack.get(path, key=other, timeout=30)) == (404, "NOT_FOUND")
    assert error_of(stack.delete(f"/videos/{video_id}", key=other, timeout=30)) == (404, "NOT_FOUND")
    assert stack.get("/videos", key=other, timeout=30).json()["videos"] == []
    assert stack.get(f"/videos/{video_id}", timeout=30).status_code == 200  # still there for its owner


def test_bad_videos_are_refused_at_once(stack, model_id, clip, faces_dir):
    good = clip[1].read_bytes()
    before = stack.get("/videos", timeout=30).json()["total"]
    cases = [(b"", "empty.mp4", (400, "EMPTY_FILE")), (jpeg_bytes(faces_dir), "photo.mp4", (400, "NOT_A_VIDEO")),
             (wav_bytes(2.0), "sound.wav", (400, "NOT_A_VIDEO")),
             (b"\x00\x00\x00\x20ftypM4A " + bytes(4000), "song.m4a", (400, "NOT_A_VIDEO")),
             (good + bytes(MAX_BYTES - len(good) + 1), "big.mp4", (413, "VIDEO_TOO_LARGE")),  # read, then refused
             (good + bytes(MAX_BYTES + 2_000_000), "huge.mp4", (413, "VIDEO_TOO_LARGE"))]  # refused unread
    for data, name, expected in cases:
        r = post_video(stack, model_id, data, name=name)
        assert error_of(r) == expected, (name, r.text)
        assert r.json()["error"]["message"]
    assert error_of(post_video(stack, model_id, good, fps="0")) == (400, "BAD_PARAMETER")
    assert error_of(post_video(stack, model_id, good, fps="many")) == (400, "BAD_PARAMETER")
    assert error_of(stack.post(f"/models/{model_id}/video", data={"fps": "5"}, timeout=30)) == (400, "MISSING_VIDEO")
    unknown = "0d5c0a3e-5a4b-4c1e-9d7e-2f0a7c1b9e11"
    assert error_of(post_video(stack, unknown, good)) == (404, "NOT_FOUND")
    assert stack.get("/videos", timeout=30).json()["total"] == before  # none of them was stored


def test_hostile_requests_get_a_clear_json_error_and_store_nothing(stack, model_id, clip, processed, tmp_path):
    """Two `video` parts, fps that is no usable number, a playlist named .mp4 (FFmpeg would follow the files it
    names), track numbers and ids of the wrong shape or another kind: each a JSON error, nothing stored, no
    model touched (docs/security.md, "Recorded videos")."""
    video_id, _ = processed
    good = clip[1].read_bytes()
    before = stack.get("/videos", timeout=30).json()["total"]
    r = stack.post(f"/models/{model_id}/video", files=[("video", ("a.mp4", good, "video/mp4")),
                                                       ("video", ("b.mp4", good, "video/mp4"))], timeout=120)
    assert error_of(r) == (400, "BAD_PARAMETER") and "one video" in r.json()["error"]["message"], r.text
    for fps in ("-1", "nan", "inf", "-inf", "1e308", "31", "5 5", "0x10"):
        assert error_of(post_video(stack, model_id, good, fps=fps)) == (400, "BAD_PARAMETER"), fps
    playlist = f"#EXTM3U\n#EXTINF:2,\nfile:{stack.data_dir / 'var' / 'jobs.sqlite'}\n#EXT-X-ENDLIST\n".encode()
    for body in (playlist, b"ffconcat version 1.0\nfile '/etc/passwd'\n"):
        assert error_of(post_video(stack, model_id, body, name="clip.mp4")) == (400, "NOT_A_VIDEO")
    for track in ("0", "-1", "100001", "99", "1.5", "abc", "%2e%2e"):
        r = stack.get(f"/videos/{video_id}/tracks/{track}.jpg", timeout=30)
        assert r.status_code == 404 and r.json()["error"]["code"], (track, r.text)
    for bad in ("abc", "..%2F..%2Fetc", video_id.upper() + "x", model_id):
        for r in (stack.get(f"/videos/{bad}", timeout=30), stack.get(f"/videos/{bad}/tracks/1.jpg", timeout=30),
                  stack.delete(f"/videos/{bad}", timeout=30)):
            assert r.status_code in (400, 404) and r.json()["error"]["code"], (bad, r.text)
    assert stack.get(f"/models/{model_id}", timeout=30).status_code == 200  # DELETE /videos/<model> took nothing
    assert stack.get("/videos", timeout=30).json()["total"] == before


def test_a_video_deleted_while_it_waits_or_runs_leaves_nothing(stack, model_id, clip, processed):
    """DELETE while the video is queued or being read: 200 at once; the worker's late result is dropped, and
    once the one worker has taken the next video nothing of the first is on disk (row, upload, dumps, the
    worker's temporary copy)."""
    good = clip[1].read_bytes()
    r = post_video(stack, model_id, good, fps="30")
    assert r.status_code == 202, r.text
    doomed = r.json()["id"]
    assert stack.delete(f"/videos/{doomed}", timeout=30).status_code == 200
    r = post_video(stack, model_id, good, fps="1")
    assert r.status_code == 202, r.text
    stack.wait_state(r.json()["id"], ("done",), timeout=180)  # one worker: it is past the deleted one
    assert error_of(stack.get(f"/videos/{doomed}", timeout=30)) == (404, "NOT_FOUND")
    var = stack.data_dir / "var"
    assert not (stack.data_dir / "dumps" / doomed).exists() and not (var / "uploads" / doomed).exists()
    assert not list(var.glob(".video-*"))


def test_videos_that_cannot_be_read_fail_with_a_reason_and_the_worker_goes_on(stack, model_id, people, tmp_path):
    """A cut mp4 and a file that only looks like one fail NOT_A_VIDEO, a video over FR_MAX_VIDEO_SECONDS fails
    VIDEO_TOO_LONG; a cut avi gives the tracks of what it holds, marked truncated; the one worker takes every
    one of them in turn (none hangs it)."""
    name = next(iter(people))
    short = [Appearance(name, tuple(people[name][8:14]), 0.5, 5.0)]
    mp4 = write_clip(tmp_path / "c.mp4", short, 6.0, fps=10, size=(320, 180)).read_bytes()
    avi = write_clip(tmp_path / "c.avi", short, 6.0, fps=10, size=(320, 180)).read_bytes()
    long = write_clip(tmp_path / "long.mp4", [], MAX_SECONDS + 3, fps=5, size=(160, 90)).read_bytes()
    cases = {"cut.mp4": (mp4[:len(mp4) // 2], "NOT_A_VIDEO"),
             "fake.mp4": (b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 64, "NOT_A_VIDEO"),
             "long.mp4": (long, "VIDEO_TOO_LONG")}
    ids = {}
    for filename, (data, _) in cases.items():
        r = post_video(stack, model_id, data, name=filename)
        assert r.status_code == 202, r.text
        ids[filename] = r.json()["id"]
    r = post_video(stack, model_id, avi[:int(len(avi) * 0.6)], name="cut.avi")
    assert r.status_code == 202, r.text
    cut_avi = r.json()["id"]
    for filename, (_, code) in cases.items():
        status = stack.wait_state(ids[filename], ("failed",), timeout=180)
        assert status["error"]["code"] == code and status["error"]["message"], status
        assert stack.get(f"/videos/{ids[filename]}", timeout=30).json()["result"] is None
    stack.wait_state(cut_avi, ("done",), timeout=180)
    result = stack.get(f"/videos/{cut_avi}", timeout=30).json()["result"]
    assert result["truncated"] and 0 < result["sampling"]["seconds"] < 6.0
    (track,) = [t for t in result["tracks"] if t["known"]]
    assert track["label"] == name and abs(track["first"] - 0.5) <= 0.5


def test_deleting_a_video_and_a_model_removes_its_videos(stack, people, clip, processed):
    video_id, _ = processed
    # a second model, a video through it, then the model goes: the video and its thumbnails with it
    r = stack.build(photo_files({p: paths[:3] for p, paths in list(people.items())[:2]}), name="short-lived")
    assert r.status_code == 202, r.text
    other_model = r.json()["id"]
    stack.wait_state(other_model, ("done",))
    r = post_video(stack, other_model, clip[1].read_bytes(), fps="2")
    assert r.status_code == 202, r.text
    doomed = r.json()["id"]
    stack.wait_state(doomed, ("done",), timeout=180)
    assert (stack.data_dir / "dumps" / doomed / "thumbs").is_dir()
    r = stack.delete(f"/models/{other_model}", timeout=60)
    assert r.status_code == 200 and r.json()["removed"]["videos"] == 1, r.text
    assert error_of(stack.get(f"/videos/{doomed}", timeout=30)) == (404, "NOT_FOUND")
    assert not (stack.data_dir / "dumps" / doomed).exists()
    # DELETE /videos/<id> of the first one
    assert stack.delete(f"/videos/{video_id}", timeout=30).status_code == 200
    assert error_of(stack.get(f"/videos/{video_id}", timeout=30)) == (404, "NOT_FOUND")
    assert not (stack.data_dir / "dumps" / video_id).exists()
    assert video_id not in json.dumps(stack.get("/videos", timeout=30).json())
    # nothing of either left on disk: no upload, no temporary copy a worker decoded from
    var = stack.data_dir / "var"
    assert not (var / "uploads" / video_id).exists() and not (var / "uploads" / doomed).exists()
    assert not list(var.glob(".video-*"))


def test_a_worker_killed_mid_video_is_replaced_and_the_video_finishes(stack, model_id, clip, tmp_path):
    # the clip's timeline in FR_MAX_VIDEO_SECONDS at 20 frames a second, each looked at (240 frames): long
    # enough to be killed mid-way on any machine
    timeline, _ = clip
    path = write_clip(tmp_path / "long.mp4", timeline, float(MAX_SECONDS), fps=20)
    r = post_video(stack, model_id, path.read_bytes(), fps="20")
    assert r.status_code == 202, r.text
    video_id = r.json()["id"]
    st = stack.wait_state(video_id, ("processing",), timeout=120,
                          pred=lambda s: s["worker"] is not None and s["progress"]["done"] >= 2)
    os.kill(int(st["worker"].split(":")[1]), signal.SIGKILL)
    done = stack.wait_state(video_id, ("done",), timeout=300)
    assert done["attempts"] >= 2, done
    result = stack.get(f"/videos/{video_id}", timeout=30).json()["result"]
    assert result["sampling"]["frames"] == 20 * MAX_SECONDS
    check_timeline(result["tracks"], timeline)
    assert stack.wait_alive(1, timeout=60)["workers"] == 1


@pytest.mark.browser
def test_the_console_sends_a_video_and_draws_its_tracks_on_a_timeline(stack, model_id, clip, request):
    from test.browser import chromium
    _, path = clip
    with chromium(request.node.name, stack.admin_key) as b:
        page = b.page
        page.goto(f"{stack.url}/#/model/{model_id}/video")
        page.wait_for_selector("#video-input")
        page.fill("#video-fps", "5")
        page.set_input_files("#video-input", files=[{"name": "clip.mp4", "mimeType": "video/mp4",
                                                    "buffer": path.read_bytes()}])
        page.wait_for_url(re.compile(r".*#/video/[0-9a-f-]{36}$"))
        video_id = page.url.rsplit("/", 1)[1]
        page.wait_for_selector("#tracks-table", timeout=180_000)
        b.shot("tracks")
        tracks = stack.get(f"/videos/{video_id}", timeout=30).json()["result"]["tracks"]
        rows = page.locator("#tracks-table tbody tr")
        assert rows.count() == len(tracks)
        assert [rows.nth(i).locator("td").nth(2).inner_text() for i in range(len(tracks))] == \
            [t["label"] for t in tracks]
        assert page.locator("#video-timeline rect.track-bar").count() == len(tracks)
        page.wait_for_function("document.querySelectorAll('#tracks-table img.thumb[src^=\"blob:\"]').length > 0")
        # the file picked here plays here: a click on a track jumps to its best frame and boxes the face
        assert page.locator("#video-player").is_visible()
        first = tracks[0]
        page.locator("#video-timeline rect.track-bar").first.click()
        box = page.locator(".video-box")
        box.wait_for()
        assert box.inner_text().startswith(first["label"])
        assert abs(page.evaluate("document.getElementById('video-player').currentTime") - first["best"]["t"]) < 0.05
        b.shot("jumped")
        assert b.csp_violations() == [] and b.errors == []


def test_erasing_a_person_removes_the_videos_of_the_models_that_held_them(stack, people, clip):
    """DELETE /people/<label> deletes every model holding the person (rebuilt without them under a new id),
    and with each model its videos: their tracks name the person and their thumbnails show them."""
    names = list(people)
    r = stack.build(photo_files({p: people[p][:3] for p in names[1:4]}), name="to erase from")
    assert r.status_code == 202, r.text
    model = r.json()["id"]
    stack.wait_state(model, ("done",))
    r = post_video(stack, model, clip[1].read_bytes(), fps="2")
    assert r.status_code == 202, r.text
    video_id = r.json()["id"]
    stack.wait_state(video_id, ("done",), timeout=180)
    labels = [t["label"] for t in stack.get(f"/videos/{video_id}", timeout=30).json()["result"]["tracks"]]
    assert names[2] in labels
    r = stack.delete(f"/people/{names[2]}", timeout=120)
    assert r.status_code == 200, r.text
    assert model in [m["id"] for m in r.json()["models"]]
    assert error_of(stack.get(f"/videos/{video_id}", timeout=30)) == (404, "NOT_FOUND")
    assert error_of(stack.get(f"/videos/{video_id}/tracks/1.jpg", timeout=30)) == (404, "NOT_FOUND")
    assert not (stack.data_dir / "dumps" / video_id).exists()
