"""A front's side of the broker: REQ calls over ZeroMQ, authenticated by CURVE (app/wire/errors.py: how they fail).

A front keeps nothing of the service's state: job rows, listings, bundles and API-key rows all come
from the broker (`python run.py web --broker tcp://HOST:PORT --keys DIR` runs a front on any host).
Each thread of a web process keeps one REQ socket per broker (a CURVE handshake per request would cost
more than the request); a socket whose call failed or timed out is closed and made anew on the next
call (the ZeroMQ guide's lazy pirate: a REQ that missed its answer cannot be used again).
"""
from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import zmq

from app.wire import curve
from app.wire import protocol as p
from app.wire.errors import BrokerRefused, BrokerUnavailable, BrokerUnreadable

_local = threading.local()


@lru_cache(maxsize=4)
def _keys(folder: str) -> tuple[bytes, bytes, bytes]:
    public, secret = curve.load_pair(Path(folder), "front")
    return public, secret, curve.broker_public_key(Path(folder))


def _socket(endpoint: str, keys_dir: Path) -> zmq.Socket:
    """This thread's REQ socket to `endpoint`, made on first use (after uWSGI's fork: contexts are per process)."""
    sockets: dict = _local.__dict__.setdefault("sockets", {})
    sock: zmq.Socket | None = sockets.get((endpoint, str(keys_dir)))
    if sock is None:
        try:
            public, secret, server = _keys(str(keys_dir))
        except curve.KeyFileError as exc:
            raise BrokerUnavailable(f"this front has no keys for the broker ({exc})") from None
        sock = zmq.Context.instance().socket(zmq.REQ)
        for option, value in ((zmq.CURVE_PUBLICKEY, public), (zmq.CURVE_SECRETKEY, secret),
                              (zmq.CURVE_SERVERKEY, server)):
            sock.setsockopt(option, value)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sockets[(endpoint, str(keys_dir))] = sock
    return sock


def _drop(endpoint: str, keys_dir: Path) -> None:
    sock = _local.__dict__.get("sockets", {}).pop((endpoint, str(keys_dir)), None)
    if sock is not None:
        sock.close(0)


def exchange(endpoint: str, keys_dir: Path, frames: list[bytes], timeout_s: float) -> tuple[dict, list[bytes]]:
    """Send one request to the broker's front socket; -> (the OK answer's header, its data frames).
    Raises BrokerRefused (the broker's refusal, with its code), BrokerUnavailable or BrokerUnreadable."""
    sock = _socket(endpoint, keys_dir)
    ms = max(1, int(timeout_s * 1000))
    try:
        sock.setsockopt(zmq.SNDTIMEO, ms)
        sock.send_multipart(frames, copy=False)
        if not sock.poll(ms):
            raise zmq.Again()
        command, header, blobs = p.unpack(sock.recv_multipart())
    except zmq.Again:
        _drop(endpoint, keys_dir)
        raise BrokerUnavailable("the job broker did not answer; try again shortly") from None
    except p.ProtocolError:
        _drop(endpoint, keys_dir)
        raise BrokerUnreadable("the job broker sent an answer this front cannot read") from None
    except BaseException:
        _drop(endpoint, keys_dir)
        raise
    if command != p.OK:
        raise BrokerRefused(str(header.get("code", "BROKER_ERROR")), str(header.get("message", "broker error")))
    return header, blobs


def call(endpoint: str, keys_dir: Path, frames: list[bytes], timeout_s: float) -> dict:
    """One request; -> the header of the broker's OK answer."""
    return exchange(endpoint, keys_dir, frames, timeout_s)[0]


def submit(endpoint: str, keys_dir: Path, header: dict, blobs: list[bytes], timeout_s: float) -> dict:
    return call(endpoint, keys_dir, p.pack(p.SUBMIT, header, blobs), timeout_s)


def status(endpoint: str, keys_dir: Path, timeout_s: float) -> dict:
    return call(endpoint, keys_dir, p.pack(p.STATUS), timeout_s)


def delete(endpoint: str, keys_dir: Path, job_id: str, timeout_s: float, tenant: str | None = None) -> dict:
    """Erase a job; with `tenant`, only if it is that tenant's (else NOT_FOUND)."""
    return call(endpoint, keys_dir, p.pack(p.DELETE, {"id": job_id, "tenant": tenant}), timeout_s)


def get_job(endpoint: str, keys_dir: Path, job_id: str, timeout_s: float, tenant: str | None = None,
            callback: bool = False) -> dict:
    """{job: its row, bundle?: {sha256, size}, callback?: its delivery (with `callback`: app/broker/webhooks.py)};
    BrokerRefused NOT_FOUND for no such job or another tenant's."""
    header: dict = {"id": job_id, "tenant": tenant}
    if callback:
        header["callback"] = True
    return call(endpoint, keys_dir, p.pack(p.GETJOB, header), timeout_s)


def list_jobs(endpoint: str, keys_dir: Path, limit: int, offset: int, timeout_s: float,
              tenant: str | None = None, kind: str | None = None) -> tuple[list[dict], int]:
    """Newest first (of one tenant, or all): (rows, total). Models, or with kind="video" the videos."""
    header: dict = {"limit": limit, "offset": offset, "tenant": tenant}
    if kind is not None:
        header["kind"] = kind
    answer = call(endpoint, keys_dir, p.pack(p.LIST, header), timeout_s)
    return answer["jobs"], answer["total"]


def bundle_chunk(endpoint: str, keys_dir: Path, job_id: str, sha256: str, offset: int, timeout_s: float,
                 tenant: str | None = None) -> tuple[dict, bytes]:
    """One piece of a model's bundle from `offset`: ({sha256, size, offset}, bytes)."""
    header, blobs = exchange(endpoint, keys_dir, p.pack(p.BUNDLE, {"id": job_id, "tenant": tenant, "sha256": sha256,
                                                                  "offset": offset}), timeout_s)
    if len(blobs) != 1:
        raise BrokerUnreadable("the job broker sent a bundle piece this front cannot read")
    return header, blobs[0]


def known(endpoint: str, keys_dir: Path, ids: list[str], timeout_s: float) -> set[str]:
    """Which of these model ids the broker still has as finished models."""
    return set(call(endpoint, keys_dir, p.pack(p.KNOWN, {"ids": ids}), timeout_s)["done"])


def search_view(endpoint: str, keys_dir: Path, job_id: str, timeout_s: float,
                tenant: str | None = None) -> dict | None:
    """A running search's view from its last checkpoint (candidates, logbook, Pareto front, finalists, pick),
    None before its first; NOT_FOUND for another tenant's job."""
    return call(endpoint, keys_dir, p.pack(p.SEARCH, {"id": job_id, "tenant": tenant}), timeout_s)["search"]


def derive(endpoint: str, keys_dir: Path, header: dict, blobs: list[bytes], timeout_s: float) -> dict:
    """A new model from a built one (its `parent`, of `tenant`), photos added and people removed."""
    return call(endpoint, keys_dir, p.pack(p.DERIVE, header, blobs), timeout_s)


def erase(endpoint: str, keys_dir: Path, label: str, tenant: str | None, timeout_s: float) -> dict:
    """A person out of every model of `tenant`: {label, models: [{id, state, new_id, action}], removed}."""
    return call(endpoint, keys_dir, p.pack(p.ERASE, {"label": label, "tenant": tenant}), timeout_s)


def unknown(endpoint: str, keys_dir: Path, command: bytes, header: dict, timeout_s: float,
            blobs: list[bytes] | tuple = ()) -> tuple[dict, list[bytes]]:
    """One unknown-face message (UKEEP, UGROUPS, UCOUNT, UCHIP, UMERGE, UMOVE, UDISCARD: app/wire/protocol.py)
    -> (the answer's header, its data frames: a chip for UCHIP)."""
    if command not in p.UNKNOWN_COMMANDS:
        raise ValueError(f"not an unknown-face message: {command!r}")
    return exchange(endpoint, keys_dir, p.pack(command, header, blobs), timeout_s)


def video(endpoint: str, keys_dir: Path, header: dict, data: bytes, timeout_s: float) -> dict:
    """A recorded video to run through a built model (header: id, model, tenant, name, fps, deadline,
    callback) -> {id, model, fps}, once the video is stored."""
    return call(endpoint, keys_dir, p.pack(p.VIDEO, header, [data]), timeout_s)


def video_result(endpoint: str, keys_dir: Path, job_id: str, timeout_s: float, tenant: str | None = None) -> dict:
    """A finished video's result (tracks); NOT_FOUND for none, another tenant's, or one not finished."""
    return call(endpoint, keys_dir, p.pack(p.VIDEOGET, {"id": job_id, "tenant": tenant}), timeout_s)["video"]


def video_thumbnail(endpoint: str, keys_dir: Path, job_id: str, track: int, timeout_s: float,
                    tenant: str | None = None) -> bytes:
    """The JPEG of a finished video's track `track` (its best frame's face)."""
    _, blobs = exchange(endpoint, keys_dir, p.pack(p.VIDEOGET, {"id": job_id, "tenant": tenant, "thumb": track}),
                        timeout_s)
    if len(blobs) != 1:
        raise BrokerUnreadable("the job broker sent a thumbnail this front cannot read")
    return blobs[0]
