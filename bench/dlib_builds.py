#!/usr/bin/env python
"""Compare dlib builds on the same photos: HOG detection, landmarks, ResNet embedding.

    python bench/dlib_builds.py [--other /path/to/other/venv/bin/python] [--photos 100]

Times this interpreter's dlib (the project's: dlib-bin) and, if given, another
interpreter's (e.g. a venv with `pip install --no-binary dlib dlib` built against
OpenBLAS), each in its own process, one after the other, and prints ms per photo for
each stage and the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FACES = Path(os.environ.get("FR_FACES_DIR", ROOT.parent / "shared" / "faces"))

PROBE = r"""
import json, sys, time, glob
import cv2, dlib, face_recognition_models as frm
files = sorted(glob.glob(sys.argv[1] + "/lfw62/*/*.jpg"))[::30][: int(sys.argv[2])]
imgs = [cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB) for f in files]
det = dlib.get_frontal_face_detector()
sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
net = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
t = time.perf_counter(); rects = [det(i, 0) for i in imgs]; hog = time.perf_counter() - t
t = time.perf_counter(); [det(i, 1) for i in imgs[:20]]; hog1 = (time.perf_counter() - t) / 20 * len(imgs)
pairs = [(i, max(r, key=lambda x: x.area())) for i, r in zip(imgs, rects) if len(r)]
t = time.perf_counter(); shapes = [sp(i, r) for i, r in pairs]; lm = time.perf_counter() - t
chips = [dlib.get_face_chip(i, s, size=150, padding=0.25) for (i, _), s in zip(pairs, shapes)]
net.compute_face_descriptor(chips[:2])
t = time.perf_counter(); [net.compute_face_descriptor(c) for c in chips]; emb = time.perf_counter() - t
t = time.perf_counter(); net.compute_face_descriptor(chips); batch = time.perf_counter() - t
n, m = len(imgs), len(chips)
print(json.dumps({"dlib": dlib.__version__, "photos": n, "hog_ms": 1000 * hog / n, "hog_upsample1_ms": 1000 * hog1 / n,
                  "landmarks_ms": 1000 * lm / m, "embed_ms": 1000 * emb / m, "embed_batch_ms": 1000 * batch / m}))
"""


def pipeline_ms(r: dict) -> float:
    return r["hog_ms"] + r["landmarks_ms"] + r["embed_ms"]


def run(python: str, photos: int) -> dict:
    out = subprocess.run([python, "-c", PROBE, str(FACES), str(photos)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--other")
    ap.add_argument("--photos", type=int, default=100)
    args = ap.parse_args()
    rows = [("this venv", run(sys.executable, args.photos))]
    if args.other:
        rows.append(("other", run(args.other, args.photos)))
    keys = ["hog_ms", "hog_upsample1_ms", "landmarks_ms", "embed_ms", "embed_batch_ms"]
    print(f"{'build':<12} {'dlib':<10} " + " ".join(f"{k:>17}" for k in keys) + f" {'pipeline_ms':>12}")
    for name, r in rows:
        total = r["hog_ms"] + r["landmarks_ms"] + r["embed_ms"]
        print(f"{name:<12} {r['dlib']:<10} " + " ".join(f"{r[k]:17.1f}" for k in keys) + f" {total:12.1f}")
    if len(rows) == 2:
        a, b = rows[0][1], rows[1][1]
        print("other / this: " + ", ".join(f"{k} {b[k] / a[k]:.2f}x" for k in keys)
              + f", pipeline {pipeline_ms(b) / pipeline_ms(a):.2f}x")


if __name__ == "__main__":
    main()
