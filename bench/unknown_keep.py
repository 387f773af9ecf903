#!/usr/bin/env python
"""What keeping unknown faces costs a prediction (issue #28): predict's latency with keep_unknown=0 and =1,
alternating on the same model and the same stranger photos in one run.

    python bench/unknown_keep.py [--photos 60] [--workers 1]

A model of 5 lfw62 people (5 photos each) is built through a real stack; then each of `--photos` photos of
`strangers/` (each face answered unknown) is sent twice, once without keeping and once with, in alternating
order. Printed: p50 and p95 of each, their ratio, and what was kept (faces, groups, bytes of the store).
"""
from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fewshot import FACES, REPORT, photo_paths
from test.conftest import pick_people
from test.stack import Stack, photo_files


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=60)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp) / "s", workers=args.workers, warm=True).start()
        try:
            people = pick_people(FACES, 5, 5)
            r = stack.build(photo_files(people), name="keep-bench")
            model = r.json()["id"]
            stack.wait_state(model, ("done",))
            photos = [p.read_bytes() for p in photo_paths(REPORT)[:args.photos]]
            times: dict[str, list[float]] = {"0": [], "1": []}
            for i, data in enumerate(photos):
                for keep in (("0", "1") if i % 2 else ("1", "0")):
                    start = time.perf_counter()
                    answer = stack.post(f"/models/{model}/predict", files={"image": ("p.jpg", data)},
                                        data={"keep_unknown": keep}, timeout=120)
                    times[keep].append(time.perf_counter() - start)
                    assert answer.status_code == 200, answer.text
            groups = stack.get(f"/models/{model}/unknown", timeout=30).json()
            db = sqlite3.connect(stack.data_dir / "var" / "unknown.sqlite")
            kept, size = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(chip)), 0) FROM faces").fetchone()
            db.close()
        finally:
            stack.stop()
    p50 = {k: 1000 * statistics.median(v) for k, v in times.items()}
    p95 = {k: 1000 * statistics.quantiles(v, n=20)[-1] for k, v in times.items()}
    print(f"{len(photos)} stranger photos, each predicted with keep_unknown=0 and =1 (alternating)")
    print(f"keep_unknown=0: p50 {p50['0']:.1f} ms, p95 {p95['0']:.1f} ms")
    print(f"keep_unknown=1: p50 {p50['1']:.1f} ms, p95 {p95['1']:.1f} ms  (p50 ratio {p50['1'] / p50['0']:.2f})")
    print(f"kept {kept} faces in {len(groups['clusters'])} groups; chips {size} bytes ({size / max(kept, 1):.0f} "
          "per face)")


if __name__ == "__main__":
    main()
