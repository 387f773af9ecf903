#!/usr/bin/env python
"""What BlazeFace adds to one process's memory, step by step (issue #24).

    python bench/detector_memory.py [--threads 16] [--rounds 3]

Each variant runs in a fresh process (glibc keeps what a process freed, so processes cannot be
reused), with `MALLOC_ARENA_MAX=2` as `serve` gives its children. RSS (MB, and its anonymous and
file-backed parts) after: numpy, OpenCV and dlib; dlib's HOG detector and landmark model (what the
HOG detector loads); importing LiteRT; BlazeFace's interpreter built (XNNPACK packs the weights);
one 250 px photo; one 1920x1080 frame (`wild/obama-1080p.jpg`); the frame resized to 4000x3000
(12 MP) and detected, then that photo freed; `--threads` threads detecting in the frame `--rounds`
times each (as a web process's request threads do).

Variants, in the same run: `now` (preprocessor/blazeface.py as it is), `copies` (`_run` as it was
before: each tile made contiguous, a float copy of it handed to `set_tensor`, copies of the outputs by
`get_tensor`),
and `now, 1 thread` (the interpreter with `num_threads=1` instead of 2).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FACES = Path(os.environ.get("FR_FACES_DIR", ROOT.parent / "shared" / "faces"))
VARIANTS = {"now": [], "copies": ["--copies"], "now, 1 thread": ["--one-thread"]}


def run_with_copies(tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What `blazeface._run` computed before it wrote into the interpreter's own buffers: a float copy of the
    tile in, copies of the outputs out -> (boxes (n, 4), scores (n,)). The `copies` variant, and
    test_detector's reference for the tile run of today."""
    import numpy as np

    from preprocessor import blazeface as bf
    it = bf._interpreter()
    with bf.LOCK:
        it.set_tensor(it.get_input_details()[0]["index"], (tile.astype(np.float32) / 127.5 - 1.0)[None])
        it.invoke()
        outs = [it.get_tensor(o["index"]) for o in it.get_output_details()]
    reg, cls = (outs[0], outs[1]) if outs[0].shape[-1] == 16 else (outs[1], outs[0])
    logits = np.clip(cls.reshape(-1), -80, 80)
    keep = np.flatnonzero(logits > np.log(bf.MIN_SCORE / (1 - bf.MIN_SCORE)))
    r = reg.reshape(-1, 16)[keep]
    centre = r[:, :2] + bf._anchors()[keep]
    return np.concatenate([centre - r[:, 2:4] / 2, centre + r[:, 2:4] / 2], 1), 1 / (1 + np.exp(-logits[keep]))


def memory() -> tuple[float, float, float]:
    got = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            got[key] = int(line.split()[1]) / 1024
    return got["VmRSS"], got["RssAnon"], got["RssFile"]


def child(args: argparse.Namespace) -> None:
    """One variant in this process: prints a JSON list of (step, rss, anon, file)."""
    steps = []

    def step(name: str) -> None:
        steps.append((name, *memory()))

    import cv2
    import dlib  # noqa: F401
    import numpy as np
    step("numpy, OpenCV, dlib")
    from preprocessor import faces
    from preprocessor.images import decode_image
    faces.load_models("hog")
    step("+ HOG and landmarks loaded")
    import ai_edge_litert.interpreter as litert
    step("+ import LiteRT")
    from preprocessor import blazeface as bf
    if args.one_thread:
        one = litert.Interpreter(model_path=bf.model_path(), num_threads=1)
        one.allocate_tensors()
        setattr(bf, "_interpreter", lambda: one)  # noqa: B010  (replacing the cached builder)
    if args.copies:
        bf._run = lambda tile: run_with_copies(np.ascontiguousarray(tile))  # as detect() handed tiles over
    bf.load_model()
    step("+ BlazeFace's interpreter")
    small = decode_image((FACES / "lfw62" / "Tony_Blair" / "Tony_Blair_0001.jpg").read_bytes(), 10**8)
    bf.detect(small)
    step("+ one 250 px photo")
    frame = decode_image((FACES / "wild" / "obama-1080p.jpg").read_bytes(), 10**8)
    bf.detect(frame)
    step("+ one 1920x1080 frame (the frame held)")
    phone = cv2.resize(frame, (4000, 3000))
    bf.detect(phone)
    step("+ a 12 MP photo detected (held, 36 MB)")
    del phone
    step("  that photo freed")

    def rounds() -> None:
        for _ in range(args.rounds):
            bf.detect(frame)
    threads = [threading.Thread(target=rounds) for _ in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    step(f"+ {args.threads} threads x {args.rounds} frames")
    print(json.dumps(steps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--copies", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--one-thread", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        child(args)
        return
    env = {**os.environ, "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")}
    results = {}
    for name, flags in VARIANTS.items():
        out = subprocess.run([sys.executable, __file__, "--child", "--threads", str(args.threads),
                              "--rounds", str(args.rounds), *flags],
                             env=env, cwd=ROOT, capture_output=True, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    names = list(results)
    print("| step | " + " | ".join(f"{n}: RSS (anon / file)" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for i, (label, *_) in enumerate(results[names[0]]):
        cells = [f"{results[n][i][1]:.1f} ({results[n][i][2]:.1f} / {results[n][i][3]:.1f})" for n in names]
        print(f"| {label} | " + " | ".join(cells) + " |")
    base = {n: results[n][1][1] for n in names}  # after HOG: what any detector holds
    for n in names:
        grown = [results[n][i][1] - base[n] for i in (3, 5, -1)]
        print(f"{n}: BlazeFace over HOG's process {grown[0]:+.1f} MB loaded, {grown[1]:+.1f} after a 1080p frame, "
              f"{grown[2]:+.1f} after the threads")


if __name__ == "__main__":
    main()
