#!/usr/bin/env python
"""Speed of building and serving, against the raw dlib loop measured in the same run.

    python bench/perf.py [--people 62] [--requests 1000] [--clients 8]

1. Reference: the raw dlib pipeline (decode, HOG, 5 landmarks, chip, ResNet) in one
   process over a sample of the same photos (largest face only, and every face as the
   service does): photos/s, and ms for the predict photo; and the service's own photo
   code (`photo_features`) against that loop, alternating photo by photo on the sample.
2. Service: the build from upload to `available` with 1 and with 2 workers (started
   services whose workers have warmed up), photos/s and ratio to the reference; beside
   it the workers' own time on the photos from the manifest (`extraction_seconds`,
   measured in the same build, so the machine's drift does not enter the overhead);
   then a second build of the same photos (feature cache).
3. Serving: POST /models/<id>/predict on a 250 px photo with 1 client, then with
   `--clients` concurrent clients (bounded request count, localhost only): p50/p95
   latency, requests/s, errors; p50 over the raw per-photo pipeline cost doing the same
   work (one pass, or with the mirror pass when the face's score is near the threshold),
   and over both.
4. Memory: RSS of the web and worker processes before and after the requests, and the
   workers' peak RSS (VmHWM) after building.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests

from bench.build_lfw import raw_pipeline, reference
from modelization.openset import needs_mirror_pass
from test.stack import Stack

FACES = Path(os.environ.get("FR_FACES_DIR", ROOT.parent / "shared" / "faces"))


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below `pid`."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            try:
                cmd = (Path("/proc") / str(c) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            out.append((c, cmd))
            todo.append(c)
    return out


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory(stack: Stack, field: str = "VmRSS") -> dict[str, float]:
    out: dict[str, float] = {}
    for pid, cmd in descendants(stack.proc.pid):
        kind = "worker" if " worker" in cmd else "web" if "uwsgi" in cmd else "broker" if " broker" in cmd else None
        if kind:
            out[kind] = out.get(kind, 0.0) + rss_mb(pid, field)
    return out


def build(stack: Stack, archive: bytes) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = stack.post("/build_recognizer", files={"archive": ("a.zip", archive)}, timeout=600)
    r.raise_for_status()
    stack.wait_state(r.json()["id"], ("done",), timeout=7200)
    return time.perf_counter() - t0, r.json()["id"]


def latencies(stack, url: str, photo: bytes, n: int, clients: int) -> tuple[list[float], int, float]:
    def one(_):
        t0 = time.perf_counter()
        try:
            ok = stack.post(url, files={"image": ("p.jpg", photo)}, timeout=60).status_code == 200
        except requests.RequestException:
            ok = False
        return time.perf_counter() - t0, ok
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    return [t for t, ok in results if ok], sum(1 for _, ok in results if not ok), wall


def interleaved(paths: list[Path]) -> tuple[float, float]:
    """Seconds of the raw loop (every face) and of the service's `photo_features` over the same
    photos, alternating photo by photo so that the machine's drift hits both alike."""
    from constants import Settings
    from features.extract import photo_features
    settings = Settings.from_env()
    raw = raw_pipeline(every_face=True)
    raw(paths[0])  # models loaded before the clock
    photo_features(paths[0].read_bytes(), settings)
    t_raw = t_ours = 0.0
    for p in paths:
        t0 = time.perf_counter()
        raw(p)
        t1 = time.perf_counter()
        photo_features(p.read_bytes(), settings)
        t_raw, t_ours = t_raw + t1 - t0, t_ours + time.perf_counter() - t1
    return t_raw, t_ours


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1000


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # figures appear as they are measured
    ap = argparse.ArgumentParser()
    ap.add_argument("--people", type=int, default=62)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--ref-photos", type=int, default=200, help="photos of the reference's sample (3023: all)")
    ap.add_argument("--ref-repeats", type=int, default=3, help="reference runs; the median is used")
    args = ap.parse_args()

    people = sorted((FACES / "lfw62").iterdir())[: args.people]
    paths = [p for d in people for p in sorted(d.glob("*.jpg"))]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for p in paths:
            zf.write(p, f"{p.parent.name}/{p.name}")
    archive = buf.getvalue()
    probe_path = FACES / "lfw62" / "Tony_Blair" / "Tony_Blair_0001.jpg"
    probe = probe_path.read_bytes()

    sample = paths[:: max(1, len(paths) // args.ref_photos)][: args.ref_photos]
    # a 200-photo sample is short (~30 s) and the machine is noisy: median of --ref-repeats runs, spread printed
    runs = [reference(sample) for _ in range(args.ref_repeats)]
    runs_every = [reference(sample, every_face=True) for _ in range(args.ref_repeats)]
    ref, ref_every = statistics.median(runs), statistics.median(runs_every)
    ref_once = 1000 / reference([probe_path] * 20)
    ref_one = 1000 / reference([probe_path] * 20, mirror=True)  # a bundle's predict embeds the mirror image too
    print(f"reference: raw dlib loop, 1 process, median of {args.ref_repeats} over {len(sample)} photos: "
          f"{ref:.2f} photos/s (largest face; runs "
          f"{', '.join(f'{r:.2f}' for r in runs)}); {ref_every:.2f} photos/s embedding every face as the service "
          f"does (runs {', '.join(f'{r:.2f}' for r in runs_every)}); one 250 px photo: {ref_one:.0f} ms with the "
          f"mirror pass a bundle's predict makes, {ref_once:.0f} ms without")
    print(f"build set: {len(paths)} photos of {len(people)} people")
    t_raw, t_ours = interleaved(sample)
    print(f"the service's photo code (features/extract.photo_features) vs the raw loop, every face, alternating "
          f"photo by photo over {len(sample)} photos: {1000 * t_ours / len(sample):.1f} vs "
          f"{1000 * t_raw / len(sample):.1f} ms a photo ({100 * (t_ours - t_raw) / t_raw:+.1f}%)")

    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            stack = Stack(Path(tmp), workers=workers, warm=True).start()  # a started service: models loaded
            try:
                wall, model_id = build(stack, archive)
                report = stack.get(f"/models/{model_id}/report", timeout=60).json()
                inner = report["manifest"]["input"]["extraction_seconds"]
                print(f"service, {workers} worker(s): {wall:.1f} s, {len(paths) / wall:.2f} photos/s, "
                      f"{len(paths) / wall / ref:.2f}x the reference ({len(paths) / wall / ref_every:.2f}x the "
                      f"every-face loop); worker peak RSS "
                      f"{memory(stack, 'VmHWM').get('worker', 0) / workers:.0f} MB each")
                # The workers' own time on the photos, recorded in the manifest: it is measured in the same
                # build, so the machine's drift between the reference run and the build cancels out.
                if workers == 1:
                    alone = inner
                    print(f"  the worker's own time on the photos (decode, detect, embed): {inner:.1f} s; service "
                          f"overhead beyond it: {wall - inner:.1f} s, {100 * (wall - inner) / inner:.1f}%")
                    for what, rate in (("largest face", ref), ("every face", ref_every)):
                        plain = len(paths) / rate  # the raw loop over the same photos
                        print(f"service overhead with 1 worker (upload, queue, cache writes, training) vs the "
                              f"plain loop ({what}): {wall - plain:.1f} s, {100 * (wall - plain) / plain:.1f}% "
                              f"of its {plain:.0f} s")
                    continue
                print(f"  the workers' own time on the photos: {inner:.1f} s ({1000 * inner / len(paths):.0f} ms a "
                      f"photo, {1000 * alone / len(paths):.0f} with 1 worker); the 1-worker build's photo time / "
                      f"this wall: {alone / wall:.2f}x")
                cached, _ = build(stack, archive)
                print(f"cached rebuild: {cached:.1f} s ({100 * cached / wall:.1f}% of the first build)")
                url = f"/models/{model_id}/predict"
                # load the model in every web process: concurrent requests reach them all
                latencies(stack, url, probe, 4 * args.clients, args.clients)
                before = memory(stack)
                lat, err, w = latencies(stack, url, probe, max(20, args.requests // 10), 1)
                # did the probe's face get the mirror pass? (only a face near the threshold does)
                face = stack.post(url, files={"image": ("p.jpg", probe)}, timeout=60).json()["faces"][0]
                rule = report["manifest"]["open_set"]
                second = bool(rule.get("mirror_probes")) and bool(needs_mirror_pass(
                    face["distance"], face["threshold"], float(rule.get("mirror_margin", "inf"))))
                same = ref_one if second else ref_once
                print(f"predict, 1 client: p50 {pct(lat, .5):.0f} ms, p95 {pct(lat, .95):.0f} ms, "
                      f"{len(lat) / w:.1f} req/s, {err} errors; the face's score {face['distance']:.3f}, threshold "
                      f"{face['threshold']:.3f}: {'two passes (near the threshold)' if second else 'one pass'}; "
                      f"p50 / raw pipeline doing the same work {pct(lat, .5) / same:.2f} (/ one pass "
                      f"{pct(lat, .5) / ref_once:.2f}, / two passes {pct(lat, .5) / ref_one:.2f})")
                lat, err, w = latencies(stack, url, probe, args.requests, args.clients)
                print(f"predict, {args.clients} clients, {args.requests} requests: p50 {pct(lat, .5):.0f} ms, "
                      f"p95 {pct(lat, .95):.0f} ms, {len(lat) / w:.1f} req/s, {err} errors")
                after = memory(stack)
                print("memory RSS before -> after the requests (MB): " + ", ".join(
                    f"{k} {before.get(k, 0):.0f} -> {after.get(k, 0):.0f}" for k in ("web", "worker", "broker")))
            finally:
                stack.stop()


if __name__ == "__main__":
    main()
