"""Using a built model: bundle -> Recognizer -> every face in a photo, named or "unknown".

Works offline, without the service: `load_bundle("model.zip").predict(open(p, "rb").read())`.
The classifier runs as a small numpy forward pass (its weights read from the bundle's
`model.keras` without Keras, modelization/keras_file.py), so a prediction costs the dlib
pipeline and little more, and a process that predicts does not load TensorFlow.
"""
from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from constants import Settings
from features.embeddings import embed_chips
from features.extract import find_faces
from modelization.bundle import GALLERY_FILE, LABELS_FILE, MANIFEST_FILE, MODEL_FILE
from modelization.keras_file import KerasFile
from modelization.openset import (
    KMEAN,
    TEMPLATE,
    Gallery,
    calibrate_verification,
    name_faces,
    needs_mirror_pass,
    pair_distance,
)
from preprocessor.faces import Box
from preprocessor.images import DECODE_SLOTS, decode_bounded
from preprocessor.quality import assess, measure, reason, recognisable_limits


@dataclass
class FacePrediction:
    """One face: its box [left, top, right, bottom], the person (None = unknown), scores, quality."""
    box: list[int] | None  # None for an embedding a client sent
    label: str | None
    confidence: float      # classifier probability of the best-matching person
    distance: float        # open-set score for that person (format 5: distance to their template)
    candidate: str         # the best-matching person, even when rejected
    threshold: float       # the candidate's threshold: accepted when distance <= threshold
    quality: dict | None = None  # face_px, sharpness, yaw, roll, problems (preprocessor/quality.py)
    reason: str | None = None    # "too_small", "too_blurred": found but not named (preprocessor/quality.py)

    def as_dict(self) -> dict:
        return {"box": self.box, "label": self.label if self.label is not None else "unknown",
                "known": self.label is not None, "confidence": round(self.confidence, 6),
                "distance": round(self.distance, 6), "threshold": round(self.threshold, 6),
                "candidate": self.candidate, "quality": self.quality, "reason": self.reason}


def _numpy_layers(model) -> list | None:
    """The model as a list of numpy steps, or None if it holds a layer we don't mirror."""
    steps: list[tuple] = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer" or kind == "Dropout":
            continue
        if kind == "Rescaling":
            steps.append(("scale", float(layer.scale), float(layer.offset)))
        elif kind == "UnitNormalization":
            steps.append(("unit",))
        elif kind == "Dense":
            w, *b = (np.asarray(v) for v in layer.get_weights())
            steps.append(("dense", w, b[0] if b else np.zeros(w.shape[1], w.dtype), layer.activation.__name__))
        elif kind == "Activation":
            steps.append(("dense", None, None, layer.activation.__name__))
        else:
            return None
    return steps


_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "selu": lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(np.minimum(x, 0))),
    "gelu": lambda x: 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x ** 3))),
    "swish": lambda x: x / (1 + np.exp(-x)),
    "silu": lambda x: x / (1 + np.exp(-x)),
}


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


class Recognizer:
    """A loaded bundle. `identify` works on embeddings, `predict` on photos."""

    def __init__(self, model, labels: list[str], manifest: dict, gallery_x: np.ndarray, gallery_y: np.ndarray,
                 settings: Settings | None = None):
        self.labels = labels
        self.manifest = manifest
        self.gallery_x = gallery_x.astype(np.float32)
        self.gallery_y = gallery_y.astype(np.int64)
        self.settings = settings or Settings.from_env()
        self.open_set = manifest.get("open_set") or {}
        # format 5: templates and a threshold per person; formats 2-4: k nearest photos, one threshold
        rule = self.open_set.get("score", KMEAN)
        self.gallery = Gallery(self.gallery_x, self.gallery_y, len(labels), rule, int(self.open_set.get("k", 3)))
        if "thresholds" in self.open_set:
            self.thresholds = np.asarray(self.open_set["thresholds"], np.float64)
        else:
            self.thresholds = np.full(len(labels), float(self.open_set.get("threshold", 0.6)))
        self.temperature = float(self.open_set.get("temperature", 0.0))  # format 2: the classifier alone
        self.mirror = bool(self.open_set.get("mirror_probes", False))  # format 4: chip + mirror image
        # format 4 bundles before the margin: the mirror pass for every face
        self.mirror_margin = float(self.open_set.get("mirror_margin", float("inf")))
        # 1:1 verification scores against templates whatever the bundle's identification rule; bundles
        # built before verification get thresholds calibrated now, at FR_VERIFY_FAR
        self.verify_gallery = self.gallery if rule == TEMPLATE else Gallery(self.gallery_x, self.gallery_y,
                                                                            len(labels), TEMPLATE)
        self.verification = manifest.get("verification") or {
            **calibrate_verification(self.gallery_y, len(labels), self.settings.verify_far),
            "note": "calibrated when the bundle was loaded: it was built before verification"}
        self._model = model  # a KerasFile (a loaded bundle), or a Keras model
        self._steps = model.steps if isinstance(model, KerasFile) else _numpy_layers(model)
        if self._steps is not None and any(s[0] == "dense" and s[3] not in _ACTIVATIONS | {"softmax": 0}
                                           for s in self._steps):
            self._steps = None

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """Classifier output (n, people) for (n, 128) embeddings."""
        x = np.asarray(embeddings, np.float32)
        if self._steps is None:
            return np.asarray(self._model(x, training=False))
        for step in self._steps:
            if step[0] == "scale":
                x = x * step[1] + step[2]
            elif step[0] == "unit":
                x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            else:
                _, w, b, act = step
                if w is not None:
                    x = x @ w + b
                x = _softmax(x) if act == "softmax" else _ACTIVATIONS[act](x)
        return x

    @property
    def threshold(self) -> float:
        """One figure for the rule: the strictest person's threshold (each face is judged by its own
        candidate's, `thresholds`)."""
        return float(self.thresholds.min())

    def decide(self, embeddings: np.ndarray, threshold: float | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """-> (candidates, probabilities (n, people), scores, thresholds) of each embedding: the person
        named, and the score and threshold it is accepted by (`threshold` given: one for everybody)."""
        x = np.asarray(embeddings, np.float32)
        probs = self.probabilities(x)
        best, scores = name_faces(probs, self.gallery.scores(x), self.temperature)
        limits = self.thresholds[best] if threshold is None else np.full(len(best), float(threshold))
        return best, probs, scores, limits

    def identify(self, embeddings: np.ndarray,
                 threshold: float | None = None) -> list[tuple[str | None, float, float, str, float]]:
        """(label or None, confidence, distance, candidate, threshold) for each embedding."""
        if len(embeddings) == 0:
            return []
        best, probs, scores, limits = self.decide(embeddings, threshold)
        return [(self.labels[c] if s <= t else None, float(probs[i, c]), float(s), self.labels[c], float(t))
                for i, (c, s, t) in enumerate(zip(best, scores, limits))]

    def analyse(self, image: bytes | np.ndarray, threshold: float | None = None,
                mirror_margin: float | None = None, max_faces: int | None = None,
                chips_out: list[np.ndarray] | None = None) -> tuple[list[Box], np.ndarray, list[dict], int]:
        """The `max_faces` largest faces of a photo (bytes of an image file, or an RGB array):
        (boxes, embeddings (n, 128) as this bundle compares them with its gallery, quality figures,
        how many faces the photo holds).

        With `mirror_probes`, a face whose one-pass score lies within `mirror_margin` of its
        candidate's threshold is embedded again from its mirror image and the two embeddings are
        averaged (`openset.needs_mirror_pass`); faces far from the threshold keep their one pass.
        A photo given as bytes is decoded within FR_PREDICT_MAX_PIXELS (`decode_bounded`): its boxes are in
        the photo's pixels, its quality figures those of the size it was decoded at. `chips_out`, when given,
        receives each face's aligned chip (RGB, 150x150), in the same order.
        """
        s = self.settings
        if isinstance(image, (bytes, bytearray)):  # decoded within bounds, a few photos of a process at a time
            with DECODE_SLOTS:
                pixels, scale = decode_bounded(bytes(image), s.max_image_pixels, s.predict_max_pixels)
                found, n_found = find_faces(pixels, s, max_faces)
                del pixels
        else:
            (found, n_found), scale = find_faces(image, s, max_faces), 1.0
        chips = [f.chip for f in found]
        if chips_out is not None:
            chips_out.extend(chips)
        x = embed_chips(chips, settings=s)  # every face in one batch
        if self.mirror and chips:
            # The second pass needs the first one's scores: the faces near their threshold (often
            # none) get it, their mirror images in one more batch. Embedding every mirror image in
            # the first batch would cost each photo a second pass for the few that need it.
            _, _, scores, limits = self.decide(x, threshold)
            margin = self.mirror_margin if mirror_margin is None else mirror_margin
            again = np.flatnonzero(needs_mirror_pass(scores, limits, margin))
            if len(again):
                flipped = [np.ascontiguousarray(chips[i][:, ::-1]) for i in again]
                x[again] = (x[again] + embed_chips(flipped, settings=s)) / 2
        quality = [f.quality or measure(f.box, f.points, f.chip) for f in found]
        boxes = [f.box if scale == 1.0 else Box(*(round(v / scale) for v in f.box.as_list())) for f in found]
        return boxes, x, [{**q, "problems": assess(q, s)} for q in quality], n_found

    def embed(self, image: bytes | np.ndarray, threshold: float | None = None,
              mirror_margin: float | None = None) -> tuple[list[Box], np.ndarray]:
        """`analyse` without the quality figures, every face: (boxes, embeddings)."""
        boxes, x, _, _ = self.analyse(image, threshold, mirror_margin)
        return boxes, x

    def faces(self, image: bytes | np.ndarray, threshold: float | None = None,
              max_faces: int | None = None) -> tuple[list[FacePrediction], int]:
        """The `max_faces` largest faces of a photo, named or unknown, and how many faces it holds."""
        faces, found, _ = self.faces_and_embeddings(image, threshold, max_faces)
        return faces, found

    def faces_and_embeddings(self, image: bytes | np.ndarray, threshold: float | None = None,
                             max_faces: int | None = None, chips_out: list[np.ndarray] | None = None
                             ) -> tuple[list[FacePrediction], int, np.ndarray]:
        """`faces`, and the embeddings (n, 128) they were named by (and their chips in `chips_out`, when
        given). A face too small or too blurred to be recognised (`reason`, FR_RECOGNISE_MIN_*) is answered
        unknown whatever its score: the recognizer cannot tell people apart on it, so a name would be a guess."""
        boxes, embeddings, quality, found = self.analyse(image, threshold, max_faces=max_faces, chips_out=chips_out)
        faces = []
        for b, r, q in zip(boxes, self.identify(embeddings, threshold), quality):
            why = self.unrecognisable(q)
            faces.append(FacePrediction(b.as_list(), None if why else r[0], *r[1:], quality=q, reason=why))
        return faces, found, embeddings

    def unrecognisable(self, quality: dict | None) -> str | None:
        """Why a face of these quality figures must not be named ("too_small", "too_blurred"), or None."""
        return reason(quality, **recognisable_limits(self.settings))

    def largest_face(self, image: bytes | np.ndarray) -> tuple[Box | None, np.ndarray | None, dict | None, int]:
        """The largest face of a photo for verification, embedded in one pass (verification's thresholds are
        calibrated on one-pass embeddings): (box, embedding (128,), quality, faces found); None without a face."""
        boxes, x, quality, found = self.analyse(image, mirror_margin=-1.0, max_faces=1)
        if not boxes:
            return None, None, None, found
        return boxes[0], x[0], quality[0], found

    def verify_pair(self, a: np.ndarray, b: np.ndarray) -> dict:
        """Are two faces (embeddings) the same person? -> {same, distance, threshold, far}."""
        distance = float(pair_distance(np.asarray(a, np.float32)[None, :], np.asarray(b, np.float32)[None, :])[0])
        threshold = float(self.verification["pair_threshold"])
        return {"same": distance <= threshold, "distance": round(distance, 6), "threshold": round(threshold, 6),
                "far": self.verification["far"]}

    def verify_label(self, x: np.ndarray, label: str) -> dict:
        """Is this face (embedding) the person `label`? KeyError for a person not in the model.
        -> {same, distance, threshold, far}."""
        c = self.labels.index(label) if label in self.labels else None
        if c is None:
            raise KeyError(label)
        distance = float(self.verify_gallery.scores(np.asarray(x, np.float32)[None, :])[0, c])
        threshold = float(self.verification["thresholds"][c])
        return {"same": distance <= threshold, "distance": round(distance, 6), "threshold": round(threshold, 6),
                "far": self.verification["far"]}

    def predict(self, image: bytes | np.ndarray, threshold: float | None = None) -> list[FacePrediction]:
        """Every face in a photo (bytes of an image file, or an RGB array), largest first, up to
        FR_MAX_FACES_PER_PREDICT."""
        return self.faces(image, threshold, self.settings.max_faces_per_predict)[0]


def warm_up(settings: Settings) -> None:
    """Load what using a model (and extracting features) needs, once per process: dlib's detector and
    landmarks, and the embedder. Workers and web processes run it in a background thread when they
    start (FR_WARM_UP), so that no task or request waits for the loading.

    The ONNX embedder writes its graph (first start on a host only) and runs one chip through it; the
    TensorFlow one likewise, after importing TensorFlow (seconds). Keras is not loaded: bundles are read
    and written without it (modelization/keras_file.py, export.py).
    """
    from features.embeddings import load_model
    from preprocessor.faces import load_models
    load_models(settings.detector)
    load_model(settings)


def load_bundle(path: str | Path | bytes, settings: Settings | None = None) -> Recognizer:
    """Open a bundle (path or zip bytes) and return its Recognizer."""
    src = io.BytesIO(path) if isinstance(path, (bytes, bytearray)) else path
    with zipfile.ZipFile(src) as zf:
        model = KerasFile(zf.read(MODEL_FILE))
        labels = json.loads(zf.read(LABELS_FILE))
        manifest = json.loads(zf.read(MANIFEST_FILE))
        if GALLERY_FILE not in zf.namelist():
            raise ValueError("bundle has no gallery (built by an older version): rebuild the model")
        with np.load(io.BytesIO(zf.read(GALLERY_FILE))) as g:
            gallery_x, gallery_y = g["embeddings"], g["labels"]
    return Recognizer(model, labels, manifest, gallery_x, gallery_y, settings)
