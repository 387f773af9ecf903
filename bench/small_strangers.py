#!/usr/bin/env python
"""The open-set false-accept rate on strangers' faces as phones and cameras show them (issue #25).

    python bench/small_strangers.py [--seeds 5] [--photos 1 3 10] [--cache DIR] [--procs 2]

Galleries: the people of `lfw62`, enrolled from 1, 3 or 10 photos each (the LFW crops, described once
by the build's own code and cached as bench/fewshot.py does), built by the service's own
`train_bundle`, one bundle per seed and gallery size.

Probes: every face of the REPORT strangers (`strangers/`, 298 people the galleries do not hold; nothing
was chosen on them), composed at run time (bench/compose.py) as:
- `crop`: the LFW crop itself (the rate the service promises, FR_TARGET_FAR);
- `small`: pasted on a cluttered 1280x720 frame with the face 32-48 px wide (the smallest faces that are
  still judged: FR_RECOGNISE_MIN_FACE_PX is 32) and saved at JPEG quality 70-90;
- `tiny`: the same with the face 20-31 px (the detector may find them; they must come back unnamed);
- `blurred`: a face of 70-140 px on a 1280x720 frame blurred with sigma 1.5-3, JPEG 60-80;
- `phone`: a face of 90-260 px on a 12 MP photo stored sideways (EXIF 6), JPEG 75-95.

Each probe photo goes through the service's own path once (decode, detect with the settings' detector,
landmarks, chips, quality and `reason`, embedding of the chip and of its mirror image); each bundle then
answers for it as `predict` does (`fewshot.Answers`: the decision on the one-pass embedding, the mirror
pass within the margin of the threshold) and a face with a `reason` is never named. A stranger's face
that is named is a false accept. FAR = false accepts / stranger faces found and judged; `withheld`:
faces found but not judged (too small, too blurred); `found`: faces found / strangers composed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cv2
import numpy as np

from bench.compose import clutter, encode, load_rgb, paste_face, source_photos
from bench.fewshot import SETTINGS, Answers, FaceSet, build, draws, enrolment

VARIANTS = ("crop", "small", "tiny", "blurred", "phone")


def composed(variant: str, crop_path: Path, rng: np.random.Generator) -> bytes:
    """One stranger's photo as `variant` shows it (see the module's docstring)."""
    if variant == "crop":
        return crop_path.read_bytes()
    crop = load_rgb(crop_path)
    if variant == "phone":
        w, h, px, q, orient = 4032, 3024, int(rng.integers(90, 261)), int(rng.integers(75, 96)), 6
    else:
        w, h, orient = 1280, 720, 1
        px = {"small": (32, 49), "tiny": (20, 32), "blurred": (70, 141)}[variant]
        px = int(rng.integers(*px))
        q = int(rng.integers(60, 81)) if variant == "blurred" else int(rng.integers(70, 91))
    img = clutter(w, h, rng)
    m = px * 2
    paste_face(img, crop, px, float(rng.uniform(m, w - m)), float(rng.uniform(m, h - m)))
    if variant == "blurred":
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(1.5, 3.0)))
    return encode(img, q, orient)


def probe_faces(variant: str, paths: tuple[Path, ...], seed: int) -> dict:
    """Every face of every stranger's composed photo: one-pass and mirrored embeddings and its `reason`."""
    from features.embeddings import embed_chips
    from features.extract import find_faces
    from preprocessor.images import decode_image
    rng = np.random.default_rng([seed, VARIANTS.index(variant)])
    one, mirrored, reasons, t0 = [], [], [], time.perf_counter()
    for path in paths:
        image = decode_image(composed(variant, path, rng), SETTINGS.max_image_pixels)
        faces, _ = find_faces(image, SETTINGS, SETTINGS.max_faces_per_predict)
        if not faces:
            continue
        x = embed_chips([f.chip for f in faces], settings=SETTINGS)
        xm = embed_chips([np.ascontiguousarray(f.chip[:, ::-1]) for f in faces], settings=SETTINGS)
        one.extend(x)
        mirrored.extend((x + xm) / 2)
        reasons.extend(f.reason for f in faces)
    return {"one": np.asarray(one, np.float32).reshape(-1, 128),
            "mirrored": np.asarray(mirrored, np.float32).reshape(-1, 128),
            "reasons": np.asarray([r or "" for r in reasons]), "composed": len(paths),
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--photos", nargs="+", default=["1", "3", "10"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--cache", type=Path,
                    default=Path(os.environ.get("FR_BENCH_CACHE", ROOT / "var" / "bench-fewshot")))
    ap.add_argument("--procs", type=int, default=2)
    args = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}, load {os.getloadavg()[0]:.1f}, detector {SETTINGS.detector}, "
          f"FR_TARGET_FAR {SETTINGS.target_far}", flush=True)
    from modelization.recognizer import load_bundle
    faces = FaceSet("lfw62", args.cache, args.procs)
    strangers = source_photos("strangers")
    probes = {v: probe_faces(v, strangers, 0) for v in args.variants}
    for v, p in probes.items():
        judged = int((p["reasons"] == "").sum())
        print(f"probes {v}: {len(p['reasons'])} faces found in {p['composed']} photos, {judged} judged, "
              f"{p['seconds']:.0f} s", flush=True)
    rows: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for seed in range(args.seeds):
        _, pools = draws(faces.labels, seed, 2)
        for photos in args.photos:
            rec = load_bundle(build(faces, enrolment(pools, photos, seed), seed), SETTINGS)
            for v, p in probes.items():
                judged = p["reasons"] == ""
                if not judged.any():
                    rows.setdefault((photos, v), []).append((0, 0))
                    continue
                answers = Answers(rec, p["one"][judged], p["mirrored"][judged])
                rows.setdefault((photos, v), []).append((int(answers.accepted.sum()), int(judged.sum())))
            print(f"seed {seed}, {photos} photos: done", flush=True)
    print("\n| photos per person | probe | faces found / strangers | judged | FAR (mean of seeds) | per seed |")
    print("|---|---|---|---|---|---|")
    for (photos, v), got in rows.items():
        p = probes[v]
        rates = [a / n for a, n in got if n]
        far = f"{100 * np.mean(rates):.2f}%" if rates else "-"
        per_seed = ", ".join(f"{a}/{n}" for a, n in got)
        print(f"| {photos} | {v} | {len(p['reasons'])}/{p['composed']} | {int((p['reasons'] == '').sum())} | "
              f"{far} | {per_seed} |")


if __name__ == "__main__":
    main()
