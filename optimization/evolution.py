"""NSGA-II over network genomes (DEAP), as a state machine the broker drives.

The loop is DEAP's NSGA-II example cut at its "evaluate the invalid
individuals" points, because evaluations run on the ZeroMQ workers:

    population = random genomes (+ the fixed default network)      # start()
    evaluate population; population = selNSGA2(population, mu)      # advance(), generation 0
    for each generation:
        offspring = selTournamentDCD + cxUniform + mutUniformInt   # _breed()
        evaluate offspring                                          # needed() / tell()
        population = selNSGA2(population + offspring, mu)           # advance()

`needed()` lists the distinct networks still to evaluate (the fitness cache
`results` holds every evaluation by genome key, so identical offspring cost
nothing); `tell()` files a result; `advance()` runs once the batch is complete.
The whole state (population, offspring, results, logbook, RNG state) is JSON,
saved by the broker after every change: a restarted service resumes it.

Final pick (`choose`): score = mean of validation balanced accuracy and
open-set rate (balanced accuracy alone when no one could be held out); among
everything evaluated, the smallest network whose score is within `epsilon` of
the best; ties go to the higher score, then to the lower validation loss.
Epsilon defaults to 0.001, below one validation photo in most builds: the
validation scores of good networks often tie exactly (a few hard photos), and
a looser epsilon was measured to trade real accuracy for size (README).
"""
from __future__ import annotations

import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from deap import base, creator, tools

from modelization.network import NetworkSpec
from optimization.genome import GENES, LOW, UP, Genome, describe, encode, from_key, key, random_genome

OBJECTIVES = ("balanced_accuracy", "open_set", "params")
WEIGHTS = (1.0, 1.0, -1.0)  # maximise, maximise, minimise
CHOICE_RULE = ("score = mean(validation balanced accuracy, validation open-set rate); among all evaluated "
               "networks, the one with the fewest parameters whose score is within epsilon of the best score "
               "(ties: higher score, then lower validation loss); then retrained on train + validation for the epochs its evaluation kept")

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
        self.logbook: list[dict] = s.get("logbook", [])
        self.evaluations: int = s.get("evaluations", 0)
        self.cache_hits: int = s.get("cache_hits", 0)
        self.batch_evaluations: int = s.get("batch_evaluations", 0)  # tell()s since the batch was bred
        self.seconds_before: float = s.get("seconds", 0.0)
        self.done: bool = s.get("done", False)
        self.stop_reason: str | None = s.get("stop_reason")
        self.rng_state = s.get("rng_state")
        self.resumed_at = time.monotonic()
        if not state:
            self.start()

    # --- state -----------------------------------------------------------------
    def to_json(self) -> dict:
        return {"controls": asdict(self.controls), "generation": self.generation, "population": self.population,
                "offspring": self.offspring, "results": self.results, "logbook": self.logbook,
                "evaluations": self.evaluations, "cache_hits": self.cache_hits,
                "batch_evaluations": self.batch_evaluations, "seconds": self.seconds(),
                "done": self.done, "stop_reason": self.stop_reason, "rng_state": self.rng_state}

    @classmethod
    def from_json(cls, state: dict) -> "Evolution":
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
        """Keys of the distinct networks of the batch not evaluated yet (in batch order)."""
        if self.done:
            return []
        keys = dict.fromkeys(key(g) for g in self.batch())
        return [k for k in keys if k not in self.results]

    def tell(self, genome_key: str, result: dict) -> bool:
        """File one evaluation. -> False if it was already known (a re-delivered result)."""
        if genome_key in self.results:
            return False
        self.results[genome_key] = {k: result.get(k) for k in ("balanced_accuracy", "open_set", "params", "epochs",
                                                                 "val_loss", "seconds")}
        self.evaluations += 1
        self.batch_evaluations += 1
        return True

    def advance(self) -> None:
        """Once the batch is evaluated: NSGA-II selection, the logbook line, the next offspring (or done)."""
        if self.done or self.needed():
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
                self.finish("generations done")
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

    def finish(self, reason: str) -> None:
        """Stop here (generations done or time budget spent); `choose` uses what was evaluated."""
        self.seconds_before = self.seconds()
        self.done, self.stop_reason = True, reason

    def _individual(self, genome: Genome):
        ind = creator.Individual(genome)
        r = self.results[key(genome)]
        ind.fitness.values = (r["balanced_accuracy"], r["open_set"] or 0.0, float(r["params"]))
        return ind

    def _record(self, population: list) -> None:
        line = {"generation": self.generation, "evaluations": self.evaluations, "cache_hits": self.cache_hits,
                "seconds": round(self.seconds(), 2)}
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

    def choose(self) -> dict | None:
        """The final pick (rule in CHOICE_RULE), or None when nothing was evaluated."""
        if not self.results:
            return None
        best = max(score(r) for r in self.results.values())
        within = [k for k, r in sorted(self.results.items()) if score(r) >= best - self.controls.epsilon]
        chosen = min(within, key=lambda k: (self.results[k]["params"], -score(self.results[k]),
                                             self.results[k].get("val_loss") or 0.0))
        return {**self.point(chosen), "score": round(score(self.results[chosen]), 6),
                "best_score": round(best, 6)}

    def progress(self) -> dict:
        """What /is_available shows while searching."""
        best = {}
        if self.results:
            values = list(self.results.values())
            best = {"balanced_accuracy": max(r["balanced_accuracy"] for r in values),
                    "open_set": max((r["open_set"] for r in values if r["open_set"] is not None), default=None),
                    "smallest_params": min(r["params"] for r in values)}
        return {"generation": min(self.generation, self.controls.generations),
                "generations": self.controls.generations, "evaluations": self.evaluations,
                "cache_hits": self.cache_hits, "seconds": round(self.seconds(), 1),
                "budget_s": self.controls.budget_s, "best": best, "done": self.done,
                "stop_reason": self.stop_reason}

    def report(self) -> dict:
        """The manifest's `optimization` section (baselines are added by the training task)."""
        return {"requested": True, "performed": bool(self.results), "algorithm": "NSGA-II (DEAP selNSGA2)",
                "objectives": {"balanced_accuracy": "max, validation", "open_set": "max, validation",
                               "params": "min"},
                "controls": asdict(self.controls), "population": self.controls.mu,
                "generations_run": len(self.logbook) - 1 if self.logbook else 0,
                "evaluations": self.evaluations, "cache_hits": self.cache_hits,
                "seconds": round(self.seconds(), 2), "stop_reason": self.stop_reason,
                "choice_rule": CHOICE_RULE, "chosen": self.choose(), "logbook": self.logbook,
                "pareto_front": self.pareto_front()}
