"""1:1 verification and JSON input through the real service (issue #18): verify both ways on real photos with
the threshold calibrated at build time; predict and verify from base64, data: URIs, batches and embeddings;
every bad form of each gets a clear JSON error."""
from __future__ import annotations

import base64
import io
import json

import pytest
import requests

from test.conftest import pick_people
from test.stack import Stack, photo_files
from test.test_api_errors import huge_png_header

N_UPLOAD = 5
MAX_PHOTO, MAX_BATCH, MAX_JSON = 300_000, 4, 2_000_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    env = {"FR_MAX_PHOTO_BYTES": str(MAX_PHOTO), "FR_MAX_BATCH": str(MAX_BATCH), "FR_MAX_JSON_BYTES": str(MAX_JSON)}
    with Stack(tmp_path_factory.mktemp("verify"), workers=2, env=env) as s:
        yield s


@pytest.fixture(scope="module")
def people(faces_dir):
    return pick_people(faces_dir, 4, N_UPLOAD + 2)


@pytest.fixture(scope="module")
def model(stack, people) -> dict:
    r = stack.build(photo_files({n: ps[:N_UPLOAD] for n, ps in people.items()}), seed=3)
    assert r.status_code == 202, r.text
    stack.wait_state(r.json()["id"], ("done",), timeout=600)
    report = stack.get(f"/models/{r.json()['id']}/report", timeout=30).json()
    return {"id": r.json()["id"], "manifest": report["manifest"]}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def post(stack, model, what: str, **kw) -> requests.Response:
    return stack.post(f"/models/{model['id']}/{what}", timeout=120, **kw)


def error_of(r: requests.Response, status: int, code: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    body = r.json()
    assert body["status"] == 1 and body["error"]["code"] == code and body["error"]["message"], body
    return body["error"]


# --- verification ------------------------------------------------------------------------------------
def test_the_manifest_holds_the_verification_rule(model, people):
    v = model["manifest"]["verification"]
    assert v["far"] == 0.001 and 0.2 < v["pair_threshold"] < 0.6
    assert len(v["thresholds"]) == len(people)
    assert all(t < v["pair_threshold"] for t in v["thresholds"])  # a template of 5 photos is a better average
    m = v["measured"]
    assert m["genuine_pairs"] > 0 and m["impostor_pairs"] > 0 and 0 <= m["impostor_accept_rate"] <= 0.05


def test_verify_two_photos_both_ways(stack, model, people):
    names = list(people)
    threshold = model["manifest"]["verification"]["pair_threshold"]
    same = 0
    for name in names:
        a, b = people[name][N_UPLOAD:N_UPLOAD + 2]
        r = post(stack, model, "verify",
                 files={"image": ("a.jpg", a.read_bytes()), "image2": ("b.jpg", b.read_bytes())})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["mode"] == "pair" and body["threshold"] == pytest.approx(threshold) and body["far"] == 0.001
        assert body["same"] == (body["distance"] <= body["threshold"])
        assert len(body["face"]["box"]) == 4 and body["face2"]["faces_found"] >= 1
        same += body["same"]
    assert same >= len(names) - 1, f"{same}/{len(names)} same-person pairs accepted"
    for x, y in zip(names, names[1:] + names[:1]):
        r = post(stack, model, "verify", files={"image": ("a.jpg", people[x][N_UPLOAD].read_bytes()),
                                                "image2": ("b.jpg", people[y][N_UPLOAD + 1].read_bytes())})
        assert r.status_code == 200 and r.json()["same"] is False, r.text


def test_verify_a_photo_against_a_person(stack, model, people):
    names = list(people)
    thresholds = dict(zip(model["manifest"]["labels"], model["manifest"]["verification"]["thresholds"]))
    accepted = 0
    for name in names:
        photo = people[name][N_UPLOAD].read_bytes()
        r = post(stack, model, "verify", files={"image": ("a.jpg", photo)}, data={"label": name})
        body = r.json()
        assert r.status_code == 200 and body["mode"] == "label" and body["label"] == name, r.text
        assert body["threshold"] == pytest.approx(thresholds[name])
        accepted += body["same"]
        other = names[(names.index(name) + 1) % len(names)]
        r = post(stack, model, "verify", json={"image": b64(photo), "label": other})
        assert r.status_code == 200 and r.json()["same"] is False and r.json()["label"] == other, r.text
    assert accepted >= len(names) - 1


def test_verify_batches_and_embeddings(stack, model, people):
    name = next(iter(people))
    photos = [p.read_bytes() for p in people[name][N_UPLOAD:N_UPLOAD + 2]]
    r = post(stack, model, "verify", json={"images": [b64(photos[0]), "???", b64(photos[1])], "label": name,
                                           "return_embeddings": True})
    body = r.json()
    assert r.status_code == 200 and body["count"] == 3, r.text
    assert [e["status"] for e in body["results"]] == [0, 1, 0] and [e["index"] for e in body["results"]] == [0, 1, 2]
    assert body["results"][1]["error"]["code"] == "BAD_BASE64"
    e0 = body["results"][0]["embedding"]
    assert len(e0) == 128
    # the same comparison from the embedding alone gives the same answer
    r = post(stack, model, "verify", json={"embedding": e0, "label": name})
    assert r.json()["distance"] == pytest.approx(body["results"][0]["distance"], abs=1e-5)
    r = post(stack, model, "verify", json={"embedding": e0, "embedding2": body["results"][2]["embedding"]})
    assert r.status_code == 200 and r.json()["mode"] == "pair" and r.json()["face"] is None, r.text
    # each photo of a batch against a second photo
    r = post(stack, model, "verify", json={"images": [b64(photos[0])], "image2": b64(photos[1])})
    assert r.status_code == 200 and r.json()["results"][0]["mode"] == "pair" and r.json()["face2"]["box"]


def test_bad_verifications(stack, model, people, faces_dir):
    name = next(iter(people))
    photo = people[name][N_UPLOAD].read_bytes()
    error_of(post(stack, model, "verify", files={"image": ("a.jpg", photo)}), 400, "NO_REFERENCE")
    error_of(post(stack, model, "verify", files={"image": ("a.jpg", photo), "image2": ("b.jpg", photo)},
                  data={"label": name}), 400, "BAD_PARAMETER")
    error_of(post(stack, model, "verify", data={"label": name}), 400, "NO_FILES")
    error_of(post(stack, model, "verify", json={"image": b64(photo), "label": "Nobody"}), 404, "UNKNOWN_PERSON")
    error_of(post(stack, model, "verify", json={"image": b64(photo), "label": 7}), 400, "BAD_LABEL")
    error_of(post(stack, model, "verify", json={"image": b64(photo), "label": "a\nb"}), 400, "BAD_LABEL")
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (120, 120), (100, 100, 100)).save(buf, "JPEG")
    error_of(post(stack, model, "verify", json={"image": b64(buf.getvalue()), "label": name}), 400, "NO_FACE")
    error_of(post(stack, model, "verify", json={"image": b64(photo), "image2": b64(buf.getvalue())}), 400, "NO_FACE")
    error_of(post(stack, model, "verify", json={"image": b64(photo), "embedding2": [0.1] * 127}), 400, "BAD_EMBEDDING")


# --- JSON input to predict ---------------------------------------------------------------------------
def test_predict_from_base64_and_data_uri_answers_as_multipart(stack, model, people):
    name = list(people)[1]
    photo = people[name][N_UPLOAD].read_bytes()
    multipart = post(stack, model, "predict", files={"image": ("p.jpg", photo)}).json()
    plain = post(stack, model, "predict", json={"image": b64(photo)}).json()
    uri = post(stack, model, "predict", json={"image": "data:image/jpeg;base64," + b64(photo)}).json()
    wrapped = base64.encodebytes(photo).decode()  # MIME line breaks
    lines = post(stack, model, "predict", json={"image": wrapped}).json()
    urlsafe = post(stack, model, "predict", json={"image": base64.urlsafe_b64encode(photo).decode().rstrip("=")}).json()
    for body in (plain, uri, lines, urlsafe):
        assert body["faces"] == multipart["faces"] and body["faces"][0]["label"] == name


def test_predict_batch_in_order_with_its_own_errors(stack, model, people):
    names = list(people)
    photos = [people[n][N_UPLOAD].read_bytes() for n in names[:3]]
    items = [b64(photos[0]), "%%%", b64(b"not an image at all"), b64(photos[2])]
    r = post(stack, model, "predict", json={"images": items})
    body = r.json()
    assert r.status_code == 200 and body["count"] == 4, r.text
    assert [e["index"] for e in body["results"]] == [0, 1, 2, 3]
    assert body["results"][0]["faces"][0]["label"] == names[0] and body["results"][3]["faces"][0]["label"] == names[2]
    assert body["results"][1]["error"]["code"] == "BAD_BASE64" and body["results"][2]["error"]["code"] == "NOT_AN_IMAGE"
    # the same batch as multipart parts
    parts = [("images", (f"{i}.jpg", p)) for i, p in enumerate(photos)]
    r = post(stack, model, "predict", files=parts)
    assert [e["faces"][0]["label"] for e in r.json()["results"]] == names[:3]


def test_embeddings_in_and_out(stack, model, people):
    name = list(people)[2]
    photo = people[name][N_UPLOAD].read_bytes()
    body = post(stack, model, "predict", json={"image": b64(photo), "return_embeddings": 1}).json()
    face = body["faces"][0]
    assert len(face["embedding"]) == 128
    again = post(stack, model, "predict", json={"embedding": face["embedding"]}).json()
    assert again["count"] == 1 and again["faces"][0]["box"] is None and again["faces"][0]["quality"] is None
    assert again["faces"][0]["label"] == face["label"] == name
    assert again["faces"][0]["distance"] == pytest.approx(face["distance"], abs=1e-5)
    batch = post(stack, model, "predict", json={"embeddings": [face["embedding"], [0.0] * 128]}).json()
    assert batch["results"][0]["faces"][0]["label"] == name and batch["results"][1]["faces"][0]["label"] == "unknown"
    # the flag as a form field and as a query argument
    r = post(stack, model, "predict", files={"image": ("p.jpg", photo)}, data={"return_embeddings": "1"})
    assert len(r.json()["faces"][0]["embedding"]) == 128
    r = stack.post(f"/models/{model['id']}/predict?return_embeddings=true",
                      files={"image": ("p.jpg", photo)}, timeout=60)
    assert len(r.json()["faces"][0]["embedding"]) == 128
    assert "embedding" not in post(stack, model, "predict", json={"image": b64(photo)}).json()["faces"][0]


def raw_json(stack, model, text: str) -> requests.Response:
    return post(stack, model, "predict", data=text.encode(), headers={"Content-Type": "application/json"})


def test_every_bad_json_input_gets_a_clear_error(stack, model, people):
    photo = people[next(iter(people))][N_UPLOAD].read_bytes()
    e = [0.01] * 128
    cases = [
        (raw_json(stack, model, "{not json"), 400, "BAD_JSON"),
        (raw_json(stack, model, "[1, 2]"), 400, "BAD_JSON"),
        (post(stack, model, "predict", json={}), 400, "NO_FILES"),
        (post(stack, model, "predict", json={"imag": b64(photo)}), 400, "BAD_PARAMETER"),
        (post(stack, model, "predict", json={"image": b64(photo), "images": [b64(photo)]}), 400, "BAD_PARAMETER"),
        (post(stack, model, "predict", json={"image": "abc$def"}), 400, "BAD_BASE64"),
        (post(stack, model, "predict", json={"image": "QUJD="}), 400, "BAD_BASE64"),
        (post(stack, model, "predict", json={"image": ""}), 400, "BAD_BASE64"),
        (post(stack, model, "predict", json={"image": 12}), 400, "BAD_BASE64"),
        (post(stack, model, "predict", json={"image": "data:image/jpeg," + b64(photo)}), 400, "BAD_DATA_URI"),
        (post(stack, model, "predict", json={"image": "data:image/jpeg;base64"}), 400, "BAD_DATA_URI"),
        (post(stack, model, "predict", json={"image": b64(b"hello, I am text")}), 400, "NOT_AN_IMAGE"),
        (post(stack, model, "predict", json={"image": b64(photo[: len(photo) // 2])}), 400, "CORRUPT_IMAGE"),
        (post(stack, model, "predict", json={"image": b64(huge_png_header())}), 400, "IMAGE_TOO_LARGE"),
        (post(stack, model, "predict", json={"image": b64(b"\xff" * (MAX_PHOTO + 10))}), 413, "PHOTO_TOO_LARGE"),
        (post(stack, model, "predict", json={"images": []}), 400, "EMPTY_BATCH"),
        (post(stack, model, "predict", json={"images": b64(photo)}), 400, "BAD_PARAMETER"),
        (post(stack, model, "predict", json={"images": [b64(photo)] * (MAX_BATCH + 1)}), 413, "BATCH_TOO_LARGE"),
        (post(stack, model, "predict", json={"embedding": e[:127]}), 400, "BAD_EMBEDDING"),
        (post(stack, model, "predict", json={"embedding": e + [0.1]}), 400, "BAD_EMBEDDING"),
        (post(stack, model, "predict", json={"embedding": [*e[:5], "0.1", *e[6:]]}), 400, "BAD_EMBEDDING"),
        (post(stack, model, "predict", json={"embedding": [*e[:5], True, *e[6:]]}), 400, "BAD_EMBEDDING"),
        (post(stack, model, "predict", json={"embedding": [*e[:5], 1e9, *e[6:]]}), 400, "BAD_EMBEDDING"),
        (post(stack, model, "predict", json={"embedding": "0.1,0.2"}), 400, "BAD_EMBEDDING"),
        (raw_json(stack, model, '{"embedding": [' + "0.1, " * 127 + "NaN]}"), 400, "BAD_EMBEDDING"),
        (raw_json(stack, model, '{"embedding": [' + "0.1, " * 127 + "Infinity]}"), 400, "BAD_EMBEDDING"),
        (raw_json(stack, model, '{"embedding": [' + "0.1, " * 127 + "-Infinity]}"), 400, "BAD_EMBEDDING"),
        (raw_json(stack, model, '{"embedding": [' + "0.1, " * 127 + "1e999]}"), 400, "BAD_EMBEDDING"),
        (post(stack, model, "predict", json={"image": b64(photo), "threshold": "x"}), 400, "BAD_PARAMETER"),
        (post(stack, model, "predict", json={"image": b64(photo), "return_embeddings": "perhaps"}), 400,
         "BAD_PARAMETER"),
        (raw_json(stack, model, json.dumps({"image": "A" * (MAX_JSON + 10)})), 413, "REQUEST_TOO_LARGE"),
        (post(stack, model, "predict", files={"image": ("p.jpg", photo), "images": ("q.jpg", photo)}), 400,
         "BAD_PARAMETER"),
    ]
    for i, (r, status, code) in enumerate(cases):
        try:
            error_of(r, status, code)
        except AssertionError as exc:
            raise AssertionError(f"case {i}: {exc}") from None
    nan = raw_json(stack, model, '{"embedding": [' + "0.1, " * 127 + "NaN]}").json()
    assert "127" in nan["error"]["message"] and nan["error"]["details"] == {"index": 127}
    # a batch item's error carries its own code; the service is fine afterwards
    r = post(stack, model, "predict", json={"embeddings": [e, e[:3]]})
    assert r.json()["results"][1]["error"]["code"] == "BAD_EMBEDDING"
    assert stack.get("/is_alive", timeout=10).status_code == 200
