"""How small and how soft a face can be before its embedding stops being that person's: the limits below
which a face is answered "too_small" / "too_blurred" (FR_RECOGNISE_MIN_FACE_PX, FR_RECOGNISE_MIN_SHARPNESS).

Each crop of a folder is embedded as it is (the face ~108 px, the reference), then again shrunk so that its
face is 16-64 px, and blurred (Gaussian sigma 1-6) at full size; every time through the pipeline's own
landmarks, chip and embedder (on the face's known box, so that detection is not what is measured). The
figure is the drift: the distance of the degraded face's embedding from its own reference (dlib's rule
names two faces the same person under 0.6; two different people are mostly over it). A limit is the
smallest size / sharpness at which the 90th percentile of the drift stays under `--max-drift`.

Tune on strangers-more, report on strangers (the limits chosen on one folder, checked on the other):

    python bench/quality_limits.py --folder strangers-more --photos 200
    python bench/quality_limits.py --folder strangers --photos 200 --face-px 32 --sharpness 8

This is a proxy, not an open-set false-accept rate: it says how far a face moves, not how often a
stranger is taken for a gallery's person (bench/stranger_model.py measures that on LFW crops).
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.compose import SOURCE_BOX, SOURCE_FACE_PX, load_rgb, source_photos

SIZES = (16, 20, 24, 28, 32, 40, 48, 64)
SIGMAS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def main() -> None:
    from constants import Settings
    from features.embeddings import embed_chips
    from preprocessor.faces import Box, face_at
    from preprocessor.quality import measure
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="strangers-more")
    ap.add_argument("--photos", type=int, default=200)
    ap.add_argument("--max-drift", type=float, default=0.35)
    ap.add_argument("--face-px", type=float, default=0, help="report: the share of faces under this size")
    ap.add_argument("--sharpness", type=float, default=0, help="report: drift on each side of this sharpness")
    args = ap.parse_args()
    s = Settings.from_env()
    photos = source_photos(args.folder)
    photos = photos[::max(1, len(photos) // args.photos)][:args.photos]
    by_size: dict[int, list[float]] = {n: [] for n in SIZES}
    blur_rows: list[tuple[float, float]] = []  # (sharpness, drift)
    for p in photos:
        img = load_rgb(p)
        ref = face_at(img, Box(*SOURCE_BOX))
        chips, what = [ref.chip], [("ref", 0.0)]
        for n in SIZES:
            f = n / SOURCE_FACE_PX
            small = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
            box = Box(*(int(round(v * f)) for v in SOURCE_BOX))
            chips.append(face_at(small, box).chip)
            what.append(("size", n))
        for sigma in SIGMAS:
            soft = face_at(cv2.GaussianBlur(img, (0, 0), sigma), Box(*SOURCE_BOX))
            chips.append(soft.chip)
            what.append(("blur", measure(soft.box, soft.points, soft.chip)["sharpness"]))
        x = embed_chips(chips, settings=s)
        d = np.linalg.norm(x[1:] - x[0], axis=1)
        for (kind, v), dist in zip(what[1:], d):
            if kind == "size":
                by_size[int(v)].append(float(dist))
            else:
                blur_rows.append((float(v), float(dist)))
    print(f"{args.folder}: {len(photos)} faces; drift = distance of the degraded face's embedding from its own")
    print("\n| face px | drift p50 | p90 | over 0.6 |\n|---|---|---|---|")
    chosen_px = None
    for n in SIZES:
        v = np.array(by_size[n])
        print(f"| {n} | {np.median(v):.3f} | {np.percentile(v, 90):.3f} | {np.mean(v > 0.6):.1%} |")
        if chosen_px is None and np.percentile(v, 90) <= args.max_drift:
            chosen_px = n
    rows = np.array(blur_rows)
    edges = [0, 2, 4, 6, 8, 10, 15, 20, 40, 1e9]
    print("\n| sharpness | faces | drift p50 | p90 | over 0.6 |\n|---|---|---|---|---|")
    chosen_sharp = None
    for a, b in itertools.pairwise(edges):
        sel = rows[(rows[:, 0] >= a) & (rows[:, 0] < b), 1]
        if len(sel):
            print(f"| [{a}, {b:g}) | {len(sel)} | {np.median(sel):.3f} | {np.percentile(sel, 90):.3f} | "
                  f"{np.mean(sel > 0.6):.1%} |")
            if chosen_sharp is None and np.percentile(sel, 90) <= args.max_drift:
                chosen_sharp = a
    print(f"\nsmallest size with drift p90 <= {args.max_drift}: {chosen_px} px; "
          f"lowest sharpness band with drift p90 <= {args.max_drift}: from {chosen_sharp}")
    if args.face_px or args.sharpness:
        ok_size = np.concatenate([by_size[n] for n in SIZES if n >= args.face_px])
        ok_blur = rows[rows[:, 0] >= args.sharpness, 1]
        print(f"at the limits ({args.face_px} px, sharpness {args.sharpness}): faces kept drift p90 "
              f"{np.percentile(ok_size, 90):.3f} (size), {np.percentile(ok_blur, 90):.3f} (blur); "
              f"over 0.6: {np.mean(ok_size > 0.6):.1%}, {np.mean(ok_blur > 0.6):.1%}")


if __name__ == "__main__":
    main()
