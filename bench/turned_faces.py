#!/usr/bin/env python
"""The most turned faces LFW holds, found or not by each detector (issue #25: faces turned 45-60 deg).

    python bench/turned_faces.py [--folders lfw62,strangers-more] [--min-yaw 0.3] [--seed 3]

Every crop of the folders is given the landmark yaw figure of bench/compose.py (`yaw_figures`: dlib's 5
landmarks placed in the crop's known face box; the nose base's offset from the eyes' middle along the eye
line, in eye distances). Those of `--min-yaw` or more are pasted, one per 1080p frame of clutter (face
100-160 px, a little blurred, JPEG 85), and each detector (`today`: HOG at 1,600 px, `blazeface`) looks for
them. Printed per band of the figure: crops, faces found by each. What the figure means in degrees is an
estimate (a nose ~0.6 eye distance in front of the eyes: 0.3 ~ 27 deg, 0.45 ~ 37 deg, 0.6 ~ 45 deg); the
landmarks of a strongly turned face are themselves less sure.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.compose import FRAME_1080, clutter, encode, load_rgb, match, paste_face, yaw_figures

BANDS = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (0.6, 9.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folders", default="lfw62,strangers-more")
    ap.add_argument("--min-yaw", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    from preprocessor.faces import detect_faces
    from preprocessor.images import decode_image
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}, load {os.getloadavg()[0]:.1f}", flush=True)
    rng = np.random.default_rng(args.seed)
    detectors = {"today": lambda im: detect_faces(im, 1600, 1000, "hog"),
                 "blazeface": lambda im: detect_faces(im, detector="blazeface", min_face_px=40)}
    rows: list[tuple[float, dict[str, int]]] = []
    for folder in args.folders.split(","):
        figures = yaw_figures(folder, 100000)
        turned = sorted((p for p, y in figures.items() if abs(y) >= args.min_yaw), key=lambda p: -abs(figures[p]))
        print(f"{folder}: {len(figures)} crops, {len(turned)} with |yaw figure| >= {args.min_yaw}", flush=True)
        for p in turned:
            w, h = FRAME_1080
            img = clutter(w, h, rng)
            size = int(rng.integers(100, 161))
            box = paste_face(img, load_rgb(p), size, rng.uniform(size, w - size), rng.uniform(size, h - size), 0.0)
            img = cv2.GaussianBlur(img, (0, 0), 0.6)
            image = decode_image(encode(img, 85), 40_000_000)
            hits = {n: match([box], [b.as_list() for b in f(image)])[0] for n, f in detectors.items()}
            rows.append((abs(figures[p]), hits))
    print("\n| yaw figure | crops | " + " | ".join(f"{n}: found" for n in detectors) + " |\n|---|---|"
          + "---|" * len(detectors))
    for lo, hi in BANDS:
        band = [hits for y, hits in rows if lo <= y < hi]
        if band:
            print(f"| {lo}-{hi if hi < 9 else ''} | {len(band)} | "
                  + " | ".join(f"{sum(b[n] for b in band)}/{len(band)}" for n in detectors) + " |", flush=True)


if __name__ == "__main__":
    main()
