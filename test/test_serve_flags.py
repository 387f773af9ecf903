"""`serve` hands its whole Settings to every child (Settings.to_env): each of its flags takes effect in the
child that uses it, `--front-port` included (it used to reach the supervisor only, so the broker never took
fronts over TCP)."""
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from app.cli.supervisor import die_with_parent
from app.wire import client, curve
from app.wire.errors import BrokerError
from constants import Settings
from test.stack import ROOT, alive, descendants, free_port, self_signed_cert

HOST = "127.0.0.2"  # loopback, but not the default 127.0.0.1: an answer there shows --host reached uWSGI


def changed(f: dataclasses.Field, tmp: Path):
    """A valid value of setting `f` other than its default."""
    special = {"data_dir": tmp, "host": HOST, "broker_front": "tcp://127.0.0.1:1", "broker_back": "tcp://127.0.0.1:2",
               "front_keys": str(tmp / "keys"), "broker_front_tcp": "tcp://127.0.0.1:3", "embedder": "dlib",
               "detector": "hog", "quality_policy": "skip", "webhook_allow": "example.org,10.0.0.0/8",
               "camera_allow": "192.168.0.0/16,cam.example", "mqtt_url": "mqtt://127.0.0.1:1884",
               "mqtt_prefix": "fr/test",
               "admin_key": "fr_flags_test_admin_key_changed_0123456789",
               "cors_origins": "https://a.example", "tls_cert": "c.pem", "tls_key": "k.pem", "log_level": "DEBUG",
               "log_rotation": "1 MB", "search_population": 8, "search_generations": 2, "search_budget_s": 30.5}
    if f.name in special:
        return special[f.name]
    default, low, high = f.default, f.metadata.get("low"), f.metadata.get("high")
    if low is not None and low == high:
        return default  # one value allowed (chip_size)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1 if high is None or default + 1 <= high else default - 1
    if isinstance(default, float):
        value = default * 0.75 if default else 0.125
        return value if low is None or value >= low else (default + high) / 2
    raise AssertionError(f"no changed value for {f.name}")


def test_every_setting_survives_the_environment_to_a_child(tmp_path):
    """from_env(to_env(s)) == s, for the defaults and for a Settings where every field differs from them."""
    assert Settings.from_env(environ=Settings.from_env(environ={}).to_env()) == Settings.from_env(environ={})
    fields = dataclasses.fields(Settings)
    s = Settings.from_env(environ={}, **{f.name: changed(f, tmp_path) for f in fields})
    fixed = {f.name for f in fields if f.metadata.get("low") is not None and f.metadata["low"] == f.metadata["high"]}
    assert [f.name for f in fields if getattr(s, f.name) == f.default] == sorted(fixed)  # every field that can differ
    env = s.to_env()
    assert set(env) == {"FR_" + f.name.upper() for f in fields}
    assert Settings.from_env(environ=env) == s


@pytest.mark.stack
def test_every_serve_flag_takes_effect_in_the_child_that_uses_it(tmp_path):
    cert, key = self_signed_cert(tmp_path, HOST)
    data, port, broker_port, front_port = tmp_path / "data", free_port(), free_port(), free_port()
    data.mkdir()
    argv = [sys.executable, str(ROOT / "run.py"), "serve", "--host", HOST, "--port", str(port),
            "--tls-cert", str(cert), "--tls-key", str(key), "--workers", "1", "--data-dir", str(data),
            "--broker-port", str(broker_port), "--front-port", str(front_port)]
    # no FR_* of the test run's own: only the flags (and what keeps the stack small) say where things go
    env = {k: v for k, v in os.environ.items() if not k.startswith("FR_")}
    env.update(FR_ADMIN_KEY="fr_flags_test_admin_key_0123456789", FR_WARM_UP="0", FR_WEB_PROCESSES="1")
    log = open(tmp_path / "serve.out", "ab")
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=die_with_parent)
    url = f"https://{HOST}:{port}"
    try:
        status = wait_alive(proc, url, cert, tmp_path / "serve.out")
        # --host, --port, --tls-cert, --tls-key: uWSGI serves HTTPS there, with that certificate ...
        assert status["alive"] and status["workers"] == 1
        with pytest.raises(requests.exceptions.ConnectionError):  # ... and not plain HTTP, nor on 127.0.0.1
            requests.get(f"http://{HOST}:{port}/is_alive", timeout=5)
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"https://127.0.0.1:{port}/is_alive", timeout=5, verify=False)
        # --workers 1: one worker process started, and the broker counts one
        commands = [command_of(pid) for pid in descendants(proc.pid)]
        assert sum(1 for c in commands if c[2:3] == ["worker"]) == 1, commands
        # --data-dir: every child keeps its state and logs there
        logs = data / "var" / "logs"
        assert (data / "var" / "jobs.sqlite").exists()
        assert {"broker.log", "worker-1.log", "web-1.log"} <= {p.name for p in logs.iterdir()}
        # --broker-port: the broker took the worker on that port
        assert f"back tcp://127.0.0.1:{broker_port}" in (logs / "broker.log").read_text()
        with socket.create_connection(("127.0.0.1", broker_port), timeout=5):
            pass
        # --front-port: a front of another host, with a key pair the broker allows, is answered over TCP
        front = tmp_path / "front-keys"
        curve.create_pair(front, "front")
        shutil.copyfile(data / "var" / "keys" / f"{curve.BROKER}.key", front / f"{curve.BROKER}.key")
        shutil.copyfile(front / "front.key", curve.allowed_dir(data / "var" / "keys", curve.FRONTS) / "flags.key")
        answer = broker_status(f"tcp://127.0.0.1:{front_port}", front)
        assert {"workers", "queued", "store"} <= set(answer) and answer["workers"] <= 1, answer
    finally:
        stop(proc)


def wait_alive(proc: subprocess.Popen, url: str, cert: Path, out: Path, timeout: float = 120) -> dict:
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        assert proc.poll() is None, out.read_text(errors="replace")[-3000:]
        try:
            r = requests.get(url + "/is_alive", timeout=5, verify=str(cert))
            last = r.json()
            if r.status_code == 200 and last["workers"] >= 1:
                return last
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.3)
    raise TimeoutError(f"not alive at {url} (last: {last}):\n{out.read_text(errors='replace')[-3000:]}")


def broker_status(endpoint: str, keys_dir: Path, timeout: float = 30) -> dict:
    """STATUS over the broker's front TCP socket, retried while the broker has not yet read the new key."""
    deadline = time.time() + timeout
    while True:
        try:
            return client.status(endpoint, keys_dir, 3.0)
        except BrokerError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def command_of(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def stop(proc: subprocess.Popen) -> None:
    tree = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in alive(tree):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
