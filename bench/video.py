#!/usr/bin/env python
"""Recorded videos (issue #27): how fast a worker reads a 1080p clip, and whether naming a track from its
frames together beats naming each frame alone.

    python bench/video.py speed  [--seconds 30] [--fps 5]
    python bench/video.py naming [--people 10] [--known 16] [--strangers 12] [--seed 5] [--seeds 1]

A model is built in this process the way a worker builds it (extract_chunk, train_bundle) from the first 8
photos of `--people` people of `lfw62`; clips are composed from real faces (bench/clips.py): the model's
people in photos it was not built from, strangers from `strangers/` (never from `strangers-more/`, which
settings are tuned on).

speed: a 1920x1080 clip at 25 frames a second in which two to three people walk at a time (faces 90-200 px),
run through `analyse_video` (the worker's code, one process: a worker runs one task at a time) at `--fps`.
Printed: the clip's seconds, the processing's wall and CPU seconds, and the ratio of video seconds to wall
seconds (>= 1: faster than it plays); beside it, in the same run, the baseline of decoding and sampling alone
(no faces), and the same analysis with faces looked for in the full 1080p frame (FR_VIDEO_MAX_SIDE=1920)
instead of the default 960.

naming: a 1280x720 clip of `--known` appearances of the model's people and `--strangers` of strangers, one
to two at a time, 2-4 s each, faces 48-120 px. Each sampled frame's faces are found and named once; then
the same faces are followed by the same tracker and named three ways: each frame alone (per-frame, what a
client calling predict on every frame gets), a track by the quality-weighted mean of its frames'
embeddings (the service's), and a track by a vote of its frames. Printed per way: faces (or tracks) named
right, known people named wrong, strangers named as someone, and per appearance whether a wrong name ever
came out (what an alert on every frame would raise). `--seeds N`: N clips (seeds `--seed`, `--seed`+1, ...),
each with its own people's order, strangers and face sizes, the counts summed.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np

from app.worker.tasks import extract_chunk, train_bundle
from bench.clips import Appearance, write_clip
from bench.compose import faces_dir
from constants import Settings
from features.tracking import UNKNOWN, Tracker, name_track
from modelization.recognizer import Recognizer, load_bundle
from modelization.video import analyse_video, faces_in_video, judge_with
from preprocessor.uploads import Photo
from preprocessor.video import Sampling, probe, sample


def people_of(n: int) -> dict[str, list[Path]]:
    dirs = [d for d in sorted((faces_dir() / "lfw62").iterdir()) if len(list(d.glob("*.jpg"))) >= 16][:n]
    return {d.name: sorted(d.glob("*.jpg")) for d in dirs}


def build(people: dict[str, list[Path]], settings: Settings) -> Recognizer:
    files = [{"label": n, "filename": f"{n}/{p.name}"} for n, ps in people.items() for p in ps[:8]]
    photos = [Photo(f["label"], f["filename"], (faces_dir() / "lfw62" / f["filename"]).read_bytes()) for f in files]
    bundle = train_bundle({"id": "bench-video", "options": {"seed": 3}}, files, extract_chunk(photos, settings),
                          settings, lambda *a: None)
    return load_bundle(bundle, settings)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def walkers(people: dict[str, list[Path]], seconds: float, rng: np.random.Generator, size_px: tuple[int, int],
            strangers: list[Path] | None = None, n_known: int = 0, n_strangers: int = 0,
            at_once: int = 2) -> list[Appearance]:
    """Appearances of 2-4 s, `at_once` at a time, alternately left-to-right and right-to-left."""
    names = list(people)
    who = [(names[k % len(names)], True) for k in range(n_known)] + [(None, False)] * n_strangers
    if not who:  # speed: as many as fit
        who = [(names[k % len(names)], True) for k in range(int(seconds / 3 * at_once))]
    order = rng.permutation(len(who))
    out, free = [], [0.0] * at_once
    for k, i in enumerate(order):
        name, known = who[i]
        lane = int(np.argmin(free))
        start = free[lane] + float(rng.uniform(0.3, 1.0))
        end = start + float(rng.uniform(2.0, 4.0))
        if end > seconds:
            continue
        free[lane] = end
        if known:
            photos = tuple(people[name][8:16])
        else:
            photos = (strangers[k % len(strangers)],)  # type: ignore[index]
        y = 0.3 + 0.4 * lane / max(1, at_once - 1)
        left = k % 2 == 0
        out.append(Appearance(name if known else UNKNOWN, photos, start, end, x0=0.1 if left else 0.9,
                              x1=0.9 if left else 0.1, y0=y, y1=y, face_px=int(rng.integers(*size_px))))
    return out


def speed(args) -> None:
    s = Settings.from_env(data_dir=Path(tempfile.mkdtemp(prefix="bench-video-")))
    people = people_of(6)
    t = time.perf_counter()
    rec = build(people, s)
    print(f"model of {len(people)} people built in {time.perf_counter() - t:.1f} s")
    rng = np.random.default_rng(args.seed)
    timeline = walkers(people, args.seconds, rng, (90, 200), at_once=3)
    path = Path(tempfile.mkdtemp()) / "clip.mp4"
    t = time.perf_counter()
    write_clip(path, timeline, args.seconds, fps=25, size=(1920, 1080), seed=args.seed)
    info = probe(str(path))
    print(f"clip: {info.width}x{info.height}, {info.fps:g} fps, {info.seconds:.1f} s, {info.frames} frames, "
          f"{path.stat().st_size / 1e6:.1f} MB mp4v, {len(timeline)} appearances (composed in "
          f"{time.perf_counter() - t:.0f} s)")
    rec.analyse(np.zeros((64, 64, 3), np.uint8))  # models loaded before the clock starts
    rows = []
    t0, c0 = time.perf_counter(), cpu_s()
    state = Sampling(info)
    n = sum(1 for _ in sample(str(path), args.fps, s.video_max_side, None, state))
    rows.append(("decode and sample only (baseline)", time.perf_counter() - t0, cpu_s() - c0, n, None))
    for side in (s.video_max_side, 1920):
        run = Settings.from_env(data_dir=s.data_dir, video_max_side=side)
        t0, c0 = time.perf_counter(), cpu_s()
        result, _ = analyse_video(str(path), rec, args.fps, run)
        rows.append((f"analyse_video, faces looked for at max side {side}", time.perf_counter() - t0,
                     cpu_s() - c0, result["sampling"]["frames"], len(result["tracks"])))
    print(f"\n| run ({args.fps:g} fps sampled) | wall s | CPU s | frames sampled | tracks | video s / wall s |")
    print("|---|---|---|---|---|---|")
    for name, wall, cpu, frames, tracks in rows:
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {frames} | {tracks if tracks is not None else '-'} | "
              f"**{info.seconds / wall:.2f}** |")
    base = rows[0][1]
    print(f"\nanalysis at {s.video_max_side} px: {rows[1][1] / base:.1f}x the baseline's wall time; "
          f"at 1920 px: {rows[2][1] / base:.1f}x; load average {os.getloadavg()[0]:.1f}")


def truth_of(face, timeline: list[Appearance], size: tuple[int, int]) -> int | None:
    """The appearance a face belongs to: the one whose face centre is within half a face of the face's."""
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    best, best_d = None, None
    for i, app in enumerate(timeline):
        where = app.at(face.t, *size)
        if where is None:
            continue
        d = float(np.hypot(where[0] - cx, where[1] - cy))
        if d <= app.face_px * 0.75 and (best_d is None or d < best_d):
            best, best_d = i, d
    return best


def naming(args) -> None:
    s = Settings.from_env(data_dir=Path(tempfile.mkdtemp(prefix="bench-video-")))
    people = people_of(args.people)
    rec = build(people, s)
    rows = {"per frame": [0, 0, 0, 0], "track: mean embedding (the service)": [0, 0, 0, 0],
            "track: vote of frames": [0, 0, 0, 0]}  # right, total, known named wrong, strangers named
    alerts = {k: 0 for k in rows}
    n_app = 0
    for seed in range(args.seed, args.seed + args.seeds):
        n_app += naming_clip(args, seed, people, rec, s, rows, alerts)
    print(f"\nover {args.seeds} clip(s), {n_app} appearances:\n")
    print("| naming | named right | known people named as someone else | strangers named as someone | "
          "appearances where a wrong name came out |")
    print("|---|---|---|---|---|")
    for key, (right, total, wrong, fa) in rows.items():
        what = "faces" if key == "per frame" else "tracks"
        print(f"| {key} | {right}/{total} {what} ({right / max(total, 1):.1%}) | {wrong} | {fa} | "
              f"{alerts[key]}/{n_app} |")


def naming_clip(args, seed: int, people: dict[str, list[Path]], rec: Recognizer, s: Settings,
                rows: dict[str, list[int]], alerts: dict[str, int]) -> int:
    """One clip's counts added to `rows` and `alerts`; -> its appearances."""
    strangers = sorted((faces_dir() / "strangers").glob("*.jpg"))
    rng = np.random.default_rng(seed)
    strangers = [strangers[i] for i in rng.permutation(len(strangers))[:args.strangers]]
    seconds = (args.known + args.strangers) * 3.5 / 2 + 2
    size = (1280, 720)
    timeline = walkers(people, seconds, rng, (48, 120), strangers, args.known, args.strangers, at_once=2)
    path = Path(tempfile.mkdtemp()) / "naming.mp4"
    write_clip(path, timeline, seconds, fps=25, size=size, seed=seed)
    print(f"clip: {size[0]}x{size[1]}, {seconds:.0f} s, {sum(a.label != UNKNOWN for a in timeline)} appearances of "
          f"{len(people)} known people, {sum(a.label == UNKNOWN for a in timeline)} of strangers; sampled at "
          f"{args.fps:g} fps")
    frames = [(frame.t, faces) for frame, faces in faces_in_video(str(path), rec, args.fps, s)]
    judge = judge_with(rec)
    tracker = Tracker(judge=judge, max_gap_s=max(2.0, 3.0 / args.fps))
    for t, faces in frames:
        tracker.update(t, faces)
    tracker.close()
    tracks = tracker.tracks()
    wrong_alert: dict[str, set[int]] = {k: set() for k in rows}
    unmatched = 0
    for tr in tracks:
        owners = [truth_of(f, timeline, size) for f in tr.faces]
        known_owners = [o for o in owners if o is not None]
        if not known_owners:
            unmatched += 1
            continue
        owner = max(set(known_owners), key=known_owners.count)
        truth = timeline[owner].label
        judged = [f for f in tr.faces if f.judged]
        for f in judged:  # each frame alone
            score(rows["per frame"], f.label, truth)
            if f.label not in (truth, UNKNOWN):
                wrong_alert["per frame"].add(owner)
        for key, how in (("track: mean embedding (the service)", "mean"), ("track: vote of frames", "vote")):
            label, _ = name_track(tr.faces, judge if how == "mean" else None, how)
            if judged:
                score(rows[key], label, truth)
                if label not in (truth, UNKNOWN):
                    wrong_alert[key].add(owner)
    print(f"seed {seed}: {len(tracks)} tracks ({unmatched} on no pasted face: a second face inside an LFW "
          f"photo), {sum(len(f) for _, f in frames)} faces in {len(frames)} frames", flush=True)
    for key in rows:
        alerts[key] += len(wrong_alert[key])
    return len(timeline)


def score(row: list[int], label: str, truth: str) -> None:
    row[1] += 1
    if label == truth:
        row[0] += 1
    elif truth != UNKNOWN and label != UNKNOWN:
        row[2] += 1
    elif truth == UNKNOWN and label != UNKNOWN:
        row[3] += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("speed", "naming"))
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--people", type=int, default=10)
    ap.add_argument("--known", type=int, default=16)
    ap.add_argument("--strangers", type=int, default=12)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=1)
    args = ap.parse_args()
    speed(args) if args.what == "speed" else naming(args)


if __name__ == "__main__":
    main()
