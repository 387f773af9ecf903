"""Settings and limits, each overridable by an environment variable.

Every knob of the service lives here so that operators find them in one place.
`Settings.from_env()` reads `FR_*` variables; nothing else in the code reads the
environment.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

VERSION = "0.1.0"

ROOT = Path(__file__).resolve().parent.parent
MAX_SEED = 2**31 - 1

# MPO: JPEGs with extra pictures (many phone photos); PIL decodes the first.
ALLOWED_IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF", "GIF")
QUALITY_POLICIES = ("keep", "skip")  # what a build does with a poor photo (FR_QUALITY_POLICY)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")

# Who computes the 128-d embeddings (FR_EMBEDDER): each runs dlib's face ResNet and gives dlib's numbers.
EMBEDDERS = ("onnx", "tensorflow", "dlib")
# Who finds the faces (FR_DETECTOR): BlazeFace over tiles of the full photo (the default: faces from 40 px
# anywhere in a 12 MP photo, turned and tilted ones), or dlib's frontal HOG as before (docs/detector.md).
DETECTORS = ("hog", "blazeface")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: a host only this machine reaches."""
    import ipaddress
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


MIN_ADMIN_KEY_LENGTH = 32  # FR_ADMIN_KEY: shorter operator keys are refused (secrets.token_urlsafe(32) has 43)


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the variable and what it accepts."""


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_bool(raw: str, name: str) -> bool:
    """The one reading of a yes/no value, for settings and form fields alike. Raises ValueError."""
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"{name} must be one of {'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}, got {raw[:40]!r}")


_HOST_NAME = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def webhook_allow_entries(raw: str) -> list[str]:
    """FR_WEBHOOK_ALLOW's entries (comma or space separated, lower case): host names, `*.domain`, IP
    addresses, networks (CIDR). Raises SettingsError for anything else."""
    entries = [e.strip().lower() for e in re.split(r"[,\s]+", raw or "") if e.strip()]
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
            continue
        except ValueError:
            pass
        if not _HOST_NAME.fullmatch(entry.rstrip(".")) or (entry.startswith("*.") and "." not in entry[2:]):
            raise SettingsError(f"FR_WEBHOOK_ALLOW: {entry[:80]!r} is not a host name, *.domain, IP address or "
                                "network")
    return [e.rstrip(".") for e in entries]


def _bounded(default, low=None, high=None):
    """A field whose value must lie in [low, high] (None: unbounded on that side)."""
    return field(default=default, metadata={"low": low, "high": high})


def _parse(name: str, raw: str, kind: type, low=None, high=None):
    """One environment value -> its typed value, or SettingsError naming the variable."""
    if kind is bool:
        try:
            return parse_bool(raw, name)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
    if kind in (int, float):
        what = "an integer" if kind is int else "a number"
        try:
            value = kind(raw.strip().replace("_", ""))
        except ValueError:
            raise SettingsError(f"{name} must be {what}, got {raw[:40]!r}") from None
        if value != value:  # nan
            raise SettingsError(f"{name} must be {what}, got {raw[:40]!r}")
        _check_range(name, value, low, high)
        return value
    return kind(raw)


def _check_range(name: str, value, low, high) -> None:
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"between {low} and {high}" if low is not None and high is not None else (
            f"at least {low}" if low is not None else f"at most {high}")
        raise SettingsError(f"{name} must be {span}, got {value}")


@dataclass(frozen=True)
class Settings:
    """All tunables. Field `x` is read from env var `FR_X` (upper case); a bad value stops the start."""

    data_dir: Path = ROOT
    host: str = "127.0.0.1"           # HTTP address: loopback unless told otherwise (the Dockerfile says 0.0.0.0)
    port: int = _bounded(8080, 1, 65535)
    workers: int = _bounded(2, 0, 256)
    worker_threads: int = _bounded(1, 1, 256)   # BLAS and TensorFlow threads per worker process (one worker per core)
    web_processes: int = _bounded(2, 1, 64)     # uWSGI processes serving HTTP
    web_threads: int = _bounded(16, 1, 256)     # threads per uWSGI process: a slow upload holds one
    # ZeroMQ endpoints of the broker. The front (HTTP app) is an ipc socket in var/run/ (owner-only)
    # unless set; the back (workers) binds to loopback unless told otherwise. Both use CURVE.
    broker_front: str = ""
    broker_back: str = "tcp://127.0.0.1:5556"
    front_keys: str = ""  # the HTTP front's CURVE pair and the broker's public key (default var/keys/local-front)
    # The broker also takes fronts of other hosts here (tcp, CURVE, keys in allowed/fronts/); off unless set
    # (`serve --front-port P` binds it on loopback)
    broker_front_tcp: str = ""
    broker_readers: int = _bounded(2, 1, 64)     # broker threads answering fronts' reads (rows, bundles, keys)
    front_cache_max_bytes: int = _bounded(2 * 1024**3, 0)  # bundles a front host keeps (var/front-cache/, LRU)
    broker_timeout_s: float = _bounded(10.0, 0.1, 3600)
    broker_submit_s_per_photo: float = _bounded(0.002, 0.0, 10.0)  # added to a submit's timeout per photo

    heartbeat_s: float = _bounded(1.0, 0.05, 60)   # interval between heartbeats, both ways
    heartbeat_liveness: int = _bounded(5, 2, 100)  # missed heartbeats before a peer is dead
    max_attempts: int = _bounded(3, 1, 100)        # a task that loses this many workers fails its job
    chunk_photos: int = _bounded(16, 1, 1000)      # photos per extract task: how a build spreads over workers

    # Upload limits.
    max_request_bytes: int = _bounded(512 * 1024 * 1024, 1024)
    max_photo_bytes: int = _bounded(32 * 1024 * 1024, 1024)   # one photo, also inside a zip
    max_files: int = _bounded(20_000, 1)
    max_image_pixels: int = _bounded(40_000_000, 1)           # decompression-bomb guard
    # a photo to recognise (predict, verify: in the web processes) is decoded within this: a larger JPEG at
    # 1/2, 1/4 or 1/8 of its size, another format refused (12 MP: a phone's 4000x3000 photo at full size)
    predict_max_pixels: int = _bounded(12_000_000, 1)
    max_zip_uncompressed_bytes: int = _bounded(2 * 1024 * 1024 * 1024, 1)  # for all archive parts together
    max_zip_ratio: float = _bounded(200.0, 1.0)               # per entry and overall
    max_zip_entries: int = _bounded(50_000, 1)
    max_label_length: int = _bounded(100, 1, 1000)
    max_name_length: int = _bounded(200, 1, 10_000)
    upload_grace_s: float = _bounded(10.0, 0.1, 3600)  # a request body may start slowly this long...
    min_upload_rate: int = _bounded(16 * 1024, 0)      # ...then must average this many bytes/s (else 408)
    min_free_bytes: int = _bounded(256 * 1024 * 1024, 0)  # free disk kept in reserve: builds 507, /is_alive 503
    request_timeout_s: int = _bounded(300, 10, 86_400)  # uWSGI's http-timeout; a build must be stored within it

    # Face pipeline.
    detector: str = "blazeface"                     # FR_DETECTOR: blazeface or hog (docs/detector.md)
    detect_min_face_px: int = _bounded(40, 16, 1000)  # blazeface: the smallest face (box width, px) looked for
    detect_max_side: int = _bounded(1600, 64)       # hog: larger photos are detected on a downscaled copy
    upsample_max_side: int = _bounded(1000, 0)      # hog: photos up to this side get one upsampled retry
    chip_size: int = _bounded(150, 150, 150)        # dlib's ResNet takes 150 px chips
    chip_padding: float = _bounded(0.25, 0.0, 1.0)
    max_faces_per_photo: int = _bounded(8, 1, 100)  # faces embedded in a training photo (largest first)
    max_faces_per_predict: int = _bounded(20, 1, 1000)  # faces embedded in a photo to identify (largest first)
    # who runs dlib's face ResNet: "onnx" (the same network and weights in ONNX Runtime: the fastest, and no
    # TensorFlow in the process), "tensorflow" (in TensorFlow) or "dlib" (compute_face_descriptor); dlib's
    # embeddings within 1e-6 (onnx) and 1e-4 (tensorflow) (features/embeddings.py, docs/memory.md)
    embedder: str = "onnx"
    # threads of one forward pass of the onnx embedder in a web process (0: one per core); a worker uses
    # FR_WORKER_THREADS (run.py). 1: on a loaded machine a pass split over threads waits for the slowest
    # one (measured: p50 2.2x longer with 2 threads than TensorFlow's, at the same CPU, docs/memory.md)
    embedder_threads: int = _bounded(1, 0, 256)
    max_batch: int = _bounded(16, 1, 1000)          # photos or embeddings in one predict/verify request
    max_json_bytes: int = _bounded(64 * 1024 * 1024, 1024)  # a JSON body (photos in base64 inside)
    same_person_distance: float = _bounded(0.6, 0.0, 4.0)  # a group photo's face must be this close to the person

    # Enrolment quality (preprocessor/quality.py): every face is measured; below these limits it is "poor".
    quality_min_face_px: int = _bounded(40, 0)          # detection box width in the photo's pixels
    quality_min_sharpness: float = _bounded(10.0, 0.0)  # variance of the Laplacian of the aligned chip
    quality_max_yaw: float = _bounded(0.3, 0.0)         # nose offset from the eyes' middle, in eye distances
    quality_policy: str = "keep"          # keep: poor photos are used (and listed); skip: they are not
    # Below these a face found is not named at all (reason too_small / too_blurred, preprocessor/quality.py);
    # chosen on strangers-more by bench/quality_limits.py (docs/detector.md)
    recognise_min_face_px: int = _bounded(32, 0)         # drift p90 0.32 on strangers-more (28 px: 0.38)
    recognise_min_sharpness: float = _bounded(8.0, 0.0)  # drift p90 0.32 in [8, 10) (6-8: 0.40)

    # Recorded videos (POST /models/<id>/video; modelization/video.py). The bytes are checked by the front
    # before the body is read, the seconds by the worker from the container and again as it decodes.
    max_video_bytes: int = _bounded(256 * 1024 * 1024, 1024)
    max_video_seconds: float = _bounded(3600.0, 1.0, 7 * 24 * 3600.0)
    max_video_fps: float = _bounded(30.0, 0.1, 120.0)   # the highest sampling rate a client may ask for
    # frames larger than this (their longer side, in pixels) are scaled down before faces are looked for:
    # a 1080p clip costs 2.6x the CPU with faces looked for in the full frame (bench/README.md), and faces that
    # matter in a video frame are far over the recogniser's 32 px at half size
    video_max_side: int = _bounded(960, 160, 8192)

    # Training.
    min_photos_per_person: int = _bounded(1, 1, 1000)  # fewer usable photos: left out (1: everyone with a face)
    epochs_without_validation: int = _bounded(40, 1, 100_000)  # when no person has a validation photo
    test_fraction: float = _bounded(0.2, 0.0, 0.9)
    val_fraction: float = _bounded(0.1, 0.0, 0.9)
    default_seed: int = _bounded(42, 0, MAX_SEED)
    max_epochs: int = _bounded(200, 1, 100_000)
    patience: int = _bounded(10, 1, 100_000)
    min_delta: float = _bounded(1e-3, 0.0)          # smaller val-loss gains don't count as progress
    batch_size: int = _bounded(64, 1, 1_000_000)
    learning_rate: float = _bounded(3e-3, 0.0, 10.0)

    # Genetic architecture search (optimize=1, optimization/): form-field defaults, then their limits.
    search_population: int = _bounded(32, 4, 4096)  # rounded up to a multiple of 4 (NSGA-II draws in fours)
    search_generations: int = _bounded(6, 1, 10_000)  # offspring generations after the initial population
    search_budget_s: float = _bounded(300.0, 1.0)   # the search stops here and keeps the best found so far
    search_max_population: int = _bounded(256, 4, 4096)
    search_max_generations: int = _bounded(100, 1, 10_000)
    search_max_budget_s: float = _bounded(86_400.0, 1.0)
    search_max_epochs: int = _bounded(60, 1, 100_000)  # per candidate (early stopping usually ends it sooner)
    search_patience: int = _bounded(6, 1, 100_000)
    search_epsilon: float = _bounded(0.001, 0.0, 1.0)  # final pick: smallest network within this of the best
    search_holdout_fraction: float = _bounded(0.2, 0.0, 0.9)  # people held out of training to play strangers
    search_finalists: int = _bounded(16, 1, 1000)   # best networks scored again on more folds before the pick
    search_folds: int = _bounded(3, 0, 100)         # more folds per finalist (0: pick on the build's own split)
    search_fold_val_fraction: float = _bounded(0.25, 0.01, 0.9)  # a fold's share of photos used to validate
    search_confirm_share: float = _bounded(0.25, 0.0, 0.9)       # of the time budget kept for the folds

    # Open set ("unknown"): rejection rule calibrated at build time (modelization/openset.py).
    target_far: float = _bounded(0.01, 0.0001, 0.5)  # fraction of strangers the per-person thresholds let through
    # who a face is: argmax log p - score / T (openset.name_faces; 0 = classifier alone). Small: the
    # template score leads, the classifier only breaks near-ties (it did not name faces better, bench/README.md)
    fusion_temperature: float = _bounded(0.005, 0.0)
    mirror_probes: bool = True        # new bundles embed a face to identify with its mirror image too (2 passes)
    mirror_margin: float = _bounded(0.06, 0.0)  # ... only when its one-pass score is this close to its threshold
    model_cache_size: int = _bounded(8, 1, 10_000)  # loaded recognizers kept per web process (LRU)
    # 1:1 verification (/verify): false-accept rate per comparison its thresholds are set for (the stranger
    # model's fitted range, modelization/openset.py)
    verify_far: float = _bounded(0.001, 0.00001, 0.03)

    keep_uploads: bool = False        # keep uploaded photos after a successful build
    failed_retention_hours: float = _bounded(24.0, 0.0, 365 * 24)  # a failed build's photos go after this long
    # unknown faces a model keeps (keep_unknown=1, issue #28) go this many days after they were seen
    unknown_retention_days: float = _bounded(30.0, 0.0, 3650)
    # Callbacks (app/broker/webhooks.py): the hosts a build's callback_url may name (names, *.domain, IPs, networks;
    # empty: no callbacks), the wait for a receiver, the first retry delay (it doubles) and how long to retry.
    webhook_allow: str = ""
    webhook_timeout_s: float = _bounded(10.0, 0.5, 120)
    webhook_retry_s: float = _bounded(5.0, 0.1, 3600)
    webhook_retry_for_s: float = _bounded(86_400.0, 600, 30 * 86_400)  # at least 10 minutes
    webhook_senders: int = _bounded(4, 1, 64)  # deliveries at once, at most one per tenant (a slow receiver holds one)
    # Cameras (app/broker/cameras.py, app/worker/cameras.py): the private addresses a camera URL may name
    # (addresses, networks, host names; public addresses need no listing), cameras per tenant, how long a
    # connection or a read may wait, the longest wait between retries of a camera that dropped (it doubles
    # from 1 s), how long event snapshots are kept, and the MQTT broker events go to (mqtt://host:port; empty:
    # none) under a topic prefix, with Home Assistant's discovery messages (under homeassistant/).
    camera_allow: str = ""
    max_cameras: int = _bounded(16, 0, 10_000)
    camera_timeout_s: float = _bounded(10.0, 0.5, 120)
    camera_retry_max_s: float = _bounded(60.0, 1.0, 3600)
    event_retention_days: float = _bounded(30.0, 0.0, 3650)
    mqtt_url: str = ""
    mqtt_prefix: str = "facial-recognition"
    mqtt_discovery: bool = True
    warm_up: bool = True              # workers and web processes load dlib's models, the embedder and Keras at
                                      # start (in the background)
    cache_max_bytes: int = _bounded(1024**3, 0)  # feature cache bound per host, least recently used out first

    # Who may do what (app/shared/api_keys.py): API keys, roles, tenants, quotas, browsers.
    auth: bool = True                 # 0 only on a loopback address: every route but /is_alive needs an API key
    admin_key: str = field(default="", repr=False)  # an admin key given by the operator (else var/admin.key)
    cors_origins: str = ""            # comma-separated origins whose pages may call the API (state-changing too)
    max_active_builds: int = _bounded(4, 1, 10_000)  # unfinished builds per tenant (429 beyond)
    # photos and models a tenant may store (507 beyond; 0: no cap): 10 GiB, twenty uploads of the largest size
    tenant_max_bytes: int = _bounded(10 * 1024**3, 0)
    rate_limit_per_min: int = _bounded(600, 0)       # requests per minute per key (429 beyond; 0: no limit)
    # failed key checks a minute per key id and per client address before 429 (0: no limit): a wrong secret for
    # a known key id costs an scrypt check (~50 ms, 16 MiB), which nobody may spend without bound
    auth_failures_per_min: int = _bounded(20, 0)
    tls_cert: str = ""                # HTTPS through uWSGI's own https socket: certificate ...
    tls_key: str = field(default="", repr=False)     # ... and its private key (PEM files)

    log_level: str = "INFO"
    log_rotation: str = "20 MB"
    log_retention: int = _bounded(5, 0, 10_000)

    def __post_init__(self):
        if self.quality_policy not in QUALITY_POLICIES:
            raise ValueError(f"FR_QUALITY_POLICY must be one of {', '.join(QUALITY_POLICIES)}, "
                             f"got {self.quality_policy!r}")
        if self.embedder not in EMBEDDERS:
            raise SettingsError(f"FR_EMBEDDER must be one of {', '.join(EMBEDDERS)}, got {str(self.embedder)[:40]!r}")
        if self.detector not in DETECTORS:
            raise SettingsError(f"FR_DETECTOR must be one of {', '.join(DETECTORS)}, got {str(self.detector)[:40]!r}")

    @classmethod
    def from_env(cls, environ: dict | None = None, **overrides) -> Settings:
        """Settings from `FR_*` variables (of `environ`, default os.environ), then `overrides`.

        Raises SettingsError naming the first variable whose value is unusable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = "FR_" + f.name.upper()
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                values[f.name] = f.default
            elif f.name == "data_dir":
                values[f.name] = Path(raw)
            else:
                values[f.name] = _parse(name, raw, type(f.default), f.metadata.get("low"), f.metadata.get("high"))
        for key, value in overrides.items():
            if value is None:
                continue
            known = {f.name: f for f in fields(cls)}
            if key not in known:
                raise TypeError(f"unknown setting {key!r}")
            meta = known[key].metadata
            if meta and isinstance(value, (int, float)):
                _check_range(key, value, meta.get("low"), meta.get("high"))
            values[key] = value
        values["data_dir"] = Path(values["data_dir"]).resolve()
        _check_together(values)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """Every setting as the `FR_*` variable `from_env` reads, so that `from_env(environ=s.to_env()) == s`.
        How `serve` hands its whole Settings, command-line flags included, to each child it starts."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                text = "1" if value else "0"
            elif isinstance(value, float):
                text = repr(value)  # the shortest text that reads back as the same float
            else:
                text = str(value)
            env["FR_" + f.name.upper()] = text
        return env

    @property
    def option_limits(self) -> dict[str, tuple]:
        """A build's numeric options: name -> (low, high, type). The HTTP form and the broker check these."""
        return {"seed": (0, MAX_SEED, int),
                "population": (4, self.search_max_population, int),
                "generations": (1, self.search_max_generations, int),
                "time_budget": (1.0, self.search_max_budget_s, float)}

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
    def models_dir(self) -> Path:
        """Models made from the shipped ones (dlib's ResNet converted for TensorFlow), per host."""
        return self.var_dir / "models"

    @property
    def front_cache_dir(self) -> Path:
        """Bundles a front fetched from the broker, named by model id and sha256 (app/web/bundles.py)."""
        return self.var_dir / "front-cache"

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "logs"

    @property
    def run_dir(self) -> Path:
        """Sockets of the service's own processes (owner-only). A data dir whose path is too long for a
        unix socket's name (107 bytes) gets a private folder in the system's temp dir instead."""
        run = self.var_dir / "run"
        if len(str(run / "broker.ipc").encode()) <= 100:
            return run
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"fr-{os.getuid()}-{digest}"

    @property
    def keys_dir(self) -> Path:
        """CURVE key pairs and the allowed public keys (see app/wire/curve.py)."""
        return self.var_dir / "keys"

    @property
    def auth_db_path(self) -> Path:
        """API keys (hashed) live apart from the jobs: every web process and `run.py keys` write them."""
        return self.var_dir / "auth.sqlite"

    @property
    def unknown_db_path(self) -> Path:
        """Unknown faces the models keep (app/broker/unknown.py): the broker alone writes it."""
        return self.var_dir / "unknown.sqlite"

    @property
    def admin_key_path(self) -> Path:
        return self.var_dir / "admin.key"

    @property
    def audit_log_path(self) -> Path:
        return self.log_dir / "audit.log"

    @property
    def allowed_origins(self) -> frozenset[str]:
        return frozenset(o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip())

    @property
    def front_keys_dir(self) -> Path:
        return Path(self.front_keys) if self.front_keys else self.keys_dir / "local-front"

    @property
    def front_endpoint(self) -> str:
        """Where the HTTP front reaches the broker: FR_BROKER_FRONT, else an ipc socket in var/run/."""
        return self.broker_front or f"ipc://{self.run_dir / 'broker.ipc'}"

    @property
    def heartbeat_expiry_s(self) -> float:
        return self.heartbeat_s * self.heartbeat_liveness

    def ensure_dirs(self) -> None:
        """Create the state folders, readable by the service's user only (the data is biometric)."""
        for d in (self.dumps_dir, self.uploads_dir, self.cache_dir, self.log_dir, self.run_dir, self.keys_dir,
                  self.front_cache_dir, self.models_dir):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.dumps_dir, self.var_dir, self.uploads_dir, self.cache_dir, self.run_dir, self.keys_dir,
                  self.front_cache_dir, self.models_dir):
            if d.stat().st_uid != os.getuid():
                raise SettingsError(f"{d} belongs to another user: the service keeps its state to itself")
            os.chmod(d, 0o700)


def _check_together(values: dict[str, Any]) -> None:
    """The checks of settings read together (from_env): SettingsError naming the variable that is wrong."""
    if bool(values["tls_cert"]) != bool(values["tls_key"]):
        raise SettingsError("FR_TLS_CERT and FR_TLS_KEY go together: give both or neither")
    if not values["auth"] and not is_loopback(values["host"]):
        raise SettingsError(f"FR_AUTH=0 turns API keys off, which is allowed only on a loopback address; "
                            f"FR_HOST is {values['host']!r}: anyone who reaches it could read and erase "
                            "every model. Keep keys on, or serve on 127.0.0.1")
    if values["quality_policy"] not in ("keep", "skip"):
        raise SettingsError(f"FR_QUALITY_POLICY must be keep or skip, got {values['quality_policy'][:40]!r}")
    if values["embedder"] not in EMBEDDERS:
        raise SettingsError(f"FR_EMBEDDER must be one of {', '.join(EMBEDDERS)}, got {values['embedder'][:40]!r}")
    if values["detector"] not in DETECTORS:
        raise SettingsError(f"FR_DETECTOR must be one of {', '.join(DETECTORS)}, got {values['detector'][:40]!r}")
    if values["log_level"].upper() not in ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"):
        raise SettingsError(f"FR_LOG_LEVEL must be a loguru level (DEBUG, INFO, WARNING, ...), "
                            f"got {values['log_level'][:40]!r}")
    if values["search_max_population"] < values["search_population"] or \
            values["search_max_generations"] < values["search_generations"] or \
            values["search_max_budget_s"] < values["search_budget_s"]:
        raise SettingsError("FR_SEARCH_POPULATION, FR_SEARCH_GENERATIONS and FR_SEARCH_BUDGET_S must not "
                            "exceed their FR_SEARCH_MAX_* limits")
    if values["admin_key"] and len(values["admin_key"]) < MIN_ADMIN_KEY_LENGTH:
        raise SettingsError(f"FR_ADMIN_KEY must be at least {MIN_ADMIN_KEY_LENGTH} characters (it has "
                            f"{len(values['admin_key'])}): it opens every tenant's models; make one with "
                            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    webhook_allow_entries(values["webhook_allow"])  # SettingsError for an entry that is no host or address
    try:
        webhook_allow_entries(values["camera_allow"])
    except SettingsError as exc:
        raise SettingsError(str(exc).replace("FR_WEBHOOK_ALLOW", "FR_CAMERA_ALLOW")) from None
    if values["mqtt_url"] and not re.fullmatch(r"mqtts?://[A-Za-z0-9_.\-\[\]:]+/?", values["mqtt_url"]):
        raise SettingsError(f"FR_MQTT_URL must be mqtt://host[:port] or mqtts://host[:port], got "
                            f"{values['mqtt_url'][:80]!r}")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*", values["mqtt_prefix"]):
        raise SettingsError("FR_MQTT_PREFIX must be topic levels of letters, digits, '_' and '-' separated by '/'")
    if values["broker_front_tcp"] and not values["broker_front_tcp"].startswith("tcp://"):
        raise SettingsError("FR_BROKER_FRONT_TCP must be a tcp:// endpoint, got "
                            f"{values['broker_front_tcp'][:80]!r}")
    for key in ("broker_front", "broker_back"):
        endpoint = values[key]
        if endpoint and not endpoint.startswith(("tcp://", "ipc://")):
            raise SettingsError(f"FR_{key.upper()} must be a tcp:// or ipc:// endpoint, got {endpoint[:80]!r}")
