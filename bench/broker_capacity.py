"""How much work one broker can hand out: the real broker process, N simulated workers over real sockets.

    python bench/broker_capacity.py [--workers 10 50 200] [--tasks 3000] [--idle-s 10]

The broker is `python run.py broker` (its own process, its own data dir, CURVE on both sockets, the
store on disk as in production). The workers are DEALER sockets in this process speaking the real
protocol with an allowed CURVE key (READY, HEARTBEAT every FR_HEARTBEAT_S, DONE with a result the
broker checks): their tasks take no time, so what is measured is the broker. Builds are submitted on the
front socket like the HTTP front does, with FR_CHUNK_PHOTOS=1 so that each photo is one extract task.

Printed, for each number of workers:
  - tasks/s: extract tasks dispatched and answered per second, over all the builds (the train task of
    each build included), from the first task handed out to the last result taken;
  - tasks/CPU-s: the same tasks per second of the broker's own CPU time: what one core given to the
    broker alone would dispatch;
  - heartbeats: the broker's CPU (user + system, from /proc) while N workers heartbeat at 1 s and no
    build runs, as a share of one core; the baseline is the same broker with no worker at all.
This process runs the simulated workers and competes with the broker for the cores: the figures are a
lower bound of the broker's capacity on this machine.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.wire import curve as keys
from app.wire import protocol as p
from constants import Settings
from test.stack import free_port

FEATURE = {"faces": 1, "box": [0, 0, 10, 10], "embedding": [0.01] * 128, "skipped": None, "detail": None,
           "others": None, "cached": False, "key": None, "seconds": 0.0}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tiny_bundle(job_id: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("manifest.json", json.dumps({"model_id": job_id}))
        zf.writestr("model.keras", b"x")
        zf.writestr("labels.json", "[]")
    return buf.getvalue()


class Broker:
    def __init__(self, data: Path, heartbeat_s: float):
        self.s = Settings.from_env(data_dir=data, broker_back=f"tcp://127.0.0.1:{free_port()}",
                                   heartbeat_s=heartbeat_s, chunk_photos=1, max_active_builds=10_000,
                                   warm_up=False)
        env = {**os.environ, "FR_DATA_DIR": str(data), "FR_BROKER_BACK": self.s.broker_back,
               "FR_HEARTBEAT_S": str(heartbeat_s), "FR_CHUNK_PHOTOS": "1", "FR_MAX_ACTIVE_BUILDS": "10000",
               "FR_LOG_LEVEL": "WARNING", "FR_MIN_FREE_BYTES": "0"}
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "broker", "--data-dir", str(data)],
                                     env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not (self.s.keys_dir / "local-front" / "front.key_secret").exists() or not Path(
                self.s.front_endpoint[len("ipc://"):]).exists():
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the broker did not start")
            time.sleep(0.1)
        self.front = keys.client_socket(zmq.Context.instance(), zmq.REQ, self.s.keys_dir / "local-front", "front")
        self.front.setsockopt(zmq.LINGER, 0)
        self.front.connect(self.s.front_endpoint)

    def call(self, frames: list[bytes]) -> dict:
        self.front.send_multipart(frames)
        if not self.front.poll(60_000):
            raise RuntimeError("the broker did not answer")
        command, header, _ = p.unpack(self.front.recv_multipart())
        if command != p.OK:
            raise RuntimeError(f"broker refused: {header}")
        return header

    def submit(self, n_photos: int) -> str:
        job_id = str(uuid.uuid4())
        files = [{"label": f"p{i % 10}", "filename": f"p{i % 10}/{i}.jpg"} for i in range(n_photos)]
        self.call(p.pack(p.SUBMIT, {"id": job_id, "files": files}, [b"photo%d" % i for i in range(n_photos)]))
        return job_id

    def stop(self) -> None:
        self.front.close(0)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Workers:
    """N simulated workers in one poll loop: heartbeats on time, every task answered at once."""

    def __init__(self, broker: Broker, n: int, heartbeat_s: float):
        ctx = zmq.Context.instance()
        self.heartbeat_s = heartbeat_s
        self.socks = []
        for i in range(n):
            sock = keys.client_socket(ctx, zmq.DEALER, broker.s.keys_dir / "local-worker", "worker")
            sock.setsockopt(zmq.IDENTITY, f"sim:{i}:{uuid.uuid4().hex[:6]}".encode())
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(broker.s.broker_back)
            sock.send_multipart(p.pack(p.READY))
            self.socks.append(sock)
        self.poller = zmq.Poller()
        for sock in self.socks:
            self.poller.register(sock, zmq.POLLIN)
        self.next_beat = time.monotonic() + heartbeat_s
        self.tasks = 0
        self.first_task: float | None = None
        self.last_result = 0.0
        self.done_jobs: set[str] = set()
        self.results: dict[int, bytes] = {}  # features of n photos, encoded once (the workers take no time)

    def step(self, timeout_ms: int = 50) -> None:
        for sock, _ in self.poller.poll(timeout_ms):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if frames[0] != p.JOB:
                    continue
                header = json.loads(frames[1])
                task = header["task"]
                if self.first_task is None:
                    self.first_task = time.monotonic()
                if task["kind"] == "extract":
                    n = len(header["files"])
                    result = self.results.get(n) or self.results.setdefault(n, json.dumps([FEATURE] * n).encode())
                else:
                    result = tiny_bundle(task["job"])
                    self.done_jobs.add(task["job"])
                sock.send_multipart(p.pack(p.DONE, {"task": task}, [result]))
                self.tasks += 1
                self.last_result = time.monotonic()
        if time.monotonic() >= self.next_beat:
            for sock in self.socks:
                sock.send_multipart(p.pack(p.HEARTBEAT, {}), zmq.NOBLOCK)
            self.next_beat += self.heartbeat_s

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.step()

    def close(self) -> None:
        for sock in self.socks:
            sock.close(0)


def measure(n_workers: int, n_tasks: int, idle_s: float, heartbeat_s: float) -> dict:
    data = Path(tempfile.mkdtemp(prefix="fr-capacity-"))
    broker = Broker(data, heartbeat_s)
    workers = None
    try:
        time.sleep(1.0)
        t0, c0 = time.monotonic(), cpu_seconds(broker.proc.pid)
        time.sleep(idle_s)
        baseline = (cpu_seconds(broker.proc.pid) - c0) / (time.monotonic() - t0)
        workers = Workers(broker, n_workers, heartbeat_s)
        workers.run_for(3 * heartbeat_s)  # all joined
        status = broker.call(p.pack(p.STATUS))
        assert status["workers"] == n_workers, status
        t0, c0 = time.monotonic(), cpu_seconds(broker.proc.pid)
        workers.run_for(idle_s)
        idle = (cpu_seconds(broker.proc.pid) - c0) / (time.monotonic() - t0)
        # builds: photos spread over several jobs, as several tenants' builds would be
        per_job = 500
        jobs = [broker.submit(min(per_job, n_tasks - k)) for k in range(0, n_tasks, per_job)]
        c0 = cpu_seconds(broker.proc.pid)
        deadline = time.monotonic() + 600
        while len(workers.done_jobs) < len(jobs) and time.monotonic() < deadline:
            workers.step(5)
        assert workers.first_task is not None
        busy_cpu = cpu_seconds(broker.proc.pid) - c0
        rss = next(int(line.split()[1]) for line in Path(f"/proc/{broker.proc.pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:")) / 1024
        elapsed = workers.last_result - workers.first_task
        for job_id in jobs:  # the last results may still be in the broker's queue: wait for each to be done
            until = time.monotonic() + 30
            while (job := broker.call(p.pack(p.GETJOB, {"id": job_id}))["job"])["state"] != "done":
                assert time.monotonic() < until, job
                workers.step(20)
        return {"workers": n_workers, "tasks": workers.tasks, "seconds": elapsed,
                "tasks_per_s": workers.tasks / elapsed, "broker_cpu_s": busy_cpu,
                "idle_cpu_share": idle, "baseline_cpu_share": baseline, "rss_mb": rss}
    finally:
        if workers is not None:
            workers.close()
        broker.stop()
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[10, 50, 200])
    ap.add_argument("--tasks", type=int, default=3000, help="extract tasks per run (1 photo each)")
    ap.add_argument("--idle-s", type=float, default=10.0, help="seconds of heartbeats measured")
    ap.add_argument("--heartbeat-s", type=float, default=1.0)
    args = ap.parse_args()
    print(f"broker capacity: {args.tasks} tasks per run, heartbeat {args.heartbeat_s} s, {os.cpu_count()} cores")
    print(f"{'workers':>8} {'tasks':>6} {'seconds':>8} {'tasks/s':>8} {'broker CPU s':>13} "
          f"{'tasks/CPU-s':>11} {'heartbeat CPU':>14} {'no-worker CPU':>14} {'broker RSS MB':>14}")
    for n in args.workers:
        r = measure(n, args.tasks, args.idle_s, args.heartbeat_s)
        print(f"{r['workers']:>8} {r['tasks']:>6} {r['seconds']:>8.2f} {r['tasks_per_s']:>8.0f} "
              f"{r['broker_cpu_s']:>13.2f} {r['tasks'] / r['broker_cpu_s']:>11.0f} "
              f"{100 * r['idle_cpu_share']:>13.1f}% {100 * r['baseline_cpu_share']:>13.1f}% {r['rss_mb']:>14.0f}",
              flush=True)


if __name__ == "__main__":
    main()
