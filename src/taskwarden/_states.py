"""Every state and every allowed change of state lives here.

A change that the tables do not allow is a bug in taskwarden: ``check_*``
raises ``InvalidTransition`` at once instead of carrying on quietly.
"""

from __future__ import annotations

import enum


class TaskState(str, enum.Enum):
    """Where one run of a task stands. A str enum: ``state == "FAILED"`` holds."""

    SCHEDULED = "SCHEDULED"  # waiting for its time
    PENDING = "PENDING"  # due, waiting for a worker
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"
    SUPERSEDED = "SUPERSEDED"

    def __str__(self) -> str:
        return self.value

    @property
    def final(self) -> bool:
        return self in FINAL_TASK_STATES


class JobState(str, enum.Enum):
    """Where a recurring job stands."""

    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    FINISHED = "FINISHED"
    CANCELLED = "CANCELLED"

    def __str__(self) -> str:
        return self.value


FINAL_TASK_STATES = frozenset(
    {
        TaskState.COMPLETED,
        TaskState.FAILED,
        TaskState.TIMED_OUT,
        TaskState.CANCELLED,
        TaskState.SUPERSEDED,
    }
)

_ENDINGS = FINAL_TASK_STATES

# A retry sends a failed, crashed or timed-out run back to SCHEDULED (its
# backoff) without passing through a final state, so RUNNING -> SCHEDULED
# is allowed.
TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    # -> FAILED: the pool is broken (its initializer fails) and cannot run it.
    TaskState.SCHEDULED: frozenset(
        {TaskState.PENDING, TaskState.CANCELLED, TaskState.SUPERSEDED, TaskState.FAILED}
    ),
    # PENDING -> FAILED: the pool is broken (its initializer fails) and cannot run it.
    # PENDING -> TIMED_OUT: its time limit ran out while its worker was still starting.
    TaskState.PENDING: frozenset(
        {
            TaskState.RUNNING,
            TaskState.SCHEDULED,
            TaskState.CANCELLED,
            TaskState.SUPERSEDED,
            TaskState.FAILED,
            TaskState.TIMED_OUT,
        }
    ),
    TaskState.RUNNING: _ENDINGS | {TaskState.SCHEDULED, TaskState.PENDING},
    TaskState.COMPLETED: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.TIMED_OUT: frozenset(),
    TaskState.CANCELLED: frozenset(),
    TaskState.SUPERSEDED: frozenset(),
}

JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.ACTIVE: frozenset({JobState.PAUSED, JobState.FINISHED, JobState.CANCELLED}),
    JobState.PAUSED: frozenset({JobState.ACTIVE, JobState.CANCELLED, JobState.FINISHED}),
    JobState.FINISHED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """An impossible change of state: a bug in taskwarden, never the user's."""


def check_task(old: TaskState, new: TaskState) -> TaskState:
    if new not in TASK_TRANSITIONS[old]:
        raise InvalidTransition(f"task cannot go from {old.value} to {new.value}")
    return new


def check_job(old: JobState, new: JobState) -> JobState:
    if new not in JOB_TRANSITIONS[old]:
        raise InvalidTransition(f"job cannot go from {old.value} to {new.value}")
    return new
