#!/usr/bin/env python
"""Why app.ini has no post-buffering and no harakiri: uWSGI 2.0's harakiri with threads.

    python bench/harakiri_repro.py

uWSGI 2.0.x keeps one harakiri deadline per process, not per thread. A request that
ends sets it to 0; a thread that is buffering a request body (post-buffering) re-arms it
by *adding* the harakiri time to it, so after another thread's request ended the
deadline reads 300 (January 1970) and the master kills the whole process with all its
requests (core/utils.c inc_harakiri, core/reader.c, uWSGI 2.0.30; unbit/uwsgi#2706).
This script starts uWSGI with a two-line app twice, with the settings app.ini used to
have (threads 4, post-buffering 64 KiB, harakiri 300) and with app.ini's body settings
(post-buffering 0, no harakiri), sends a 600 kB body in pieces while two quick requests
end on other threads, and prints the HARAKIRI / DAMN lines each one logged.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

APP = '''def application(env, start):
    body = env["wsgi.input"].read() if env.get("CONTENT_LENGTH") else b""
    start("200 OK", [("Content-Type", "text/plain")])
    return [str(len(body)).encode()]
'''
CASES = {"old app.ini (threads 4, post-buffering 65536, harakiri 300)": "post-buffering = 65536\nharakiri = 300\n",
         "app.ini now (threads 4, post-buffering 0, no harakiri)": "post-buffering = 0\n"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(folder: Path, extra: str) -> list[str]:
    port = free_port()
    ini = folder / "repro.ini"
    ini.write_text(f"[uwsgi]\nchdir = {folder}\nmodule = app:application\nmaster = true\nprocesses = 1\n"
                   f"threads = 4\nhttp = 127.0.0.1:{port}\n{extra}")
    log = folder / "uwsgi.log"
    uwsgi = Path(sys.executable).parent / "uwsgi"
    proc = subprocess.Popen([str(uwsgi), "--ini", str(ini)], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        time.sleep(2)
        sock = socket.create_connection(("127.0.0.1", port))
        n = 600_000
        try:
            sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n".encode())
            for i in range(60):
                sock.sendall(b"x" * (n // 60))
                time.sleep(0.1)
                if i in (10, 30):
                    requests.get(f"http://127.0.0.1:{port}/", timeout=10)
            sock.settimeout(10)
            sock.recv(100)
        except OSError as exc:  # the process that was reading the upload was killed
            print(f"    the upload's connection broke: {exc}")
        sock.close()
        time.sleep(2)
    finally:
        proc.terminate()
        proc.wait(10)
    return [line for line in log.read_text().splitlines() if "HARAKIRI ON" in line or "DAMN" in line]


def main() -> None:
    for name, extra in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "app.py").write_text(APP)
            lines = run(Path(tmp), extra)
        print(f"{name}: {len(lines)} line(s)")
        for line in lines:
            print("   ", line)


if __name__ == "__main__":
    main()
