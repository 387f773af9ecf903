"""The NSGA-II search as a state machine, driven by a synthetic fitness; and how one genome is evaluated."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelization import lean
from modelization.dataset import stratified_split
from modelization.network import NetworkSpec
from optimization.evaluate import eval_key, evaluate, fold_split, held_out_people, parse_eval_key, search_data
from optimization.evolution import CONFIRMING, EVOLVING, OBJECTIVES, Controls, Evolution, score
from optimization.genome import decode, encode, from_key, is_valid, key
from test.test_genome import genomes

CONTROLS = Controls(population=12, generations=4, budget_s=1e9, seed=3)


def fake(evaluation: str) -> dict:
    """A deterministic, smooth stand-in for training: bigger/regularised networks score differently,
    and each fold a little differently (an evaluation key is `genome key[/fold]`)."""
    genome_key, fold = parse_eval_key(evaluation)
    g = from_key(genome_key)
    spec = decode(g)
    depth = len(spec.hidden)
    width = sum(spec.hidden) / 256
    ba = 0.70 + 0.06 * depth + 0.03 * width - 0.2 * spec.dropout + 0.01 * math.log10(spec.learning_rate) \
        + 0.002 * (sum(i * v for i, v in enumerate(g)) % 5) + 0.003 * ((sum(g) + 3 * fold) % 4)
    os_ = 0.55 + 0.1 * spec.cosine + 0.04 * depth - 30 * spec.l2 + 0.003 * (spec.batch_size // 32 % 3)
    return {"balanced_accuracy": round(min(1.0, max(0.0, ba)), 6), "open_set": round(min(1.0, max(0.0, os_)), 6),
            "params": lean.count_params(spec, 128, 10), "epochs": 1 + sum(g) % 7, "seconds": 0.01,
            "ignored": "tell keeps only the five fields"}


def reload(evo: Evolution) -> Evolution:
    """What a restarted broker does: the checkpoint through JSON, then from_json."""
    return Evolution.from_json(json.loads(json.dumps(evo.to_json())))


def drive(evo: Evolution, *, resume_after_advance=False, resume_mid_batch=False):
    """Run to the end. -> (evolution, evaluation keys told)."""
    told: set[str] = set()
    while not evo.done:
        needed = evo.needed()
        assert len(needed) == len(set(needed))
        assert not told & set(needed), "the fitness cache must answer keys already told"
        for i, k in enumerate(needed):
            if resume_mid_batch and i == len(needed) // 2:
                evo = reload(evo)
                assert evo.needed() == needed[i:]
            assert evo.tell(k, fake(k))
            told.add(k)
        evo.advance()
        if resume_after_advance:
            evo = reload(evo)
    return evo, told


def without_seconds(logbook: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "seconds"} for line in logbook]


def dominates(a: dict, b: dict) -> bool:
    """a dominates b under (max balanced_accuracy, max open_set, min params)."""
    va = (a["balanced_accuracy"], a["open_set"] or 0.0, -a["params"])
    vb = (b["balanced_accuracy"], b["open_set"] or 0.0, -b["params"])
    return all(x >= y for x, y in zip(va, vb)) and va != vb


# --------------------------------------------------------------------------- a full run

def genomes_told(told: set[str]) -> set[str]:
    return {k for k in told if parse_eval_key(k)[1] == 0}


def test_full_run_logbook_and_fitness_cache():
    """generations + 1 logbook lines with every statistic; each distinct network evaluated once."""
    evo, told = drive(Evolution(CONTROLS))
    mu = CONTROLS.mu
    assert evo.done and evo.stop_reason == "generations done" and evo.needed() == []
    assert len(evo.logbook) == CONTROLS.generations + 1
    assert evo.evaluations == len(genomes_told(told)) == len(evo.results)
    assert set(evo.results) == genomes_told(told)
    assert all(set(r) == {"balanced_accuracy", "open_set", "params", "epochs", "val_loss", "seconds"}
               for r in evo.results.values())
    for generation, line in enumerate(evo.logbook):
        assert line["generation"] == generation
        assert {"generation", "evaluations", "cache_hits", "seconds", *OBJECTIVES} <= set(line)
        assert line["seconds"] >= 0
        # every individual of every batch was either trained or answered by the cache
        assert line["evaluations"] + line["cache_hits"] == mu * (generation + 1)
        for name in OBJECTIVES:
            stats = line[name]
            assert set(stats) == {"max", "mean", "min"}
            assert stats["min"] <= stats["mean"] + 1e-6 and stats["mean"] <= stats["max"] + 1e-6
    assert evo.logbook[-1]["evaluations"] == evo.evaluations and evo.logbook[-1]["cache_hits"] == evo.cache_hits
    # the last line describes the final population
    final = [fake(key(g)) for g in evo.population]
    assert len(evo.population) == mu and all(is_valid(g) for g in evo.population)
    for name in OBJECTIVES:
        values = [r[name] for r in final]
        assert evo.logbook[-1][name]["max"] == max(values) and evo.logbook[-1][name]["min"] == min(values)
        assert evo.logbook[-1][name]["mean"] == pytest.approx(sum(values) / len(values), abs=1e-6)
    # elitism: NSGA-II never loses the best balanced accuracy found so far
    maxima = [line["balanced_accuracy"]["max"] for line in evo.logbook]
    assert maxima == sorted(maxima)
    assert evo.generation == CONTROLS.generations + 1


@settings(max_examples=40, deadline=None)
@given(population=st.integers(1, 20), generations=st.integers(0, 4), seed=st.integers(0, 2**32 - 1))
def test_any_controls_run_to_the_end(population, generations, seed):
    """For any size, length and seed: the loop ends, and the bookkeeping adds up."""
    controls = Controls(population=population, generations=generations, budget_s=1e9, seed=seed)
    evo, told = drive(Evolution(controls))
    assert len(evo.logbook) == generations + 1 and len(evo.population) == controls.mu
    assert evo.evaluations == len(genomes_told(told)) == len(evo.results)
    assert evo.evaluations + evo.cache_hits == controls.mu * (generations + 1)
    # then every finalist on every other fold, once
    finalists = min(controls.finalists, len(evo.results))
    assert evo.fold_evaluations == len(told) - evo.evaluations == finalists * controls.folds
    assert evo.confirmation()["complete"]
    assert evo.choose() is not None and evo.pareto_front()
    assert key(evo.choose()["genome"]) in evo.finalists
    assert evo.choose()["folds"] == controls.folds + 1


def test_same_seed_same_search_other_seed_other_search():
    a, _ = drive(Evolution(CONTROLS))
    b, _ = drive(Evolution(CONTROLS))
    assert a.choose() == b.choose()
    assert without_seconds(a.logbook) == without_seconds(b.logbook)
    assert a.pareto_front() == b.pareto_front()
    assert a.population == b.population and a.results == b.results

    def first_generation(seed):
        evo = Evolution(Controls(population=12, generations=4, budget_s=1e9, seed=seed))
        for k in evo.needed():
            evo.tell(k, fake(k))
        evo.advance()
        return evo.population, evo.offspring

    assert first_generation(3) == first_generation(3)
    assert first_generation(3) != first_generation(4)


@pytest.mark.parametrize("where", ["after_advance", "mid_batch", "both"])
def test_resume_from_json_equals_an_uninterrupted_run(where):
    """A search checkpointed through JSON and resumed (between or within batches) ends exactly the same."""
    straight, _ = drive(Evolution(CONTROLS))
    resumed, _ = drive(Evolution(CONTROLS), resume_after_advance=where in ("after_advance", "both"),
                       resume_mid_batch=where in ("mid_batch", "both"))
    assert resumed.choose() == straight.choose()
    assert without_seconds(resumed.logbook) == without_seconds(straight.logbook)
    assert resumed.population == straight.population
    assert resumed.pareto_front() == straight.pareto_front()
    assert (resumed.evaluations, resumed.cache_hits) == (straight.evaluations, straight.cache_hits)


def test_checkpoint_keeps_the_clock_and_state():
    evo = Evolution(CONTROLS)
    for k in evo.needed()[:3]:
        evo.tell(k, fake(k))
    evo.seconds_before = 42.0
    again = reload(evo)
    assert again.seconds() >= 42.0
    assert again.results == evo.results and again.population == evo.population
    assert again.batch_evaluations == 3 and again.evaluations == 3


# --------------------------------------------------------------------------- the initial population

@pytest.mark.parametrize("population, mu", [(1, 4), (4, 4), (5, 8), (6, 8), (8, 8), (32, 32), (33, 36)])
def test_population_is_rounded_up_to_a_multiple_of_four(population, mu):
    controls = Controls(population=population, generations=1, budget_s=60, seed=0)
    assert controls.mu == mu
    evo = Evolution(controls)
    assert len(evo.population) == mu
    assert evo.population[0] == encode(NetworkSpec())  # the fixed default network is always a candidate
    assert all(is_valid(g) for g in evo.population)
    assert evo.offspring is None and evo.batch() == evo.population


# --------------------------------------------------------------------------- stopping early, choosing

def test_finish_mid_search_chooses_among_what_was_evaluated():
    evo = Evolution(CONTROLS)
    for k in evo.needed():
        evo.tell(k, fake(k))
    evo.advance()
    half = evo.needed()[: len(evo.needed()) // 2]
    for k in half:
        evo.tell(k, fake(k))
    evo.finish("time budget")
    assert evo.done and evo.stop_reason == "time budget" and evo.needed() == []
    frozen = evo.seconds()
    assert evo.seconds() == frozen  # the clock stops with the search
    logbook = list(evo.logbook)
    evo.advance()  # a no-op once done
    assert evo.logbook == logbook
    chosen = evo.choose()
    best = max(score(r) for r in evo.results.values())
    within = [k for k, r in evo.results.items() if score(r) >= best - CONTROLS.epsilon]
    expected = min(within, key=lambda k: (evo.results[k]["params"], -score(evo.results[k])))
    assert key(chosen["genome"]) == expected and chosen["best_score"] == round(best, 6)
    assert evo.report()["stop_reason"] == "time budget" and evo.report()["performed"]


def test_nothing_evaluated():
    evo = Evolution(CONTROLS)
    assert evo.choose() is None and evo.pareto_front() == []
    evo.finish("time budget")
    assert evo.choose() is None and evo.pareto_front() == [] and evo.needed() == []
    report = evo.report()
    assert not report["performed"] and report["chosen"] is None and report["generations_run"] == 0
    assert evo.progress()["best"] == {}


def result(ba, os_, params):
    return {"balanced_accuracy": ba, "open_set": os_, "params": params, "epochs": 5, "seconds": 1.0}


def genome_key(hidden=(), lr=3e-3):
    return key(encode(NetworkSpec(hidden=hidden, dropout=0.0 if not hidden else 0.3, learning_rate=lr)))


def choose_from(results: dict, epsilon=0.005) -> dict:
    evo = Evolution(Controls(population=4, generations=1, budget_s=60, seed=0, epsilon=epsilon))
    evo.results = results
    return evo.choose()


def test_choose_smallest_within_epsilon_of_the_best():
    big, medium, tiny = genome_key((256, 256)), genome_key((64,)), genome_key(())
    chosen = choose_from({big: result(0.95, 0.90, 100_000),    # score 0.925, the best
                          medium: result(0.93, 0.912, 9_000),  # score 0.921: within 0.005
                          tiny: result(0.90, 0.80, 1_000)})    # score 0.85
    assert key(chosen["genome"]) == medium
    assert chosen["score"] == pytest.approx(0.921) and chosen["best_score"] == pytest.approx(0.925)
    assert chosen["network"]["hidden"] == [64] and chosen["params"] == 9_000


def test_choose_prefers_a_much_better_bigger_network():
    big, tiny = genome_key((128,)), genome_key(())
    assert key(choose_from({big: result(0.95, 0.9, 50_000), tiny: result(0.5, 0.4, 500)})["genome"]) == big
    # with a loose epsilon the tiny one is good enough
    assert key(choose_from({big: result(0.95, 0.9, 50_000), tiny: result(0.5, 0.4, 500)}, epsilon=0.5)["genome"]) \
        == tiny


def test_choose_without_open_set_uses_balanced_accuracy_and_ties_go_to_the_higher_score():
    slow, fast, tiny = genome_key((64,), 5e-4), genome_key((64,), 1e-2), genome_key(())
    assert score(result(0.9, None, 1)) == 0.9
    # same size (same params): the higher score wins
    chosen = choose_from({slow: result(0.901, None, 9_000), fast: result(0.903, None, 9_000),
                          tiny: result(0.80, None, 1_000)})
    assert key(chosen["genome"]) == fast and chosen["score"] == 0.903


# --------------------------------------------------------------------------- the finalists' folds

def evolve_only(controls: Controls) -> Evolution:
    """Run the generations; stop where the finalists' folds begin."""
    evo = Evolution(controls)
    while evo.phase == EVOLVING:
        for k in evo.needed():
            evo.tell(k, fake(k))
        evo.advance()
    return evo


def test_after_the_generations_the_best_networks_are_cross_validated():
    evo = evolve_only(CONTROLS)
    assert evo.phase == CONFIRMING and not evo.done and evo.stop_reason == "generations done"
    by_rank = sorted(evo.results, key=lambda k: (-score(evo.results[k]), evo.results[k]["params"],
                                                  evo.results[k]["val_loss"] or 0.0, k))
    assert evo.finalists == by_rank[:CONTROLS.finalists]
    # fold by fold: every finalist's fold 1 first
    needed = evo.needed()
    assert needed == [eval_key(k, f) for f in range(1, CONTROLS.folds + 1) for k in evo.finalists]
    assert evo.progress()["phase"] == CONFIRMING and evo.progress()["fold_evaluations_planned"] == len(needed)
    for k in needed[:-1]:
        assert evo.tell(k, fake(k))
    evo.advance()
    assert not evo.done and evo.needed() == needed[-1:]
    assert evo.tell(needed[-1], fake(needed[-1])) and not evo.tell(needed[-1], fake(needed[-1]))
    evo.advance()
    assert evo.done and evo.confirmation()["complete"] and evo.fold_evaluations == len(needed)
    assert len(evo.logbook) == CONTROLS.generations + 1  # the logbook is the evolution's


def test_the_pick_is_by_the_mean_over_folds_among_the_finalists():
    big, medium, tiny, outside = genome_key((256,)), genome_key((64,)), genome_key(()), genome_key((32, 32))
    evo = Evolution(Controls(population=4, generations=1, budget_s=60, seed=0, epsilon=0.001, finalists=3, folds=2))
    # fold 0 alone would pick `tiny` (it ties with the best); its other folds show it is worse
    evo.results = {big: result(1.0, 1.0, 30_000), medium: result(0.99, 0.99, 9_000), tiny: result(1.0, 1.0, 1_000),
                   outside: result(0.5, 0.5, 10)}
    assert key(evo.choose()["genome"]) == tiny
    evo.confirm("generations done")
    assert evo.finalists == [tiny, big, medium]
    runs = {big: [(1.0, 0.99), (1.0, 1.0)], medium: [(1.0, 1.0), (1.0, 1.0)], tiny: [(0.96, 0.95), (0.97, 0.97)]}
    epochs = {big: [9, 30], medium: [11, 13], tiny: [5, 5]}
    for k, folds in runs.items():
        for f, (ba, os_) in enumerate(folds, start=1):
            assert evo.tell(eval_key(k, f), {**result(ba, os_, evo.results[k]["params"]), "epochs": epochs[k][f - 1]})
    evo.advance()
    chosen = evo.choose()
    # means: big (1 + 0.995 + 1) / 3 = 0.99833, medium (0.99 + 1 + 1) / 3 = 0.99667, tiny ~0.97
    assert key(chosen["genome"]) == big
    assert chosen["score"] == pytest.approx(0.998333, abs=1e-6) and chosen["folds"] == 3
    assert chosen["fold_scores"] == [1.0, 0.995, 1.0]
    assert chosen["epochs"] == 9  # median of 5 (fold 0), 9, 30
    report = evo.report()["cross_validation"]
    assert report["complete"] and [f["params"] for f in report["finalists"]] == [1_000, 30_000, 9_000]
    # a looser epsilon lets the medium one in: it is smaller
    evo.controls = Controls(**{**evo.controls.__dict__, "epsilon": 0.002})
    assert key(evo.choose()["genome"]) == medium


def test_without_more_folds_the_search_ends_with_the_generations():
    controls = Controls(population=8, generations=2, budget_s=1e9, seed=1, folds=0)
    evo, told = drive(Evolution(controls))
    assert evo.done and evo.finalists == [] and evo.fold_evaluations == 0
    assert all(parse_eval_key(k)[1] == 0 for k in told)
    assert not evo.report()["cross_validation"]["complete"]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_budget_ends_the_evolution_early_then_the_folds(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("optimization.evolution.time.monotonic", clock)
    controls = Controls(population=8, generations=50, budget_s=100, seed=2, confirm_share=0.25, finalists=4)
    evo = Evolution(controls)
    for k in evo.needed():
        evo.tell(k, fake(k))
    evo.advance()
    clock.now += 74
    assert not evo.check_budget() and evo.phase == EVOLVING
    clock.now += 1  # 75 s: three quarters of the budget
    assert evo.check_budget() and evo.phase == CONFIRMING and evo.stop_reason == "time budget"
    assert not evo.done and len(evo.finalists) == 4
    first = evo.needed()[:3]
    for k in first:
        evo.tell(k, fake(k))
    clock.now += 25  # the whole budget
    assert evo.check_budget() and evo.done and evo.needed() == [] and not evo.check_budget()
    assert evo.seconds() == pytest.approx(100)
    assert evo.stop_reason == "time budget" and not evo.confirmation()["complete"]
    # the pick: finalists by the mean of the folds they have
    chosen = evo.choose()
    assert key(chosen["genome"]) in evo.finalists
    assert chosen["folds"] == (2 if eval_key(key(chosen["genome"]), 1) in first else 1)


def test_resume_mid_cross_validation_through_json():
    straight, _ = drive(Evolution(CONTROLS))
    evo = evolve_only(CONTROLS)
    needed = evo.needed()
    for k in needed[:5]:
        evo.tell(k, fake(k))
    evo = reload(evo)
    assert evo.phase == CONFIRMING and evo.needed() == needed[5:]
    evo, _ = drive(evo)
    assert evo.choose() == straight.choose()
    assert evo.report()["cross_validation"] == straight.report()["cross_validation"]


def test_pareto_front_is_exactly_the_non_dominated_points():
    evo, _ = drive(Evolution(CONTROLS))
    front = evo.pareto_front()
    assert front and [p["params"] for p in front] == sorted(p["params"] for p in front)
    for a in front:
        assert not any(dominates(b, a) for b in front)
    front_keys = {key(p["genome"]) for p in front}
    points = [evo.point(k) for k in evo.results]
    for p in points:
        if key(p["genome"]) not in front_keys:
            assert any(dominates(f, p) for f in front)
        else:
            assert not any(dominates(q, p) for q in points)


def test_pareto_front_by_hand():
    a, b, c, d = genome_key(()), genome_key((32,)), genome_key((64,)), genome_key((128,))
    evo = Evolution(CONTROLS)
    evo.results = {a: result(0.8, 0.7, 100), b: result(0.9, 0.6, 200), c: result(0.85, 0.55, 300),
                   d: result(0.95, None, 400)}
    assert [key(p["genome"]) for p in evo.pareto_front()] == [a, b, d]  # c is dominated by b


def test_tell_of_a_known_key_is_ignored():
    evo = Evolution(CONTROLS)
    k = evo.needed()[0]
    assert evo.tell(k, fake(k))
    before = (evo.evaluations, evo.batch_evaluations, dict(evo.results[k]))
    assert evo.tell(k, {**fake(k), "balanced_accuracy": 0.0}) is False
    assert (evo.evaluations, evo.batch_evaluations, evo.results[k]) == before
    assert k not in evo.needed()


def test_advance_waits_for_the_whole_batch():
    evo = Evolution(CONTROLS)
    needed = evo.needed()
    for k in needed[:-1]:
        evo.tell(k, fake(k))
    evo.advance()
    assert evo.generation == 0 and evo.logbook == [] and evo.needed() == needed[-1:]


def test_the_global_random_state_is_untouched():
    """The search keeps its own RNG: interleaving it with random.random() changes nothing outside."""
    random.seed(123)
    expected = [random.random() for _ in range(4)]
    random.seed(123)
    got = [random.random()]
    evo = Evolution(CONTROLS)
    got.append(random.random())
    for k in evo.needed():
        evo.tell(k, fake(k))
    evo.advance()
    got.append(random.random())
    drive(reload(evo))
    got.append(random.random())
    assert got == expected


# --------------------------------------------------------------------------- evaluate / search_data

PEOPLE = [f"person{i}" for i in range(6)]


def embeddings(seed: int, people=PEOPLE, per_person: int = 12):
    """Unit-norm clusters, one per person; labels interleaved like real uploads."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(people), 128))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = [p for _ in range(per_person) for p in people]
    x = np.stack([centers[people.index(p)] for p in labels]) + rng.normal(scale=0.03, size=(len(labels), 128))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def build_data(seed: int, people=PEOPLE, holdout=0.2):
    x, labels = embeddings(seed, people)
    split = stratified_split(labels, min_photos=3, test_fraction=0.2, val_fraction=0.2, seed=seed)
    y = np.array([split.people.index(lab) if lab in split.people else -1 for lab in labels])
    return x, y, split, search_data(x, y, split, holdout, seed)


def test_search_data_partitions_the_split():
    """Known people's photos keep their parts (renumbered); the held-out person's go to the stranger sets."""
    x, y, split, data = build_data(5)
    assert data.n_people == 6 and data.held_out == held_out_people(6, 0.2, 5) and len(data.held_out) == 1
    assert data.n_known == 5
    held = data.held_out[0]
    is_held = y == held
    assert len(data.x_train) == np.sum(~is_held[split.train]) and len(data.x_val) == np.sum(~is_held[split.val])
    assert len(data.x_test) == np.sum(~is_held[split.test])
    assert len(data.x_strangers) == np.sum(is_held[split.train]) + np.sum(is_held[split.val])
    assert len(data.x_strangers_test) == np.sum(is_held[split.test]) > 0
    for part in (data.y_train, data.y_val, data.y_test):
        assert set(part.tolist()) == set(range(5))
    # renumbering keeps the order of the known people
    known = [p for p in range(6) if p != held]
    assert np.array_equal(data.x_train, x[split.train][~is_held[split.train]])
    assert np.array_equal(np.array(known)[data.y_train], y[split.train][~is_held[split.train]])
    held_rows = {r.tobytes() for r in x[is_held]}
    assert all(r.tobytes() in held_rows for r in np.concatenate([data.x_strangers, data.x_strangers_test]))
    assert not any(r.tobytes() in held_rows for r in np.concatenate([data.x_train, data.x_val, data.x_test]))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), fold=st.integers(1, 5), val_fraction=st.floats(0.05, 0.95))
def test_a_fold_resplits_train_and_validation_only(seed, fold, val_fraction):
    """Fold f: the same train + validation photos, split again per person (at least one on each side);
    the test photos never move; deterministic for a seed and a fold."""
    _x, labels = embeddings(seed % 1000)
    split = stratified_split(labels, min_photos=3, test_fraction=0.2, val_fraction=0.1, seed=seed)
    y = np.array([split.people.index(lab) for lab in labels])
    train, val = fold_split(y, split, fold, val_fraction, seed)
    assert sorted(np.concatenate([train, val]).tolist()) == sorted(np.concatenate([split.train, split.val]).tolist())
    assert not set(train.tolist()) & set(val.tolist()) and not set(split.test.tolist()) & set(val.tolist())
    for c in range(len(split.people)):
        assert np.sum(y[train] == c) >= 1 and np.sum(y[val] == c) >= 1
    again = fold_split(y, split, fold, val_fraction, seed)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    fold = fold_split(y, split, 0, val_fraction, seed)
    assert all(np.array_equal(a, b) for a, b in zip(fold, (split.train, split.val)))


def test_folds_hold_out_other_people():
    people = [f"p{i}" for i in range(20)]
    x, labels = embeddings(3, people)
    split = stratified_split(labels, min_photos=3, test_fraction=0.2, val_fraction=0.1, seed=3)
    y = np.array([split.people.index(lab) for lab in labels])
    held = [search_data(x, y, split, 0.2, 3, fold).held_out for fold in range(4)]
    assert all(len(h) == 4 for h in held) and len({tuple(h) for h in held}) > 1
    assert held[0] == held_out_people(20, 0.2, 3)  # fold 0 is the build's own
    data = search_data(x, y, split, 0.2, 3, 2)
    assert len(data.x_test) + len(data.x_strangers_test) == len(split.test)  # the test photos stay put


@given(genomes(), st.integers(0, 99))
def test_evaluation_keys_round_trip(genome, fold):
    k = key(genome)
    assert parse_eval_key(eval_key(k, fold)) == (k, fold)
    assert (eval_key(k, fold) == k) == (fold == 0)


def run_evaluate(data, genome, seed=0):
    return evaluate(genome, data, seed=seed, max_epochs=40, patience=3, target_far=0.1)


@pytest.mark.parametrize("spec", [NetworkSpec(), NetworkSpec(hidden=(), dropout=0.0, cosine=True)],
                         ids=["default", "cosine-logistic"])
def test_evaluate_scores_a_genome(spec):
    _, _, _, data = build_data(1)
    genome = encode(spec)
    r = run_evaluate(data, genome)
    assert set(r) == {"balanced_accuracy", "open_set", "params", "epochs", "val_loss", "seconds"}
    assert 0.0 <= r["balanced_accuracy"] <= 1.0 and 0.0 <= r["open_set"] <= 1.0
    assert r["balanced_accuracy"] > 0.9  # well-separated clusters
    assert r["params"] == lean.count_params(spec, 128, 6)  # the shipped network has everybody's classes
    assert isinstance(r["epochs"], int) and 1 <= r["epochs"] <= 40
    assert r["seconds"] >= 0
    again = run_evaluate(data, genome)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in r.items() if k != "seconds"}
    json.dumps(r)  # goes over ZeroMQ as JSON


def test_evaluate_with_two_people_has_no_open_set():
    """With fewer than 3 people nobody is held out: the open-set objective is None."""
    _, _, _, data = build_data(2, people=PEOPLE[:2])
    assert data.held_out == [] and len(data.x_strangers) == 0 and data.n_known == 2
    r = run_evaluate(data, encode(NetworkSpec()))
    assert r["open_set"] is None and 0.0 <= r["balanced_accuracy"] <= 1.0


def test_evaluate_falls_back_when_the_photos_cannot_rank_networks():
    """Two photos per person: no validation photo (train/test only), so no network can be compared."""
    x, labels = embeddings(4, per_person=2)
    split = stratified_split(labels, min_photos=1, test_fraction=0.2, val_fraction=0.2, seed=4)
    y = np.array([split.people.index(lab) for lab in labels])
    data = search_data(x, y, split, 0.2, 4)
    assert len(data.x_val) == 0
    r = run_evaluate(data, encode(NetworkSpec()))
    assert set(r) == {"fallback"} and "validation photos show 0 known person" in r["fallback"]
    json.dumps(r)
    # the search stops at that answer, with nothing chosen and the reason kept
    evolution = Evolution(Controls(population=4, generations=2, budget_s=60, seed=1))
    first = evolution.needed()[0]
    assert evolution.tell(first, r) and evolution.done and evolution.needed() == []
    assert evolution.choose() is None
    report = Evolution.from_json(evolution.to_json()).report()  # survives a checkpoint
    assert report["fallback"] == r["fallback"] and report["performed"] is False
    assert report["stop_reason"].startswith("fell back to the fixed network")
    assert not evolution.tell(evolution.population and key(evolution.population[1]), r)  # already done


@given(st.integers(0, 200), st.floats(0.01, 0.9), st.integers(0, 2**32 - 1))
def test_held_out_people(n, fraction, seed):
    """Deterministic; at least one stranger from 3 people on, never fewer than 2 known people."""
    held = held_out_people(n, fraction, seed)
    assert held == held_out_people(n, fraction, seed)
    assert held == sorted(set(held)) and all(0 <= p < n and type(p) is int for p in held)
    if n < 3:
        assert held == []
    else:
        assert 1 <= len(held) <= n - 2
        assert len(held) == min(max(1, round(fraction * n)), n - 2)
    assert held_out_people(n, 0.0, seed) == []


def test_every_candidate_is_listed_with_the_generation_it_was_bred_for():
    """The console's chart of the search (#20): one entry per network evaluated, with the generation whose
    batch first asked for it; the counts per generation add up to the logbook's, and they survive a reload."""
    evo, told = drive(Evolution(CONTROLS), resume_mid_batch=True)
    candidates = evo.report()["candidates"]
    assert len(candidates) == evo.evaluations == len(genomes_told(told))
    assert {key(c["genome"]) for c in candidates} == set(evo.results)
    for c in candidates:
        r = evo.results[key(c["genome"])]
        assert (c["params"], c["balanced_accuracy"], c["open_set"]) == (r["params"], r["balanced_accuracy"],
                                                                       r["open_set"])
        assert c["score"] == pytest.approx(score(r), abs=1e-6)
        assert c["hidden"] == list(decode(c["genome"]).hidden) and c["cosine"] == decode(c["genome"]).cosine
    generations = [c["generation"] for c in candidates]
    assert generations == sorted(generations) and generations[0] == 0
    evaluated = [line["evaluations"] for line in evo.logbook]
    for g in range(len(evo.logbook)):
        new_in_g = evaluated[g] - (evaluated[g - 1] if g else 0)
        assert generations.count(g) == new_in_g
    assert reload(evo).candidates() == evo.candidates()


def test_a_checkpoint_from_before_the_generations_were_kept_still_loads():
    evo, _ = drive(Evolution(CONTROLS))
    state = json.loads(json.dumps(evo.to_json()))
    del state["born"]
    old = Evolution.from_json(state)
    assert [c["generation"] for c in old.candidates()] == [None] * len(evo.results)
    assert old.choose() == evo.choose()
