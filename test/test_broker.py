"""The broker's queue and recovery rules, driven over real ZeroMQ sockets by protocol-speaking peers."""
from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
import zmq

from app import protocol as p
from app.broker import Broker
from app.web import create_app
from constants import Settings
from test.stack import free_port_pair


@pytest.fixture
def settings(tmp_path):
    port = free_port_pair()
    return Settings.from_env(data_dir=tmp_path, broker_front=f"tcp://127.0.0.1:{port}",
                             broker_back=f"tcp://127.0.0.1:{port + 1}", heartbeat_s=0.2,
                             heartbeat_liveness=3, max_attempts=2, broker_timeout_s=2.0, chunk_photos=2)


@pytest.fixture
def broker(settings):
    b = Broker(settings, zmq.Context())
    t = threading.Thread(target=b.run, daemon=True)
    t.start()
    yield b
    b.running = False
    t.join(5)
    b.close()


class FakeWorker:
    """A DEALER that speaks the worker protocol but does only what the test says."""

    def __init__(self, endpoint: str):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, f"fake:{uuid.uuid4().hex[:6]}".encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, command: bytes, header: dict | None = None, blobs=()):
        self.sock.send_multipart(p.pack(command, header, list(blobs)))

    def recv_job(self, timeout: float = 5.0):
        """Wait for a JOB, heartbeating meanwhile like a live worker."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.send(p.HEARTBEAT, {})
            if self.sock.poll(100):
                command, header, blobs = p.unpack(self.sock.recv_multipart())
                if command == p.JOB:
                    return header, blobs
        return None

    def close(self):
        self.sock.close(0)


def submit(settings, n_people=2) -> str:
    job_id = str(uuid.uuid4())
    files = [{"label": f"p{i}", "filename": f"p{i}/a.jpg"} for i in range(n_people)]
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(settings.broker_front)
    sock.send_multipart(p.pack(p.SUBMIT, {"id": job_id, "files": files, "options": {}},
                               [b"photo%d" % i for i in range(n_people)]))
    assert sock.poll(5000)
    command, header, _ = p.unpack(sock.recv_multipart())
    sock.close(0)
    assert command == p.OK, header
    return job_id


def wait_for(cond, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_job_is_durable_then_split_into_extract_tasks_then_one_train_task(broker, settings):
    job_id = submit(settings, n_people=5)  # chunk_photos = 2 -> chunks of 2, 2, 1
    assert (settings.uploads_dir / job_id / "index.json").exists()
    w = FakeWorker(settings.broker_back)
    w.send(p.READY)
    for chunk, labels in enumerate((["p0", "p1"], ["p2", "p3"], ["p4"])):
        header, blobs = w.recv_job()
        assert header["task"] == {"job": job_id, "kind": "extract", "chunk": chunk, "attempt": 1, "genome": ""}
        assert [f["label"] for f in header["files"]] == labels
        assert blobs == [f"photo{label[1]}".encode() for label in labels]
        w.send(p.DONE, {"task": header["task"]}, [json.dumps([{"chunk": chunk}] * len(labels)).encode()])
    header, blobs = w.recv_job()
    assert header["task"]["kind"] == "train" and len(header["files"]) == 5
    assert [f["chunk"] for f in json.loads(blobs[0])] == [0, 0, 1, 1, 2]  # features in photo order
    assert broker.store.get(job_id)["state"] == "training"
    w.send(p.PROGRESS, {"job": job_id, "state": "training", "stage": "training", "done": 3, "total": 200})
    assert wait_for(lambda: broker.store.get(job_id)["done"] == 3)
    w.send(p.FAILED, {"task": header["task"], "code": "NO_FACE_FOUND", "message": "none"})
    assert wait_for(lambda: broker.store.get(job_id)["state"] == "failed")
    assert broker.store.get(job_id)["error_code"] == "NO_FACE_FOUND"
    w.close()


def test_silent_worker_loses_its_job_to_another_then_the_job_gives_up(broker, settings):
    job_id = submit(settings)
    first = FakeWorker(settings.broker_back)
    first.send(p.READY)
    assert first.recv_job()[0]["task"]["job"] == job_id
    first.close()  # dies without a word: no DONE, no heartbeats

    second = FakeWorker(settings.broker_back)
    second.send(p.READY)
    header, _ = second.recv_job(timeout=5)  # after ~0.6 s of silence the task moves
    assert header["task"] == {"job": job_id, "kind": "extract", "chunk": 0, "attempt": 2, "genome": ""}
    second.close()  # dies too: max_attempts = 2 -> the job fails for good
    assert wait_for(lambda: broker.store.get(job_id)["state"] == "failed", timeout=5)
    assert broker.store.get(job_id)["error_code"] == "WORKER_LOST"


def test_heartbeat_sent_before_a_job_arrives_does_not_free_the_worker(broker, settings):
    w = FakeWorker(settings.broker_back)
    w.send(p.READY)
    assert wait_for(lambda: broker.status()["workers"] == 1)
    a, _b = submit(settings), submit(settings)
    assert w.recv_job()[0]["task"]["job"] == a
    w.send(p.HEARTBEAT, {})  # a heartbeat without a job
    time.sleep(0.3)
    assert w.recv_job(timeout=0.5) is None, "a busy worker must not get a second job"
    assert broker.status() == {"workers": 1, "busy": 1, "idle": 0, "warming": 0, "queued": 1, "tasks_queued": 1,
                               "searches": 0}
    w.close()


def test_a_warming_worker_is_counted_and_still_gets_tasks(broker, settings):
    w = FakeWorker(settings.broker_back)
    w.send(p.READY)
    w.send(p.HEARTBEAT, {"warming": True})
    assert wait_for(lambda: broker.status()["warming"] == 1)
    job_id = submit(settings)
    deadline = time.time() + 5
    header = None
    while header is None and time.time() < deadline:  # no heartbeat meanwhile: it stays warming
        if w.sock.poll(100):
            command, h, _ = p.unpack(w.sock.recv_multipart())
            header = h if command == p.JOB else None
    assert header and header["task"]["job"] == job_id
    assert broker.status()["warming"] == 1
    w.send(p.HEARTBEAT, {"task": header["task"]})  # warmed up
    assert wait_for(lambda: broker.status()["warming"] == 0)
    w.close()


def test_restarted_broker_queues_only_the_missing_work(settings):
    b1 = Broker(settings, zmq.Context())
    files = [{"label": f"p{i}", "filename": f"p{i}/1.jpg"} for i in range(5)]
    job_id = b1.submit({"id": str(uuid.uuid4()), "files": files}, [b"x"] * 5)["id"]
    b1.store.save_chunk(job_id, 1, b"[{}, {}]")  # chunk 1 was extracted before the stop
    b1.store.assign(job_id, "gone:1:x", 1)
    b1.store.progress(job_id, "extracting", "extracting", 2, 5)
    b1.close()
    b2 = Broker(settings, zmq.Context())
    try:
        assert [(t.kind, t.chunk) for t in b2.queue] == [("extract", 0), ("extract", 2)]
        assert b2.store.get(job_id)["worker"] is None
    finally:
        b2.close()


def test_is_alive_503_without_workers_and_without_broker(broker, settings, tmp_path):
    client = create_app(settings).test_client()
    r = client.get("/is_alive")
    assert r.status_code == 503 and r.json["alive"] is False and r.json["error"]["code"] == "NO_WORKERS"

    dead = Settings.from_env(data_dir=tmp_path / "x", broker_front="tcp://127.0.0.1:9", broker_timeout_s=0.5)
    client = create_app(dead).test_client()
    r = client.get("/is_alive")
    assert r.status_code == 503 and r.json["error"]["code"] == "BROKER_UNAVAILABLE"


def test_one_task_per_worker_at_a_time_and_a_rejected_task_is_not_lost(broker, settings):
    w = FakeWorker(settings.broker_back)
    w.send(p.READY)
    submit(settings, n_people=6)  # 3 chunks
    first, _ = w.recv_job()
    assert w.recv_job(timeout=0.5) is None, "no second task before DONE"
    w.send(p.DONE, {"task": first["task"]}, [b"[{}, {}]"])
    second, _ = w.recv_job()
    assert second["task"]["chunk"] == 1
    # pretend the worker was still busy with chunk 1 when chunk 2 came: it hands chunk 2 back
    w.send(p.DONE, {"task": second["task"]}, [b"[{}, {}]"])
    third, _ = w.recv_job()
    w.send(p.REJECT, {"task": third["task"], "busy_with": second["task"]})
    assert wait_for(lambda: [t.chunk for t in broker.queue] == [2])
    w.send(p.DONE, {"task": second["task"]}, [b"[{}, {}]"])  # busy_with is done: ready again
    again, _ = w.recv_job()
    assert again["task"] == third["task"]
    w.close()


def test_a_starting_broker_sweeps_upload_folders_a_stop_left_behind(settings):
    b1 = Broker(settings, zmq.Context())
    files = [{"label": f"p{i}", "filename": f"p{i}/1.jpg"} for i in range(2)]
    done = b1.submit({"id": str(uuid.uuid4()), "files": files}, [b"x"] * 2)["id"]
    running = b1.submit({"id": str(uuid.uuid4()), "files": files}, [b"x"] * 2)["id"]
    b1.store.finish(done)  # stopped before its uploads were erased
    b1.close()
    uploads = settings.uploads_dir
    (uploads / ".half-written.tmp").mkdir()             # stopped mid-save, before the job existed
    (uploads / str(uuid.uuid4())).mkdir()               # a job deleted from the store
    b2 = Broker(settings, zmq.Context())
    try:
        assert sorted(d.name for d in uploads.iterdir()) == [running]  # the unfinished job keeps its photos
        assert [t.job for t in b2.queue] == [running]
    finally:
        b2.close()
