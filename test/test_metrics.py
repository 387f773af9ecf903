"""/metrics in one process (Flask's client, the broker in a thread): requests counted by route (never by
raw path), faces of a predict answer, and the figures read at scrape time when the broker is not there."""
from __future__ import annotations

import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.broker.store import JobStore
from app.shared import metrics
from app.web.factory import create_app
from constants import VERSION, Settings
from test.stack import BrokerThread, free_port


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings.from_env(data_dir=tmp_path_factory.mktemp("metrics"), broker_timeout_s=2.0,
                                 admin_key="metrics-test-admin-key-of-32-characters", broker_back=f"tcp://127.0.0.1:{free_port()}")
    JobStore(settings.db_path, settings.uploads_dir).close()  # an empty store: unknown ids are 404
    with BrokerThread(settings):
        client = create_app(settings).test_client()
        client.environ_base["HTTP_X_API_KEY"] = settings.admin_key  # /metrics is for admin keys
        yield client


def samples(client) -> dict:
    r = client.get("/metrics")
    assert r.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(r.get_data(as_text=True)) for s in f.samples}


def test_requests_are_counted_by_route_template_and_status(client):
    before = samples(client)
    for n in range(3):
        client.get(f"/models/00000000-0000-4000-8000-00000000000{n}/report")
    client.get("/static/console.css")
    client.get("/no/such/thing")
    after = samples(client)
    key = ("fr_http_requests_total", (("method", "GET"), ("route", "/models/<job_id>/report"), ("status", "404")))
    assert after[key] - before.get(key, 0) == 3
    assert not any("00000000" in str(labels) for _, labels in after)  # ids are not labels
    unmatched = ("fr_http_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))
    assert after[unmatched] - before.get(unmatched, 0) == 1
    count = ("fr_http_request_duration_seconds_count", (("method", "GET"), ("route", "/models/<job_id>/report")))
    assert after[count] - before.get(count, 0) == 3


def test_the_broker_s_figures_are_read_at_scrape_time(client):
    s = samples(client)
    assert s[("fr_broker_up", ())] == 1 and s[("fr_workers_connected", ())] == 0
    assert s[("fr_store_up", ())] == 1 and s[("fr_builds", (("state", "done"),))] == 0


def test_without_a_broker_the_scrape_still_answers_and_says_so(tmp_path):
    """The store is the broker's (fronts run on any host): without the broker, neither is up."""
    from app.wire import curve as keys
    settings = Settings.from_env(data_dir=tmp_path, broker_front="tcp://127.0.0.1:9", broker_timeout_s=0.2,
                                 admin_key="metrics-test-admin-key-of-32-characters")
    keys.prepare_broker_keys(settings.keys_dir)
    client = create_app(settings).test_client()
    client.environ_base["HTTP_X_API_KEY"] = settings.admin_key
    s = samples(client)
    assert s[("fr_broker_up", ())] == 0 and ("fr_workers_connected", ()) not in s
    assert s[("fr_store_up", ())] == 0 and ("fr_builds", (("state", "done"),)) not in s
    assert s[("fr_info", (("version", VERSION),))] == 1


def test_faces_are_counted_from_answers_single_or_batched():
    assert metrics.count_faces({"faces": [{"known": True}, {"known": False}, {"known": True}]}) == (2, 1)
    assert metrics.count_faces({"results": [{"faces": [{"known": True}]}, {"error": {}}, {"faces": []}]}) == (1, 0)
    assert metrics.count_faces({"count": 0, "faces": []}) == (0, 0)
    assert metrics.count_faces(None) == (0, 0) and metrics.count_faces({"faces": "x"}) == (0, 0)


def test_serve_empties_the_folder_and_names_it_to_its_children(tmp_path, monkeypatch):
    settings = Settings.from_env(data_dir=tmp_path)
    stale = metrics.folder(settings)
    stale.mkdir(parents=True)
    (stale / "counter_123.db").write_bytes(b"old run")
    monkeypatch.setenv(metrics.ENV, "before")  # restored (removed) when the test ends
    path = metrics.reset(settings)
    assert path == stale and list(path.iterdir()) == [] and (path.stat().st_mode & 0o777) == 0o700
    assert os.environ[metrics.ENV] == str(path)


RECORD = """
import os, sys
sys.path.insert(0, {root!r})
from app.shared import metrics
if sys.argv[1] == "full":
    def no_room(*args):
        raise OSError(28, "No space left on device")
    os.posix_fallocate = no_room
if sys.argv[1] == "threads":  # 16 request threads meet the first use at once, the files slow to make
    import threading, time
    real, barrier = os.posix_fallocate, threading.Barrier(16)
    def slow(*args):
        time.sleep(0.05)
        return real(*args)
    os.posix_fallocate = slow
    def one():
        barrier.wait()
        metrics.request_done("/models/<job_id>", "GET", 200, 0.1)
    threads = [threading.Thread(target=one) for _ in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
else:
    metrics.request_done("/models/<job_id>", "GET", 200, 0.1)
metrics.task_done("extract", "done", 1.0)
print(os.getpid())
"""


def record_in_a_process(folder, mode: str) -> int:
    import subprocess
    import sys
    from pathlib import Path
    root = str(Path(__file__).resolve().parent.parent)
    r = subprocess.run([sys.executable, "-c", RECORD.format(root=root), mode], capture_output=True, text=True,
                       env={**os.environ, metrics.ENV: str(folder)}, timeout=60)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


def test_each_process_s_files_are_allocated_before_use_so_a_full_disk_cannot_kill_it(tmp_path):
    """A sparse mapped file written on a full disk is SIGBUS: the files are made whole first."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector
    pid = record_in_a_process(tmp_path, "room")
    for kind in metrics.FILE_KINDS:
        f = tmp_path / f"{kind}_{pid}.db"
        assert f.stat().st_size == metrics.PREALLOCATED
        assert f.stat().st_blocks * 512 >= metrics.PREALLOCATED  # allocated, not sparse
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(tmp_path))
    assert registry.get_sample_value("fr_http_requests_total", {"route": "/models/<job_id>", "method": "GET",
                                                                "status": "200"}) == 1
    assert registry.get_sample_value("fr_task_duration_seconds_count", {"kind": "extract", "outcome": "done"}) == 1


def test_a_process_without_room_for_its_files_counts_nothing_and_goes_on(tmp_path):
    record_in_a_process(tmp_path, "full")
    assert list(tmp_path.iterdir()) == []


def test_threads_that_count_first_at_once_all_reach_the_files(tmp_path):
    """A web process's threads meeting the metrics' first use at once: every request is counted (unlocked,
    one thread's failed O_EXCL removed the files and turned the whole process's metrics off)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector
    record_in_a_process(tmp_path, "threads")
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(tmp_path))
    assert registry.get_sample_value("fr_http_requests_total", {"route": "/models/<job_id>", "method": "GET",
                                                                "status": "200"}) == 16
