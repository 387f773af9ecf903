"""Held-out scores of a classifier, in plain numpy."""
from __future__ import annotations

import numpy as np


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-person recall: LFW is unbalanced, so plain accuracy flatters the big classes."""
    classes = np.unique(y_true)
    if not len(classes):
        return float("nan")
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))
