"""1:1 verification and the model card, offline (issue #18): thresholds from the stranger model, measured
at build time on real LFW embeddings, the bundle's MODEL_CARD.md, a recognizer's verify answers on real photos,
and older bundles calibrated when loaded."""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.worker.tasks import train_bundle
from constants import Settings
from features.extract import photo_features
from modelization.bundle import read_manifest
from modelization.card import licences, model_card
from modelization.openset import (
    calibrate_verification,
    pair_distance,
    stranger_quantile,
    verification_thresholds,
)
from modelization.recognizer import load_bundle
from test.conftest import pick_people

N_UPLOAD = 4


@given(st.floats(1e-5, 0.03), st.integers(1, 50))
def test_verification_thresholds_follow_the_stranger_model(far, photos):
    pair, per_person = verification_thresholds(np.array([photos, 1]), far)
    assert pair == pytest.approx(float(stranger_quantile(far, 1)))
    assert per_person[1] == pytest.approx(pair)  # a person with one photo is a face
    assert per_person[0] <= pair + 1e-12  # a template of more photos: stricter
    assert verification_thresholds(np.array([photos]), far * 0.5)[0] < pair  # a lower rate: stricter


def test_pair_distance_is_between_unit_vectors():
    a = np.array([[3.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.5, 0.0], [-2.0, -2.0]])
    assert pair_distance(a, b) == pytest.approx([0.0, 2.0])


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings.from_env(data_dir=tmp_path_factory.mktemp("verification"))


@pytest.fixture(scope="module")
def people(faces_dir):
    return pick_people(faces_dir, 4, N_UPLOAD + 2)


@pytest.fixture(scope="module")
def bundle(people, settings) -> bytes:
    files, feats = [], []
    for name, paths in people.items():
        for p in paths[:N_UPLOAD]:
            files.append({"label": name, "filename": f"{name}/{p.name}"})
            feats.append(asdict(photo_features(p.read_bytes(), settings)))
    return train_bundle({"id": "v1", "name": "team", "options": {"seed": 7}}, files, feats, settings, lambda *a: None)


def test_the_manifest_records_the_rule_and_what_it_measured(bundle, people, settings):
    m = read_manifest(bundle)
    v = m["verification"]
    assert v["far"] == settings.verify_far and v["score"] == "template"
    expected = calibrate_verification(np.repeat(np.arange(len(people)), N_UPLOAD), len(people), settings.verify_far)
    assert v["pair_threshold"] == expected["pair_threshold"] and v["thresholds"] == expected["thresholds"]
    measured = v["measured"]
    assert measured["genuine_pairs"] > 0 and measured["impostor_pairs"] > measured["genuine_pairs"]
    assert 0.5 <= measured["genuine_accept_rate"] <= 1 and measured["impostor_accept_rate"] <= 0.05
    assert m["parent"] is None and m["derivation"] is None and m["input"]["features_inherited"] == 0


def test_a_recognizer_verifies_real_photos(bundle, people, settings):
    r = load_bundle(bundle, settings)
    names = list(people)
    same = other = 0
    for k, name in enumerate(names):
        box, x, quality, found = r.largest_face(people[name][N_UPLOAD].read_bytes())
        _, y, _, _ = r.largest_face(people[name][N_UPLOAD + 1].read_bytes())
        assert box is not None and found >= 1 and set(quality) >= {"face_px", "problems"}
        pair = r.verify_pair(x, y)
        assert pair["threshold"] == r.verification["pair_threshold"] and pair["same"] == (
            pair["distance"] <= pair["threshold"])
        same += pair["same"] + r.verify_label(x, name)["same"]
        other += r.verify_label(x, names[(k + 1) % len(names)])["same"]
    assert same >= 2 * len(names) - 1 and other == 0
    with pytest.raises(KeyError):
        r.verify_label(x, "Nobody")


def test_a_bundle_from_before_verification_is_calibrated_when_loaded(bundle, settings):
    src = zipfile.ZipFile(io.BytesIO(bundle))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name in src.namelist():
            data = src.read(name)
            if name == "manifest.json":
                m = json.loads(data)
                del m["verification"]
                data = json.dumps(m).encode()
            zf.writestr(name, data)
    old = load_bundle(out.getvalue(), settings)
    new = load_bundle(bundle, settings)
    assert "note" in old.verification
    assert old.verification["pair_threshold"] == new.verification["pair_threshold"]
    assert old.verification["thresholds"] == new.verification["thresholds"]


def test_the_card_is_in_the_bundle_and_says_what_it_must(bundle, people):
    m = read_manifest(bundle)
    with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
        card = zf.read("MODEL_CARD.md").decode()
    assert card == model_card(m)
    for needle in ("team", "v1", "seed 7", "Boost Software License", "CC0 1.0 Universal", "FR_TARGET_FAR",
                   "FR_VERIFY_FAR", "Not intended", "DELETE /people/<label>", m["service_version"]):
        assert needle in card, needle
    assert all(f"| {name} | {N_UPLOAD} | {N_UPLOAD} |" in card for name in people)


def test_the_licences_come_from_the_installed_packages():
    lic = licences()
    assert lic["dlib"]["licence"] == "Boost Software License" and lic["dlib"]["version"].startswith("20.")
    assert lic["models"]["licence"] == "CC0 1.0 Universal" and lic["models"]["version"] == "0.3.0"


def test_labels_and_names_are_text_in_the_card_not_html_or_markdown():
    """A label is the client's choice: in MODEL_CARD.md it stays text in any viewer that renders the card
    (issue #26: `<img src=x onerror=alert(1)>` was HTML there)."""
    evil = ["<img src=x onerror=alert(1)>", "[click](javascript:alert(1))", "**bold** _it_ `code`", "a|b\nc",
            "<script>alert(1)</script>", "Jo & <b>Ann</b>"]
    manifest = {"name": "<h1>x</h1> ![p](http://e/x.png)", "model_id": "m",
                "people": [{"label": lab, "in_model": True, "photos": 1, "used": 1} for lab in evil[:4]]
                + [{"label": lab, "in_model": False, "excluded": "<i>none</i>"} for lab in evil[4:]]}
    card = model_card(manifest, {})
    for raw in evil + ["<h1>", "<i>", "![p]"]:
        assert raw not in card, raw
    assert "<" not in card.replace("`DELETE /people/<label>`", "") and "](" not in card.replace("\\](", "")
    assert "&lt;img src=x onerror=alert\\(1\\)&gt;" in card and "Jo &amp; &lt;b&gt;Ann&lt;/b&gt;" in card
    assert "\\*\\*bold\\*\\* \\_it\\_ \\`code\\`" in card and "| a\\|b c |" in card
    assert "George_W_Bush" in model_card({"people": [{"label": "George_W_Bush", "in_model": True}]}, {})
