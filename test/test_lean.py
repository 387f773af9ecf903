"""The lean numpy trainer: exact gradients, the same predictions as the Keras model it ships as, and its loop."""
from __future__ import annotations

import numpy as np
import pytest

from modelization import lean
from modelization.network import NetworkSpec

ACTIVATIONS = ("relu", "elu", "tanh", "silu")


def clusters(seed: int, n_classes: int = 4, per_class: int = 40, dim: int = 128, noise: float = 0.04):
    """Well-separated gaussian clusters, each row unit-normalised like a dlib embedding."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    y = np.repeat(np.arange(n_classes), per_class)
    x = centers[y] + rng.normal(scale=noise, size=(len(y), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = rng.permutation(len(y))
    return x[order].astype(np.float32), y[order]


# --------------------------------------------------------------------------- gradients

def weighted_loss(spec: NetworkSpec, weights, x, y, sample_weight) -> float:
    """What `fit` descends: mean of class-weighted cross-entropies, plus l2 * sum of squared kernels."""
    logits, _ = lean._forward(spec, weights, x, None)
    p = lean._softmax(logits)
    ce = -np.log(p[np.arange(len(y)), y])
    return float(np.mean(sample_weight * ce) + spec.l2 * sum((w * w).sum() for w, _ in weights))


def analytic_gradients(spec: NetworkSpec, weights, x, y, sample_weight):
    """The gradients exactly as `fit` computes them (d loss / d logits scaled per sample)."""
    logits, cache = lean._forward(spec, weights, x, None)
    g = lean._softmax(logits)
    g[np.arange(len(y)), y] -= 1
    g *= (sample_weight / len(y))[:, None]
    return lean._gradients(spec, weights, cache, g)


def gradient_cases():
    for cosine in (False, True):
        for l2 in (0.0, 1e-2):
            yield pytest.param(NetworkSpec(hidden=(), dropout=0.0, l2=l2, cosine=cosine),
                               id=f"no-hidden-cosine{int(cosine)}-l2{l2}")
            for activation in ACTIVATIONS:
                yield pytest.param(NetworkSpec(hidden=(5,), activation=activation, dropout=0.0, l2=l2, cosine=cosine),
                                   id=f"1-{activation}-cosine{int(cosine)}-l2{l2}")
            yield pytest.param(NetworkSpec(hidden=(5, 4), activation="tanh", dropout=0.0, l2=l2, cosine=cosine),
                               id=f"2-tanh-cosine{int(cosine)}-l2{l2}")


@pytest.mark.parametrize("spec", list(gradient_cases()))
def test_gradients_match_finite_differences(spec):
    """Backprop equals central finite differences of the weighted loss (float64: the code keeps the dtype)."""
    rng = np.random.default_rng(0)
    n, d, c = 12, 6, 3
    x = rng.normal(scale=0.1, size=(n, d))  # * input_scale 10 -> pre-activations of order 1
    y = np.array([0] * 6 + [1] * 4 + [2] * 2)  # unbalanced: the class weights matter
    counts = np.bincount(y, minlength=c)
    sample_weight = (n / (c * counts))[y]
    weights = [(w.astype(np.float64), rng.normal(scale=0.1, size=b.shape))
               for w, b in lean.init_weights(spec, d, c, rng)]
    grads = analytic_gradients(spec, weights, x, y, sample_weight)
    assert all(gw.dtype == np.float64 and gb.dtype == np.float64 for gw, gb in grads)

    eps = 1e-6
    for layer, (w, b) in enumerate(weights):
        for j, param in enumerate((w, b)):
            numeric = np.zeros_like(param)
            for i in np.ndindex(param.shape):
                keep = param[i]
                param[i] = keep + eps
                up = weighted_loss(spec, weights, x, y, sample_weight)
                param[i] = keep - eps
                down = weighted_loss(spec, weights, x, y, sample_weight)
                param[i] = keep
                numeric[i] = (up - down) / (2 * eps)
            analytic = grads[layer][j]
            assert analytic.shape == param.shape
            scale = np.linalg.norm(numeric) + np.linalg.norm(analytic)
            if scale < 1e-10:  # the cosine head's unused bias: zero both ways
                continue
            rel = np.linalg.norm(analytic - numeric) / scale
            assert rel < 1e-6, (layer, "kernel" if j == 0 else "bias", rel)


def test_cosine_head_bias_gets_no_gradient():
    spec = NetworkSpec(hidden=(5,), dropout=0.0, cosine=True, l2=1e-3)
    rng = np.random.default_rng(1)
    weights = lean.init_weights(spec, 6, 3, rng)
    grads = analytic_gradients(spec, weights, rng.normal(size=(8, 6)).astype(np.float32), np.arange(8) % 3,
                               np.ones(8, np.float32))
    assert not grads[-1][1].any()


# --------------------------------------------------------------------------- lean == Keras == Recognizer

SHIPPED = [
    NetworkSpec(),
    NetworkSpec(hidden=(), dropout=0.0),
    NetworkSpec(hidden=(), dropout=0.0, cosine=True),
    NetworkSpec(hidden=(64,), activation="tanh", cosine=True, l2=1e-4),
    NetworkSpec(hidden=(64, 32), activation="elu", dropout=0.1),
    NetworkSpec(hidden=(32, 32, 32), activation="silu", dropout=0.0, cosine=True),
]


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda s: f"{s.hidden}-{s.activation}-cosine{int(s.cosine)}")
def test_keras_model_and_recognizer_predict_like_lean(spec):
    """to_keras(lean weights) and the Recognizer's numpy mirror give lean's probabilities."""
    from modelization.network import to_keras
    from modelization.recognizer import Recognizer

    x, y = clusters(3, n_classes=4, per_class=20)
    fit = lean.fit(spec, x, y, 4, seed=5, max_epochs=5)
    probe, _ = clusters(4, n_classes=4, per_class=5)
    probe = np.concatenate([probe, np.random.default_rng(0).normal(scale=0.1, size=(5, 128)).astype(np.float32)])
    expected = lean.predict_proba(spec, fit.weights, probe)
    assert np.allclose(expected.sum(1), 1, atol=1e-5)

    model = to_keras(spec, fit.weights, 128, 4)
    keras_p = np.asarray(model(probe, training=False))
    assert np.abs(keras_p - expected).max() < 1e-5

    recognizer = Recognizer(model, ["a", "b", "c", "d"], {}, x[:12], y[:12])
    assert recognizer._steps is not None  # the numpy mirror, not a call back into Keras
    assert np.abs(recognizer.probabilities(probe) - expected).max() < 1e-5


@pytest.mark.parametrize("spec", SHIPPED + [NetworkSpec(hidden=(256, 128), l2=1e-3, cosine=True)],
                         ids=lambda s: f"{s.hidden}-cosine{int(s.cosine)}")
def test_count_params_matches_keras(spec):
    """lean.count_params counts what build_network builds (the cosine head has no bias)."""
    from modelization.network import build_network
    for n_inputs, n_classes in ((128, 10), (7, 2)):
        assert build_network(n_inputs, n_classes, spec).count_params() == lean.count_params(spec, n_inputs, n_classes)


def test_count_params_by_hand():
    assert lean.count_params(NetworkSpec(hidden=()), 128, 10) == 128 * 10 + 10
    assert lean.count_params(NetworkSpec(hidden=(), cosine=True), 128, 10) == 128 * 10
    assert lean.count_params(NetworkSpec(hidden=(64,)), 128, 10) == 128 * 64 + 64 + 64 * 10 + 10


# --------------------------------------------------------------------------- the training loop

def test_fit_is_deterministic_for_a_seed():
    """Same seed: bit-identical weights (init, shuffling and dropout all come from it); other seed: not."""
    spec = NetworkSpec(hidden=(32,), dropout=0.3, batch_size=32)
    x, y = clusters(0, per_class=15)
    xv, yv = clusters(0, per_class=5)  # same centers, other samples: just a validation set
    a = lean.fit(spec, x, y, 4, seed=11, max_epochs=8, x_val=xv, y_val=yv, patience=2)
    b = lean.fit(spec, x, y, 4, seed=11, max_epochs=8, x_val=xv, y_val=yv, patience=2)
    c = lean.fit(spec, x, y, 4, seed=12, max_epochs=8, x_val=xv, y_val=yv, patience=2)
    assert (a.epochs, a.best_epoch, a.val_loss) == (b.epochs, b.best_epoch, b.val_loss)
    assert all(np.array_equal(wa, wb) and np.array_equal(ba, bb) for (wa, ba), (wb, bb) in zip(a.weights, b.weights))
    assert not np.array_equal(a.weights[0][0], c.weights[0][0])


def split_clusters(seed: int, n_classes: int = 4):
    x, y = clusters(seed, n_classes=n_classes, per_class=50)
    train = np.arange(len(y)) % 5 != 0
    return x[train], y[train], x[~train], y[~train]


@pytest.mark.parametrize("spec", [NetworkSpec(), NetworkSpec(hidden=(), dropout=0.0, learning_rate=1e-2),
                                  NetworkSpec(hidden=(64,), activation="elu", cosine=True)],
                         ids=["default", "logistic", "cosine"])
def test_fit_learns_separable_clusters_and_stops_early(spec):
    """On an easy problem: high validation accuracy, early stopping well before max_epochs, best weights kept."""
    x, y, xv, yv = split_clusters(7)
    max_epochs, patience = 300, 3
    fit = lean.fit(spec, x, y, 4, seed=0, max_epochs=max_epochs, x_val=xv, y_val=yv, patience=patience)
    accuracy = np.mean(lean.predict_proba(spec, fit.weights, xv).argmax(1) == yv)
    assert accuracy > 0.95
    assert fit.epochs < max_epochs
    assert 1 <= fit.best_epoch <= fit.epochs
    assert fit.epochs == fit.best_epoch + patience  # stopped after `patience` epochs without improvement
    assert fit.val_loss == pytest.approx(lean._loss(spec, fit.weights, xv, yv), rel=1e-6)  # the kept weights


def test_fit_without_validation_runs_max_epochs():
    spec = NetworkSpec(hidden=(16,))
    x, y, _, _ = split_clusters(1)
    for max_epochs in (1, 4):
        fit = lean.fit(spec, x, y, 4, seed=0, max_epochs=max_epochs)
        assert fit.epochs == fit.best_epoch == max_epochs
        assert fit.val_loss is None


def test_fit_does_not_modify_its_inputs():
    x, y, xv, yv = split_clusters(2)
    copies = [a.copy() for a in (x, y, xv, yv)]
    lean.fit(NetworkSpec(), x, y, 4, seed=0, max_epochs=3, x_val=xv, y_val=yv)
    assert all(np.array_equal(a, b) for a, b in zip((x, y, xv, yv), copies))
