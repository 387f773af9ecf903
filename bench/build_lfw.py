#!/usr/bin/env python
"""Build a recognizer from a whole folder of people through the real service, and time it.

    python bench/build_lfw.py [--faces ../shared/faces/lfw62] [--workers 2] [--ref-photos 200]

Prints: the reference (the raw dlib loop, single process, same photos sample, same
run), the service's wall time from upload to `available`, photos/s, the ratio
to the reference, and the model's held-out metrics from its manifest.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from test.stack import Stack


def raw_pipeline(every_face: bool = False, mirror: bool = False):
    """The plain dlib loop for one photo path: decode, HOG, 5 landmarks, chip, ResNet embedding.

    Of the largest face, or with `every_face` of every face (up to 8, the service's work:
    a group photo's faces are all embedded so the build can take the labelled person's).
    `mirror`: the chip's mirror image is embedded too (what a bundle's predict does).
    """
    import cv2
    import dlib
    import face_recognition_models as frm
    import numpy as np
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    net = dlib.face_recognition_model_v1(frm.face_recognition_model_location())

    def one(p: Path) -> None:
        img = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        rects = det(img, 0) or det(img, 1)
        faces = sorted(rects, key=lambda r: -r.area())[:8 if every_face else 1]
        for r in faces:
            chip = dlib.get_face_chip(img, sp(img, r), size=150, padding=0.25)
            net.compute_face_descriptor([chip, np.ascontiguousarray(chip[:, ::-1])] if mirror else [chip])
    return one


def reference(paths: list[Path], every_face: bool = False, mirror: bool = False) -> float:
    """Photos/s of the plain dlib loop (`raw_pipeline`) over `paths`."""
    one = raw_pipeline(every_face, mirror)
    t0 = time.perf_counter()
    for p in paths:
        one(p)
    return len(paths) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    default_faces = Path(os.environ.get("FR_FACES_DIR", ROOT.parent / "shared" / "faces")) / "lfw62"
    ap.add_argument("--faces", type=Path, default=default_faces)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ref-photos", type=int, default=200)
    args = ap.parse_args()

    paths = sorted(args.faces.glob("*/*.jpg"))
    sample = paths[:: max(1, len(paths) // args.ref_photos)][: args.ref_photos]
    ref = reference(sample)
    print(f"reference (raw dlib loop, 1 process, {len(sample)} photos): {ref:.2f} photos/s")

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for p in paths:
            zf.write(p, f"{p.parent.name}/{p.name}")
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), workers=args.workers, warm=True).start()  # a started service: models loaded
        try:
            t0 = time.perf_counter()
            r = stack.post("/build_recognizer", files={"archive": ("lfw.zip", buf.getvalue())},
                              timeout=600)
            r.raise_for_status()
            t_upload = time.perf_counter() - t0
            job_id = r.json()["id"]
            stack.wait_state(job_id, ("done",), timeout=3600)
            wall = time.perf_counter() - t0
            manifest = json.loads(zipfile.ZipFile(io.BytesIO(
                stack.get(f"/models/{job_id}", timeout=60).content)).read("manifest.json"))
        finally:
            stack.stop()
    n = len(paths)
    print(f"service ({args.workers} worker(s)): {n} photos of {len({p.parent for p in paths})} people")
    print(f"  upload answered in {t_upload:.2f} s; available after {wall:.1f} s "
          f"({n / wall:.2f} photos/s, {n / wall / ref:.2f}x the reference)")
    print(f"  usable {manifest['input']['usable']}, skipped {manifest['input']['skipped_by_reason']}, "
          f"several faces {manifest['input']['several_faces']}")
    print(f"  training {manifest['training']['seconds']} s, {manifest['training']['epochs']} epochs, "
          f"{manifest['network']['params']} params")
    m = manifest["metrics"]
    print(f"  held-out test ({m['test_photos']} photos): accuracy {m['test_accuracy']:.4f}, "
          f"balanced accuracy {m['balanced_accuracy']:.4f}")


if __name__ == "__main__":
    main()
