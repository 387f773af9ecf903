#!/usr/bin/env python
"""Galleries of thousands (issue #28): lfw62 plus N people enrolled from one photo each, through the service.

    python bench/thousands.py [--sizes 10 100 500 2500] [--workers 2] [--holdout 5] [--seed 0]
                              [--data var/bench-thousands] [--latency 100]
    python bench/thousands.py --dumps [--data var/bench-thousands]
    python bench/thousands.py --profile [--data var/bench-thousands]

`--dumps`: no service; each bundle the runs left in `--data`: its size, its manifest's, the time to load it
and the in-process time of `Recognizer.identify` for one face (the part of a prediction that grows with
the gallery), median of 200. `--profile`: cProfile of `train_bundle` in this process on the features the
largest model there kept (where the train task's time goes).

Per size N, one build through a real `serve` stack (2 workers): lfw62 (62 people, `--holdout` photos of
each held out as known probes, the rest uploaded) plus the first N people of `strangers-more` in a seeded
order, one photo each (a folder per person). The stack's data folder (`--data`, kept between runs) keeps the
feature cache, so the first build of a photo extracts it and the next ones take it from the cache: the
table says which build extracted.

Printed per size: people held, upload-to-available wall time, the training task's own time (manifest), the
highest RSS of any broker, worker and web process during the build (sampled every 0.5 s), the in-process
time of `Recognizer.identify` for one face, the bundle's size, GET /models/<id>/report (the whole
manifest, people and all) answer size and time,
predict p50/p95 over `--latency` one-client requests (photos of the probes, alternating known and
stranger) and, right after, the p50 of the raw dlib loop (one pass: decode, HOG, landmarks, ResNet) on the
same photos in this process (the reference), and recognition measured on every probe through
POST /models/<id>/predict (return_embeddings=1):

- FAR: the REPORT strangers (`strangers/`, 300 people, in no model) named as someone;
- DIR: the held-out lfw62 photos named as their person;
- 1-NN baseline in the same run: the model's gallery (the features the build kept, dumps/<id>/features.json)
  against the probes' own embeddings as the service answered them; its distance threshold PEEKED on the
  report strangers so that it accepts exactly as many of them as the model did; its DIR at that FAR.

`strangers-more` is only enrolment data here (nothing is tuned on it in this script); `strangers/` is
only probed.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np

from bench.build_lfw import raw_pipeline
from bench.perf import descendants, rss_mb
from test.stack import Stack

FACES = Path(os.environ.get("FR_FACES_DIR", ROOT.parent / "shared" / "faces"))
ADMIN_KEY = "bench-thousands-admin-key-0123456789abcdef"  # fixed: the feature cache is per tenant


def split_lfw(holdout: int, seed: int) -> tuple[list[Path], list[Path]]:
    """(uploads, held-out probes) of lfw62: `holdout` photos per person drawn with `seed`."""
    rng = random.Random(seed)
    uploads, probes = [], []
    for person in sorted(p for p in (FACES / "lfw62").iterdir() if p.is_dir()):
        photos = sorted(person.glob("*.jpg"))
        rng.shuffle(photos)
        probes += photos[:holdout]
        uploads += photos[holdout:]
    return uploads, probes


def singletons(seed: int) -> list[Path]:
    """strangers-more's photos (one per person) in a seeded order: the first N are the N enrolled."""
    photos = sorted((FACES / "strangers-more").glob("*.jpg"))
    random.Random(seed).shuffle(photos)
    return photos


def archive(lfw: list[Path], ones: list[Path]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for p in lfw:
            zf.write(p, f"{p.parent.name}/{p.name}")
        for p in ones:
            zf.write(p, f"{p.stem.rsplit('_', 1)[0]}/{p.name}")
    return buf.getvalue()


def predict(stack: Stack, model_id: str, path: Path) -> tuple[float, str | None, np.ndarray | None]:
    """(seconds, the largest face's label or None, its embedding or None) of one predict request."""
    t0 = time.perf_counter()
    r = stack.post(f"/models/{model_id}/predict", files={"image": (path.name, path.read_bytes())},
                   data={"return_embeddings": "1"}, timeout=120)
    dt = time.perf_counter() - t0
    r.raise_for_status()
    faces = r.json()["faces"]
    if not faces:
        return dt, None, None
    face = max(faces, key=lambda f: (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) if f.get("box") else 0)
    # an unknown face answers label "unknown" and known false
    return dt, face["label"] if face.get("known") else None, np.asarray(face["embedding"], np.float32)


def one_nn(gallery_x: np.ndarray, gallery_y: list[str], known: list[tuple[str, np.ndarray]],
           strangers: list[np.ndarray], accepts: int) -> float:
    """DIR of the 1-NN whose threshold accepts exactly `accepts` of `strangers` (peeked)."""
    def nearest(v: np.ndarray) -> tuple[float, str]:
        d = np.linalg.norm(gallery_x - v[None, :], axis=1)
        i = int(np.argmin(d))
        return float(d[i]), gallery_y[i]
    sd = np.sort([nearest(v)[0] for v in strangers])
    # accept distance <= t: t between the accepts-th and the next stranger distance
    t = (sd[accepts - 1] + sd[accepts]) / 2 if 0 < accepts < len(sd) else (sd[0] - 1e-6 if accepts == 0 else np.inf)
    hits = 0
    for label, v in known:
        d, who = nearest(v)
        hits += int(d <= t and who == label)
    return hits / len(known)


def identify_ms(bundle: bytes, x: np.ndarray) -> tuple[float, float]:
    """(load ms, median ms of `Recognizer.identify` on one embedding): the part of a prediction that grows
    with the gallery (classifier over every person, distance to every template), in this process."""
    from modelization.recognizer import load_bundle
    t0 = time.perf_counter()
    rec = load_bundle(bundle)
    load = 1000 * (time.perf_counter() - t0)
    times = []
    for v in x:
        t0 = time.perf_counter()
        rec.identify(v[None, :])
        times.append(time.perf_counter() - t0)
    return load, 1000 * float(np.median(times))


def from_dumps(data: Path, probes: list[Path]) -> None:
    """Every bundle a run left in `data`/dumps: people, bundle and manifest size, load and identify time
    (on random unit embeddings: the work does not depend on the values)."""
    x = np.random.default_rng(0).normal(size=(200, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True) * 2.5  # dlib embeddings have a norm of about 0.4
    print("| people | bundle (MB) | manifest (MB) | load (ms) | identify one face (ms) |")
    print("|---|---|---|---|---|")
    rows = []
    for z in (data / "dumps").glob("*/model.zip"):
        bundle = z.read_bytes()
        manifest = zipfile.ZipFile(io.BytesIO(bundle)).read("manifest.json")
        load, ms = identify_ms(bundle, x)
        rows.append((len(json.loads(manifest)["labels"]), len(bundle) / 1e6, len(manifest) / 1e6, load, ms))
    for r in sorted(rows):
        print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.0f} | {r[4]:.3f} |")


class PeakRss:
    """The highest RSS (MB) of each process of a stack (broker, each worker, each web process), sampled every
    0.5 s in a thread while a build runs: `with PeakRss(stack) as peak: ...; peak.by_kind()`."""

    def __init__(self, stack: Stack):
        self.stack, self.peak, self.stop = stack, {}, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        assert self.stack.proc is not None
        while not self.stop.wait(0.5):
            for pid, cmd in descendants(self.stack.proc.pid):
                kind = ("worker" if " worker" in cmd else "web" if "uwsgi" in cmd else "broker" if " broker" in cmd
                        else None)
                if kind:
                    try:
                        self.peak[(kind, pid)] = max(self.peak.get((kind, pid), 0.0), rss_mb(pid))
                    except OSError:
                        pass

    def __enter__(self) -> PeakRss:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def by_kind(self) -> dict[str, float]:
        """The highest peak of any one process of each kind."""
        out: dict[str, float] = {}
        for (kind, _), mb in self.peak.items():
            out[kind] = round(max(out.get(kind, 0.0), mb), 1)
        return out


def profile_training(data: Path) -> None:
    """cProfile of `train_bundle` in this process on the features the largest model in `data`/dumps kept
    (what its build's train task did, without the service)."""
    import cProfile
    import pstats

    from app.broker.records import as_task_features
    from app.worker.tasks import train_bundle
    from constants import Settings
    folder = max((data / "dumps").glob("*/features.json"), key=lambda f: f.stat().st_size).parent
    records = json.loads((folder / "features.json").read_text())
    files = [{"label": r["label"], "filename": r["filename"]} for r in records]
    settings = Settings.from_env(data_dir=data / "profile")
    profile = cProfile.Profile()
    t0 = time.perf_counter()
    profile.enable()
    bundle = train_bundle({"id": folder.name, "name": None, "options": {}}, files,
                          [as_task_features(r) for r in records], settings, lambda *a, **k: None)
    profile.disable()
    print(f"{len(records)} photos: train_bundle {time.perf_counter() - t0:.1f} s under the profiler, "
          f"bundle {len(bundle) / 1e6:.2f} MB")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(25)


def measure(stack: Stack, n: int, lfw: list[Path], probes: list[Path], report: list[Path], ones: list[Path],
            latency: int) -> dict:
    payload = archive(lfw, ones[:n])
    with PeakRss(stack) as peak:
        t0 = time.perf_counter()
        r = stack.post("/build_recognizer", files={"archive": ("gallery.zip", payload)}, timeout=900)
        r.raise_for_status()
        job_id = r.json()["id"]
        stack.wait_state(job_id, ("done",), timeout=7200)
        wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    info = stack.get(f"/models/{job_id}/report", timeout=120)  # where a model's people are listed
    info_s = time.perf_counter() - t1
    bundle = stack.get(f"/models/{job_id}", timeout=120).content
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(bundle)).read("manifest.json"))
    records = json.loads((stack.data_dir / "dumps" / job_id / "features.json").read_text())
    gx = np.asarray([r["features"]["embedding"] for r in records if r["features"].get("embedding")], np.float32)
    gy = [r["label"] for r in records if r["features"].get("embedding")]

    known: list[tuple[str, np.ndarray]] = []
    times: list[float] = []
    dir_hits = 0
    for p in probes:
        dt, label, v = predict(stack, job_id, p)
        times.append(dt)
        if v is not None:
            known.append((p.parent.name, v))
        dir_hits += int(label == p.parent.name)
    strangers: list[np.ndarray] = []
    accepted = 0
    for p in report:
        dt, label, v = predict(stack, job_id, p)
        times.append(dt)
        if v is not None:
            strangers.append(v)
        accepted += int(label is not None)
    # latency alone, after the recognition pass (caches warm): alternating a known and a stranger photo
    photos = [(probes if i % 2 else report)[i // 2 % min(len(probes), len(report))] for i in range(latency)]
    lat = sorted(predict(stack, job_id, p)[0] for p in photos)
    # the reference, right after on the same photos: the raw dlib loop's one pass per photo (decode, HOG,
    # landmarks, chip, ResNet) in this process, as bench/perf.py times it
    one = raw_pipeline()
    ref = []
    for p in photos:
        t0 = time.perf_counter()
        one(p)
        ref.append(time.perf_counter() - t0)
    ref.sort()
    return {
        "n": n, "people": len(manifest["labels"]), "wall": wall,
        "extracted": manifest["input"].get("extraction_seconds"),
        "train": manifest["training_task_seconds"], "fit": manifest["training"]["seconds"],
        "params": manifest["network"]["params"], "bundle_mb": len(bundle) / 1e6,
        "info_kb": len(info.content) / 1e3, "info_s": info_s,
        "p50": 1000 * lat[len(lat) // 2], "p95": 1000 * lat[int(len(lat) * 0.95)],
        "raw_p50": 1000 * ref[len(ref) // 2],
        "far": accepted / len(report), "accepted": accepted, "dir": dir_hits / len(probes),
        "nn_dir": one_nn(gx, gy, known, strangers, accepted), "probes": len(probes), "strangers": len(report),
        "peak_rss_mb": peak.by_kind(), "identify_ms": identify_ms(bundle, np.asarray([v for _, v in known]))[1],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500, 2500])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--holdout", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency", type=int, default=100)
    ap.add_argument("--data", type=Path, default=ROOT / "var" / "bench-thousands")
    ap.add_argument("--profile", action="store_true", help="no service: cProfile of the train task on the "
                    "largest model's kept features in --data")
    ap.add_argument("--dumps", action="store_true", help="no service: the bundles a run left in --data, "
                    "their sizes and the in-process time of identify")
    args = ap.parse_args()
    lfw, probes = split_lfw(args.holdout, args.seed)
    if args.dumps:
        from_dumps(args.data, probes)
        return
    if args.profile:
        profile_training(args.data)
        return
    report = sorted((FACES / "strangers").glob("*.jpg"))
    ones = singletons(args.seed)
    print(f"load average at start {os.getloadavg()[0]:.2f}; lfw62 uploads {len(lfw)}, probes {len(probes)}, "
          f"report strangers {len(report)}", flush=True)
    # no rate limit: the probes alone are 610 requests of one key, faster than 600 a minute on a quiet machine
    env = {"FR_ADMIN_KEY": ADMIN_KEY, "FR_RATE_LIMIT_PER_MIN": "0"}
    stack = Stack(args.data, workers=args.workers, warm=True, env=env).start(timeout=300)
    rows = []
    try:
        for n in args.sizes:
            row = measure(stack, n, lfw, probes, report, ones, args.latency)
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    finally:
        stack.stop()
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    print("| one-photo people | people held | upload to available (s) | extraction (worker s) | training task (s) "
          "| bundle (MB) | GET /models/<id>/report (KB, s) | predict p50 / p95 (ms) | raw loop p50 (ms) "
          "| FAR (report) | DIR "
          "| 1-NN DIR, same FAR |")
    print("|" + "---|" * 12)
    for r in rows:
        print(f"| {r['n']} | {r['people']} | {r['wall']:.1f} | {r['extracted']} | {r['train']:.1f} "
              f"| {r['bundle_mb']:.2f} "
              f"| {r['info_kb']:.0f}, {r['info_s']:.2f} | {r['p50']:.0f} / {r['p95']:.0f} | {r['raw_p50']:.0f} "
              f"| {r['far']:.2%} "
              f"({r['accepted']}/{r['strangers']}) | {r['dir']:.2%} | {r['nn_dir']:.2%} |")


if __name__ == "__main__":
    main()
