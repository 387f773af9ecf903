"""`serve`'s supervisor: the broker, N workers and uWSGI as child processes, each restarted when it dies,
all stopped together; and the uWSGI command line a front runs with."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from constants import Settings, SettingsError
from logger import logger

ROOT = Path(__file__).resolve().parents[2]  # the checkout: app.ini, run.py, and the children's cwd
STOP_GRACE_S = 8.0         # after this, whatever still runs is killed (the whole stop takes at most ~10 s)
BACKOFF_START_S, BACKOFF_MAX_S = 0.5, 30.0
STABLE_S = 30.0            # a child that ran this long starts its next restart from the smallest delay


def loopback(endpoint: str) -> str:
    """Where a local process connects to an endpoint the broker binds (a wildcard is not an address)."""
    return endpoint.replace("0.0.0.0", "127.0.0.1").replace("*", "127.0.0.1")  # noqa: S104 (not a bind)


TLS_UWSGI = Path(sys.prefix) / "uwsgi-tls" / "bin" / "uwsgi"  # `make setup-tls`: uWSGI built with OpenSSL


def uwsgi_command(s: Settings) -> list[str]:
    """uWSGI with app.ini, listening where the settings say: HTTP, or HTTPS on uWSGI's own https socket."""
    host = f"[{s.host}]" if ":" in s.host else s.host
    address = f"{host}:{s.port}"
    if s.tls_cert:
        for path in (s.tls_cert, s.tls_key):
            if not Path(path).is_file():
                raise SettingsError(f"FR_TLS_CERT/FR_TLS_KEY: no file {path}")
        if not TLS_UWSGI.exists():
            raise SettingsError("HTTPS needs a uWSGI built with OpenSSL (the prebuilt one has none): run "
                                "`make setup-tls` once, or serve HTTP on 127.0.0.1 behind a TLS proxy (README)")
        return [str(TLS_UWSGI), "--home", sys.prefix, "--ini", str(ROOT / "app.ini"),
                "--https", f"{address},{Path(s.tls_cert).resolve()},{Path(s.tls_key).resolve()}"]
    exe = Path(sys.executable).parent / "uwsgi"
    return [str(exe) if exe.exists() else "uwsgi", "--ini", str(ROOT / "app.ini"), "--http", address]


def die_with_parent() -> None:
    """In a child, before exec: SIGTERM when the process that started it dies (Linux), so no child outlives
    its supervisor (or a test's stack its test run)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    failures: int = 0          # quick deaths in a row: the restart delay doubles with each
    restart_at: float = 0.0


class Supervisor:
    """Starts the broker, N workers and uWSGI; restarts a child that dies, with exponential backoff;
    on SIGTERM/SIGINT stops them all, killing whatever has not stopped within STOP_GRACE_S.

    Each child runs in a process group of its own (uWSGI's workers with it), so a stop can always reach
    every process, and gets SIGTERM from the kernel if the supervisor itself dies.
    """

    def __init__(self, s: Settings, n_workers: int):
        self.s, self.n_workers = s, n_workers
        # one mechanism for every child: the whole Settings, command-line flags included, as FR_* variables
        # (each child reads them with Settings.from_env, as when it is started alone)
        # glibc keeps each thread's malloc arena at its peak: 2 arenas bound what 16 request threads (or a
        # worker's task threads) keep after large photos (docs/memory.md); the operator's own value wins
        self.env = {"MALLOC_ARENA_MAX": "2", **os.environ, **s.to_env(),
                    "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        py = [sys.executable, str(ROOT / "run.py")]
        self.children = [Child("broker", [*py, "broker"]), Child("web", uwsgi_command(s))]
        self.children += [Child(f"worker{i}", [*py, "worker", "--slot", str(i + 1)])
                          for i in range(n_workers)]
        self.stopping = False

    def start(self, child: Child) -> None:
        child.proc = subprocess.Popen(child.argv, env=self.env, cwd=ROOT, start_new_session=True,
                                      preexec_fn=die_with_parent)
        child.started = time.monotonic()
        logger.info("started {} (pid {})", child.name, child.proc.pid)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for child in self.children:
            self.start(child)
        logger.info("serving on http://{}:{} with {} worker(s); data in {}", self.s.host, self.s.port,
                    self.n_workers, self.s.data_dir)
        while not self.stopping:
            time.sleep(0.2)
            for child in self.children:
                self.watch(child)
        return 0

    def watch(self, child: Child) -> None:
        """Restart a child that died, after a delay that doubles while it keeps dying quickly."""
        now = time.monotonic()
        if child.proc is not None and child.proc.poll() is not None and not self.stopping:
            lived = now - child.started
            child.failures = child.failures + 1 if lived < STABLE_S else 1
            delay = min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** (child.failures - 1))
            logger.warning("{} (pid {}) {} after {:.1f} s; restarting in {:.1f} s", child.name, child.proc.pid,
                           describe_exit(child.proc.returncode), lived, delay)
            self.kill_group(child)  # whatever it left behind (uWSGI workers) goes with it
            child.proc, child.restart_at = None, now + delay
        if child.proc is None and now >= child.restart_at and not self.stopping:
            self.start(child)

    @staticmethod
    def kill_group(child: Child) -> None:
        if child.proc is not None:
            try:
                os.killpg(child.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, *_) -> None:
        if self.stopping:
            return
        self.stopping = True
        logger.info("stopping")
        running = [(c.name, c.proc) for c in self.children if c.proc is not None and c.proc.poll() is None]
        for name, proc in running:
            # uWSGI: SIGINT is its quick stop; our Python processes stop on SIGTERM
            proc.send_signal(signal.SIGINT if name == "web" else signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for name, proc in running:
            try:
                proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("{} (pid {}) did not stop within {:.0f} s; killing it", name, proc.pid, STOP_GRACE_S)
        for child in self.children:
            self.kill_group(child)  # survivors of a stopped child (its group) and children that did not stop
            if child.proc is not None:
                child.proc.wait()
