#!/usr/bin/env python
"""Worker memory across builds in a row, through the real service.

    python bench/memory_builds.py [--builds 10] [--workers 2] [--embedder tensorflow dlib] [--fresh]
                                  [--requests 300] [--clients 16]

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
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.perf import FACES, build, latencies, memory, rss_mb
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--builds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--embedder", nargs="+", default=[Settings.from_env().embedder], choices=EMBEDDERS)
    ap.add_argument("--fresh", action="store_true", help="new photo bytes for every build: no cache hits")
    ap.add_argument("--requests", type=int, default=300, help="predictions after the builds")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients of those predictions")
    args = ap.parse_args()
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
