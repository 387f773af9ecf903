#!/usr/bin/env python
"""Where the time of one predict goes, step by step, in the web process's own path (issue #25).

    python bench/predict_profile.py [--photos 8] [--kinds phone_12mp,frame_1080p] [--seed 12]
                                    [--variants hog,blazeface] [--folder lfw62]

Runs, in this process, what `Recognizer.analyse` runs for a photo sent to POST /models/<id>/predict, on
photos composed by bench/compose.py: the front's check (`inspect_image`), the bounded decode (`decode_bounded`:
a 12 MP JPEG is decoded at 1/2 in the DCT), detection (with its tile count), landmarks and chips, quality,
the embedding of every face. Prints, per variant and kind, the p50 wall and CPU milliseconds of each step and
of their sum, and faces found against faces pasted. Variants: `hog`; `blazeface` (the settings as they
are); `blazeface_t1` / `blazeface_t2` (LiteRT with 1 or 2 threads). All variants run on the same photos, in
turns, so that the machine's load falls on all of them alike. What it leaves out: HTTP (upload, multipart
parsing), the classifier and the mirror pass (bench/predict_photos.py measures the whole request).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.compose import compose, match

STEPS = ("inspect", "decode", "detect", "align", "quality", "embed")


def _variant(name: str, base):
    """(settings, LiteRT threads or None) of a variant name."""
    if name == "hog":
        return replace(base, detector="hog"), None
    if name.startswith("blazeface_t"):
        return replace(base, detector="blazeface"), int(name[len("blazeface_t"):])
    if name == "blazeface":
        return replace(base, detector="blazeface"), None
    raise SystemExit(f"unknown variant {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--kinds", default="phone_12mp,frame_1080p")
    ap.add_argument("--variants", default="hog,blazeface")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--folder", default=os.environ.get("FR_BENCH_FOLDER", "lfw62"))
    args = ap.parse_args()
    from constants import Settings
    from features.embeddings import embed_chips
    from preprocessor import blazeface
    from preprocessor.faces import detect_faces, face_at, load_models
    from preprocessor.images import decode_bounded, inspect_image
    from preprocessor.quality import measure
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}, load {os.getloadavg()[0]:.1f}, cores {os.cpu_count()}", flush=True)
    base = Settings.from_env()
    rng = np.random.default_rng(args.seed)
    photos = {k: [compose(k, rng, args.folder) for _ in range(args.photos)] for k in args.kinds.split(",")}
    variants = args.variants.split(",")
    load_models("blazeface")
    embed_chips([np.zeros((150, 150, 3), np.uint8)], settings=base)
    tiles = [0]
    run = blazeface._run

    def counted(tile):
        tiles[0] += 1
        return run(tile)
    blazeface._run = counted
    # (variant, kind) -> step -> [(wall ms, cpu ms)]; plus tiles and faces
    rows: dict = {(v, k): {s: [] for s in (*STEPS, "total")} for v in variants for k in photos}
    found: dict = {(v, k): [0, 0, []] for v in variants for k in photos}
    for kind, items in photos.items():
        for c in items:
            for v in variants:
                s, threads = _variant(v, base)
                if threads is not None:
                    blazeface.set_threads(threads)
                laps: dict[str, tuple[float, float]] = {}
                w0, c0 = time.perf_counter(), time.process_time()
                t = (w0, c0)

                def lap(step: str) -> None:
                    nonlocal t
                    now = (time.perf_counter(), time.process_time())
                    laps[step] = (1000 * (now[0] - t[0]), 1000 * (now[1] - t[1]))
                    t = now
                tiles[0] = 0
                inspect_image(c.data, s.max_image_pixels, s.predict_max_pixels)
                lap("inspect")
                pixels, scale = decode_bounded(c.data, s.max_image_pixels, s.predict_max_pixels)
                lap("decode")
                boxes = detect_faces(pixels, s.detect_max_side, s.upsample_max_side, s.detector, s.detect_min_face_px)
                lap("detect")
                faces = [face_at(pixels, b, s.chip_size, s.chip_padding) for b in boxes]
                lap("align")
                for f in faces:
                    measure(f.box, f.points, f.chip)
                lap("quality")
                embed_chips([f.chip for f in faces], settings=s)
                lap("embed")
                laps["total"] = (1000 * (time.perf_counter() - w0), 1000 * (time.process_time() - c0))
                for step, value in laps.items():
                    rows[(v, kind)][step].append(value)
                hit, _ = match(c.boxes, [[x / scale for x in b.as_list()] for b in boxes])
                found[(v, kind)][0] += hit
                found[(v, kind)][1] += len(c.boxes)
                found[(v, kind)][2].append(tiles[0])
                if threads is not None:
                    blazeface.set_threads(None)
        print(f"  {kind}: decoded at {pixels.shape[1]}x{pixels.shape[0]}", flush=True)
    print("\n| variant | photo | total p50 ms (CPU ms) | " + " | ".join(f"{s} (CPU)" for s in STEPS)
          + " | tiles | faces found |\n|---|---|---|" + "---|" * len(STEPS) + "---|---|")
    for (v, kind), steps in rows.items():
        med = {k: (float(np.median([x[0] for x in xs])), float(np.median([x[1] for x in xs])))
               for k, xs in steps.items()}
        hit, total, ntiles = found[(v, kind)]
        print(f"| {v} | {kind} | **{med['total'][0]:.0f}** ({med['total'][1]:.0f}) | "
              + " | ".join(f"{med[s][0]:.0f} ({med[s][1]:.0f})" for s in STEPS)
              + f" | {int(np.median(ntiles)) if v != 'hog' else '-'} | {hit}/{total} |", flush=True)


if __name__ == "__main__":
    main()
