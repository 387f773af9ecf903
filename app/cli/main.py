"""Command line: `serve` (everything), `broker`, `worker`, `web` (uWSGI only), `predict` (offline), keys.

Each command loads only what its process runs: the broker's, a worker's or the front's modules are imported
by the command that starts that process, not here.

    python run.py serve --port 8080 --workers 2 --data-dir .
    python run.py keys create --tenant T --role builder  # an API key (alone on the last line)
    python run.py worker-key create DIR          # a remote worker's key pair; prints its public key
    python run.py worker --connect tcp://HOST:5556 --keys DIR
    python run.py web --broker tcp://HOST:5557 --keys DIR --port 8080   # an HTTP front on any host
    python run.py init --data-dir D --export DIR # a multi-host start: broker keys, a front and a worker pair
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from app.cli.supervisor import Supervisor, loopback, uwsgi_command
from constants import Settings, SettingsError
from logger import logger, setup_logging


def _settings(args, **extra) -> Settings:
    over = dict(extra)
    if getattr(args, "data_dir", None):
        over["data_dir"] = Path(args.data_dir)
    return Settings.from_env(**over)


def cmd_broker(args) -> None:
    from app.broker.loop import run_broker
    s = _settings(args)
    s.ensure_dirs()
    setup_logging("broker", s.log_dir, s.log_level, s.log_rotation, s.log_retention)
    run_broker(s)


def cmd_worker(args) -> None:
    s = _settings(args)
    s = replace(s, embedder_threads=s.worker_threads)  # the ONNX embedder's too: the worker's share of the cores
    # Before numpy loads: with one worker per core, OpenBLAS' own threads only fight over the
    # cores (measured: search candidates 3.3x slower with 2 workers x 2 BLAS threads).
    # TensorFlow (the embedder, the final training) likewise: its intra-op pool sized to the
    # worker's share of the cores, one inter-op thread (a task runs one graph at a time).
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ.setdefault(var, str(s.worker_threads))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    from app.wire.curve import KeyFileError, load_pair
    from app.worker.loop import run_worker
    keys_dir = Path(args.keys) if args.keys else s.keys_dir / "local-worker"
    try:
        load_pair(keys_dir, "worker")
    except KeyFileError as exc:
        raise SettingsError(f"--keys: {exc}; make a pair with `python run.py worker-key create DIR`") from None
    setup_logging("worker", s.log_dir, s.log_level, s.log_rotation, s.log_retention, args.slot)
    run_worker(s, args.connect or loopback(s.broker_back), keys_dir)


def cmd_worker_key(args) -> None:
    """A key pair for a worker (or a front) on another host; its public key goes into the broker's allowed folder."""
    from app.wire.curve import create_pair
    role = getattr(args, "role", "worker")
    folder = Path(args.dir)
    public = create_pair(folder, role).decode()
    print(f"{role} key pair in {folder}/ ({role}.key, {role}.key_secret)")
    print(f"allow it on the broker's host:  copy {folder / f'{role}.key'} to "
          f"<data dir>/var/keys/allowed/{role}s/")
    print(f"and give this {role} the broker's public key:  copy <data dir>/var/keys/broker.key to {folder}/")
    print(public)


def cmd_init(args) -> None:
    """First start of a deployment over several hosts or containers (docker-compose's one-shot `init`):
    the broker's keys under the data dir, one front pair and one worker pair written to `--export`
    (each folder with the broker's public key beside it) and allowed, and an admin API key in
    var/admin.key unless FR_ADMIN_KEY is set. Idempotent: a second run changes nothing."""
    import shutil

    from app.shared.api_keys import KeyStore, bootstrap_admin
    from app.wire.curve import BROKER, FRONTS, WORKERS, allowed_dir, create_pair, prepare_broker_keys
    s = _settings(args)
    s.ensure_dirs()
    prepare_broker_keys(s.keys_dir)
    export = Path(args.export)
    for role, domain in (("front", FRONTS), ("worker", WORKERS)):
        folder = export / role
        create_pair(folder, role)
        shutil.copyfile(s.keys_dir / f"{BROKER}.key", folder / f"{BROKER}.key")
        allowed = allowed_dir(s.keys_dir, domain) / f"init-{role}.key"
        if not allowed.exists():
            shutil.copyfile(folder / f"{role}.key", allowed)
        print(f"{role} keys in {folder}/ (allowed in {allowed.parent}/)")
    made = bootstrap_admin(KeyStore(s.auth_db_path), s.admin_key_path, s.admin_key)
    if made:
        print(f"admin API key written to {made} (owner-only)")


def cmd_serve(args) -> None:
    over = {"port": args.port, "workers": args.workers, "host": args.host, "tls_cert": args.tls_cert,
            "tls_key": args.tls_key}
    if args.broker_port:
        over["broker_back"] = f"tcp://127.0.0.1:{args.broker_port}"
    if args.front_port:
        over["broker_front_tcp"] = f"tcp://127.0.0.1:{args.front_port}"
    s = _settings(args, **over)
    s.ensure_dirs()
    uwsgi_command(s)  # a TLS setting that cannot work stops the start here
    setup_logging("serve", s.log_dir, s.log_level, s.log_rotation, s.log_retention)
    from app.shared.api_keys import KeyStore, bootstrap_admin
    from app.wire.curve import prepare_broker_keys
    prepare_broker_keys(s.keys_dir)  # before the children start: they read their keys at once
    if not s.auth:
        logger.warning("API keys are off (FR_AUTH=0): anyone on this machine may use every model")
    elif (made := bootstrap_admin(KeyStore(s.auth_db_path), s.admin_key_path, s.admin_key)) is not None:
        logger.info("made an admin API key on first start, written to {} (owner-only): "
                    "export FR_API_KEY=$(cat {})", made, made)
    from app.shared import metrics
    metrics.reset(s)  # this run's metric files, an empty folder named to every child (app/shared/metrics.py)
    sys.exit(Supervisor(s, s.workers).run())


def cmd_web(args) -> None:
    """The HTTP front alone: with `--broker tcp://HOST:PORT --keys DIR`, on any host (it keeps nothing but
    logs and a cache of bundles under its own data dir)."""
    over = {"port": args.port, "host": args.host, "broker_front": args.broker,
            "front_keys": str(Path(args.keys).resolve()) if args.keys else None}
    s = _settings(args, **over)
    if s.front_endpoint.startswith("tcp://"):
        from app.wire.curve import KeyFileError, broker_public_key, load_pair
        try:
            load_pair(s.front_keys_dir, "front")
            broker_public_key(s.front_keys_dir)
        except KeyFileError as exc:
            raise SettingsError(f"--keys: {exc}; make a pair with `python run.py front-key create DIR` (or "
                                "`run.py init`) and allow its front.key on the broker") from None
    s.ensure_dirs()
    env = {**os.environ, **s.to_env()}  # what app.ini and the web processes read
    command = uwsgi_command(s)
    os.execvpe(command[0], command, env)  # noqa: S606 (our own argument list)


def cmd_keys(args) -> None:
    """API keys, while the service runs or not: create (the key alone on the last line), list, revoke."""
    from app.shared.api_keys import KeyStore
    s = _settings(args)
    s.ensure_dirs()
    keys = KeyStore(s.auth_db_path)
    if args.action == "create":
        try:
            key, info = keys.create(args.tenant, args.role, args.name)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        print(f"key {info['id']} for tenant {info['tenant']}, role {info['role']}; it is shown only now:")
        print(key)
    elif args.action == "list":
        for k in keys.list(args.tenant):
            state = "revoked" if k["revoked"] else "active"
            print(f"{k['id']}  {k['tenant']}  {k['role']}  {state}  {k['name'] or ''}".rstrip())
    else:
        if not args.key_id or not keys.revoke(args.key_id):
            print(f"run.py keys revoke: no active key {args.key_id!r}", file=sys.stderr)
            sys.exit(1)
        print(f"revoked {args.key_id}")


def cmd_predict(args) -> None:
    """Name the faces in photos with a downloaded bundle; prints JSON. No service needed."""
    import json

    from modelization.recognizer import load_bundle
    from preprocessor.errors import InputError
    s = Settings.from_env()
    setup_logging("predict", None, "WARNING")
    recognizer = load_bundle(args.model, s)
    results = []
    for photo in args.photos:
        try:
            faces, found = recognizer.faces(Path(photo).read_bytes(), args.threshold, s.max_faces_per_predict)
            entry = {"photo": photo, "count": len(faces), "faces": [f.as_dict() for f in faces]}
            if found > len(faces):
                entry["faces_found"] = found
            results.append(entry)
        except (OSError, InputError) as exc:
            code = getattr(exc, "code", "UNREADABLE")
            results.append({"photo": photo, "error": {"code": code, "message": str(exc)}})
    threshold = recognizer.threshold if args.threshold is None else args.threshold
    print(json.dumps({"model": args.model, "threshold": threshold, "results": results}, ensure_ascii=False,
                     indent=1))
    sys.exit(1 if any("error" in r for r in results) else 0)


def cmd_watch(args) -> None:
    """Print the track events of a camera URL or a video file, one JSON line each, with a model bundle. No
    service needed; a camera URL is read as a worker reads it (reconnected with backoff) until Ctrl-C."""
    import json
    import time

    from app.worker.sources import FileSource, SourceError
    from app.worker.watch import FrameJudge, Watch
    from modelization.recognizer import load_bundle
    s = Settings.from_env()
    setup_logging("watch", None, "WARNING")
    recognizer = load_bundle(args.model, s)

    def show(event: dict, snapshot: bytes) -> None:
        if args.snapshots:
            folder = Path(args.snapshots)
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{event['track']}-{event['type']}.jpg"
            (folder / name).write_bytes(snapshot)
            event = {**event, "snapshot": str(folder / name)}
        print(json.dumps({**event, "label": event["label"] or "unknown"}, ensure_ascii=False), flush=True)

    if "://" not in args.source:  # a video file: every 1/fps seconds of it, as fast as it decodes
        try:
            source = FileSource(args.source)
        except SourceError as exc:
            print(f"run.py watch: {exc.reason}", file=sys.stderr)
            sys.exit(1)
        judge, step, t, next_t, n = FrameJudge(recognizer, s, args.fps), 1.0 / args.fps, 0.0, 0.0, 0
        rate = source.fps or 25.0
        try:
            while True:
                try:
                    frame = source.read()
                except EOFError:
                    break
                t, n = n / rate, n + 1
                if t + 1e-9 >= next_t:
                    next_t += step
                    for event, snapshot in judge.frame(t, frame):
                        show(event, snapshot)
            for event, snapshot in judge.close():
                show(event, snapshot)
        finally:
            source.close()
        return
    camera = {"id": "00000000-0000-4000-8000-000000000000", "url": args.source, "fps": args.fps}

    def state(state: str, reason: str | None) -> None:
        print(json.dumps({"state": state, "reason": reason, "time": round(time.time(), 3)}), file=sys.stderr,
              flush=True)

    watch = Watch(camera, recognizer, s, state, show, None)
    try:
        watch.run()
    except KeyboardInterrupt:
        watch.stop()


def build_parser() -> argparse.ArgumentParser:
    """The command line (also read by the tests that check deploy/ names only commands that exist)."""
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_processes(sub)
    _add_host_keys(sub)
    _add_tools(sub)
    from app.cli.remote import add_build_command
    add_build_command(sub)  # build: the command line's client of a running service
    return parser


def _add_processes(sub: argparse._SubParsersAction) -> None:
    """serve (everything, supervised), and each process alone: broker, worker, web."""
    p = sub.add_parser("serve", help="HTTP front + broker + workers, supervised")
    p.add_argument("--port", type=int, help="HTTP port (default 8080, FR_PORT)")
    p.add_argument("--host", help="HTTP address to bind (default 127.0.0.1, FR_HOST)")
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM; FR_TLS_CERT)")
    p.add_argument("--tls-key", help="... and this private key (PEM; FR_TLS_KEY)")
    p.add_argument("--workers", type=int, help="worker processes (default 2, FR_WORKERS)")
    p.add_argument("--data-dir", help="where all state lives (default: this folder, FR_DATA_DIR)")
    p.add_argument("--broker-port", type=int, help="port the broker takes workers on (default 5556, FR_BROKER_BACK)")
    p.add_argument("--front-port", type=int, help="also take HTTP fronts of other hosts on this loopback port "
                                                  "(FR_BROKER_FRONT_TCP for another address)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("broker", help="the ZeroMQ broker alone")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("worker", help="one worker, connecting to a broker")
    p.add_argument("--connect", help="broker back endpoint, e.g. tcp://HOST:5556")
    p.add_argument("--keys", help="folder with this worker's key pair and the broker's public key "
                                  "(default: the data dir's var/keys/local-worker)")
    p.add_argument("--data-dir", help="where the feature cache lives")
    p.add_argument("--slot", type=int, help="number of this worker on its host: logs go to worker-<slot>.log")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("web", help="the HTTP front alone (uWSGI), on this host or any other")
    p.add_argument("--port", type=int)
    p.add_argument("--host")
    p.add_argument("--broker", help="the broker's front endpoint, e.g. tcp://HOST:5557 (FR_BROKER_FRONT)")
    p.add_argument("--keys", help="folder with this front's key pair and the broker's public key (FR_FRONT_KEYS)")
    p.add_argument("--data-dir", help="where this front keeps its logs and cached bundles")
    p.set_defaults(func=cmd_web)


def _add_host_keys(sub: argparse._SubParsersAction) -> None:
    """Key pairs of workers and fronts on other hosts, and a multi-host start."""
    p = sub.add_parser("worker-key", help="make a key pair for a worker on another host")
    p.add_argument("action", choices=["create"])
    p.add_argument("dir", help="folder for the pair (created, owner-only)")
    p.set_defaults(func=cmd_worker_key, role="worker")

    p = sub.add_parser("front-key", help="make a key pair for an HTTP front on another host")
    p.add_argument("action", choices=["create"])
    p.add_argument("dir", help="folder for the pair (created, owner-only)")
    p.set_defaults(func=cmd_worker_key, role="front")

    p = sub.add_parser("init", help="broker keys, a front and a worker pair (allowed), an admin key: for "
                                    "docker-compose and Kubernetes")
    p.add_argument("--data-dir", help="the broker's data dir")
    p.add_argument("--export", required=True, help="folder for front/ and worker/ key folders")
    p.set_defaults(func=cmd_init)


def _add_tools(sub: argparse._SubParsersAction) -> None:
    """API keys and offline predictions."""
    p = sub.add_parser("keys", help="API keys: create, list, revoke")
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("key_id", nargs="?", help="revoke: the key's id (first column of `keys list`)")
    p.add_argument("--tenant", help="create: the tenant the key belongs to; list: only this tenant's")
    p.add_argument("--role", choices=["admin", "builder", "user"], default="user")
    p.add_argument("--name", help="a note to tell keys apart")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("predict", help="name the faces in photos with a model bundle (offline)")
    p.add_argument("--model", required=True, help="a bundle downloaded from /models/<id>")
    p.add_argument("--threshold", type=float, help="open-set distance threshold (default: the bundle's)")
    p.add_argument("photos", nargs="+")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("watch", help="print who a camera or a video file shows, as track events (offline)")
    p.add_argument("--model", required=True, help="a bundle downloaded from /models/<id>")
    p.add_argument("--fps", type=float, default=5.0, help="frames judged per second (default 5)")
    p.add_argument("--snapshots", help="a folder to write each event's snapshot (JPEG with the boxes) to")
    p.add_argument("source", help="rtsp://..., an http(s) MJPEG stream or snapshot URL, or a video file")
    p.set_defaults(func=cmd_watch)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    os.umask(0o077)  # everything the service writes (photos, models, logs, keys) is its user's alone
    try:
        args.func(args)
    except SettingsError as exc:
        print(f"run.py {args.command}: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
