"""How good a face is for recognition: its size, sharpness and pose, from the box, landmarks and chip.

Each face gets (`measure`):
- `face_px`: the width of its detection box in the photo's pixels. dlib's ResNet sees a
  150 px chip whatever the face's size, so a small face is an upscaled, soft one;
- `sharpness`: the variance of the Laplacian of the aligned chip in grey levels (the
  usual blur measure: an out-of-focus or upscaled face has few strong edges; the chip has
  the same size for every face, so values compare across photos);
- `yaw`: how far the nose base sits from the middle of the eyes, along the eye line, in
  eye distances (signed; 0 when the face looks at the camera, ~0.3 in three-quarter view,
  the 5-point landmarks cannot say more);
- `roll`: the tilt of the eye line in degrees (alignment removes it; large values mean
  the landmarks, or the face, are unusual).

`problems` compares them with the settings' limits (`FR_QUALITY_MIN_FACE_PX`,
`FR_QUALITY_MIN_SHARPNESS`, `FR_QUALITY_MAX_YAW`) and names what is poor: "small",
"blurred", "turned". Whether a poor photo is used at build time is `FR_QUALITY_POLICY`.

`reason` says why a face found must not be named at all (a detector that finds faces from 40 px
finds faces too small or too soft for the recognizer to tell people apart): "too_small" below
`FR_RECOGNISE_MIN_FACE_PX`, "too_blurred" below `FR_RECOGNISE_MIN_SHARPNESS`, else None. These limits
are lower than the enrolment ones: a poor but usable face is still named (and listed as poor).
"""
from __future__ import annotations

import cv2
import numpy as np

from constants import Settings
from preprocessor.faces import Box

SMALL, BLURRED, TURNED = "small", "blurred", "turned"
TOO_SMALL, TOO_BLURRED = "too_small", "too_blurred"


def measure(box: Box, landmarks: np.ndarray, chip: np.ndarray) -> dict:
    """Quality figures of one face: `box`, its (5, 2) landmark points, its aligned RGB chip."""
    grey = cv2.cvtColor(np.ascontiguousarray(chip), cv2.COLOR_RGB2GRAY)
    sharpness = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    eye_a, eye_b, nose = landmarks[0:2].mean(0), landmarks[2:4].mean(0), landmarks[4]
    line = eye_a - eye_b  # from the eye on the photo's left to the one on its right
    distance = float(np.hypot(*line))
    if distance < 1e-6:  # degenerate landmarks: no pose (None, which JSON can carry; NaN it cannot)
        return {"face_px": int(box.right - box.left), "sharpness": round(sharpness, 1), "yaw": None, "roll": None}
    yaw = float(np.dot(nose - (eye_a + eye_b) / 2, line / distance) / distance)
    roll = float(np.degrees(np.arctan2(line[1], line[0])))
    return {"face_px": int(box.right - box.left), "sharpness": round(sharpness, 1),
            "yaw": round(yaw, 3), "roll": round(roll, 1)}


def problems(quality: dict | None, min_face_px: float, min_sharpness: float, max_yaw: float) -> list[str]:
    """What is poor about a face by the limits given (an empty list: nothing; no figures: nothing known)."""
    if not quality:
        return []
    out = []
    if quality["face_px"] < min_face_px:
        out.append(SMALL)
    if quality["sharpness"] < min_sharpness:
        out.append(BLURRED)
    if quality["yaw"] is None or not abs(quality["yaw"]) <= max_yaw:  # no pose (degenerate landmarks): turned
        out.append(TURNED)
    return out


def limits(settings: Settings) -> dict:
    """The settings' quality limits, as `problems` takes them (and the manifest lists them)."""
    return {"min_face_px": settings.quality_min_face_px, "min_sharpness": settings.quality_min_sharpness,
            "max_yaw": settings.quality_max_yaw}


def assess(quality: dict | None, settings: Settings) -> list[str]:
    """`problems` by the settings' limits."""
    return problems(quality, **limits(settings))


def reason(quality: dict | None, min_face_px: float, min_sharpness: float) -> str | None:
    """Why a face cannot be recognised ("too_small", then "too_blurred"), or None when it can be named.
    No figures: None (nothing known against it)."""
    if not quality:
        return None
    if quality["face_px"] < min_face_px:
        return TOO_SMALL
    if quality["sharpness"] < min_sharpness:
        return TOO_BLURRED
    return None


def recognisable_limits(settings: Settings) -> dict:
    """The settings' limits below which a face is not named, as `reason` takes them."""
    return {"min_face_px": settings.recognise_min_face_px, "min_sharpness": settings.recognise_min_sharpness}
