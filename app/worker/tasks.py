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

import json
import platform
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime

import numpy as np

from constants import VERSION, Settings
from constants.states import JobState
from features.extract import (
    FeatureCache,
    PhotoFeatures,
    cached_photos_features,
    pipeline_settings,
    release_freed_memory,
)
from features.select import choose_faces
from modelization import lean
from modelization.bundle import pack_bundle
from modelization.card import model_card
from modelization.dataset import HELD_OUT, ONE_PHOTO, Split, protocol, stratified_split
from modelization.export import library_versions, write_keras
from modelization.metrics import accuracy, balanced_accuracy
from modelization.network import NetworkSpec
from modelization.openset import (
    Gallery,
    calibrate,
    calibrate_verification,
    name_faces,
    pair_distance,
    verification_thresholds,
)
from preprocessor.quality import assess, limits
from preprocessor.uploads import Photo

Progress = Callable[[str, str, int, int], None]


class BuildError(Exception):
    def __init__(self, code: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details or {}


def extract_chunk(photos: list[Photo], settings: Settings, tenant: str | None = None) -> list[dict]:
    """Features of a slice of a job's photos, through the cache of the job's `tenant`: one dict per photo.

    The faces of every photo the cache misses are embedded in one batch. Besides the features:
    `cached`, the cache `key`, and `seconds` spent on the photo (its share of the batch's embedding).
    """
    cache = FeatureCache(settings.cache_dir, settings, tenant)
    results = cached_photos_features([photo.data for photo in photos], settings, cache)
    out = [{**asdict(feats), "cached": cached, "key": cache.key(photo.data), "seconds": round(seconds, 4)}
           for photo, (feats, cached, seconds) in zip(photos, results)]
    del results
    release_freed_memory()
    return out


POOR_QUALITY = "poor_quality"


def people_report(files: list[dict], feats: list[PhotoFeatures], kept: set[str],
                  too_few: dict[str, int], choices: dict[int, dict], settings: Settings) -> list[dict]:
    """Per person: photos uploaded, used, skipped (and why), photos with several faces (and which was used),
    and every used photo's quality figures (`quality`: file, face_px, sharpness, yaw, roll, problems)."""
    report: defaultdict[str, dict] = defaultdict(lambda: {"photos": 0, "used": 0, "skipped": [],
                                                          "several_faces": [], "quality": []})
    for i, (file, f) in enumerate(zip(files, feats)):
        r = report[file["label"]]
        r["photos"] += 1
        if f.quality is not None:  # usable, or skipped for its quality
            r["quality"].append({"file": file["filename"], **f.quality, "problems": assess(f.quality, settings)})
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
        elif label in kept:
            entry["protocol"] = protocol(r["used"])
        out.append(entry)
    return out


def skip_poor(feats: list[PhotoFeatures], settings: Settings) -> list[PhotoFeatures]:
    """With FR_QUALITY_POLICY=skip: usable photos whose face is poor come back skipped (`poor_quality`)."""
    if settings.quality_policy != "skip":
        return feats
    out = []
    for f in feats:
        bad = assess(f.quality, settings) if f.usable else []
        out.append(replace(f, embedding=None, skipped=POOR_QUALITY, detail="face " + ", ".join(bad)) if bad else f)
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
    feats = skip_poor(feats, settings)

    usable = [i for i, f in enumerate(feats) if f.usable]
    if not usable:
        raise BuildError("NO_FACE_FOUND", "no usable face was found in any photo",
                         {"files": [{"file": file["filename"], "reason": f.skipped, "detail": f.detail}
                                    for file, f in zip(files, feats)][:1000]})
    labels = [files[i]["label"] for i in usable]
    split = stratified_split(labels, min_photos=settings.min_photos_per_person,
                             test_fraction=settings.test_fraction, val_fraction=settings.val_fraction, seed=seed)
    people = people_report(files, feats, set(split.people), split.too_few, choices, settings)
    if len(split.people) < 2:
        least = max(1, settings.min_photos_per_person)
        raise BuildError("TOO_FEW_PEOPLE",
                         f"a recognizer tells people apart: it needs at least 2 people with {least} or more "
                         f"usable photo(s) each; got {len(split.people)}",
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
                    patience=settings.search_patience, target_far=settings.target_far, fold=fold)


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
        assert p is not None
        cache.folds[fold] = search_data(p.x, p.y, p.split, settings.search_holdout_fraction, seed, fold,
                                        settings.search_fold_val_fraction)
    return cache.folds[fold]


def figure(value: float) -> float | None:
    """A measured rate for the manifest: None when there was nothing to measure (JSON has no NaN)."""
    return None if value != value else round(float(value), 6)


def measure(spec: NetworkSpec, weights, x: np.ndarray, y: np.ndarray, split: Split, settings: Settings) -> dict:
    """The figures of a model trained without the test photos (classifier `weights`, gallery train +
    validation, its own thresholds), per protocol (modelization/dataset.py):

    - held-out photos (people with 2+ photos): each test photo named (`name_faces`) and accepted or not;
    - leave-one-identity-out (people with 1 photo): the photo scored against everybody else (its own
      person hidden from the gallery and the classifier): accepted as someone else or not.

    -> {"metrics" (with `confusions`), "open_set" (test_dir, test_accepted, operating_points, ...),
        "people": {label: figures}}.
    """
    n = len(split.people)
    gallery_idx = np.concatenate([split.train, split.val])
    gallery = Gallery(x[gallery_idx], y[gallery_idx], n)
    thresholds = np.asarray(calibrate(y[gallery_idx], n, settings.target_far)["thresholds"])
    t = settings.fusion_temperature

    x_test, y_test = x[split.test], y[split.test]
    probs = lean.predict_proba(spec, weights, x_test)
    pred, scores = name_faces(probs, gallery.scores(x_test), t)
    accepted = scores <= thresholds[pred] if len(pred) else np.zeros(0, bool)
    network_pred = probs.argmax(1)
    val_pred = lean.predict_proba(spec, weights, x[split.val]).argmax(1)

    people: dict[str, dict] = {}
    for c, label in enumerate(split.people):
        mine = y_test == c
        if mine.any():
            people[label] = {"test_photos": int(mine.sum()), "named_right": int((pred[mine] == c).sum()),
                             "accepted_right": int((accepted[mine] & (pred[mine] == c)).sum())}
    single = np.flatnonzero(np.bincount(y[y >= 0], minlength=n) == 1)
    as_stranger = one_photo_people(spec, weights, x, y, single, split.people, gallery, thresholds, t)
    false_accepts = sum(1 for v in as_stranger.values() if v["accepted_as"] is not None)
    people.update({split.people[c]: {"as_stranger": v} for c, v in as_stranger.items()})
    metrics = {"test_accuracy": figure(accuracy(y_test, pred)),
               "balanced_accuracy": figure(balanced_accuracy(y_test, pred)),
               "network_test_accuracy": figure(accuracy(y_test, network_pred)),
               "network_balanced_accuracy": figure(balanced_accuracy(y_test, network_pred)),
               "validation_accuracy": figure(accuracy(y[split.val], val_pred)),
               "test_photos": int(len(y_test)),
               "one_photo_people": int(len(single)), "one_photo_people_accepted_as_someone_else": int(false_accepts)}
    open_set = {"test_dir": figure(np.mean(accepted & (pred == y_test)) if len(pred) else float("nan")),
                "test_accepted": figure(np.mean(accepted) if len(pred) else float("nan")),
                "measured_thresholds": [round(float(v), 6) for v in thresholds]}
    return {"metrics": {**metrics, "confusions": confusions(y_test, pred, accepted, split.people)},
            "open_set": {**open_set,
                         "operating_points": operating_points(y[gallery_idx], n, pred, scores, y_test,
                                                              settings.target_far)},
            "people": people}


def one_photo_people(spec: NetworkSpec, weights, x: np.ndarray, y: np.ndarray, single: np.ndarray, labels: list[str],
                     gallery: Gallery, thresholds: np.ndarray, temperature: float) -> dict[int, dict]:
    """Each one-photo person's photo scored against everybody else, its own person hidden from the gallery
    and the classifier. -> {person: {accepted_as (a label, or None when refused), closest, score, threshold}}."""
    if not len(single):
        return {}
    idx = np.asarray([np.flatnonzero(y == c)[0] for c in single])
    probs = lean.predict_proba(spec, weights, x[idx])
    scores = gallery.scores(x[idx])
    probs[np.arange(len(single)), single] = 0.0  # hide each photo's own person
    scores[np.arange(len(single)), single] = np.inf
    as_, score_s = name_faces(probs, scores, temperature)
    return {int(person): {"accepted_as": labels[other] if score <= thresholds[other] else None,
                          "closest": labels[other], "score": round(float(score), 6),
                          "threshold": round(float(thresholds[other]), 6)}
            for person, other, score in zip(single, as_, score_s)}


# Target false-accept rates at which the manifest shows what the calibrated rule would recognise.
OPERATING_FARS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


def confusions(y_test: np.ndarray, pred: np.ndarray, accepted: np.ndarray, people: list[str]) -> list[dict]:
    """Test photos named as someone else, by (person, named): how many, and how many of those the
    rule accepted (a real mistake; the others were answered "unknown"). Most frequent first."""
    wrong = Counter((int(a), int(b)) for a, b in zip(y_test, pred) if a != b)
    taken = Counter((int(a), int(b)) for a, b, ok in zip(y_test, pred, accepted) if a != b and ok)
    return [{"person": people[a], "named": people[b], "photos": k, "accepted": taken[(a, b)]}
            for (a, b), k in sorted(wrong.items(), key=lambda item: (-item[1], item[0]))]


def operating_points(gallery_y: np.ndarray, n: int, pred: np.ndarray, scores: np.ndarray, y_test: np.ndarray,
                     target_far: float) -> list[dict]:
    """The FAR/DIR trade-off of the measured model: for each target false-accept rate (the build's own
    among them), the per-person thresholds calibrated for it and, on the test photos, the share accepted
    with the right name (`test_dir`) and accepted at all. The FAR is what the stranger model expects
    (a build has no strangers to measure it on); the DIR is measured."""
    points = []
    for far in sorted({*OPERATING_FARS, target_far}):
        t = np.asarray(calibrate(gallery_y, n, far)["thresholds"])
        ok = scores <= t[pred] if len(pred) else np.zeros(0, bool)
        points.append({"target_far": far, "threshold_range": [round(float(t.min()), 6), round(float(t.max()), 6)],
                       "test_dir": figure(np.mean(ok & (pred == y_test)) if len(pred) else float("nan")),
                       "test_accepted": figure(np.mean(ok) if len(pred) else float("nan"))})
    return points


MAX_VERIFY_PROBES, MAX_VERIFY_GALLERY = 1000, 3000  # photos compared pairwise when measuring verification


def measure_verification(x: np.ndarray, y: np.ndarray, split: Split, far: float, seed: int) -> dict | None:
    """1:1 verification measured like the rest: the test photos against the measured model's gallery
    (train + validation), with thresholds calibrated on that gallery's photo counts. Pairs: every test
    photo against every gallery photo (same person: genuine, else impostor). Against people: every test
    photo against every person's template. None without test photos.

    The impostors are the gallery's other people, who look more alike than strangers do: the impostor
    rate measured here is a pessimistic stand-in for the false-accept rate the thresholds are set for.
    """
    if len(split.test) == 0:
        return None
    rng = np.random.default_rng(seed)
    n = len(split.people)
    gallery_idx = np.concatenate([split.train, split.val])
    pair_t, person_t = verification_thresholds(np.bincount(y[gallery_idx], minlength=n), far)
    test = split.test
    scores = Gallery(x[gallery_idx], y[gallery_idx], n).scores(x[test])  # (tests, people)
    own = np.zeros_like(scores, dtype=bool)
    own[np.arange(len(test)), y[test]] = True
    accepted = scores <= person_t[None, :]
    probes = test if len(test) <= MAX_VERIFY_PROBES else rng.choice(test, MAX_VERIFY_PROBES, replace=False)
    refs = gallery_idx if len(gallery_idx) <= MAX_VERIFY_GALLERY else rng.choice(gallery_idx, MAX_VERIFY_GALLERY,
                                                                                    replace=False)
    same = y[probes][:, None] == y[refs][None, :]
    d = np.stack([pair_distance(np.repeat(x[i][None, :], len(refs), 0), x[refs]) for i in probes])
    ok = d <= pair_t

    def rate(hits: np.ndarray, mask: np.ndarray) -> float | None:
        return figure(float(hits[mask].mean())) if mask.any() else None

    return {"on": "the test photos against the measured model's gallery (train + validation photos), its "
                  "thresholds calibrated on that gallery; impostors are the gallery's other people",
            "genuine_pairs": int(same.sum()), "genuine_accept_rate": rate(ok, same),
            "impostor_pairs": int((~same).sum()), "impostor_accept_rate": rate(ok, ~same),
            "by_person": {"genuine": int(own.sum()), "genuine_accept_rate": rate(accepted, own),
                          "impostor": int((~own).sum()), "impostor_accept_rate": rate(accepted, ~own)}}


@dataclass
class Trained:
    """The network that is measured (trained without the test photos) and how it was chosen."""
    spec: NetworkSpec
    weights: list
    epochs: int
    optimization: dict | None
    measured_on: str


def train_bundle(job: dict, files: list[dict], features: list[dict], settings: Settings,
                 progress: Progress, search: dict | None = None) -> bytes:
    """Build the bundle from every photo's features. `job`: id, name, options {optimize, seed, ...}.

    Two trainings: the model that is measured learns without the test photos (split above); the
    model that ships is refit on every usable photo, its gallery holding them all (same network,
    the epochs the first training kept). `search`: the finished search's report (optimize=1): its
    chosen network is used and compared with the baselines; without it (or when the search fell
    back), the fixed default network.
    """
    started = time.time()
    options = job.get("options", {})
    seed = int(options.get("seed", settings.default_seed))
    data = prepare(files, features, settings, seed)
    x, y, split = data.x, data.y, data.split
    n = len(split.people)
    t0 = time.time()
    trained = train_measured(search, x, y, split, settings, seed, progress)
    measured = measure(trained.spec, trained.weights, x, y, split, settings)

    # The model that ships: the same network refit on every usable photo, the gallery holding them all.
    progress(JobState.TRAINING, "refitting on every photo", 0, 1)
    kept = np.flatnonzero(y >= 0)
    refit = lean.fit(trained.spec, x[kept], y[kept], n, seed=seed, max_epochs=max(1, trained.epochs))
    model = write_keras(trained.spec, refit.weights, x.shape[1], n)  # without Keras: no TensorFlow here
    train_seconds = time.time() - t0
    mark_measured(data.people, measured["people"])
    manifest = {
        "format": "api-facial-recognition bundle",
        "format_version": 5,
        "service_version": VERSION,
        "model_id": job["id"],
        "name": job.get("name"),
        "parent": options.get("parent"),
        "derivation": derivation_record(options, files),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "software": software_versions(),
        "pipeline": pipeline_settings(settings),
        "input": input_record(files, data, int(options.get("inherited", 0))),
        "quality": quality_record(data.people, settings),
        "people": data.people,
        "labels": split.people,
        "split": split_record(split, data.people, seed, settings),
        "network": {**asdict(trained.spec), "params": int(model.count_params())},
        "training": {"epochs": trained.epochs, "max_epochs": settings.max_epochs, "patience": settings.patience,
                     "seconds": round(train_seconds, 2), "trained_on": trained.measured_on},
        "refit": refit_record(len(kept), trained.epochs),
        "metrics": {**measured["metrics"], "protocols": PROTOCOLS},
        "open_set": open_set_record(y[kept], n, settings, measured["open_set"]),
        "verification": {**calibrate_verification(y[kept], n, settings.verify_far),
                         "measured": measure_verification(x, y, split, settings.verify_far, seed)},
        "optimization": trained.optimization,
        "training_task_seconds": round(time.time() - started, 2),
    }
    add_bundle_to_baselines(manifest)
    bundle = pack_bundle(model, split.people, manifest, gallery_x=x[kept], gallery_y=y[kept],
                         card=model_card(manifest))
    return bundle


PROTOCOLS = {HELD_OUT: "people with 2 or more photos: their test photos, never seen by the measured model",
             ONE_PHOTO: "people with 1 photo: scored against everybody else, their own person hidden; counted in "
                        "one_photo_people_accepted_as_someone_else"}


def mark_measured(people: list[dict], measured: dict[str, dict]) -> None:
    """Each person's entry of the manifest gets what the measured model scored on them."""
    for person in people:
        if person["label"] in measured:
            person["measured"] = measured[person["label"]]


def refit_record(photos: int, epochs: int) -> dict:
    return {"photos": int(photos), "gallery_photos": int(photos), "epochs": max(1, epochs),
            "note": "the figures in `metrics`, `open_set` (test_*) and `people[].measured` come from a model "
                    "trained without the test photos; the shipped classifier was then retrained on every "
                    "usable photo for the same epochs, and its gallery holds every usable photo"}


def train_measured(search: dict | None, x: np.ndarray, y: np.ndarray, split: Split, settings: Settings, seed: int,
                   progress: Progress) -> Trained:
    """The model measured: the search's pick (trained on train + validation), or the fixed default network
    (trained on the train split, validation for early stopping) when there is no search or it fell back."""
    if search is not None and search.get("chosen"):
        progress(JobState.TRAINING, "training the chosen network", 0, 1)
        spec, weights, epochs, optimization = train_chosen(search, x, y, split, settings, seed)
        return Trained(spec, weights, epochs, optimization,
                       "train + validation splits, for the median of the epochs early stopping kept on the "
                       "search's folds; then refit on every photo")
    optimization = None
    spec = NetworkSpec(learning_rate=settings.learning_rate, batch_size=settings.batch_size)
    if search is not None:  # the search fell back, or its budget ran out before any candidate was evaluated
        note = (f"the search could not rank networks ({search['fallback']})" if search.get("fallback")
                else "no candidate was evaluated in the time budget")
        optimization = {**search, "note": note + ": the fixed default network was trained"}
    progress(JobState.TRAINING, "training", 0, settings.max_epochs)
    has_val = len(split.val) > 0
    fit = lean.fit(spec, x[split.train], y[split.train], len(split.people), seed=seed,
                   max_epochs=settings.max_epochs if has_val else settings.epochs_without_validation,
                   x_val=x[split.val] if has_val else None, y_val=y[split.val] if has_val else None,
                   patience=settings.patience, min_delta=settings.min_delta,
                   on_epoch=lambda e: progress(JobState.TRAINING, "training", e, settings.max_epochs))
    measured_on = ("train split (validation for early stopping); then refit on every photo" if has_val else
                   f"train split, {fit.best_epoch} epochs (FR_EPOCHS_WITHOUT_VALIDATION: no person has a validation "
                   "photo); then refit on every photo")
    return Trained(spec, fit.weights, fit.best_epoch, optimization, measured_on)


def open_set_record(y_kept: np.ndarray, n: int, settings: Settings, measured: dict) -> dict:
    """The shipped rule's thresholds (calibrated on every usable photo) and what the measured model scored."""
    open_set = calibrate(y_kept, n, settings.target_far)
    open_set["temperature"] = settings.fusion_temperature
    # The gallery is embedded once per face (build speed); a face to identify can afford a
    # second pass on its mirror image, which brings it nearer its person (README "Open set").
    open_set["mirror_probes"] = settings.mirror_probes
    open_set["mirror_margin"] = settings.mirror_margin
    open_set["decision"] = ("the person maximising log p (classifier) - score / temperature"
                            if settings.fusion_temperature > 0 else "the classifier's most probable person")
    open_set.update(measured)
    return open_set


def derivation_record(options: dict, files: list[dict]) -> dict | None:
    """A derived model's parent and what it took from it (None for a build from photos)."""
    if not options.get("parent"):
        return None
    inherited = int(options.get("inherited", 0))
    return {"parent": options["parent"], "inherited_photos": inherited, "added_photos": len(files) - inherited,
            "removed_people": int(options.get("removed_people", 0)),
            "note": "the parent's per-photo features were reused (nothing re-uploaded or re-embedded); only the "
                    "added photos were extracted, and the model was split, measured, calibrated and trained anew"}


def input_record(files: list[dict], data: Prepared, inherited: int) -> dict:
    feats = data.feats
    return {"photos": len(files), "usable": len(data.usable), "skipped": len(files) - len(data.usable),
            "several_faces": sum(1 for f in feats if f.usable and f.faces > 1),
            "features_cached": data.hits, "features_inherited": inherited,
            "extraction_seconds": round(data.extraction_seconds, 2),
            "skipped_by_reason": dict(Counter(f.skipped for f in feats if not f.usable))}


def quality_record(people: list[dict], settings: Settings) -> dict:
    poor = [q for p in people for q in p["quality"] if q["problems"]]
    return {"policy": settings.quality_policy, "limits": limits(settings),
            "poor_photos": len(poor), "poor_photos_used": 0 if settings.quality_policy == "skip" else len(poor),
            "by_problem": dict(Counter(problem for q in poor for problem in q["problems"]))}


def split_record(split: Split, people: list[dict], seed: int, settings: Settings) -> dict:
    return {"method": "per-person stratified: 3+ photos give train/validation/test (at least one each), "
                      "2 photos train/test, 1 photo trains (measured leave-one-identity-out)",
            "seed": seed, "test_fraction": settings.test_fraction,
            "validation_fraction": settings.val_fraction, **split.summary(),
            "people_by_protocol": dict(Counter(p["protocol"] for p in people if p.get("in_model")))}


def add_bundle_to_baselines(manifest: dict) -> None:
    """The search's baselines table gets the chosen network alone and with its gallery (the bundle)."""
    optimization = manifest["optimization"]
    if optimization and optimization.get("baselines"):
        optimization["baselines"]["closed_set"]["chosen network"] = {
            "test_accuracy": manifest["metrics"]["network_test_accuracy"],
            "balanced_accuracy": manifest["metrics"]["network_balanced_accuracy"]}
        optimization["baselines"]["closed_set"]["chosen network + gallery (the bundle)"] = {
            "test_accuracy": manifest["metrics"]["test_accuracy"],
            "balanced_accuracy": manifest["metrics"]["balanced_accuracy"]}


def train_chosen(search: dict, x: np.ndarray, y: np.ndarray, split: Split, settings: Settings, seed: int):
    """The search's pick trained on train + validation (the measured model), and the baselines beside it.

    -> (spec, weights, epochs, the manifest's `optimization` section).
    """
    from optimization import baselines
    from optimization.evaluate import eval_seed, search_data
    from optimization.genome import decode, key
    chosen = search["chosen"]
    spec, epochs = decode(chosen["genome"]), max(1, int(chosen["epochs"]))
    fit_idx = np.concatenate([split.train, split.val])
    n = len(split.people)
    fit = lean.fit(spec, x[fit_idx], y[fit_idx], n, seed=eval_seed(seed, key(chosen["genome"])), max_epochs=epochs)
    data = search_data(x, y, split, settings.search_holdout_fraction, seed)
    lr_epochs = baselines.logistic_epochs(data, seed, settings.search_max_epochs, settings.search_patience)
    compared = {
        "protocol": baselines.__doc__.strip(),
        "closed_set": baselines.closed_set(x[fit_idx], y[fit_idx], x[split.test], y[split.test], n,
                                           logistic_epochs=lr_epochs, seed=seed),
        "open_set": baselines.open_set(data, spec, epochs, logistic_epochs=lr_epochs, seed=seed,
                                       target_far=settings.target_far, temperature=settings.fusion_temperature),
        "held_out_people": [split.people[i] for i in data.held_out],
    }
    return spec, fit.weights, epochs, {**search, "baselines": compared}


def software_versions() -> dict:
    import dlib

    return {"python": platform.python_version(), "dlib": dlib.__version__, **library_versions(),
            "numpy": np.__version__}
