"""Prometheus metrics at `/metrics`, in prometheus_client's multiprocess mode.

uWSGI serves HTTP from several processes and the broker is another one: each writes its counters and
histograms to files in one folder (`<data dir>/var/metrics/`, `PROMETHEUS_MULTIPROC_DIR`), and a scrape
of any web process adds them all up. `run.py serve` empties the folder when it starts, before its
children, so a run's counters start at zero (Prometheus' `rate()` takes the reset in its stride).

prometheus_client decides between one process and many when it is first imported, from that
environment variable: it is imported here, lazily, only once the folder is known (`join`, or the
variable inherited from `serve`).

Counted where they happen:
- web processes: requests by route, method and status with their latency (hooks on the app), faces
  identified (answers of predict), the loaded-model cache (app/web/recognizers.py);
- the broker: each task's duration by kind and outcome, the feature cache's hits (app/broker/loop.py).
Read at scrape time, not counted: builds by state (the job store), queue depth, workers connected,
busy and warming, free disk (the broker's STATUS).
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from constants import Settings

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "fr_"
UNMATCHED = "unmatched"  # the route label of a request no route took (404, 405): paths are not labels
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TASK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

# prometheus_client keeps each process's values in files it maps into memory. A page of a sparse
# mapped file that is first written when the disk is full kills the process (SIGBUS), so each file is
# made here first, with its blocks allocated: 1 MiB holds some ten times the label sets this service
# can make (routes x methods x statuses, and the histograms' buckets), so it never has to grow.
PREALLOCATED = 1 << 20
FILE_KINDS = ("counter", "histogram")  # the kinds of metric this module makes (no multiprocess gauges)

_metrics: SimpleNamespace | None = None
_disabled = False  # this process could not allocate its files: it counts nothing rather than crash
# A web process's 16 threads meet `_m` at once on its first requests: unlocked, two made the files together,
# the second's O_EXCL failed, it removed the file and disabled the metrics of the whole process (seen as a
# web process whose requests never reached /metrics).
_init_lock = threading.Lock()


def folder(settings: Settings) -> Path:
    return settings.var_dir / "metrics"


def reset(settings: Settings) -> Path:
    """`serve`, before it starts its children: an empty folder for this run, named to them (and to this
    process) through the environment they inherit."""
    path = folder(settings)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700, parents=True)
    os.environ[ENV] = str(path)
    return path


def join(settings: Settings) -> None:
    """A web process under uWSGI started without `serve` (`uwsgi --ini app.ini`): the processes still
    share one folder (not emptied: only `serve` knows that a run starts)."""
    if ENV in os.environ or _metrics is not None:
        return
    try:
        import uwsgi  # noqa: F401
    except ImportError:
        return  # one process (tests with Flask's client, `flask run`): counters in memory
    folder(settings).mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ[ENV] = str(folder(settings))


def multiprocess() -> bool:
    return ENV in os.environ


def preallocate(path: Path, pid: int) -> bool:
    """This process's value files, made with their blocks allocated (see PREALLOCATED). -> False when
    there is no room (then nothing of them is left behind)."""
    for kind in FILE_KINDS:
        target = path / f"{kind}_{pid}.db"
        if target.exists():  # made earlier by this process (or by one with its pid in this run)
            continue
        try:
            fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.posix_fallocate(fd, 0, PREALLOCATED)
            finally:
                os.close(fd)
        except OSError as exc:
            target.unlink(missing_ok=True)
            from logger import logger
            logger.error("metrics: no room for this process's metric files in {} ({}); it counts nothing", path, exc)
            return False
    return True


def _m() -> SimpleNamespace | None:
    """The metric objects, made on first use (after the mode is known); None if this process cannot
    keep them."""
    if _metrics is not None or _disabled:
        return _metrics
    with _init_lock:
        return _make()


def _make() -> SimpleNamespace | None:
    """`_m`'s first call, under its lock."""
    global _metrics, _disabled
    if _disabled:
        return None
    if _metrics is None:
        if multiprocess() and not preallocate(Path(os.environ[ENV]), os.getpid()):
            _disabled = True
            return None
        from prometheus_client import CollectorRegistry, Counter, Histogram
        registry = None if multiprocess() else CollectorRegistry()  # multiprocess: the files are the registry
        _metrics = SimpleNamespace(
            registry=registry,
            requests=Counter(PREFIX + "http_requests", "HTTP requests answered, by route, method and status",
                             ["route", "method", "status"], registry=registry),
            latency=Histogram(PREFIX + "http_request_duration_seconds",
                              "time from a request reaching the app to its answer, by route and method",
                              ["route", "method"], buckets=LATENCY_BUCKETS, registry=registry),
            faces=Counter(PREFIX + "faces_predicted", "faces identified by predict, known or unknown",
                          ["known"], registry=registry),
            model_cache=Counter(PREFIX + "model_cache", "loaded-model cache of the web processes: answered "
                                "from memory (hit) or read from disk (load)", ["result"], registry=registry),
            tasks=Histogram(PREFIX + "task_duration_seconds", "tasks from the broker handing them out to their "
                            "result, by kind and outcome", ["kind", "outcome"], buckets=TASK_BUCKETS,
                            registry=registry),
            feature_cache=Counter(PREFIX + "feature_cache", "photos whose features a worker took from its cache "
                                  "(hit) or computed (miss)", ["result"], registry=registry),
        )
    return _metrics


# --- what the processes count -------------------------------------------------------------------
def request_done(route: str, method: str, status: int, seconds: float) -> None:
    if m := _m():
        m.requests.labels(route, method, str(status)).inc()
        m.latency.labels(route, method).observe(seconds)


def faces_predicted(known: int, unknown: int) -> None:
    if m := _m():
        if known:
            m.faces.labels("true").inc(known)
        if unknown:
            m.faces.labels("false").inc(unknown)


def model_cache(result: str) -> None:
    if m := _m():
        m.model_cache.labels(result).inc()


def task_done(kind: str, outcome: str, seconds: float) -> None:
    if m := _m():
        m.tasks.labels(kind, outcome).observe(max(0.0, seconds))


def feature_cache(hits: int, misses: int) -> None:
    if m := _m():
        if hits:
            m.feature_cache.labels("hit").inc(hits)
        if misses:
            m.feature_cache.labels("miss").inc(misses)


# --- the web side: hooks and the scrape ----------------------------------------------------------
class Clock:
    """WSGI middleware: when a request reached the app (whichever `before_request` runs or raises first)."""

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        environ["fr.started"] = time.perf_counter()
        return self.app(environ, start_response)


def count_faces(body: Any) -> tuple[int, int]:
    """(known, unknown) faces in a predict answer: `faces` at the top, or in each entry of a batch."""
    if not isinstance(body, dict):
        return 0, 0
    batch = body.get("results")
    entries = [body] + ([e for e in batch if isinstance(e, dict)] if isinstance(batch, list) else [])
    faces = [f for e in entries if isinstance(e.get("faces"), list) for f in e["faces"] if isinstance(f, dict)]
    known = sum(1 for f in faces if f.get("known") is True)
    return known, len(faces) - known


class Live:
    """The figures read at scrape time: the job store's builds by state, the broker's STATUS."""

    def __init__(self, settings: Settings, status: Callable[[], dict]):
        self.settings, self.status = settings, status

    def collect(self) -> Iterator:
        from prometheus_client.core import GaugeMetricFamily

        from constants import VERSION
        info = GaugeMetricFamily(PREFIX + "info", "the service's version", labels=["version"])
        info.add_metric([VERSION], 1)
        yield info
        builds = GaugeMetricFamily(PREFIX + "builds", "models in the job store, by state", labels=["state"])
        store_up = GaugeMetricFamily(PREFIX + "store_up", "1 when the job store could be read")
        broker_up = GaugeMetricFamily(PREFIX + "broker_up", "1 when the broker answered STATUS")
        try:  # the store is the broker's: its STATUS says how many builds are in each state
            st = self.status()
        except Exception:
            broker_up.add_metric([], 0)
            store_up.add_metric([], 0)
            yield store_up
            yield broker_up
            return
        if st.get("store", {}).get("ok") and isinstance(st.get("builds"), dict):
            store_up.add_metric([], 1)
            for state, n in st["builds"].items():
                builds.add_metric([state], n)
            yield builds
        else:  # a missing or locked store is what store_up says; the scrape still answers
            store_up.add_metric([], 0)
        yield store_up
        broker_up.add_metric([], 1)
        yield broker_up
        for name, value, text in (
                ("workers_connected", st.get("workers", 0), "workers connected to the broker"),
                ("workers_busy", st.get("busy", 0), "workers running a task"),
                ("workers_warming", st.get("warming", 0), "workers still loading their models"),
                ("queue_jobs", st.get("queued", 0), "jobs with tasks waiting for a worker"),
                ("queue_tasks", st.get("tasks_queued", 0), "tasks waiting for a worker"),
                ("searches_running", st.get("searches", 0), "genetic searches under way"),
                ("disk_free_bytes", st.get("disk_free_bytes", 0), "free space on the data disk"),
                ("disk_full", 1 if st.get("disk_full") else 0, "1 while a full disk holds builds back")):
            yield GaugeMetricFamily(PREFIX + name, text, value=float(value))


class _Scrape:
    def __init__(self, *collectors):
        self.collectors = collectors

    def collect(self) -> Iterator:
        for c in self.collectors:
            yield from c.collect()


def exposition(live: Live) -> tuple[bytes, str]:
    """The text of a scrape and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    m = _m()
    if multiprocess() or m is None:
        from prometheus_client import multiprocess as mp
        files = CollectorRegistry()
        mp.MultiProcessCollector(files, os.environ[ENV])
        counted: Any = files
    else:
        counted = m.registry
    return generate_latest(_Scrape(counted, live)), CONTENT_TYPE_LATEST
