"""The HTTP edge under hostile clients, on the real stack: huge and slow bodies, archives that inflate
past their welcome, photos with too many faces, and uWSGI's harakiri trap (issue #15, rows 5-7, 11-12)."""
from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import pytest

from constants import Settings
from test.conftest import pick_people
from test.stack import SlowBodies, descendants, photo_files, raw_request, response_of
from test.waits import wait_until

GRACE_S = 3.0


@pytest.fixture(scope="module")
def tmpdir_of_stack(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("edge-tmp")


@pytest.fixture(scope="module")
def stack(module_stacks, tmpdir_of_stack):
    env = {"TMPDIR": str(tmpdir_of_stack), "FR_UPLOAD_GRACE_S": str(GRACE_S), "FR_MAX_FACES_PER_PREDICT": "1",
           "FR_MAX_ZIP_RATIO": "100000", "FR_MAX_ZIP_UNCOMPRESSED_BYTES": str(400 * 1024 * 1024)}
    return module_stacks.start("edge", workers=1, env=env)


@pytest.fixture(scope="module")
def model_id(stack, faces_dir):
    people = pick_people(faces_dir, 3, 4, subset="lfw62")
    r = stack.build(photo_files(people))
    assert r.status_code == 202, r.text
    stack.wait_state(r.json()["id"], ("done",))
    return r.json()["id"]


def model_loads(stack) -> float:
    """How many times the web processes have read a bundle from disk (fr_model_cache_total{result="load"})."""
    text = stack.get("/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('fr_model_cache_total{result="load"}'))


def web_processes(stack) -> list[int]:
    """pids of the uWSGI processes that run the app (the master's children that serve requests)."""
    out = []
    for pid in descendants(stack.proc.pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"uwsgi" in cmd:
            out.append(pid)
    return out


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.parametrize("expect", [True, False])
def test_a_body_over_the_limit_is_refused_before_anything_is_spooled(stack, tmpdir_of_stack, expect):
    """700 MiB announced: a JSON 413 comes back at once, judged from Content-Length. A client that waits
    (`Expect: 100-continue`, as curl does for big bodies) sends none of it; one that starts sending gets the
    answer after its first bytes. Nothing of the body lands on disk either way. "At once" is what the
    client sent, not a clock: the answer comes to a client that has sent no byte of the body, or 64 KiB
    of its 700 MiB, and waits."""
    before = set(tmpdir_of_stack.rglob("*"))
    head = ("POST /build_recognizer HTTP/1.1\r\nHost: x\r\n"
            f"X-API-Key: {stack.admin_key}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            + ("Expect: 100-continue\r\n" if expect else "") + f"Content-Length: {700 * 1024 * 1024}\r\n\r\n")
    sock = raw_request(stack.port, head)
    if not expect:
        sock.sendall(b"\0" * 65536)
    reply = response_of(sock, 10)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "REQUEST_TOO_LARGE"
    assert set(tmpdir_of_stack.rglob("*")) == before, "nothing of the body may be spooled to disk"


def test_slow_bodies_do_not_starve_the_service_and_are_cut(stack, model_id, faces_dir):
    photo = next((faces_dir / "lfw62").glob("*/*.jpg")).read_bytes()

    def predicted_everywhere() -> bool:  # every web process has loaded the model (its first predict loads Keras)
        stack.post(f"/models/{model_id}/predict", files={"image": ("p.jpg", photo)}, timeout=60)  # checked below
        return model_loads(stack) >= Settings.from_env(stack.env).web_processes
    wait_until(predicted_everywhere, 300, interval=0)
    with SlowBodies(stack, 16) as slow:
        # The premise, not the proof: the slow bodies have reached their web threads before the checks below
        # (nothing in the service shows a request whose body is still coming). Were they later, the checks
        # would pass without testing much; they cannot fail for it.
        time.sleep(1.5)
        for _ in range(3):  # how fast they answer meanwhile is measured in bench/slow_clients.py
            assert stack.get("/is_alive", timeout=30).status_code == 200
            r = stack.post(f"/models/{model_id}/predict", files={"image": ("p.jpg", photo)}, timeout=30)
            assert r.status_code == 200 and r.json()["count"] == 1
        # past the grace period, a body this slow is cut with a clear answer, which frees its thread
        replies = slow.replies(GRACE_S + 15)
    cut = [r for r in replies if r.startswith(b"HTTP/1.1 408")]
    assert len(cut) == len(replies) == 16, [r[:60] for r in replies]
    assert json.loads(cut[0].split(b"\r\n\r\n", 1)[1])["error"]["code"] == "REQUEST_TIMEOUT"


def zip_of(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_all_archive_parts_share_one_inflate_budget(stack):
    part = zip_of({f"p{i}/{j}.jpg": b"\0" * (25 * 1024 * 1024) for i in range(2) for j in range(5)})  # 250 MiB
    r = stack.post("/build_recognizer", files=[("archive", ("a.zip", part)),
                                                              ("archive", ("b.zip", part))], timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "ZIP_BOMB", r.text[:300]


def test_bad_entries_are_dropped_as_they_are_inflated(stack, faces_dir):
    """10 entries of 25 MiB that are not photos: their bytes are not kept while the others inflate."""
    part = zip_of({f"p{i}/{j}.jpg": b"\0" * (25 * 1024 * 1024) for i in range(2) for j in range(5)})
    pids = web_processes(stack)
    before = {pid: peak_rss_mb(pid) for pid in pids}
    r = stack.post("/build_recognizer", files={"archive": ("a.zip", part)}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "NOT_AN_IMAGE"
    assert len(r.json()["error"]["details"]["files"]) == 10
    growth = max(peak_rss_mb(pid) - before[pid] for pid in pids)
    assert growth < 120, f"a web process's peak memory grew by {growth:.0f} MB for a 250 MiB archive of junk"


def test_a_photo_with_more_faces_than_the_cap_names_the_largest_and_says_so(stack, model_id, faces_dir):
    two = (faces_dir / "wild" / "two_people.jpg").read_bytes()
    r = stack.post(f"/models/{model_id}/predict", files={"image": ("p.jpg", two)}, timeout=60)
    body = r.json()
    assert r.status_code == 200 and body["count"] == 1 and body["faces_found"] == 2
    assert "FR_MAX_FACES_PER_PREDICT" in body["message"]


def test_a_long_upload_beside_quick_requests_kills_no_web_process(stack):
    """The shape of the first-run failure (#12): a body read in many pieces by one thread while quick
    requests of other threads end. uWSGI 2.0 with threads, post-buffering and harakiri then set a
    deadline in 1970 and killed the process at once (bench/harakiri_repro.py shows it); the harness
    also fails any test that logs a harakiri or a respawn."""
    pids = set(web_processes(stack))
    body = (b"--b\r\nContent-Disposition: form-data; name=\"images\"; filename=\"x/a.jpg\"\r\n\r\n"
            + b"x" * 600_000 + b"\r\n--b--\r\n")
    piece = len(body) // 30 + 1
    for _ in range(3):
        sock = raw_request(stack.port, "POST /build_recognizer HTTP/1.1\r\nHost: x\r\n"
                                       f"X-API-Key: {stack.admin_key}\r\n"
                                       "Content-Type: multipart/form-data; boundary=b\r\n"
                                       f"Content-Length: {len(body)}\r\n\r\n")
        for i in range(30):
            sock.sendall(body[i * piece:(i + 1) * piece])
            time.sleep(0.1)  # the behaviour under test: a body that arrives in pieces over 3 s
            if i % 5 == 0:
                for _ in range(4):  # quick requests that end while the upload is being read
                    assert stack.get("/is_alive", timeout=10).status_code == 200
        reply = response_of(sock, 30)
        sock.close()
        assert reply.startswith(b"HTTP/1.1 400"), reply[:100]  # not a photo: a clear answer
        assert b"NOT_AN_IMAGE" in reply
    assert set(web_processes(stack)) == pids, "a web process was replaced"
