"""The three kinds of work a worker does for a build.

`extract_chunk`: a slice of the photos -> their features (many run in parallel).
`evaluate_genome`: every photo's features + one genome of the search -> its scores
(many run in parallel, see optimization/).
`train_bundle`: every photo's features -> split -> network -> bundle bytes;
`progress(state, stage, done, total)` reports as it goes.
Raises BuildError for outcomes the client must hear about (no face anywhere,
fewer than two people, ...); those fail the job with that code.
"""
from __future__ import annotations

import gc
import json
import platform
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np

from constants import VERSION, Settings
from constants.states import JobState
from features.extract import FeatureCache, PhotoFeatures, cached_photo_features, pipeline_settings
from features.select import choose_faces
from modelization import lean
from modelization.bundle import pack_bundle
from modelization.dataset import Split, stratified_split
from modelization.metrics import accuracy, balanced_accuracy
from modelization.network import NetworkSpec, predict_classes, to_keras
from modelization.openset import calibrate, name_faces
from preprocessor.uploads import Photo

Progress = Callable[[str, str, int, int], None]


class BuildError(Exception):
    def __init__(self, code: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details or {}


def warm_up() -> None:
    """Load what tasks need once per process: dlib's three models, then Keras/TensorFlow.

    Importing Keras alone costs ~5.5 s here; done at worker start, a build's first
    training (the last, serial step of every build) does not wait for it.
    """
    from features.embeddings import load_model
    from preprocessor.faces import load_models
    load_models()
    load_model()  # loading only, no inference: a task may be running dlib already
    import keras  # noqa: F401


def extract_chunk(photos: list[Photo], settings: Settings) -> list[dict]:
    """Features of a slice of a job's photos, through the cache: one dict per photo.

    Besides the features: `cached`, the cache `key`, and `seconds` spent on the photo.
    """
    cache = FeatureCache(settings.cache_dir, settings)
    out = []
    for photo in photos:
        t0 = time.perf_counter()
        feats, cached = cached_photo_features(photo.data, settings, cache)
        out.append({**asdict(feats), "cached": cached, "key": cache.key(photo.data),
                    "seconds": round(time.perf_counter() - t0, 4)})
    return out


def people_report(files: list[dict], feats: list[PhotoFeatures], kept: set[str],
                  too_few: dict[str, int], choices: dict[int, dict]) -> list[dict]:
    """Per person: photos uploaded, used, skipped (and why), photos with several faces (and which was used)."""
    report = defaultdict(lambda: {"photos": 0, "used": 0, "skipped": [], "several_faces": []})
    for i, (file, f) in enumerate(zip(files, feats)):
        r = report[file["label"]]
        r["photos"] += 1
        if f.usable:
            r["used"] += 1
            if f.faces > 1:
                choice = choices.get(i, {})
                r["several_faces"].append({"file": file["filename"], "faces": f.faces,
                                           "face_used": choice.get("face", 0), "box": f.box,
                                           "distance": choice.get("distance")})
        else:
            r["skipped"].append({"file": file["filename"], "reason": f.skipped, "detail": f.detail})
    out = []
    for label in sorted(report):
        r = report[label]
        entry = {"label": label, **r, "in_model": label in kept}
        if label in too_few:
            entry["excluded"] = f"only {too_few[label]} usable photo(s)"
            entry["used"] = 0
        out.append(entry)
    return out


@dataclass
class Prepared:
    """A build's usable embeddings, their classes (-1: person left out) and the split."""
    feats: list[PhotoFeatures]
    usable: list[int]
    x: np.ndarray
    y: np.ndarray
    split: Split
    people: list[dict]
    hits: int
    extraction_seconds: float  # worker time spent on the photos (decode, detect, embed; ~0 when cached)


def prepare(files: list[dict], features: list[dict], settings: Settings, seed: int) -> Prepared:
    """Features -> training data. Raises BuildError when no model can be built from them.

    `files[i]` ({label, filename}) and `features[i]` (from `extract_chunk`) describe photo i.
    """
    hits = sum(1 for f in features if f.get("cached"))
    seconds = sum(f.get("seconds", 0.0) for f in features)
    feats = [PhotoFeatures(**{k: v for k, v in f.items() if k not in ("cached", "key", "seconds")})
             for f in features]
    feats, choices = choose_faces([file["label"] for file in files], feats, settings.same_person_distance)

    usable = [i for i, f in enumerate(feats) if f.usable]
    if not usable:
        raise BuildError("NO_FACE_FOUND", "no face was found in any photo",
                         {"files": [{"file": file["filename"], "reason": f.skipped, "detail": f.detail}
                                    for file, f in zip(files, feats)][:1000]})
    labels = [files[i]["label"] for i in usable]
    split = stratified_split(labels, min_photos=settings.min_photos_per_person,
                             test_fraction=settings.test_fraction, val_fraction=settings.val_fraction, seed=seed)
    people = people_report(files, feats, set(split.people), split.too_few, choices)
    if len(split.people) < 2:
        raise BuildError("TOO_FEW_PEOPLE",
                         f"a recognizer needs at least 2 people with {max(3, settings.min_photos_per_person)} "
                         f"or more usable photos each; got {len(split.people)}",
                         {"people": [{k: p[k] for k in ("label", "photos", "used", "skipped")} for p in people]})

    x = np.asarray([feats[i].embedding for i in usable], dtype=np.float32)
    index = {person: k for k, person in enumerate(split.people)}
    y = np.asarray([index.get(label, -1) for label in labels], dtype=np.int64)
    return Prepared(feats, usable, x, y, split, people, hits, seconds)


def evaluate_genome(job: dict, files: list[dict], features: bytes, evaluation: str, settings: Settings) -> dict:
    """One evaluation of the search (a genome on a fold), scored on validation data (optimization/evaluate.py).

    `features`: the JSON list of every photo's features, as the broker sends it.
    """
    from optimization.evaluate import evaluate, parse_eval_key
    from optimization.genome import from_key
    seed = int(job.get("options", {}).get("seed", settings.default_seed))
    genome_key, fold = parse_eval_key(evaluation)
    data = search_data_for(job["id"], files, features, settings, seed, fold)
    return evaluate(from_key(genome_key), data, seed=seed, max_epochs=settings.search_max_epochs,
                    patience=settings.search_patience, target_far=settings.target_far, k=settings.open_set_k,
                    fold=fold)


@dataclass
class _SearchCache:
    """One job's prepared photos and its folds' search data, kept for the job's next candidates
    (parsing costs ~0.1 s per 3,000 photos; a worker keeps one job at a time)."""
    job: tuple = ()
    prepared: Prepared | None = None
    folds: dict = field(default_factory=dict)


_search_cache = _SearchCache()


def search_data_for(job_id: str, files: list[dict], features: bytes, settings: Settings, seed: int, fold: int = 0):
    """The search's data (optimization.evaluate.SearchData) for a job and fold."""
    from optimization.evaluate import search_data
    job = (job_id, seed, len(features), zlib.crc32(features))
    cache = _search_cache
    if cache.job != job:
        cache.job, cache.prepared, cache.folds = job, prepare(files, json.loads(features), settings, seed), {}
    if fold not in cache.folds:
        p = cache.prepared
        cache.folds[fold] = search_data(p.x, p.y, p.split, settings.search_holdout_fraction, seed, fold,
                                        settings.search_fold_val_fraction)
    return cache.folds[fold]


def train_bundle(job: dict, files: list[dict], features: list[dict], settings: Settings,
                 progress: Progress, search: dict | None = None) -> bytes:
    """Build the bundle from every photo's features. `job`: id, name, options {optimize, seed, ...}.

    `search`: the finished search's report (optimize=1): its chosen network is retrained on
    train + validation and compared with the baselines; without it, the fixed default network.
    """
    started = time.time()
    options = job.get("options", {})
    seed = int(options.get("seed", settings.default_seed))
    data = prepare(files, features, settings, seed)
    feats, usable, x, y, split, people, hits = (data.feats, data.usable, data.x, data.y, data.split,
                                                data.people, data.hits)

    optimization = None
    t0 = time.time()
    if search is not None and search.get("chosen"):
        progress(JobState.TRAINING, "training the chosen network", 0, 1)
        spec, model, epochs, optimization = train_chosen(search, x, y, split, settings, seed)
        trained_on = ("train + validation splits, for the median of the epochs early stopping kept on the "
                      "search's folds")
    else:
        spec = NetworkSpec(learning_rate=settings.learning_rate, batch_size=settings.batch_size)
        if search is not None:  # the budget ran out before any candidate was evaluated
            optimization = {**search, "note": "no candidate was evaluated in the time budget: "
                                              "the fixed default network was trained"}
        progress(JobState.TRAINING, "training", 0, settings.max_epochs)
        fit = lean.fit(spec, x[split.train], y[split.train], len(split.people), seed=seed,
                       max_epochs=settings.max_epochs, x_val=x[split.val], y_val=y[split.val],
                       patience=settings.patience, min_delta=settings.min_delta,
                       on_epoch=lambda e: progress(JobState.TRAINING, "training", e, settings.max_epochs))
        model, epochs = to_keras(spec, fit.weights, x.shape[1], len(split.people)), fit.epochs
        trained_on = "train split (validation for early stopping)"
    train_seconds = time.time() - t0

    # The gallery (train + validation) ships in the bundle: it helps name a face and sets the threshold.
    y_test = y[split.test]
    gallery = np.concatenate([split.train, split.val])
    probs_test = model.predict(x[split.test], verbose=0, batch_size=1024)
    network_pred = probs_test.argmax(1)
    pred, test_scores = name_faces(probs_test, x[split.test], x[gallery], y[gallery], settings.open_set_k,
                                   settings.fusion_temperature)
    val_pred = predict_classes(model, x[split.val])

    open_set = calibrate(x[gallery], y[gallery], len(split.people), settings.target_far, settings.open_set_k,
                         settings.max_threshold)
    open_set["temperature"] = settings.fusion_temperature
    # The gallery is embedded once per face (build speed); a face to identify can afford a
    # second pass on its mirror image, which brings it nearer its person (README "Open set").
    # The test figures below use the build's single-pass embeddings.
    open_set["mirror_probes"] = settings.mirror_probes
    open_set["mirror_margin"] = settings.mirror_margin
    open_set["decision"] = ("the person maximising log p (classifier) - distance / temperature"
                            if settings.fusion_temperature > 0 else "the classifier's most probable person")
    accepted = test_scores <= open_set["threshold"]
    open_set["test_dir"] = float(np.mean(accepted & (pred == y_test)))
    open_set["test_accepted"] = float(np.mean(accepted))
    manifest = {
        "format": "api-facial-recognition bundle",
        "format_version": 4,
        "service_version": VERSION,
        "model_id": job["id"],
        "name": job.get("name"),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "software": software_versions(),
        "pipeline": pipeline_settings(settings),
        "input": {"photos": len(files), "usable": len(usable), "skipped": len(files) - len(usable),
                  "several_faces": sum(1 for f in feats if f.usable and f.faces > 1),
                  "features_cached": hits, "extraction_seconds": round(data.extraction_seconds, 2),
                  "skipped_by_reason": dict(Counter(f.skipped for f in feats if not f.usable))},
        "people": people,
        "labels": split.people,
        "split": {"method": "per-person stratified, at least one photo per person in each part",
                  "seed": seed, "test_fraction": settings.test_fraction,
                  "validation_fraction": settings.val_fraction, **split.summary()},
        "network": {**asdict(spec), "params": int(model.count_params())},
        "training": {"epochs": epochs, "max_epochs": settings.max_epochs, "patience": settings.patience,
                     "seconds": round(train_seconds, 2), "trained_on": trained_on},
        "metrics": {"test_accuracy": accuracy(y_test, pred), "balanced_accuracy": balanced_accuracy(y_test, pred),
                    "network_test_accuracy": accuracy(y_test, network_pred),
                    "network_balanced_accuracy": balanced_accuracy(y_test, network_pred),
                    "validation_accuracy": accuracy(y[split.val], val_pred), "test_photos": int(len(y_test))},
        "open_set": open_set,
        "optimization": optimization,
        "training_task_seconds": round(time.time() - started, 2),
    }
    if optimization and optimization.get("baselines"):
        optimization["baselines"]["closed_set"]["chosen network"] = {
            "test_accuracy": manifest["metrics"]["network_test_accuracy"],
            "balanced_accuracy": manifest["metrics"]["network_balanced_accuracy"]}
        optimization["baselines"]["closed_set"]["chosen network + gallery (the bundle)"] = {
            "test_accuracy": manifest["metrics"]["test_accuracy"],
            "balanced_accuracy": manifest["metrics"]["balanced_accuracy"]}
    bundle = pack_bundle(model, split.people, manifest, gallery_x=x[gallery], gallery_y=y[gallery])
    release_keras()
    return bundle


def train_chosen(search: dict, x: np.ndarray, y: np.ndarray, split: Split, settings: Settings, seed: int):
    """The search's pick retrained on train + validation, and the baselines beside it.

    -> (spec, Keras model, epochs, the manifest's `optimization` section).
    """
    from optimization import baselines
    from optimization.evaluate import eval_seed, search_data
    from optimization.genome import decode, key
    chosen = search["chosen"]
    spec, epochs = decode(chosen["genome"]), int(chosen["epochs"])
    fit_idx = np.concatenate([split.train, split.val])
    n = len(split.people)
    fit = lean.fit(spec, x[fit_idx], y[fit_idx], n, seed=eval_seed(seed, key(chosen["genome"])),
                   max_epochs=max(1, epochs))
    model = to_keras(spec, fit.weights, x.shape[1], n)
    data = search_data(x, y, split, settings.search_holdout_fraction, seed)
    lr_epochs = baselines.logistic_epochs(data, seed, settings.search_max_epochs, settings.search_patience)
    compared = {
        "protocol": baselines.__doc__.strip(),
        "closed_set": baselines.closed_set(x[fit_idx], y[fit_idx], x[split.test], y[split.test], n,
                                           logistic_epochs=lr_epochs, seed=seed),
        "open_set": baselines.open_set(data, spec, epochs, logistic_epochs=lr_epochs, seed=seed,
                                       target_far=settings.target_far, k=settings.open_set_k,
                                       temperature=settings.fusion_temperature),
        "held_out_people": [split.people[i] for i in data.held_out],
    }
    return spec, model, epochs, {**search, "baselines": compared}


def software_versions() -> dict:
    import dlib
    import keras
    import tensorflow as tf
    return {"python": platform.python_version(), "dlib": dlib.__version__, "keras": keras.__version__,
            "tensorflow": tf.__version__, "numpy": np.__version__}


def release_keras() -> None:
    """Free the graph and weights of the last build so a long-lived worker stays flat in memory."""
    import keras
    keras.backend.clear_session()
    gc.collect()
