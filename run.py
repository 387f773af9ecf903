#!/usr/bin/env python
"""Command line: `serve` (everything), `broker`, `worker`, `web` (uWSGI only), `predict` (offline).

    python run.py serve --port 8080 --workers 2 --data-dir .
    python run.py worker --connect tcp://HOST:5556
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from constants import Settings  # noqa: E402
from logger import logger, setup_logging  # noqa: E402


def _settings(args, **extra) -> Settings:
    over = dict(extra)
    if getattr(args, "data_dir", None):
        over["data_dir"] = Path(args.data_dir)
    return Settings.from_env(**over)


def cmd_broker(args) -> None:
    from app.broker import run_broker
    s = _settings(args)
    s.ensure_dirs()
    setup_logging("broker", s.log_dir, s.log_level, s.log_rotation, s.log_retention)
    run_broker(s)


def loopback(endpoint: str) -> str:
    """Where a local process connects to an endpoint the broker binds (a wildcard is not an address)."""
    return endpoint.replace("0.0.0.0", "127.0.0.1").replace("*", "127.0.0.1")  # noqa: S104 (not a bind)


def cmd_worker(args) -> None:
    s = _settings(args)
    # Before numpy loads: with one worker per core, OpenBLAS' own threads only fight over the
    # cores (measured: search candidates 3.3x slower with 2 workers x 2 BLAS threads).
    # TensorFlow (the embedder, the final training) likewise: its intra-op pool sized to the
    # worker's share of the cores, one inter-op thread (a task runs one graph at a time).
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ.setdefault(var, str(s.worker_threads))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    from app.worker import run_worker
    setup_logging("worker", s.log_dir, s.log_level, s.log_rotation, s.log_retention, args.slot)
    run_worker(s, args.connect or loopback(s.broker_back))


def uwsgi_command() -> list[str]:
    exe = Path(sys.executable).parent / "uwsgi"
    return [str(exe) if exe.exists() else "uwsgi", "--ini", str(ROOT / "app.ini")]


class Supervisor:
    """Starts the broker, N workers and uWSGI; restarts any that dies; stops all on SIGTERM/SIGINT."""

    def __init__(self, s: Settings, n_workers: int):
        self.s, self.n_workers = s, n_workers
        self.env = {**os.environ, "FR_DATA_DIR": str(s.data_dir), "FR_PORT": str(s.port), "FR_HOST": s.host,
                    "FR_BROKER_FRONT": s.broker_front, "FR_BROKER_BACK": s.broker_back,
                    "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        py = [sys.executable, str(ROOT / "run.py")]
        connect = loopback(s.broker_back)
        self.specs = {"broker": py + ["broker"], "web": uwsgi_command()}
        for i in range(n_workers):
            self.specs[f"worker{i}"] = py + ["worker", "--connect", connect, "--slot", str(i + 1)]
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopping = False

    def start(self, name: str) -> None:
        self.procs[name] = subprocess.Popen(self.specs[name], env=self.env, cwd=ROOT)
        logger.info("started {} (pid {})", name, self.procs[name].pid)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for name in self.specs:
            self.start(name)
        logger.info("serving on http://{}:{} with {} worker(s); data in {}", self.s.host, self.s.port,
                    self.n_workers, self.s.data_dir)
        while not self.stopping:
            time.sleep(0.5)
            for name, proc in list(self.procs.items()):
                if proc.poll() is not None and not self.stopping:
                    logger.warning("{} (pid {}) exited with {}; restarting", name, proc.pid, proc.returncode)
                    time.sleep(0.5)
                    self.start(name)
        return 0

    def stop(self, *_):
        if self.stopping:
            return
        self.stopping = True
        logger.info("stopping")
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT if proc.args[0].endswith("uwsgi") else signal.SIGTERM)
        deadline = time.time() + 10
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()


def cmd_serve(args) -> None:
    over = {"port": args.port, "workers": args.workers, "host": args.host}
    if args.broker_port:
        over["broker_front"] = f"tcp://127.0.0.1:{args.broker_port}"
        over["broker_back"] = f"tcp://127.0.0.1:{args.broker_port + 1}"
    s = _settings(args, **over)
    s.ensure_dirs()
    setup_logging("serve", s.log_dir, s.log_level, s.log_rotation, s.log_retention)
    sys.exit(Supervisor(s, s.workers).run())


def cmd_web(args) -> None:
    s = _settings(args, port=args.port)
    env = {**os.environ, "FR_DATA_DIR": str(s.data_dir), "FR_PORT": str(s.port), "FR_HOST": s.host}
    os.execvpe(uwsgi_command()[0], uwsgi_command(), env)  # noqa: S606 (our own argument list)


def cmd_predict(args) -> None:
    """Name the faces in photos with a downloaded bundle; prints JSON. No service needed."""
    import json

    from modelization.recognizer import load_bundle
    from preprocessor.errors import InputError
    s = Settings.from_env()
    setup_logging("predict", None, "WARNING")
    recognizer = load_bundle(args.model, s)
    results = []
    for photo in args.photos:
        try:
            faces = recognizer.predict(Path(photo).read_bytes(), args.threshold)
            results.append({"photo": photo, "count": len(faces), "faces": [f.as_dict() for f in faces]})
        except (OSError, InputError) as exc:
            code = getattr(exc, "code", "UNREADABLE")
            results.append({"photo": photo, "error": {"code": code, "message": str(exc)}})
    threshold = recognizer.threshold if args.threshold is None else args.threshold
    print(json.dumps({"model": args.model, "threshold": threshold, "results": results}, ensure_ascii=False,
                     indent=1))
    sys.exit(1 if any("error" in r for r in results) else 0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="HTTP front + broker + workers, supervised")
    p.add_argument("--port", type=int, help="HTTP port (default 8080, FR_PORT)")
    p.add_argument("--host", help="HTTP address to bind (default 0.0.0.0, FR_HOST)")
    p.add_argument("--workers", type=int, help="worker processes (default 2, FR_WORKERS)")
    p.add_argument("--data-dir", help="where all state lives (default: this folder, FR_DATA_DIR)")
    p.add_argument("--broker-port", type=int, help="broker front port; workers connect to the next one")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("broker", help="the ZeroMQ broker alone")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("worker", help="one worker, connecting to a broker")
    p.add_argument("--connect", help="broker back endpoint, e.g. tcp://HOST:5556")
    p.add_argument("--data-dir", help="where the feature cache lives")
    p.add_argument("--slot", type=int, help="number of this worker on its host: logs go to worker-<slot>.log")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("web", help="the HTTP front alone (uWSGI)")
    p.add_argument("--port", type=int)
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_web)

    p = sub.add_parser("predict", help="name the faces in photos with a model bundle (offline)")
    p.add_argument("--model", required=True, help="a bundle downloaded from /models/<id>")
    p.add_argument("--threshold", type=float, help="open-set distance threshold (default: the bundle's)")
    p.add_argument("photos", nargs="+")
    p.set_defaults(func=cmd_predict)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
