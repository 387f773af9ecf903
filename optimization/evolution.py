"""NSGA-II over network genomes (DEAP), as a state machine the broker drives.

The loop is DEAP's NSGA-II example cut at its "evaluate the invalid
individuals" points, because evaluations run on the ZeroMQ workers:

    population = random genomes (+ the fixed default network)      # start()
    evaluate population; population = selNSGA2(population, mu)      # advance(), generation 0
    for each generation:
        offspring = selTournamentDCD + cxUniform + mutUniformInt   # _breed()
        evaluate offspring                                          # needed() / tell()
        population = selNSGA2(population + offspring, mu)           # advance()

    finalists = the `finalists` best networks evaluated             # confirm()
    evaluate each finalist on `folds` more folds                    # needed() / tell()

`needed()` lists the evaluations still to run (the fitness cache `results`
holds every evaluation by genome key, so identical offspring cost nothing);
`tell()` files a result; `advance()` runs once the batch is complete. The whole
state (population, offspring, results, finalists and their folds, logbook, RNG
state) is JSON, saved by the broker after every change: a restarted service
resumes it.

Why the finalists are cross-validated: on easy sets the validation part is
small and at its ceiling, so dozens of networks tie on it and the pick among
them was luck (measured on lfw62, seed 42: 62 networks tied at one fold-0 score
with test accuracies from 98.67% to 100%). Scoring the best few again on other random
train/validation splits of the same photos (optimization/evaluate.py, folds)
separates them at a small cost (finalists x folds evaluations).

Score of a network = mean of validation balanced accuracy and open-set rate
(balanced accuracy alone when no one could be held out).
Final pick (`choose`): among the finalists, by their mean score over every
fold, the smallest network within `epsilon` of the best; ties go to the higher
score, then to the lower validation loss. Epsilon defaults to 0.001, less than
one validation photo: a looser epsilon was measured to trade real accuracy for
size (README). A search cut by its budget before any finalist got a second fold
chooses the same way among everything evaluated, by its fold-0 score.

Time budget: the evolution stops at `1 - confirm_share` of the budget (or when
its generations are done), the finalists' folds at the budget.
"""
from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from statistics import mean, median

from deap import base, creator, tools

from modelization.network import NetworkSpec
from optimization.evaluate import eval_key, parse_eval_key
from optimization.genome import GENES, LOW, UP, Genome, describe, encode, from_key, key, random_genome

OBJECTIVES = ("balanced_accuracy", "open_set", "params")
WEIGHTS = (1.0, 1.0, -1.0)  # maximise, maximise, minimise
CHOICE_RULE = ("score = mean(validation balanced accuracy, validation open-set rate); the `finalists` networks "
               "with the best fold-0 scores (ties: fewer parameters) are evaluated on `folds` more random "
               "train/validation splits; among them, the one with the fewest parameters whose mean score over "
               "all its folds is within epsilon of the best (ties: higher score, then lower validation loss); "
               "then retrained on train + validation for the median of the epochs its folds kept")
RESULT_FIELDS = ("balanced_accuracy", "open_set", "params", "epochs", "val_loss", "seconds")
EVOLVING, CONFIRMING = "evolving", "confirming"


def check_result(result: dict) -> dict:
    """An evaluation's result as `evaluate.evaluate` returns it: RESULT_FIELDS, finite numbers (open_set
    and val_loss may be None), the scores within [0, 1]. Raises ValueError: a worker's answer is checked,
    not trusted."""
    if not isinstance(result, dict):
        raise ValueError("an evaluation result must be an object")
    kept: dict[str, float | None] = {}
    for name in RESULT_FIELDS:
        v = result.get(name)
        if v is None and name in ("open_set", "val_loss"):
            kept[name] = None
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0")
        if name in ("balanced_accuracy", "open_set") and v > 1:
            raise ValueError(f"{name} must be at most 1")
        kept[name] = v
    return kept

if not hasattr(creator, "SearchFitness"):
    creator.create("SearchFitness", base.Fitness, weights=WEIGHTS)
    creator.create("Individual", list, fitness=creator.SearchFitness)

toolbox = base.Toolbox()
toolbox.register("mate", tools.cxUniform, indpb=0.5)
toolbox.register("mutate", tools.mutUniformInt, low=LOW, up=UP, indpb=1.0 / len(GENES))
toolbox.register("select", tools.selNSGA2)
toolbox.register("parents", tools.selTournamentDCD)


@dataclass(frozen=True)
class Controls:
    population: int
    generations: int
    budget_s: float
    seed: int
    epsilon: float = 0.001
    crossover: float = 0.9
    finalists: int = 16         # networks cross-validated at the end
    folds: int = 3              # more folds per finalist (0: pick on fold 0 alone)
    confirm_share: float = 0.25  # of the time budget kept for the finalists' folds

    @property
    def mu(self) -> int:
        """selTournamentDCD draws in fours: the population is rounded up to a multiple of 4."""
        return -(-self.population // 4) * 4


def score(result: dict) -> float:
    """The single validation score the final pick uses."""
    if result.get("open_set") is None:
        return result["balanced_accuracy"]
    return (result["balanced_accuracy"] + result["open_set"]) / 2


class Evolution:
    def __init__(self, controls: Controls, state: dict | None = None):
        self.controls = controls
        s = state or {}
        self.generation: int = s.get("generation", 0)
        self.population: list[Genome] = s.get("population", [])
        self.offspring: list[Genome] | None = s.get("offspring")
        self.results: dict[str, dict] = s.get("results", {})
        self.born: dict[str, int] = s.get("born", {})  # genome key -> the generation it was first evaluated in
        self.logbook: list[dict] = s.get("logbook", [])
        self.evaluations: int = s.get("evaluations", 0)
        self.cache_hits: int = s.get("cache_hits", 0)
        self.batch_evaluations: int = s.get("batch_evaluations", 0)  # tell()s since the batch was bred
        self.phase: str = s.get("phase", EVOLVING)
        self.finalists: list[str] = s.get("finalists", [])
        self.fold_runs: dict[str, dict[str, dict]] = s.get("fold_runs", {})  # genome key -> fold -> result
        self.fold_evaluations: int = s.get("fold_evaluations", 0)
        self.seconds_before: float = s.get("seconds", 0.0)
        self.done: bool = s.get("done", False)
        self.stop_reason: str | None = s.get("stop_reason")
        self.fallback: str | None = s.get("fallback")  # why the build's photos cannot rank networks
        self.rng_state = s.get("rng_state")
        self.resumed_at = time.monotonic()
        if not state:
            self.start()

    # --- state -----------------------------------------------------------------
    def to_json(self) -> dict:
        return {"controls": asdict(self.controls), "generation": self.generation, "population": self.population,
                "offspring": self.offspring, "results": self.results, "born": self.born, "logbook": self.logbook,
                "evaluations": self.evaluations, "cache_hits": self.cache_hits,
                "batch_evaluations": self.batch_evaluations, "phase": self.phase, "finalists": self.finalists,
                "fold_runs": self.fold_runs, "fold_evaluations": self.fold_evaluations, "seconds": self.seconds(),
                "done": self.done, "stop_reason": self.stop_reason, "fallback": self.fallback,
                "rng_state": self.rng_state}

    @classmethod
    def from_json(cls, state: dict) -> Evolution:
        return cls(Controls(**state["controls"]), state)

    def seconds(self) -> float:
        """Search time so far, summed over restarts (time the service was down does not count)."""
        if self.done:
            return self.seconds_before
        return self.seconds_before + time.monotonic() - self.resumed_at

    @contextmanager
    def _rng(self):
        """Run DEAP's operators (which use the `random` module) on this search's own RNG state."""
        outer = random.getstate()
        if self.rng_state is None:
            random.seed(self.controls.seed)
        else:
            version, internal, gauss = self.rng_state
            random.setstate((version, tuple(internal), gauss))
        try:
            yield
        finally:
            version, internal, gauss = random.getstate()
            self.rng_state = [version, list(internal), gauss]  # JSON-ready
            random.setstate(outer)

    # --- the loop ----------------------------------------------------------------
    def start(self) -> None:
        """Generation 0: the fixed default network plus random genomes."""
        with self._rng():
            self.population = [encode(NetworkSpec())] + [random_genome() for _ in range(self.controls.mu - 1)]

    def batch(self) -> list[Genome]:
        """The individuals waiting for their fitness."""
        return self.population if self.offspring is None else self.offspring

    def needed(self) -> list[str]:
        """Keys of the evaluations still to run: the distinct networks of the batch not evaluated yet
        (in batch order), or the finalists' missing folds (fold by fold)."""
        if self.done:
            return []
        if self.phase == CONFIRMING:
            return self._missing_folds()
        keys = dict.fromkeys(key(g) for g in self.batch())
        return [k for k in keys if k not in self.results]

    def _missing_folds(self) -> list[str]:
        """Evaluation keys of the finalists' folds not evaluated yet, fold by fold."""
        return [eval_key(k, f) for f in range(1, self.controls.folds + 1) for k in self.finalists
                if str(f) not in self.fold_runs.get(k, {})]

    def wants(self, evaluation: str) -> bool:
        """An evaluation is still useful (a queued task for it may be dropped otherwise)."""
        return not self.done and evaluation in self.needed()

    def tell(self, evaluation: str, result: dict) -> bool:
        """File one evaluation (key from `needed`). -> False if it was already known (a re-delivered result).

        A result with `fallback` (optimization/evaluate.py: the photos cannot rank networks, e.g.
        too few validation photos) ends the search with nothing evaluated: the build trains the
        fixed network and its manifest says why."""
        if result.get("fallback"):
            if self.done:
                return False
            self.fallback = str(result["fallback"])
            self.finish("fell back to the fixed network: " + self.fallback)
            return True
        genome_key, fold = parse_eval_key(evaluation)
        kept = check_result(result)
        if fold:
            if str(fold) in self.fold_runs.get(genome_key, {}):
                return False
            self.fold_runs.setdefault(genome_key, {})[str(fold)] = kept
            self.fold_evaluations += 1
            return True
        if genome_key in self.results:
            return False
        self.results[genome_key] = kept
        self.born[genome_key] = self.generation
        self.evaluations += 1
        self.batch_evaluations += 1
        return True

    def advance(self) -> None:
        """Once the batch is evaluated: NSGA-II selection, the logbook line, the next offspring (or the
        finalists once the generations are done); once the finalists' folds are in: done."""
        if self.done or self.needed():
            return
        if self.phase == CONFIRMING:
            self.finish("generations done")  # keeps the reason the evolution stopped for
            return
        # every individual of the batch not trained for it came from the fitness cache
        self.cache_hits += len(self.batch()) - self.batch_evaluations
        self.batch_evaluations = 0
        with self._rng():
            pool = self.population + (self.offspring or [])
            selected = toolbox.select([self._individual(g) for g in pool], self.controls.mu)
            self.population = [list(ind) for ind in selected]
            self._record(selected)
            self.generation += 1
            if self.generation > self.controls.generations:
                self.offspring = None
                self.confirm("generations done")
            else:
                self.offspring = self._breed(selected)

    def _breed(self, parents: list) -> list[Genome]:
        offspring = [toolbox.clone(ind) for ind in toolbox.parents(parents, len(parents))]
        for a, b in zip(offspring[::2], offspring[1::2]):
            if random.random() <= self.controls.crossover:
                toolbox.mate(a, b)
            toolbox.mutate(a)
            toolbox.mutate(b)
        return [list(ind) for ind in offspring]

    def confirm(self, reason: str) -> None:
        """End the evolution (`reason`: generations done or time budget): the best networks so far
        become the finalists, to be evaluated on more folds."""
        self.stop_reason = reason
        self.offspring = None
        self.finalists = self.best(self.controls.finalists) if self.controls.folds > 0 else []
        self.phase = CONFIRMING
        if not self.needed():
            self.finish(reason)

    def check_budget(self) -> bool:
        """Stop what the time budget no longer allows. -> True if the search changed."""
        if self.done:
            return False
        spent, budget = self.seconds(), self.controls.budget_s
        if self.phase == EVOLVING and spent >= budget * (1 - self.controls.confirm_share):
            self.confirm("time budget")
            return True
        if spent >= budget:  # only while confirming: the evolution stopped at the branch above
            self.finish("time budget")
            return True
        return False

    def finish(self, reason: str) -> None:
        """Stop here; `choose` uses what was evaluated. A reason already given (by `confirm`) stays."""
        self.seconds_before = self.seconds()
        self.done, self.stop_reason = True, self.stop_reason or reason

    def _individual(self, genome: Genome):
        ind = creator.Individual(genome)
        r = self.results[key(genome)]
        ind.fitness.values = (r["balanced_accuracy"], r["open_set"] or 0.0, float(r["params"]))
        return ind

    def _record(self, population: list) -> None:
        line: dict[str, object] = {"generation": self.generation, "evaluations": self.evaluations,
                                   "cache_hits": self.cache_hits, "seconds": round(self.seconds(), 2)}
        for i, name in enumerate(OBJECTIVES):
            values = [ind.fitness.values[i] for ind in population]
            line[name] = {"max": max(values), "mean": round(sum(values) / len(values), 6), "min": min(values)}
        self.logbook.append(line)

    # --- results -----------------------------------------------------------------
    def pareto_front(self) -> list[dict]:
        """Non-dominated networks among everything evaluated."""
        if not self.results:
            return []
        individuals = [self._individual(from_key(k)) for k in sorted(self.results)]
        front = tools.sortNondominated(individuals, len(individuals), first_front_only=True)[0]
        return [self.point(key(ind)) for ind in sorted(front, key=lambda i: i.fitness.values[2])]

    def point(self, genome_key: str) -> dict:
        return {"genome": from_key(genome_key), "network": describe(from_key(genome_key)),
                **self.results[genome_key]}

    def candidates(self) -> list[dict]:
        """Every network evaluated, in the order they were: the generation it was bred for (None in a
        checkpoint older than this field), its shape (hidden units, activation, cosine head), validation
        scores, size and single score. Compact: a long search has thousands."""
        out = []
        for k, r in self.results.items():
            net = describe(from_key(k))
            out.append({"generation": self.born.get(k), "genome": from_key(k), "hidden": net["hidden"],
                        "activation": net["activation"], "cosine": net["cosine"], "params": r["params"],
                        "balanced_accuracy": r["balanced_accuracy"], "open_set": r["open_set"],
                        "score": round(score(r), 6)})
        return out

    def best(self, n: int) -> list[str]:
        """The `n` best networks evaluated: by fold-0 score, ties to fewer parameters, then lower loss."""
        return sorted(self.results, key=lambda k: (-score(self.results[k]), self.results[k]["params"],
                                                   self.results[k].get("val_loss") or 0.0, k))[:n]

    def fold_results(self, genome_key: str) -> list[dict]:
        """Every evaluation of a network: fold 0, then its other folds in order."""
        more = self.fold_runs.get(genome_key, {})
        return [self.results[genome_key]] + [more[f] for f in sorted(more, key=int)]

    def choose(self) -> dict | None:
        """The final pick (rule in CHOICE_RULE), or None when nothing was evaluated."""
        if not self.results:
            return None
        confirmed = any(self.fold_runs.get(k) for k in self.finalists)
        candidates = self.finalists if confirmed else sorted(self.results)
        scores = {k: mean(score(r) for r in self.fold_results(k)) for k in candidates}
        losses = {k: mean(r.get("val_loss") or 0.0 for r in self.fold_results(k)) for k in candidates}
        best = max(scores.values())
        within = [k for k in candidates if scores[k] >= best - self.controls.epsilon]
        chosen = min(within, key=lambda k: (self.results[k]["params"], -scores[k], losses[k], k))
        runs = self.fold_results(chosen)
        return {**self.point(chosen), "epochs": int(median(r["epochs"] for r in runs)),
                "score": round(scores[chosen], 6), "best_score": round(best, 6),
                "folds": len(runs), "fold_scores": [round(score(r), 6) for r in runs]}

    def confirmation(self) -> dict:
        """The finalists and their scores on every fold (the manifest's view of the cross-validation)."""
        finalists = []
        for k in self.finalists:
            runs = self.fold_results(k)
            finalists.append({"genome": from_key(k), "network": describe(from_key(k)),
                              "params": self.results[k]["params"], "score": round(mean(score(r) for r in runs), 6),
                              "fold_scores": [round(score(r), 6) for r in runs],
                              "epochs": [r["epochs"] for r in runs]})
        return {"finalists_wanted": self.controls.finalists, "more_folds": self.controls.folds,
                "evaluations": self.fold_evaluations,
                "complete": bool(self.finalists) and self.controls.folds > 0 and not self._missing_folds(),
                "finalists": finalists}

    def progress(self) -> dict:
        """What /is_available shows while searching."""
        best = {}
        if self.results:
            values = list(self.results.values())
            best = {"balanced_accuracy": max(r["balanced_accuracy"] for r in values),
                    "open_set": max((r["open_set"] for r in values if r["open_set"] is not None), default=None),
                    "smallest_params": min(r["params"] for r in values)}
        todo = self.controls.folds * len(self.finalists)
        return {"generation": min(self.generation, self.controls.generations),
                "generations": self.controls.generations, "evaluations": self.evaluations,
                "phase": self.phase, "finalists": len(self.finalists),
                "fold_evaluations": self.fold_evaluations, "fold_evaluations_planned": todo,
                "cache_hits": self.cache_hits, "seconds": round(self.seconds(), 1),
                "budget_s": self.controls.budget_s, "best": best, "done": self.done,
                "stop_reason": self.stop_reason}

    def report(self) -> dict:
        """The manifest's `optimization` section (baselines are added by the training task)."""
        return {"requested": True, "performed": bool(self.results), "fallback": self.fallback,
                "algorithm": "NSGA-II (DEAP selNSGA2)",
                "objectives": {"balanced_accuracy": "max, validation", "open_set": "max, validation",
                               "params": "min"},
                "controls": asdict(self.controls), "population": self.controls.mu,
                "generations_run": len(self.logbook) - 1 if self.logbook else 0,
                "evaluations": self.evaluations, "cache_hits": self.cache_hits,
                "seconds": round(self.seconds(), 2), "stop_reason": self.stop_reason,
                "choice_rule": CHOICE_RULE, "chosen": self.choose(), "cross_validation": self.confirmation(),
                "logbook": self.logbook, "pareto_front": self.pareto_front(), "candidates": self.candidates()}
