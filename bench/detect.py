"""Face detectors on photos as phones and cameras take them (bench/compose.py), all in the same run.

For each kind of photo and each detector: the share of the pasted faces found (a found box with IoU >= 0.3
with the face's true box, one to one), false faces (boxes matching no pasted face; per 100 photos for the
face-less kinds), and the p50 time of detection per photo (the photo already decoded; decoding, which
every detector pays alike, is printed apart). With `--pipeline`, the whole face path at the
preprocessor/features level (decode, detect, 5-point landmarks, chips, quality, embedding of every face:
`features.extract.prepare_photo` + `embed_chips`, what predict and builds run) on 12 MP phone photos and
1080p frames, per detector, and the process's peak memory growth.

    python bench/detect.py [--per-kind 8] [--detectors today,hog_full,blazeface] [--pipeline 10]
                           [--mmod 2] [--seed 7] [--folder lfw62]

Detectors: `today` (dlib HOG on a copy shrunk to 1,600 px, upsampled once only up to 1,000 px: the
pipeline before this change), `hog_full` (dlib HOG on the full-size photo, upsampled once when its long
side is at most 2,000 px: 1080p/720p frames), `blazeface` (preprocessor/blazeface.py, faces from 40 px),
`blazeface60` (the same from 60 px), `blazeface_m20`, `_m14`, `_m12`, `_m10` (from 40 px, the finest level
mapping 40 px to 20, 14, 12 or 10 px of the input whatever the photo size), `mmod`
(dlib's CNN, `cnn_face_detection_model_v1`, on `--mmod` photos per kind only: it takes minutes per 12 MP
photo on this CPU).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.compose import KINDS, NO_FACE_KINDS, compose, match, yaw_figures

MAX_PIXELS = 40_000_000


def _hog_full(image: np.ndarray) -> list:
    from preprocessor.faces import detect_faces
    up = 2000 if max(image.shape[:2]) <= 2000 else 0
    boxes = detect_faces(image, max_side=10**6, upsample_max_side=0)
    if up and not boxes:
        boxes = detect_faces(image, max_side=10**6, upsample_max_side=10**6)
    if up and boxes:  # small faces need the upsampled pass even when a large one was found
        boxes = _merge(boxes, _hog_up(image))
    return boxes


def _hog_up(image: np.ndarray) -> list:
    import dlib

    from preprocessor.faces import DETECTOR_LOCK, Box, _detector
    with DETECTOR_LOCK:
        rects = _detector()(image, 1)
    return [Box(r.left(), r.top(), r.right(), r.bottom()) for r in rects if isinstance(r, dlib.rectangle)]


def _merge(a: list, b: list) -> list:
    from bench.compose import iou
    out = list(a)
    for x in b:
        if all(iou(x.as_list(), y.as_list()) < 0.3 for y in out):
            out.append(x)
    return out


def _mmod(image: np.ndarray) -> list:
    import dlib
    import face_recognition_models

    from preprocessor.faces import Box
    global _CNN
    if "_CNN" not in globals():
        _CNN = dlib.cnn_face_detection_model_v1(face_recognition_models.cnn_face_detector_model_location())
    return [Box(d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()) for d in _CNN(image, 0)]


def _blaze_m(model_min_face: float):
    """BlazeFace from 40 px with the finest level mapping 40 px to `model_min_face` input px (the default
    maps it to 14): more tiles and fewer misses of the smallest faces above 14, fewer tiles below."""
    def run(image: np.ndarray) -> list:
        from preprocessor import blazeface
        from preprocessor.faces import _clipped
        h, w = image.shape[:2]
        return _clipped([blazeface.to_hog_box(*d[:4]) for d in blazeface.detect(image, 40, model_min_face)], w, h)
    return run


def detectors() -> dict:
    from preprocessor.faces import detect_faces
    return {
        "today": lambda im: detect_faces(im, 1600, 1000, "hog"),
        "hog_full": _hog_full,
        "blazeface": lambda im: detect_faces(im, detector="blazeface", min_face_px=40),
        "blazeface60": lambda im: detect_faces(im, detector="blazeface", min_face_px=60),
        "blazeface_m20": _blaze_m(20.0),
        "blazeface_m14": _blaze_m(14.0),
        "blazeface_m12": _blaze_m(12.0),
        "blazeface_m10": _blaze_m(10.0),
        "mmod": _mmod,
    }


def p50(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else float("nan")


def run_detection(args) -> None:
    from preprocessor.images import decode_image
    rng = np.random.default_rng(args.seed)
    kinds = args.kinds.split(",") if args.kinds else list(KINDS) + list(NO_FACE_KINDS)
    names = args.detectors.split(",")
    found = {(k, d): [0, 0, 0, []] for k in kinds for d in names}  # found, truth, false, times
    decode_ms: dict[str, list[float]] = {k: [] for k in kinds}
    yaw_rows: dict[str, list] = {d: [] for d in names}
    yaws = None
    for kind in kinds:
        for i in range(args.per_kind):
            photo = compose(kind, rng, args.folder)
            t0 = time.perf_counter()
            image = decode_image(photo.data, MAX_PIXELS)
            decode_ms[kind].append((time.perf_counter() - t0) * 1000)
            for name in names:
                if name == "mmod" and i >= args.mmod:
                    continue
                t0 = time.perf_counter()
                boxes = detectors()[name](image)
                dt = (time.perf_counter() - t0) * 1000
                hit, false = match(photo.boxes, [b.as_list() for b in boxes])
                row = found[(kind, name)]
                row[0] += hit
                row[1] += len(photo.boxes)
                row[2] += false
                row[3].append(dt)
                if KINDS.get(kind) is not None and KINDS[kind].turned:
                    yaws = yaws or yaw_figures(args.folder)
                    for box, src in zip(photo.boxes, photo.sources):
                        one, _ = match([box], [b.as_list() for b in boxes])
                        yaw_rows[name].append((abs(yaws.get(Path(src), 0.0)), one))
            print(f"  {kind} #{i}: " + ", ".join(
                f"{n} {found[(kind, n)][0]}/{found[(kind, n)][1]} {found[(kind, n)][3][-1]:.0f} ms"
                for n in names if found[(kind, n)][3]), flush=True)
    print("\n| photo | decode p50 ms | " + " | ".join(
        f"{n}: found, false faces, p50 ms" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for kind in kinds:
        cells = []
        for n in names:
            hit, total, false, times = found[(kind, n)]
            if not times:
                cells.append("-")
                continue
            photos = len(times)
            what = (f"{false * 100 / photos:.0f} per 100 photos ({false}/{photos})" if kind in NO_FACE_KINDS
                    else f"{100 * hit / max(1, total):.0f}% ({hit}/{total}), {false} false")
            cells.append(f"{what}, {p50(times):.0f}")
        print(f"| {kind} | {p50(decode_ms[kind]):.0f} | " + " | ".join(cells) + " |")
    if any(yaw_rows.values()):
        print("\nturned faces by the landmark yaw figure of their source crop (nose offset / eye distance):")
        for n, rows in yaw_rows.items():
            if rows:
                bins = [(0, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 9)]
                print(f"  {n}: " + ", ".join(
                    f"[{a}, {b}) {sum(h for y, h in rows if a <= y < b)}/{sum(1 for y, _ in rows if a <= y < b)}"
                    for a, b in bins))


def run_pipeline(args) -> None:
    from dataclasses import replace

    from constants import Settings
    from features.embeddings import embed_chips
    from features.extract import prepare_photo
    rng = np.random.default_rng(args.seed + 1)
    base = Settings.from_env()
    photos = {k: [compose(k, rng, args.folder) for _ in range(args.pipeline)] for k in ("phone_12mp", "frame_1080p")}
    for detector in ("hog", "blazeface"):
        s = replace(base, detector=detector)
        prepare_photo(photos["frame_1080p"][0].data, s)  # models loaded, TensorFlow warm
        embed_chips([np.zeros((150, 150, 3), np.uint8)], settings=s)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for kind, items in photos.items():
            times, steps, faces, truth = [], {}, 0, 0
            for c in items:
                t0 = time.perf_counter()
                f = prepare_photo(c.data, s)
                embed_chips([x.chip for x in f.faces], settings=s)
                times.append((time.perf_counter() - t0) * 1000)
                for k, v in f.steps.items():
                    steps.setdefault(k, []).append(v * 1000)
                faces += match(c.boxes, [x.box.as_list() for x in f.faces])[0]
                truth += len(c.boxes)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"| {detector} | {kind} | {p50(times):.0f} | " + ", ".join(
                f"{k} {p50(v):.0f}" for k, v in steps.items()) + f" | {faces}/{truth} | +{rss - rss0:.0f} MB |",
                flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-kind", type=int, default=8)
    ap.add_argument("--kinds", default="")
    ap.add_argument("--detectors", default="today,hog_full,blazeface,blazeface60")
    ap.add_argument("--mmod", type=int, default=1, help="photos per kind that dlib's CNN runs on (slow)")
    ap.add_argument("--pipeline", type=int, default=0, help="photos per kind for the whole-pipeline timing")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--folder", default=os.environ.get("FR_BENCH_FOLDER", "lfw62"))
    args = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}, load {os.getloadavg()[0]:.1f}, cores {os.cpu_count()}")
    if args.per_kind:
        run_detection(args)
    if args.pipeline:
        print("\n| detector | photo | p50 ms: decode+detect+landmarks+chips+quality+embed | steps p50 ms | faces "
              "found | peak RSS growth |\n|---|---|---|---|---|---|")
        run_pipeline(args)


if __name__ == "__main__":
    main()
