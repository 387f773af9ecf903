"""The broker's queue, recovery and trust rules, driven over real ZeroMQ sockets (CURVE) by
protocol-speaking peers: well-behaved ones, and ones that lie, forge or send garbage."""
from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
import uuid

import pytest
import zmq
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from app.broker.loop import Broker
from app.web.factory import create_app
from app.wire import curve as keys
from app.wire import protocol as p
from constants import Settings
from test.stack import BrokerThread, free_port
from test.waits import never_within, wait_until


@pytest.fixture
def settings(tmp_path):
    return Settings.from_env(data_dir=tmp_path / "data", broker_back=f"tcp://127.0.0.1:{free_port()}",
                             heartbeat_s=0.2, heartbeat_liveness=3, max_attempts=2, broker_timeout_s=2.0,
                             chunk_photos=2)


@pytest.fixture
def broker(settings):
    with BrokerThread(settings) as b:
        yield b


def features(n: int, tag: float = 0.0) -> bytes:
    """A worker's DONE payload for n photos (valid shape, made-up numbers)."""
    one = {"faces": 1, "box": [0, 0, 10, 10], "embedding": [tag] * 128, "skipped": None, "detail": None,
           "others": None, "cached": False, "key": None, "seconds": 0.01}
    return json.dumps([one] * n).encode()


class FakeWorker:
    """A DEALER that speaks the worker protocol but does only what the test says.
    `folder`/`role`: its CURVE pair (default: the service's own local worker keys); `curve=False`: none."""

    def __init__(self, settings: Settings, folder=None, curve: bool = True, identity: bytes | None = None):
        ctx = zmq.Context.instance()
        if curve:
            self.sock = keys.client_socket(ctx, zmq.DEALER, folder or settings.keys_dir / "local-worker", "worker")
        else:
            self.sock = ctx.socket(zmq.DEALER)
        self.identity = identity or f"fake:{uuid.uuid4().hex[:6]}".encode()
        self.sock.setsockopt(zmq.IDENTITY, self.identity)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(settings.broker_back)

    def send(self, command: bytes, header: dict | None = None, blobs=()):
        self.send_raw(p.pack(command, header, list(blobs)))

    def send_raw(self, frames: list[bytes]):
        try:  # a peer the broker refused has no pipe: its messages would queue up to the HWM and block
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def recv(self, timeout: float = 5.0, want: bytes = p.JOB):
        """Wait for a `want` message, heartbeating meanwhile like a live worker."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.send(p.HEARTBEAT, {})
            if self.sock.poll(100):
                command, header, blobs = p.unpack(self.sock.recv_multipart())
                if command == want:
                    return header, blobs
        return None

    def recv_job(self, timeout: float = 5.0):
        return self.recv(timeout, p.JOB)

    def barrier(self, broker: Broker) -> None:
        """Until `broker` has handled every message this worker sent before: it handles one peer's messages
        in order, and a heartbeat marked warming (then one not) shows in its record of the worker."""
        for warming in (True, False):
            self.send(p.HEARTBEAT, {"warming": warming})
            wait_until(lambda w=warming: (rec := broker.pool.workers.get(self.identity)) is not None
                       and rec.warming is w, 30, interval=0.01)

    def close(self):
        self.sock.close(0)


def front_call(settings: Settings, frames: list[bytes], timeout: float = 5.0):
    """One request on the front socket, as the service's own HTTP front (its CURVE keys)."""
    sock = keys.client_socket(zmq.Context.instance(), zmq.REQ, settings.keys_dir / "local-front", "front")
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(settings.front_endpoint)
    try:
        sock.send_multipart(frames)
        assert sock.poll(int(timeout * 1000)), "the broker did not answer"
        return p.unpack(sock.recv_multipart())
    finally:
        sock.close(0)


def submit(settings, n_people=2, **header) -> str:
    job_id = str(uuid.uuid4())
    files = [{"label": f"p{i}", "filename": f"p{i}/a.jpg"} for i in range(n_people)]
    command, answer, _ = front_call(settings, p.pack(p.SUBMIT, {"id": job_id, "files": files, "options": {},
                                                                **header},
                                                     [b"photo%d" % i for i in range(n_people)]))
    assert command == p.OK, answer
    return job_id


def wait_for(cond, timeout=30.0):
    """True once `cond()` is (AssertionError if it never is within `timeout`)."""
    return bool(wait_until(cond, timeout, interval=0.02))


# --- the queue and recovery ---------------------------------------------------------------------
def test_job_is_durable_then_split_into_extract_tasks_then_one_train_task(broker, settings):
    job_id = submit(settings, n_people=5)  # chunk_photos = 2 -> chunks of 2, 2, 1
    assert (settings.uploads_dir / job_id / "index.json").exists()
    w = FakeWorker(settings)
    w.send(p.READY)
    for chunk, labels in enumerate((["p0", "p1"], ["p2", "p3"], ["p4"])):
        header, blobs = w.recv_job()
        assert header["task"] == {"job": job_id, "kind": "extract", "chunk": chunk, "attempt": 1, "genome": ""}
        assert [f["label"] for f in header["files"]] == labels
        assert blobs == [f"photo{label[1]}".encode() for label in labels]
        w.send(p.DONE, {"task": header["task"]}, [features(len(labels), tag=chunk)])
    header, blobs = w.recv_job()
    assert header["task"]["kind"] == "train" and len(header["files"]) == 5
    assert [f["embedding"][0] for f in json.loads(blobs[0])] == [0, 0, 1, 1, 2]  # features in photo order
    assert broker.store.get(job_id).state == "training"
    w.send(p.PROGRESS, {"task": header["task"], "stage": "training", "done": 3, "total": 200})
    assert wait_for(lambda: broker.store.get(job_id).done == 3)
    w.send(p.FAILED, {"task": header["task"], "code": "NO_FACE_FOUND", "message": "none"})
    assert wait_for(lambda: broker.store.get(job_id).state == "failed")
    assert broker.store.get(job_id).error_code == "NO_FACE_FOUND"
    w.close()


def test_silent_worker_loses_its_job_to_another_then_the_job_gives_up(broker, settings):
    job_id = submit(settings)
    first = FakeWorker(settings)
    first.send(p.READY)
    assert first.recv_job()[0]["task"]["job"] == job_id
    first.close()  # dies without a word: no DONE, no heartbeats

    second = FakeWorker(settings)
    second.send(p.READY)
    header, _ = second.recv_job(timeout=5)  # after ~0.6 s of silence the task moves
    assert header["task"] == {"job": job_id, "kind": "extract", "chunk": 0, "attempt": 2, "genome": ""}
    second.close()  # dies too: max_attempts = 2 -> the job fails for good
    assert wait_for(lambda: broker.store.get(job_id).state == "failed", timeout=5)
    assert broker.store.get(job_id).error_code == "WORKER_LOST"


def test_heartbeat_sent_before_a_job_arrives_does_not_free_the_worker(broker, settings):
    w = FakeWorker(settings)
    w.send(p.READY)
    assert wait_for(lambda: broker.status()["workers"] == 1)
    a, _b = submit(settings), submit(settings)
    assert w.recv_job()[0]["task"]["job"] == a
    w.send(p.HEARTBEAT, {})  # a heartbeat without a job
    w.barrier(broker)  # handled, and whatever the broker would send for it is sent
    assert w.recv_job(timeout=0.5) is None, "a busy worker must not get a second job"
    status = broker.status()
    assert {k: status[k] for k in ("workers", "busy", "idle", "warming", "queued", "tasks_queued", "searches")} \
        == {"workers": 1, "busy": 1, "idle": 0, "warming": 0, "queued": 1, "tasks_queued": 1, "searches": 0}
    assert status["store"] == {"ok": True} and status["disk_free_bytes"] > 0
    w.close()


def test_a_warming_worker_is_counted_and_still_gets_tasks(broker, settings):
    w = FakeWorker(settings)
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


def _submit_direct(b: Broker, n: int) -> str:
    files = [{"label": f"p{i}", "filename": f"p{i}/1.jpg"} for i in range(n)]
    return b.submit({"id": str(uuid.uuid4()), "files": files}, [b"x%d" % i for i in range(n)])["id"]


def test_restarted_broker_queues_only_the_missing_work(settings):
    b1 = Broker(settings, zmq.Context())
    job_id = _submit_direct(b1, 5)
    b1.store.save_chunk(job_id, 1, features(2))  # chunk 1 was extracted before the stop
    b1.store.assign(job_id, "gone:1:x", 1)
    b1.store.progress(job_id, "extracting", "extracting", 2, 5)
    b1.close()
    b2 = Broker(settings, zmq.Context())
    try:
        assert [(t.kind, t.chunk) for t in b2.queue] == [("extract", 0), ("extract", 2)]
        assert b2.store.get(job_id).worker is None
    finally:
        b2.close()


def test_a_chunk_file_a_crash_left_unreadable_is_extracted_again(settings):
    """Chunk features are written without fsync (they can be made again): after a crash, one that is empty
    or cut short is removed and its chunk queued again, never read as features."""
    b1 = Broker(settings, zmq.Context())
    job_id = _submit_direct(b1, 5)
    b1.store.save_chunk(job_id, 0, features(2))
    b1.store.save_chunk(job_id, 1, features(2)[:50])  # cut short
    b1.store.save_chunk(job_id, 2, b"")                # empty
    b1.close()
    b2 = Broker(settings, zmq.Context())
    try:
        assert [(t.kind, t.chunk) for t in b2.queue] == [("extract", 1), ("extract", 2)]
        assert b2.store.chunk_done(job_id, 0) and not b2.store.chunk_done(job_id, 1)
    finally:
        b2.close()


def test_is_alive_503_without_workers_and_without_broker(broker, settings, tmp_path):
    client = create_app(settings).test_client()
    r = client.get("/is_alive")
    assert r.status_code == 503 and r.json["alive"] is False and r.json["error"]["code"] == "NO_WORKERS"
    assert r.json["disk_free_bytes"] > 0

    dead = Settings.from_env(data_dir=tmp_path / "x", broker_front="tcp://127.0.0.1:9", broker_timeout_s=0.5)
    keys.prepare_broker_keys(dead.keys_dir)
    client = create_app(dead).test_client()
    r = client.get("/is_alive")
    assert r.status_code == 503 and r.json["error"]["code"] == "BROKER_UNAVAILABLE"


def test_one_task_per_worker_at_a_time_and_a_rejected_task_is_not_lost(broker, settings):
    w = FakeWorker(settings)
    w.send(p.READY)
    submit(settings, n_people=6)  # 3 chunks
    first, _ = w.recv_job()
    assert w.recv_job(timeout=0.5) is None, "no second task before DONE"
    w.send(p.DONE, {"task": first["task"]}, [features(2)])
    second, _ = w.recv_job()
    assert second["task"]["chunk"] == 1
    # pretend the worker was still busy with chunk 1 when chunk 2 came: it hands chunk 2 back
    w.send(p.DONE, {"task": second["task"]}, [features(2)])
    third, _ = w.recv_job()
    w.send(p.REJECT, {"task": third["task"], "busy_with": second["task"]})
    assert wait_for(lambda: [t.chunk for t in broker.queue] == [2])
    assert wait_for(lambda: not broker.store.chunk_done(third["task"]["job"], 2))
    w.close()


def test_a_starting_broker_sweeps_what_a_stop_left_behind(settings):
    b1 = Broker(settings, zmq.Context())
    done = _submit_direct(b1, 2)
    running = _submit_direct(b1, 2)
    b1.store.progress(done, "training", "training", 0, 1)
    b1.store.finish(done)  # stopped before its uploads were erased
    b1.close()
    uploads = settings.uploads_dir
    (uploads / ".half-written.tmp").mkdir()             # stopped mid-save, before the job existed
    (uploads / str(uuid.uuid4())).mkdir()               # a job deleted from the store
    (settings.dumps_dir / str(uuid.uuid4())).mkdir()    # a model whose job was deleted while down
    (settings.dumps_dir / f".{done}.abc").mkdir()       # a bundle half-saved
    (settings.dumps_dir / done).mkdir()                 # the finished job's model stays
    b2 = Broker(settings, zmq.Context())
    try:
        assert sorted(d.name for d in uploads.iterdir()) == [running]  # the unfinished job keeps its photos
        assert [d.name for d in settings.dumps_dir.iterdir()] == [done]
        assert [t.job for t in b2.queue] == [running]
    finally:
        b2.close()


# --- trust: the front socket --------------------------------------------------------------------
def test_delete_with_a_path_for_an_id_erases_nothing(broker, settings, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    for bad in ("../../victim", str(victim), "../victim", "ABC", "", None, 42):
        command, answer, _ = front_call(settings, p.pack(p.DELETE, {"id": bad}))
        assert command == p.ERR and answer["code"] == "BAD_REQUEST", bad
    assert (victim / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("change", [
    {"id": "../../x"},
    {"options": {"optimize": True, "population": 10**9}},
    {"options": {"seed": -1}},
    {"options": {"evil": 1}},
    {"options": {"optimize": False, "population": 8}},
    {"files": [{"label": "../..", "filename": "a.jpg"}, {"label": "b", "filename": "b/1.jpg"}]},
    {"files": [{"label": "a\nb", "filename": "a.jpg"}, {"label": "b", "filename": "b/1.jpg"}]},
    {"files": [{"label": "a", "filename": "a/1.jpg"}]},  # one file for two photo frames
    {"name": "x" * 10_000},
    {"extra": 1},
])
def test_submit_is_checked_like_the_http_front_checks_it(broker, settings, change):
    files = [{"label": "a", "filename": "a/1.jpg"}, {"label": "b", "filename": "b/1.jpg"}]
    header = {"id": str(uuid.uuid4()), "files": files, "options": {}, **change}
    command, answer, _ = front_call(settings, p.pack(p.SUBMIT, header, [b"x", b"y"]))
    assert command == p.ERR and answer["code"] == "BAD_REQUEST"
    assert list(settings.uploads_dir.iterdir()) == []


def _unanswered(sock: zmq.Socket, endpoint: str) -> bool:
    """A STATUS from `sock` gets no answer (a refused peer has no pipe: its send may not even leave)."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 1000)
    sock.connect(endpoint)
    try:
        sock.send_multipart(p.pack(p.STATUS))
    except zmq.Again:
        return True
    finally:
        answered = bool(sock.poll(1000))
        sock.close(0)
    return not answered


def test_a_process_without_the_front_keys_gets_no_answer(broker, settings):
    ctx = zmq.Context.instance()
    assert _unanswered(ctx.socket(zmq.REQ), settings.front_endpoint)  # no CURVE at all
    keys.create_pair(settings.data_dir / "other", "front")  # a valid pair, never allowed
    shutil.copy(settings.keys_dir / "broker.key", settings.data_dir / "other" / "broker.key")
    assert _unanswered(keys.client_socket(ctx, zmq.REQ, settings.data_dir / "other", "front"),
                       settings.front_endpoint)
    assert front_call(settings, p.pack(p.STATUS))[0] == p.OK


def test_the_front_socket_is_owner_only(broker, settings):
    path = settings.run_dir / "broker.ipc"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(settings.run_dir.stat().st_mode & 0o777) == "0o700"


# --- trust: the back socket ---------------------------------------------------------------------
def test_a_worker_without_an_allowed_key_never_receives_a_task(broker, settings, tmp_path):
    submit(settings)
    plain = FakeWorker(settings, curve=False)
    keys.create_pair(tmp_path / "rogue", "worker")
    shutil.copy(settings.keys_dir / "broker.key", tmp_path / "rogue" / "broker.key")
    rogue = FakeWorker(settings, folder=tmp_path / "rogue")
    for w in (plain, rogue):
        w.send(p.READY)
    assert plain.recv_job(timeout=1.5) is None and rogue.recv_job(timeout=0.5) is None
    assert broker.status()["workers"] == 0
    for w in (plain, rogue):
        w.close()


def test_a_result_counts_only_from_the_worker_given_the_task(broker, settings):
    job_id = submit(settings, n_people=4)
    honest = FakeWorker(settings)
    liar = FakeWorker(settings)
    honest.send(p.READY)
    header, _ = honest.recv_job()  # extract chunk 0
    liar.send(p.READY)
    other, _ = liar.recv_job()     # extract chunk 1
    # the liar claims the train task, and then the honest worker's chunk
    liar.send(p.DONE, {"task": {"job": job_id, "kind": "train", "chunk": 0, "attempt": 1, "genome": ""}},
              [b"PK forged bundle"])
    liar.send(p.DONE, {"task": header["task"]}, [features(2)])
    liar.barrier(broker)
    assert broker.store.get(job_id).state == "extracting"
    assert not broker.store.chunk_done(job_id, 0)
    assert not (settings.dumps_dir / job_id).exists()
    # a PROGRESS cannot move the job to a state of the worker's choosing
    liar.send(p.PROGRESS, {"task": other["task"], "stage": "done", "done": 1, "total": 1})
    liar.send(p.PROGRESS, {"job": job_id, "state": "done", "stage": "done", "done": 1, "total": 1})
    liar.barrier(broker)
    assert broker.store.get(job_id).state == "extracting"
    for w in (honest, liar):
        w.close()


def test_a_bad_result_from_the_right_worker_is_refused_and_the_task_runs_again(broker, settings):
    job_id = submit(settings)
    w = FakeWorker(settings)
    w.send(p.READY)
    header, _ = w.recv_job()
    for bad in ([b"not json"], [json.dumps([{"embedding": [float("nan")] * 128}]).encode()],
                [features(5)]):  # wrong count
        w.send(p.DONE, {"task": header["task"]}, bad)
        again, _ = w.recv_job()
        assert again["task"]["job"] == job_id and again["task"]["attempt"] > header["task"]["attempt"]
        header = again
        if again["task"]["attempt"] >= settings.max_attempts:
            break
    assert not broker.store.chunk_done(job_id, 0)
    w.close()


def test_garbage_frames_never_stop_the_broker(broker, settings):
    w = FakeWorker(settings)
    w.send(p.READY)
    for frames in ([p.HEARTBEAT, b"{not json"], [p.DONE], [p.DONE, b"{}"], [p.FAILED, b"[]"],
                   [b"\xff" * 10], [p.PROGRESS, b'{"task": 1}'], [p.HEARTBEAT, b'{"warming": "yes"}'],
                   [p.READY, b"{}", b"extra"], [p.DONE, json.dumps({"task": {"kind": "train"}}).encode()]):
        w.send_raw(frames)
    w.barrier(broker)
    assert front_call(settings, p.pack(p.STATUS))[1]["workers"] == 1
    w.close()


def test_a_newline_in_a_worker_identity_cannot_forge_a_log_line(broker, settings, tmp_path):
    from logger import logger
    sink = tmp_path / "broker.log"
    handler = logger.add(sink, format="{message}")
    try:
        w = FakeWorker(settings, identity=b"evil\n2026-12-01 | INFO | forged line")
        w.send(p.READY)
        w.send_raw([p.HEARTBEAT, b"{not json"])
        assert wait_for(lambda: "dropped a message" in sink.read_text())
        w.close()
    finally:
        logger.remove(handler)
    lines = sink.read_text().splitlines()
    assert not any(line.startswith("2026-12-01 | INFO | forged") for line in lines)
    assert any("evil\\n2026" in line for line in lines)


def test_a_revoked_worker_key_is_dropped_at_its_next_message(broker, settings):
    job_id = submit(settings)
    w = FakeWorker(settings)
    w.send(p.READY)
    header, _ = w.recv_job()
    from logger import logger
    said: list[str] = []
    sink = logger.add(lambda m: said.append(m.record["message"]), format="{message}")
    try:
        (settings.keys_dir / "allowed" / "workers" / "local-worker.key").unlink()

        def refused() -> bool:  # allowed keys are re-read at most once a second: until the broker drops its messages
            w.send(p.HEARTBEAT, {"task": header["task"]})
            return any("no longer allowed" in line for line in said)
        wait_until(refused, 30, interval=0.1)
        w.send(p.DONE, {"task": header["task"]}, [features(2)])
        # nothing from that key is handled any more, so no barrier can show this DONE was read: a window
        never_within(lambda: broker.store.chunk_done(job_id, 0), 1.0)
    finally:
        logger.remove(sink)
    w.close()


def test_a_late_result_of_a_deleted_job_leaves_nothing_in_the_cache(broker, settings):
    job_id = submit(settings)
    w = FakeWorker(settings)
    w.send(p.READY)
    header, _ = w.recv_job()
    command, answer, _ = front_call(settings, p.pack(p.DELETE, {"id": job_id}))
    assert command == p.OK and answer["removed"]["job"] is True
    purge, _ = w.recv(want=p.PURGE)  # every connected worker forgets the job's photos
    assert purge["photos"] == [hashlib.sha256(b"photo%d" % i).hexdigest() for i in range(2)]
    # the worker was mid-task: it cached the photos, then delivers
    key = "ab" * 32
    (settings.cache_dir / "ab").mkdir(parents=True, exist_ok=True)
    (settings.cache_dir / "ab" / f"{key}.json").write_text("{}")
    late = json.loads(features(2))
    late[0]["key"] = key
    w.send(p.DONE, {"task": header["task"]}, [json.dumps(late).encode()])
    purge, _ = w.recv(want=p.PURGE)
    assert purge["keys"] == [key]
    assert not (settings.cache_dir / "ab" / f"{key}.json").exists()
    w.close()


# --- hypothesis: random frames at both sockets ---------------------------------------------------
frame = st.one_of(st.sampled_from([p.SUBMIT, p.STATUS, p.DELETE, p.READY, p.HEARTBEAT, p.PROGRESS, p.DONE,
                                   p.FAILED, p.REJECT, *p.READ_COMMANDS, p.KEYADD, p.KEYREVOKE,
                                   b"", b"{}", b"[]", b"null"]),
                  st.binary(max_size=64),
                  st.builds(lambda d: json.dumps(d).encode(),
                            st.dictionaries(st.sampled_from(["id", "task", "files", "options", "job", "kind",
                                                             "chunk", "attempt", "code", "stage", "done",
                                                             "offset", "ids", "limit", "tenant", "salt", "hash",
                                                             "role", "sha256"]),
                                            st.one_of(st.none(), st.integers(), st.text(max_size=20),
                                                      st.just("../../victim"), st.lists(st.integers(), max_size=3)),
                                            max_size=5)))


@hyp_settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(front=st.lists(st.lists(frame, min_size=1, max_size=5), max_size=4),
       back=st.lists(st.lists(frame, min_size=1, max_size=5), max_size=6))
def test_random_frames_at_both_sockets(hyp_broker, front, back):
    _b, s, root = hyp_broker

    def outside() -> dict:
        return {f: f.read_bytes() for f in root.rglob("*") if f.is_file() and s.data_dir not in f.parents}

    before = outside()
    w = FakeWorker(s)
    for frames in back:
        w.send_raw(frames)
    ctx = zmq.Context.instance()
    for frames in front:
        sock = keys.client_socket(ctx, zmq.REQ, s.keys_dir / "local-front", "front")
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(s.front_endpoint)
        sock.send_multipart(frames)
        sock.poll(300)
        sock.close(0)
    w.close()
    command, status, _ = front_call(s, p.pack(p.STATUS))
    assert command == p.OK and status["store"]["ok"]
    assert outside() == before


@pytest.fixture(scope="module")
def hyp_broker(tmp_path_factory):
    root = tmp_path_factory.mktemp("hyp")
    for victim in (root / "victim", root / "data" / "victim"):  # where '../../victim' would point
        victim.mkdir(parents=True)
        (victim / "file.txt").write_text("x")
    s = Settings.from_env(data_dir=root / "data" / "deep", broker_back=f"tcp://127.0.0.1:{free_port()}",
                          heartbeat_s=0.2, heartbeat_liveness=3)
    b = Broker(s, zmq.Context())
    t = threading.Thread(target=b.run, daemon=True)
    t.start()
    yield b, s, root
    b.running = False
    t.join(5)
    b.close()
