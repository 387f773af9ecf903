#!/usr/bin/env python
"""Predict through HTTP on photos as phones and cameras take them, per detector, in the same run (issue #25).

    python bench/predict_photos.py [--photos 12] [--people 8] [--detectors hog,blazeface] [--seed 11]

For each detector: a service (`Stack`: `run.py serve`, 2 workers, its models warmed up) with
`FR_DETECTOR` set; a model built from `--people` people of `lfw62` (their first 5 photos); then
`POST /models/<id>/predict` with 1 client on `--photos` composed 12 MP phone photos (`phone_12mp`: a face
of 90-260 px, most stored sideways) and as many 1080p frames (`frame_1080p`: 1-4 faces of 36-120 px), each
photo a face of one of the model's people (bench/compose.py, faces from `lfw62`). Printed: p50 and p90 of
the whole request (upload, decode, detection, landmarks, embedding, naming), faces found against faces
pasted, and faces named right. The same photos go to every detector's service.
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

import numpy as np

from bench.compose import Composed, compose, faces_dir, iou
from test.stack import Stack


def people_archive(people: list[Path]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for d in people:
            for p in sorted(d.glob("*.jpg"))[:5]:
                zf.write(p, f"{d.name}/{p.name}")
    return buf.getvalue()


def photos_of(kind: str, n: int, seed: int) -> list[Composed]:
    """`n` composed photos of `kind` (faces from the pool `main` gives bench/compose.py)."""
    rng = np.random.default_rng(seed)
    return [compose(kind, rng) for _ in range(n)]


def measure(stack: Stack, model: str, photos: list[Composed]) -> dict:
    times, found, named, pasted = [], 0, 0, 0
    for c in photos:
        t0 = time.perf_counter()
        r = stack.post(f"/models/{model}/predict", files={"image": ("p.jpg", c.data)}, timeout=120)
        times.append(time.perf_counter() - t0)
        r.raise_for_status()
        faces = r.json()["faces"]
        pasted += len(c.boxes)
        for box, src in zip(c.boxes, c.sources):
            hit = [f for f in faces if iou(f["box"], box) >= 0.3]
            found += bool(hit)
            named += bool(hit) and hit[0]["label"] == Path(src).parent.name
    return {"p50": 1000 * float(np.median(times)), "p90": 1000 * float(np.percentile(times, 90)),
            "found": f"{found}/{pasted}", "named": f"{named}/{pasted}"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=12)
    ap.add_argument("--people", type=int, default=8)
    ap.add_argument("--detectors", default="hog,blazeface")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}, load {os.getloadavg()[0]:.1f}, cores {os.cpu_count()}", flush=True)
    # people with at least 8 photos: 5 to build from, the rest to paste
    people = [d for d in sorted((faces_dir() / "lfw62").iterdir()) if len(list(d.glob("*.jpg"))) >= 8]
    people = people[:: max(1, len(people) // args.people)][:args.people]
    import bench.compose as comp
    comp.source_photos.cache_clear()
    pool = tuple(p for d in people for p in sorted(d.glob("*.jpg"))[5:])
    comp.source_photos = lambda folder="lfw62": pool  # faces drawn from the held-out photos only
    kinds = {k: photos_of(k, args.photos, args.seed) for k in ("phone_12mp", "frame_1080p")}
    print("| detector | photo | p50 ms | p90 ms | faces found | faces named right |\n|---|---|---|---|---|---|")
    for detector in args.detectors.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            stack = Stack(Path(tmp), workers=2, env={"FR_DETECTOR": detector}, warm=True).start()
            try:
                r = stack.post("/build_recognizer", files={"archive": ("a.zip", people_archive(people))}, timeout=600)
                r.raise_for_status()
                model = r.json()["id"]
                stack.wait_state(model, ("done",), timeout=3600)
                for kind, photos in kinds.items():
                    stack.post(f"/models/{model}/predict", files={"image": ("p.jpg", photos[0].data)}, timeout=120)
                    m = measure(stack, model, photos)
                    print(f"| {detector} | {kind} | {m['p50']:.0f} | {m['p90']:.0f} | {m['found']} | {m['named']} |",
                          flush=True)
            finally:
                stack.stop()


if __name__ == "__main__":
    main()
