"""Start and drive the real service (uWSGI + broker + workers) for end-to-end tests."""
from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import requests

from app.cli.supervisor import die_with_parent
from test.waits import wait_until

ROOT = Path(__file__).resolve().parent.parent


# Ports are picked below Linux's ephemeral range (32768-60999 by default): a port the kernel
# hands out (bind to port 0) can be given to another process's outgoing connection between
# this check and the service binding it; seen once as the broker's "Address already in use".
PORT_RANGE = (20000, 32000)


def bindable(port: int) -> bool:
    """Nobody listens on `port` (127.0.0.1) right now."""
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False


def free_port() -> int:
    """A port that is free now, outside the range the kernel assigns by itself."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(*PORT_RANGE)
        if bindable(port):
            return port
    raise RuntimeError("no free port")


def free_port_pair() -> int:
    """A port p such that p and p+1 are free (broker front and back)."""
    for _ in range(50):
        p = free_port()
        if bindable(p + 1):
            return p
    raise RuntimeError("no free port pair")


# Lines that mean uWSGI killed or lost a web process: a test whose stack logs one fails (test/conftest.py),
# so a crash that the supervisor or uWSGI papered over can never pass silently.
UWSGI_ALARMS = ("HARAKIRI", "DAMN ! worker", "Respawned uWSGI worker")
STACKS: list = []  # stacks started by this test session (conftest checks their logs after every test)


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (zombies count as gone)."""
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out


_SEEDS: dict[str, Path] = {}  # the ONNX graph this session converted, by embedder weights (seed_models)
_SEEDS_LOCK = threading.Lock()


def seed_models(data_dir: Path) -> None:
    """Put the ONNX graph of dlib's ResNet, converted once per test session, in a new data dir's models
    folder, as a host that ran the service before has it: otherwise each process of every stack converts
    the .dat again on its first start (seconds of CPU per stack, on a 2-core machine that starts dozens).
    A copy, not a link: a test that damages its cache damages only its own. Not on a disk where the service
    would not have cached it either (less free than the graph plus CACHE_KEEPS_FREE: the small-disk tests,
    whose 40 MB it would have half filled)."""
    from constants import Settings
    from features.embeddings import resnet_model_path
    from features.resnet_onnx import CACHE_KEEPS_FREE, graph_path, write_graph
    dat = resnet_model_path()
    with _SEEDS_LOCK:
        if dat not in _SEEDS or not _SEEDS[dat].is_file():
            _SEEDS[dat] = write_graph(dat, Path(tempfile.mkdtemp(prefix="fr-models-")))
    seed, target = _SEEDS[dat], graph_path(dat, Settings.from_env(data_dir=data_dir).models_dir)
    if not seed.is_file() or target.exists() or \
            shutil.disk_usage(data_dir).free < seed.stat().st_size + CACHE_KEEPS_FREE:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(seed, target)


def forget_seeds() -> None:
    """Remove the session's converted graph (seed_models) at its end."""
    with _SEEDS_LOCK:
        for seed in _SEEDS.values():
            shutil.rmtree(seed.parent, ignore_errors=True)
        _SEEDS.clear()


class Stack:
    """`python run.py serve` on free ports with its own data dir.

    `warm`: `start` also waits until no worker is still loading its models (benchmarks).
    """

    def __init__(self, data_dir: Path, workers: int = 2, env: dict | None = None, warm: bool = False):
        self.data_dir = Path(data_dir)
        self.workers = workers
        self.warm = warm
        self.port = free_port()
        self.broker_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # every test talks to the service with an API key (an admin key given as the operator would)
        self.admin_key = secrets.token_urlsafe(32)
        # Heartbeats every 0.5 s, a worker declared lost after 10 s of silence: a worker whose task holds the
        # GIL (dlib) on a loaded machine misses beats; with 2 s (liveness 4) such workers were "lost" and
        # "joined" again over and over, their tasks moved and their results dropped (seen under a load of 24).
        self.env = {**os.environ, "FR_HEARTBEAT_S": "0.5", "FR_HEARTBEAT_LIVENESS": "20",
                    "FR_LOG_LEVEL": os.environ.get("FR_LOG_LEVEL", "INFO"), "FR_ADMIN_KEY": self.admin_key,
                    **(env or {})}
        self.headers = {"X-API-Key": self.env["FR_ADMIN_KEY"]}
        self.proc: subprocess.Popen | None = None
        self.log = self.data_dir / "serve.out"
        self.alarms_seen = 0  # UWSGI_ALARMS lines already reported
        self.survivors: set[int] = set()  # processes that outlived the stop (then killed)

    def start(self, timeout: float = 60, healthy: bool = True) -> Stack:
        """Start and wait for the workers to connect (and, with `healthy`, for /is_alive to answer 200)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        seed_models(self.data_dir)
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(self.workers), "--data-dir", str(self.data_dir), "--broker-port", str(self.broker_port)],
            env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent)  # a test run killed before its teardown leaves no stack behind
        STACKS.append(self)
        try:
            self.wait_alive(self.workers, timeout, self.warm, healthy)
        except BaseException:
            self.stop()  # a stack that never came up must not outlive its test (and load the ones after it)
            raise
        return self

    def wait_alive(self, workers: int, timeout: float = 60, warm: bool = False, healthy: bool = True) -> dict:
        """Until `workers` workers are connected (and, with `warm`, none is still loading its models;
        with `healthy`, /is_alive answers 200)."""
        last: dict = {}

        def ready() -> dict | None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited early; see {self.log}:\n{self.tail()}")
            try:
                r = requests.get(self.url + "/is_alive", timeout=5)
                last.update(r.json())
            except requests.RequestException:
                return None
            return dict(last) if (r.status_code == 200 or not healthy) and last["workers"] >= workers \
                and not (warm and last.get("warming")) else None
        try:
            return wait_until(ready, timeout, interval=0.3)
        except AssertionError:
            raise TimeoutError(f"service not alive with {workers} workers (last: {last}):\n{self.tail()}") from None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM to `serve`, as an operator stops it; it must take everything down within its 10 s.
        Whatever outlives that is killed here and kept in `survivors` (a test can assert there are none)."""
        if self.proc is None:
            return
        tree = descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:  # `serve` has exited: its children go with it (they are given 3 s more here)
            wait_until(lambda: not alive(tree), 3)
        except AssertionError:
            pass
        self.survivors |= alive(tree)
        for pid in self.survivors:  # leave no orphans behind for the tests that follow
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def alarms(self) -> list[str]:
        """UWSGI_ALARMS lines logged since the last call."""
        lines = [line for line in self.log.read_text(errors="replace").splitlines()
                 if any(a in line for a in UWSGI_ALARMS)] if self.log.exists() else []
        new, self.alarms_seen = lines[self.alarms_seen:], len(lines)
        return new

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # --- API helpers -------------------------------------------------------------
    def request(self, method: str, path: str, key: str | None = None, headers: dict | None = None,
                **kw) -> requests.Response:
        """`method` on `path` of this service, with the admin key (or `key`; "" for none)."""
        auth = self.headers if key is None else ({"X-API-Key": key} if key else {})
        return requests.request(method, self.url + path, headers={**auth, **(headers or {})}, **kw)

    def get(self, path: str, **kw) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return self.request("POST", path, **kw)

    def delete(self, path: str, **kw) -> requests.Response:
        return self.request("DELETE", path, **kw)

    def build(self, files: list[tuple[str, bytes]], **form) -> requests.Response:
        """files: (filename with person folder, bytes)."""
        parts = [("images", (name, data, "application/octet-stream")) for name, data in files]
        return self.post("/build_recognizer", files=parts, data=form, timeout=120)

    def status(self, job_id: str) -> dict:
        return self.get(f"/is_available/{job_id}", timeout=60).json()

    def wait_state(self, job_id: str, states: tuple[str, ...], timeout: float = 300, pred=None) -> dict:
        """The job's status once its state is one of `states` (and `pred` holds); AssertionError as soon as
        it ends otherwise, TimeoutError after `timeout`."""
        last: dict = {}

        def reached() -> dict | None:
            last.clear()
            try:
                last.update(self.status(job_id))
            except (requests.RequestException, ValueError):  # a loaded service answers later: not yet
                return None
            if last.get("state") in ("done", "failed") and last["state"] not in states:
                raise AssertionError(f"job ended {last['state']}: {last}")
            return dict(last) if last.get("state") in states and (pred is None or pred(last)) else None
        try:
            return wait_until(reached, timeout, interval=0.25)
        except AssertionError as exc:
            if str(exc).startswith("job ended"):
                raise
            raise TimeoutError(f"job {job_id} not in {states} after {timeout}s: {last}\n{self.tail()}") from None


class Stacks:
    """The one factory for the stacks tests start (test/conftest.py hands it out as `stacks`, stopped when
    the test ends, and `module_stacks`, stopped when the module ends): each stack in a folder of its own
    (or the one given, to start a service again on the same data), and every one it started is stopped
    when its owner's scope ends, whatever the test did."""

    def __init__(self, mktemp: Callable[[str], Path]):
        self.mktemp = mktemp
        self.made: list[Stack] = []

    def make(self, name: str = "stack", *, data_dir: Path | None = None, workers: int = 1,
             env: dict | None = None, warm: bool = False, warm_up: bool = True) -> Stack:
        """A stack not started yet (for a test that changes its env or url first); stopped with the others.
        `warm_up=False`: its processes load dlib, the embedder and Keras on first use (FR_WARM_UP=0), not all
        at once when they start, for a test that uses them little or not at all (each warm-up is seconds
        of CPU, and most tests' stacks are started on a 2-core machine)."""
        env = {**({} if warm_up else {"FR_WARM_UP": "0"}), **(env or {})}
        stack = Stack(data_dir if data_dir is not None else self.mktemp(name), workers=workers, env=env, warm=warm)
        self.made.append(stack)
        return stack

    def start(self, name: str = "stack", *, data_dir: Path | None = None, workers: int = 1, env: dict | None = None,
              warm: bool = False, warm_up: bool = True, healthy: bool = True, timeout: float = 120) -> Stack:
        """A running stack: `workers` workers connected (and, with `healthy`, /is_alive answering 200)."""
        return self.make(name, data_dir=data_dir, workers=workers, env=env, warm=warm,
                         warm_up=warm_up).start(timeout, healthy)

    def close(self) -> None:
        """Stop every stack this factory made, in the background: a stop is seconds of waiting (uWSGI buries
        its processes), which the next test need not spend idle. Each stack's data dir and ports are its own,
        so nothing of the next test meets it; `join_stopping` waits for them all (test/conftest.py, at the
        end of the session), and their logs are still searched for alarms (conftest's no_uwsgi_alarms)."""
        for stack in reversed(self.made):
            thread = threading.Thread(target=stack.stop, name=f"stop {stack.data_dir}")
            thread.start()
            STOPPING.append(thread)


STOPPING: list[threading.Thread] = []  # stops still running in the background (Stacks.close)


def join_stopping() -> None:
    """Wait for every stack stopped in the background (each stop ends within its own bounded waits)."""
    while STOPPING:
        STOPPING.pop().join()


def gone(path: Path, timeout: float = 10) -> bool:
    """`path` no longer exists, within `timeout`: the broker marks a job done, then deletes its
    uploads, so a client that sees `done` may still find them for a moment."""
    try:
        return wait_until(lambda: not path.exists(), timeout, interval=0.05)
    except AssertionError:
        return False


def photo_files(people: dict[str, list[Path]]) -> list[tuple[str, bytes]]:
    return [(f"{person}/{p.name}", p.read_bytes()) for person, paths in people.items() for p in paths]


# --- raw HTTP, for the edge's tests and benches ----------------------------------------------------
def raw_request(port: int, head: str) -> socket.socket:
    """A connection that has sent `head` (request line and headers, or more)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head.encode())
    return sock


def response_of(sock: socket.socket, timeout: float) -> bytes:
    """What comes back on a raw connection: until a JSON body ends, the peer closes, or `timeout`."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and data.split(b"\r\n\r\n", 1)[1].rstrip().endswith(b"}"):
                break
    except (TimeoutError, ConnectionError):
        pass
    return data


class SlowBodies:
    """`n` builds whose bodies arrive at one byte a second (with the admin key), for as long as the
    `with` block lasts: the slow clients of test_edge.py and bench/slow_clients.py."""

    def __init__(self, stack: Stack, n: int, length: int = 100_000):
        self.head = (f"POST /build_recognizer HTTP/1.1\r\nHost: x\r\nX-API-Key: {stack.admin_key}\r\n"
                     f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {length}\r\n\r\n")
        self.port, self.n = stack.port, n
        self.socks: list[socket.socket] = []
        self.stop = threading.Event()
        self.feeder = threading.Thread(target=self.trickle, daemon=True)

    def __enter__(self) -> SlowBodies:
        self.socks = [raw_request(self.port, self.head) for _ in range(self.n)]
        self.feeder.start()
        return self

    def trickle(self) -> None:
        while not self.stop.is_set():
            for s in self.socks:
                try:
                    s.send(b"x")
                except OSError:
                    pass
            self.stop.wait(1.0)

    def replies(self, timeout: float) -> list[bytes]:
        return [response_of(s, timeout) for s in self.socks]

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.feeder.join(5)
        for s in self.socks:
            s.close()


class BrokerThread:
    """The real broker in a thread of the test's own process, for tests that drive a front with Flask's
    client: a front keeps nothing and asks its broker for every row, listing, bundle and key."""

    def __init__(self, settings):
        self.settings = settings
        self.broker = None
        self.thread = None

    def __enter__(self):
        import threading

        import zmq

        from app.broker.loop import Broker
        self.broker = Broker(self.settings, zmq.Context())
        self.thread = threading.Thread(target=self.broker.run, daemon=True)
        self.thread.start()
        return self.broker

    def __exit__(self, *exc) -> None:
        self.broker.running = False
        self.thread.join(5)
        self.broker.close()


def self_signed_cert(folder: Path, ip: str) -> tuple[Path, Path]:
    """(cert.pem, key.pem) for `ip`, made with openssl in `folder`; the test is skipped (failed under CI) where
    uWSGI with OpenSSL (`make setup-tls`) or the openssl command is missing."""
    import pytest

    from app.cli.supervisor import TLS_UWSGI
    if not TLS_UWSGI.exists():
        if os.environ.get("CI"):
            pytest.fail("make test builds uWSGI with OpenSSL (make setup-tls); it is missing")
        pytest.skip("no uWSGI built with OpenSSL here: run `make setup-tls`")
    if not shutil.which("openssl"):
        pytest.skip("no openssl command to make a certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", f"subjectAltName=IP:{ip}"],
                   check=True, capture_output=True)
    return cert, key
