"""Photos and embeddings in JSON (app/web/probes.py), and the broker's schemas of DERIVE and ERASE
(app/wire/protocol.py): every malformed form refused with its own code."""
from __future__ import annotations

import base64
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.web.errors import ApiError
from app.web.probes import decode_image_field, parse_embedding, probes_from_json
from app.wire import protocol as p
from constants import Settings
from preprocessor.errors import InputError

S = Settings.from_env(max_photo_bytes=50_000, max_batch=3)


@pytest.fixture(scope="module")
def photo(faces_dir) -> bytes:
    return next((faces_dir / "lfw62").glob("*/*.jpg")).read_bytes()


def code_of(fn, *args) -> str:
    with pytest.raises((InputError, ApiError)) as exc:
        fn(*args)
    return exc.value.code


def test_base64_forms_all_give_the_photo(photo):
    b = base64.b64encode(photo).decode()
    for text in (b, b.rstrip("="), base64.urlsafe_b64encode(photo).decode(), base64.encodebytes(photo).decode(),
                 "data:image/jpeg;base64," + b, "DATA:image/png;BASE64," + b, " " + b + "\n"):
        assert decode_image_field(text, S) == photo


@pytest.mark.parametrize(("value", "code"), [
    (None, "BAD_BASE64"), (3, "BAD_BASE64"), ("", "BAD_BASE64"), ("a$b=", "BAD_BASE64"), ("QUJD=", "BAD_BASE64"),
    ("Q", "BAD_BASE64"), ("é" * 8, "BAD_BASE64"), ("data:,abc", "BAD_DATA_URI"),
    ("data:image/png;base64", "BAD_DATA_URI"), ("data:image/png;charset=x,QUJD", "BAD_DATA_URI"),
    (base64.b64encode(b"text, not a photo").decode(), "NOT_AN_IMAGE"),
    ("A" * 80_000, "PHOTO_TOO_LARGE"),
])
def test_bad_photos(value, code):
    assert code_of(decode_image_field, value, S) == code


@given(st.text(max_size=200))
def test_any_text_is_a_photo_or_a_clear_input_error(text):
    try:
        decode_image_field(text, S)
    except InputError as exc:
        assert exc.code in ("BAD_BASE64", "BAD_DATA_URI", "NOT_AN_IMAGE", "CORRUPT_IMAGE", "UNSUPPORTED_FORMAT",
                            "PHOTO_TOO_LARGE", "IMAGE_TOO_LARGE")


def test_embeddings():
    e = [0.05] * 128
    assert parse_embedding(e).shape == (128,) and parse_embedding([0] * 128).dtype.name == "float32"
    for bad in (e[:-1], [*e, 0.1], "0.1", {"0": 1}, [*e[:-1], "0.1"], [*e[:-1], None], [*e[:-1], True],
                [*e[:-1], math.nan], [*e[:-1], math.inf], [*e[:-1], -math.inf], [*e[:-1], 1e6], [*e[:-1], [0.1]]):
        assert code_of(parse_embedding, bad) == "BAD_EMBEDDING"


def test_a_body_names_one_kind_of_probe_and_batches_keep_their_errors(photo):
    b = base64.b64encode(photo).decode()
    probes, batch = probes_from_json({"image": b}, S)
    assert not batch and probes[0].image == photo
    probes, batch = probes_from_json({"images": [b, "!", b]}, S)
    assert batch and [x.error.code if x.error else None for x in probes] == [None, "BAD_BASE64", None]
    probes, _ = probes_from_json({"embeddings": [[0.1] * 128, [0.1]]}, S)
    assert probes[0].embedding is not None and probes[1].error.code == "BAD_EMBEDDING"
    assert code_of(probes_from_json, {}, S) == "NO_FILES"
    assert code_of(probes_from_json, {"image": b, "embedding": [0.1] * 128}, S) == "BAD_PARAMETER"
    assert code_of(probes_from_json, {"images": []}, S) == "EMPTY_BATCH"
    assert code_of(probes_from_json, {"images": [b] * 4}, S) == "BATCH_TOO_LARGE"
    assert code_of(probes_from_json, {"images": b}, S) == "BAD_PARAMETER"
    assert code_of(probes_from_json, {"image": "!"}, S) == "BAD_BASE64"  # a single probe's error is the answer


# --- the broker's schemas ------------------------------------------------------------------------------
ID, PARENT = "0d5c0a3e-5a4b-4c1e-9d7e-2f0a7c1b9e11", "1e6d1b4f-6b5c-4d2f-8e8f-3a1b2c3d4e5f"
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def derive(header: dict, blobs=()) -> list[bytes]:
    return p.pack(p.DERIVE, header, list(blobs))


def test_derive_and_erase_messages_pass_their_schema():
    good = {"id": ID, "parent": PARENT, "options": {"seed": 1}, "files": [{"label": "ann", "filename": "ann/1.jpg"}],
            "remove": ["bob"], "callback": {"url": "https://h.example/x", "secret": SECRET}}
    command, header, blobs = p.parse_front(derive(good, [b"jpeg"]), S)
    assert command == p.DERIVE and header["parent"] == PARENT and blobs == [b"jpeg"]
    assert p.parse_front(derive({**good, "files": []}), S)[0] == p.DERIVE  # a removal alone
    assert p.parse_front(derive({**good, "tenant": "team-a"}, [b"jpeg"]), S)[1]["tenant"] == "team-a"
    assert p.parse_front(p.pack(p.ERASE, {"label": "bob", "tenant": None}), S)[1]["label"] == "bob"
    assert p.parse_front(p.pack(p.ERASE, {"label": "bob", "tenant": "team-a"}), S)[1]["tenant"] == "team-a"


@pytest.mark.parametrize("change", [
    {"parent": "../x"}, {"parent": None}, {"remove": "bob"}, {"remove": ["b\nob"]}, {"remove": [" bob"]},
    {"remove": [], "files": []}, {"options": {"parent": PARENT}}, {"options": {"inherited": 3}},
    {"callback": {"url": "ftp://h/x", "secret": SECRET}}, {"callback": {"url": "https://h/x", "secret": "abc"}},
    {"callback": {"url": "https://h/x"}}, {"extra": 1}, {"id": "nope"}, {"tenant": "Team A"}, {"tenant": 7},
])
def test_bad_derive_messages_are_refused(change):
    good = {"id": ID, "parent": PARENT, "options": {}, "files": [{"label": "ann", "filename": "ann/1.jpg"}],
            "remove": []}
    blobs = [b"jpeg"] * len({**good, **change}["files"])
    with pytest.raises(p.ProtocolError):
        p.parse_front(derive({**good, **change}, blobs), S)


@pytest.mark.parametrize("header", [{}, {"label": "../x"}, {"label": "bob", "tenant": 3}, {"label": "bob", "x": 1},
                                    {"label": ""}, {"label": "a" * 101}, {"label": "bob"},  # whose: always said
                                    {"label": "bob", "tenant": "../acme"}, {"label": "bob", "tenant": "Acme"}])
def test_bad_erase_messages_are_refused(header):
    with pytest.raises(p.ProtocolError):
        p.parse_front(p.pack(p.ERASE, header), S)
