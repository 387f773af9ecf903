"""A lean numpy training loop for the classifier family of `network.NetworkSpec`.

Why not `keras.Model.fit`: it pays ~150 ms of fixed cost per epoch here, and a
genetic search trains hundreds of small networks on a few thousand 128-d
embeddings. This loop trains the same architecture (same layers, Glorot init,
Adam with Keras' defaults, inverse-frequency class weights, dropout, L2 on
kernels, early stopping on validation loss with the best weights kept) in
plain numpy, single-threaded and deterministic for a seed; a small network
trains in well under a second. `network.to_keras` turns the weights into the
Keras model that ships in the bundle.

Weights are a list of (kernel, bias) per Dense layer; the cosine head's bias is
unused (zeros) and its kernel columns are normalised in the forward pass.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from modelization.network import COSINE_SCALE, NetworkSpec

F32 = np.float32
Weights = list[tuple[np.ndarray, np.ndarray]]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# activation -> (f(z), f'(z) given z and f(z))
Activation = Callable[[np.ndarray], np.ndarray]
ACTIVATIONS: dict[str, tuple[Activation, Callable[[np.ndarray, np.ndarray], np.ndarray]]] = {
    "relu": (lambda z: np.maximum(z, 0), lambda z, a: (z > 0).astype(F32)),
    "tanh": (np.tanh, lambda z, a: 1 - a * a),
    "elu": (lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0))), lambda z, a: np.where(z > 0, F32(1), a + 1)),
    "silu": (lambda z: z * _sigmoid(z), lambda z, a: (lambda s: s + a * (1 - s))(_sigmoid(z))),
}


@dataclass
class LeanFit:
    weights: Weights
    epochs: int        # epochs run
    best_epoch: int    # epoch whose weights were kept (== epochs without validation)
    val_loss: float | None


def count_params(spec: NetworkSpec, n_inputs: int, n_classes: int) -> int:
    """Trainable parameters of the Keras model `build_network` makes (the cosine head has no bias)."""
    sizes = [n_inputs, *spec.hidden, n_classes]
    total = sum(a * b + b for a, b in itertools.pairwise(sizes))
    return total - (n_classes if spec.cosine else 0)


def init_weights(spec: NetworkSpec, n_inputs: int, n_classes: int, rng: np.random.Generator) -> Weights:
    """Glorot-uniform kernels and zero biases, as Keras' Dense layers start."""
    sizes = [n_inputs, *spec.hidden, n_classes]
    out = []
    for a, b in itertools.pairwise(sizes):
        limit = np.sqrt(6.0 / (a + b))
        out.append((rng.uniform(-limit, limit, (a, b)).astype(F32), np.zeros(b, F32)))
    return out


def _unit(v: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    norm = np.sqrt((v * v).sum(axis, keepdims=True)) + F32(1e-12)
    return v / norm, norm


def _forward(spec: NetworkSpec, weights: Weights, x: np.ndarray, rng: np.random.Generator | None):
    """Logits and what backprop needs. `rng` given = training (dropout on)."""
    act = ACTIVATIONS[spec.activation][0]
    h: np.ndarray = x * F32(spec.input_scale)
    inputs: list[np.ndarray] = []
    pre: list[np.ndarray] = []
    post: list[np.ndarray] = []
    masks: list[np.ndarray | None] = []
    for w, b in weights[:-1]:
        inputs.append(h)
        z = h @ w + b
        a = act(z)
        mask = None
        if rng is not None and spec.dropout:
            mask = (rng.random(a.shape, dtype=F32) >= spec.dropout) / F32(1 - spec.dropout)
        pre.append(z)
        post.append(a)
        masks.append(mask)
        h = a * mask if mask is not None else a
    w, b = weights[-1]
    if spec.cosine:
        hn, h_norm = _unit(h, 1)
        wn, w_norm = _unit(w, 0)
        logits = F32(COSINE_SCALE) * (hn @ wn)
        head: tuple[np.ndarray, ...] = (h, hn, h_norm, wn, w_norm)
    else:
        logits = h @ w + b
        head = (h,)
    return logits, (inputs, pre, post, masks, head)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _gradients(spec: NetworkSpec, weights: Weights, cache, g: np.ndarray) -> Weights:
    """Backprop of d(loss)/d(logits) = g through the network."""
    inputs, pre, post, masks, head = cache
    grads: Weights = [None] * len(weights)  # type: ignore[list-item]
    w_out, b_out = weights[-1]
    if spec.cosine:
        _, hn, h_norm, wn, w_norm = head
        s = F32(COSINE_SCALE)
        d_hn = s * (g @ wn.T)
        d_wn = s * (hn.T @ g)
        grads[-1] = ((d_wn - wn * (wn * d_wn).sum(0, keepdims=True)) / w_norm, np.zeros_like(b_out))
        dh = (d_hn - hn * (hn * d_hn).sum(1, keepdims=True)) / h_norm
    else:
        grads[-1] = (head[0].T @ g, g.sum(0))
        dh = g @ w_out.T
    deriv = ACTIVATIONS[spec.activation][1]
    for i in range(len(weights) - 2, -1, -1):
        if masks[i] is not None:
            dh = dh * masks[i]
        dz = dh * deriv(pre[i], post[i])
        grads[i] = (inputs[i].T @ dz, dz.sum(0))
        if i:
            dh = dz @ weights[i][0].T
    if spec.l2:
        grads = [(gw + F32(2 * spec.l2) * w, gb) for (gw, gb), (w, _) in zip(grads, weights)]
    return grads


def predict_proba(spec: NetworkSpec, weights: Weights, x: np.ndarray) -> np.ndarray:
    """(n, classes) probabilities for (n, inputs) embeddings."""
    return _softmax(_forward(spec, weights, np.asarray(x, F32), None)[0])


def _loss(spec: NetworkSpec, weights: Weights, x: np.ndarray, y: np.ndarray) -> float:
    p = predict_proba(spec, weights, x)
    return float(-np.mean(np.log(p[np.arange(len(y)), y] + 1e-12)))


def fit(spec: NetworkSpec, x: np.ndarray, y: np.ndarray, n_classes: int, *, seed: int, max_epochs: int,
        x_val: np.ndarray | None = None, y_val: np.ndarray | None = None, patience: int = 6,
        min_delta: float = 1e-3, on_epoch: Callable[[int], None] | None = None) -> LeanFit:
    """Train with Adam on minibatches. With validation data: early stopping on its loss, best weights
    kept; without: exactly `max_epochs` epochs (the final retrain on train + validation).
    `on_epoch(epoch)` is called after each epoch (progress reports)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, F32)
    weights = init_weights(spec, x.shape[1], n_classes, rng)
    counts = np.bincount(y, minlength=n_classes)
    class_weight = (len(y) / (n_classes * np.maximum(counts, 1))).astype(F32)
    m = [(np.zeros_like(w), np.zeros_like(b)) for w, b in weights]
    v = [(np.zeros_like(w), np.zeros_like(b)) for w, b in weights]
    beta1, beta2, eps = 0.9, 0.999, 1e-7  # Keras' Adam defaults
    step = 0
    best_loss, best_epoch, stale, epoch = np.inf, 0, 0, 0
    best_weights = [(w.copy(), b.copy()) for w, b in weights]  # kept if the loss never improves (diverged)
    for epoch in range(1, max_epochs + 1):
        order = rng.permutation(len(x))
        for start in range(0, len(x), spec.batch_size):
            idx = order[start:start + spec.batch_size]
            logits, cache = _forward(spec, weights, x[idx], rng)
            g = _softmax(logits)
            g[np.arange(len(idx)), y[idx]] -= 1
            sw = class_weight[y[idx]]
            g *= (sw / len(idx))[:, None]  # Keras: weighted per-sample losses, mean over the batch
            grads = _gradients(spec, weights, cache, g)
            step += 1
            lr = F32(spec.learning_rate * np.sqrt(1 - beta2 ** step) / (1 - beta1 ** step))
            for layer, (gw, gb) in enumerate(grads):
                for j, grad in ((0, gw), (1, gb)):
                    mj, vj = m[layer][j], v[layer][j]
                    mj *= beta1
                    mj += (1 - beta1) * grad
                    vj *= beta2
                    vj += (1 - beta2) * grad * grad
                    weights[layer][j][...] -= lr * mj / (np.sqrt(vj) + F32(eps))
        if on_epoch is not None:
            on_epoch(epoch)
        if x_val is None or y_val is None:
            continue
        loss = _loss(spec, weights, x_val, y_val)
        if loss < best_loss - min_delta:
            best_loss, best_weights, best_epoch, stale = loss, [(w.copy(), b.copy()) for w, b in weights], epoch, 0
        else:
            stale += 1
            if stale >= patience:
                break
    if x_val is None:
        return LeanFit(weights, epoch, epoch, None)
    return LeanFit(best_weights, epoch, best_epoch, float(best_loss))
