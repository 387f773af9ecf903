"""The search's genome: decoding, canonical keys, and DEAP operators that stay in bounds."""
from __future__ import annotations

import random

import pytest
from deap import creator
from hypothesis import given, settings
from hypothesis import strategies as st

from modelization import lean
from modelization.network import NetworkSpec
from optimization.evolution import toolbox
from optimization.genome import (
    CHOICES,
    GENES,
    LOW,
    NAMES,
    UNITS,
    UP,
    canonical,
    decode,
    describe,
    encode,
    from_key,
    is_valid,
    key,
    random_genome,
)

LAYERS, UNITS1, UNITS2, UNITS3, ACTIVATION, DROPOUT = (
    NAMES.index(n) for n in ("layers", "units1", "units2", "units3", "activation", "dropout"))


def genomes():
    """Any valid genome: one index per gene, each within LOW..UP."""
    return st.tuples(*(st.integers(lo, up) for lo, up in zip(LOW, UP))).map(list)


def same_network(a: NetworkSpec, b: NetworkSpec) -> bool:
    """Equal as built networks: the activation of a network without hidden layers is never used.

    (decode keeps the activation gene of a 0-layer genome while encode zeroes it, so
    decode(encode(decode(g))) may differ from decode(g) in that one unused field.)
    """
    if not a.hidden and not b.hidden:
        a = NetworkSpec(**{**a.__dict__, "activation": b.activation})
    return a == b


# --------------------------------------------------------------------------- decode / encode / key

def test_the_tables_agree():
    """LOW/UP/NAMES/CHOICES are one declaration seen four ways."""
    assert len(LOW) == len(UP) == len(NAMES) == len(GENES) == 10
    assert all(UP[i] == len(CHOICES[n]) - 1 for i, n in enumerate(NAMES))
    assert is_valid(encode(NetworkSpec()))  # the fixed default network is in the search space


@given(genomes())
def test_decode_gives_a_network_from_the_choice_tables(g):
    """Every valid genome decodes to a spec whose every knob is one of the choices."""
    spec = decode(g)
    assert isinstance(spec, NetworkSpec)
    assert 0 <= len(spec.hidden) <= 3 and len(spec.hidden) == CHOICES["layers"][g[LAYERS]]
    assert all(u in UNITS for u in spec.hidden)
    assert list(spec.hidden) == [UNITS[g[i]] for i in (UNITS1, UNITS2, UNITS3)][:len(spec.hidden)]
    assert spec.activation in CHOICES["activation"]
    assert spec.dropout in CHOICES["dropout"]
    assert spec.l2 in CHOICES["l2"]
    assert spec.learning_rate in CHOICES["learning_rate"]
    assert spec.batch_size in CHOICES["batch_size"]
    assert spec.cosine in CHOICES["cosine"]
    if not spec.hidden:
        assert spec.dropout == 0.0
    assert spec.input_scale == NetworkSpec().input_scale  # not searched


@given(genomes())
def test_encode_decode_round_trips(g):
    """encode(decode(g)) is canonical(g); canonical genomes decode and re-encode exactly."""
    c = canonical(g)
    assert is_valid(c)
    assert encode(decode(g)) == c
    assert canonical(c) == c  # idempotent
    assert decode(encode(decode(c))) == decode(c)
    # for any genome, the round trip builds the same network (see same_network)
    assert same_network(decode(encode(decode(g))), decode(g))


@given(genomes())
def test_canonical_zeroes_exactly_the_unused_genes(g):
    """Units of absent layers (and activation/dropout without layers) are zeroed; the rest are kept."""
    c = canonical(g)
    layers = g[LAYERS]
    for i, name in enumerate(NAMES):
        unused = (name.startswith("units") and int(name[-1]) > layers) or \
                 (layers == 0 and name in ("activation", "dropout"))
        assert c[i] == (0 if unused else g[i]), name


@given(genomes())
def test_key_and_from_key(g):
    """The key is the canonical genome's; from_key inverts it."""
    k = key(g)
    assert k == key(canonical(g))
    assert from_key(k) == canonical(g)
    assert key(from_key(k)) == k
    assert all(type(v) is int for v in from_key(k))


@given(genomes(), st.data())
def test_unused_genes_do_not_change_the_key(g, data):
    """Genomes that differ only in genes their network ignores share one key (one evaluation)."""
    other = list(g)
    for i in (UNITS1, UNITS2, UNITS3)[g[LAYERS]:]:
        other[i] = data.draw(st.integers(LOW[i], UP[i]))
    if g[LAYERS] == 0:
        other[ACTIVATION] = data.draw(st.integers(LOW[ACTIVATION], UP[ACTIVATION]))
        other[DROPOUT] = data.draw(st.integers(LOW[DROPOUT], UP[DROPOUT]))
    assert key(other) == key(g)
    assert describe(other) == describe(g)


@given(genomes(), st.data())
def test_used_genes_change_the_key(g, data):
    """Changing a gene the network does use gives a different key."""
    used = [i for i, name in enumerate(NAMES)
            if not (name.startswith("units") and int(name[-1]) > g[LAYERS])
            and not (g[LAYERS] == 0 and name in ("activation", "dropout"))]
    i = data.draw(st.sampled_from(used))
    new = data.draw(st.integers(LOW[i], UP[i]).filter(lambda v: v != g[i]))
    other = list(g)
    other[i] = new
    assert key(other) != key(g)


@given(st.randoms(use_true_random=False))
def test_random_genome_is_valid(rng):
    assert is_valid(random_genome(rng))


def test_describe_default_network():
    assert describe(encode(NetworkSpec())) == {"hidden": [128], "activation": "relu", "dropout": 0.3, "l2": 0.0,
                                               "learning_rate": 3e-3, "batch_size": 64, "cosine": False}


# --------------------------------------------------------------------------- DEAP operators

@settings(max_examples=300)
@given(genomes(), genomes(), st.integers(0, 2**32 - 1))
def test_deap_operators_keep_genomes_valid(a, b, seed):
    """cxUniform and mutUniformInt (as the search registers them) never leave the bounds."""
    random.seed(seed)
    ind_a, ind_b = creator.Individual(a), creator.Individual(b)
    for _ in range(5):
        toolbox.mate(ind_a, ind_b)
        toolbox.mutate(ind_a)
        toolbox.mutate(ind_b)
        assert is_valid(list(ind_a)) and is_valid(list(ind_b))
        assert all(type(v) is int for v in ind_a + ind_b)
        assert same_network(decode(list(ind_a)), decode(from_key(key(list(ind_a)))))


@given(genomes(), genomes(), st.integers(0, 2**32 - 1))
def test_crossover_only_swaps_genes(a, b, seed):
    """cxUniform exchanges genes position by position: the multiset at each locus is kept."""
    random.seed(seed)
    ind_a, ind_b = creator.Individual(a), creator.Individual(b)
    toolbox.mate(ind_a, ind_b)
    assert all({x, y} == {p, q} for x, y, p, q in zip(ind_a, ind_b, a, b))


# --------------------------------------------------------------------------- invalid input

@given(genomes(), st.data())
def test_out_of_range_gene_is_rejected(g, data):
    i = data.draw(st.integers(0, len(g) - 1))
    g = list(g)
    g[i] = data.draw(st.one_of(st.integers(max_value=LOW[i] - 1), st.integers(min_value=UP[i] + 1)))
    assert not is_valid(g)
    with pytest.raises(ValueError):
        decode(g)
    with pytest.raises(ValueError):
        from_key(",".join(map(str, g)))


@given(st.lists(st.integers(0, 1), max_size=20).filter(lambda g: len(g) != len(GENES)))
def test_wrong_length_is_rejected(g):
    with pytest.raises(ValueError):
        decode(g)


@given(genomes(), st.data())
def test_non_int_gene_is_rejected(g, data):
    i = data.draw(st.integers(0, len(g) - 1))
    g = list(g)
    g[i] = data.draw(st.one_of(st.just(float(g[i])), st.just(str(g[i])), st.none()))
    with pytest.raises(ValueError):
        decode(g)


@pytest.mark.parametrize("text", ["", "garbage", "1,2,3", "0,0,0,0,0,0,0,0,0", "0,0,0,0,0,0,0,0,0,0,0",
                                  "0,0,0,0,0,0,0,0,0,2", "0,0,0,0,0,0,0,0,0,-1", "0,0,0,0,0,0,0,0,0,x",
                                  "0.0,0,0,0,0,0,0,0,0,0", "0,0,0,0,0,0,0,0,0,0,"])
def test_from_key_rejects_garbage(text):
    with pytest.raises(ValueError):
        from_key(text)


@given(st.text())
def test_from_key_on_any_text_is_valid_or_value_error(text):
    """from_key never returns an invalid genome and fails only with ValueError."""
    try:
        genome = from_key(text)
    except ValueError:
        return
    assert is_valid(genome)


def test_encode_rejects_networks_outside_the_space():
    for spec in (NetworkSpec(hidden=(64, 64, 64, 64)), NetworkSpec(hidden=(100,)), NetworkSpec(dropout=0.4),
                 NetworkSpec(activation="gelu"), NetworkSpec(learning_rate=0.1), NetworkSpec(batch_size=512)):
        with pytest.raises(ValueError):
            encode(spec)


# --------------------------------------------------------------------------- every genome builds

@settings(max_examples=15, deadline=None)
@given(genomes())
def test_every_genome_builds_a_keras_model(g):
    """The Keras model of any decoded genome builds, with the parameter count lean predicts."""
    from modelization.network import build_network
    spec = decode(g)
    model = build_network(128, 5, spec)
    assert model.count_params() == lean.count_params(spec, 128, 5)
    assert model.output_shape == (None, 5)
