#!/usr/bin/env python
"""Worker memory across builds in a row, through the real service.

    python bench/memory_builds.py [--builds 10] [--workers 2] [--embedder tensorflow dlib] [--fresh]
                                  [--requests 300] [--clients 16]
    python bench/memory_builds.py --scenario [--embedder tensorflow onnx] [--baseline REV]
                                  [--requests 500] [--latency 40]

`--scenario` (issue #24): the whole of `run.py serve` (supervisor, broker, workers, uWSGI's master,
HTTP router and web processes), for each `--embedder` (and, with `--baseline REV`, the code of git
revision REV run the same way first, with its default embedder): RSS of every process once warmed up
(idle), after a build of all of `lfw62`, after `--requests` predictions; their sum, and the highest
sum seen at any point (sampled every 0.2 s from the start to the end). Beside it, in the same run,
the build's wall time and a one-client predict p50 over `--latency` requests.

Builds all of `lfw62` `--builds` times on one running service (fresh data folder: the
first build extracts every face, the next ones take the features from the cache and
train again). Prints after each build the workers' resident memory (RSS) and peak
(VmHWM), and the broker's and web processes' RSS: growth across builds is a leak.
With several `--embedder`s, one service per embedder, one after the other, in the same
run (dlib: the service as it was before TensorFlow embedded faces). `--fresh`: every
build extracts (each build's photos are made new by one byte appended after the JPEG's
end, which the decoder ignores), so the embedder runs in every build, not only the first.

Then the web processes, where predictions run (and, with the TensorFlow embedder, TensorFlow's
ResNet): each one's RSS once it has warmed up (its log says so; before any request), then after
`--requests` predictions from `--clients` concurrent clients (photos with one face, two faces, and a
1920x1080 one) on the last build's model (with `--builds 0`, a small model of 10 people built
for it), and its peak (VmHWM).
"""
from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.perf import FACES, build, descendants, latencies, memory, pct, rss_mb
from constants import EMBEDDERS, Settings
from test.stack import Stack


def archive(paths: list[Path], salt: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for p in paths:
            zf.writestr(f"{p.parent.name}/{p.name}", p.read_bytes() + salt)
    return buf.getvalue()


def web_processes(stack: Stack, n: int, timeout: float = 180) -> list[int]:
    """The pids of the `n` uWSGI processes that serve, once each has logged the end of its warm-up."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = set()
        for log in (stack.data_dir / "var" / "logs").glob("web-*.log"):
            pids |= {int(m) for m in re.findall(r"web\[(\d+)\][^\n]*web process warmed up", log.read_text())}
        if len(pids) >= n:
            return sorted(pids)
        time.sleep(0.5)
    raise TimeoutError(f"the web processes did not log their warm-up within {timeout:.0f} s")


def web_memory(pids: list[int]) -> str:
    return ", ".join(f"{rss_mb(p):.0f} (peak {rss_mb(p, 'VmHWM'):.0f})" for p in pids)


def processes(stack: Stack, webs: list[int]) -> dict[str, float]:
    """RSS (MB) of every process of the service, by role: supervisor, broker, worker1.., uwsgi master,
    web1.. (uWSGI's processes that serve: `webs`), uwsgi http (its router), other (e.g. a training child)."""
    assert stack.proc is not None
    out = {"supervisor": rss_mb(stack.proc.pid)}
    counts: dict[str, int] = {}
    for pid, cmd in sorted(descendants(stack.proc.pid)):
        try:
            ppid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if "uwsgi" in cmd:
                role = "uwsgi master" if ppid == stack.proc.pid else "web" if pid in webs else "uwsgi http"
            else:
                role = "broker" if " broker" in cmd else "worker" if " worker" in cmd else "other"
            counts[role] = counts.get(role, 0) + 1
            name = role + (str(counts[role]) if role in ("worker", "web", "other") else "")
            out[name] = rss_mb(pid)
        except (OSError, ValueError, IndexError):
            continue  # a process that ended meanwhile
    return out


class PeakSampler(threading.Thread):
    """The highest sum of RSS over the service's processes, sampled every `interval` s, and the `phase` (set by
    the caller: build, predictions, ...) it was seen in."""

    def __init__(self, stack: Stack, interval: float = 0.2):
        super().__init__(daemon=True)
        self.stack, self.interval, self.peak, self.stopped = stack, interval, 0.0, threading.Event()
        self.webs: list[int] = []
        self.phase = self.peak_phase = "start-up and idle"

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                total = sum(v for v in processes(self.stack, self.webs).values() if v == v)
                if total > self.peak:
                    self.peak, self.peak_phase = total, self.phase
            except Exception:
                pass
            self.stopped.wait(self.interval)


class RootStack(Stack):
    """The service of another checkout (a baseline revision), run the same way as Stack runs this one."""

    def __init__(self, root: Path, *args, **kw):
        super().__init__(*args, **kw)
        self.root = root

    def start(self, timeout: float = 120, healthy: bool = True) -> Stack:
        import test.stack as stack_module
        saved = stack_module.ROOT
        stack_module.ROOT = self.root
        try:
            return super().start(timeout, healthy)
        finally:
            stack_module.ROOT = saved


def checkout(rev: str, into: Path) -> Path:
    """The tree of git revision `rev` extracted into `into` (git archive: no worktree registered)."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        tf.extractall(into, filter="data")
    return into


def table(rows: dict[str, dict[str, float]]) -> str:
    names = list(dict.fromkeys(n for r in rows.values() for n in r))
    lines = ["| process | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{r[n]:.0f}" if n in r else "-" for r in rows.values()) + " |")
    lines.append("| **sum** | " + " | ".join(f"**{sum(r.values()):.0f}**" for r in rows.values()) + " |")
    return "\n".join(lines)


def cpu_seconds(stack: Stack, kind: str) -> float:
    """CPU seconds (user + system, with those of their ended children) of the service's processes whose
    command line holds `kind`: a cost the machine's load does not stretch, unlike wall time."""
    total = 0
    for pid, cmd in descendants(stack.proc.pid):
        if kind in cmd:
            try:
                fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def build_patiently(stack: Stack, data: bytes) -> tuple[float, str]:
    """bench.perf.build, whose status polls may time out on a machine loaded by others: polled again."""
    t0 = time.perf_counter()
    r = stack.post("/build_recognizer", files={"archive": ("a.zip", data)}, timeout=600)
    r.raise_for_status()
    job_id = r.json()["id"]
    while True:
        try:
            state = stack.get(f"/is_available/{job_id}", timeout=60).json().get("state")
        except requests.RequestException:
            continue
        if state == "done":
            return time.perf_counter() - t0, job_id
        if state in ("failed", "deleted"):
            raise RuntimeError(f"the build ended {state}")
        time.sleep(0.5)


def scenario(args, configs: list[tuple[str, Path, dict]]) -> None:
    """Issue #24's measure, one service per config (label, code root, environment), one after the other."""
    paths = sorted((FACES / "lfw62").glob("*/*.jpg"))
    probes = [(FACES / "lfw62" / "George_W_Bush" / "George_W_Bush_0500.jpg").read_bytes(),
              (FACES / "wild" / "two_people.jpg").read_bytes(), (FACES / "wild" / "obama-1080p.jpg").read_bytes()]
    latency_probe = (FACES / "lfw62" / "Tony_Blair" / "Tony_Blair_0001.jpg").read_bytes()
    summary = []
    for label, root, env in configs:
        with tempfile.TemporaryDirectory() as tmp:
            stack = RootStack(root, Path(tmp), workers=args.workers, warm=True, env=env)
            with stack:
                sampler = PeakSampler(stack)
                sampler.start()
                webs = sampler.webs = web_processes(stack, Settings.from_env().web_processes)
                time.sleep(2)  # the last log line is written just before its thread ends
                rows = {"idle": processes(stack, webs)}
                cpu0 = cpu_seconds(stack, " worker")
                sampler.phase = "build"
                wall, model_id = build_patiently(stack, archive(paths))
                build_cpu = cpu_seconds(stack, " worker") - cpu0
                time.sleep(1)
                rows["after the build"] = processes(stack, webs)
                url = f"/models/{model_id}/predict"
                errors = 0
                sampler.phase = "predictions"
                for k in range(3):  # each kind of photo in turn, every client at once
                    _, err, _ = latencies(stack, url, probes[k], args.requests // 3 + (k < args.requests % 3),
                                          args.clients)
                    errors += err
                rows[f"after {args.requests} predictions"] = processes(stack, webs)
                cpu0 = cpu_seconds(stack, "uwsgi")
                sampler.phase = "one-client predictions"
                lat, err, _ = latencies(stack, url, latency_probe, args.latency, 1)
                predict_cpu = 1000 * (cpu_seconds(stack, "uwsgi") - cpu0) / max(1, len(lat))
                errors += err
                sampler.stopped.set()
                sampler.join()
                print(f"\n{label}: lfw62 build {wall:.1f} s (workers' CPU {build_cpu:.1f} s); predict 1 client p50 "
                      f"{pct(lat, .5):.1f} ms (p95 {pct(lat, .95):.1f}; web CPU {predict_cpu:.1f} ms a request); "
                      f"{errors} errors; highest sum sampled {sampler.peak:.0f} MB (during the {sampler.peak_phase}); "
                      f"load {os.getloadavg()[0]:.1f}\n{table(rows)}", flush=True)
                summary.append((label, wall, build_cpu, pct(lat, .5), predict_cpu,
                                {k: sum(r.values()) for k, r in rows.items()}, sampler.peak, sampler.peak_phase))
    print("\n| service | lfw62 build s (workers' CPU s) | predict p50 ms (web CPU ms) | idle MB | after build MB | "
          "after predictions MB | highest MB |\n|---|---|---|---|---|---|---|")
    for label, wall, build_cpu, p50, predict_cpu, sums, peak, phase in summary:
        print(f"| {label} | {wall:.1f} ({build_cpu:.0f}) | {p50:.1f} ({predict_cpu:.0f}) | "
              + " | ".join(f"{v:.0f}" for v in sums.values()) + f" | {peak:.0f} ({phase}) |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--builds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--embedder", nargs="*", default=[Settings.from_env().embedder], choices=EMBEDDERS)
    ap.add_argument("--fresh", action="store_true", help="new photo bytes for every build: no cache hits")
    ap.add_argument("--requests", type=int, default=300, help="predictions after the builds")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients of those predictions")
    ap.add_argument("--scenario", action="store_true", help="issue #24: every process of serve, build, predictions")
    ap.add_argument("--baseline", help="with --scenario: a git revision measured first, with its own defaults")
    ap.add_argument("--latency", type=int, default=40, help="with --scenario: one-client predictions for p50")
    args = ap.parse_args()
    if args.scenario:
        if "--requests" not in sys.argv:
            args.requests = 500
        configs = [(f"embedder {e}", ROOT, {"FR_EMBEDDER": e}) for e in args.embedder]
        with tempfile.TemporaryDirectory() as base:
            if args.baseline:
                configs.insert(0, (f"revision {args.baseline}", checkout(args.baseline, Path(base)), {}))
            scenario(args, configs)
        return
    paths = sorted((FACES / "lfw62").glob("*/*.jpg"))
    people = sorted((FACES / "lfw62").iterdir())[:10]
    small = [p for d in people for p in sorted(d.glob("*.jpg"))[:6]]
    probes = [(FACES / "lfw62" / "George_W_Bush" / "George_W_Bush_0500.jpg").read_bytes(),
              (FACES / "wild" / "two_people.jpg").read_bytes(), (FACES / "wild" / "obama-1080p.jpg").read_bytes()]
    web_n = Settings.from_env().web_processes
    print(f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    for embedder in args.embedder:
        with tempfile.TemporaryDirectory() as tmp, Stack(Path(tmp), workers=args.workers, warm=True,
                                                         env={"FR_EMBEDDER": embedder}) as stack:
            webs = web_processes(stack, web_n)
            rss = memory(stack)
            print(f"embedder {embedder}: {len(paths)} photos, {args.workers} workers; memory in MB, all workers "
                  f"together; warmed up: workers {rss.get('worker', 0):.0f}; web processes, each (before any "
                  f"request): {web_memory(webs)}", flush=True)
            model_id = None
            for i in range(1, args.builds + 1):
                wall, model_id = build(stack, archive(paths, bytes([i % 256]) * (i if args.fresh else 0)))
                rss, peak = memory(stack), memory(stack, "VmHWM")
                print(f"build {i:2d}: {wall:6.1f} s  workers RSS {rss.get('worker', 0):5.0f} (peak "
                      f"{peak.get('worker', 0):5.0f})  broker {rss.get('broker', 0):4.0f}  web "
                      f"{rss.get('web', 0):5.0f}", flush=True)
            if model_id is None:
                _, model_id = build(stack, archive(small))
            print(f"web processes after the builds: {web_memory(webs)}", flush=True)
            url = f"/models/{model_id}/predict"
            errors, served = 0, 0
            for k in range(3):  # each kind of photo in turn, every client at once
                lat, err, _ = latencies(stack, url, probes[k], args.requests // 3, args.clients)
                errors, served = errors + err, served + len(lat)
            print(f"web processes after {served} predictions ({errors} errors), {args.clients} clients: "
                  f"{web_memory(webs)}", flush=True)


if __name__ == "__main__":
    main()
