#!/usr/bin/env python
"""Worker memory across builds in a row, through the real service.

    python bench/memory_builds.py [--builds 10] [--workers 2]

Builds all of `lfw62` `--builds` times on one running service (fresh data folder: the
first build extracts every face, the next ones take the features from the cache and
train again). Prints after each build the workers' resident memory (RSS) and peak
(VmHWM), and the broker's and web processes' RSS: growth across builds is a leak.
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.perf import FACES, build, memory
from test.stack import Stack


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--builds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    paths = sorted((FACES / "lfw62").glob("*/*.jpg"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for p in paths:
            zf.write(p, f"{p.parent.name}/{p.name}")
    with tempfile.TemporaryDirectory() as tmp, Stack(Path(tmp), workers=args.workers, warm=True) as stack:
        print(f"{len(paths)} photos, {args.workers} workers; memory in MB, all workers together")
        for i in range(1, args.builds + 1):
            wall, _ = build(stack, buf.getvalue())
            rss, peak = memory(stack), memory(stack, "VmHWM")
            print(f"build {i:2d}: {wall:6.1f} s  workers RSS {rss.get('worker', 0):5.0f} (peak "
                  f"{peak.get('worker', 0):5.0f})  broker {rss.get('broker', 0):4.0f}  web {rss.get('web', 0):5.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
