"""``Job``: a recurring schedule of runs (every N seconds, or cron). Not a Future."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol, SupportsFloat, TypeVar

from .._errors import TaskCancelled
from .._ids import make_uuid
from .._policy import wait_seconds
from .._states import JobState
from ..core.engine import JobControl, JobOp
from ..core.jobs import RUNS_KEPT, JobRec
from ._clock import Clock
from .task import Task

R = TypeVar("R")


class JobOwner(Protocol):
    """What a Job asks of its supervisor (``Supervisor`` is one)."""

    _id_base: int
    _clock: Clock  # the loop's time

    def _check_process(self) -> None: ...

    def _ask(self, fn: Callable[[], R]) -> R: ...

    def _command(self, cmd: JobControl) -> JobControl: ...

    def _start_of(
        self, at: datetime | float | None, delay: float | timedelta | None, required: bool = False
    ) -> tuple[float | None, float | None]: ...

# What the loop publishes of a job, in one assignment: (state, next run's monotonic
# time, the same on the wall clock, latest run, latest finished run, runs unresolved).
JobView = tuple[JobState, "float | None", "float | None", "Task[Any] | None",
                "Task[Any] | None", int]
_ENDED = (JobState.CANCELLED, JobState.FINISHED)


class Job:
    """A recurring job: ``sup.schedule(fn, every=60)`` or ``sup.schedule(fn, cron="0 * * * *")``.

    The first run comes one interval after ``schedule()`` (``delay=0`` or ``at``
    set it instead). Each run is a ``Task``; ``latest`` is the last one started,
    ``runs`` the recent ones.

        >>> job = sup.schedule(poll, every=1, delay=0, overlap="skip")    # doctest: +SKIP
        >>> job.kick()        # restart the countdown: next run one interval from now
        >>> job.pause(); job.resume(); job.cancel(kill_running=True)
    """

    def __init__(self, supervisor: JobOwner, rec: JobRec, name: str | None) -> None:
        self._supervisor = supervisor
        # The core's record: a token for the commands this job sends to the loop, and its
        # seq (never changed). Anything else of it is read on the loop thread only.
        self._rec = rec
        self.name = name
        self._cond = threading.Condition()
        # Loop-owned: the recent runs. A finished one stays while the supervisor keeps
        # it for get() (keep_finished, keep_finished_bytes); the latest always.
        self._runs: deque[Task[Any]] = deque(maxlen=RUNS_KEPT)
        self._latest: Task[Any] | None = None
        self._last_done: Task[Any] | None = None
        self._open = 0  # runs started and not resolved yet
        self._retired = False  # ended, and handed to the registry's bounds
        # What callers read: published by the loop in one step (see _publish).
        self._view: JobView = (rec.state, rec.due, rec.wall_due, None, None, 0)

    @property
    def id(self) -> str:
        return make_uuid(self._supervisor._id_base, self._rec.seq)

    @property
    def state(self) -> JobState:
        return self._view[0]

    @property
    def next_run_at(self) -> datetime | None:
        """When the next run is due (an aware local datetime), or None."""
        state, due, wall = self._view[:3]
        if due is None or state is not JobState.ACTIVE:
            return None
        if wall is None:
            clock = self._supervisor._clock
            wall = due + (clock.time() - clock.monotonic())
        return datetime.fromtimestamp(wall).astimezone()

    @property
    def runs(self) -> list[Task[Any]]:
        """The recent runs (at most 100), oldest first. A finished run stays listed
        while the supervisor keeps it for ``get()`` (``keep_finished``,
        ``keep_finished_bytes``)."""
        return self._supervisor._ask(lambda: list(self._runs))

    @property
    def latest(self) -> Task[Any] | None:
        """The last run started, or None."""
        return self._view[3]

    def result(self, timeout: SupportsFloat | None = None) -> Any:
        """The latest finished run's result (or its exception, raised), waiting for the
        first run to finish if none has yet.

        Raises TimeoutError after ``timeout`` seconds, and TaskCancelled if the job
        ended without any run finishing.
        """
        if self._view[4] is None:
            self._supervisor._check_process()  # in a forked child no run would finish
        wait = wait_seconds(timeout)
        deadline = None if wait is None else time.monotonic() + wait
        with self._cond:
            while True:
                state, _, _, _, last, unresolved = self._view  # one state the loop was in
                if last is not None:
                    break
                if state in _ENDED and not unresolved:
                    raise TaskCancelled(f"job {self.id} ended without a finished run")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no run of job {self.id} finished in time")
                self._cond.wait(remaining)
        return last.result()

    def kick(self) -> bool:
        """Restart the countdown: the next run is one interval from now. False if not active."""
        return self._control("kick")

    def pause(self) -> bool:
        return self._control("pause")

    def resume(self) -> bool:
        return self._control("resume")

    def cancel(self, kill_running: bool = False) -> bool:
        """No more runs; with ``kill_running`` the running ones are killed too."""
        return self._control("cancel", kill_running=kill_running)

    def reschedule(
        self, at: datetime | float | None = None, delay: float | timedelta | None = None
    ) -> bool:
        """Move the next run to ``at`` or to ``delay`` from now."""
        due, wall = self._supervisor._start_of(at, delay, required=True)
        assert due is not None
        return self._control("reschedule", due=due, wall_due=wall)

    def _control(self, op: JobOp, kill_running: bool = False, due: float | None = None,
                 wall_due: float | None = None) -> bool:
        cmd = JobControl(self._rec, op, kill_running, due, wall_due)
        return self._supervisor._command(cmd).answer

    # Called by the supervisor loop.
    def _publish(self) -> None:
        """Show callers the job as the loop has it now, in one step."""
        rec = self._rec
        with self._cond:
            self._view = (rec.state, rec.due, rec.wall_due, self._latest, self._last_done,
                          self._open)
            self._cond.notify_all()

    def _started(self, task: Task[Any]) -> None:
        self._runs.append(task)
        self._latest = task
        self._open += 1
        self._publish()

    def _forget(self, task: Task[Any]) -> None:
        if task in self._runs:
            self._runs.remove(task)

    def _run_finished(self, task: Task[Any]) -> None:
        """A run of this job resolved: the latest finished run from now on."""
        self._open -= 1
        self._last_done = task
        self._publish()

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return f"<Job{name} {self.id} {self.state.value}>"
