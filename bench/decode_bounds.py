#!/usr/bin/env python
"""What decoding a photo to recognise costs a web process: `decode_image` (the whole photo, as before
issue #26) against `decode_bounded` (within FR_PREDICT_MAX_PIXELS), and the detection that follows.

    python bench/decode_bounds.py [--rounds 5]

Photos: wild/obama-1080p.jpg and wild/biden.jpg (within the bound: decoded the same), obama.jpg upscaled
4x (16.5 MP) and a 36 MP JPEG (6000x6000), both composed here at run time. For each: the median time
of decode + HOG detection, the peak of the process's RSS over the calls (VmHWM, each measurement in a
fresh process: PIL's buffers count, which tracemalloc does not see), and the faces found. Prints the bounded
figures and their ratios to the whole-photo decode measured in the same run.
"""
from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image

from constants import Settings
from preprocessor.faces import detect_faces, load_models
from preprocessor.images import decode_bounded, decode_image

FACES = Path(os.environ.get("FR_FACES_DIR", ROOT.parent / "shared" / "faces"))


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def photos() -> dict[str, bytes]:
    portrait = Image.open(FACES / "wild" / "obama.jpg").convert("RGB")
    return {"obama-1080p.jpg (2.1 MP)": (FACES / "wild" / "obama-1080p.jpg").read_bytes(),
            "biden.jpg (2.1 MP)": (FACES / "wild" / "biden.jpg").read_bytes(),
            "obama.jpg x4 (16.5 MP)": jpeg(portrait.resize((portrait.width * 4, portrait.height * 4),
                                                            Image.Resampling.BICUBIC)),
            "flat 6000x6000 (36 MP)": jpeg(Image.new("RGB", (6000, 6000), (120, 130, 140)))}


def run_in_child(name: str, bounded: bool, rounds: int) -> tuple[float, float, int]:
    """In a fresh process (spawned: no heap reused from another measurement): (median seconds of decode +
    detection, peak RSS growth in MB over the calls, faces found)."""
    s = Settings()
    load_models("hog")
    data = photos()[name]
    if bounded:
        def run() -> int:
            return len(detect_faces(decode_bounded(data, s.max_image_pixels, s.predict_max_pixels)[0]))
    else:
        def run() -> int:
            return len(detect_faces(decode_image(data, s.max_image_pixels)))
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_kb("VmRSS")
    times, faces = [], 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        faces = run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), (rss_kb("VmHWM") - before) / 1024, faces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    s = Settings()
    print(f"FR_PREDICT_MAX_PIXELS={s.predict_max_pixels}; median of {args.rounds}; peak RSS growth over the call")
    print(f"{'photo':26} {'whole s':>8} {'MB':>6} {'faces':>5} | {'bounded s':>9} {'MB':>6} {'faces':>5} | "
          f"{'time x':>6} {'MB x':>6}")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        for name in photos():
            whole = pool.apply(run_in_child, (name, False, args.rounds))
            bounded = pool.apply(run_in_child, (name, True, args.rounds))
            print(f"{name:26} {whole[0]:8.3f} {whole[1]:6.0f} {whole[2]:5d} | {bounded[0]:9.3f} {bounded[1]:6.0f} "
                  f"{bounded[2]:5d} | {bounded[0] / whole[0]:6.2f} {bounded[1] / max(whole[1], 1):6.2f}")

if __name__ == "__main__":
    main()
