"""The classifier family on 128-d embeddings, as Keras models (what the bundle ships).

A small MLP is enough: dlib's embeddings already separate identities (a 1-NN
reaches ~99.5% on our lfw62 split), so the network's job is a calibrated softmax over the
people, not feature learning. Training happens in `modelization.lean` (numpy); `to_keras`
turns its weights into the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.tf_import import keras_module

# The cosine head's logits are COSINE_SCALE * cos(features, person direction): the scale
# lets a softmax over values in [-1, 1] still become confident.
COSINE_SCALE = 16.0


@dataclass(frozen=True)
class NetworkSpec:
    """The knobs of a classifier (the genetic search varies all but `input_scale`)."""
    hidden: tuple[int, ...] = (128,)
    activation: str = "relu"
    dropout: float = 0.3
    learning_rate: float = 3e-3
    batch_size: int = 64
    l2: float = 0.0            # L2 penalty on kernels
    cosine: bool = False       # L2-normalised features and person directions (cosine softmax head)
    input_scale: float = 10.0  # dlib embeddings are unit-norm, ~0.09 per dimension


def build_network(n_inputs: int, n_classes: int, spec: NetworkSpec):
    """A compiled Keras model: scale -> [Dense -> Dropout]* -> softmax head.

    The cosine head is built from stock layers (so the bundle loads anywhere):
    UnitNormalization -> Dense without bias, unit-norm columns -> Rescaling -> softmax.
    """
    keras = keras_module()
    regularizer = keras.regularizers.L2(spec.l2) if spec.l2 else None
    inputs = keras.Input((n_inputs,), name="embedding")
    x = keras.layers.Rescaling(spec.input_scale, name="scale")(inputs)
    for i, units in enumerate(spec.hidden):
        x = keras.layers.Dense(units, activation=spec.activation, kernel_regularizer=regularizer,
                               name=f"hidden{i}")(x)
        if spec.dropout:
            x = keras.layers.Dropout(spec.dropout, name=f"dropout{i}")(x)
    if spec.cosine:
        x = keras.layers.UnitNormalization(name="unit_features")(x)
        x = keras.layers.Dense(n_classes, use_bias=False, kernel_constraint=keras.constraints.UnitNorm(axis=0),
                               kernel_regularizer=regularizer, name="person_cosine")(x)
        x = keras.layers.Rescaling(COSINE_SCALE, name="cosine_scale")(x)
        outputs = keras.layers.Activation("softmax", name="person")(x)
    else:
        outputs = keras.layers.Dense(n_classes, activation="softmax", kernel_regularizer=regularizer,
                                     name="person")(x)
    model = keras.Model(inputs, outputs, name="recognizer")
    model.compile(optimizer=keras.optimizers.Adam(spec.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def to_keras(spec: NetworkSpec, weights: list, n_inputs: int, n_classes: int):
    """The Keras model of `spec` holding weights trained by `modelization.lean` [(kernel, bias), ...]."""
    model = build_network(n_inputs, n_classes, spec)
    dense = [layer for layer in model.layers if type(layer).__name__ == "Dense"]
    for layer, (w, b) in zip(dense, weights):
        if layer.use_bias:
            layer.set_weights([w, b])
        else:  # cosine head: store unit columns, as its constraint keeps them
            layer.set_weights([w / np.maximum(np.linalg.norm(w, axis=0, keepdims=True), 1e-12)])
    return model


def predict_classes(model, x: np.ndarray) -> np.ndarray:
    return np.argmax(model.predict(x, verbose=0, batch_size=1024), axis=1)
