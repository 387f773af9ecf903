"""The genetic search of a job (optimize=1), on the broker's side: the NSGA-II state machine of
optimization/evolution.py, whose candidates are `evaluate` tasks for any worker; checkpointed after every
result (uploads/<id>/search.json) so that a restart resumes it."""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from app.broker.store import JobStore
from app.wire import protocol as p
from app.wire.protocol import ProtocolError, Task, escape
from constants import Settings
from constants.states import JobState, TaskKind
from logger import logger
from optimization.evolution import Controls, Evolution

if TYPE_CHECKING:
    from app.broker.planning import Planner


class Searches:
    """The searches running (and finished, until their job ends), by job."""

    def __init__(self, settings: Settings, store: Callable[[], JobStore], planner: Planner,
                 held: Callable[[str], set[str]]):
        self.s = settings
        self._store = store
        self.planner = planner
        self.held = held  # job id -> the genomes workers are evaluating now
        self.running: dict[str, Evolution] = {}

    @property
    def store(self) -> JobStore:
        return self._store()

    def on_forget(self, job_id: str) -> None:
        self.running.pop(job_id, None)

    def start(self, job_id: str, options: dict) -> None:
        """Resume the job's search from its checkpoint, or begin it."""
        state = self.store.load_search(job_id)
        if state is not None:
            evolution = Evolution.from_json(state)
            logger.info("job {}: search resumed at generation {} ({} evaluations)", job_id,
                        evolution.generation, evolution.evaluations)
        else:
            evolution = Evolution(Controls(
                population=int(options.get("population", self.s.search_population)),
                generations=int(options.get("generations", self.s.search_generations)),
                budget_s=float(options.get("time_budget", self.s.search_budget_s)),
                seed=int(options.get("seed", self.s.default_seed)), epsilon=self.s.search_epsilon,
                finalists=self.s.search_finalists, folds=self.s.search_folds,
                confirm_share=self.s.search_confirm_share))
        self.running[job_id] = evolution
        self.step(job_id)

    def step(self, job_id: str) -> None:
        """Advance the search as far as results allow, checkpoint it, queue what it needs next."""
        evolution = self.running[job_id]
        while not evolution.done and not evolution.needed():
            evolution.advance()  # a batch fully answered from the fitness cache moves on at once
        self.store.save_search(job_id, evolution.to_json())
        progress = evolution.progress()
        if evolution.done:
            queue = self.planner.queue = deque(t for t in self.planner.queue
                                               if not (t.job == job_id and t.kind == TaskKind.EVALUATE))
            self.store.progress(job_id, JobState.TRAINING, JobState.TRAINING, 0, 1, progress)
            if not any(t.job == job_id and t.kind == TaskKind.TRAIN for t in queue):
                queue.appendleft(Task(job_id, TaskKind.TRAIN))
            logger.info("job {}: search finished ({}), {} evaluations in {:.1f} s", job_id,
                        evolution.stop_reason, evolution.evaluations, evolution.seconds())
            return
        queue = self.planner.queue
        pending = {t.genome for t in queue if t.job == job_id} | self.held(job_id)
        queue.extend(Task(job_id, TaskKind.EVALUATE, genome=k) for k in evolution.needed() if k not in pending)
        if progress["phase"] == "confirming":  # the finalists' cross-validation
            done, total = progress["fold_evaluations"], progress["fold_evaluations_planned"]
            stage = f"cross-validating {progress['finalists']} finalists: {done} of {total}"
        else:
            done, total = progress["generation"], evolution.controls.generations
            stage = f"generation {done} of {total}"
        self.store.progress(job_id, JobState.OPTIMIZING, stage, done, total, progress)

    def tell(self, task: Task, result: bytes) -> None:
        """An evaluate task's result: its scores (ProtocolError when they do not fit); a late one is ignored."""
        evolution = self.running.get(task.job)
        if evolution is None or evolution.done:
            return  # a late answer after the budget ran out
        try:
            evolution.tell(task.genome, p.decode_json(result, 1024 * 1024, "scores"))
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"scores: {escape(exc)}") from None
        self.step(task.job)

    def check_budgets(self) -> None:
        for job_id, evolution in list(self.running.items()):
            if evolution.check_budget():
                self.step(job_id)

    def wants(self, task: Task) -> bool:
        """An evaluate task is still useful: its search runs and still needs that evaluation."""
        evolution = self.running.get(task.job)
        return evolution is not None and evolution.wants(task.genome)

    def active(self) -> int:
        return len([e for e in self.running.values() if not e.done])
