"""Settings and limits, each overridable by an environment variable.

Every knob of the service lives here so that operators find them in one place.
`Settings.from_env()` reads `FR_*` variables; nothing else in the code reads the
environment.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

VERSION = "0.1.0"

ROOT = Path(__file__).resolve().parent.parent

# Job states, in the order a job walks through them.
QUEUED, EXTRACTING, TRAINING, OPTIMIZING, DONE, FAILED = (
    "queued", "extracting", "training", "optimizing", "done", "failed")
RUNNING_STATES = (EXTRACTING, TRAINING, OPTIMIZING)
TERMINAL_STATES = (DONE, FAILED)

# MPO: JPEGs with extra pictures (many phone photos); PIL decodes the first.
ALLOWED_IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF", "GIF")
QUALITY_POLICIES = ("keep", "skip")  # what a build does with a poor photo (FR_QUALITY_POLICY)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def _env(name: str, default, cast=None):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    cast = cast or type(default)
    if cast is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return cast(raw)


@dataclass(frozen=True)
class Settings:
    """All tunables. Field `x` is read from env var `FR_X` (upper case)."""

    data_dir: Path = ROOT
    host: str = "0.0.0.0"  # noqa: S104
    port: int = 8080
    workers: int = 2
    worker_threads: int = 1           # BLAS threads per worker process (one worker per core)
    # ZeroMQ endpoints of the broker: the front (HTTP app) and the back (workers).
    broker_front: str = "tcp://127.0.0.1:5555"
    broker_back: str = "tcp://127.0.0.1:5556"
    broker_timeout_s: float = 10.0
    broker_submit_s_per_photo: float = 0.02   # added to the timeout of a submit (the broker fsyncs each photo)

    heartbeat_s: float = 1.0          # interval between heartbeats, both ways
    heartbeat_liveness: int = 5       # missed heartbeats before a peer is dead
    max_attempts: int = 3             # a task that loses this many workers fails its job
    chunk_photos: int = 16            # photos per extract task: how a build spreads over workers

    # Upload limits.
    max_request_bytes: int = 512 * 1024 * 1024
    max_files: int = 20_000
    max_image_pixels: int = 40_000_000          # decompression-bomb guard
    max_zip_uncompressed_bytes: int = 2 * 1024 * 1024 * 1024
    max_zip_ratio: float = 200.0                # per entry and overall
    max_zip_entries: int = 50_000
    max_label_length: int = 100
    max_name_length: int = 200

    # Face pipeline.
    detect_max_side: int = 1600       # larger photos are detected on a downscaled copy
    upsample_max_side: int = 1000     # photos up to this side get one upsampled retry
    chip_size: int = 150
    chip_padding: float = 0.25
    max_faces_per_photo: int = 8      # faces embedded in a training photo (largest first), see features/select.py
    same_person_distance: float = 0.6  # dlib's tolerance: a group photo's face must be this close to the person

    # Enrolment quality (preprocessor/quality.py): every face is measured; below these limits it is "poor".
    quality_min_face_px: int = 40         # detection box width in the photo's pixels
    quality_min_sharpness: float = 10.0   # variance of the Laplacian of the aligned chip
    quality_max_yaw: float = 0.3          # nose offset from the eyes' middle, in eye distances
    quality_policy: str = "keep"          # keep: poor photos are used (and listed); skip: they are not

    # Training.
    min_photos_per_person: int = 1    # fewer usable photos: person left out (1: everyone with a face is in)
    epochs_without_validation: int = 40  # when no person has 3 photos (no validation photo for early stopping)
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    default_seed: int = 42
    max_epochs: int = 200
    patience: int = 10
    min_delta: float = 1e-3           # smaller val-loss gains don't count as progress
    batch_size: int = 64
    learning_rate: float = 3e-3

    # Genetic architecture search (optimize=1, optimization/): form-field defaults, then their limits.
    search_population: int = 32       # rounded up to a multiple of 4 (NSGA-II's tournament draws in fours)
    search_generations: int = 6       # offspring generations after the initial population
    search_budget_s: float = 300.0    # the search stops here and keeps the best found so far
    search_max_population: int = 256
    search_max_generations: int = 100
    search_max_budget_s: float = 86_400.0
    search_max_epochs: int = 60       # per candidate (early stopping usually ends it sooner)
    search_patience: int = 6
    search_epsilon: float = 0.001     # final pick: smallest network within this of the best score
    search_holdout_fraction: float = 0.2  # people held out of candidates' training to play strangers
    search_finalists: int = 16        # best networks scored again on more folds before the pick
    search_folds: int = 3             # more folds per finalist (0: pick on the build's own split alone)
    search_fold_val_fraction: float = 0.25  # a fold's share of train + validation photos used to validate
    search_confirm_share: float = 0.25      # of the time budget kept for the finalists' folds

    # Open set ("unknown"): rejection rule calibrated at build time (modelization/openset.py).
    target_far: float = 0.01          # fraction of strangers the per-person thresholds let through
    # who a face is: argmax log p - score / T (openset.name_faces; 0 = classifier alone). Small: the
    # template score leads, the classifier only breaks near-ties (it did not name faces better, bench/README.md)
    fusion_temperature: float = 0.005
    mirror_probes: bool = True        # new bundles embed a face to identify with its mirror image too (2 passes)
    mirror_margin: float = 0.06       # ... only when its one-pass score is this close to its threshold (inf: always)
    model_cache_size: int = 8         # loaded recognizers kept per web process (LRU)

    keep_uploads: bool = False        # keep uploaded photos after a successful build
    warm_up: bool = True              # workers load dlib's models and import Keras at start (~6 s, in the background)

    log_level: str = "INFO"
    log_rotation: str = "20 MB"
    log_retention: int = 5

    def __post_init__(self):
        if self.quality_policy not in QUALITY_POLICIES:
            raise ValueError(f"FR_QUALITY_POLICY must be one of {', '.join(QUALITY_POLICIES)}, "
                             f"got {self.quality_policy!r}")

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        values = {}
        for f in fields(cls):
            default = f.default
            cast = Path if f.name == "data_dir" else type(default)
            values[f.name] = _env("FR_" + f.name.upper(), default, cast)
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["data_dir"] = Path(values["data_dir"]).resolve()
        return cls(**values)

    # Layout of the data directory: everything the service writes lives below it.
    @property
    def dumps_dir(self) -> Path:
        return self.data_dir / "dumps"

    @property
    def var_dir(self) -> Path:
        return self.data_dir / "var"

    @property
    def db_path(self) -> Path:
        return self.var_dir / "jobs.sqlite"

    @property
    def uploads_dir(self) -> Path:
        return self.var_dir / "uploads"

    @property
    def cache_dir(self) -> Path:
        return self.var_dir / "cache"

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "logs"

    @property
    def heartbeat_expiry_s(self) -> float:
        return self.heartbeat_s * self.heartbeat_liveness

    def ensure_dirs(self) -> None:
        for d in (self.dumps_dir, self.uploads_dir, self.cache_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
