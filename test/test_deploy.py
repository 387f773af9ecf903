"""deploy/kubernetes/ and docker-compose.yml name only what exists: the project's image, the ports its
processes listen on, run.py's own subcommands and options, FR_* settings, volumes and secrets they
declare, and key files that `run.py init` writes. Kubernetes cannot run here; this is what can be checked
without it (the compose file runs for real in test/test_docker.py where Docker is available)."""
from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from constants import Settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from app.cli.main import build_parser  # noqa: E402

SETTINGS = {"FR_" + f.name.upper() for f in fields(Settings)}
IMAGE = "api-facial-recognition"
PORTS = {8080, 5556, 5557}  # HTTP front, broker's workers, broker's fronts


def manifests() -> list[dict]:
    docs = []
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def workloads() -> list[dict]:
    return [d for d in manifests() if d["kind"] in ("Deployment", "StatefulSet")]


def pod_specs():
    for w in workloads():
        spec = w["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield w, spec, c


def run_command(argv: list[str]) -> object:
    """argv must be `python run.py <subcommand> ...` that run.py's own parser accepts."""
    assert argv[:2] == ["python", "run.py"], argv
    return build_parser().parse_args(argv[2:])


def test_the_dockerfile_exposes_the_ports_and_the_venv_python():
    text = (ROOT / "Dockerfile").read_text()
    exposed = {int(p) for line in text.splitlines() if line.startswith("EXPOSE") for p in line.split()[1:]}
    assert exposed == PORTS
    assert "/srv/api-facial-recognition/.venv/bin" in text  # `python` in the manifests is the venv's


def test_kubernetes_manifests_parse_and_have_the_expected_objects():
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in manifests())
    assert kinds == [("Deployment", "fr-web"), ("Deployment", "fr-worker"), ("HorizontalPodAutoscaler", "fr-worker"),
                     ("Service", "fr-broker"), ("Service", "fr-web"), ("StatefulSet", "fr-broker")]
    broker = next(w for w in workloads() if w["kind"] == "StatefulSet")
    assert broker["spec"]["replicas"] == 1  # the single writer of its store
    assert broker["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_containers_name_only_the_image_its_commands_ports_and_settings():
    for w, spec, c in pod_specs():
        assert c["image"].split(":")[0] == IMAGE, c["image"]
        for port in c.get("ports", []):
            assert port["containerPort"] in PORTS, (w["metadata"]["name"], port)
        for probe in ("readinessProbe", "livenessProbe"):
            if probe in c:
                target = c[probe].get("httpGet") or c[probe].get("tcpSocket")
                assert target["port"] in {p["containerPort"] for p in c["ports"]}, (c["name"], probe)
        for env in c.get("env", []):
            assert env["name"] in SETTINGS, env["name"]
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        declared = {v["name"] for v in spec.get("volumes", [])} | {
            t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        assert set(mounts.values()) <= declared, (c["name"], mounts, declared)
        if c["command"][0] == "sh":  # the broker's init container: copies its keys onto the volume
            assert w["kind"] == "StatefulSet" and all(path in c["command"][2] for path in mounts)
            continue
        args = run_command(c["command"])
        for folder in (getattr(args, "keys", None), getattr(args, "data_dir", None)):
            if folder:
                assert folder in mounts, (c["name"], folder, mounts)
        if args.command in ("web", "worker"):  # they reach the broker's Service on its own ports
            endpoint = args.broker if args.command == "web" else args.connect
            host, port = re.fullmatch(r"tcp://([a-z0-9-]+):(\d+)", endpoint).groups()
            broker_ports = {p["port"] for d in manifests() if d["kind"] == "Service" and
                            d["metadata"]["name"] == host for p in d["spec"]["ports"]}
            assert int(port) in broker_ports, endpoint


def test_secrets_hold_the_key_files_run_py_init_writes(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "run.py"), "init", "--data-dir", str(tmp_path / "b"), "--export",
                    str(tmp_path / "k")], check=True, capture_output=True, env={"FR_ADMIN_KEY": "x" * 32,
                                                                                "PATH": "/usr/bin:/bin"})
    written = {"broker.key": tmp_path / "b/var/keys/broker.key",
               "broker.key_secret": tmp_path / "b/var/keys/broker.key_secret",
               "front.key": tmp_path / "k/front/front.key", "worker.key": tmp_path / "k/worker/worker.key"}
    assert all(p.exists() for p in written.values())
    assert sorted(f.name for f in (tmp_path / "k/front").iterdir()) == ["broker.key", "front.key", "front.key_secret"]
    assert sorted(f.name for f in (tmp_path / "k/worker").iterdir()) == ["broker.key", "worker.key",
                                                                        "worker.key_secret"]
    for _, spec, _c in pod_specs():
        for v in spec.get("volumes", []):
            for item in v.get("secret", {}).get("items", []):
                assert item["key"] in written, item


def test_services_select_pods_and_target_their_ports():
    for svc in (d for d in manifests() if d["kind"] == "Service"):
        pods = [(w, c) for w, _s, c in pod_specs()
                if svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert pods, svc["metadata"]["name"]
        ports = {p["containerPort"] for _, c in pods for p in c.get("ports", [])}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports


def test_the_worker_autoscaler_scales_the_worker_deployment_on_cpu():
    hpa = next(d for d in manifests() if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fr-worker"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


@pytest.mark.parametrize("service", ["init", "broker", "web", "worker"])
def test_compose_services_run_commands_settings_and_volumes_that_exist(service):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    svc = compose["services"][service]
    assert svc["image"].split(":")[0] == "${FR_IMAGE" or svc["image"].startswith(IMAGE)
    args = run_command(svc["command"])
    for name in svc.get("environment", {}):
        assert name in SETTINGS, name
    volumes = {v.split(":")[0]: v.split(":")[1] for v in svc.get("volumes", [])}
    assert set(volumes) <= set(compose["volumes"])
    for folder in (getattr(args, "keys", None), getattr(args, "data_dir", None), getattr(args, "export", None)):
        if folder and service != "web" and service != "worker":
            assert any(folder.startswith(m) for m in volumes.values()), (service, folder)
    if getattr(args, "keys", None):
        assert any(args.keys.startswith(m) for m in volumes.values())
    for port in svc.get("ports", []):
        assert int(port.rsplit(":", 1)[1]) in PORTS
