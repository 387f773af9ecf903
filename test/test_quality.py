"""Enrolment quality: each face's size, sharpness and pose (preprocessor/quality.py), on real photos."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from constants import Settings
from features.extract import FeatureCache, cached_photo_features, find_faces, photo_features
from preprocessor.faces import Box
from preprocessor.images import decode_image
from preprocessor.quality import BLURRED, SMALL, TURNED, assess, measure, problems

SETTINGS = Settings.from_env()


@pytest.fixture(scope="module")
def obama(faces_dir) -> np.ndarray:
    return decode_image((faces_dir / "wild" / "obama.jpg").read_bytes(), SETTINGS.max_image_pixels)


def quality_of(image: np.ndarray) -> dict:
    (face,), _ = find_faces(image, SETTINGS, 1)
    return measure(face.box, face.points, face.chip)


def test_a_clear_frontal_portrait_has_no_problem(obama):
    q = quality_of(obama)
    assert set(q) == {"face_px", "sharpness", "yaw", "roll"}
    assert q["face_px"] > 100 and q["sharpness"] > SETTINGS.quality_min_sharpness
    assert abs(q["yaw"]) < 0.15 and abs(q["roll"]) < 10
    assert assess(q, SETTINGS) == []


def test_blur_lowers_sharpness_and_size_follows_the_photo(obama):
    sharp = quality_of(obama)
    blurred = quality_of(cv2.GaussianBlur(obama, (0, 0), 8))
    assert blurred["sharpness"] < sharp["sharpness"] / 3
    assert BLURRED in assess(blurred, SETTINGS) and BLURRED not in assess(sharp, SETTINGS)
    small = quality_of(cv2.resize(obama, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA))
    assert small["face_px"] == pytest.approx(sharp["face_px"] / 4, rel=0.2)


def test_a_mirrored_face_turns_and_tilts_the_other_way(faces_dir):
    # a face turned to one side (LFW): the mirror image is turned as much to the other
    image = decode_image((faces_dir / "lfw62" / "Tony_Blair" / "Tony_Blair_0001.jpg").read_bytes(),
                         SETTINGS.max_image_pixels)
    q, m = quality_of(image), quality_of(np.ascontiguousarray(image[:, ::-1]))
    assert abs(q["yaw"]) > 0.1 and np.sign(m["yaw"]) == -np.sign(q["yaw"])
    assert abs(m["yaw"]) == pytest.approx(abs(q["yaw"]), rel=0.3)  # the landmark model is not quite symmetric
    assert m["roll"] == pytest.approx(-q["roll"], abs=2)


def test_problems_by_the_limits():
    limits = dict(min_face_px=40, min_sharpness=10, max_yaw=0.3)
    good = {"face_px": 80, "sharpness": 50.0, "yaw": -0.1, "roll": 2.0}
    assert problems(good, **limits) == []
    assert problems({**good, "face_px": 39}, **limits) == [SMALL]
    assert problems({**good, "sharpness": 9.9, "yaw": 0.31}, **limits) == [BLURRED, TURNED]
    assert problems({**good, "yaw": -0.31}, **limits) == [TURNED]
    assert problems({**good, "yaw": None}, **limits) == [TURNED]  # degenerate landmarks: no pose
    assert problems(None, **limits) == [] and problems({}, **limits) == []
    # degenerate landmarks (both eyes on one point) give nan, not an error
    q = measure(Box(0, 0, 50, 50), np.zeros((5, 2)), np.zeros((150, 150, 3), np.uint8))
    assert q["yaw"] is None and q["roll"] is None and q["face_px"] == 50 and q["sharpness"] == 0


def test_every_face_of_a_training_photo_has_its_quality_and_the_cache_keeps_it(faces_dir, tmp_path):
    data = (faces_dir / "wild" / "two_people.jpg").read_bytes()
    feats = photo_features(data, SETTINGS)
    assert feats.faces == 2 and feats.quality and feats.others[0]["quality"]
    assert feats.quality["face_px"] >= feats.others[0]["quality"]["face_px"]  # largest first
    cache = FeatureCache(tmp_path, SETTINGS)
    first, _ = cached_photo_features(data, SETTINGS, cache)
    again, was_cached = cached_photo_features(data, SETTINGS, cache)
    assert was_cached and again == first == feats


def test_settings_refuse_an_unknown_policy():
    with pytest.raises(ValueError, match="FR_QUALITY_POLICY"):
        Settings(quality_policy="drop-all")
