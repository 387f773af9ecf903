#!/usr/bin/env python
"""Grouping quality of unknown faces (issue #28): BCubed precision and recall.

    python bench/grouping.py [--cache DIR] [--seeds 10] [--visitors 25] [--singles 100] [--tune]
    python bench/grouping.py --naming [--seeds 10]

The faces are people in no model: "visitors" with 2 to 10 photos each (drawn uniformly) from lfw62,
mixed with "single visits" (one photo each) from the stranger folders, in a random arrival order.
lfw62's 62 people are split in two halves by name order (even / odd); tuning uses the even half
and `strangers-more/`, the report the odd half and `strangers/`: nothing reported was chosen on it.

Compared, at the same stranger model (modelization/openset.py):
  online   modelization/grouping.group_online, what the service runs (stable ids), at the rate `far`
  cw       chinese whispers over the pairs within the pair threshold stranger_quantile(far, 1)
  cw-dlib  dlib's own chinese_whispers_clustering at that threshold (the library the issue names)

`--tune` prints the sweep of rates on the tuning set; without it, the report set at
modelization.grouping.GROUPING_FAR. `--naming`: a group named, then the person's other photos and the
strangers' false accepts (`naming`). Embeddings: bench/fewshot.py's cache (one-pass, the largest
face of each photo: what predict keeps for a face), computed on first use; only the first 10 photos
of each lfw62 person and the first 600 strangers-more are embedded.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np

from bench.fewshot import FACES, REPORT, TUNE, describe_all, photo_paths
from modelization.grouping import GROUPING_FAR, bcubed, chinese_whispers, group_online
from modelization.openset import stranger_quantile, unit

RATES = (1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2)


def embeddings(paths: list[Path], cache: Path, procs: int) -> tuple[np.ndarray, np.ndarray]:
    """(usable index, (n, 128) one-pass embeddings of each photo's largest face)."""
    described = describe_all(paths, cache, procs)
    keep = [i for i, d in enumerate(described) if d["features"].get("embedding")]
    return np.asarray(keep), np.asarray([described[i]["features"]["embedding"] for i in keep], np.float32)


def load(cache: Path, procs: int, tune: bool) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({visitor: (k, 128)} of the half used, (m, 128) single visits)."""
    people = sorted(p.name for p in (FACES / "lfw62").iterdir() if p.is_dir())
    half = people[0::2] if tune else people[1::2]
    visitors = {}
    for person in half:
        paths = sorted((FACES / "lfw62" / person).glob("*.jpg"))[:10]
        _, x = embeddings(paths, cache, procs)
        visitors[person] = x
    singles = photo_paths(TUNE if tune else REPORT)
    _, s = embeddings(singles[:600] if tune else singles, cache, procs)
    return visitors, s


def draw(visitors: dict[str, np.ndarray], singles: np.ndarray, n_visitors: int, n_singles: int,
         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One arrival sequence: (embeddings, truth), shuffled."""
    names = rng.choice(sorted(visitors), min(n_visitors, len(visitors)), replace=False)
    xs, truth = [], []
    for name in names:
        pool = visitors[name]
        k = min(len(pool), int(rng.integers(2, 11)))
        xs.append(pool[rng.choice(len(pool), k, replace=False)])
        truth += [name] * k
    pick = rng.choice(len(singles), min(n_singles, len(singles)), replace=False)
    xs.append(singles[pick])
    truth += [f"single-{i}" for i in pick]
    x, t = np.concatenate(xs), np.asarray(truth)
    order = rng.permutation(len(t))
    return x[order], t[order]


def dlib_cw(x: np.ndarray, threshold: float) -> np.ndarray:
    import dlib
    return np.asarray(dlib.chinese_whispers_clustering([dlib.vector(list(map(float, v))) for v in unit(x)],
                                                        threshold))


def run(sequences: list[tuple[np.ndarray, np.ndarray]], rate: float) -> dict[str, tuple[float, float, float]]:
    """method -> (precision, recall, ms per sequence), mean over the sequences."""
    out = {}
    methods = {"online": lambda x: group_online(x, rate),
               "cw": lambda x: chinese_whispers(x, float(stranger_quantile(rate, 1))),
               "cw-dlib": lambda x: dlib_cw(x, float(stranger_quantile(rate, 1)))}
    for name, fn in methods.items():
        ps, rs, ts = [], [], []
        for x, t in sequences:
            start = time.perf_counter()
            pred = fn(x)
            ts.append(time.perf_counter() - start)
            p, r = bcubed(t, pred)
            ps.append(p)
            rs.append(r)
        out[name] = (float(np.mean(ps)), float(np.mean(rs)), 1000 * float(np.mean(ts)))
    return out


def naming(cache: Path, procs: int, seeds: int, n_known: int = 10, arrivals: int = 5, singles: int = 100) -> None:
    """After a group is named: is the person named on their other photos, and do strangers' false accepts
    stay in band? Report set only (lfw62's odd half, strangers/); nothing here is tuned.

    Per seed: a model of `n_known` people (5 photos each, `train_bundle`, as the service builds); a visitor
    (another person of the half) arrives `arrivals` times among `singles` single visits of strangers/; the
    faces are grouped as the service groups them; the group holding most of the visitor's faces is named
    (whatever else it holds goes with it) and the model derived (the parent's photos plus that group, as a
    naming derives). Measured: the visitor's other photos accepted with their name by the derived model,
    and the false-accept rate of the parent and the derived model on the strangers not used as visits."""
    from app.worker.tasks import train_bundle
    from bench.fewshot import SETTINGS, Answers
    from modelization.recognizer import load_bundle
    people = sorted(p.name for p in (FACES / "lfw62").iterdir() if p.is_dir())[1::2]
    per: dict[str, list[dict]] = {}
    for person in people:
        described = describe_all(sorted((FACES / "lfw62" / person).glob("*.jpg"))[:10], cache, procs)
        per[person] = [d for d in described if d["features"].get("embedding")]
    strangers = [d for d in describe_all(photo_paths(REPORT), cache, procs) if d["features"].get("embedding")]

    def arrays(items: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray([d["features"]["embedding"] for d in items], np.float32)
        return x, (x + np.asarray([d["mirror"][0] for d in items], np.float32)) / 2

    def bundle(files: list[tuple[str, dict]], seed: int):
        header = [{"label": label, "filename": f"{label}/{i}.jpg"} for i, (label, _) in enumerate(files)]
        return load_bundle(train_bundle({"id": f"naming-{seed}", "options": {"seed": seed}}, header,
                                        [f["features"] for _, f in files], SETTINGS, lambda *a: None), SETTINGS)

    rows = []
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        chosen = [people[i] for i in rng.choice(len(people), n_known + 1, replace=False)]
        known, visitor = chosen[:n_known], chosen[n_known]
        files = [(p, d) for p in known for d in per[p][:5]]
        visits = per[visitor][:arrivals]
        rest = per[visitor][arrivals:]
        pick = rng.choice(len(strangers), singles, replace=False)
        seq = [(visitor, d) for d in visits] + [(f"s{i}", strangers[i]) for i in pick]
        order = rng.permutation(len(seq))
        seq = [seq[i] for i in order]
        groups = group_online(arrays([d for _, d in seq])[0])
        mine = [g for (who, _), g in zip(seq, groups) if who == visitor]
        named_group = max(set(mine), key=mine.count)
        named = [d for (_, d), g in zip(seq, groups) if g == named_group]
        wrong = sum(1 for (who, _), g in zip(seq, groups) if g == named_group and who != visitor)
        parent = bundle(files, seed)
        child = bundle(files + [("Visitor", d) for d in named], seed)
        held_out = np.setdiff1d(np.arange(len(strangers)), pick)
        sx, sm = arrays([strangers[i] for i in held_out])
        vx, vm = arrays(rest)
        v = Answers(child, vx, vm)
        right = float(np.mean(v.accepted & (v.named == child.labels.index("Visitor"))))
        far_parent = float(np.mean(Answers(parent, sx, sm).accepted))
        far_child = float(np.mean(Answers(child, sx, sm).accepted))
        rows.append((len(named), wrong, right, far_parent, far_child))
        print(f"seed {seed}: group of {len(named)} named ({wrong} not the visitor's), visitor's other "
              f"{len(rest)} photos named {right:.0%}; FAR parent {far_parent:.2%}, derived {far_child:.2%} "
              f"({len(held_out)} strangers)", flush=True)
    mean = np.mean(np.asarray(rows, np.float64), axis=0)
    print(f"mean over {seeds} seeds: group of {mean[0]:.1f} faces ({mean[1]:.2f} not the visitor's); the visitor's "
          f"other photos named {mean[2]:.1%}; FAR parent {mean[3]:.2%}, derived {mean[4]:.2%}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path,
                    default=Path(os.environ.get("FR_BENCH_CACHE", ROOT / "var" / "bench-fewshot")))
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--visitors", type=int, default=25)
    ap.add_argument("--singles", type=int, default=100)
    ap.add_argument("--tune", action="store_true", help="sweep the rate on the tuning set")
    ap.add_argument("--naming", action="store_true", help="a group named: the person recognised, strangers' FAR")
    args = ap.parse_args()
    if args.naming:
        naming(args.cache, args.procs, args.seeds)
        return
    visitors, singles = load(args.cache, args.procs, args.tune)
    sequences = [draw(visitors, singles, args.visitors, args.singles, np.random.default_rng(seed))
                 for seed in range(args.seeds)]
    faces = np.mean([len(t) for _, t in sequences])
    half = "even" if args.tune else "odd"
    print(f"{'tuning' if args.tune else 'report'} set: {len(visitors)} visitors (lfw62 {half} "
          f"half), {len(singles)} single visits ({TUNE if args.tune else REPORT}); {args.seeds} sequences of "
          f"{faces:.0f} faces ({args.visitors} visitors with 2-10 photos, {args.singles} single visits)")
    print(f"{'rate':>8} {'method':>8} {'precision':>9} {'recall':>7} {'ms':>8}")
    for rate in (RATES if args.tune else (GROUPING_FAR,)):
        for name, (p, r, ms) in run(sequences, rate).items():
            print(f"{rate:8.0e} {name:>8} {p:9.3f} {r:7.3f} {ms:8.1f}", flush=True)


if __name__ == "__main__":
    main()
