"""Face detection (dlib HOG) and alignment on real photos."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from preprocessor.faces import Box, align_face, detect_faces, largest
from preprocessor.images import decode_image
from test.conftest import pick_people

LIMIT = 40_000_000


def load(path) -> np.ndarray:
    return decode_image(path.read_bytes(), LIMIT)


@pytest.fixture(scope="module")
def wild(faces_dir):
    cache = {}

    def get(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = load(faces_dir / "wild" / name)
        return cache[name]
    return get


def iou(a: Box, b: Box) -> float:
    inter = Box(max(a.left, b.left), max(a.top, b.top), min(a.right, b.right), min(a.bottom, b.bottom))
    i = inter.area if inter.right > inter.left and inter.bottom > inter.top else 0
    return i / (a.area + b.area - i)


def inside(box: Box, image: np.ndarray) -> bool:
    h, w = image.shape[:2]
    return 0 <= box.left < box.right <= w and 0 <= box.top < box.bottom <= h


# (obama_and_biden.jpg is left out: besides the two men it shows a child's face, bottom right)
@pytest.mark.parametrize("name, n", [("two_people.jpg", 2), ("obama.jpg", 1), ("biden.jpg", 1),
                                     ("alex-lacamoire.png", 1)])
def test_face_counts_on_wild_photos(wild, name, n):
    image = wild(name)
    boxes = detect_faces(image)
    assert len(boxes) == n
    assert all(inside(b, image) for b in boxes)
    assert all(b.area >= 40 * 40 for b in boxes)


def test_two_faces_are_distinct(wild):
    a, b = detect_faces(wild("two_people.jpg"))
    assert iou(a, b) == 0


@pytest.mark.parametrize("kind", ["black", "gray", "noise"])
def test_no_face_in_blank_or_noise(kind):
    rng = np.random.default_rng(0)
    image = {"black": np.zeros((400, 300, 3), np.uint8),
             "gray": np.full((400, 300, 3), 128, np.uint8),
             "noise": rng.integers(0, 256, (400, 300, 3), dtype=np.uint8)}[kind]
    assert detect_faces(image) == []


def test_big_photo_boxes_are_mapped_back_to_full_size(wild):
    image = wild("obama-1080p.jpg")
    h, w = image.shape[:2]
    assert (w, h) == (1920, 1080)
    (full,) = detect_faces(image, max_side=4000)
    (small,) = detect_faces(image, max_side=800)
    assert inside(small, image)
    assert small.right > 800  # would be impossible if the box were left in the downscaled frame
    assert iou(full, small) > 0.8
    # exactly the downscaled detection, scaled back by 1920/800
    scale = 800 / 1920
    resized = cv2.resize(image, (800, round(h * scale)), interpolation=cv2.INTER_AREA)
    (ref,) = detect_faces(resized, max_side=4000, upsample_max_side=0)
    mapped = Box(*(int(v / scale) for v in ref.as_list()))
    assert iou(mapped, small) > 0.95


def test_boxes_are_clipped_to_the_image(wild):
    import dlib
    image = wild("obama.jpg")
    (box,) = detect_faces(image)
    # cut the photo just above the eyes: dlib then reports a box that starts above the crop
    crop = np.ascontiguousarray(image[box.top + (box.bottom - box.top) // 3 - 40:])
    raw = dlib.get_frontal_face_detector()(crop, 0)
    assert len(raw) == 1 and raw[0].top() < 0  # the premise
    boxes = detect_faces(crop)
    assert len(boxes) == 1
    assert inside(boxes[0], crop) and boxes[0].top == 0
    assert (boxes[0].left, boxes[0].right, boxes[0].bottom) == (raw[0].left(), raw[0].right(), raw[0].bottom())


def test_align_face_gives_a_chip(wild):
    image = wild("two_people.jpg")
    boxes = detect_faces(image)
    chips = [align_face(image, b) for b in boxes]
    for chip in chips:
        assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
        assert chip.std() > 10  # not a blank
    assert not np.array_equal(chips[0], chips[1])
    assert align_face(image, boxes[0], size=100).shape == (100, 100, 3)


def test_largest_box():
    boxes = [Box(0, 0, 10, 10), Box(5, 5, 40, 30), Box(0, 0, 20, 20)]
    assert largest(boxes) == Box(5, 5, 40, 30)
    assert Box(10, 10, 5, 20).area == 0
    assert Box(1, 2, 3, 4).as_list() == [1, 2, 3, 4]


# People of lfw62-150px on whom some photos (among their first 6) hold a face too small for
# the detector without upsampling.
SMALL_FACE_PEOPLE = ["Andre_Agassi", "Jacques_Chirac", "Jose_Maria_Aznar", "Laura_Bush"]


@pytest.fixture(scope="module")
def small_photos(faces_dir):
    picked = pick_people(faces_dir, 62, 6, subset="lfw62-150px")
    photos = [p for person in SMALL_FACE_PEOPLE for p in picked[person]]
    assert len(photos) == 6 * len(SMALL_FACE_PEOPLE)
    return [load(p) for p in photos]


def test_small_photos_need_the_upsample_retry(small_photos):
    rescued = 0
    for image in small_photos:
        assert image.shape == (150, 150, 3)
        plain = detect_faces(image, upsample_max_side=0)
        default = detect_faces(image)
        assert len(default) >= len(plain)
        if plain:
            assert default == plain  # the retry runs only when nothing was found
        elif default:
            rescued += 1
            assert all(inside(b, image) for b in default)
            # faces that small are what the retry is for
            assert max(b.right - b.left for b in default) < 90
            # and the retry is not attempted on photos over upsample_max_side
            assert detect_faces(image, upsample_max_side=149) == []
    assert rescued >= 1
