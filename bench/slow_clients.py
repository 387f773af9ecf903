#!/usr/bin/env python
"""Slow clients against the real service: do /is_alive and a predict still answer quickly?

    python bench/slow_clients.py [--slow 16] [--rounds 20]

Builds a small model (3 people x 4 photos of lfw62), warms every web process, then
measures /is_alive and one predict (a 250 px photo, one face) `--rounds` times with no
slow client, and again while `--slow` connections send their bodies at one byte a
second. Prints p50 / max of each, the ratio to the quiet run, and how the slow
connections ended (408 once past FR_UPLOAD_GRACE_S, set to 5 s here). Target (issue #15):
both answer within 2 s with 16 slow connections.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from test.conftest import pick_people
from test.stack import SlowBodies, Stack, photo_files

FACES = Path(os.environ.get("FR_FACES_DIR", ROOT.parent / "shared" / "faces"))


def timed(stack: Stack, model: str, photo: bytes, rounds: int) -> tuple[list[float], list[float]]:
    alive, predict = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        assert stack.get("/is_alive", timeout=30).status_code == 200
        alive.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        r = stack.post(f"/models/{model}/predict", files={"image": ("p.jpg", photo)}, timeout=30)
        assert r.status_code == 200
        predict.append(time.perf_counter() - t0)
    return alive, predict


def line(name: str, quiet: list[float], loaded: list[float]) -> str:
    q, lo = statistics.median(quiet), statistics.median(loaded)
    return (f"  {name:<9} quiet p50 {1000 * q:7.1f} ms max {1000 * max(quiet):7.1f} ms | "
            f"slow clients p50 {1000 * lo:7.1f} ms max {1000 * max(loaded):7.1f} ms | p50 ratio {lo / q:5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slow", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, \
            Stack(Path(tmp), workers=1, warm=True, env={"FR_UPLOAD_GRACE_S": "5"}) as stack:
        r = stack.build(photo_files(pick_people(FACES, 3, 4)))
        model = r.json()["id"]
        stack.wait_state(model, ("done",))
        photo = sorted((FACES / "lfw62").glob("*/*.jpg"))[0].read_bytes()
        timed(stack, model, photo, 8)  # every web process loads the model
        quiet = timed(stack, model, photo, args.rounds)
        with SlowBodies(stack, args.slow) as slow:
            time.sleep(1.0)
            loaded = timed(stack, model, photo, args.rounds)
            ends = [r.split(b"\r\n", 1)[0].decode(errors="replace") or "no answer" for r in slow.replies(30)]
    print(f"{args.slow} slow connections (1 byte/s), {args.rounds} rounds each way, 1 worker, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    print(line("is_alive", *zip(*[(a, b) for a, b in zip(quiet[0], loaded[0])])))
    print(line("predict", *zip(*[(a, b) for a, b in zip(quiet[1], loaded[1])])))
    print(f"  slow connections ended with: {dict((e, ends.count(e)) for e in set(ends))}")
    worst = max(max(loaded[0]), max(loaded[1]))
    print(f"target: every answer within 2 s with slow clients: {'met' if worst < 2 else 'MISSED'} "
          f"(slowest {1000 * worst:.0f} ms)")


if __name__ == "__main__":
    main()
