#!/usr/bin/env python
"""Predictions through HTTP with each embedder, alternating services in the same run.

    python bench/predict_embedders.py [--rounds 2] [--requests 30] [--clients 8]

For each round and embedder (`--embedders`: `FR_EMBEDDER=onnx`, `tensorflow`, `dlib`): a fresh service (1 worker,
2 web processes) builds a small model (10 `lfw62` people, 6 photos each), then the same 250 px
one-face photo is sent `--requests` times by one client (p50, p95: latency), then 200 times by
`--clients` concurrent clients (requests/s, and the CPU the web processes spent per request, from
/proc). Each round ends with the ratio of every other embedder's p50 to the first one's.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.perf import FACES, build, descendants, latencies, pct
from constants import EMBEDDERS
from test.stack import Stack


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--embedders", nargs="+", default=["onnx", "tensorflow", "dlib"], choices=EMBEDDERS)
    args = ap.parse_args()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for person in sorted((FACES / "lfw62").iterdir())[:10]:
            for p in sorted(person.glob("*.jpg"))[:6]:
                zf.write(p, f"{person.name}/{p.name}")
    probe = (FACES / "lfw62" / "George_W_Bush" / "George_W_Bush_0500.jpg").read_bytes()
    for r in range(1, args.rounds + 1):
        p50 = {}
        for embedder in args.embedders:
            with tempfile.TemporaryDirectory() as tmp, Stack(Path(tmp), workers=1, warm=True,
                                                             env={"FR_EMBEDDER": embedder}) as stack:
                _, model_id = build(stack, buf.getvalue())
                time.sleep(8)  # the web processes' warm-up (in the background) is over
                url = f"/models/{model_id}/predict"
                latencies(stack, url, probe, 8, 1)  # the model loaded in the web processes
                load = os.getloadavg()[0]
                lat, err, _ = latencies(stack, url, probe, args.requests, 1)
                p50[embedder] = pct(lat, .5)
                web = [pid for pid, cmd in descendants(stack.proc.pid) if "uwsgi" in cmd]
                c0 = cpu_seconds(web)
                many, err2, wall = latencies(stack, url, probe, 200, args.clients)
                cpu = cpu_seconds(web) - c0
                print(f"round {r}, {embedder:10s} (load {load:.2f}): 1 client p50 {p50[embedder]:.0f} ms, p95 "
                      f"{pct(lat, .95):.0f} ms, {err} errors; {args.clients} clients: {len(many) / wall:.1f} req/s, "
                      f"p50 {pct(many, .5):.0f} ms, {err2} errors, web CPU {1000 * cpu / max(1, len(many)):.0f} ms "
                      "a request", flush=True)
        print(f"round {r}: " + ", ".join(f"{e} p50 / {args.embedders[0]} p50 = {p50[e] / p50[args.embedders[0]]:.2f}x"
                                         for e in args.embedders[1:]), flush=True)


if __name__ == "__main__":
    main()
