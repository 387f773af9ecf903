#!/usr/bin/env python
"""Command line: `serve` (everything), `broker`, `worker`, `web` (uWSGI only), `predict` (offline), keys.

    python run.py serve --port 8080 --workers 2 --data-dir .
    python run.py keys create --tenant T --role builder  # an API key (alone on the last line)
    python run.py worker-key create DIR          # a remote worker's key pair; prints its public key
    python run.py worker --connect tcp://HOST:5556 --keys DIR
    python run.py web --broker tcp://HOST:5557 --keys DIR --port 8080   # an HTTP front on any host
    python run.py init --data-dir D --export DIR # a multi-host start: broker keys, a front and a worker pair
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from constants import Settings, SettingsError  # noqa: E402
from logger import logger, setup_logging  # noqa: E402

STOP_GRACE_S = 8.0         # after this, whatever still runs is killed (the whole stop takes at most ~10 s)
BACKOFF_START_S, BACKOFF_MAX_S = 0.5, 30.0
STABLE_S = 30.0            # a child that ran this long starts its next restart from the smallest delay


def _settings(args, **extra) -> Settings:
    over = dict(extra)
    if getattr(args, "data_dir", None):
        over["data_dir"] = Path(args.data_dir)
    return Settings.from_env(**over)


def loopback(endpoint: str) -> str:
    """Where a local process connects to an endpoint the broker binds (a wildcard is not an address)."""
    return endpoint.replace("0.0.0.0", "127.0.0.1").replace("*", "127.0.0.1")  # noqa: S104 (not a bind)


def cmd_broker(args) -> None:
    from app.broker import run_broker
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
    from app.keys import KeyFileError, load_pair
    from app.worker import run_worker
    keys_dir = Path(args.keys) if args.keys else s.keys_dir / "local-worker"
    try:
        load_pair(keys_dir, "worker")
    except KeyFileError as exc:
        raise SettingsError(f"--keys: {exc}; make a pair with `python run.py worker-key create DIR`") from None
    setup_logging("worker", s.log_dir, s.log_level, s.log_rotation, s.log_retention, args.slot)
    run_worker(s, args.connect or loopback(s.broker_back), keys_dir)


def cmd_worker_key(args) -> None:
    """A key pair for a worker (or a front) on another host; its public key goes into the broker's allowed folder."""
    from app.keys import create_pair
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

    from app.auth import KeyStore, bootstrap_admin
    from app.keys import BROKER, FRONTS, WORKERS, allowed_dir, create_pair, prepare_broker_keys
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


TLS_UWSGI = Path(sys.prefix) / "uwsgi-tls" / "bin" / "uwsgi"  # `make setup-tls`: uWSGI built with OpenSSL


def uwsgi_command(s: Settings) -> list[str]:
    """uWSGI with app.ini, listening where the settings say: HTTP, or HTTPS on uWSGI's own https socket."""
    host = f"[{s.host}]" if ":" in s.host else s.host
    address = f"{host}:{s.port}"
    if s.tls_cert:
        for path in (s.tls_cert, s.tls_key):
            if not Path(path).is_file():
                raise SettingsError(f"FR_TLS_CERT/FR_TLS_KEY: no file {path}")
        if not TLS_UWSGI.exists():
            raise SettingsError("HTTPS needs a uWSGI built with OpenSSL (the prebuilt one has none): run "
                                "`make setup-tls` once, or serve HTTP on 127.0.0.1 behind a TLS proxy (README)")
        return [str(TLS_UWSGI), "--home", sys.prefix, "--ini", str(ROOT / "app.ini"),
                "--https", f"{address},{Path(s.tls_cert).resolve()},{Path(s.tls_key).resolve()}"]
    exe = Path(sys.executable).parent / "uwsgi"
    return [str(exe) if exe.exists() else "uwsgi", "--ini", str(ROOT / "app.ini"), "--http", address]


def uwsgi_env(s: Settings) -> dict[str, str]:
    """What app.ini and the web processes read: where to serve and how, and where the broker is."""
    return {"FR_DATA_DIR": str(s.data_dir), "FR_PORT": str(s.port), "FR_HOST": s.host,
            "FR_BROKER_FRONT": s.front_endpoint, "FR_FRONT_KEYS": str(s.front_keys_dir),
            "FR_WEB_PROCESSES": str(s.web_processes),
            "FR_WEB_THREADS": str(s.web_threads), "FR_REQUEST_TIMEOUT_S": str(s.request_timeout_s)}


def die_with_parent() -> None:
    """In a child, before exec: SIGTERM when the process that started it dies (Linux), so no child outlives
    its supervisor (or a test's stack its test run)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    failures: int = 0          # quick deaths in a row: the restart delay doubles with each
    restart_at: float = 0.0


class Supervisor:
    """Starts the broker, N workers and uWSGI; restarts a child that dies, with exponential backoff;
    on SIGTERM/SIGINT stops them all, killing whatever has not stopped within STOP_GRACE_S.

    Each child runs in a process group of its own (uWSGI's workers with it), so a stop can always reach
    every process, and gets SIGTERM from the kernel if the supervisor itself dies.
    """

    def __init__(self, s: Settings, n_workers: int):
        self.s, self.n_workers = s, n_workers
        # glibc keeps each thread's malloc arena at its peak: 2 arenas bound what 16 request threads (or a
        # worker's task threads) keep after large photos (docs/memory.md); the operator's own value wins
        self.env = {"MALLOC_ARENA_MAX": "2", **os.environ, **uwsgi_env(s), "FR_BROKER_BACK": s.broker_back,
                    "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        py = [sys.executable, str(ROOT / "run.py")]
        connect = loopback(s.broker_back)
        self.children = [Child("broker", [*py, "broker"]), Child("web", uwsgi_command(s))]
        self.children += [Child(f"worker{i}", [*py, "worker", "--connect", connect, "--slot", str(i + 1)])
                          for i in range(n_workers)]
        self.stopping = False

    def start(self, child: Child) -> None:
        child.proc = subprocess.Popen(child.argv, env=self.env, cwd=ROOT, start_new_session=True,
                                      preexec_fn=die_with_parent)
        child.started = time.monotonic()
        logger.info("started {} (pid {})", child.name, child.proc.pid)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for child in self.children:
            self.start(child)
        logger.info("serving on http://{}:{} with {} worker(s); data in {}", self.s.host, self.s.port,
                    self.n_workers, self.s.data_dir)
        while not self.stopping:
            time.sleep(0.2)
            for child in self.children:
                self.watch(child)
        return 0

    def watch(self, child: Child) -> None:
        """Restart a child that died, after a delay that doubles while it keeps dying quickly."""
        now = time.monotonic()
        if child.proc is not None and child.proc.poll() is not None and not self.stopping:
            lived = now - child.started
            child.failures = child.failures + 1 if lived < STABLE_S else 1
            delay = min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** (child.failures - 1))
            logger.warning("{} (pid {}) {} after {:.1f} s; restarting in {:.1f} s", child.name, child.proc.pid,
                           describe_exit(child.proc.returncode), lived, delay)
            self.kill_group(child)  # whatever it left behind (uWSGI workers) goes with it
            child.proc, child.restart_at = None, now + delay
        if child.proc is None and now >= child.restart_at and not self.stopping:
            self.start(child)

    @staticmethod
    def kill_group(child: Child) -> None:
        if child.proc is not None:
            try:
                os.killpg(child.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, *_) -> None:
        if self.stopping:
            return
        self.stopping = True
        logger.info("stopping")
        running = [(c.name, c.proc) for c in self.children if c.proc is not None and c.proc.poll() is None]
        for name, proc in running:
            # uWSGI: SIGINT is its quick stop; our Python processes stop on SIGTERM
            proc.send_signal(signal.SIGINT if name == "web" else signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for name, proc in running:
            try:
                proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("{} (pid {}) did not stop within {:.0f} s; killing it", name, proc.pid, STOP_GRACE_S)
        for child in self.children:
            self.kill_group(child)  # survivors of a stopped child (its group) and children that did not stop
            if child.proc is not None:
                child.proc.wait()


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
    from app.auth import KeyStore, bootstrap_admin
    from app.keys import prepare_broker_keys
    prepare_broker_keys(s.keys_dir)  # before the children start: they read their keys at once
    if not s.auth:
        logger.warning("API keys are off (FR_AUTH=0): anyone on this machine may use every model")
    elif (made := bootstrap_admin(KeyStore(s.auth_db_path), s.admin_key_path, s.admin_key)) is not None:
        logger.info("made an admin API key on first start, written to {} (owner-only): "
                    "export FR_API_KEY=$(cat {})", made, made)
    from app import metrics
    metrics.reset(s)  # this run's metric files, an empty folder named to every child (app/metrics.py)
    sys.exit(Supervisor(s, s.workers).run())


def cmd_web(args) -> None:
    """The HTTP front alone: with `--broker tcp://HOST:PORT --keys DIR`, on any host (it keeps nothing but
    logs and a cache of bundles under its own data dir)."""
    over = {"port": args.port, "host": args.host, "broker_front": args.broker,
            "front_keys": str(Path(args.keys).resolve()) if args.keys else None}
    s = _settings(args, **over)
    if s.front_endpoint.startswith("tcp://"):
        from app.keys import KeyFileError, broker_public_key, load_pair
        try:
            load_pair(s.front_keys_dir, "front")
            broker_public_key(s.front_keys_dir)
        except KeyFileError as exc:
            raise SettingsError(f"--keys: {exc}; make a pair with `python run.py front-key create DIR` (or "
                                "`run.py init`) and allow its front.key on the broker") from None
    s.ensure_dirs()
    env = {**os.environ, **uwsgi_env(s)}
    command = uwsgi_command(s)
    os.execvpe(command[0], command, env)  # noqa: S606 (our own argument list)


def cmd_keys(args) -> None:
    """API keys, while the service runs or not: create (the key alone on the last line), list, revoke."""
    from app.auth import KeyStore
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


def build_parser() -> argparse.ArgumentParser:
    """The command line (also read by the tests that check deploy/ names only commands that exist)."""
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

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

    p = sub.add_parser("web", help="the HTTP front alone (uWSGI), on this host or any other")
    p.add_argument("--port", type=int)
    p.add_argument("--host")
    p.add_argument("--broker", help="the broker's front endpoint, e.g. tcp://HOST:5557 (FR_BROKER_FRONT)")
    p.add_argument("--keys", help="folder with this front's key pair and the broker's public key (FR_FRONT_KEYS)")
    p.add_argument("--data-dir", help="where this front keeps its logs and cached bundles")
    p.set_defaults(func=cmd_web)

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

    from app.remote import add_build_command
    add_build_command(sub)  # build: the command line's client of a running service
    return parser


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
