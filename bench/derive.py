#!/usr/bin/env python
"""Adding a person to a built model against building the bigger model from scratch, through the real service.

    python bench/derive.py [--faces ../shared/faces] [--workers 2] [--repeat 3]

Two fresh services (own data dirs, feature cache off, so nothing is served from a cache):
- A: builds lfw62 (62 people), then derives from it `--repeat` times a model with one more person
  (`POST /models/<id>/people`, the 4 photos of Barack Obama in `wild/`: obama.jpg, obama2.jpg,
  obama-240p.jpg, obama-1080p.jpg), and once a model without one person (`DELETE /models/<id>/people/<label>`);
- B: builds the same 63 people from scratch (the baseline, same run).
Each time is from the request to `available` (state done). Prints the times and the ratio
derivation / scratch build (issue #18's target: under 10%), and checks that the derived model names
the new person on a held-out photo of them (`obama_and_biden.jpg`, two faces).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from test.stack import Stack

NEW_PERSON = "Barack_Obama"
NEW_PHOTOS = ("obama.jpg", "obama2.jpg", "obama-240p.jpg", "obama-1080p.jpg")
ENV = {"FR_CACHE_MAX_BYTES": "0"}  # every photo extracted: no build or derivation served from the cache


def zip_of(files: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files:
            zf.writestr(name, data)
    return buf.getvalue()


def timed(stack: Stack, send) -> tuple[float, str, dict]:
    """(seconds from the request to `done`, job id, the request's answer)."""
    t0 = time.perf_counter()
    r = send()
    if r.status_code != 202:
        raise SystemExit(f"refused: {r.status_code} {r.text[:300]}")
    job_id = r.json()["id"]
    stack.wait_state(job_id, ("done",), timeout=7200)
    return time.perf_counter() - t0, job_id, r.json()


def manifest(stack: Stack, job_id: str) -> dict:
    return stack.get(f"/models/{job_id}/report", timeout=60).json()["manifest"]


def main() -> None:
    ap = argparse.ArgumentParser()
    faces = Path(os.environ.get("FR_FACES_DIR", ROOT.parent / "shared" / "faces"))
    ap.add_argument("--faces", type=Path, default=faces)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    lfw = [(f"{p.parent.name}/{p.name}", p.read_bytes()) for p in sorted((args.faces / "lfw62").glob("*/*.jpg"))]
    new = [(f"{NEW_PERSON}/{name}", (args.faces / "wild" / name).read_bytes()) for name in NEW_PHOTOS]
    probe = (args.faces / "wild" / "obama_and_biden.jpg").read_bytes()
    people = len({n.split("/")[0] for n, _ in lfw})
    print(f"base: {len(lfw)} photos of {people} people; new person: {NEW_PERSON}, {len(new)} photos")

    with tempfile.TemporaryDirectory() as tmp:
        a = Stack(Path(tmp) / "a", workers=args.workers, env=ENV, warm=True).start()
        try:
            t_base, base, _ = timed(a, lambda: a.post("/build_recognizer", timeout=900,
                                                      files={"archive": ("lfw.zip", zip_of(lfw))}))
            print(f"A: build of {people} people: {t_base:.1f} s")
            derive_times, derived = [], ""
            for k in range(args.repeat):
                parts = [("images", (name, data)) for name, data in new]
                t, derived, answer = timed(a, lambda: a.post(
                    f"/models/{base}/people", files=parts, data={"seed": str(42 + k)}, timeout=300))
                derive_times.append(t)
                m = manifest(a, derived)
                print(f"A: + {NEW_PERSON} (seed {42 + k}): {t:.1f} s; {answer['photos']} photos, {answer['people']} "
                      f"people; inherited {m['input']['features_inherited']}, extracted {len(new)} in "
                      f"{m['input']['extraction_seconds']:.1f} s of worker time; training task "
                      f"{m['training_task_seconds']:.1f} s")
            faces = a.post(f"/models/{derived}/predict", files={"image": ("p.jpg", probe)},
                           timeout=120).json()["faces"]
            print(f"A: the derived model on obama_and_biden.jpg: {[f['label'] for f in faces]}")
            gone = lfw[0][0].split("/")[0]
            t_remove, _, _ = timed(a, lambda: a.delete(f"/models/{base}/people/{gone}", timeout=300))
            print(f"A: - {gone}: {t_remove:.1f} s")
        finally:
            a.stop()

        b = Stack(Path(tmp) / "b", workers=args.workers, env=ENV, warm=True).start()
        try:
            t_scratch, full, _ = timed(b, lambda: b.post("/build_recognizer", timeout=900,
                                                         files={"archive": ("lfw63.zip", zip_of(lfw + new))}))
            m = manifest(b, full)
            print(f"B: build of {people + 1} people from scratch: {t_scratch:.1f} s "
                  f"({m['input']['photos']} photos, worker time on photos {m['input']['extraction_seconds']:.1f} s)")
        finally:
            b.stop()

    median = statistics.median(derive_times)
    print()
    print(json.dumps({"base_build_s": round(t_base, 1), "derive_add_one_s": [round(t, 1) for t in derive_times],
                      "derive_remove_one_s": round(t_remove, 1), "scratch_build_s": round(t_scratch, 1)}))
    print(f"adding one person: median {median:.1f} s = {100 * median / t_scratch:.1f}% of the {t_scratch:.1f} s "
          f"scratch build (target < 10%); worst {100 * max(derive_times) / t_scratch:.1f}%")
    print(f"removing one person: {t_remove:.1f} s = {100 * t_remove / t_scratch:.1f}% of the scratch build")


if __name__ == "__main__":
    main()
