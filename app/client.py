"""The HTTP front's side of the broker: one short-lived REQ socket per call, authenticated by CURVE."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import zmq

from app import keys
from app import protocol as p
from app.errors import ApiError

# What the broker's refusals mean over HTTP.
ERR_STATUS = {"INSUFFICIENT_STORAGE": 507, "STORE_UNAVAILABLE": 503, "DEADLINE_PASSED": 503, "CONFLICT": 409,
              "NOT_FOUND": 404, "NOT_READY": 409, "NOT_DERIVABLE": 409, "UNKNOWN_PERSON": 404, "NO_NEW_PHOTOS": 400,
              "TOO_FEW_PEOPLE": 400, "TOO_MANY_FILES": 413, "CALLBACK_UNAVAILABLE": 503}


@lru_cache(maxsize=4)
def _keys(folder: str) -> tuple[bytes, bytes, bytes]:
    public, secret = keys.load_pair(Path(folder), "front")
    return public, secret, keys.broker_public_key(Path(folder))


def call(endpoint: str, keys_dir: Path, frames: list[bytes], timeout_s: float) -> dict:
    """Send one request to the broker's front socket and wait for its answer."""
    try:
        public, secret, server = _keys(str(keys_dir))
    except keys.KeyFileError as exc:
        raise ApiError(503, "BROKER_UNAVAILABLE", f"this front has no keys for the broker ({exc})") from None
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.REQ)  # per process: safe after uWSGI's fork
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, max(1, int(timeout_s * 1000)))
    sock.setsockopt(zmq.SNDTIMEO, max(1, int(timeout_s * 1000)))
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames, copy=False)
        command, header, _ = p.unpack(sock.recv_multipart())
    except zmq.Again:
        raise ApiError(503, "BROKER_UNAVAILABLE", "the job broker did not answer; try again shortly") from None
    except p.ProtocolError:
        raise ApiError(502, "BROKER_ERROR", "the job broker sent an answer this front cannot read") from None
    finally:
        sock.close(0)
    if command != p.OK:
        code = str(header.get("code", "BROKER_ERROR"))
        raise ApiError(ERR_STATUS.get(code, 500), code, str(header.get("message", "broker error")))
    return header


def submit(endpoint: str, keys_dir: Path, header: dict, blobs: list[bytes], timeout_s: float) -> dict:
    return call(endpoint, keys_dir, p.pack(p.SUBMIT, header, blobs), timeout_s)


def status(endpoint: str, keys_dir: Path, timeout_s: float) -> dict:
    return call(endpoint, keys_dir, p.pack(p.STATUS), timeout_s)


def delete(endpoint: str, keys_dir: Path, job_id: str, timeout_s: float) -> dict:
    return call(endpoint, keys_dir, p.pack(p.DELETE, {"id": job_id}), timeout_s)


def derive(endpoint: str, keys_dir: Path, header: dict, blobs: list[bytes], timeout_s: float) -> dict:
    return call(endpoint, keys_dir, p.pack(p.DERIVE, header, blobs), timeout_s)


def erase(endpoint: str, keys_dir: Path, label: str, tenant: str | None, timeout_s: float) -> dict:
    return call(endpoint, keys_dir, p.pack(p.ERASE, {"label": label, "tenant": tenant}), timeout_s)
