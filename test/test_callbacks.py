"""Callbacks through the real service (issue #18): a build's end is POSTed to its callback_url, signed as
Standard Webhooks does; retried while the receiver fails (a redirect counts as a failure and is not followed);
kept across a restart; refused at submit for a host FR_WEBHOOK_ALLOW does not allow. The receiver is a small
HTTP server started by the test."""
from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from test.conftest import pick_people
from test.stack import free_port, photo_files
from test.waits import wait_until

ENV = {"FR_WEBHOOK_ALLOW": "127.0.0.1", "FR_WEBHOOK_RETRY_S": "0.3"}
STACK = {"workers": 2, "env": ENV, "warm_up": False}  # the module's `stack` (conftest.py); no predictions here


class Receiver:
    """Records every POST (path, headers, body) and answers each path with the statuses scripted for it
    (the last one repeats; default 200)."""

    def __init__(self):
        self.calls: list[dict] = []
        self.script: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.calls.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                        "body": body, "at": time.time()})
                    statuses = outer.script.get(self.path, [200])
                    status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
                self.send_response(status)
                if status in (301, 302, 307, 308):
                    self.send_header("Location", "/redirected")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[dict]:
        with self.lock:
            return [c for c in self.calls if c["path"] == path]

    def wait(self, path: str, n: int, timeout: float = 120) -> list[dict]:
        """The calls to `path` once there are at least `n`."""
        return wait_until(lambda: len(self.at(path)) >= n and self.at(path), timeout,
                          what=lambda: f"{len(self.at(path))} of {n} calls to {path}")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def people(faces_dir):
    return pick_people(faces_dir, 3, 3)


def verify_signature(call: dict, secret: str) -> dict:
    """Check a call as a receiver following Standard Webhooks would; -> the payload."""
    h = call["headers"]
    msg_id, timestamp, signature = h["webhook-id"], h["webhook-timestamp"], h["webhook-signature"]
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{timestamp}.".encode() + call["body"],
                                         hashlib.sha256).digest()).decode()
    versions = dict(part.split(",", 1) for part in signature.split())
    assert hmac.compare_digest(versions["v1"], expected), "bad signature"
    assert abs(int(timestamp) - call["at"]) < 60 and h["content-type"] == "application/json"
    assert msg_id.startswith("msg_")
    return json.loads(call["body"])


def delivered(stack, job_id: str) -> dict | None:
    """The job's status once its callback is recorded as delivered, else None."""
    status = stack.status(job_id)
    return status if (status.get("callback") or {}).get("state") == "delivered" else None


def failing_build(stack, people, **form) -> requests.Response:
    """A build that fails quickly (TOO_FEW_PEOPLE: the second person's only photo has no face)."""
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (160, 160), (80, 80, 80)).save(buf, "JPEG")
    name = next(iter(people))
    return stack.build(photo_files({name: people[name][:1]}) + [("Grey/1.jpg", buf.getvalue())], **form)


def test_a_build_calls_back_once_done_signed(stack, receiver, people):
    r = stack.build(photo_files(people), callback_url=receiver.url("/done"))
    assert r.status_code == 202, r.text
    body = r.json()
    secret = body["callback"]["secret"]
    assert body["callback"]["url"] == receiver.url("/done") and secret.startswith("whsec_")
    stack.wait_state(body["id"], ("done",))
    (call,) = receiver.wait("/done", 1)
    payload = verify_signature(call, secret)
    assert payload["type"] == "model.done" and payload["data"]["id"] == body["id"]
    assert payload["data"]["state"] == "done" and payload["data"]["available"] == 1 and payload["data"]["error"] is None
    # a wrong secret does not verify
    with pytest.raises(AssertionError):
        verify_signature(call, "whsec_" + base64.b64encode(b"x" * 32).decode())
    # delivered once: the service has recorded the delivery (so it will not try again) after one attempt
    status = wait_until(lambda: delivered(stack, body["id"]), 30)
    assert len(receiver.at("/done")) == 1
    assert status["callback"]["state"] == "delivered" and status["callback"]["attempts"] == 1
    assert "secret" not in json.dumps(status)


def test_retried_while_the_receiver_fails_then_delivered(stack, receiver, people):
    receiver.script["/flaky"] = [500, 503, 200]
    r = failing_build(stack, people, callback_url=receiver.url("/flaky"))
    assert r.status_code == 202, r.text
    stack.wait_state(r.json()["id"], ("failed",))
    calls = receiver.wait("/flaky", 3)
    payloads = [verify_signature(c, r.json()["callback"]["secret"]) for c in calls]
    assert len({c["headers"]["webhook-id"] for c in calls}) == 1  # one message, attempted three times
    assert payloads[0]["type"] == "model.failed" and payloads[0]["data"]["error"]["code"] == "TOO_FEW_PEOPLE"
    assert "details" not in payloads[0]["data"]["error"]  # no file names (so no people's names) in a callback
    cb = wait_until(lambda: delivered(stack, r.json()["id"]), 30)["callback"]
    # backing off: the delays the broker scheduled (FR_WEBHOOK_RETRY_S = 0.3, doubling), as it logged each
    # failure before retrying (the calls' arrival times would measure this machine's load as much)
    scheduled = re.findall(rf"webhooks: job {r.json()['id']} callback to 127\.0\.0\.1 failed \(HTTP 50[03]\); "
                           r"attempt (\d) in ([\d.]+) s", stack.log.read_text(errors="replace"))
    assert scheduled == [("2", "0.3"), ("3", "0.6")], scheduled
    # ... and kept: no retry came before its time (a lower bound: a loaded machine only makes the gaps longer)
    assert [b["at"] - a["at"] >= delay for a, b, delay in zip(calls, calls[1:], (0.3, 0.6))] == [True, True]
    assert cb["state"] == "delivered" and cb["attempts"] == 3 and cb["last_status"] == 200


def test_a_redirect_is_a_failure_and_is_not_followed(stack, receiver, people):
    receiver.script["/moved"] = [302, 200]
    r = failing_build(stack, people, callback_url=receiver.url("/moved"))
    assert r.status_code == 202
    receiver.wait("/moved", 2)
    assert receiver.at("/redirected") == []


def test_a_derivation_calls_back_too(stack, receiver, people, faces_dir):
    r = stack.build(photo_files(people))
    stack.wait_state(r.json()["id"], ("done",))
    extra = pick_people(faces_dir, 4, 3)
    new = next(n for n in extra if n not in people)
    parts = [("images", (f"{new}/{p.name}", p.read_bytes())) for p in extra[new]]
    d = stack.post(f"/models/{r.json()['id']}/people", files=parts,
                      data={"callback_url": receiver.url("/derived")}, timeout=60)
    assert d.status_code == 202, d.text
    (call,) = receiver.wait("/derived", 1)
    payload = verify_signature(call, d.json()["callback"]["secret"])
    assert payload["data"]["id"] == d.json()["id"] and payload["data"]["parent"] == r.json()["id"]


def test_callback_urls_the_operator_did_not_allow_are_refused(stack, receiver, people):
    before = stack.get("/models", timeout=10).json()["total"]
    cases = [
        ("http://example.com/hook", "CALLBACK_NOT_ALLOWED"),          # a host not listed
        (f"http://localhost:{receiver.port}/x", "CALLBACK_NOT_ALLOWED"),  # listed by address, not by this name
        ("http://10.0.0.7/hook", "CALLBACK_NOT_ALLOWED"),              # a private address
        (f"http://[::1]:{receiver.port}/x", "CALLBACK_NOT_ALLOWED"),  # loopback, not listed
        ("http://169.254.169.254/latest/meta-data", "CALLBACK_NOT_ALLOWED"),  # cloud metadata
        (f"ftp://127.0.0.1:{receiver.port}/x", "BAD_CALLBACK_URL"),
        (f"http://user:pw@127.0.0.1:{receiver.port}/x", "BAD_CALLBACK_URL"),
        ("not a url", "BAD_CALLBACK_URL"),
        ("http:///nohost", "BAD_CALLBACK_URL"),
        (f"http://127.0.0.1:{receiver.port}/" + "a" * 3000, "BAD_CALLBACK_URL"),
    ]
    for url, code in cases:
        r = stack.build(photo_files(people), callback_url=url)
        assert r.status_code == 400 and r.json()["error"]["code"] == code, (url, r.text[:300])
        assert r.json()["error"]["details"] == {"field": "callback_url"}
    assert stack.get("/models", timeout=10).json()["total"] == before  # nothing was stored


def test_a_pending_callback_survives_a_restart(stacks, receiver, people):
    receiver.script["/later"] = [500]
    first = stacks.start("restart", env=ENV, warm_up=False)
    r = failing_build(first, people, callback_url=receiver.url("/later"))
    assert r.status_code == 202
    receiver.wait("/later", 1)
    first.stop()
    receiver.script["/later"] = [200]
    n = len(receiver.at("/later"))
    again = stacks.start(data_dir=first.data_dir, env=ENV, warm_up=False)
    calls = receiver.wait("/later", n + 1)
    assert len({c["headers"]["webhook-id"] for c in calls}) == 1
    verify_signature(calls[-1], r.json()["callback"]["secret"])
    assert wait_until(lambda: delivered(again, r.json()["id"]), 30)["callback"]["state"] == "delivered"
