#!/usr/bin/env python
"""ONNX Runtime's (or TensorFlow's) run of dlib's face ResNet against dlib's own, on every face of real photo sets.

    python bench/embedder.py [--embedder onnx|tensorflow] [--subset lfw62 lfw62-150px] [--limit N] [--chunk 16]

For each set, in one process, photo by photo with the service's own code
(`features.extract.prepare_photo`): the time of each step of a photo's path (decode,
detection with its upsampling policy, alignment: landmarks and chip, quality figures), and beside it dlib's HOG
without upsampling alone (what the policy's first pass costs). Then every chip is
embedded by both embedders in the batches a worker makes (the chips of `--chunk` photos
per call; dlib's `compute_face_descriptor` and `features.resnet_tf`), and by TensorFlow one
chip per call (a prediction's batch), and the script prints:
- the largest difference between the two embedders on any component of any chip (the
  target: at most 1e-4), its median and 99.9th percentile, and the largest difference of
  a distance between two faces;
- ms per photo of each step and per chip of each embedder, and the photo's whole path
  with each embedder;
- the same build made from each embedder's features (`app.worker.tasks.train_bundle`, the
  fixed network, seed 42, the same split): held-out accuracy, balanced accuracy, the
  open-set thresholds and rates, and each bundle's answers on the 298 faces of
  `strangers/` (never in a gallery) embedded by its own embedder, as `predict` embeds
  them: false accepts, and how many strangers the two bundles answer differently.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np

from constants import Settings

FACES = Path(os.environ.get("FR_FACES_DIR", ROOT.parent / "shared" / "faces"))
STEPS = ("decode", "detect", "align", "quality")


def embed_all(chips_per_photo: list[list[np.ndarray]], settings: Settings, chunk: int) -> tuple[np.ndarray, float]:
    """Every chip embedded in the batches of `chunk` photos a worker would make: (vectors, seconds)."""
    from features.embeddings import embed_chips
    out, seconds = [], 0.0
    for i in range(0, len(chips_per_photo), chunk):
        batch = [c for photo in chips_per_photo[i:i + chunk] for c in photo]
        t0 = time.perf_counter()
        out.append(embed_chips(batch, settings=settings))
        seconds += time.perf_counter() - t0
    return np.concatenate(out), seconds


def distances(x: np.ndarray) -> np.ndarray:
    """Every face-to-face distance, in float64: features.embeddings.pairwise_distances works in float32,
    whose rounding (~1e-3 near 0) would hide differences of 1e-6 between the embedders."""
    x = x.astype(np.float64)
    sq = (x * x).sum(1)
    return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0))


def build_answers(paths: list[Path], found: list, vectors: np.ndarray, settings: Settings,
                  strangers: list[np.ndarray]) -> tuple[dict, list]:
    """The fixed network's bundle built from these features (train_bundle, seed 42): its manifest, and
    its answers (name or None, score, candidate) for the strangers' faces (one image each, as predict embeds it:
    the mirror pass for the faces near their threshold)."""
    from app.worker.tasks import train_bundle
    from features.extract import with_embeddings
    from modelization.bundle import read_manifest
    from modelization.recognizer import load_bundle
    feats, i = [], 0
    for f in found:
        feats.append({**dataclasses.asdict(with_embeddings(f, vectors[i:i + len(f.faces)])), "cached": False})
        i += len(f.faces)
    files = [{"label": p.parent.name, "filename": f"{p.parent.name}/{p.name}"} for p in paths]
    bundle = train_bundle({"id": "bench", "options": {"seed": 42}}, files, feats, settings, lambda *a: None)
    recognizer = load_bundle(bundle, settings)
    answers = [recognizer.faces(image, max_faces=1)[0] for image in strangers]
    return read_manifest(bundle), [(a[0].label, a[0].distance, a[0].candidate) for a in answers if a]


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    ap = argparse.ArgumentParser()
    ap.add_argument("--subset", nargs="+", default=["lfw62", "lfw62-150px"])
    ap.add_argument("--limit", type=int, default=0, help="photos per set (0: all)")
    ap.add_argument("--embedder", default="onnx", choices=["onnx", "tensorflow"], help="compared with dlib")
    ap.add_argument("--chunk", type=int, default=16, help="photos per batch, as a worker's extract task")
    args = ap.parse_args()

    from features.extract import prepare_photo
    from preprocessor.faces import _detector
    from preprocessor.images import decode_image
    tf_settings = Settings.from_env(embedder=args.embedder)
    dlib_settings = dataclasses.replace(tf_settings, embedder="dlib")
    from features.embeddings import embed_chips, load_model
    from preprocessor.faces import load_models
    load_models()
    load_model(tf_settings)
    load_model(dlib_settings)
    print(f"load: {os.getloadavg()[0]:.2f} (1-minute average at start)")
    strangers = [decode_image(p.read_bytes(), tf_settings.max_image_pixels)
                 for p in sorted((FACES / "strangers").glob("*.jpg"))]

    for subset in args.subset:
        paths = sorted((FACES / subset).glob("*/*.jpg"))
        if args.limit:
            paths = paths[:: max(1, len(paths) // args.limit)][: args.limit]
        found, steps, first_pass, retried = [], {k: [] for k in STEPS}, [], []
        for p in paths:
            data = p.read_bytes()
            f = prepare_photo(data, tf_settings)
            found.append(f)
            for k in STEPS:
                steps[k].append(f.steps.get(k, 0.0))
            # dlib's HOG without upsampling alone: the policy's first pass (retried with one
            # upsampling when it finds nothing on a photo that fits upsample_max_side)
            image = decode_image(data, tf_settings.max_image_pixels)
            t0 = time.perf_counter()
            hit = len(_detector()(image, 0)) > 0
            first_pass.append(time.perf_counter() - t0)
            retried.append(not hit and max(image.shape[:2]) <= tf_settings.upsample_max_side)
        chips = [[face.chip for face in f.faces] for f in found]
        n_chips = sum(len(c) for c in chips)
        no_face = sum(1 for f in found if not f.faces)
        tf_vec, tf_s = embed_all(chips, tf_settings, args.chunk)
        dl_vec, dl_s = embed_all(chips, dlib_settings, args.chunk)
        flat = [c for photo in chips for c in photo]
        sample = np.arange(len(flat))[:: max(1, len(flat) // 200)][:200]
        t0 = time.perf_counter()
        one = np.concatenate([embed_chips([flat[i]], settings=tf_settings) for i in sample])
        tf1_s = (time.perf_counter() - t0) / len(sample)
        one_diff = np.abs(one - dl_vec[sample]).max()

        diff = np.abs(tf_vec - dl_vec)
        worst = np.unravel_index(diff.argmax(), diff.shape)
        owner = np.repeat(np.arange(len(paths)), [len(c) for c in chips])[worst[0]]
        d_tf = distances(tf_vec) if n_chips <= 8000 else None
        d_dl = distances(dl_vec) if d_tf is not None else None
        print(f"\n== {subset}: {len(paths)} photos, {n_chips} faces embedded ({no_face} photos without a face; "
              f"{sum(retried)} went through the upsampled retry)")
        print(f"largest |{args.embedder} - dlib| on any component: {diff.max():.2e} (face {worst[0]}, component "
              f"{worst[1]}, {paths[owner].parent.name}/{paths[owner].name}); median {np.median(diff):.1e}, "
              f"99.9th percentile {np.quantile(diff, 0.999):.1e}; one chip per call: {one_diff:.2e}; "
              f"target <= 1e-4: {'met' if max(diff.max(), one_diff) <= 1e-4 else 'MISSED'}")
        if d_tf is not None:
            print(f"largest difference of a distance between two faces: {np.abs(d_tf - d_dl).max():.2e}")
        ms = {k: 1000 * statistics.fmean(v) for k, v in steps.items()}
        hog0 = 1000 * statistics.fmean(first_pass)
        per_photo_faces = n_chips / len(paths)
        emb_tf, emb_dl = 1000 * tf_s / n_chips, 1000 * dl_s / n_chips
        path_common = sum(ms.values())
        print("per photo (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in ms.items())
              + f" (HOG without upsampling alone: {hog0:.2f})")
        again = [t for t, r in zip(steps["detect"], retried) if r]
        if again:
            print(f"detection of the {len(again)} photos retried with one upsampling: "
                  f"{1000 * statistics.fmean(again):.1f} ms each, {100 * sum(again) / sum(steps['detect']):.0f}% of "
                  f"all detection time")
        print(f"per face (ms): dlib {emb_dl:.1f}, {args.embedder} {emb_tf:.2f} in batches of {args.chunk} photos, "
              f"{1000 * tf1_s:.2f} one chip per call; dlib / {args.embedder} {emb_dl / emb_tf:.1f}x")
        whole_dl = path_common + per_photo_faces * emb_dl
        whole_tf = path_common + per_photo_faces * emb_tf
        print(f"a photo's whole path (ms): with dlib {whole_dl:.1f}, with {args.embedder} {whole_tf:.1f} "
              f"({whole_dl / whole_tf:.2f}x); the embedding's share: {100 * per_photo_faces * emb_dl / whole_dl:.0f}%"
              f" -> {100 * per_photo_faces * emb_tf / whole_tf:.0f}%")

        results = {name: build_answers(paths, found, vec, st, strangers)
                   for name, vec, st in (("dlib", dl_vec, dlib_settings), (args.embedder, tf_vec, tf_settings))}
        for name, (manifest, answers) in results.items():
            m, o = manifest["metrics"], manifest["open_set"]
            accepted = sum(1 for a in answers if a[0] is not None)
            print(f"build from {name:10s} features: test accuracy {m['test_accuracy']:.4f}, balanced "
                  f"{m['balanced_accuracy']:.4f}, network alone {m['network_test_accuracy']:.4f}; thresholds "
                  f"{o['threshold_range'][0]:.4f}-{o['threshold_range'][1]:.4f}, test DIR {o['test_dir']:.4f}, "
                  f"accepted {o['test_accepted']:.4f}; strangers accepted {accepted} of {len(answers)} faces "
                  f"({100 * accepted / max(1, len(answers)):.2f}%)")
        (_, a_dl), (_, a_tf) = results["dlib"], results[args.embedder]
        same = [(x[1], y[1]) for x, y in zip(a_dl, a_tf) if x[2] == y[2]]
        print(f"the two bundles' answers on the {len(a_dl)} strangers' faces: "
              f"{sum(x[0] != y[0] for x, y in zip(a_dl, a_tf))} differ (accepted by one only, or named otherwise); "
              f"{len(a_dl) - len(same)} have another closest person (candidate); where the candidate is the same, "
              f"largest difference of a score {max((abs(x - y) for x, y in same), default=0.0):.2e}")


if __name__ == "__main__":
    main()
