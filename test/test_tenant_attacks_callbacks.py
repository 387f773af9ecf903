"""Tenants kept apart under attack (issue #26, rows 1-3 and 11-15), through the real service (`run.py serve`)
with two tenants, each attack as the issue found it: a tenant holding a builder key tries to stop, delay or
wipe another's callbacks, to hide a name from the request log or an erasure, to leave a deleted build's
labels and photos on disk, or to make the front answer 500."""
from __future__ import annotations

import http.client
import io
import json
import zipfile
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from test.conftest import pick_people
from test.stack import Stack
from test.test_callbacks import Receiver
from test.test_lifecycle import found_in, idle
from test.test_webhooks import Dripper
from test.waits import wait_until

# Callbacks to the test's receivers; an attempt's deadline long enough that a dripping receiver holds its
# delivery for as long as the test wants (row 3: only the other tenant's delivery may go meanwhile)
ENV = {"FR_WEBHOOK_ALLOW": "127.0.0.1", "FR_WEBHOOK_RETRY_S": "0.3", "FR_WEBHOOK_TIMEOUT_S": "120"}
STACK = {"workers": 1, "env": ENV, "warm_up": False}


@pytest.fixture(scope="module")
def keys(stack):
    """A builder key for each of two tenants."""
    out = {}
    for tenant in ("acme", "globex"):
        r = stack.post("/keys", json={"tenant": tenant, "role": "builder"}, timeout=30)
        assert r.status_code == 201, r.text
        out[tenant] = r.json()["key"]
    return out


class Photo(bytes):
    """A photo's bytes that a failing Hypothesis example prints as their size, not as themselves."""

    def __repr__(self) -> str:
        return f"<photo of {len(self)} bytes>"


@pytest.fixture(scope="module")
def face(faces_dir) -> bytes:
    return Photo(next(iter(pick_people(faces_dir, 1, 1).values()))[0].read_bytes())


@pytest.fixture(scope="module")
def witness(faces_dir) -> bytes:
    """A photo no other test of the module uploads (the data dir is searched for its bytes)."""
    return list(pick_people(faces_dir, 2, 1).values())[1][0].read_bytes()


def grey() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (160, 160), (80, 80, 80)).save(buf, "JPEG")
    return buf.getvalue()


def failing_build(stack: Stack, key: str, face: bytes, people=("Person_A", "Grey_B"), **form) -> requests.Response:
    """A build that fails quickly in the worker (TOO_FEW_PEOPLE: the second person's photo has no face)."""
    parts = [("images", (f"{people[0]}/1.jpg", face, "image/jpeg")),
             ("images", (f"{people[1]}/1.jpg", grey(), "image/jpeg"))]
    return stack.post("/build_recognizer", key=key, files=parts, data=form, timeout=120)


def callback_of(stack: Stack, job_id: str) -> dict:
    return stack.status(job_id).get("callback") or {}


# --- row 1: a callback URL no tenant can kill the sender with -----------------------------------------------------
def test_a_non_ascii_callback_path_is_delivered_and_the_sender_lives(stack, keys, face):
    receiver = Receiver()
    try:
        r = failing_build(stack, keys["acme"], face, callback_url=receiver.url("/café"))
        assert r.status_code == 202, r.text
        assert r.json()["callback"]["url"] == receiver.url("/caf%C3%A9")  # stored and shown normalised
        receiver.wait("/caf%C3%A9", 1, timeout=180)
        r = failing_build(stack, keys["globex"], face, callback_url=receiver.url("/next"))
        receiver.wait("/next", 1, timeout=180)  # the sender still serves every tenant
        alive = stack.get("/is_alive", timeout=30)
        assert alive.status_code == 200 and alive.json()["alive"], alive.text
        for bad in (receiver.url("/a\u0085b"), "http://\u2488x.example/", "http://a\u200b!b.example/"):
            refused = failing_build(stack, keys["acme"], face, callback_url=bad)
            assert refused.status_code == 400 and refused.json()["error"]["code"] in (
                "BAD_CALLBACK_URL", "CALLBACK_NOT_ALLOWED"), refused.text
    finally:
        receiver.close()


# --- row 2: an erasure touches the caller's tenant's messages only -------------------------------------------------
def test_an_erasure_leaves_another_tenants_pending_callback(stack, keys, face):
    receiver = Receiver()
    receiver.script["/held"] = [500]  # acme's receiver fails: its message stays pending, retried
    try:
        r = failing_build(stack, keys["acme"], face, name="Quarterly", callback_url=receiver.url("/held"))
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        receiver.wait("/held", 1, timeout=180)
        # globex erases "Quarterly" (and "failed", a word of every failed build's message): globex has no such
        # person; acme's message mentions both and must stay
        for word in ("Quarterly", "failed", "model.failed"):
            assert stack.delete(f"/people/{word}", key=keys["globex"], timeout=60).status_code == 200
        assert callback_of(stack, job).get("state") == "pending", callback_of(stack, job)
        receiver.script["/held"] = [200]
        wait_until(lambda: callback_of(stack, job).get("state") == "delivered", 120)
    finally:
        receiver.close()


# --- row 3: one slow receiver delays only its own tenant ---------------------------------------------------------
def test_a_dripping_receiver_does_not_delay_another_tenant(stack, keys, face):
    dripper, receiver = Dripper(), Receiver()
    try:
        slow = failing_build(stack, keys["acme"], face, callback_url=dripper.url("/slow"))
        assert slow.status_code == 202, slow.text
        wait_until(dripper.connected.is_set, 180, what="acme's callback to reach the dripping receiver")
        fast = failing_build(stack, keys["globex"], face, callback_url=receiver.url("/fast"))
        assert fast.status_code == 202, fast.text
        receiver.wait("/fast", 1, timeout=180)
        assert not dripper.closed.is_set(), "acme's delivery ended: the test shows nothing"
        assert callback_of(stack, slow.json()["id"]).get("attempts") == 0  # still in flight
    finally:
        dripper.release()
        receiver.close()


# --- row 11: no label in the request log, whatever the path looks like ---------------------------------------------
def test_the_request_log_never_shows_an_erased_name(stack):
    name = "Zelda_Quuxley_7731"
    forms = [f"//people/{name}", f"///people/{name}", f"/people/{name}/", f"/people//{name}", f"/%70eople/{name}",
             f"/people/{quote(name)}%20", f"//models/0d5c0a3e-5a4b-4c1e-9d7e-2f0a7c1b9e11//people/{name}"]
    statuses = []
    for path in forms:
        conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=60)
        conn.request("DELETE", path, headers=stack.headers)
        statuses.append(conn.getresponse().status)
        conn.close()
    assert statuses[0] == 200  # //people/<name> runs the erasure (of nobody here), as the issue found
    hits = found_in(stack.data_dir, {"name": name.encode(), "encoded": name.replace("_", "%5F").encode()})
    assert not hits, hits


# --- row 13: labels that cannot deceive ------------------------------------------------------------------------------
def test_invisible_characters_in_labels_are_refused(stack, keys, face):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("Tony/1.jpg", face)
        zf.writestr("Tony\u200e\u200d/2.jpg", face)
    r = stack.post("/build_recognizer", key=keys["acme"], files=[("archive", ("t.zip", buf.getvalue()))], timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "BAD_LABEL", r.text
    r = failing_build(stack, keys["acme"], face, people=("alice\u200b", "Grey_B"))
    assert r.status_code == 400 and r.json()["error"]["code"] == "BAD_LABEL", r.text
    # an erasure names the label exactly (a person enrolled before such labels were refused must still go):
    # acme has nobody of that label, and the look-alike "alice" of no model is not touched either
    r = stack.delete("/people/alice%E2%80%8B", key=keys["acme"], timeout=60)
    assert r.status_code == 200 and r.json()["label"] == "alice\u200b" and r.json()["models"] == [], r.text
    r = stack.delete("/people/alice%E2%80%AE", key=keys["acme"], timeout=60)  # a bidi override: never a label
    assert r.status_code == 400 and r.json()["error"]["code"] == "BAD_LABEL", r.text


# --- row 15: 400, never 500, for any file name or label --------------------------------------------------------------
def multipart(parts: list[tuple[str, str, bytes]], fields: dict[str, str]) -> tuple[bytes, str]:
    """A multipart body whose file names travel as RFC 5987 `filename*` (any character, controls included:
    a client library would escape them on its own)."""
    boundary = "fr-test-boundary-7f3a"
    out = io.BytesIO()
    for field, filename, data in parts:
        encoded = quote(filename.encode("utf-8", "surrogatepass"), safe="")
        out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"x.jpg\"; "
                  f"filename*=UTF-8''{encoded}\r\nContent-Type: image/jpeg\r\n\r\n".encode())
        out.write(data + b"\r\n")
    for field, value in fields.items():
        out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n".encode()
                  + value.encode("utf-8", "surrogatepass") + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(label=st.text(max_size=12), filename=st.one_of(st.text(max_size=30), st.sampled_from(
    ["1\x01.jpg", "1\n.jpg", "\x7f.jpg", "\u202e.jpg", "\udc80.jpg", "x" * 1030 + ".jpg", "a\x00.jpg"])),
    name=st.one_of(st.none(), st.text(max_size=8)))
def test_any_file_name_or_label_is_a_400_or_a_build(stack, keys, face, label, filename, name):
    body, ctype = multipart([("images", f"{label}/{filename}", face), ("images", "Grey_B/1.jpg", grey())],
                            {} if name is None else {"name": name})
    r = stack.post("/build_recognizer", key=keys["acme"], data=body, headers={"Content-Type": ctype}, timeout=120)
    assert r.status_code in (202, 400), (r.status_code, r.text)
    if r.status_code == 400:
        assert r.json()["error"]["code"], r.text
    else:  # accepted: gone at once (no work left for the other tests)
        assert stack.delete(f"/models/{r.json()['id']}", key=keys["acme"], timeout=60).status_code == 200


# --- row 12: nothing outlives a delete --------------------------------------------------------------------------
def test_nothing_of_a_deleted_failed_build_is_left_in_the_data_dir(stack, keys, witness):
    """A failed build's labels stayed in jobs.sqlite-wal after DELETE (only an erasure emptied it)."""
    people = ("Wal_Witness_Alpha", "Wal_Witness_Beta")
    r = failing_build(stack, keys["globex"], witness, people=people)
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    stack.wait_state(job, ("failed",))
    needles = {people[0]: people[0].encode(), people[1]: people[1].encode(),
               "photo": witness[len(witness) // 2:len(witness) // 2 + 96]}
    before = found_in(stack.data_dir, needles)
    assert set(before) == set(needles), f"the search must see them before: {before}"
    assert stack.delete(f"/models/{job}", key=keys["globex"], timeout=60).status_code == 200
    idle(stack)
    left = found_in(stack.data_dir, needles)
    assert not left, json.dumps(left, indent=1)[:3000]


def test_a_failed_builds_photos_go_after_the_retention(stacks, face):
    """FR_FAILED_RETENTION_HOURS=0: the photos go at the next look (a minute at most), the row and error stay."""
    stack = stacks.start("retention", workers=1, warm_up=False, env={"FR_FAILED_RETENTION_HOURS": "0"})
    r = failing_build(stack, stack.admin_key, face)
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    stack.wait_state(job, ("failed",))
    uploads: Path = stack.data_dir / "var" / "uploads" / job
    wait_until(lambda: not uploads.exists(), 120, what="the failed build's photos to go")
    status = stack.status(job)
    assert status["state"] == "failed" and status["error"]["code"] == "TOO_FEW_PEOPLE", status
