"""End to end on the real stack: uWSGI + ZeroMQ broker + 2 worker processes, real photos."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from constants import Settings
from test.conftest import pick_people, side_by_side
from test.stack import gone, photo_files

N_PEOPLE, N_UPLOAD, N_HELD_OUT = 5, 6, 3


@pytest.fixture(scope="module")
def people(faces_dir):
    return pick_people(faces_dir, N_PEOPLE, N_UPLOAD + N_HELD_OUT)


def test_is_alive_reports_workers(stack):
    r = stack.get("/is_alive", timeout=10)
    body = r.json()
    assert r.status_code == 200
    assert body["status"] == 0 and body["alive"] is True and body["workers"] == 2
    assert body["queued"] == 0 and body["version"]
    assert body["warming"] in (0, 1, 2)


def test_each_process_logs_to_its_own_file(stack):
    """Two processes rotating one loguru file would rename each other's: one writer per file."""
    stack.wait_alive(2, timeout=120, warm=True)
    stack.get("/is_alive", timeout=10)
    logs = {p.name for p in (stack.data_dir / "var" / "logs").glob("*.log")}
    assert {"broker.log", "worker-1.log", "worker-2.log", "web-1.log", "web-2.log"} <= logs, logs
    assert not {"worker.log", "web.log"} & logs, logs


def test_workers_warm_up_in_the_background(stack):
    """Workers load dlib's models and Keras at start (FR_WARM_UP), then report warming 0."""
    body = stack.wait_alive(2, timeout=120, warm=True)
    assert body["warming"] == 0
    logs = stack.data_dir / "var" / "logs"
    for slot in (1, 2):
        assert "worker warmed up in" in (logs / f"worker-{slot}.log").read_text()


def test_build_poll_download_and_recognize_held_out_photos(stack, people, tmp_path):
    upload = {p: paths[:N_UPLOAD] for p, paths in people.items()}
    r = stack.build(photo_files(upload), name="e2e", seed="7")
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == 0 and len(body["id"]) == 36 and body["photos"] == N_PEOPLE * N_UPLOAD

    job_id = body["id"]
    first = stack.status(job_id)
    assert first["state"] in ("queued", "extracting", "training")
    assert first["available"] == 0 and first["error"] is None
    assert set(first["progress"]) == {"stage", "done", "total"}

    # not ready yet -> 409 (the build takes seconds; the check runs right after the upload)
    if first["state"] != "done":
        early = stack.get(f"/models/{job_id}", timeout=10)
        assert early.status_code == 409 and early.json()["error"]["code"] == "NOT_READY"

    done = stack.wait_state(job_id, ("done",))
    assert done["available"] == 1 and done["progress"]["stage"] == "done"
    assert stack.get(f"/is_available?id={job_id}", timeout=10).json()["state"] == "done"

    r = stack.get(f"/models/{job_id}", timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip"
    bundle = tmp_path / "model.zip"
    bundle.write_bytes(r.content)
    with zipfile.ZipFile(bundle) as zf:
        assert {"model.keras", "labels.json", "manifest.json"} <= set(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["model_id"] == job_id and manifest["name"] == "e2e"
    assert sorted(manifest["labels"]) == sorted(people)
    assert manifest["split"]["seed"] == 7
    assert set(manifest["pipeline"]["models"]) == {"shape_predictor_5_face_landmarks.dat",
                                                  "dlib_face_recognition_resnet_model_v1.dat"}
    assert all(len(h) == 64 for h in manifest["pipeline"]["models"].values())
    assert manifest["pipeline"]["embedder"] == "onnx"  # the default
    assert {p["label"]: p["photos"] for p in manifest["people"]} == {p: N_UPLOAD for p in people}
    for key in ("test_accuracy", "balanced_accuracy"):
        assert 0.0 <= manifest["metrics"][key] <= 1.0
    # uploads are deleted once the model is built (default)
    assert gone(stack.data_dir / "var" / "uploads" / job_id)
    assert (stack.data_dir / "dumps" / job_id / "model.zip").exists()

    # The downloaded bundle, used offline, names photos it never saw.
    from features.extract import photo_features
    from modelization.recognizer import load_bundle
    recognizer = load_bundle(bundle)
    labels = recognizer.labels
    settings = Settings.from_env()
    truth, vectors = [], []
    for person, paths in people.items():
        for path in paths[N_UPLOAD:]:
            feats = photo_features(path.read_bytes(), settings)
            if feats.usable:
                truth.append(person)
                vectors.append(feats.embedding)
    pred = [labels[i] for i in np.argmax(recognizer.probabilities(np.asarray(vectors, np.float32)), axis=1)]
    correct = sum(p == t for p, t in zip(pred, truth))
    assert len(truth) >= N_PEOPLE * N_HELD_OUT - 1
    assert correct >= len(truth) - 1, list(zip(truth, pred))


def test_zip_archive_upload_and_rebuild_uses_the_feature_cache(stack, people):
    # photos no earlier build of this module uploaded: the first build extracts every one of them
    # (a build served from the cache may record ~0 s, rounded, of extraction)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for person, paths in people.items():
            for p in paths[N_UPLOAD:N_UPLOAD + 3]:
                zf.writestr(f"team/{person}/{p.name}", p.read_bytes())
        zf.writestr("team/README.txt", "not a photo")
        zf.writestr("__MACOSX/._junk", "resource fork")
    for attempt in range(2):
        r = stack.post("/build_recognizer", files={"archive": ("team.zip", buf.getvalue())},
                          timeout=60)
        assert r.status_code == 202, r.text
        assert r.json()["photos"] == N_PEOPLE * 3 and r.json()["ignored"] == ["team/README.txt"]
        stack.wait_state(r.json()["id"], ("done",))
        manifest = json.loads(zipfile.ZipFile(io.BytesIO(
            stack.get(f"/models/{r.json()['id']}", timeout=30).content)).read("manifest.json"))
        if attempt == 0:  # the workers' time on the photos is recorded
            assert manifest["input"]["extraction_seconds"] > 0
        if attempt == 1:  # second build of the same photos: every embedding from the cache
            assert manifest["input"]["features_cached"] == N_PEOPLE * 3


def test_group_photo_without_the_person_is_skipped_and_recorded(stack, people, faces_dir):
    """A two-face photo labelled as someone who is in neither face (features/select.py)."""
    files = photo_files({p: paths[:3] for p, paths in list(people.items())[:2]})
    (first, photos), (second, theirs) = list(people.items())[:2]
    files.append((f"{first}/group.jpg", (faces_dir / "wild" / "two_people.jpg").read_bytes()))
    # the second person, smaller, beside a larger photo of the first: the second person's face is used
    files.append((f"{second}/pair.jpg", side_by_side(theirs[3], photos[4])))
    r = stack.build(files)
    assert r.status_code == 202, r.text
    stack.wait_state(r.json()["id"], ("done",))
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(
        stack.get(f"/models/{r.json()['id']}", timeout=30).content)).read("manifest.json"))
    person = next(p for p in manifest["people"] if p["label"] == next(iter(people)))
    # the group photo is skipped, never used; an LFW crop may show a second person at its edge (BlazeFace
    # finds them): listed, with the crop's own, largest face used
    assert person["used"] == 3 and all(e["file"] != f"{first}/group.jpg" and e["face_used"] == 0
                                       for e in person["several_faces"]), person["several_faces"]
    assert [(s["file"], s["reason"]) for s in person["skipped"]] == [
        (f"{next(iter(people))}/group.jpg", "no_matching_face")]
    assert "2 faces" in person["skipped"][0]["detail"]
    assert manifest["input"]["skipped_by_reason"] == {"no_matching_face": 1}
    pair = next(p for p in manifest["people"] if p["label"] == second)["several_faces"]
    (composed,) = [e for e in pair if e["file"] == f"{second}/pair.jpg"]
    assert composed["faces"] >= 2 and composed["face_used"] >= 1  # not the largest face: the first person's
    assert composed["box"][0] >= 340 and composed["distance"] < 0.6
    assert all(e["face_used"] == 0 for e in pair if e is not composed)
