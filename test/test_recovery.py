"""Crash recovery on the real stack: a worker killed with -9 mid-job; the whole service
stopped mid-build and started again. In both cases the job completes."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3

from test.conftest import pick_people
from test.stack import gone, photo_files
from test.waits import wait_until

# These tests stop a worker or the whole service in the middle of a task. dlib's own embedder takes seconds
# for a chunk of photos, TensorFlow's well under one: with it, the chunk (or the whole build) was often over
# before the kill or the stop came. What is recovered does not depend on who embeds.
SLOW = {"FR_EMBEDDER": "dlib", "FR_CHUNK_PHOTOS": "4"}


def _people(faces_dir, skip: int, n_people: int = 3, n_photos: int = 8):
    """People not used by other tests, so the feature cache can't shortcut the build."""
    chosen = pick_people(faces_dir, n_people + skip, n_photos)
    return dict(list(chosen.items())[skip:])


def test_worker_killed_mid_job_is_replaced_and_the_job_finishes(stacks, faces_dir):
    stack = stacks.start("kill", workers=2, env=SLOW, warm_up=False)
    r = stack.build(photo_files(_people(faces_dir, skip=5, n_photos=12)))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    # `worker` names the process that got the job's latest task: still extracting it
    # (a chunk takes seconds with dlib) when we look right after extraction starts.
    st = stack.wait_state(job_id, ("extracting",), timeout=60, pred=lambda s: s["worker"] is not None)
    _host, pid, _ = st["worker"].split(":")
    os.kill(int(pid), signal.SIGKILL)

    done = stack.wait_state(job_id, ("done",), timeout=300)
    assert done["attempts"] >= 2, done
    assert stack.get(f"/models/{job_id}", timeout=30).status_code == 200
    # the supervisor replaced the killed worker
    assert stack.wait_alive(2, timeout=60)["workers"] == 2


def test_service_stopped_mid_build_finishes_the_job_after_restart(stacks, faces_dir):
    stack = stacks.start("restart", env=SLOW, warm_up=False)
    data = stack.data_dir
    r = stack.build(photo_files(_people(faces_dir, skip=8, n_photos=12)))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    stack.wait_state(job_id, ("extracting",), timeout=60, pred=lambda s: s["progress"]["done"] >= 2)
    stack.stop()

    db = sqlite3.connect(data / "var" / "jobs.sqlite")
    state = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
    db.close()
    assert state not in ("done", "failed")
    assert (data / "var" / "uploads" / job_id / "index.json").exists(), "uploads must survive a stop"

    stack = stacks.start(data_dir=data, env=SLOW, warm_up=False)
    done = stack.wait_state(job_id, ("done",), timeout=300)
    assert done["available"] == 1
    assert stack.get(f"/models/{job_id}", timeout=30).status_code == 200
    assert gone(data / "var" / "uploads" / job_id)


def test_a_worker_can_join_and_leave_a_running_service(tmp_path, faces_dir, stacks):
    import subprocess
    import sys

    from test.stack import ROOT
    stack = stacks.start("join")
    # the operator's steps for a worker on another host (README): a key pair, its public key allowed,
    # the broker's public key beside it
    keys = tmp_path / "w2-keys"
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "worker-key", "create", str(keys)],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == (keys / "worker.key").read_text().split('"')[1]
    shutil.copy(keys / "worker.key", stack.data_dir / "var/keys/allowed/workers/w2.key")
    shutil.copy(stack.data_dir / "var/keys/broker.key", keys / "broker.key")
    log = open(tmp_path / "w2.log", "wb")
    extra = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "worker", "--data-dir", str(tmp_path / "w2"),
                              "--keys", str(keys), "--connect", f"tcp://127.0.0.1:{stack.broker_port}"],
                             env=stack.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            # warm: the new worker has loaded its models before the build, so that its first task is not also
            # its loading (seconds holding the GIL, during which a loaded machine can starve its heartbeats and
            # the broker hand its chunk to the other worker: seen once under a load of 19)
            stack.wait_alive(2, timeout=120, warm=True)
        except TimeoutError as exc:
            raise AssertionError(f"the worker did not join: {(tmp_path / 'w2.log').read_text()[-3000:]}") from exc
        r = stack.build(photo_files(_people(faces_dir, skip=11, n_photos=6)))
        job_id = r.json()["id"]
        stack.wait_state(job_id, ("done",), timeout=300)
        # the remote-style worker (own data dir, so its own feature cache) took part in the build
        assert any((tmp_path / "w2" / "var" / "cache").glob("*/*.json"))
        extra.send_signal(signal.SIGKILL)
        extra.wait(10)
        wait_until(lambda: stack.get("/is_alive", timeout=10).json()["workers"] == 1, 60,
                   what="the broker should notice the worker left")
    finally:
        extra.kill()
