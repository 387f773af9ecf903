#!/usr/bin/env python
"""Few-shot benchmark (issue #14): galleries of 1, 2, 3, 5, 10, all and mixed photos per person.

    python bench/fewshot.py [--cache DIR] [--seeds 5] [--photos 1 2 3 5 10 all mixed]
                            [--subset lfw62 lfw62-150px] [--probes 10] [--no-sweep] [--extract-only]

Embeddings. Every photo of `lfw62`, `lfw62-150px`, `strangers/` and `strangers-more/` is
described once by the build's own code (`features.extract.describe_photo`: faces, quality,
one-pass embeddings) plus each face's mirror-image embedding (what `predict`'s second pass
averages in), and cached as JSON under `--cache` (~9,000 photos, ~30 min on 2 cores the
first time; seconds after). Nothing from the cache is committed.

Per set, per seed: `--probes` photos of each person are held out as known probes; the
person's other photos, in a seeded order, are the uploads: the first n for n = 1, 2, 3,
5, 10 (nested: n = 2 adds a photo to n = 1), all of them ("all"), or 1 to 10 drawn per
person ("mixed"). The bundle is built by `app.worker.tasks.train_bundle` (its own split,
measured model, refit on every upload, per-person thresholds) and loaded by `load_bundle`;
probes get its answers as `predict` gives them (one pass, the mirror pass within the
margin of the threshold).

Strangers. `strangers-more/` (2,521 faces) is the TUNING set: the stranger model's
constants, the temperature and the mirror margin were chosen on it
(`bench/stranger_model.py`). `strangers/` (298 faces) is the REPORT set: every FAR in the
table is measured on it and nothing was chosen by it. The "FAR on tuning strangers" column
is in-sample, shown for comparison only.

Per configuration (mean over the seeds): FAR (report strangers accepted), DIR (known probes
accepted with the right name), top-1 (named right, accepted or not), and 1-NN on the same
gallery with its threshold PEEKED from the report strangers so that it accepts exactly as
many of them as the bundle: on plain one-pass embeddings (as the issue measured it) and
given the same probe embeddings as the bundle. Then the levers (the score, the mirror
pass, the classifier, per-person thresholds), and a sweep of gallery sizes from 2 to 300
people (the 300 add 238 tuning strangers, one photo each, as gallery members).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np

from constants import Settings

FACES = Path(os.environ.get("FR_FACES_DIR", ROOT.parent / "shared" / "faces"))
SETTINGS = Settings.from_env(data_dir=ROOT)
SUBSETS = ("lfw62", "lfw62-150px")
TUNE, REPORT = "strangers-more", "strangers"


def photo_paths(folder: str) -> list[Path]:
    """The photos of a folder of `FACES`: people's folders (`lfw62`) or flat (`strangers`)."""
    root = FACES / folder
    return sorted(root.glob("*/*.jpg")) or sorted(root.glob("*.jpg"))


# --------------------------------------------------------------------------- embeddings, computed once

_CACHE: Path | None = None


def _cache_path(key: str) -> Path:
    return _CACHE / key[:2] / f"{key}.json"


def _describe(path: str) -> dict:
    """One photo as the build sees it (`features.extract.describe_photo`: every face, its quality) and
    each embedded face's mirror-image embedding (what `predict`'s mirror pass averages in), cached."""
    from dataclasses import asdict

    from features.embeddings import embed_chips
    from features.extract import FeatureCache, describe_photo
    data = Path(path).read_bytes()
    key = FeatureCache(_CACHE, SETTINGS).key(data)
    try:
        return json.loads(_cache_path(key).read_text())
    except (OSError, ValueError):
        pass
    feats, faces = describe_photo(data, SETTINGS)
    mirror = embed_chips([np.ascontiguousarray(f.chip[:, ::-1]) for f in faces])
    out = {"features": asdict(feats), "mirror": [[float(v) for v in row] for row in mirror]}
    target = _cache_path(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(out, fh)
    os.replace(tmp, target)
    return out


def _init(cache: str) -> None:
    global _CACHE
    _CACHE = Path(cache)


def describe_all(paths: list[Path], cache: Path, procs: int) -> list[dict]:
    """`_describe` of every photo, `procs` processes (each photo computed once, ever, per cache)."""
    _init(str(cache))
    if procs <= 1:
        return [_describe(str(p)) for p in paths]
    # spawned, not forked: a child forked after TensorFlow loaded (the embedder, a bundle) hangs in it
    with get_context("spawn").Pool(procs, initializer=_init, initargs=(str(cache),)) as pool:
        return pool.map(_describe, [str(p) for p in paths], chunksize=8)


class FaceSet:
    """A folder's usable photos as arrays: `labels` (person per photo), `x` (one-pass embeddings, as the
    gallery holds them), `mirrored` (mean of the chip's and its mirror's: what `predict`'s second pass
    gives), `quality` (per photo, preprocessor/quality.py), `files` (relative names)."""

    def __init__(self, folder: str, cache: Path, procs: int):
        from features.extract import PhotoFeatures
        from features.select import choose_faces
        paths = photo_paths(folder)
        described = describe_all(paths, cache, procs)
        labels = [p.parent.name if p.parent != FACES / folder else p.stem for p in paths]
        feats = [PhotoFeatures(**d["features"]) for d in described]
        # the face the build uses (a group photo's face that looks like the person), and its mirror pass
        chosen, _ = choose_faces(labels, feats, SETTINGS.same_person_distance)
        keep, x, mirrored = [], [], []
        for i, (f, d) in enumerate(zip(chosen, described)):
            if not f.usable:
                continue
            boxes = [feats[i].box] + [o["box"] for o in feats[i].others or []]
            j = boxes.index(f.box)
            keep.append(i)
            x.append(f.embedding)
            mirrored.append((np.asarray(f.embedding) + np.asarray(d["mirror"][j])) / 2)
        self.folder = folder
        self.files = [str(paths[i].relative_to(FACES / folder)) for i in keep]
        self.labels = np.asarray([labels[i] for i in keep])
        self.x = np.asarray(x, np.float32)
        self.mirrored = np.asarray(mirrored, np.float32)
        self.quality = [chosen[i].quality for i in keep]
        self.features = [described[i]["features"] for i in keep]  # as `extract_chunk` gives them


def nn_dir_at(known_d: np.ndarray, known_right: np.ndarray, stranger_d: np.ndarray, accepted: int) -> float:
    """1-NN's DIR with its threshold PEEKED from the strangers so that it accepts `accepted` of them, as
    many as the method beside it (the k-th smallest stranger distance; below the smallest for 0)."""
    ordered = np.sort(stranger_d)
    tau = ordered[accepted - 1] if accepted > 0 else np.nextafter(ordered[0], -np.inf)
    return float(np.mean((known_d <= tau) & known_right))


def peeked_dir(known_scores: np.ndarray, known_right: np.ndarray, stranger_scores: np.ndarray,
               far: float = 0.01) -> float:
    """DIR of a score with its threshold peeked at `far` of the strangers (ranks scores, blind to calibration)."""
    return nn_dir_at(known_scores, known_right, stranger_scores, int(np.floor(far * len(stranger_scores))))


class Answers:
    """What a bundle answers for embeddings, as `predict` would: the decision on the one-pass embedding,
    the mirror pass for faces within the margin of their threshold (`openset.needs_mirror_pass`)."""

    def __init__(self, rec, one: np.ndarray, mirrored: np.ndarray, margin: float | None = None,
                 temperature: float | None = None):
        from modelization.openset import name_faces, needs_mirror_pass
        margin = rec.mirror_margin if margin is None else margin
        t = rec.temperature if temperature is None else temperature

        def decide(x):
            probs = rec.probabilities(x)
            scores = rec.gallery.scores(x)
            if t == np.inf:  # the gallery alone names the face
                best = scores.argmin(1)
                return best, scores[np.arange(len(best)), best]
            return name_faces(probs, scores, t)

        best, scores = decide(one)
        self.second = (needs_mirror_pass(scores, rec.thresholds[best], margin) if rec.mirror
                       else np.zeros(len(one), bool))
        if self.second.any():
            b2, s2 = decide(mirrored[self.second])
            best, scores = best.copy(), scores.copy()
            best[self.second], scores[self.second] = b2, s2
        self.named, self.scores = best, scores
        self.accepted = scores <= rec.thresholds[best]


def build(faces: FaceSet, enrol: np.ndarray, seed: int, settings: Settings = SETTINGS) -> bytes:
    """The service's own build (`app.worker.tasks.train_bundle`) from the photos `enrol` (indices into `faces`)."""
    from app.worker.tasks import train_bundle
    files = [{"label": str(faces.labels[i]), "filename": faces.files[i]} for i in enrol]
    return train_bundle({"id": f"fewshot-{faces.folder}-{seed}", "options": {"seed": seed}}, files,
                        [faces.features[i] for i in enrol], settings, lambda *a: None)


def draws(labels: np.ndarray, seed: int, probes: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`probes` photos per person held out as known probes, the rest of each person's photos in a
    seeded order (an enrolment of n photos takes the first n, so smaller enrolments are nested)."""
    rng = np.random.default_rng(seed)
    held, pools = [], {}
    for person in sorted(set(labels)):
        idx = rng.permutation(np.flatnonzero(labels == person))
        held.extend(idx[:probes])
        pools[person] = idx[probes:]
    return np.sort(np.asarray(held)), pools


MIXED = (1, 2, 3, 5, 10)  # "mixed": each person enrolled from one of these counts, drawn at random


def enrolment(pools: dict[str, np.ndarray], photos: str, seed: int) -> np.ndarray:
    """The photos uploaded: the first n of each person's pool (`photos`: a count, "all", or "mixed")."""
    rng = np.random.default_rng([seed, 7])
    counts = {p: None if photos == "all" else int(rng.choice(MIXED)) if photos == "mixed" else int(photos)
              for p in pools}
    return np.sort(np.concatenate([pool[:counts[p]] for p, pool in pools.items()]))


def one_config(faces: FaceSet, report: FaceSet, tune: FaceSet, photos: str, seed: int, probes: int) -> dict:
    """Build from `photos` photos per person, then the figures of the shipped bundle."""
    from features.embeddings import pairwise_distances
    from modelization.openset import KMEAN, Gallery
    from modelization.recognizer import load_bundle
    held, pools = draws(faces.labels, seed, probes)
    enrol = enrolment(pools, photos, seed)
    rec = load_bundle(build(faces, enrol, seed), SETTINGS)
    truth = np.asarray([rec.labels.index(str(v)) for v in faces.labels[held]])
    known = Answers(rec, faces.x[held], faces.mirrored[held])
    strangers = Answers(rec, report.x, report.mirrored)
    accepted = int(strangers.accepted.sum())
    # 1-NN on the same gallery (the bundle's: every enrolled photo), plain embeddings as the issue measured it
    gx, gy = rec.gallery_x, rec.gallery_y
    d_known, d_str = pairwise_distances(faces.x[held], gx), pairwise_distances(report.x, gx)
    nn_right = gy[d_known.argmin(1)] == truth
    # ... and given the same probes as the bundle (mirror pass where the bundle made one)
    same = np.where(known.second[:, None], faces.mirrored[held], faces.x[held])
    same_s = np.where(strangers.second[:, None], report.mirrored, report.x)
    d_known2, d_str2 = pairwise_distances(same, gx), pairwise_distances(same_s, gx)
    out = {
        "far": accepted / len(report.x), "dir": float(np.mean(known.accepted & (known.named == truth))),
        "top1": float(np.mean(known.named == truth)),
        "nn": nn_dir_at(d_known.min(1), nn_right, d_str.min(1), accepted),
        "nn_same": nn_dir_at(d_known2.min(1), gy[d_known2.argmin(1)] == truth, d_str2.min(1), accepted),
        "tune_far": float(np.mean(Answers(rec, tune.x, tune.mirrored).accepted)),
        "second_known": float(known.second.mean()), "second_strangers": float(strangers.second.mean()),
        "photos": int(len(gx)), "people": len(rec.labels),
        "measured_dir": rec.manifest["open_set"]["test_dir"],
    }
    # Levers: each measured against both stranger sets, threshold PEEKED at 1% (how well a score ranks),
    # and at the bundle's own thresholds where the lever keeps them.
    every = Answers(rec, faces.mirrored[held], faces.mirrored[held], margin=0.0)  # mirrored probes throughout
    kmean = Gallery(gx, gy, len(rec.labels), KMEAN, 3)
    probes_m = faces.mirrored[held]
    levers = {}
    for name, stranger_set in (("tune", tune), ("report", report)):
        sm = stranger_set.mirrored
        rows = {
            "1-NN, one pass": (d_known.min(1), nn_right, pairwise_distances(stranger_set.x, gx).min(1)),
            "1-NN, mirror pass": (pairwise_distances(probes_m, gx).min(1),
                                  gy[pairwise_distances(probes_m, gx).argmin(1)] == truth,
                                  pairwise_distances(sm, gx).min(1)),
            "k=3 nearest (old rule), mirror pass": (kmean.scores(probes_m).min(1),
                                                    kmean.scores(probes_m).argmin(1) == truth,
                                                    kmean.scores(sm).min(1)),
            "template, one pass": (rec.gallery.scores(faces.x[held]).min(1),
                                   rec.gallery.scores(faces.x[held]).argmin(1) == truth,
                                   rec.gallery.scores(stranger_set.x).min(1)),
            "template, mirror pass": (every.scores, every.named == truth, rec.gallery.scores(sm).min(1)),
        }
        levers[name] = {k: peeked_dir(*v) for k, v in rows.items()}
    # at the bundle's own thresholds: the mirror pass (none / near the threshold / every face), the classifier
    for label, kwargs in (("no mirror pass", {"margin": -1.0}), ("mirror pass near the threshold", {}),
                          ("mirror pass for every face", {"margin": np.inf}),
                          ("gallery alone names", {"temperature": np.inf}),
                          ("classifier, T = 0.02", {"temperature": 0.02}),
                          ("classifier alone names", {"temperature": 0.0})):
        k, s = Answers(rec, faces.x[held], faces.mirrored[held], **kwargs), Answers(rec, report.x, report.mirrored,
                                                                                     **kwargs)
        levers[label] = (float(np.mean(s.accepted)), float(np.mean(k.accepted & (k.named == truth))),
                         float(np.mean(k.named == truth)))
    if photos in ("all", "mixed"):  # photo counts differ: per-person thresholds against one for everybody
        from modelization.openset import person_thresholds
        counts = np.bincount(gy, minlength=len(rec.labels))
        one = person_thresholds(np.full(len(counts), np.median(counts)), SETTINGS.target_far)
        saved = rec.thresholds
        rec.thresholds = one
        k, s = Answers(rec, faces.x[held], faces.mirrored[held]), Answers(rec, report.x, report.mirrored)
        rec.thresholds = saved
        levers["one threshold (median photo count)"] = (float(np.mean(s.accepted)),
                                                        float(np.mean(k.accepted & (k.named == truth))),
                                                        float(np.mean(k.named == truth)))
    # enrolment quality: the same uploads with FR_QUALITY_POLICY=skip (poor photos left out)
    from dataclasses import replace
    skip = load_bundle(build(faces, enrol, seed, replace(SETTINGS, quality_policy="skip")), SETTINGS)
    # a person whose every photo was poor is not in that bundle: their probes count as missed
    truth_skip = np.asarray([skip.labels.index(str(v)) if str(v) in skip.labels else -1 for v in faces.labels[held]])
    k, s = Answers(skip, faces.x[held], faces.mirrored[held]), Answers(skip, report.x, report.mirrored)
    levers["poor photos skipped"] = (float(np.mean(s.accepted)), float(np.mean(k.accepted & (k.named == truth_skip))),
                                     float(np.mean(k.named == truth_skip)))
    out["skipped_photos"] = int(len(gx) - len(skip.gallery_x))
    out["people_lost"] = len(rec.labels) - len(skip.labels)
    out["levers"] = levers
    return out


def people_sweep(faces: FaceSet, report: FaceSet, tune: FaceSet, seeds: int, probes: int) -> None:
    """FAR on the report strangers and DIR for galleries of 2 to 300 people (the thresholds' rule,
    `openset.person_thresholds`, on templates; people named by their nearest template). The 300-people
    gallery adds 238 tuning strangers, one photo each, to lfw62's 62: they are gallery members there,
    and the FAR is still measured on the report strangers only."""
    from modelization.openset import Gallery, person_thresholds
    print(f"\n{faces.folder}: gallery size sweep (mean over {seeds * 8} random galleries per cell, {seeds} for 62 "
          f"and 300 people; known probes: {probes} photos per person; FAR on the {len(report.x)} report strangers):")
    print("  people  photos each:  " + "  ".join(f"{n or 'all':>14}" for n in (1, 3, 10)))
    names = sorted(set(faces.labels))
    for n_people in (2, 5, 10, 20, 62, 300):
        cells = []
        for n in (1, 3, 10):
            fars, dirs = [], []
            for seed in range(seeds * (8 if n_people < 62 else 1)):
                held, pools = draws(faces.labels, seed, probes)
                rng = np.random.default_rng(1000 + seed)
                chosen = names if n_people >= len(names) else list(rng.choice(names, n_people, replace=False))
                gx = [faces.x[pools[p][:n]] for p in chosen]
                gy = [np.full(len(g), c) for c, g in enumerate(gx)]
                extra = n_people - len(chosen)
                if extra:  # one photo each of tuning strangers, as more gallery people
                    pick = rng.choice(len(tune.x), extra, replace=False)
                    gx.append(tune.x[pick])
                    gy.append(len(chosen) + np.arange(extra))
                gx, gy = np.concatenate(gx), np.concatenate(gy)
                gallery = Gallery(gx, gy, n_people)
                thresholds = person_thresholds(np.bincount(gy, minlength=n_people), SETTINGS.target_far)
                s = gallery.scores(report.mirrored)
                fars.append(np.mean(s.min(1) <= thresholds[s.argmin(1)]))
                mine = np.isin(faces.labels[held], chosen)
                k = gallery.scores(faces.mirrored[held][mine])
                truth = np.asarray([chosen.index(v) for v in faces.labels[held][mine]])
                dirs.append(np.mean((k.min(1) <= thresholds[k.argmin(1)]) & (k.argmin(1) == truth)))
            cells.append(f"{100 * np.mean(fars):5.2f}% {100 * np.mean(dirs):6.2f}%")
        print(f"  {n_people:6d}  FAR, DIR:     " + "  ".join(cells), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path,
                    default=Path(os.environ.get("FR_BENCH_CACHE", ROOT / "var" / "bench-fewshot")))
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=42)
    ap.add_argument("--photos", nargs="+", default=["1", "2", "3", "5", "10", "all", "mixed"],
                    help='photos per person: counts, "all" (but the probes), "mixed" (1 to 10, per person)')
    ap.add_argument("--subset", nargs="+", default=list(SUBSETS))
    ap.add_argument("--probes", type=int, default=10, help="known probe photos per person")
    ap.add_argument("--extract-only", action="store_true")
    ap.add_argument("--no-sweep", action="store_true", help="skip the gallery size sweep")
    args = ap.parse_args()
    report, tune = FaceSet(REPORT, args.cache, args.procs), FaceSet(TUNE, args.cache, args.procs)
    sets = {subset: FaceSet(subset, args.cache, args.procs) for subset in args.subset}
    for faces in (report, tune, *sets.values()):
        print(f"{faces.folder}: {len(faces.x)} photos with a face")
    if args.extract_only:
        return
    print(f"settings: target FAR {SETTINGS.target_far}, temperature {SETTINGS.fusion_temperature}, mirror margin "
          f"{SETTINGS.mirror_margin}; {args.seeds} seeds from {args.first_seed}; {args.probes} known probes per "
          f"person; FAR on the {len(report.x)} report strangers ({REPORT}/), never tuned on")
    header = ("| set | photos per person | FAR | DIR | top-1 | 1-NN DIR, peeked at the same FAR | "
              "1-NN, same probes | DIR - 1-NN | FAR per seed | FAR on tuning strangers |")
    table = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    lever_rows = []
    for subset, faces in sets.items():
        for photos in args.photos:
            runs = [one_config(faces, report, tune, photos, seed, args.probes)
                    for seed in range(args.first_seed, args.first_seed + args.seeds)]
            mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]
                    if k not in ("levers", "measured_dir", "skipped_photos", "people_lost")}
            print(f"  with FR_QUALITY_POLICY=skip: poor photos skipped {[r['skipped_photos'] for r in runs]}, "
                  f"people left without a photo {[r['people_lost'] for r in runs]}")
            fars = " ".join(f"{100 * r['far']:.2f}" for r in runs)
            print(f"{subset} n={photos}: FAR {100 * mean['far']:.2f}% ({fars}), DIR {100 * mean['dir']:.2f}%, top-1 "
                  f"{100 * mean['top1']:.2f}%, 1-NN peeked {100 * mean['nn']:.2f}% (same probes "
                  f"{100 * mean['nn_same']:.2f}%); tuning FAR {100 * mean['tune_far']:.2f}%; second pass "
                  f"{100 * mean['second_known']:.0f}% known / {100 * mean['second_strangers']:.0f}% strangers; "
                  f"gallery {mean['photos']:.0f} photos; the build's own measured DIR "
                  f"{[r['measured_dir'] for r in runs]}", flush=True)
            table.append(f"| `{subset}` | {photos} | {100 * mean['far']:.2f}% | {100 * mean['dir']:.2f}% | "
                         f"{100 * mean['top1']:.2f}% | {100 * mean['nn']:.2f}% | {100 * mean['nn_same']:.2f}% | "
                         f"{100 * (mean['dir'] - mean['nn']):+.2f} | {fars} | {100 * mean['tune_far']:.2f}% |")
            peeked = {k: {name: float(np.mean([r["levers"][k][name] for r in runs])) for name in runs[0]["levers"][k]}
                      for k in ("tune", "report")}
            own = {name: tuple(float(np.mean([r["levers"][name][i] for r in runs])) for i in range(3))
                   for name in runs[0]["levers"] if name not in ("tune", "report")}
            lever_rows.append((subset, photos, peeked, own))
    print("\nTable (mean over seeds):\n" + "\n".join(table))
    print("\nLevers: DIR with the threshold PEEKED at 1% of each stranger set (tuning / report): how well each "
          "score ranks known faces above strangers")
    for subset, photos, peeked, _ in lever_rows:
        print(f"  {subset} n={photos}: " + "; ".join(f"{name} {100 * peeked['tune'][name]:.2f} / "
                                                  f"{100 * peeked['report'][name]:.2f}" for name in peeked["tune"]))
    print("\nLevers at the bundle's own thresholds (report strangers): FAR, DIR, top-1")
    for subset, photos, _, own in lever_rows:
        print(f"  {subset} n={photos}: " + "; ".join(f"{name} {100 * v[0]:.2f}% {100 * v[1]:.2f}% {100 * v[2]:.2f}%"
                                                  for name, v in own.items()))
    if not args.no_sweep:
        for faces in sets.values():
            people_sweep(faces, report, tune, args.seeds, args.probes)


if __name__ == "__main__":
    main()
