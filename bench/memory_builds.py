#!/usr/bin/env python
"""Worker memory across builds in a row, through the real service.

    python bench/memory_builds.py [--builds 10] [--workers 2] [--embedder tensorflow dlib] [--fresh]

Builds all of `lfw62` `--builds` times on one running service (fresh data folder: the
first build extracts every face, the next ones take the features from the cache and
train again). Prints after each build the workers' resident memory (RSS) and peak
(VmHWM), and the broker's and web processes' RSS: growth across builds is a leak.
With several `--embedder`s, one service per embedder, one after the other, in the same
run (dlib: the service as it was before TensorFlow embedded faces). `--fresh`: every
build extracts (each build's photos are made new by one byte appended after the JPEG's
end, which the decoder ignores), so the embedder runs in every build, not only the first.
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
from constants import EMBEDDERS, Settings
from test.stack import Stack


def archive(paths: list[Path], salt: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for p in paths:
            zf.writestr(f"{p.parent.name}/{p.name}", p.read_bytes() + salt)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--builds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--embedder", nargs="+", default=[Settings.from_env().embedder], choices=EMBEDDERS)
    ap.add_argument("--fresh", action="store_true", help="new photo bytes for every build: no cache hits")
    args = ap.parse_args()
    paths = sorted((FACES / "lfw62").glob("*/*.jpg"))
    for embedder in args.embedder:
        with tempfile.TemporaryDirectory() as tmp, Stack(Path(tmp), workers=args.workers, warm=True,
                                                         env={"FR_EMBEDDER": embedder}) as stack:
            rss = memory(stack)
            print(f"embedder {embedder}: {len(paths)} photos, {args.workers} workers; memory in MB, all workers "
                  f"together; warmed up: workers {rss.get('worker', 0):.0f}, web {rss.get('web', 0):.0f}", flush=True)
            for i in range(1, args.builds + 1):
                wall, _ = build(stack, archive(paths, bytes([i % 256]) * (i if args.fresh else 0)))
                rss, peak = memory(stack), memory(stack, "VmHWM")
                print(f"build {i:2d}: {wall:6.1f} s  workers RSS {rss.get('worker', 0):5.0f} (peak "
                      f"{peak.get('worker', 0):5.0f})  broker {rss.get('broker', 0):4.0f}  web "
                      f"{rss.get('web', 0):5.0f}", flush=True)

if __name__ == "__main__":
    main()
