"""``Supervisor``: the public executor, and the loop thread that drives the core.

Data flow::

    caller threads                         | supervisor loop thread (owns all state)
                                           |
    submit()/schedule()  -- validate, pickle (in the caller's thread)
          |                                |
          +--> command deque + wake pipe --+--> Core (pure: heap, dispatch, watchdogs)
    cancel()/get()/stats() wait for reply  |      |  actions: spawn / send / kill / resolve
                                           |      v
                                           |   LokyPool: one socket pair per worker
                                           |      |  ^ results, heartbeats, exits (pidfd)
                                           |      v  |
                                           |   worker processes (loky context)

The loop blocks in one ``epoll`` wait until the earliest deadline of the
core's heap, a worker message, a worker's exit or a command: it never polls.
It never waits for anything else either: a killed worker is reaped when its
exit fd fires, and user code (done-callbacks) runs on a callback thread of
its own, so that nothing a callback does can delay a watchdog.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import functools
import inspect
import itertools
import logging
import math
import numbers
import os
import pickle
import queue
import threading
import time
import types
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar, cast, overload

import cloudpickle

from .._errors import TaskCancelled
from .._ids import make_uuid, new_base, seq_of
from .._policy import (
    ANCHOR,
    JOB_POLICY,
    MAX_SECONDS,
    OVERLAP,
    SUPERVISOR_POLICY,
    TASK_POLICY,
    Policy,
    check_keywords,
    normalize,
    seconds,
)
from .._states import JobState, TaskState
from ..core import engine as E
from ..core.jobs import MIN_INTERVAL, CronTrigger, JobRec
from ..pool import _wire
from ..pool import base as P
from ..pool.engines import Engine, check_engine, default_workers, make_pool, spare_workers
from ._reactor import Reactor
from .job import Job
from .task import Task

T = TypeVar("T")

FAR_FUTURE = 24 * 3600.0  # a start this far ahead follows the wall clock
WALL_CHECK = 60.0  # how often the wall clock is compared while starts follow it
CLOCK_STEP = 0.05  # a change of wall - monotonic larger than this is a clock step
MAX_WAIT = 24 * 3600.0  # the loop wakes at least this often (no far deadline reaches a timer)
LOOP_ERRORS = 100  # this many failing rounds in a row: the loop gives up (tasks are resolved)

_log = logging.getLogger("taskwarden")
KEEP_FINISHED_BYTES = 128 * 2**20  # default bound on the outcomes kept for get()
HELD_SWEEP = 1024  # weak references to finished tasks are swept from this many on

_supervisors: weakref.WeakSet[Supervisor] = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    for sup in list(_supervisors):
        sup.shutdown(wait=True)  # a no-op in a forked child: the parent owns the workers


class _Call:
    """A command whose caller waits for the loop's answer."""

    __slots__ = ("done", "error", "fn", "then", "value")

    def __init__(self, fn: Callable[[], Any], then: Callable[[], None]) -> None:
        self.fn = fn
        self.then = then  # carry out the core's actions before answering
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def __call__(self) -> None:
        try:
            self.value = self.fn()
            self.then()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()


class Supervisor(Executor):
    """A supervised pool of worker processes; a ``concurrent.futures.Executor``.

    >>> from taskwarden import Supervisor
    >>> with Supervisor(workers=2, timeout=60) as sup:      # doctest: +SKIP
    ...     print(sum(sup.map(abs, range(-5, 5))))
    25

    Policy keywords (``timeout``, ``heartbeat``, ``grace``, ``retries``,
    ``retry_delay``, ``retry_on``) are the defaults for every task.
    ``max_tasks_per_worker`` recycles a worker after that many tasks;
    ``max_memory_per_worker`` (bytes of resident memory, checked after each
    task) recycles one that has grown past it, as Celery's
    ``worker_max_memory_per_child`` does.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        keep_finished: int = 10_000,
        keep_finished_bytes: int = KEEP_FINISHED_BYTES,
        engine: Engine = "local",
        ray_address: str | None = None,
        ray_options: dict[str, Any] | None = None,
        **policy: Any,
    ) -> None:
        check_keywords(policy, SUPERVISOR_POLICY, "Supervisor()")
        self._defaults = Policy().with_overrides(normalize(policy))
        engine = check_engine(engine, ray_address, ray_options)
        if workers is None:
            workers = default_workers(engine, ray_address)
        if not _whole(workers) or workers < 1:
            raise ValueError(f"workers must be a whole number >= 1, not {workers!r}")
        workers = int(workers)  # numpy integers and the like: a plain int from here on
        if max_tasks_per_worker is not None and (
            not _whole(max_tasks_per_worker) or max_tasks_per_worker < 1
        ):
            raise ValueError(
                f"max_tasks_per_worker must be a whole number >= 1, not {max_tasks_per_worker!r}"
            )
        if max_tasks_per_worker is not None:
            max_tasks_per_worker = int(max_tasks_per_worker)
        if not _whole(keep_finished) or keep_finished < 0:
            raise ValueError(f"keep_finished must be a whole number >= 0, not {keep_finished!r}")
        keep_finished = int(keep_finished)
        if not _whole(keep_finished_bytes) or keep_finished_bytes < 0:
            raise ValueError(
                f"keep_finished_bytes must be a whole number >= 0, not {keep_finished_bytes!r}"
            )
        keep_finished_bytes = int(keep_finished_bytes)
        if max_memory_per_worker is not None and (
            not _whole(max_memory_per_worker) or max_memory_per_worker < 1
        ):
            raise ValueError(
                f"max_memory_per_worker must be a number of bytes >= 1, "
                f"not {max_memory_per_worker!r}"
            )
        if max_memory_per_worker is not None:
            max_memory_per_worker = int(max_memory_per_worker)
        init_payload = None
        if initializer is not None:
            if not callable(initializer):
                raise TypeError(f"initializer must be callable, not {initializer!r}")
            init_payload = _pickle_call(initializer, tuple(initargs), None, "initializer")

        self._workers = workers
        self._keep_finished = keep_finished
        self._pid = os.getpid()  # the process that owns the workers (see _check_process)
        # Done-callbacks run here, in order, so that user code never runs on the loop.
        self._callbacks: queue.SimpleQueue[tuple[Task[Any], list[Any]] | None] = (
            queue.SimpleQueue())
        self._callback_thread: threading.Thread | None = None
        self._callbacks_closed = False
        self._callback_lock = threading.Lock()
        self._keep_finished_bytes = keep_finished_bytes
        self._id_base = new_base()
        self._offset = time.time() - time.monotonic()
        self._seq = itertools.count(1)
        self._commands: deque[Callable[[], Any]] = deque()
        # New tasks: a queue of their own (no closure each); drained before the commands.
        self._adds: deque[E.Run] = deque()
        self._closed = False
        self._close_lock = threading.Lock()
        self._core = E.Core(workers, spare=spare_workers(engine),
                            max_tasks_per_worker=max_tasks_per_worker)
        self._core.id_of = functools.partial(make_uuid, self._id_base)
        self._reactor = Reactor()  # the loop's wait: the pool's fds, wake-ups, deadlines
        self._pool: P.Pool = make_pool(
            engine, self._id_base, init_payload, max_memory_per_worker,
            ray_address=ray_address, ray_options=ray_options)
        self._pool.bind(self._reactor)
        # Loop-owned registries. Live tasks, and finished ones kept for get() (schedule()
        # tasks and job runs, within keep_finished and keep_finished_bytes):
        self._tasks: dict[int, Task[Any]] = {}
        self._jobs: dict[int, Job] = {}  # active and paused jobs, and ended ones kept
        # Finished submit()/map() tasks, and whatever the bounds pushed out: found while
        # the caller holds them, freed when it lets go (as ProcessPoolExecutor's futures).
        # Plain weak references (no callback, so no other thread touches the dict); dead
        # ones are swept when the dict has doubled since the last sweep.
        self._held: dict[int, weakref.ref[Task[Any] | Job]] = {}
        self._sweep_at = HELD_SWEEP
        self._parked: dict[int, list[E.Run]] = {}  # killed worker -> runs to resolve when gone
        self._applying = False
        self._round_failed = False
        self._core.jobs.make_run = self._make_job_run
        self._core.wall_offset = self._offset
        self._finished: deque[tuple[int, int]] = deque()  # kept, oldest first: (seq, bytes)
        self._kept_bytes = 0
        self._loop_ident: int | None = None
        self._thread = threading.Thread(
            target=self._loop, name="taskwarden-supervisor", daemon=True
        )
        self._thread.start()
        _supervisors.add(self)

    # ================================================================ public
    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Task[T]:
        """Run ``fn(*args, **kwargs)`` in a worker; returns its Task at once."""
        return self._new_task(fn, args, kwargs, self._defaults, None, None, None, None)

    @overload
    def schedule(
        self,
        fn: Callable[..., T],
        *,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        at: datetime | float | None = None,
        delay: float | timedelta | None = None,
        every: None = None,
        cron: None = None,
        name: str | None = None,
        **policy: Any,
    ) -> Task[T]: ...

    @overload
    def schedule(
        self,
        fn: Callable[..., T],
        *,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        at: datetime | float | None = None,
        delay: float | timedelta | None = None,
        every: float | timedelta,
        cron: None = None,
        name: str | None = None,
        **policy: Any,
    ) -> Job: ...

    @overload
    def schedule(
        self,
        fn: Callable[..., T],
        *,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        at: datetime | float | None = None,
        delay: float | timedelta | None = None,
        every: None = None,
        cron: str,
        name: str | None = None,
        **policy: Any,
    ) -> Job: ...

    def schedule(
        self,
        fn: Callable[..., T],
        *,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        at: datetime | float | None = None,
        delay: float | timedelta | None = None,
        every: float | timedelta | None = None,
        cron: str | None = None,
        name: str | None = None,
        **policy: Any,
    ) -> Task[T] | Job:
        """Run ``fn`` once (now, ``at`` a time, or after ``delay``), or on a recurring
        schedule (``every`` seconds, or ``cron``), under the given policies.

        >>> task = sup.schedule(fetch, args=(url,), timeout=10, retries=2)   # doctest: +SKIP
        >>> watchdog = sup.schedule(alarm, delay=30)     # task.kick() postpones it
        >>> job = sup.schedule(poll, every=5, delay=0, overlap="skip")
        >>> nightly = sup.schedule(backup, cron="0 3 * * *", timeout=3600)
        """
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, not {name!r}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"kwargs must be a dict, not {kwargs!r}")
        if every is not None or cron is not None:
            return self._new_job(fn, tuple(args), kwargs or {}, at, delay, every, cron, name,
                                 policy)
        check_keywords(policy, TASK_POLICY, "schedule()")
        pol = self._defaults.with_overrides(normalize(policy))
        due, wall = self._start_of(at, delay)
        postpone_by = None if delay is None else seconds("delay", delay)
        if postpone_by is None and due is not None:
            postpone_by = max(0.0, due - time.monotonic())
        return self._new_task(fn, tuple(args), kwargs or {}, pol, name, due, postpone_by, wall,
                              keep=True)

    def _start_of(
        self, at: datetime | float | None, delay: float | timedelta | None, required: bool = False
    ) -> tuple[float | None, float | None]:
        """When a start is due on the monotonic clock, read at the call (so that the
        time a command waits for the loop does not shift it), and its wall-clock time
        if it must follow the wall clock (an ``at``, or a delay of 24 h or more)."""
        if at is not None and delay is not None:
            raise ValueError("give at or delay, not both")
        if delay is not None:
            start_in = seconds("delay", delay)
            wall = time.time() + start_in if start_in >= FAR_FUTURE else None
            return time.monotonic() + start_in, wall
        if at is not None:
            wall = _timestamp(at)
            return wall - (time.time() - time.monotonic()), wall
        if required:
            raise ValueError("give at or delay")
        return None, None

    def _new_job(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        at: datetime | float | None,
        delay: float | timedelta | None,
        every: float | timedelta | None,
        cron: str | None,
        name: str | None,
        policy: dict[str, Any],
    ) -> Job:
        if every is not None and cron is not None:
            raise ValueError("give every or cron, not both")
        check_keywords(policy, JOB_POLICY, "schedule()")
        job_opts = {k: policy.pop(k) for k in ("overlap", "anchor", "max_runs", "until")
                    if k in policy}
        pol = self._defaults.with_overrides(normalize(policy))
        interval = None
        trigger = None
        if every is not None:
            interval = seconds("every", every)
            if interval < MIN_INTERVAL:
                raise ValueError(
                    f"every must be at least 1 ms (a shorter interval is a runaway loop), "
                    f"not {every!r}"
                )
        else:
            assert cron is not None
            trigger = CronTrigger(cron)
        overlap = job_opts.get("overlap", "skip")
        if overlap not in OVERLAP:
            raise ValueError(f"overlap must be one of {', '.join(OVERLAP)}, not {overlap!r}")
        anchor = job_opts.get("anchor", "start")
        if anchor not in ANCHOR:
            raise ValueError(f"anchor must be one of {', '.join(ANCHOR)}, not {anchor!r}")
        max_runs = job_opts.get("max_runs")
        if max_runs is not None and (not _whole(max_runs) or max_runs < 1):
            raise ValueError(f"max_runs must be a whole number >= 1, not {max_runs!r}")
        if max_runs is not None:
            max_runs = int(max_runs)
        until = job_opts.get("until")
        until_wall = None if until is None else _timestamp(until)
        first_due, wall = self._start_of(at, delay)
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        _check_binding(fn, args, kwargs)
        payload = _pickle_call(fn, args, kwargs, "job")
        rec = JobRec(
            next(self._seq), payload, pol, every=interval, cron=trigger, anchor=anchor,
            overlap=overlap, max_runs=max_runs, until=until_wall,
        )
        if first_due is None:
            # The first run, fixed now, so that next_run_at is right as soon as we return.
            if trigger is not None:
                wall = trigger.next_after(time.time())
                first_due = wall - (time.time() - time.monotonic())
            else:
                assert interval is not None
                first_due = time.monotonic() + interval
        rec.due, rec.wall_due = first_due, wall
        job = Job(self, rec, name)
        rec.handle = job

        def add() -> None:
            self._jobs[rec.seq] = job
            now = time.monotonic()
            self._core.add_job(rec, now, first_due, wall)

        self._queue(lambda: self._commands.append(add))
        return job

    def _make_job_run(self, rec: JobRec) -> E.Run:
        run = E.Run(next(self._seq), rec.payload, rec.policy)
        job: Job = rec.handle
        task: Task[Any] = Task(self, run, job.name)
        task.job = job
        task._keep = True
        run.handle = task
        self._tasks[run.seq] = task
        job._started(task)
        return run

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """Like ``Executor.map``; ``chunksize`` > 1 sends items in batches, as
        ProcessPoolExecutor does."""
        if not _whole(chunksize) or chunksize < 1:
            raise ValueError(f"chunksize must be a whole number >= 1, not {chunksize!r}")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        chunks = super().map(
            functools.partial(_process_chunk, fn),
            _chunked(zip(*iterables, strict=False), chunksize),
            timeout=timeout,
        )
        return _chain_popping(chunks)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work. Scheduled tasks and jobs are cancelled; due tasks run
        to completion unless ``cancel_futures`` (then pending ones are cancelled).
        With ``wait``, return once no task runs and no worker process is alive (and
        the done-callbacks of every task have run).

        In a child made by ``os.fork()`` this does nothing: the workers are the
        parent's."""
        if os.getpid() != self._pid:
            return
        with self._close_lock:
            first = not self._closed
            self._closed = True
        if first:
            self._post(lambda: self._core.close(time.monotonic(), cancel_futures))
        elif cancel_futures:
            self._post(lambda: self._core.close(time.monotonic(), True))
        if wait and threading.get_ident() != self._loop_ident:
            self._thread.join()
            cb = self._callback_thread
            if cb is not None and cb is not threading.current_thread():
                cb.join()

    def jobs(self) -> list[Job]:
        """The jobs active or paused, and the ended ones that are kept or still held."""
        def read() -> list[Job]:
            held = [j for j in self._alive_held() if isinstance(j, Job)]
            return sorted([*self._jobs.values(), *held], key=lambda j: j._rec.seq)

        return self._ask(read)  # type: ignore[no-any-return]

    def get(self, task_id: str) -> Task[Any] | Job | None:
        """The task (or job) with this id: while it is live, while it is kept (finished
        ``schedule()`` tasks, job runs and ended jobs, within ``keep_finished`` and
        ``keep_finished_bytes``), or while the caller still holds it; else None."""
        seq = seq_of(self._id_base, task_id) if isinstance(task_id, str) else None
        if seq is None:
            return None
        return self._ask(  # type: ignore[no-any-return]
            lambda: self._tasks.get(seq) or self._jobs.get(seq) or self._find_held(seq)
        )

    def tasks(self) -> list[Task[Any]]:
        """Every task ``get()`` finds (live, kept, or held by the caller), oldest first."""
        def read() -> list[Task[Any]]:
            held = [t for t in self._alive_held() if isinstance(t, Task)]
            return sorted([*self._tasks.values(), *held], key=lambda t: t._run.seq)

        return self._ask(read)  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        """Counts by state, workers alive and replaced, pending and scheduled tasks."""
        def read() -> dict[str, Any]:
            s = self._core.stats()
            s["workers_alive"] = self._pool.alive()
            s["retained"] = len(self._finished)  # finished tasks and ended jobs kept
            s["retained_bytes"] = self._kept_bytes  # what their outcomes took on the wire
            return s

        return self._ask(read)  # type: ignore[no-any-return]

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self.shutdown)

    # ============================================================ internals
    def _wall(self, mono: float | None) -> float | None:
        return None if mono is None else mono + self._offset

    def _new_task(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        policy: Policy,
        name: str | None,
        due: float | None,
        delay: float | None,
        wall: float | None,
        keep: bool = False,
    ) -> Task[Any]:
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        _check_binding(fn, args, kwargs)
        payload = _pickle_call(fn, args, kwargs, "task")
        run = E.Run(next(self._seq), payload, policy)
        if (due is not None and due > time.monotonic()) or (policy.debounce and policy.key):
            run.state = TaskState.SCHEDULED  # as the caller will see it, from the start
        task: Task[Any] = Task(self, run, name, delay)
        if keep:
            task._keep = True  # get() finds it after the fact (see _retain)
        run.handle = task
        if policy.key is not None and policy.on_conflict == "drop":
            # The call may return an older task of the key: ask the loop, and wait.
            self._queue(None)

            def add() -> Task[Any]:
                if threading.get_ident() != self._loop_ident:
                    # The loop ended after the check above: nothing would run the task.
                    raise RuntimeError("cannot schedule new tasks or jobs after shutdown")
                return self._c_add(run, due, wall)

            return self._ask(add)  # type: ignore[no-any-return]
        run.due = -1.0 if due is None else due  # read back by _take_adds
        run.wall_due = wall
        self._queue(lambda: self._adds.append(run))
        return task

    def _queue(self, put: Callable[[], object] | None) -> None:
        """Refuse new work after shutdown; else ``put`` it on its queue and wake the loop."""
        self._check_process()
        with self._close_lock:
            if self._closed:
                raise RuntimeError("cannot schedule new tasks or jobs after shutdown")
            if put is not None:
                put()
        if put is not None:
            self._reactor.wake()

    def _take_adds(self) -> None:
        adds = self._adds
        while adds:
            run = adds.popleft()
            due = None if run.due < 0 else run.due
            wall, run.wall_due = run.wall_due, None
            self._c_add(run, due, wall)

    def _c_add(self, run: E.Run, due: float | None, wall: float | None) -> Task[Any]:
        self._tasks[run.seq] = run.handle
        stands = self._core.add(run, time.monotonic(), due, wall)
        if stands is not run:
            del self._tasks[run.seq]  # "drop": the call stands for the live task
        return stands.handle  # type: ignore[no-any-return]

    def _post(self, fn: Callable[[], Any]) -> None:
        self._commands.append(fn)
        self._reactor.wake()

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError(
                f"this Supervisor belongs to process {self._pid}: it cannot be used in a "
                f"child made by os.fork() (nothing there would run its tasks); create a new "
                f"Supervisor in the child"
            )

    def _ask(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the loop thread and return its answer (inline if we are it)."""
        self._check_process()
        if threading.get_ident() == self._loop_ident or not self._thread.is_alive():
            if threading.get_ident() == self._loop_ident:
                self._take_adds()
            value = fn()
            if threading.get_ident() == self._loop_ident:
                self._apply()
            return value
        call = _Call(fn, self._apply)
        self._post(call)
        while not call.done.wait(1.0):
            if not self._thread.is_alive():
                return fn()
        if call.error is not None:
            raise call.error
        return call.value

    def _cancel_run(self, run: E.Run, wait: bool = True) -> bool:
        """Cancel; with ``wait``, answer once the outcome is final: True if the body never
        ran or its process is gone. The loop itself never waits for a process: a killed
        run resolves when its worker's exit is seen, and this caller waits for that."""
        task: Task[Any] | None = run.handle  # taken first: a final run lets go of it
        answer = self._ask(lambda: self._core.cancel(run, time.monotonic()))
        if answer is False:
            return False
        if not wait:
            # From an asyncio event loop: the loop's answer comes within one of its rounds
            # (it never waits for a process), the process's end is not waited for.
            return True
        if task is not None and threading.get_ident() != self._loop_ident:
            concurrent.futures.wait((task,))
        return (task is None or task.done()) and run.state in (
            TaskState.CANCELLED, TaskState.SUPERSEDED)

    def _postpone_run(self, run: E.Run, delay: float | timedelta | None) -> bool:
        handle = run.handle  # None once the task is final (it cannot move then)
        d = ((handle and handle._delay) or 0.0) if delay is None else seconds("delay", delay)
        return bool(self._ask(lambda: self._core.reschedule(run, time.monotonic() + d,
                                                            time.monotonic())))

    def _reschedule_run(
        self, run: E.Run, at: datetime | float | None, delay: float | timedelta | None
    ) -> bool:
        due, wall = self._start_of(at, delay, required=True)
        assert due is not None
        return bool(self._ask(lambda: self._core.reschedule(run, due, time.monotonic(), wall)))

    # -------------------------------------------------------------- the loop
    def _loop(self) -> None:
        self._loop_ident = threading.get_ident()
        core, pool, commands = self._core, self._pool, self._commands
        core.start(time.monotonic())
        self._apply()
        failures = 0  # rounds in a row that raised
        try:
            while True:
                self._round_failed = False
                deadline = core.next_deadline()
                if core.wall_anchored:
                    # Starts that follow the wall clock: look at it now and then, so that a
                    # clock step or a suspend is noticed (one wake-up a minute).
                    check = time.monotonic() + WALL_CHECK
                    deadline = check if deadline is None else min(deadline, check)
                if commands or self._adds or pool.has_events():
                    deadline = 0.0  # work is waiting: do not block
                elif deadline is not None:
                    # A far deadline (timeout=sys.maxsize) never reaches the timer as such.
                    deadline = min(deadline, time.monotonic() + MAX_WAIT)
                # No local keeps the batch: an outcome delivered is the task's alone.
                self._reactor.wait(deadline)
                self._on_events(pool.take_events())
                self._take_adds()
                while commands:
                    self._take_adds()  # a command must see every task added before it
                    try:
                        commands.popleft()()
                    except Exception:
                        self._contained("running a command")
                now = time.monotonic()
                offset = time.time() - now
                try:
                    if abs(offset - core.wall_offset) > CLOCK_STEP:
                        core.clock_changed(offset, now)
                    core.advance(now)
                except Exception:
                    self._contained("firing timers")
                self._apply()
                failures = failures + 1 if self._round_failed else 0
                if failures >= LOOP_ERRORS:
                    raise RuntimeError(f"{failures} rounds of the supervisor loop failed in a row")
                if core.closing and not core.workers and pool.alive() == 0 and core.idle():
                    break
        except BaseException:
            _log.critical("the supervisor loop stopped: every unfinished task is cancelled",
                          exc_info=True)
            raise
        finally:
            with self._close_lock:
                self._closed = True  # no more submits: nothing would run them
            pool.close()
            self._reactor.close()
            for wid in list(self._parked):
                self._release(wid)
            while self._adds:
                self._tasks[self._adds[0].seq] = self._adds.popleft().handle
            # Anything still unresolved (the loop died) must not hang its callers, and
            # its state says what its future says.
            for task in list(self._tasks.values()):
                if not task.done():
                    if not task._run.state.final:
                        task._run.state = TaskState.CANCELLED
                    task.set_exception(TaskCancelled("the supervisor stopped"))
            self._close_callbacks()

    # ------------------------------------------------------------ callbacks
    def _run_callbacks(self, task: Task[Any], callbacks: list[Any]) -> None:
        """A task resolved: its done-callbacks run on the callback thread, in order, so
        that one that blocks, waits for another task or raises cannot stall the loop."""
        with self._callback_lock:
            if not self._callbacks_closed:
                if self._callback_thread is None:
                    self._callback_thread = threading.Thread(
                        target=self._callback_loop, name="taskwarden-callbacks", daemon=True
                    )
                    self._callback_thread.start()
                self._callbacks.put((task, callbacks))
                return
        _invoke_callbacks(task, callbacks)  # after shutdown: in the resolving thread

    def _callback_loop(self) -> None:
        while (item := self._callbacks.get()) is not None:
            _invoke_callbacks(*item)

    def _close_callbacks(self) -> None:
        with self._callback_lock:
            self._callbacks_closed = True
            if self._callback_thread is not None:
                self._callbacks.put(None)  # after every callback queued so far

    def _contained(self, what: str) -> None:
        """An error in the loop (a bug): logged, and the loop carries on with the rest."""
        self._round_failed = True
        _log.error("internal error in the supervisor loop while %s (contained)", what,
                   exc_info=True)

    def _on_events(self, events: list[P.Event]) -> None:
        now = time.monotonic()
        for ev in events:
            try:
                self._on_event(ev, now)
            except Exception:
                self._contained(f"handling {type(ev).__name__}")

    def _on_event(self, ev: P.Event, now: float) -> None:
        core = self._core
        if isinstance(ev, P.RunDone):
            if ev.size:
                task = self._tasks.get(ev.seq)
                if task is not None and task._keep:
                    task._size = ev.size  # what keeping it for get() costs
            core.done(ev.wid, ev.seq, ev.ok, ev.value, ev.tb, now, ev.progress, ev.has_progress)
        elif isinstance(ev, P.Beat):
            core.beat(ev.wid, ev.seq, ev.progress, ev.has_progress, now)
        elif isinstance(ev, P.WorkerReady):
            core.worker_ready(ev.wid, ev.pid, now)
        elif isinstance(ev, P.RunSkipped):
            core.skipped(ev.wid, ev.seq, now)
        elif isinstance(ev, P.WorkerExited):
            core.worker_exited(ev.wid, ev.exitcode, now, ev.reason)
            self._release(ev.wid)
        elif isinstance(ev, P.InitFailed):
            core.initializer_failed(ev.tb, now)
        elif isinstance(ev, P.WorkerRetiring):
            core.worker_retiring(ev.wid, now)

    def _release(self, wid: int) -> None:
        """A killed worker is gone: resolve the run it was executing."""
        for run in self._parked.pop(wid, ()):
            self._resolve(run)

    def _apply(self) -> None:
        """Carry out the core's actions, in order. Futures are resolved after the round's
        sends are written: resolving runs user callbacks, which may call back in (their
        actions then wait for the next round, so a worker gets its runs in order)."""
        if self._applying:
            return
        self._applying = True
        try:
            self._apply_rounds()
        except Exception:
            self._contained("carrying out the core's actions")
        finally:
            self._applying = False

    def _apply_rounds(self) -> None:
        core, pool = self._core, self._pool
        while core.actions:
            actions, core.actions = core.actions, []
            sends: dict[int, list[tuple[int, bytes, dict[str, Any] | None]]] = {}
            killing: dict[int, int] = {}
            resolved: list[E.Run] = []
            for a in actions:
                try:
                    kind = type(a)
                    if kind is E.Send:
                        # One write per worker per round: runs for a worker travel together.
                        batch = sends.setdefault(a.wid, [])  # type: ignore[union-attr]
                        batch.extend((r.seq, r.payload, _opts(r)) for r in a.runs)  # type: ignore[union-attr]
                    elif kind is E.Resolve:
                        ended = cast(E.Run, a.run)  # type: ignore[union-attr]
                        killer = killing.get(id(ended))
                        if killer is None:
                            resolved.append(ended)
                        else:
                            # Its process was just killed: resolve once it is gone, so that
                            # result() never raises while the process still exists.
                            self._parked.setdefault(killer, []).append(ended)
                    elif kind is E.JobChanged:
                        self._job_changed(a.job)  # type: ignore[union-attr]
                    elif kind is E.Spawn:
                        pool.spawn(a.wid)  # type: ignore[union-attr]
                    elif kind is E.Kill:
                        dying = pool.kill(a.wid)  # type: ignore[union-attr]
                        if dying:
                            for r in (a.run, *a.also):  # type: ignore[union-attr]
                                if r is not None:
                                    killing[id(r)] = a.wid  # type: ignore[union-attr]
                    elif kind is E.Skip:
                        # The runs it may name go first: a skip that overtook its run
                        # would find nothing to skip, and the run would start anyway.
                        self._send_now(sends, a.wid)  # type: ignore[union-attr]
                        pool.skip(a.wid, a.seq)  # type: ignore[union-attr]
                    elif kind is E.Interrupt:
                        pool.interrupt(a.wid, a.seq)  # type: ignore[union-attr]
                    elif kind is E.Stop:
                        self._send_now(sends, a.wid)  # type: ignore[union-attr]
                        pool.stop(a.wid)  # type: ignore[union-attr]
                    elif kind is E.Note:
                        _log.log(a.level, "%s", a.text)  # type: ignore[union-attr]
                except Exception:
                    self._contained(f"carrying out {type(a).__name__}")
            for wid, batch in sends.items():
                try:
                    pool.send(wid, batch)
                except Exception:
                    self._contained("sending runs")
            for ended in resolved:
                try:
                    self._resolve(ended)
                except Exception:
                    self._contained("resolving a task")

    def _send_now(
        self, sends: dict[int, list[tuple[int, bytes, dict[str, Any] | None]]], wid: int
    ) -> None:
        batch = sends.pop(wid, None)
        if batch:
            self._pool.send(wid, batch)

    def _resolve(self, run: E.Run) -> None:
        task: Task[Any] | None = run.handle
        run.payload = b""  # the call is no longer needed (no attempt is left): free it now
        if task is None or task.done():
            return
        # The run may stay named by the core a while (a stale timer, a job's recent runs):
        # it lets go of the task and of the outcome, which the task alone holds from now.
        run.handle = None
        value, run.value = run.value, None
        self._retain(task)  # before the callbacks, which may look it up
        if run.value_ok:
            task.set_result(value)
        else:
            task.traceback = run.tb
            task.set_exception(value)
        del value
        rec = run.job
        if rec is not None:
            rec.handle._run_finished(task)
            if rec.state in _JOB_ENDED and not rec.live:
                self._job_ended(rec.handle)

    def _retain(self, item: Task[Any] | Job) -> None:
        """A task is final, or a job ended: keep it for get() (a schedule() task, a job
        run, a job) within the bounds, or hold it only weakly (a submit() task)."""
        if isinstance(item, Task):
            seq, keep, size = item._run.seq, item._keep, item._size
        else:
            last = item._last_done
            seq, keep, size = item._rec.seq, True, 0 if last is None else last._size
        if keep and self._keep_finished:
            self._finished.append((seq, size))
            self._kept_bytes += size
            self._trim()
        else:
            self._let_go(seq, item)

    def _trim(self) -> None:
        finished = self._finished
        while finished and (len(finished) > self._keep_finished
                            or self._kept_bytes > self._keep_finished_bytes):
            seq, size = finished.popleft()
            self._kept_bytes -= size
            item = self._tasks.get(seq) or self._jobs.get(seq)
            if item is not None:
                self._let_go(seq, item)

    def _let_go(self, seq: int, item: Task[Any] | Job) -> None:
        if isinstance(item, Task):
            self._tasks.pop(seq, None)
            if item.job is not None:
                item.job._forget(item)  # a job's recent runs are what is kept of them
        else:
            self._jobs.pop(seq, None)
        held = self._held
        held[seq] = weakref.ref(item)
        if len(held) >= self._sweep_at:
            for dead in [k for k, ref in held.items() if ref() is None]:
                del held[dead]
            self._sweep_at = max(HELD_SWEEP, 2 * len(held))

    def _find_held(self, seq: int) -> Task[Any] | Job | None:
        ref = self._held.get(seq)
        return None if ref is None else ref()

    def _alive_held(self) -> list[Task[Any] | Job]:
        return [x for x in (ref() for ref in self._held.values()) if x is not None]

    def _job_changed(self, rec: JobRec) -> None:
        rec.handle._changed()
        if rec.state in _JOB_ENDED and not rec.live:
            self._job_ended(rec.handle)

    def _job_ended(self, job: Job) -> None:
        """An ended job has no run left: it lets go of its call, and leaves the registry
        under the rule of finished tasks."""
        if job._retired or job._rec.seq not in self._jobs:
            return
        job._retired = True
        job._rec.payload = b""  # no run will start again
        self._retain(job)


def _opts(run: E.Run) -> dict[str, Any] | None:
    """What the worker needs to know besides the call; None for a plain first attempt."""
    p = run.policy
    attempt = run.attempts + (0 if run.state is TaskState.RUNNING else 1)
    if (attempt == 1 and p.timeout is None and p.heartbeat is None
            and run.not_before is None):
        return None
    opts: dict[str, Any] = {"attempt": attempt}
    if p.timeout is not None:
        opts["timeout"] = p.timeout
    if p.heartbeat is not None:
        opts["heartbeat"] = p.heartbeat
    if run.attempts and run.progress is not None:
        opts["previous_progress"] = run.progress
    if run.not_before is not None:
        opts["not_before"] = run.not_before
    return opts


def _invoke_callbacks(task: Task[Any], callbacks: list[Any]) -> None:
    for callback in callbacks:
        try:
            callback(task)
        except BaseException:  # KeyboardInterrupt and SystemExit too: logged, not fatal
            _log.exception("a done-callback of %r raised", task)
_JOB_ENDED = (JobState.FINISHED, JobState.CANCELLED)


def _timestamp(at: datetime | float) -> float:
    """A ``time.time()`` timestamp; one beyond MAX_SECONDS from now is clamped there."""
    if isinstance(at, datetime):
        return at.timestamp()  # naive datetimes are local time, as datetime does
    wall = None
    if not isinstance(at, bool) and isinstance(at, (numbers.Real, Decimal)):
        with contextlib.suppress(ValueError, OverflowError):
            wall = float(at)
    if wall is None or not math.isfinite(wall):
        raise TypeError(f"at must be a datetime or a finite time.time() timestamp, not {at!r}")
    return min(wall, time.time() + MAX_SECONDS)


def _pickle_call(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any] | None, what: str
) -> bytes:
    """Pickle a call in the caller's thread, so that what cannot travel fails here."""
    call = (fn, args, kwargs) if kwargs is not None else (fn, args)
    # The stdlib pickler is several times faster than cloudpickle, but it pickles
    # functions by reference, and a worker cannot import __main__: anything that
    # names __main__ goes by value through cloudpickle.
    try:
        data = pickle.dumps(call, protocol=5)
    except Exception:
        pass
    else:
        if b"__main__" not in data:
            return _within_frame_limit(data, fn, what)
    try:
        data = cloudpickle.dumps(call, protocol=5)
    except Exception as exc:
        raise TypeError(
            f"the {what} cannot be sent to a worker process: cloudpickle failed to pickle "
            f"{getattr(fn, '__qualname__', fn)!r} or its arguments: {type(exc).__name__}: {exc}"
        ) from exc
    return _within_frame_limit(data, fn, what)


def _within_frame_limit(data: bytes, fn: Callable[..., Any], what: str) -> bytes:
    if len(data) > _wire.MAX_FRAME - _wire.FRAME_SLACK:
        limit = _wire.payload_limit()
        raise ValueError(
            f"the {what} is too large to send to a worker process: "
            f"{getattr(fn, '__qualname__', fn)!r} and its arguments pickle to {len(data)} "
            f"bytes, over the worker channel's frame limit ({limit} bytes); pass a path or "
            f"a shared-memory name instead of the data"
        )
    return data


# Weak keys: the cache must not keep a callable (and all it references) alive.
_SIGNATURES: weakref.WeakKeyDictionary[Any, inspect.Signature | None] = (
    weakref.WeakKeyDictionary()
)


def _check_binding(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Raise TypeError now, in the caller's thread, if the arguments cannot bind to ``fn``."""
    code = getattr(fn, "__code__", None)
    if (
        code is not None
        and not kwargs
        and type(fn).__name__ == "function"
        and not code.co_flags & 0x0C  # no *args, no **kwargs
        and not code.co_kwonlyargcount
    ):
        # Fast path for plain functions called positionally.
        n_defaults = len(getattr(fn, "__defaults__", None) or ())
        if code.co_argcount - n_defaults <= len(args) <= code.co_argcount:
            return
    target, bound = fn, args
    if type(fn) is types.MethodType:
        # ``obj.method`` is a new object each time: cache its function, bind its self.
        target, bound = fn.__func__, (fn.__self__, *args)
    try:
        sig = _SIGNATURES[target]
    except (KeyError, TypeError):
        sig = _signature(target)
        with contextlib.suppress(TypeError):  # not weakly referenceable: not cached
            if len(_SIGNATURES) > 4096:
                _SIGNATURES.clear()
            _SIGNATURES[target] = sig
    if sig is None:
        return
    try:
        sig.bind(*bound, **kwargs)
    except TypeError as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        raise TypeError(f"arguments do not match {name}{sig}: {exc}") from None


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    """The signature of what a worker will call: a decorator's wrapper's own, not that of
    the function it names in ``__wrapped__`` (the wrapper may add, inject or drop
    arguments; one taking ``*args, **kwargs`` binds anything). A wrapper with no
    signature of its own (a C one, such as ``functools.lru_cache``'s) passes the call
    through: the wrapped function's signature is checked then."""
    for follow_wrapped in (False, True):
        try:
            return inspect.signature(fn, follow_wrapped=follow_wrapped)
        except (ValueError, TypeError):
            continue
    return None  # builtins without a signature: the worker will tell


def _whole(value: object) -> bool:
    """A count: any integral number (numpy's included), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _process_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    return [fn(*args) for args in chunk]


def _chain_popping(chunks: Iterator[list[T]]) -> Iterator[T]:
    """``chain.from_iterable`` that holds no item it has yielded (each chunk's list is
    emptied as it goes), as ProcessPoolExecutor's map does."""
    for chunk in chunks:
        chunk.reverse()
        while chunk:
            yield chunk.pop()


def _chunked(items: Iterable[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
