"""``Task``: one run of a function, a concurrent.futures.Future that can really be cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Generator
from concurrent.futures import Future
from concurrent.futures._base import FINISHED as _FINISHED
from concurrent.futures._base import PENDING as _PENDING
from datetime import datetime, timedelta
from typing import Any, Protocol, SupportsFloat, TypeVar

from .._errors import TaskCancelled
from .._ids import make_uuid
from .._policy import wait_seconds
from .._states import TaskState
from ..core.model import Run

T = TypeVar("T")


class TaskOwner(Protocol):
    """What a Task asks of its supervisor (``Supervisor`` is one)."""

    _id_base: int

    def _check_process(self) -> None: ...

    def _wall(self, mono: float | None) -> float | None: ...

    def _run_callbacks(self, task: Task[Any], callbacks: list[Any]) -> None: ...

    def _cancel_run(self, task: Task[Any], wait: bool = True) -> bool: ...

    def _postpone_run(self, task: Task[Any], delay: float | timedelta | None) -> bool: ...

    def _reschedule_run(
        self, task: Task[Any], at: datetime | float | None, delay: float | timedelta | None
    ) -> bool: ...

_CANCELLED_STATES = (TaskState.CANCELLED, TaskState.SUPERSEDED)
_CONDITION_LOCK = threading.Lock()
_QUIET_BATCH = 4096  # tasks finished per hold of _CONDITION_LOCK by finish_unwatched
# The error of the tasks cancelled in bulk at shutdown until one is asked for (a million
# exceptions made at once would cost the loop a full garbage collection or more): each
# task then gets its own, as raising one attaches a traceback to it.
CANCELLED_IN_BULK = TaskCancelled("cancelled")

# What the loop publishes of a run, in one assignment, so that a caller always reads a
# state the loop was in: (state, attempts, worker pid, started at, finished at (both
# monotonic), progress).
TaskView = tuple[TaskState, int, "int | None", "float | None", "float | None", Any]
PENDING_VIEW: TaskView = (TaskState.PENDING, 0, None, None, None, None)
SCHEDULED_VIEW: TaskView = (TaskState.SCHEDULED, 0, None, None, None, None)


class Task(Future[T]):
    """One run of a function in a worker process.

    A ``concurrent.futures.Future``: ``result()``, ``exception()``, ``done()``,
    ``add_done_callback()`` and ``await task`` work as usual. Unlike a plain
    Future, ``cancel()`` also stops a task that is already running: its worker
    process tree is killed and replaced.

        >>> with Supervisor(workers=2) as sup:              # doctest: +SKIP
        ...     task = sup.schedule(crunch, args=(data,), timeout=30)
        ...     print(task.result(), task.state, task.worker_pid)
    """

    def __init__(
        self,
        supervisor: TaskOwner,
        seq: int,
        run: Run | None,
        name: str | None,
        delay: float | None = None,
        view: TaskView = PENDING_VIEW,
        keep: bool = False,
    ) -> None:
        # Future.__init__ is skipped on purpose: its Condition costs about 1.3 KiB, which
        # would be most of a scheduled task's memory. ``_condition`` is made on first use.
        # ``_waiters`` and ``_done_callbacks`` stay the class's empty tuples until then:
        # Future only appends to them while holding ``_condition``.
        # What every task has is a slot (8 bytes each); the rest is a class default, set
        # in the instance's dict when a task has it. Its outcome (``_state``, ``_result``,
        # ``_exception``) too: a task that waits for its time (a million of them) has
        # none yet.
        self._supervisor = supervisor
        self._seq = seq  # the core's number for it (its id is made of it)
        # The core's record: a token for the commands this task sends to the loop, and
        # its policy (never changed). Anything else of it is the loop's alone. None for
        # a seed (see core.model.Seed) until the core makes its Run and the loop adopts
        # it: a command then names the task by ``_seq``.
        self._run = run
        self._view = view  # written by the loop only, in one step
        self._delay = delay  # what kick() postpones by
        self._keep = keep  # kept for get() once finished (see _retain)
        if name is not None:
            self.name = name

    __slots__ = ("_delay", "_keep", "_run", "_seq", "_supervisor", "_view")
    _state = _PENDING
    _result: Any = None
    _exception: BaseException | None = None
    _cond: threading.Condition | None = None
    job: Any = None  # the Job this task is a run of, if any
    name: str | None = None
    traceback: str | None = None
    _waiters: Any = ()
    _done_callbacks: Any = ()
    _inline_callbacks: Any = ()  # taskwarden's own (the asyncio bridge): never block
    _size = 0  # bytes its outcome took on the wire (counted against keep_finished_bytes)

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond = self._cond
        if cond is None:
            with _CONDITION_LOCK:
                cond = self._cond
                if cond is None:
                    # Future's own methods read _exception once they hold the Condition.
                    self._own_error()
                    self._waiters = []
                    self._done_callbacks = []
                    cond = self._cond = threading.Condition()
        return cond

    def _own_error(self) -> BaseException | None:
        """``_exception``, made the task's own if it is the shared CANCELLED_IN_BULK."""
        exc = self._exception
        if exc is CANCELLED_IN_BULK:
            exc = self._exception = TaskCancelled(*CANCELLED_IN_BULK.args)
        return exc

    def _finish_quietly(self, result: Any, exception: BaseException | None) -> bool:
        """Resolve without making a Condition when nobody ever waited (the loop calls it)."""
        with _CONDITION_LOCK:
            if self._cond is not None:
                return False
            self._result = result
            self._exception = exception
            self._state = _FINISHED
        # No callback to run: adding one makes the Condition (_condition), which is None.
        return True

    def _invoke_callbacks(self) -> None:
        """Future calls this once resolved. Done-callbacks run on the supervisor's
        callback thread (in order), not in the loop thread that resolved the task: a
        callback that blocks, waits for another task or raises cannot stall the loop."""
        for callback in self._inline_callbacks:
            try:
                callback(self)
            except Exception:
                logging.getLogger("taskwarden").exception("internal callback failed")
        if self._done_callbacks:
            self._supervisor._run_callbacks(self, list(self._done_callbacks))

    def _add_inline_callback(self, fn: Any) -> None:
        """A callback of taskwarden's own that never blocks: run in the resolving thread."""
        with self._condition:
            if self._state != _FINISHED:
                if not self._inline_callbacks:
                    self._inline_callbacks = []
                self._inline_callbacks.append(fn)
                return
        fn(self)

    def result(self, timeout: SupportsFloat | None = None) -> T:
        if self._state == _FINISHED:  # resolved: no need to take (or make) the Condition
            if self._exception is None:
                result: T = self._result
                return result
            exc: BaseException | None = self._exception
            if exc is CANCELLED_IN_BULK:
                with _CONDITION_LOCK:
                    exc = self._own_error()
            assert exc is not None
            try:
                raise exc
            finally:
                del self, exc  # break the cycles (traceback -> frame), as Future does
        self._supervisor._check_process()  # in a forked child nothing would resolve it
        return super().result(wait_seconds(timeout))

    def exception(self, timeout: SupportsFloat | None = None) -> BaseException | None:
        if self._state == _FINISHED:
            if self._exception is not CANCELLED_IN_BULK:
                return self._exception
            with _CONDITION_LOCK:
                return self._own_error()
        self._supervisor._check_process()
        return super().exception(wait_seconds(timeout))

    def done(self) -> bool:
        # No lock needed to read one attribute, and none made (see __init__).
        return self._state == _FINISHED

    def set_result(self, result: T) -> None:
        if not self._finish_quietly(result, None):
            super().set_result(result)

    def set_exception(self, exception: BaseException | None) -> None:
        if not self._finish_quietly(None, exception):
            super().set_exception(exception)

    # ------------------------------------------------------------- read-only
    @property
    def id(self) -> str:
        """A UUID string; ``Supervisor.get(task.id)`` finds the task again."""
        return make_uuid(self._supervisor._id_base, self._seq)

    @property
    def state(self) -> TaskState:
        return self._view[0]

    @property
    def worker_pid(self) -> int | None:
        """The pid of the worker process that ran (or runs) the latest attempt."""
        return self._view[2]

    @property
    def started_at(self) -> float | None:
        """When the latest attempt started, as a ``time.time()`` timestamp."""
        return self._supervisor._wall(self._view[3])

    @property
    def finished_at(self) -> float | None:
        return self._supervisor._wall(self._view[4])

    @property
    def attempts(self) -> int:
        """How many times the task has been started (retries included)."""
        return self._view[1]

    @property
    def progress(self) -> Any:
        """The last value the task gave to ``taskwarden.heartbeat(progress)``."""
        return self._view[5]

    @property
    def key(self) -> str | None:
        run = self._run
        return None if run is None else run.policy.key  # a seed has no key

    # -------------------------------------------------------------- control
    def cancel(self) -> bool:
        """Cancel in any state but a final one; a running task's process is killed.

        Returns True if the task is now cancelled: its body never ran, or the process
        that ran it is gone (the call waits for that). It ends CANCELLED, or SUPERSEDED
        if a newer task of its key superseded it first. False if it had already ended,
        or (rarely) if it had been handed to a worker ahead of time, began before the
        worker read the cancel and ran to its end: then its own outcome stands.
        """
        if self._view[0].final:
            return False
        return self._supervisor._cancel_run(self)

    def cancelled(self) -> bool:
        # Only once resolved: a killed task's future resolves when its process is gone.
        return self._state == _FINISHED and self._view[0] in _CANCELLED_STATES

    def running(self) -> bool:
        return self._view[0] is TaskState.RUNNING

    def kick(self) -> bool:
        """Push a task that has not started back by its delay (the watchdog pattern).

        Returns True if the start moved, False if the task had already started
        or ended, so a dead-man's switch can tell whether it fired.
        """
        return self._supervisor._postpone_run(self, None)

    def postpone(self, delay: float | timedelta | None = None) -> bool:
        """Like ``kick()``, with another delay (seconds or a timedelta) if given."""
        return self._supervisor._postpone_run(self, delay)

    def reschedule(
        self, at: datetime | float | None = None, delay: float | timedelta | None = None
    ) -> bool:
        """Move the start of a task that has not started; False if it already has."""
        return self._supervisor._reschedule_run(self, at, delay)

    def __await__(self) -> Generator[Any, None, T]:
        """``await task``: its result, or what ``result()`` would raise (a cancelled or
        superseded task raises TaskCancelled / TaskSuperseded, not asyncio's
        CancelledError). Cancelling the awaiting coroutine cancels the task: a running
        one's process is killed, as users of ``run_in_executor`` expect the work to stop.
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()

        def copy(task: Future[T]) -> None:  # in the event loop's thread
            if waiter.done():
                return
            exc = self.exception()  # resolved: does not block
            if exc is not None:
                waiter.set_exception(exc)
            else:
                waiter.set_result(self._result)

        def on_done(task: Future[T]) -> None:  # in the thread that resolved the task
            with contextlib.suppress(RuntimeError):  # the event loop is closed
                loop.call_soon_threadsafe(copy, task)

        def on_waiter_done(fut: asyncio.Future[T]) -> None:
            if fut.cancelled() and not self._view[0].final:
                # The task is CANCELLED when this returns, but its process may still be
                # going: the event loop does not wait for that.
                self._supervisor._cancel_run(self, wait=False)

        waiter.add_done_callback(on_waiter_done)
        self._add_inline_callback(on_done)
        return waiter.__await__()

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return f"<Task{name} {self.id} {self.state.value}>"


def finish_unwatched(tasks: list[Task[Any]]) -> list[Task[Any]]:
    """Resolve each task nobody ever waited on or asked a callback of as cancelled
    (CANCELLED_IN_BULK), without a Condition (as ``_finish_quietly``, in batches under
    one lock); returns the others, for ``set_exception``."""
    watched: list[Task[Any]] = []
    for i in range(0, len(tasks), _QUIET_BATCH):
        with _CONDITION_LOCK:
            for task in tasks[i:i + _QUIET_BATCH]:
                if task._cond is not None:
                    watched.append(task)
                    continue
                task._exception = CANCELLED_IN_BULK
                task._state = _FINISHED
    return watched
