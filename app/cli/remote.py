"""`python run.py build PEOPLE_DIR --url URL`: the command line's client of a running service.

It zips a folder of people (one sub-folder per person), uploads it with a progress bar, follows the
build (stage and progress; generation by generation for a genetic search) and downloads the bundle.
The API key comes from `--api-key` or the environment's FR_API_KEY and is sent as `X-API-Key`.
Exit status: 0 built and downloaded, 1 refused or failed (the service's error is printed), 2 bad usage.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import IO, Any

import requests

from constants import IMAGE_EXTENSIONS

CHUNK = 256 * 1024


class ClientError(Exception):
    """Something to tell the person and stop (exit status 1)."""


# --- progress bars -------------------------------------------------------------------------------
class Bar:
    """One line redrawn in place on a terminal; elsewhere (a log, CI) a line per stage and per tenth."""

    def __init__(self, out: IO[str] = sys.stderr, width: int = 30):
        self.out, self.width = out, width
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.label: str | None = None
        self.tenth = -1
        self.line = ""

    def show(self, label: str, done: float, total: float, extra: str = "") -> None:
        frac = min(1.0, done / total) if total > 0 else 0.0
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled) if total > 0 else "." * self.width
        figures = f"{frac:6.1%}" if total > 0 else "      "
        line = f"{label:<28} [{bar}] {figures} {extra}".rstrip()
        if self.tty:
            pad = max(0, len(self.line) - len(line))
            self.out.write("\r" + line + " " * pad)
            self.out.flush()
        elif label != self.label or int(frac * 10) != self.tenth:
            self.out.write(line + "\n")
            self.out.flush()
        self.label, self.tenth, self.line = label, int(frac * 10), line

    def done(self, message: str = "") -> None:
        if self.tty and self.line:
            self.out.write("\n")
        if message:
            self.out.write(message + "\n")
        self.out.flush()
        self.label, self.tenth, self.line = None, -1, ""


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# --- the folder ------------------------------------------------------------------------------------
def zip_people(folder: Path, into: IO[bytes]) -> dict:
    """Zip every photo under `folder` (paths kept, so the folder holding a photo names its person).
    -> {photos, people, ignored}. Raises ClientError when there is nothing to send."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ClientError(f"{folder} is not a folder: give the folder that holds one folder per person")
    photos, ignored, people = 0, [], set()
    with zipfile.ZipFile(into, "w", zipfile.ZIP_STORED) as zf:  # photos are compressed already
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if path.is_dir() or any(part.startswith(".") or part == "__MACOSX" for part in rel.parts):
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                ignored.append(str(rel))
                continue
            if len(rel.parts) < 2:
                raise ClientError(f"{rel} is not in a person's folder: put each person's photos in a folder "
                                  "named after them (people/alice/1.jpg)")
            zf.write(path, rel.as_posix())
            photos += 1
            people.add(rel.parts[-2])
    if not photos:
        raise ClientError(f"no photos under {folder} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return {"photos": photos, "people": len(people), "ignored": ignored}


class Multipart:
    """A multipart/form-data body streamed from a file, with a length (so requests sends Content-Length)
    and a callback as it is read (the upload's progress)."""

    def __init__(self, fields: dict[str, str], name: str, filename: str, fh: IO[bytes], size: int, on_read):
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        head = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                        for k, v in fields.items())
        head += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                 "Content-Type: application/zip\r\n\r\n").encode()
        self.parts: list[Any] = [io.BytesIO(head), fh, io.BytesIO(f"\r\n--{boundary}--\r\n".encode())]
        self.length = len(head) + size + len(f"\r\n--{boundary}--\r\n")
        self.sent, self.on_read = 0, on_read

    def __len__(self) -> int:
        return self.length

    def read(self, n: int = -1) -> bytes:
        n = CHUNK if n is None or n < 0 else n
        while self.parts:
            data = self.parts[0].read(n)
            if data:
                self.sent += len(data)
                self.on_read(self.sent, self.length)
                return data
            self.parts.pop(0)
        return b""


# --- the service -----------------------------------------------------------------------------------
class Service:
    def __init__(self, url: str, api_key: str | None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        # A connection per request (requests.request, no pooled session): uWSGI's HTTP router closes
        # each connection after its answer, and a pooled one reused at that moment is cut ("Remote end
        # closed connection without response": seen once on the download right after the last poll).
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.timeout = timeout

    def call(self, method: str, path: str, **kw) -> requests.Response:
        timeout = kw.pop("timeout", self.timeout)
        headers = {**self.headers, **kw.pop("headers", {})}
        for attempt in (1, 2):
            try:
                r = requests.request(method, self.url + path, headers=headers, timeout=timeout, **kw)
                break
            except requests.ConnectionError as exc:
                if method != "GET" or attempt == 2:  # a GET changes nothing: asked once more
                    raise ClientError(f"cannot reach {self.url}: {exc}") from None
            except requests.RequestException as exc:
                raise ClientError(f"cannot reach {self.url}: {exc}") from None
        if r.status_code >= 400:
            raise ClientError(describe_error(r))
        return r


def describe_error(r: requests.Response) -> str:
    """The service's error envelope as lines for people: status, code, message, and the files or people
    its details list."""
    try:
        error = r.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {r.status_code}: {r.text[:300]}"
    lines = [f"HTTP {r.status_code} {error.get('code')}: {error.get('message')}", *detail_lines(error)]
    if r.status_code == 401:
        lines.append("  (give a key with --api-key or FR_API_KEY)")
    return "\n".join(lines)


def detail_lines(error: dict, limit: int = 50) -> list[str]:
    """The lists in an error's details (bad files, people and their photo counts), a line per entry."""
    lines = []
    for key, value in (error.get("details") or {}).items():
        if isinstance(value, list):
            for item in value[:limit]:
                lines.append(f"  {key}: " + (", ".join(f"{k}={v}" for k, v in item.items())
                                             if isinstance(item, dict) else str(item)))
            if len(value) > limit:
                lines.append(f"  ... {len(value) - limit} more")
    return lines


def follow(service: Service, job_id: str, bar: Bar, interval: float = 1.0) -> dict:
    """Poll until the build ends; -> its final status (raises ClientError if it failed)."""
    stage = None
    while True:
        st = service.call("GET", f"/is_available/{job_id}").json()
        if st["state"] == "done":
            bar.done("built")
            return st
        if st["state"] == "failed":
            bar.done()
            error = st.get("error") or {}
            raise ClientError("\n".join([f"the build failed: {error.get('code')}: {error.get('message')}",
                                          *detail_lines(error)]))
        search, progress = st.get("search"), st["progress"]
        if st["state"] == "optimizing" and search:
            if search["phase"] == "confirming":
                label = "cross-validating finalists"
                done, total = search["fold_evaluations"], search["fold_evaluations_planned"]
            else:
                label = f"generation {search['generation']} of {search['generations']}"
                done, total = search["seconds"], search["budget_s"] * 0.75  # the evolution's share of the budget
            best = search.get("best") or {}
            extra = (f"{search['evaluations']} networks, best balanced accuracy "
                     f"{best.get('balanced_accuracy', 0):.4f}, smallest {best.get('smallest_params', 0)} params")
        else:
            label, done, total = progress["stage"], progress["done"], progress["total"]
            extra = f"{done}/{total}" if total else ""
        if stage is not None and label.split(" ")[0] != stage.split(" ")[0]:
            bar.done()
        stage = label
        bar.show(label, done, total, extra)
        time.sleep(interval)


def fetch(service: Service, job_id: str, out: Path, bar: Bar) -> int:
    r = service.call("GET", f"/models/{job_id}", stream=True, timeout=(10, 300))
    total = int(r.headers.get("Content-Length") or 0)
    got = 0
    tmp = out.with_name(out.name + ".part")
    with open(tmp, "wb") as fh:
        for chunk in r.iter_content(CHUNK):
            fh.write(chunk)
            got += len(chunk)
            bar.show("downloading", got, total, human(got))
    os.replace(tmp, out)
    bar.done(f"bundle saved to {out} ({human(got)})")
    return got


def build(args: argparse.Namespace, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """The `build` command. -> exit status."""
    bar = Bar(err)
    service = Service(args.url, args.api_key)
    fields = {"name": args.name or Path(args.people_dir).resolve().name}
    if args.seed is not None:
        fields["seed"] = str(args.seed)
    if args.optimize:
        fields["optimize"] = "1"
        for key in ("population", "generations", "time_budget"):
            if getattr(args, key) is not None:
                fields[key] = str(getattr(args, key))
    elif any(getattr(args, k) is not None for k in ("population", "generations", "time_budget")):
        err.write("--population, --generations and --time-budget only apply with --optimize\n")
        return 2
    try:
        with tempfile.TemporaryFile() as fh:
            found = zip_people(Path(args.people_dir), fh)
            size = fh.tell()
            fh.seek(0)
            err.write(f"{found['photos']} photos of {found['people']} people ({human(size)} zipped)"
                      + (f"; not photos, left out: {', '.join(found['ignored'][:10])}" if found["ignored"] else "")
                      + "\n")
            started = time.monotonic()
            body = Multipart(fields, "archive", "people.zip", fh, size,
                             lambda sent, total: bar.show("uploading", sent, total,
                                                          f"{human(sent)} of {human(total)}, "
                                                          f"{human(sent / max(1e-3, time.monotonic() - started))}/s"))
            r = service.call("POST", "/build_recognizer", data=body,
                             headers={"Content-Type": body.content_type}, timeout=(10, 600))
        answer = r.json()
        job_id = answer["id"]
        bar.done(f"accepted: {answer['photos']} photos of {answer['people']} people; model id {job_id}")
        try:
            follow(service, job_id, bar, args.interval)
        except KeyboardInterrupt:
            bar.done()
            err.write(f"stopped following; the build goes on in the service: {service.url}/#/model/{job_id}\n")
            return 130
        output = Path(args.output) if args.output else Path(f"recognizer-{job_id}.zip")
        fetch(service, job_id, output, bar)
        summary = service.call("GET", f"/models/{job_id}/summary").json()
        metrics = summary.get("metrics") or {}
        if metrics.get("balanced_accuracy") is not None:
            err.write(f"held-out balanced accuracy {metrics['balanced_accuracy']:.2%} on {metrics['test_photos']} "
                      f"test photos; {summary['people_in_model']} people in the model\n")
        out.write(f"{output}\n")
        return 0
    except ClientError as exc:
        bar.done()
        err.write(f"{exc}\n")
        return 1


def add_build_command(sub: Any) -> None:
    """`run.py build`'s arguments (called by run.py's parser)."""
    p = sub.add_parser("build", help="build a model on a running service from a folder of people, "
                                     "with progress bars, and download it")
    p.add_argument("people_dir", help="a folder with one folder per person (people/alice/1.jpg ...)")
    p.add_argument("--url", required=True, help="the service, e.g. http://localhost:8080")
    p.add_argument("--api-key", default=os.environ.get("FR_API_KEY"),
                   help="API key (default: the environment's FR_API_KEY)")
    p.add_argument("-o", "--output", help="where to save the bundle (default recognizer-<id>.zip)")
    p.add_argument("--name", help="the model's name (default: the folder's name)")
    p.add_argument("--seed", type=int)
    p.add_argument("--optimize", action="store_true", help="evolve the network (genetic search)")
    p.add_argument("--population", type=int)
    p.add_argument("--generations", type=int)
    p.add_argument("--time-budget", dest="time_budget", type=float, help="seconds of search")
    p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    p.set_defaults(func=lambda args: sys.exit(build(args)))
