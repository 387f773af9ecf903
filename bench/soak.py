#!/usr/bin/env python
"""Soak: the real service under mixed load, with workers killed and the broker restarted.

    python bench/soak.py [--minutes 30] [--clients 8] [--workers 2] [--kill-every 300]

8 clients loop over builds of 20-100 real photos (lfw62), predictions on finished models,
listings, polls and deletions. Every `--kill-every` seconds a worker is killed with -9;
halfway through, the broker is killed with -9 (the supervisor restarts both). At the end
the clients stop, every accepted build is followed to its end, every model still there is
deleted, and the run prints:

- requests by operation and HTTP status;
- every accepted build's end state: `done`, `failed` with its code, or deleted by a client;
  an accepted build that never ends is LOST (the run fails);
- RSS of every process after warm-up and at the end (a process restarted meanwhile is
  marked), and the growth of those that lived through the run (target: under 10%);
- disk use of the data dir after warm-up and after the final deletions (logs apart).
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from test.stack import Stack, descendants

FACES = Path(os.environ.get("FR_FACES_DIR", ROOT.parent / "shared" / "faces"))
MAX_ACTIVE_BUILDS = 6  # clients skip a build while this many are unfinished (a queue, not a flood)


def role_of(pid: int, serve_pid: int) -> str | None:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None
    text = b" ".join(args).decode(errors="replace")
    if "run.py broker" in text:
        return "broker"
    if "run.py worker" in text:
        return f"worker-{args[args.index(b'--slot') + 1].decode()}" if b"--slot" in args else "worker"
    if "uwsgi" in text:
        return "uwsgi-master" if ppid == serve_pid else f"uwsgi-{pid}"
    return None


def processes(stack: Stack) -> dict[str, tuple[int, float]]:
    """role -> (pid, RSS MB) of every process of the service."""
    out = {"serve": (stack.proc.pid, rss_mb(stack.proc.pid))}
    for pid in descendants(stack.proc.pid):
        role = role_of(pid, stack.proc.pid)
        if role:
            out[role] = (pid, rss_mb(pid))
    return out


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def du_mb(folder: Path, skip: str = "logs") -> float:
    total = 0
    for f in folder.rglob("*"):
        if f.is_file() and skip not in f.parts:
            try:
                total += f.stat().st_size
            except OSError:
                pass
    return total / 2**20


class Soak:
    def __init__(self, stack: Stack, people: dict[str, list[Path]], seed: int):
        self.stack, self.people = stack, people
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.accepted: dict[str, float] = {}   # build id -> when accepted
        self.ended: dict[str, str] = {}        # build id -> done | failed:CODE | deleted
        self.done_models: list[str] = []
        self.stop = threading.Event()
        self.photos = [p for paths in people.values() for p in paths]

    def count(self, op: str, status: int | str) -> None:
        with self.lock:
            self.counts[(op, status)] += 1

    def call(self, op: str, method: str, path: str, **kw) -> requests.Response | None:
        try:
            r = self.stack.request(method, path, timeout=120, **kw)
        except requests.RequestException as exc:
            self.count(op, type(exc).__name__)
            return None
        self.count(op, r.status_code)
        return r

    def build(self, rng: random.Random) -> None:
        with self.lock:
            active = sum(1 for j in self.accepted if j not in self.ended)
        if active >= MAX_ACTIVE_BUILDS:
            return
        n = rng.randint(20, 100)
        names = rng.sample(sorted(self.people), rng.randint(2, 6))
        pool = [(name, p) for name in names for p in self.people[name]]
        chosen = rng.sample(pool, min(n, len(pool)))
        files = [("images", (f"{name}/{p.name}", p.read_bytes())) for name, p in chosen]
        r = self.call("build", "POST", "/build_recognizer", files=files, data={"seed": rng.randint(0, 999)})
        if r is not None and r.status_code == 202:
            with self.lock:
                self.accepted[r.json()["id"]] = time.time()

    def predict(self, rng: random.Random) -> None:
        with self.lock:
            models = list(self.done_models)
        if not models:
            return
        photo = rng.choice(self.photos).read_bytes()
        self.call("predict", "POST", f"/models/{rng.choice(models)}/predict", files={"image": ("p.jpg", photo)})

    def delete(self, rng: random.Random) -> None:
        with self.lock:
            if len(self.done_models) < 4:
                return
            model = self.done_models.pop(rng.randrange(len(self.done_models)))
        r = self.call("delete", "DELETE", f"/models/{model}")
        if r is not None and r.status_code == 200:
            with self.lock:
                self.ended[model] = "deleted"

    def client(self, k: int) -> None:
        rng = random.Random(self.rng.random() + k)
        ops = [(self.build, 2), (self.predict, 5), (lambda r: self.call("list", "GET", "/models?limit=20"), 2),
               (lambda r: self.call("alive", "GET", "/is_alive"), 1), (self.delete, 1)]
        fns, weights = zip(*ops)
        while not self.stop.is_set():
            rng.choices(fns, weights)[0](rng)
            self.stop.wait(rng.uniform(0.2, 1.5))

    def follow(self) -> None:
        """Poll unfinished builds until they end."""
        while not self.stop.is_set() or self.unfinished():
            for job in self.unfinished():
                r = self.call("poll", "GET", f"/is_available/{job}")
                if r is None or r.status_code != 200:
                    continue
                st = r.json()
                if st["state"] in ("done", "failed"):
                    with self.lock:
                        self.ended[job] = "done" if st["state"] == "done" else f"failed:{st['error']['code']}"
                        if st["state"] == "done":
                            self.done_models.append(job)
            time.sleep(1.0)
            if self.stop.is_set() and time.time() > self.drain_deadline:
                return

    def unfinished(self) -> list[str]:
        with self.lock:
            return [j for j in self.accepted if j not in self.ended]


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kill-every", type=float, default=300, help="seconds between worker kills")
    ap.add_argument("--warm-up", type=float, default=120, help="seconds of load before the first RSS reading")
    ap.add_argument("--data-dir", default=str(ROOT / "var" / "soak"))
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    people = {d.name: sorted(d.glob("*.jpg"))[:30] for d in sorted((FACES / "lfw62").iterdir())}
    data = Path(args.data_dir)
    if data.exists():
        import shutil
        shutil.rmtree(data)
    stack = Stack(data, workers=args.workers, warm=True, env={"FR_LOG_LEVEL": "WARNING",
                  # the tenant's quota matches the clients' own cap: a 429 is then a finding, not the soak
                  "FR_MAX_ACTIVE_BUILDS": str(MAX_ACTIVE_BUILDS)}).start(timeout=180)
    soak = Soak(stack, people, args.seed)
    soak.drain_deadline = float("inf")
    t_end = time.time() + args.minutes * 60
    print(f"soak: {args.minutes:g} min, {args.clients} clients, {args.workers} workers, a worker killed every "
          f"{args.kill_every:g} s, the broker killed once at half time; data in {data}", flush=True)
    threads = [threading.Thread(target=soak.client, args=(k,), daemon=True) for k in range(args.clients)]
    follower = threading.Thread(target=soak.follow, daemon=True)
    for t in [*threads, follower]:
        t.start()
    started = time.time()
    first = None
    next_kill = started + args.kill_every
    broker_killed = False
    try:
        while time.time() < t_end:
            time.sleep(1)
            now = time.time()
            if first is None and now - started >= args.warm_up:
                first, disk_first = processes(stack), du_mb(data)
                print(f"[{now - started:6.0f} s] warm-up over: RSS and disk measured", flush=True)
            if now >= next_kill:
                workers = [pid for role, (pid, _) in processes(stack).items() if role.startswith("worker")]
                if workers:
                    victim = random.Random(int(now)).choice(workers)
                    kill(victim)
                    print(f"[{now - started:6.0f} s] killed worker pid {victim} with -9", flush=True)
                next_kill = now + args.kill_every
            if not broker_killed and now - started >= args.minutes * 30:
                pid = processes(stack).get("broker", (None, 0))[0]
                if pid:
                    kill(pid)
                    print(f"[{now - started:6.0f} s] killed the broker (pid {pid}) with -9", flush=True)
                broker_killed = True
    finally:
        soak.stop.set()
        for t in threads:
            t.join(180)
        soak.drain_deadline = time.time() + 900  # every accepted build gets 15 min to end
        follower.join(960)
        last = processes(stack)
        with soak.lock:
            remaining = list(soak.done_models)
        for model in remaining:  # the clean-up a user would do
            soak.call("delete", "DELETE", f"/models/{model}")
        disk_last = du_mb(data)
        stack.stop()

    print("\nrequests by operation and status:")
    for (op, status), n in sorted(soak.counts.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        print(f"  {op:<8} {status!s:<22} {n}")
    ends = Counter(soak.ended.get(j, "LOST") for j in soak.accepted)
    print(f"\naccepted builds: {len(soak.accepted)}; end states: {dict(ends)}")
    if first is None:
        print("the run was shorter than its warm-up: no RSS comparison")
    else:
        print("\nRSS (MB) after warm-up -> at the end:")
        growths = []
        for role in sorted(set(first) | set(last)):
            a, b = first.get(role), last.get(role)
            if a and b and a[0] == b[0]:
                growth = 100 * (b[1] - a[1]) / max(a[1], 1)
                growths.append((growth, role))
                print(f"  {role:<14} pid {a[0]:<7} {a[1]:8.1f} -> {b[1]:8.1f}  ({growth:+.1f}%)")
            else:
                print(f"  {role:<14} {'restarted or gone meanwhile':<30} "
                      f"{(a or (0, 0))[1]:8.1f} -> {(b or (0, 0))[1]:8.1f}")
        worst = max(growths) if growths else (0.0, "-")
        print(f"largest growth of a process that lived through the run: {worst[0]:+.1f}% ({worst[1]})")
        print(f"\ndisk of the data dir without logs: {disk_first:.1f} MB after warm-up, {disk_last:.1f} MB after "
              f"deleting every model")
    lost = ends.get("LOST", 0)
    print(f"\nRESULT: {'FAIL' if lost else 'OK'}: {lost} accepted build(s) lost")
    sys.exit(1 if lost else 0)


if __name__ == "__main__":
    main()
