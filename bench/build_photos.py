#!/usr/bin/env python
"""A build from 12 MP phone photos with 2 workers against a raw single-process loop, same photos, same run
(issue #25).

    python bench/build_photos.py [--people 8] [--per-person 6] [--workers 2] [--seed 13]
                                 [--detectors blazeface] [--loops hog,blazeface]

Photos: `--people` people of `lfw62`, `--per-person` 12 MP phone photos each (bench/compose.py
`phone_12mp`: 4032x3024, one face of 90-260 px, most stored sideways with EXIF 6), composed at run time
from their own LFW photos.

Baselines (`--loops`), in this process, one photo after the other: decode (`decode_image`), detection
with `FR_DETECTOR` set to the loop's detector, landmarks and chips of every face, the embedding of every
face (one batch a photo): what "today's detection and embedding" cost without any service, queue or
cache. Then, for each of `--detectors`, a service (`run.py serve`, `--workers` workers, fresh data folder:
no cached features) builds a model from the same photos: the time from the upload's answer to the job
leaving `extracting` (every photo's faces found and embedded), and to `done` (the search and training
too). Printed: seconds, photos per second, CPU milliseconds a photo (the loop's process; the workers'
processes during extraction, from /proc), and the ratio of each loop to the service's extraction. Two
workers can at best halve a loop's time at equal CPU a photo: the CPU figures say how far from that the
ratio would be on an idle machine.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.compose import compose, faces_dir
from test.stack import Stack, descendants


def photos_of(people: list[Path], per_person: int, seed: int) -> list[tuple[str, bytes]]:
    """(archive name, JPEG bytes): `per_person` phone photos of each person, their face from their own photos."""
    import bench.compose as comp
    rng = np.random.default_rng(seed)
    out = []
    for d in people:
        own = tuple(sorted(d.glob("*.jpg")))
        comp.source_photos = lambda folder="lfw62", own=own: own  # this person's faces only
        for i in range(per_person):
            out.append((f"{d.name}/{d.name}_{i:02d}.jpg", compose("phone_12mp", rng).data))
    return out


def archive(photos: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in photos:
            zf.writestr(name, data)
    return buf.getvalue()


def workers_cpu(root: int) -> float:
    """CPU seconds (user + system) used so far by the `run.py worker` processes below `root`, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in descendants(root):
        try:
            if b"worker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def raw_loop(photos: list[tuple[str, bytes]], detector: str) -> tuple[float, float, int]:
    """Seconds and CPU seconds for the photos one after the other in this process, and faces embedded."""
    from constants import Settings
    from features.embeddings import embed_chips
    from preprocessor.faces import detect_faces, face_at, load_models
    from preprocessor.images import decode_image
    s = replace(Settings.from_env(), detector=detector)
    load_models(detector)
    embed_chips([np.zeros((150, 150, 3), np.uint8)], settings=s)
    faces = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for _, data in photos:
        image = decode_image(data, s.max_image_pixels)
        boxes = detect_faces(image, s.detect_max_side, s.upsample_max_side, detector, s.detect_min_face_px)
        chips = [face_at(image, b, s.chip_size, s.chip_padding).chip for b in boxes]
        if chips:
            embed_chips(chips, settings=s)
        faces += len(chips)
    return time.perf_counter() - t0, time.process_time() - c0, faces


def service_build(photos: list[tuple[str, bytes]], detector: str, workers: int) -> tuple[float, float, float]:
    """(seconds to the end of extraction, the workers' CPU seconds meanwhile, seconds to done) of a build in a
    fresh service."""
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), workers=workers, env={"FR_DETECTOR": detector}, warm=True).start()
        try:
            data = archive(photos)
            assert stack.proc is not None
            cpu0 = workers_cpu(stack.proc.pid)
            r = stack.post("/build_recognizer", files={"archive": ("a.zip", data)}, timeout=600)
            r.raise_for_status()
            t0 = time.perf_counter()
            job = r.json()["id"]
            stack.wait_state(job, ("optimizing", "training", "done"), timeout=3600)
            extracted = time.perf_counter() - t0
            cpu = workers_cpu(stack.proc.pid) - cpu0
            stack.wait_state(job, ("done",), timeout=3600)
            return extracted, cpu, time.perf_counter() - t0
        finally:
            stack.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--people", type=int, default=8)
    ap.add_argument("--per-person", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--detectors", default="blazeface")
    ap.add_argument("--loops", default="hog,blazeface")
    args = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}, load {os.getloadavg()[0]:.1f}, cores {os.cpu_count()}", flush=True)
    people = [d for d in sorted((faces_dir() / "lfw62").iterdir()) if len(list(d.glob("*.jpg"))) >= 4]
    people = people[:: max(1, len(people) // args.people)][:args.people]
    photos = photos_of(people, args.per_person, args.seed)
    n = len(photos)
    print(f"{n} photos of {len(people)} people, {sum(len(d) for _, d in photos) / n / 1e6:.1f} MB a photo", flush=True)
    loops = {}
    for detector in args.loops.split(","):
        secs, cpu, faces = raw_loop(photos, detector)
        loops[detector] = secs
        print(f"| raw loop, 1 process, {detector} | {secs:.1f} s | {n / secs:.2f} photos/s | "
              f"CPU {1000 * cpu / n:.0f} ms a photo | {faces} faces | load {os.getloadavg()[0]:.1f} |", flush=True)
    for detector in args.detectors.split(","):
        extracted, cpu, done = service_build(photos, detector, args.workers)
        ratios = ", ".join(f"{loops[d] / extracted:.2f}x the {d} loop" for d in loops)
        print(f"| service, {args.workers} workers, {detector} | extraction {extracted:.1f} s ({n / extracted:.2f} "
              f"photos/s; {ratios}) | workers' CPU {1000 * cpu / n:.0f} ms a photo | done {done:.1f} s | "
              f"load {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
