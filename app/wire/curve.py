"""CURVE keys: who may talk to the broker (pyzmq's zmq.auth, nothing hand-made).

Both broker sockets use ZeroMQ CURVE: traffic is encrypted and a peer whose
public key is not allowed never gets past the handshake. Layout under
`<data dir>/var/keys/` (owner-only):

    broker.key, broker.key_secret    the broker's pair (made on first start)
    allowed/workers/*.key            public keys of the workers that may take tasks
    allowed/fronts/*.key             public keys of the HTTP fronts that may submit, list and delete
    local-worker/, local-front/      the pairs `serve` gives its own workers and web processes

A client's key folder (`--keys DIR`) holds its own pair (`worker.key` +
`worker.key_secret`, or `front.*`) and the broker's public key `broker.key`.
`python run.py worker-key create DIR` makes a worker's pair and prints its public
key; the operator copies that `worker.key` into `allowed/workers/` (any file name
ending in `.key`) and the broker's `broker.key` into DIR. Removing a key from
`allowed/` refuses new connections at once and drops the messages of a peer
already connected with it (`Allowed.permits`, checked on every message).
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

WORKERS, FRONTS = "workers", "fronts"  # ZAP domains: one per socket, each with its own allowed keys
BROKER = "broker"


class KeyFileError(Exception):
    """A key folder that cannot be used; the message says what is missing."""


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def create_pair(folder: Path, name: str) -> bytes:
    """Write `<name>.key` and `<name>.key_secret` (0600) in `folder` unless there; -> the public key (z85)."""
    folder = _private_dir(Path(folder))
    secret = folder / f"{name}.key_secret"
    if not secret.exists():
        zmq.auth.create_certificates(folder, name)
    os.chmod(secret, 0o600)
    public, _ = zmq.auth.load_certificate(folder / f"{name}.key")
    return public


def load_pair(folder: Path, name: str) -> tuple[bytes, bytes]:
    """(public, secret) of `<folder>/<name>.key_secret`, or KeyFileError saying what is missing."""
    path = Path(folder) / f"{name}.key_secret"
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"no usable key pair {path} ({exc})") from None
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key")
    return public, secret


def broker_public_key(folder: Path) -> bytes:
    """The broker's public key as a client keeps it: `<folder>/broker.key`."""
    path = Path(folder) / f"{BROKER}.key"
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"no broker public key {path} ({exc}): copy the broker's var/keys/broker.key there") \
            from None
    return public


def allowed_dir(keys_dir: Path, domain: str) -> Path:
    return Path(keys_dir) / "allowed" / domain


def local_client_dir(keys_dir: Path, role: str) -> Path:
    return Path(keys_dir) / f"local-{role}"


def prepare_broker_keys(keys_dir: Path) -> None:
    """First start: the broker's pair, the allowed folders, and pairs for the service's own fronts and
    workers (their public keys allowed, the broker's public key beside them). Idempotent."""
    keys_dir = _private_dir(Path(keys_dir))
    create_pair(keys_dir, BROKER)
    for domain, role in ((WORKERS, "worker"), (FRONTS, "front")):
        allowed = _private_dir(allowed_dir(keys_dir, domain))
        client = local_client_dir(keys_dir, role)
        create_pair(client, role)
        shutil.copyfile(keys_dir / f"{BROKER}.key", client / f"{BROKER}.key")
        local = allowed / f"local-{role}.key"
        if not local.exists():
            shutil.copyfile(client / f"{role}.key", local)


def client_socket(ctx: zmq.Context, kind: int, folder: Path, role: str) -> zmq.Socket:
    """A socket that authenticates to the broker with the pair `<folder>/<role>.key_secret`."""
    public, secret = load_pair(folder, role)
    server = broker_public_key(folder)
    sock = ctx.socket(kind)
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server
    return sock


class Allowed:
    """The public keys allowed for one domain: the `*.key` files of a folder, re-read when it changes."""

    def __init__(self, folder: Path, recheck_s: float = 1.0):
        self.folder = Path(folder)
        self.recheck_s = recheck_s
        self._keys: frozenset[bytes] = frozenset()
        self._stamp: tuple | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def _stamp_now(self) -> tuple:
        try:
            files = sorted(self.folder.glob("*.key"))
            return tuple((f.name, f.stat().st_mtime_ns) for f in files)
        except OSError:
            return ()

    def keys(self, recheck_s: float | None = None) -> frozenset[bytes]:
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= (self.recheck_s if recheck_s is None else recheck_s) or self._stamp is None:
                self._checked = now
                stamp = self._stamp_now()
                if stamp != self._stamp:
                    self._stamp = stamp
                    try:
                        self._keys = frozenset(zmq.auth.load_certificates(self.folder))
                    except (OSError, ValueError):
                        self._keys = frozenset()
            return self._keys

    def permits(self, z85_key: bytes | str | None) -> bool:
        if not z85_key:
            return False
        key = z85_key.encode() if isinstance(z85_key, str) else z85_key
        # a key just allowed is seen at once (a miss looks at the folder again, at most every 0.1 s)
        return key in self.keys() or key in self.keys(recheck_s=0.1)

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook: called by the ZAP handler for each new connection."""
        return self.permits(key)


class BrokerAuth:
    """The ZAP handler of the broker's two sockets, each with its own allowed keys."""

    def __init__(self, ctx: zmq.Context, keys_dir: Path):
        self.keys_dir = Path(keys_dir)
        prepare_broker_keys(self.keys_dir)
        self.public, self.secret = load_pair(self.keys_dir, BROKER)
        self.allowed = {d: Allowed(allowed_dir(self.keys_dir, d)) for d in (WORKERS, FRONTS)}
        self.thread = ThreadAuthenticator(ctx)
        self.thread.start()
        for domain, allowed in self.allowed.items():
            self.thread.configure_curve_callback(domain, credentials_provider=allowed)

    def serve(self, sock: zmq.Socket, domain: str) -> None:
        """Make `sock` a CURVE server that admits only `domain`'s allowed keys."""
        sock.zap_domain = domain.encode()
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = self.public, self.secret

    def stop(self) -> None:
        self.thread.stop()
