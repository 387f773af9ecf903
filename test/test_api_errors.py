"""Bad input over real HTTP: a clear JSON error with the right status, and the service stays up."""
from __future__ import annotations

import io
import stat
import struct
import uuid
import zipfile
import zlib

import pytest
import requests

from test.conftest import pick_people
from test.stack import photo_files

MAX_REQUEST = 8 * 1024 * 1024
# the module's `stack` (conftest.py); no predictions here: each process loads its models when it needs them
STACK = {"workers": 1, "env": {"FR_MAX_REQUEST_BYTES": str(MAX_REQUEST)}, "warm_up": False}


@pytest.fixture(scope="module")
def good(faces_dir):
    """Two people x 3 real photos: a valid upload to mix bad files into."""
    return photo_files(pick_people(faces_dir, 2, 3))


def error_of(r: requests.Response, http_status: int, code: str) -> dict:
    assert r.status_code == http_status, (r.status_code, r.text[:500])
    body = r.json()
    assert body["status"] == 1 and body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


def huge_png_header(width: int = 50_000, height: int = 50_000) -> bytes:
    """A tiny PNG that claims to be width x height: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def zip_of(entries: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if name in symlinks:
                info.create_system = 3
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, data)
    return buf.getvalue()


def post_archive(stack, data: bytes) -> requests.Response:
    return stack.post("/build_recognizer", files={"archive": ("a.zip", data)}, timeout=60)


def test_no_files(stack):
    error_of(stack.post("/build_recognizer", timeout=10), 400, "NO_FILES")
    error_of(stack.post("/build_recognizer", files={"photo": ("a/b.jpg", b"x")}, timeout=10),
             400, "NO_FILES")


def test_photo_without_person_folder(stack, good):
    error_of(stack.build(good + [("lonely.jpg", good[0][1])]), 400, "MISSING_LABEL")


def test_non_image_file(stack, good):
    err = error_of(stack.build(good + [("alice/notes.jpg", b"just some text, not a photo")]), 400, "NOT_AN_IMAGE")
    assert err["details"]["files"][0]["file"] == "alice/notes.jpg"


def test_truncated_jpeg(stack, good):
    _name, data = good[0]
    error_of(stack.build(good + [("alice/cut.jpg", data[: len(data) // 2])]), 400, "CORRUPT_IMAGE")


def test_decompression_bomb_image(stack, good):
    err = error_of(stack.build(good + [("alice/bomb.png", huge_png_header())]), 400, "IMAGE_TOO_LARGE")
    assert "50000x50000" in err["message"]


def test_request_over_the_size_limit(stack, good):
    big = [("alice/big.jpg", b"\xff" * (MAX_REQUEST + 1024))]
    error_of(stack.build(good + big), 413, "REQUEST_TOO_LARGE")


def test_zip_bomb(stack):
    bomb = zip_of({"alice/a.jpg": b"\0" * (60 * 1024 * 1024), "bob/b.jpg": b"\0" * 1024})
    assert len(bomb) < MAX_REQUEST
    error_of(post_archive(stack, bomb), 413, "ZIP_BOMB")


@pytest.mark.parametrize("name", ["../evil/x.jpg", "alice/../../x.jpg", "/etc/alice/x.jpg", "C:\\alice\\x.jpg"])
def test_zip_path_tricks(stack, good, name):
    entries = {n: d for n, d in good}
    entries[name] = good[0][1]
    error_of(post_archive(stack, zip_of(entries)), 400, "UNSAFE_ARCHIVE")


def test_zip_symlink(stack, good):
    entries = {n: d for n, d in good}
    entries["alice/link.jpg"] = b"/etc/passwd"
    error_of(post_archive(stack, zip_of(entries, symlinks=("alice/link.jpg",))), 400, "UNSAFE_ARCHIVE")


def test_not_a_zip(stack):
    error_of(post_archive(stack, b"PK\x03\x04 but not really a zip"), 400, "BAD_ARCHIVE")


def test_only_one_person(stack, good):
    err = error_of(stack.build([f for f in good if f[0].startswith(good[0][0].split("/")[0])]),
                   400, "TOO_FEW_PEOPLE")
    assert "at least 2" in err["message"]


@pytest.mark.parametrize("field,value", [("optimize", "maybe"), ("seed", "abc"), ("seed", "-1"),
                                         ("name", "x" * 1000)])
def test_bad_parameters(stack, good, field, value):
    error_of(stack.build(good, **{field: value}), 400, "BAD_PARAMETER")


def test_unknown_and_malformed_ids(stack):
    unknown = str(uuid.uuid4())
    error_of(stack.get(f"/is_available/{unknown}", timeout=10), 404, "NOT_FOUND")
    error_of(stack.get(f"/models/{unknown}", timeout=10), 404, "NOT_FOUND")
    for bad in ("123", "not-a-uuid", "../../etc/passwd", str(uuid.uuid1())):
        error_of(stack.get("/is_available", params={"id": bad}, timeout=10), 400, "BAD_ID")
    error_of(stack.get("/models/xyz", timeout=10), 400, "BAD_ID")
    error_of(stack.get("/is_available", timeout=10), 400, "BAD_ID")


def test_unknown_route_and_method_are_json(stack):
    error_of(stack.get("/nope", timeout=10), 404, "NOT_FOUND")
    error_of(stack.get("/build_recognizer", timeout=10), 405, "METHOD_NOT_ALLOWED")


def _blank_jpeg(seed: int) -> bytes:
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(100, 140, (120, 160, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_no_face_in_any_photo_fails_the_job_with_the_files_listed(stack):
    files = [(f"{p}/{i}.jpg", _blank_jpeg(10 * k + i)) for k, p in enumerate(("alice", "bob")) for i in range(3)]
    r = stack.build(files)
    assert r.status_code == 202, r.text
    st = stack.wait_state(r.json()["id"], ("failed",), timeout=120)
    assert st["error"]["code"] == "NO_FACE_FOUND"
    listed = {f["file"]: f["reason"] for f in st["error"]["details"]["files"]}
    assert listed == {name: "no_face" for name, _ in files}
    err = error_of(stack.get(f"/models/{r.json()['id']}", timeout=10), 409, "BUILD_FAILED")
    assert err["details"]["error"]["code"] == "NO_FACE_FOUND"


def test_person_with_few_usable_photos_is_in_the_model_and_the_bad_photo_reported(stack, faces_dir):
    people = pick_people(faces_dir, 3, 4)
    names = list(people)
    files = photo_files({names[0]: people[names[0]], names[1]: people[names[1]]})
    files += [(f"{names[2]}/{p.name}", p.read_bytes()) for p in people[names[2]][:2]]
    files += [(f"{names[2]}/blank.jpg", _blank_jpeg(99))]
    r = stack.build(files)
    assert r.status_code == 202, r.text
    stack.wait_state(r.json()["id"], ("done",), timeout=180)
    manifest = zipfile.ZipFile(io.BytesIO(stack.get(f"/models/{r.json()['id']}", timeout=30)
                                          .content)).read("manifest.json")
    import json
    report = {p["label"]: p for p in json.loads(manifest)["people"]}
    assert report[names[2]]["in_model"] is True and report[names[2]]["used"] == 2
    assert report[names[2]]["protocol"] == "held-out photos" and "excluded" not in report[names[2]]
    assert report[names[2]]["skipped"] == [{"file": f"{names[2]}/blank.jpg", "reason": "no_face",
                                            "detail": "no face found"}]
    assert report[names[0]]["in_model"] and report[names[1]]["in_model"]


def test_too_few_people_left_after_extraction_fails_clearly(stack, faces_dir):
    people = pick_people(faces_dir, 2, 3)
    a, b = list(people)
    files = photo_files({a: people[a]}) + [(f"{b}/{i}.jpg", _blank_jpeg(200 + i)) for i in range(3)]
    r = stack.build(files)
    assert r.status_code == 202
    st = stack.wait_state(r.json()["id"], ("failed",), timeout=120)
    assert st["error"]["code"] == "TOO_FEW_PEOPLE"


def test_service_still_alive_after_all_that(stack):
    r = stack.get("/is_alive", timeout=10)
    assert r.status_code == 200 and r.json()["alive"] is True
