#!/usr/bin/env python
"""The fixed network's bundle against the baselines over many random splits, offline.

    python bench/splits.py [--faces ../shared/faces/lfw62] [--seeds 10] [--first-seed 42]

One test split holds ~600 photos and every method errs on 0-3 of them, so one split
decides "within 0.1 points of the best baseline" by a single photo. This benchmark
repeats the build's own steps on many splits (seeds) without the service: embeddings
from the search benchmark's feature cache (var/bench-search, filled on first use), the
split, the fixed default network trained as a build trains it (train part, early stopping
on validation; the lean loop, which matches Keras to 1e-6), and per seed:

- closed set: test errors of the network alone, of the bundle (network and gallery
  naming together, `openset.name_faces` with the build's score and temperature), and of
  1-NN, nearest centroid and logistic regression fitted on train + validation
  (`optimization/baselines.py`, as in the manifest);
- open set with the held-out people as strangers (the search's protocol,
  `baselines.open_set`): right-name rate of known test photos at 1% of the held-out
  people's photos accepted, for the bundle and 1-NN.

Prints one line per seed, then errors summed over all seeds and the mean open-set rates.
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

from bench.search_lfw import DATA, features

BUNDLE = "chosen network + gallery (the bundle)"
OURS = ("network alone", "bundle")


def best_baseline(errors: dict[str, int]) -> int:
    """The fewest test errors among the baselines of one split."""
    return min(v for name, v in errors.items() if name not in OURS)


def one_split(files: list[dict], feats: list[dict], seed: int) -> dict:
    """-> {"errors": {method: test errors}, "test_photos": n, "open_set": {method: rate}}."""
    from app.worker.tasks import prepare
    from constants import Settings
    from modelization import lean
    from modelization.network import NetworkSpec
    from modelization.openset import Gallery, name_faces
    from optimization import baselines
    from optimization.evaluate import search_data
    settings = Settings.from_env(data_dir=DATA)
    data = prepare(files, feats, settings, seed)
    x, y, split, n = data.x, data.y, data.split, len(data.split.people)
    spec = NetworkSpec(learning_rate=settings.learning_rate, batch_size=settings.batch_size)
    fit = lean.fit(spec, x[split.train], y[split.train], n, seed=seed, max_epochs=settings.max_epochs,
                   x_val=x[split.val], y_val=y[split.val], patience=settings.patience, min_delta=settings.min_delta)
    gallery = np.concatenate([split.train, split.val])
    x_test, y_test = x[split.test], y[split.test]
    probs = lean.predict_proba(spec, fit.weights, x_test)
    named, _ = name_faces(probs, Gallery(x[gallery], y[gallery], n).scores(x_test), settings.fusion_temperature)
    sd = search_data(x, y, split, settings.search_holdout_fraction, seed)
    lr_epochs = baselines.logistic_epochs(sd, seed, settings.search_max_epochs, settings.search_patience)
    closed = baselines.closed_set(x[gallery], y[gallery], x_test, y_test, n, logistic_epochs=lr_epochs, seed=seed)
    errors = {name: int(round((1 - m["test_accuracy"]) * len(y_test))) for name, m in closed.items()}
    errors["network alone"] = int((probs.argmax(1) != y_test).sum())
    errors["bundle"] = int((named != y_test).sum())
    # the open set as the search's manifest measures it, for this network (fixed epochs: those kept above)
    open_set = baselines.open_set(sd, spec, fit.best_epoch, logistic_epochs=lr_epochs, seed=seed,
                                  target_far=settings.target_far,
                                  temperature=settings.fusion_temperature) or {}
    return {"errors": errors, "test_photos": int(len(y_test)),
            "open_set": {name: open_set[key]["test_rate"] for name, key in
                         (("bundle", BUNDLE), ("1-nearest-neighbour", "1-nearest-neighbour")) if key in open_set}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--faces", type=Path,
                    default=Path(os.environ.get("FR_FACES_DIR", ROOT.parent / "shared" / "faces")) / "lfw62")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=42)
    args = ap.parse_args()
    paths = sorted(args.faces.glob("*/*.jpg"))
    files = [{"label": p.parent.name, "filename": f"{p.parent.name}/{p.name}"} for p in paths]
    t0 = time.perf_counter()
    feats = features(paths)
    print(f"{len(paths)} photos of {len({p.parent for p in paths})} people; features in "
          f"{time.perf_counter() - t0:.0f} s; {args.seeds} splits")
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        run = one_split(files, feats, seed)
        runs.append(run)
        print(f"seed {seed}: test errors of {run['test_photos']}: {run['errors']}; bundle - best baseline "
              f"{run['errors']['bundle'] - best_baseline(run['errors']):+d} photos; open set bundle / 1-NN "
              f"{run['open_set'].get('bundle', float('nan')):.4f} / "
              f"{run['open_set'].get('1-nearest-neighbour', float('nan')):.4f}", flush=True)
    photos = sum(r["test_photos"] for r in runs)
    print(f"over {len(runs)} splits ({photos} test photos), errors summed:")
    for name in runs[0]["errors"]:
        total = sum(r["errors"][name] for r in runs)
        print(f"  {name:22s} {total:4d}  accuracy {100 * (1 - total / photos):.3f}%")
    behind = sum(r["errors"]["bundle"] > best_baseline(r["errors"]) for r in runs)
    print(f"  splits where the bundle errs more than that split's best baseline: {behind} of {len(runs)}")
    if all(r["open_set"] for r in runs):
        rates = {name: float(np.mean([r["open_set"][name] for r in runs])) for name in runs[0]["open_set"]}
        wins = sum(r["open_set"]["bundle"] >= r["open_set"]["1-nearest-neighbour"] for r in runs)
        print(f"  open set (held-out people), mean right-name rate: bundle {rates['bundle']:.4f}, "
              f"1-NN {rates['1-nearest-neighbour']:.4f} (ratio {rates['bundle'] / rates['1-nearest-neighbour']:.3f}); "
              f"bundle >= 1-NN on {wins} of {len(runs)} splits")


if __name__ == "__main__":
    main()
