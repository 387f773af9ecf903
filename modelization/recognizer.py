"""Using a built model: bundle -> Recognizer -> every face in a photo, named or "unknown".

Works offline, without the service: `load_bundle("model.zip").predict(open(p, "rb").read())`.
The classifier runs as a small numpy forward pass (its weights read from the
Keras model once), so a prediction costs the dlib pipeline and little more.
"""
from __future__ import annotations

import io
import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from constants import Settings
from features.embeddings import embed_chips
from modelization.bundle import GALLERY_FILE, LABELS_FILE, MANIFEST_FILE, MODEL_FILE
from modelization.openset import name_faces, needs_mirror_pass
from preprocessor.faces import Box, align_face, detect_faces
from preprocessor.images import decode_image


@dataclass
class FacePrediction:
    """One face: its box [left, top, right, bottom], the person (None = unknown), scores."""
    box: list[int]
    label: str | None
    confidence: float      # classifier probability of the best-matching person
    distance: float        # open-set score: mean distance to that person's nearest gallery photos
    candidate: str         # the best-matching person, even when rejected

    def as_dict(self) -> dict:
        return {"box": self.box, "label": self.label if self.label is not None else "unknown",
                "known": self.label is not None, "confidence": round(self.confidence, 6),
                "distance": round(self.distance, 6), "candidate": self.candidate}


def _numpy_layers(model) -> list | None:
    """The model as a list of numpy steps, or None if it holds a layer we don't mirror."""
    steps = []
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


_ACTIVATIONS = {
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
        self.threshold = float(self.open_set.get("threshold", 0.6))
        self.k = int(self.open_set.get("k", 3))
        self.temperature = float(self.open_set.get("temperature", 0.0))  # format 2: the classifier alone
        self.mirror = bool(self.open_set.get("mirror_probes", False))  # format 4: chip + mirror image
        # format 4 bundles before the margin: the mirror pass for every face
        self.mirror_margin = float(self.open_set.get("mirror_margin", float("inf")))
        self._model = model
        self._steps = _numpy_layers(model)
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

    def identify(self, embeddings: np.ndarray,
                 threshold: float | None = None) -> list[tuple[str | None, float, float, str]]:
        """(label or None, confidence, distance, candidate) for each embedding."""
        if len(embeddings) == 0:
            return []
        threshold = self.threshold if threshold is None else float(threshold)
        probs = self.probabilities(embeddings)
        best, scores = name_faces(probs, np.asarray(embeddings), self.gallery_x, self.gallery_y, self.k,
                                  self.temperature)
        return [(self.labels[c] if s <= threshold else None, float(probs[i, c]), float(s), self.labels[c])
                for i, (c, s) in enumerate(zip(best, scores))]

    def detect(self, image: bytes | np.ndarray) -> tuple[np.ndarray, list[Box]]:
        """Decode a photo (bytes of an image file, or an RGB array) and find its faces, largest first."""
        s = self.settings
        if isinstance(image, (bytes, bytearray)):
            image = decode_image(bytes(image), s.max_image_pixels)
        boxes = sorted(detect_faces(image, s.detect_max_side, s.upsample_max_side), key=lambda b: -b.area)
        return image, boxes

    def embed_faces(self, image: np.ndarray, boxes: list[Box], threshold: float | None = None,
                    mirror_margin: float | None = None) -> np.ndarray:
        """Embeddings (n, 128) of the faces in `boxes`, as this bundle compares them with its gallery.

        With `mirror_probes`, a face whose one-pass score lies within `mirror_margin` of the
        threshold is embedded again from its mirror image and the two embeddings are averaged
        (`openset.needs_mirror_pass`); faces far from the threshold keep their one pass.
        """
        s = self.settings
        chips = [align_face(image, b, s.chip_size, s.chip_padding) for b in boxes]
        x = embed_chips(chips)
        if self.mirror and chips:
            scores = np.array([r[2] for r in self.identify(x, threshold)])
            margin = self.mirror_margin if mirror_margin is None else mirror_margin
            again = np.flatnonzero(needs_mirror_pass(scores, self.threshold if threshold is None else threshold,
                                                     margin))
            if len(again):
                x[again] = (x[again] + embed_chips([np.ascontiguousarray(chips[i][:, ::-1]) for i in again])) / 2
        return x

    def embed(self, image: bytes | np.ndarray, threshold: float | None = None,
              mirror_margin: float | None = None) -> tuple[list[Box], np.ndarray]:
        """Every face in a photo, largest first: (boxes, embeddings (n, 128)), see `embed_faces`."""
        image, boxes = self.detect(image)
        return boxes, self.embed_faces(image, boxes, threshold, mirror_margin)

    def faces(self, image: bytes | np.ndarray, threshold: float | None = None,
              max_faces: int | None = None) -> tuple[list[FacePrediction], int]:
        """The `max_faces` largest faces of a photo, named or unknown, and how many faces it holds."""
        image, boxes = self.detect(image)
        found = len(boxes)
        boxes = boxes[:max_faces] if max_faces is not None else boxes
        results = self.identify(self.embed_faces(image, boxes, threshold), threshold)
        return [FacePrediction(b.as_list(), *r) for b, r in zip(boxes, results)], found

    def predict(self, image: bytes | np.ndarray, threshold: float | None = None) -> list[FacePrediction]:
        """Every face in a photo (bytes of an image file, or an RGB array), largest first, up to
        FR_MAX_FACES_PER_PREDICT."""
        return self.faces(image, threshold, self.settings.max_faces_per_predict)[0]


def load_bundle(path: str | Path | bytes, settings: Settings | None = None) -> Recognizer:
    """Open a bundle (path or zip bytes) and return its Recognizer."""
    import keras
    src = io.BytesIO(path) if isinstance(path, (bytes, bytearray)) else path
    with zipfile.ZipFile(src) as zf, tempfile.TemporaryDirectory() as tmp:
        zf.extract(MODEL_FILE, tmp)
        model = keras.models.load_model(Path(tmp) / MODEL_FILE, compile=False)
        labels = json.loads(zf.read(LABELS_FILE))
        manifest = json.loads(zf.read(MANIFEST_FILE))
        if GALLERY_FILE not in zf.namelist():
            raise ValueError("bundle has no gallery (built by an older version): rebuild the model")
        with np.load(io.BytesIO(zf.read(GALLERY_FILE))) as g:
            gallery_x, gallery_y = g["embeddings"], g["labels"]
    return Recognizer(model, labels, manifest, gallery_x, gallery_y, settings)
