"""Job states and the moves between them: the one table the broker, the store and the API follow.

A job walks `queued -> extracting (-> optimizing) -> training -> done`, or ends
`failed` from any state that is not final. Nothing leaves a final state. A
worker never names a state: the broker derives it from the kind of task the
worker was given (`TASK_STATE`), and the store refuses any move this table
does not allow.
"""
from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """What a job is doing. Values are what the store keeps and the API shows."""
    QUEUED = "queued"
    EXTRACTING = "extracting"
    OPTIMIZING = "optimizing"
    TRAINING = "training"
    PROCESSING = "processing"  # a recorded video being read by a worker (not a build)
    DONE = "done"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


class TaskKind(StrEnum):
    """The kinds of work a worker does: three for a build (app/worker/tasks.py), one for a video."""
    EXTRACT = "extract"    # a chunk of photos -> their embeddings
    EVALUATE = "evaluate"  # one candidate network of the genetic search -> its validation scores
    TRAIN = "train"        # every embedding -> the model bundle
    VIDEO = "video"        # a recorded video and a model's bundle -> its tracks (modelization/video.py)


FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED})
RUNNING_STATES = (JobState.EXTRACTING, JobState.OPTIMIZING, JobState.TRAINING, JobState.PROCESSING)

# state -> the states it may move to. Staying in a running state (progress) is a move too.
# QUEUED may jump past extraction: a restarted broker finds every chunk of a job already extracted.
# A video job walks `queued -> processing -> done` (or failed).
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.EXTRACTING, JobState.OPTIMIZING, JobState.TRAINING, JobState.PROCESSING,
                                JobState.FAILED}),
    JobState.EXTRACTING: frozenset({JobState.EXTRACTING, JobState.OPTIMIZING, JobState.TRAINING, JobState.FAILED}),
    JobState.OPTIMIZING: frozenset({JobState.OPTIMIZING, JobState.TRAINING, JobState.FAILED}),
    JobState.TRAINING: frozenset({JobState.TRAINING, JobState.DONE, JobState.FAILED}),
    JobState.PROCESSING: frozenset({JobState.PROCESSING, JobState.DONE, JobState.FAILED}),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset(),
}

# The state a job is in while a worker runs a task of this kind (the state PROGRESS moves it to).
TASK_STATE: dict[TaskKind, JobState] = {
    TaskKind.EXTRACT: JobState.EXTRACTING,
    TaskKind.EVALUATE: JobState.OPTIMIZING,
    TaskKind.TRAIN: JobState.TRAINING,
    TaskKind.VIDEO: JobState.PROCESSING,
}


def can_move(current: JobState | str, new: JobState | str) -> bool:
    """Whether a job in `current` may move to `new`."""
    return JobState(new) in TRANSITIONS[JobState(current)]


def predecessors(new: JobState | str) -> tuple[str, ...]:
    """The states from which a job may move to `new` (for a guarded UPDATE)."""
    return tuple(s.value for s, nexts in TRANSITIONS.items() if JobState(new) in nexts)
