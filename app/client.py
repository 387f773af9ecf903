"""The HTTP front's side of the broker: one short-lived REQ socket per call."""
from __future__ import annotations

import zmq

from app import protocol as p
from app.errors import ApiError


def call(endpoint: str, frames: list[bytes], timeout_s: float) -> dict:
    """Send one request to the broker's front socket and wait for its answer."""
    sock = zmq.Context.instance().socket(zmq.REQ)  # instance() is per process, safe after uWSGI's fork
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
    sock.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames, copy=False)
        command, header, _ = p.unpack(sock.recv_multipart())
    except zmq.Again:
        raise ApiError(503, "BROKER_UNAVAILABLE", "the job broker did not answer; try again shortly") from None
    finally:
        sock.close(0)
    if command != p.OK:
        raise ApiError(500, header.get("code", "BROKER_ERROR"), header.get("message", "broker error"))
    return header


def submit(endpoint: str, header: dict, blobs: list[bytes], timeout_s: float) -> dict:
    return call(endpoint, p.pack(p.SUBMIT, header, blobs), timeout_s)


def status(endpoint: str, timeout_s: float) -> dict:
    return call(endpoint, p.pack(p.STATUS), timeout_s)


def delete(endpoint: str, job_id: str, timeout_s: float) -> dict:
    return call(endpoint, p.pack(p.DELETE, {"id": job_id}), timeout_s)
