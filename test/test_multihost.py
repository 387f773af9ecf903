"""Several hosts on one machine: Linux network namespaces joined by veth pairs, each with its own
addresses. The broker runs in one namespace, two workers in two others, an HTTP front in a fourth (with a
link to this test's namespace, the "client"), and a worker whose key is not allowed in a fifth. Each
process reaches the others only over its own link, by address, with CURVE.

Checked: a build sent to the remote front completes on the remote workers; a prediction through that
front names the right person; the unallowed worker never gets a task; a worker whose namespace is cut off
and deleted mid-build does not stop the build. Skipped, saying why, where namespaces cannot be made
(not root, no `ip`, no CAP_SYS_ADMIN). Every namespace and veth is removed whatever happens.
"""
from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from test.conftest import pick_people
from test.stack import photo_files
from test.waits import wait_until

ROOT = Path(__file__).resolve().parent.parent
FRONT_PORT, BACK_PORT, HTTP_PORT = 5557, 5556, 8080


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


def why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to make network namespaces"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    name = f"frprobe{secrets.token_hex(2)}"
    made = sh("ip", "netns", "add", name, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace here: {made.stderr.strip()[:200]}"
    sh("ip", "netns", "del", name, check=False)
    return None


WHY_NOT = why_not()
# `stack`: it starts the service's processes itself (in namespaces), not through test/stack.Stacks
pytestmark = [pytest.mark.stack,
              pytest.mark.skipif(WHY_NOT is not None, reason=f"multi-host test skipped: {WHY_NOT}")]


class Hosts:
    """Namespaces as hosts: `link(a, b)` joins two with a veth pair on a /30 of their own."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(2)
        self.octet = random.SystemRandom().randrange(100, 250)  # 10.<octet>.k.0/30 per link
        self.names: list[str] = []
        self.links: list[tuple[str | None, str]] = []  # (namespace or None for this one, interface)
        self.procs: list[subprocess.Popen] = []
        self.k = 0

    def host(self, role: str) -> str:
        name = f"fr{self.tag}{role}"
        sh("ip", "netns", "add", name)
        self.names.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def link(self, a: str | None, b: str) -> tuple[str, str, str]:
        """veth between namespace `a` (None: the test's own) and `b`; -> (a's address, b's address, a's veth)."""
        self.k += 1
        ia, ib = f"fr{self.tag}a{self.k}", f"fr{self.tag}b{self.k}"
        sh("ip", "link", "add", ia, "type", "veth", "peer", "name", ib)
        self.links.append((None, ia))
        addr_a, addr_b = f"10.{self.octet}.{self.k}.1", f"10.{self.octet}.{self.k}.2"
        for ns, iface, addr in ((a, ia, addr_a), (b, ib, addr_b)):
            if ns is not None:
                sh("ip", "link", "set", iface, "netns", ns)
            prefix = ["ip", "-n", ns] if ns else ["ip"]
            sh(*prefix, "addr", "add", f"{addr}/30", "dev", iface)
            sh(*prefix, "link", "set", iface, "up")
        if a is not None:
            self.links[-1] = (a, ia)
        return addr_a, addr_b, ia

    def run(self, ns: str, args: list[str], env: dict, log: Path) -> subprocess.Popen:
        out = open(log, "ab")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(ROOT / "run.py"), *args],
                                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                self.kill(proc)
            self.kill(proc)  # what its group left behind (uWSGI's processes)
        for ns, iface in self.links:
            sh(*(["ip", "-n", ns] if ns else ["ip"]), "link", "del", iface, check=False)
        for name in self.names:
            sh("ip", "netns", "del", name, check=False)


def wait_for(what, timeout: float, message: str):
    """What `what()` returns once it is truthy (a request that fails counts as not yet)."""
    last: list = [None]

    def attempt():
        try:
            last[0] = what()
        except requests.RequestException as exc:
            last[0] = exc
            return None
        return last[0]
    try:
        return wait_until(attempt, timeout, interval=0.5)
    except AssertionError:
        raise TimeoutError(f"{message} (last: {last[0]})") from None


@pytest.mark.timeout(900)
def test_broker_workers_and_a_front_on_separate_hosts(faces_dir, tmp_path):
    hosts = Hosts()
    admin = secrets.token_urlsafe(24)
    data, keys = tmp_path / "broker", tmp_path / "keys"
    env = {**os.environ, "FR_HEARTBEAT_S": "0.5", "FR_HEARTBEAT_LIVENESS": "4", "FR_CHUNK_PHOTOS": "1",
           "FR_ADMIN_KEY": admin, "FR_LOG_LEVEL": "DEBUG", "PYTHONPATH": str(ROOT)}
    try:
        broker_ns, w1_ns, w2_ns = hosts.host("b"), hosts.host("w1"), hosts.host("w2")
        front_ns, bad_ns = hosts.host("f"), hosts.host("x")
        b_for_w1, w1_addr, w1_link = hosts.link(broker_ns, w1_ns)
        b_for_w2, _, _ = hosts.link(broker_ns, w2_ns)
        b_for_front, _, _ = hosts.link(broker_ns, front_ns)
        b_for_bad, _, _ = hosts.link(broker_ns, bad_ns)
        _, front_addr, _ = hosts.link(None, front_ns)  # the client (this test) reaches the front only
        assert w1_addr

        # keys as an operator makes them: the broker's, a front and a worker pair allowed; a stranger's not
        subprocess.run([sys.executable, str(ROOT / "run.py"), "init", "--data-dir", str(data), "--export",
                        str(keys)], env=env, check=True, capture_output=True)
        subprocess.run([sys.executable, str(ROOT / "run.py"), "worker-key", "create", str(keys / "stranger")],
                       env=env, check=True, capture_output=True)
        shutil.copyfile(data / "var" / "keys" / "broker.key", keys / "stranger" / "broker.key")

        broker_env = {**env, "FR_BROKER_BACK": f"tcp://0.0.0.0:{BACK_PORT}",
                      "FR_BROKER_FRONT_TCP": f"tcp://0.0.0.0:{FRONT_PORT}"}
        broker = hosts.run(broker_ns, ["broker", "--data-dir", str(data)], broker_env, tmp_path / "broker.out")
        workers = {}
        for ns, addr, name in ((w1_ns, b_for_w1, "w1"), (w2_ns, b_for_w2, "w2")):
            # dlib embeds (~30x slower than TensorFlow, the same numbers): the build must still be
            # extracting when w1's host goes; with TensorFlow a small build ends within a second
            workers[name] = hosts.run(ns, ["worker", "--connect", f"tcp://{addr}:{BACK_PORT}", "--keys",
                                           str(keys / "worker"), "--data-dir", str(tmp_path / name)],
                                      {**env, "FR_EMBEDDER": "dlib"}, tmp_path / f"{name}.out")
        stranger = hosts.run(bad_ns, ["worker", "--connect", f"tcp://{b_for_bad}:{BACK_PORT}", "--keys",
                                      str(keys / "stranger"), "--data-dir", str(tmp_path / "x")], env,
                             tmp_path / "stranger.out")
        hosts.run(front_ns, ["web", "--broker", f"tcp://{b_for_front}:{FRONT_PORT}", "--keys", str(keys / "front"),
                             "--host", "0.0.0.0", "--port", str(HTTP_PORT), "--data-dir", str(tmp_path / "front")],
                  env, tmp_path / "front.out")
        url, head = f"http://{front_addr}:{HTTP_PORT}", {"X-API-Key": admin}

        def alive():
            r = requests.get(url + "/is_alive", timeout=5)
            body = r.json()
            return body if r.status_code == 200 and body["workers"] == 2 and not body.get("warming") else None
        wait_for(alive, 240, "the remote front never saw both workers ready")
        # the stranger has tried all along (it says READY, then heartbeats, from its start) and has warmed up
        # as the others did: it is still not counted
        wait_for(lambda: "warmed up" in (tmp_path / "stranger.out").read_text(errors="replace"), 240,
                 "the stranger worker never ran")
        assert requests.get(url + "/is_alive", timeout=5).json()["workers"] == 2

        people = pick_people(faces_dir, 3, 16)
        train = {name: paths[:15] for name, paths in people.items()}
        parts = [("images", (n, d, "image/jpeg")) for n, d in photo_files(train)]
        r = requests.post(url + "/build_recognizer", files=parts, headers=head, timeout=120)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]

        # mid-build: w1's host drops off the network, then is gone altogether
        wait_for(lambda: requests.get(f"{url}/is_available/{job_id}", headers=head, timeout=10).json()
                 ["progress"]["done"] >= 2, 300, "the build never started extracting")
        sh("ip", "-n", broker_ns, "link", "del", w1_link)
        hosts.kill(workers["w1"])
        sh("ip", "netns", "del", w1_ns)
        hosts.names.remove(w1_ns)

        state = wait_for(lambda: (lambda s: s if s["state"] in ("done", "failed") else None)(
            requests.get(f"{url}/is_available/{job_id}", headers=head, timeout=10).json()), 600,
            "the build did not finish")
        assert state["state"] == "done", state

        log = (data / "var" / "logs" / "broker.log").read_text()
        w1_pid, w2_pid = workers["w1"].pid, workers["w2"].pid
        assert f":{w1_pid}:" in log and f":{w2_pid}:" in log  # both remote workers took tasks
        assert any(f":{w1_pid}:" in line and " lost (" in line for line in log.splitlines())  # w1 declared lost
        assert f":{stranger.pid}:" not in log  # the stranger's key never got past the handshake
        assert stranger.poll() is None  # (it kept trying all along)

        name, paths = next(iter(people.items()))
        r = requests.post(f"{url}/models/{job_id}/predict", headers=head, timeout=120,
                          files={"image": ("probe.jpg", paths[15].read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        assert [f["label"] for f in r.json()["faces"]] == [name], r.json()
        assert broker.poll() is None
    finally:
        hosts.cleanup()
        left = sh("ip", "netns", "list", check=False).stdout
        assert f"fr{hosts.tag}" not in left, f"namespaces left behind: {left}"
