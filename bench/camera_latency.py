#!/usr/bin/env python
"""A live camera through the real service: how long from a frame to its event, and memory over a watch.

    python bench/camera_latency.py [--minutes 5] [--fps 5] [--workers 1]

The service (`run.py serve`, warm) builds a model of 4 lfw62 people; an MJPEG stream served here at 10
frames a second shows, over and over, person A for 3 s, nobody for 4 s, person B for 3 s, nobody for 4 s
(photos the model was not built with); the camera is watched at `--fps`. Events are read from Debian's
mosquitto (MQTT) as a Home Assistant would read them. Printed:

- frame -> event: for each track start, the time from the first frame served with that person on the
  stream to the event's MQTT message (this includes the tracker's confirmation: a track starts on its
  second face, 1/fps later); and from the frame the event names (`time`, when the worker read it) to the
  MQTT message. p50, p95, max, over every start of the run;
- the baseline measured in the same run: POST /models/<id>/predict of one frame of the stream (the face
  pipeline on one frame plus the HTTP round trip), p50; and the ratio of the p95 above to it;
- the right people: how many starts named the person on the stream, named another, or said unknown;
- RSS of the worker, the broker and the web processes one minute into the watch and at its end, and the
  growth.
Target (issue #27): p95 frame -> event <= 1 s at 5 fps; memory flat over the watch.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from test.camera_feeds import MjpegServer, Mosquitto, Subscriber, Timeline
from test.stack import Stack, descendants, photo_files

FACES = Path(os.environ.get("FR_FACES_DIR", ROOT.parent / "shared" / "faces"))


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def processes(stack: Stack) -> dict[str, int]:
    """role -> pid, from each process's command line."""
    out = {}
    for pid in descendants(stack.proc.pid):  # type: ignore[union-attr]
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        role = "worker" if " worker" in cmd else "broker" if " broker" in cmd else "web" if "uwsgi" in cmd else None
        if role:
            out[f"{role}:{pid}"] = pid
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    people = sorted(p for p in (FACES / "lfw62").iterdir() if p.is_dir())[:4]
    photos = {p.name: sorted(p.glob("*.jpg"))[:10] for p in people}
    a, b = people[0].name, people[1].name
    timeline = Timeline([(0.0, 3.0, photos[a][9]), (7.0, 10.0, photos[b][9])], 14.0)
    tmp = Path(tempfile.mkdtemp(prefix="camera-bench-"))
    mqtt = Mosquitto(tmp / "mqtt").start()
    stack = Stack(tmp / "data", workers=args.workers, warm=True, env={
        "FR_CAMERA_ALLOW": "127.0.0.1", "FR_MQTT_URL": f"mqtt://127.0.0.1:{mqtt.port}", "FR_MQTT_PREFIX": "bench"})
    feed = None
    try:
        stack.start(timeout=300)
        r = stack.build(photo_files({k: v[:8] for k, v in photos.items()}), name="bench-cameras")
        model = r.json()["id"]
        stack.wait_state(model, ("done",), timeout=900)
        sub = Subscriber(mqtt.port)
        arrivals: list[tuple[float, dict]] = []
        sub.client.on_message = lambda c, u, m: arrivals.append((time.time(), json.loads(m.payload))) \
            if m.topic.endswith("/events") and "/cameras/" in m.topic else None
        feed = MjpegServer(timeline, fps=10).start()
        cam = stack.post("/cameras", json={"name": "bench", "url": feed.url(), "model": model,
                                           "fps": args.fps}).json()["camera"]
        started = time.time()
        memory: dict[str, dict[str, float]] = {}
        threading.Timer(60, lambda: memory.update(first={k: rss_mb(p) for k, p in processes(stack).items()})).start()
        while time.time() - started < args.minutes * 60:
            time.sleep(1)
        memory["last"] = {k: rss_mb(p) for k, p in processes(stack).items()}
        stack.delete(f"/cameras/{cam['id']}")
        frame = timeline.jpeg()
        base = []
        for _ in range(20):
            t = time.perf_counter()
            stack.post(f"/models/{model}/predict", files={"image": ("f.jpg", frame)})
            base.append(time.perf_counter() - t)
        sub.close()
    finally:
        if feed is not None:
            feed.stop()
        stack.stop()
        mqtt.stop()
    served = timeline.served
    from_appearance, from_frame, right, wrong, unknown = [], [], 0, 0, 0
    for got, event in arrivals:
        if event["type"] != "track.start":
            continue
        on_stream = None
        # the person on the stream when the event's frame was read, and when that appearance began
        before = [(t, who) for t, who in served if t <= event["time"] + 0.05]
        if before and before[-1][1]:
            on_stream = before[-1][1]
            first = before[-1][0]
            for t, who in reversed(before):
                if who != on_stream:
                    break
                first = t
            from_appearance.append(got - first)
        from_frame.append(got - event["time"])
        if event["label"] == "unknown":
            unknown += 1
        elif event["label"] == on_stream:
            right += 1
        else:
            wrong += 1
    print(f"camera at {args.fps:g} fps, {args.minutes:g} min, {args.workers} worker(s); {len(from_frame)} track starts")
    if from_appearance:
        print(f"frame -> event, from the person's first frame: p50 {statistics.median(from_appearance):.3f} s, "
              f"p95 {pct(from_appearance, 0.95):.3f} s, max {max(from_appearance):.3f} s")
    if from_frame:
        print(f"frame -> event, from the event's own frame:   p50 {statistics.median(from_frame):.3f} s, "
              f"p95 {pct(from_frame, 0.95):.3f} s, max {max(from_frame):.3f} s")
    p50 = statistics.median(base)
    print(f"baseline: /predict of one frame p50 {p50:.3f} s; p95 frame -> event / baseline = "
          f"{pct(from_appearance or [float('nan')], 0.95) / p50:.2f}x")
    print(f"starts naming the person on the stream: {right}, another person: {wrong}, unknown: {unknown}")
    for key in sorted(memory.get("last", {})):
        first = memory.get("first", {}).get(key, float("nan"))
        last = memory["last"][key]
        print(f"RSS {key}: {first:.1f} MB at 1 min, {last:.1f} MB at the end ({(last - first) / first * 100:+.1f}%)")


if __name__ == "__main__":
    main()
