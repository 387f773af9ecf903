"""The genome of the architecture search, declared in one place.

A genome is a list of integers, one per gene, each an index into that gene's
choices. Any list within `LOW`..`UP` decodes to a valid network, so crossover
and mutation (which only move indices within bounds) can never produce an
invalid one. Genes a network does not use (units of absent layers; activation
and dropout without hidden layers) are zeroed by `canonical`, so genomes that
build the same network share one key and one evaluation.
"""
from __future__ import annotations

import random

from modelization.network import NetworkSpec

UNITS = (32, 64, 128, 256)
GENES: tuple[tuple[str, tuple], ...] = (
    ("layers", (0, 1, 2, 3)),
    ("units1", UNITS),
    ("units2", UNITS),
    ("units3", UNITS),
    ("activation", ("relu", "elu", "tanh", "silu")),
    ("dropout", (0.0, 0.1, 0.2, 0.3, 0.5)),
    ("l2", (0.0, 1e-5, 1e-4, 1e-3)),
    ("learning_rate", (5e-4, 1e-3, 3e-3, 1e-2)),
    ("batch_size", (32, 64, 128, 256)),
    ("cosine", (False, True)),
)
NAMES = tuple(name for name, _ in GENES)
CHOICES = dict(GENES)
LOW = [0] * len(GENES)
UP = [len(choices) - 1 for _, choices in GENES]
Genome = list[int]


def random_genome(rng: random.Random | None = None) -> Genome:
    """A uniformly random genome."""
    draw = rng.randint if rng is not None else random.randint
    return [draw(lo, up) for lo, up in zip(LOW, UP)]


def is_valid(genome: Genome) -> bool:
    return len(genome) == len(GENES) and all(isinstance(g, int) and lo <= g <= up
                                             for g, lo, up in zip(genome, LOW, UP))


def decode(genome: Genome) -> NetworkSpec:
    """Genome -> the network it describes."""
    if not is_valid(genome):
        raise ValueError(f"invalid genome {genome!r}")
    v = {name: CHOICES[name][i] for name, i in zip(NAMES, genome)}
    hidden = tuple(v[f"units{k + 1}"] for k in range(v["layers"]))
    return NetworkSpec(hidden=hidden, activation=v["activation"] if hidden else CHOICES["activation"][0],
                       dropout=v["dropout"] if hidden else 0.0,
                       learning_rate=v["learning_rate"], batch_size=v["batch_size"], l2=v["l2"],
                       cosine=v["cosine"])


def encode(spec: NetworkSpec) -> Genome:
    """A network (whose every knob is one of the choices) -> its canonical genome."""
    if len(spec.hidden) > 3:
        raise ValueError("at most 3 hidden layers")
    units = list(spec.hidden) + [UNITS[0]] * (3 - len(spec.hidden))
    values = {"layers": len(spec.hidden), "units1": units[0], "units2": units[1], "units3": units[2],
              "activation": spec.activation if spec.hidden else CHOICES["activation"][0],
              "dropout": spec.dropout if spec.hidden else 0.0, "l2": spec.l2,
              "learning_rate": spec.learning_rate, "batch_size": spec.batch_size, "cosine": spec.cosine}
    try:
        return [CHOICES[name].index(values[name]) for name in NAMES]
    except ValueError as exc:
        raise ValueError(f"{spec} is outside the search space: {exc}") from None


def canonical(genome: Genome) -> Genome:
    """The genome with the genes its network ignores zeroed."""
    return encode(decode(genome))


def key(genome: Genome) -> str:
    """The fitness-cache key: one per distinct network."""
    return ",".join(map(str, canonical(genome)))


def from_key(text: str) -> Genome:
    genome = [int(v) for v in text.split(",")]
    if not is_valid(genome):
        raise ValueError(f"invalid genome key {text!r}")
    return genome


def describe(genome: Genome) -> dict:
    """The genes by name, for people (manifest, progress)."""
    spec = decode(genome)
    return {"hidden": list(spec.hidden), "activation": spec.activation if spec.hidden else None,
            "dropout": spec.dropout, "l2": spec.l2, "learning_rate": spec.learning_rate,
            "batch_size": spec.batch_size, "cosine": spec.cosine}
