"""Chips through a network in bounded batches: what every embedder of dlib's ResNet does with a photo's faces."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

CHIP = 150       # dlib's ResNet takes 150x150 RGB chips, nothing else
MAX_BATCH = 32   # chips per run of the network: per chip no faster beyond on a CPU, activations bounded


def in_batches(chips: np.ndarray, run: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """(n, 150, 150, 3) uint8 chips -> (n, 128) float32, `run` called on MAX_BATCH chips at a time; ValueError
    for chips of another shape."""
    if chips.ndim != 4 or chips.shape[1:] != (CHIP, CHIP, 3):
        raise ValueError(f"chips must be (n, {CHIP}, {CHIP}, 3), got {chips.shape}")
    return np.concatenate([run(chips[i:i + MAX_BATCH]) for i in range(0, len(chips), MAX_BATCH)]
                          or [np.zeros((0, 128), np.float32)])
