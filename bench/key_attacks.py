#!/usr/bin/env python
"""Clients without a usable key against the real service: does a key holder still get quick answers?

    python bench/key_attacks.py [--attackers 40] [--rounds 40] [--seconds 20]

Starts the service (1 worker, no warm-up), makes a user key and uses it once, then measures `GET /models`
with that key `--rounds` times: quiet, then while `--attackers` threads loop over one of two attacks
(issue #26, rows 9 and 10), each for `--seconds`:

- keyless: POST /build_recognizer announcing 1 MB without a key, then pushing the body;
- guessing: GET /models with a wrong secret for the key's id (each a full scrypt check before #26).

Prints p50 / max of the key holder's requests and the ratio to the quiet run, and what the attackers got
(status counts; `closed`: the connection was closed on them).
"""
from __future__ import annotations

import argparse
import collections
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from test.stack import Stack

HEAD = ("POST /build_recognizer HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        "Content-Length: 1000000\r\n\r\n")


def attacker_socket(port: int) -> socket.socket:
    """A connection from 127.0.0.2: the attackers' address, not the key holder's (limits count per address)."""
    sock = socket.socket()
    sock.settimeout(30)
    sock.bind(("127.0.0.2", 0))
    sock.connect(("127.0.0.1", port))
    return sock


def keyless(port: int) -> str:
    """One keyless request announcing a body, then pushing it: its status, or `closed`."""
    try:
        with attacker_socket(port) as sock:
            sock.sendall(HEAD.encode())
            reply = sock.recv(65536)
            for _ in range(16):
                sock.sendall(b"\0" * 65536)
            return reply[9:12].decode() or "closed"
    except OSError:
        return "closed"


def guess(port: int, key_id: str) -> str:
    """One wrong secret for `key_id`: its status."""
    try:
        with attacker_socket(port) as sock:
            sock.sendall(f"GET /models HTTP/1.1\r\nHost: x\r\nX-API-Key: fr_{key_id}_{'B' * 43}\r\n"
                         "Connection: close\r\n\r\n".encode())
            return sock.recv(65536)[9:12].decode() or "closed"
    except OSError:
        return "error"


def timed(stack: Stack, key: str, rounds: int, codes: collections.Counter) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        codes[stack.get("/models", key=key, timeout=60).status_code] += 1
        out.append(time.perf_counter() - t0)
    return out


def under(attack, n: int, seconds: float) -> tuple[threading.Event, list[threading.Thread], collections.Counter]:
    stop, seen = threading.Event(), collections.Counter()
    deadline = time.monotonic() + seconds

    def loop() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            seen[attack()] += 1
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return stop, threads, seen


def summary(name: str, times: list[float], quiet: list[float]) -> str:
    p50, q50 = statistics.median(times), statistics.median(quiet)
    return (f"{name:10} p50 {p50 * 1000:7.1f} ms  max {max(times) * 1000:7.1f} ms  "
            f"p50 x{p50 / q50:5.1f} the quiet run")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attackers", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Stack(Path(tmp), workers=1, env={"FR_WARM_UP": "0"}) as stack:
        r = stack.post("/keys", json={"tenant": "bench", "role": "user"}, timeout=30)
        key = r.json()["key"]
        timed(stack, key, 20, collections.Counter())  # checked once in each web process it reaches
        quiet = timed(stack, key, args.rounds, collections.Counter())
        print(f"load average {os.getloadavg()[0]:.1f}; {args.attackers} attackers; {args.rounds} requests each way")
        print(summary("quiet", quiet, quiet))
        for name, attack in (("keyless", lambda: keyless(stack.port)),
                             ("guessing", lambda: guess(stack.port, key.split("_")[1]))):
            stop, threads, seen = under(attack, args.attackers, args.seconds)
            time.sleep(1.0)  # the attackers are at it
            codes: collections.Counter = collections.Counter()
            times = timed(stack, key, args.rounds, codes)
            stop.set()
            for t in threads:
                t.join(60)
            print(summary(name, times, quiet), " key holder got:", dict(codes), " attackers got:", dict(seen))

if __name__ == "__main__":
    main()
