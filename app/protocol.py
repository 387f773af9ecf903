"""The ZeroMQ wire format: a command frame, a JSON header frame, then binary frames.

Front (REQ) -> broker ROUTER:  SUBMIT {id, name, options, files} photo...  -> OK {id} | ERR {code, message}
                               STATUS                                       -> OK {workers, busy, idle, warming, queued}
                               DELETE {id}                                  -> OK {id, removed}
Worker (DEALER) -> broker ROUTER:
    READY                           idle and asking for work (sent once, on start)
    HEARTBEAT {task?, warming?}     alive; the task it is running, if any; still loading its models
    PROGRESS {job, state, stage, done, total}
    DONE {task} result              result: features JSON (extract), scores JSON (evaluate) or bundle zip (train)
    FAILED {task, code, message, details}   DONE and FAILED also mean "ready for more"
    REJECT {task, busy_with}        got a task while busy: the broker takes it back
Broker -> worker:
    JOB {task, name, options, files} photo...     task = {job, kind: extract, chunk, attempt}
    JOB {task, name, options, files} features     task = {job, kind: evaluate, genome, attempt}
    JOB {task, name, options, files, search?} features  task = {job, kind: train, chunk: 0, attempt}
                                                  (search: the finished search's report, optimize=1)
    HEARTBEAT
"""
from __future__ import annotations

import json

import zmq

SUBMIT, STATUS, DELETE, OK, ERR = b"SUBMIT", b"STATUS", b"DELETE", b"OK", b"ERR"
READY, HEARTBEAT, PROGRESS, DONE, FAILED, JOB = b"READY", b"HEARTBEAT", b"PROGRESS", b"DONE", b"FAILED", b"JOB"
REJECT = b"REJECT"


def pack(command: bytes, header: dict | None = None, blobs: list[bytes] = ()) -> list[bytes]:
    frames = [command]
    if header is not None or blobs:
        frames.append(json.dumps(header or {}, ensure_ascii=False).encode())
    frames.extend(blobs)
    return frames


def unpack(frames: list[bytes]) -> tuple[bytes, dict, list[bytes]]:
    """-> (command, header, blobs). Tolerates a missing header."""
    command = frames[0] if frames else b""
    header = json.loads(frames[1]) if len(frames) > 1 and frames[1] else {}
    return command, header, list(frames[2:])


def tune(sock: zmq.Socket, heartbeat_s: float) -> None:
    """Transport-level heartbeats catch half-open TCP links that app heartbeats would only see late."""
    ms = int(heartbeat_s * 1000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.HEARTBEAT_IVL, ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ms * 5)
    sock.setsockopt(zmq.HEARTBEAT_TTL, ms * 5)
