"""The image and docker-compose.yml for real: broker, 2 web fronts and 2 workers in containers, a build
sent to one front, polled and used through the other.

Skipped, saying why, where there is no Docker engine (CI has none) or no image built yet: building the
image takes many minutes and a download of the requirements, so it is the operator's step
(docs/deploy.md): `docker build --build-arg BASE=... -t api-facial-recognition:latest .`.
Which engine: DOCKER_HOST as docker itself reads it; which image: FR_IMAGE (default
api-facial-recognition:latest).
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from test.conftest import pick_people
from test.stack import free_port, photo_files
from test.waits import wait_until

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("FR_IMAGE", "api-facial-recognition:latest")


def compose_command() -> list[str] | None:
    """`docker compose` (v2) or `docker-compose` (v1), whichever this host has."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def docker_ready() -> str | None:
    """None when a build can run here, else why not."""
    docker = shutil.which("docker")
    if docker is None:
        return "no docker command on this host"
    if compose_command() is None:
        return "neither `docker compose` nor `docker-compose` on this host"
    info = subprocess.run([docker, "info"], capture_output=True, text=True)
    if info.returncode != 0:
        return f"no Docker engine answers (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'default')})"
    if subprocess.run([docker, "image", "inspect", IMAGE], capture_output=True).returncode != 0:
        return f"image {IMAGE} not built; build it as docs/deploy.md says"
    return None


WHY_NOT = docker_ready()
pytestmark = [pytest.mark.docker, pytest.mark.skipif(WHY_NOT is not None, reason=f"Docker test skipped: {WHY_NOT}")]


def wait_alive(url: str, workers: int, timeout: float = 180) -> None:
    last = [""]

    def alive() -> bool:
        try:
            r = requests.get(url + "/is_alive", timeout=5)
        except requests.RequestException as exc:
            last[0] = str(exc)
            return False
        last[0] = r.text
        return r.status_code == 200 and r.json()["workers"] >= workers
    wait_until(alive, timeout, interval=1, what=lambda: f"{url} not alive: {last[0]}")


@pytest.mark.timeout(900)
def test_compose_broker_two_fronts_two_workers_build_and_predict(faces_dir, tmp_path):
    compose = compose_command()
    assert compose is not None
    project = f"frtest{secrets.token_hex(3)}"
    first = free_port()
    ports = f"{first}-{first + 3}"
    admin = secrets.token_urlsafe(24)
    env = {**os.environ, "FR_ADMIN_KEY": admin, "FR_WEB_PORTS": ports, "FR_IMAGE": IMAGE}
    base = [*compose, "-p", project, "-f", str(ROOT / "docker-compose.yml")]

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], env=env, cwd=ROOT, capture_output=True, text=True, check=check,
                              timeout=600)

    try:
        run("up", "-d", "--no-build", "--scale", "web=2", "--scale", "worker=2")
        urls = []
        for index in (1, 2):
            port = run("port", "--index", str(index), "web", "8080").stdout.strip().rsplit(":", 1)[1]
            urls.append(f"http://127.0.0.1:{port}")
        assert urls[0] != urls[1]
        for url in urls:
            wait_alive(url, workers=2)
        head = {"X-API-Key": admin}
        people = pick_people(faces_dir, 3, 4)
        train = {name: paths[:3] for name, paths in people.items()}
        parts = [("images", (name, data, "image/jpeg")) for name, data in photo_files(train)]
        r = requests.post(urls[0] + "/build_recognizer", files=parts, headers=head, timeout=120)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        state = wait_until(lambda: (s := requests.get(f"{urls[1]}/is_available/{job_id}", headers=head,
                                                      timeout=10).json())["state"] in ("done", "failed") and s,
                           600, interval=1)
        assert state["state"] == "done", state
        # both workers took part (the build was cut in chunks over the workers of other containers)
        logs = run("logs", "broker").stdout
        assert logs.count(" joined (") >= 2
        # the other front fetched the bundle from the broker and names a held-out photo's person
        name, paths = next(iter(people.items()))
        r = requests.post(f"{urls[1]}/models/{job_id}/predict", headers=head, timeout=120,
                          files={"image": ("probe.jpg", paths[3].read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        assert [f["label"] for f in r.json()["faces"]] == [name], r.json()
        a = requests.get(f"{urls[0]}/models/{job_id}", headers=head, timeout=60)
        b = requests.get(f"{urls[1]}/models/{job_id}", headers=head, timeout=60)
        assert a.status_code == b.status_code == 200 and a.content == b.content
    finally:
        (tmp_path / "compose.log").write_text(run("logs", check=False).stdout)
        run("down", "-v", "--remove-orphans", check=False)
