"""``Job``: a recurring schedule of runs (every N seconds, or cron). Not a Future."""

from __future__ import annotations

import threading
import time
from collections import deque
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .._errors import TaskCancelled
from .._ids import make_uuid
from .._states import JobState
from ..core.jobs import RUNS_KEPT
from .task import Task

if TYPE_CHECKING:
    from ..core.jobs import JobRec
    from .supervisor import Supervisor


class Job:
    """A recurring job: ``sup.schedule(fn, every=60)`` or ``sup.schedule(fn, cron="0 * * * *")``.

    The first run comes one interval after ``schedule()`` (``delay=0`` or ``at``
    set it instead). Each run is a ``Task``; ``latest`` is the last one started,
    ``runs`` the recent ones.

        >>> job = sup.schedule(poll, every=1, delay=0, overlap="skip")    # doctest: +SKIP
        >>> job.kick()        # restart the countdown: next run one interval from now
        >>> job.pause(); job.resume(); job.cancel(kill_running=True)
    """

    def __init__(self, supervisor: Supervisor, rec: JobRec, name: str | None) -> None:
        self._supervisor = supervisor
        self._rec = rec
        self.name = name
        self._cond = threading.Condition()
        self._last_done: Task[Any] | None = None
        # Loop-owned: the recent runs. A finished one stays while the supervisor keeps
        # it for get() (keep_finished, keep_finished_bytes); the latest always.
        self._runs: deque[Task[Any]] = deque(maxlen=RUNS_KEPT)
        self._latest: Task[Any] | None = None
        self._retired = False  # ended, and handed to the registry's bounds

    @property
    def id(self) -> str:
        return make_uuid(self._supervisor._id_base, self._rec.seq)

    @property
    def state(self) -> JobState:
        return self._rec.state

    @property
    def next_run_at(self) -> datetime | None:
        """When the next run is due (an aware local datetime), or None."""
        due = self._rec.due
        if due is None or self._rec.state is not JobState.ACTIVE:
            return None
        wall = self._rec.wall_due
        if wall is None:
            wall = due + (time.time() - time.monotonic())
        return datetime.fromtimestamp(wall).astimezone()

    @property
    def runs(self) -> list[Task[Any]]:
        """The recent runs (at most 100), oldest first. A finished run stays listed
        while the supervisor keeps it for ``get()`` (``keep_finished``,
        ``keep_finished_bytes``)."""
        return self._supervisor._ask(lambda: list(self._runs))  # type: ignore[no-any-return]

    @property
    def latest(self) -> Task[Any] | None:
        """The last run started, or None."""
        return self._latest

    def result(self, timeout: float | None = None) -> Any:
        """The latest finished run's result (or its exception, raised), waiting for the
        first run to finish if none has yet.

        Raises TimeoutError after ``timeout`` seconds, and TaskCancelled if the job
        ended without any run finishing.
        """
        if self._last_done is None:
            self._supervisor._check_process()  # in a forked child no run would finish
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._last_done is None:
                if self._rec.state in (JobState.CANCELLED, JobState.FINISHED) and not any(
                    not r.state.final for r in self._rec.live
                ):
                    raise TaskCancelled(f"job {self.id} ended without a finished run")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no run of job {self.id} finished in time")
                self._cond.wait(remaining)
            last = self._last_done
        return last.result()

    def kick(self) -> bool:
        """Restart the countdown: the next run is one interval from now. False if not active."""
        return self._control(lambda j, now: self._book.kick(j, now))

    def pause(self) -> bool:
        return self._control(lambda j, now: self._book.pause(j, now))

    def resume(self) -> bool:
        return self._control(lambda j, now: self._book.resume(j, now))

    def cancel(self, kill_running: bool = False) -> bool:
        """No more runs; with ``kill_running`` the running ones are killed too."""
        return self._control(lambda j, now: self._book.cancel(j, now, kill_running))

    def reschedule(
        self, at: datetime | float | None = None, delay: float | timedelta | None = None
    ) -> bool:
        """Move the next run to ``at`` or to ``delay`` from now."""
        due, wall = self._supervisor._start_of(at, delay, required=True)
        assert due is not None
        return self._control(lambda j, now: self._book.reschedule(j, now, due, wall))

    @property
    def _book(self) -> Any:
        return self._supervisor._core.jobs

    def _control(self, fn: Any) -> bool:
        return bool(self._supervisor._ask(lambda: fn(self._rec, time.monotonic())))

    # Called by the supervisor loop.
    def _started(self, task: Task[Any]) -> None:
        self._runs.append(task)
        self._latest = task

    def _forget(self, task: Task[Any]) -> None:
        if task in self._runs:
            self._runs.remove(task)

    def _run_finished(self, task: Task[Any]) -> None:
        with self._cond:
            self._last_done = task
            self._cond.notify_all()

    def _changed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return f"<Job{name} {self.id} {self.state.value}>"
