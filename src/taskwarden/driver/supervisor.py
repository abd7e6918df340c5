"""``Supervisor``: the public executor, its caller-side half (checking, pickling, queueing
commands, waiting for answers); the loop thread's half is ``_loop.LoopSide``.

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

With ``engine="ray"``, RayPool stands where LokyPool does: one connection per
worker to a worker process that a Ray actor (anywhere in the cluster) starts,
and one to that actor, which signals, kills and reaps it (``pool/ray_pool.py``).

The loop blocks in one ``epoll`` wait until the earliest deadline of the
core's heap, a worker message, a worker's exit or a command: it never polls.
It never waits for anything else either: a killed worker is reaped when its
exit fd fires, and user code (done-callbacks) runs on a callback thread of
its own, so that nothing a callback does can delay a watchdog.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import inspect
import itertools
import logging
import os
import pickle
import queue
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from datetime import datetime, timedelta
from types import FunctionType
from typing import Any, Generic, SupportsFloat, TypeVar, cast, overload

from .._ids import make_uuid, new_base, seq_of
from .._policy import (
    MAX_SECONDS,
    UNSET,
    Anchor,
    Count,
    OnConflict,
    Overlap,
    Policy,
    RetryOn,
    Seconds,
    Unset,
    given,
    normalize,
    seconds,
    wait_seconds,
)
from .._states import TaskState
from ..core import engine as E
from ..core.model import JobRec
from ..pool.engines import (
    Engine,
    check_engine,
    default_workers,
    make_pool,
    replace_delay,
    spare_workers,
)
from ._forkmark import fork_mark
from ._loop import HELD_SWEEP, LoopSide
from ._reactor import Reactor
from ._validate import (
    check_binding,
    job_options,
    pickle_call,
    supervisor_options,
    timestamp,
    whole,
)
from .job import Job
from .task import PENDING_VIEW, SCHEDULED_VIEW, Task

T = TypeVar("T")
R = TypeVar("R")
PLAIN_CALLS = 256  # functions whose argument-less call's payload is remembered
_NO_KWARGS: dict[str, Any] = {}  # a call's kwargs when it gives none (only ever read)

FAR_FUTURE = 24 * 3600.0  # a start this far ahead follows the wall clock
WALL_CHECK = 60.0  # how often the wall clock is compared while starts follow it

_log = logging.getLogger("taskwarden")
KEEP_FINISHED_BYTES = 128 * 2**20  # default bound on the outcomes kept for get()

_supervisors: weakref.WeakSet[Supervisor] = weakref.WeakSet()
_CLOSED = "cannot schedule new tasks or jobs after shutdown"
# How many os.fork()s led to this process: a Supervisor made before the last one belongs
# to an ancestor. A fork through libc runs no Python hook: the fork mark tells that one
# (driver/_forkmark.py); the count stays for a kernel or sandbox that takes the mark's
# advice without honouring it.
_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


@atexit.register
def _shutdown_all() -> None:
    for sup in list(_supervisors):
        sup.shutdown(wait=True)  # a no-op in a forked child: the parent owns the workers


class _Call(Generic[R]):
    """A command whose caller waits for the loop's answer."""

    __slots__ = ("done", "error", "fn", "then", "value")

    def __init__(self, fn: Callable[[], R], then: Callable[[], None]) -> None:
        self.fn = fn
        self.then = then  # carry out the core's actions before answering
        self.done = threading.Event()
        self.value: R | None = None
        self.error: BaseException | None = None

    def __call__(self) -> None:
        try:
            self.value = self.fn()
            self.then()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()


class Supervisor(Executor, LoopSide):
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

    ``engine="ray"`` runs the workers on a Ray cluster instead of this machine
    (``pip install 'taskwarden[ray]'``): one Ray actor per worker, given
    ``ray_options`` (``num_cpus``, ``memory``, custom ``resources``...), on the
    cluster at ``ray_address`` unless Ray is connected already. ``workers=None``
    is then the cluster's CPU count.
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
        timeout: Seconds | Unset | None = UNSET,
        heartbeat: Seconds | Unset | None = UNSET,
        grace: Seconds | Unset | None = UNSET,
        retries: Count | Unset = UNSET,
        retry_delay: Seconds | Unset = UNSET,
        retry_on: RetryOn | Unset | None = UNSET,
        engine: Engine = "local",
        ray_address: str | None = None,
        ray_options: dict[str, Any] | None = None,
        _timings: E.Timings | None = None,
    ) -> None:
        policy = given(timeout=timeout, heartbeat=heartbeat, grace=grace, retries=retries,
                       retry_delay=retry_delay, retry_on=retry_on)
        engine = check_engine(engine, ray_address, ray_options)
        if workers is None:
            workers = default_workers(engine, ray_address)
        opts = supervisor_options(
            workers, max_tasks_per_worker, max_memory_per_worker, initializer, initargs,
            keep_finished, keep_finished_bytes, policy,
        )
        self._defaults = opts.defaults
        workers, max_tasks_per_worker = opts.workers, opts.max_tasks_per_worker
        keep_finished, keep_finished_bytes = opts.keep_finished, opts.keep_finished_bytes
        max_memory_per_worker, init_payload = opts.max_memory_per_worker, opts.init_payload

        self._workers = workers
        self._keep_finished = keep_finished
        self._pid = os.getpid()  # the process that owns the workers (see _check_process)
        self._here = fork_mark()  # the same, as a memory read (see _forkmark)
        self._forks = _forks  # and as the count of Python's forks
        # Done-callbacks run here, in order, so that user code never runs on the loop.
        self._callbacks: queue.SimpleQueue[tuple[Task[Any], list[Any]] | None] = (
            queue.SimpleQueue())
        self._callback_thread: threading.Thread | None = None
        self._callbacks_closed = False
        self._callback_lock = threading.Lock()
        self._keep_finished_bytes = keep_finished_bytes
        self._id_base = new_base()
        clock = self._clock  # the loop's time (driver/_clock.py)
        self._offset = clock.time() - clock.monotonic()
        self._seq = itertools.count(1)
        self._commands: deque[Callable[[], Any]] = deque()
        # New tasks: a queue of their own (no closure each); drained before the commands.
        self._adds: deque[Task[Any] | tuple[float, int, bytes]] = deque()
        self._plain_calls: dict[Callable[..., Any], bytes] = {}  # see _remember_plain_call
        self._closed = False
        self._close_lock = threading.Lock()
        self._core = E.Core(
            workers,
            spare=spare_workers(engine),
            max_tasks_per_worker=max_tasks_per_worker,
            timings=_default_timings(engine) if _timings is None else _timings,
            id_format=functools.partial(make_uuid, self._id_base),
            seqs=self._seq,
            wall_offset=self._offset,
            default_policy=self._defaults,  # the policy of a seed's run (see _new_task)
        )
        self._actions: list[E.Action] = []  # the core's, not carried out yet
        self._reactor = Reactor(clock)  # the loop's wait: the pool's fds, wake-ups, deadlines
        self._pool = make_pool(
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
        delay: Seconds | None = None,
        every: None = None,
        cron: None = None,
        name: str | None = None,
        timeout: Seconds | Unset | None = UNSET,
        heartbeat: Seconds | Unset | None = UNSET,
        grace: Seconds | Unset | None = UNSET,
        retries: Count | Unset = UNSET,
        retry_delay: Seconds | Unset = UNSET,
        retry_on: RetryOn | Unset | None = UNSET,
        key: str | Unset | None = UNSET,
        on_conflict: OnConflict | Unset = UNSET,
        debounce: Seconds | Unset | None = UNSET,
    ) -> Task[T]: ...

    @overload
    def schedule(
        self,
        fn: Callable[..., T],
        *,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        at: datetime | float | None = None,
        delay: Seconds | None = None,
        every: Seconds,
        cron: None = None,
        name: str | None = None,
        timeout: Seconds | Unset | None = UNSET,
        heartbeat: Seconds | Unset | None = UNSET,
        grace: Seconds | Unset | None = UNSET,
        retries: Count | Unset = UNSET,
        retry_delay: Seconds | Unset = UNSET,
        retry_on: RetryOn | Unset | None = UNSET,
        key: str | Unset | None = UNSET,
        on_conflict: OnConflict | Unset = UNSET,
        debounce: Seconds | Unset | None = UNSET,
        overlap: Overlap | Unset = UNSET,
        anchor: Anchor | Unset = UNSET,
        max_runs: Count | Unset | None = UNSET,
        until: datetime | float | Unset | None = UNSET,
    ) -> Job: ...

    @overload
    def schedule(
        self,
        fn: Callable[..., T],
        *,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        at: datetime | float | None = None,
        delay: Seconds | None = None,
        every: None = None,
        cron: str,
        name: str | None = None,
        timeout: Seconds | Unset | None = UNSET,
        heartbeat: Seconds | Unset | None = UNSET,
        grace: Seconds | Unset | None = UNSET,
        retries: Count | Unset = UNSET,
        retry_delay: Seconds | Unset = UNSET,
        retry_on: RetryOn | Unset | None = UNSET,
        key: str | Unset | None = UNSET,
        on_conflict: OnConflict | Unset = UNSET,
        debounce: Seconds | Unset | None = UNSET,
        overlap: Overlap | Unset = UNSET,
        anchor: Anchor | Unset = UNSET,
        max_runs: Count | Unset | None = UNSET,
        until: datetime | float | Unset | None = UNSET,
    ) -> Job: ...

    def schedule(
        self,
        fn: Callable[..., T],
        *,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        at: datetime | float | None = None,
        delay: Seconds | None = None,
        every: Seconds | None = None,
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

        The policy keywords are spelled out in the overloads above (what type checkers
        and IDEs read) and in ``inspect.signature`` (set below the class); here they are
        gathered, so that the common call (a plain delay, no policy) binds few names.
        """
        if (not policy and at is None and every is None and cron is None and kwargs is None
                and (type(delay) is float or type(delay) is int) and 0 < delay < FAR_FUTURE
                and (name is None or type(name) is str)):
            # The common call: a plain delay under the Supervisor's policy. A seed (see
            # _add_seed), by the shortest way for an argument-less call already seen. Only
            # an empty tuple is "no arguments": any other ``args`` is made a tuple (a
            # numpy array has no plain truth value, None is no iterable). The delay counts
            # from the call: the time is read before the arguments are pickled.
            due = self._clock.monotonic() + delay
            if type(args) is not tuple or args or type(fn) is not FunctionType or (
                    payload := self._plain_calls.get(fn)) is None:
                payload = self._payload(fn, args if type(args) is tuple else tuple(args),
                                        _NO_KWARGS)
            return self._add_seed(payload, due, delay, name)
        unknown = policy.keys() - _POLICY_KEYWORDS
        if unknown:
            raise TypeError(
                f"schedule() got an unexpected keyword argument {min(unknown)!r}")
        return self._schedule(fn, args=args, kwargs=kwargs, at=at, delay=delay, every=every,
                              cron=cron, name=name, **policy)

    def _schedule(
        self,
        fn: Callable[..., T],
        *,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        at: datetime | float | None = None,
        delay: Seconds | None = None,
        every: Seconds | None = None,
        cron: str | None = None,
        name: str | None = None,
        timeout: Seconds | Unset | None = UNSET,
        heartbeat: Seconds | Unset | None = UNSET,
        grace: Seconds | Unset | None = UNSET,
        retries: Count | Unset = UNSET,
        retry_delay: Seconds | Unset = UNSET,
        retry_on: RetryOn | Unset | None = UNSET,
        key: str | Unset | None = UNSET,
        on_conflict: OnConflict | Unset = UNSET,
        debounce: Seconds | Unset | None = UNSET,
        overlap: Overlap | Unset = UNSET,
        anchor: Anchor | Unset = UNSET,
        max_runs: Count | Unset | None = UNSET,
        until: datetime | float | Unset | None = UNSET,
    ) -> Task[T] | Job:
        """``schedule()`` with its keywords checked (see there)."""
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, not {name!r}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"kwargs must be a dict, not {kwargs!r}")
        # The common call gives no policy keyword: the Supervisor's defaults as they are,
        # with no dictionary made (a million calls in a row are a use case).
        if (timeout is UNSET and heartbeat is UNSET and grace is UNSET and retries is UNSET
                and retry_delay is UNSET and retry_on is UNSET and key is UNSET
                and on_conflict is UNSET and debounce is UNSET):
            policy: dict[str, Any] = {}
        else:
            policy = given(timeout=timeout, heartbeat=heartbeat, grace=grace, retries=retries,
                           retry_delay=retry_delay, retry_on=retry_on, key=key,
                           on_conflict=on_conflict, debounce=debounce)
        if every is not None or cron is not None or not (
                overlap is UNSET and anchor is UNSET and max_runs is UNSET and until is UNSET):
            job_rules = given(overlap=overlap, anchor=anchor, max_runs=max_runs, until=until)
            if every is not None or cron is not None:
                return self._new_job(fn, tuple(args), kwargs or {}, at, delay, every, cron,
                                     name, {**policy, **job_rules})
            raise TypeError(
                f"schedule() got job keyword(s) {', '.join(sorted(job_rules))} for a one-shot "
                f"task: they apply to recurring jobs (every= or cron=)"
            )
        pol = self._defaults.with_overrides(normalize(policy)) if policy else self._defaults
        postpone_by: float | None
        if at is None and (type(delay) is float or type(delay) is int) and (
                0 <= delay <= MAX_SECONDS):
            # A plain delay (the common case): what _start_of makes of it, sooner. The
            # delay is kept for kick() as given (the caller's int is not made a float).
            postpone_by = delay
            clock = self._clock
            read = clock.monotonic()
            now: float | None = read
            due: float | None = read + delay
            wall = clock.time() + delay if delay >= FAR_FUTURE else None
        else:
            now = None
            postpone_by = None if delay is None else seconds("delay", delay)
            # The delay goes on as the float it was read as (not read twice).
            due, wall = self._start_of(at, postpone_by, checked=True)
            if postpone_by is None and due is not None:
                postpone_by = max(0.0, due - self._clock.monotonic())
        return self._new_task(fn, args if type(args) is tuple else tuple(args),
                              kwargs or _NO_KWARGS, pol, name, due, postpone_by, wall, True, now)

    def _start_of(
        self, at: datetime | float | None, delay: Seconds | None, required: bool = False,
        checked: bool = False,
    ) -> tuple[float | None, float | None]:
        """When a start is due on the monotonic clock, read at the call (so that the
        time a command waits for the loop does not shift it), and its wall-clock time
        if it must follow the wall clock (an ``at``, or a delay of 24 h or more).
        ``checked``: ``delay`` is already what ``seconds`` made of the caller's."""
        if at is not None and delay is not None:
            raise ValueError("give at or delay, not both")
        if delay is not None:
            start_in = delay if checked and isinstance(delay, float) else seconds("delay", delay)
            clock = self._clock
            wall = clock.time() + start_in if start_in >= FAR_FUTURE else None
            return clock.monotonic() + start_in, wall
        if at is not None:
            wall = timestamp(at)
            return wall - (self._clock.time() - self._clock.monotonic()), wall
        if required:
            raise ValueError("give at or delay")
        return None, None

    def _new_job(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        at: datetime | float | None,
        delay: Seconds | None,
        every: Seconds | None,
        cron: str | None,
        name: str | None,
        policy: dict[str, Any],
    ) -> Job:
        opts = job_options(self._defaults, every, cron, policy)
        pol, interval, trigger = opts.policy, opts.every, opts.cron
        first_due, wall = self._start_of(at, delay)
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        check_binding(fn, args, kwargs)
        payload = pickle_call(fn, args, kwargs, "job")
        rec = JobRec(
            next(self._seq), payload, pol, every=interval, cron=trigger, anchor=opts.anchor,
            overlap=opts.overlap, max_runs=opts.max_runs, until=opts.until,
        )
        if first_due is None:
            # The first run, fixed now, so that next_run_at is right as soon as we return.
            if trigger is not None:
                wall = trigger.next_after(self._clock.time())
                first_due = wall - (self._clock.time() - self._clock.monotonic())
            else:
                assert interval is not None
                first_due = self._clock.monotonic() + interval
        rec.due, rec.wall_due = first_due, wall
        job = Job(self, rec, name)

        def add() -> None:
            self._jobs[rec.seq] = job
            self._do(E.AddJob(rec, first_due, wall))

        self._queue(lambda: self._commands.append(add))
        return job

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: SupportsFloat | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """Like ``Executor.map``; ``chunksize`` > 1 sends items in batches, as
        ProcessPoolExecutor does."""
        if not whole(chunksize) or chunksize < 1:
            raise ValueError(f"chunksize must be a whole number >= 1, not {chunksize!r}")
        timeout = wait_seconds(timeout)
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
            self._post(lambda: self._do(E.Close(cancel_futures)))
        elif cancel_futures:
            self._post(lambda: self._do(E.Close(True)))
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

        return self._ask(read)

    def get(self, task_id: str) -> Task[Any] | Job | None:
        """The task (or job) with this id: while it is live, while it is kept (finished
        ``schedule()`` tasks, job runs and ended jobs, within ``keep_finished`` and
        ``keep_finished_bytes``), or while the caller still holds it; else None."""
        seq = seq_of(self._id_base, task_id) if isinstance(task_id, str) else None
        if seq is None:
            return None
        return self._ask(
            lambda: self._tasks.get(seq) or self._jobs.get(seq) or self._find_held(seq)
        )

    def tasks(self) -> list[Task[Any]]:
        """Every task ``get()`` finds (live, kept, or held by the caller), oldest first."""
        def read() -> list[Task[Any]]:
            held = [t for t in self._alive_held() if isinstance(t, Task)]
            return sorted([*self._tasks.values(), *held], key=lambda t: t._seq)

        return self._ask(read)

    def stats(self) -> dict[str, Any]:
        """Counts by state, workers alive and replaced, pending and scheduled tasks."""
        def read() -> dict[str, Any]:
            s = self._core.stats()
            s["workers_alive"] = self._pool.alive()
            s["retained"] = len(self._finished)  # finished tasks and ended jobs kept
            s["retained_bytes"] = self._kept_bytes  # what their outcomes took on the wire
            return s

        return self._ask(read)

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
        now: float | None = None,
    ) -> Task[Any]:
        """A new task, queued for the loop. ``now``: the monotonic time ``due`` was
        computed from, if the caller read it (else it is read here)."""
        payload = self._payload(fn, args, kwargs)
        if (keep and due is not None and wall is None and policy is self._defaults
                and due > (self._clock.monotonic() if now is None else now)):
            assert delay is not None  # (a due comes of a delay, or of an ``at``: a wall)
            return self._add_seed(payload, due, delay, name)
        seq = next(self._seq)
        run = E.Run(seq, payload, policy, 0.0 if due is None else due)
        # As the caller sees it until the loop publishes the core's own view of it.
        key = policy.key
        waits = ((due is not None and due > (self._clock.monotonic() if now is None else now))
                 or (key is not None and policy.debounce))
        # keep: get() finds it after the fact (see _retain)
        task: Task[Any] = Task(self, seq, run, name, delay,
                               SCHEDULED_VIEW if waits else PENDING_VIEW, keep)
        if key is not None and policy.on_conflict == "drop":
            # The call may return an older task of the key: ask the loop, and wait.
            self._queue(None)

            def add_now() -> Task[Any]:
                if threading.get_ident() != self._loop_ident:
                    # The loop ended after the check above: nothing would run the task.
                    raise RuntimeError("cannot schedule new tasks or jobs after shutdown")
                return self._c_add(task, due, wall)

            return self._ask(add_now)
        if wall is not None:
            run.wall_due = wall  # the loop hands it over with the run (AddMany)
        # What _queue does, for a task (no closure made for it).
        if _forks != self._forks or not self._here[0]:
            self._check_process()
        with self._close_lock:
            if self._closed:
                raise RuntimeError("cannot schedule new tasks or jobs after shutdown")
            self._adds.append(task)
        self._reactor.wake()
        return task

    def _payload(self, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> bytes:
        """The call, pickled (checked first: a callable, arguments that bind)."""
        plain = not args and not kwargs and type(fn) is FunctionType
        payload = self._plain_calls.get(fn) if plain else None
        if payload is None:
            if not callable(fn):
                raise TypeError(f"{fn!r} is not callable")
            check_binding(fn, args, kwargs)
            payload = pickle_call(fn, args, kwargs, "task")
            if plain:
                self._remember_plain_call(fn, payload)
        return payload

    def _add_seed(self, payload: bytes, due: float, delay: float, name: str | None) -> Task[Any]:
        """A schedule() task under the Supervisor's policy, due later on the monotonic
        clock: the core keeps it as a seed (core.model.Seed), with no Run until it comes
        due or a command names it; its Task has none until then."""
        seq = next(self._seq)
        task: Task[Any] = Task(self, seq, None, name, delay, SCHEDULED_VIEW, True)
        if _forks != self._forks or not self._here[0]:
            self._check_process()
        if self._closed:
            raise RuntimeError(_CLOSED)
        # Its seed's parts, then its task (see LoopSide._adds), without the lock (a
        # quarter of the call): the loop takes the queue under it, and a call that finds
        # the supervisor closed once they are in takes them back under it (_withdraw).
        seed = (due, seq, payload)
        self._adds.extend((seed, task))
        if self._closed:
            self._withdraw(seed, task)
        self._reactor.wake()
        return task

    def _withdraw(self, seed: tuple[float, int, bytes], task: Task[Any]) -> None:
        """A seed queued as the supervisor closed. Still in the queue, it is taken back
        and the call refused (the loop may have ended: nothing would take it). Taken by
        the loop already, the task stands: it was there before the loop closed, and it
        ends as the tasks scheduled then do (cancelled)."""
        with self._close_lock:  # (the loop takes the queue under it)
            adds = self._adds
            try:
                adds.remove(task)
            except ValueError:
                return
            adds.remove(seed)
        raise RuntimeError(_CLOSED)

    def _remember_plain_call(self, fn: Callable[..., Any], payload: bytes) -> None:
        """A call with no arguments of a plain function (not a method: its object may
        change) that the stdlib pickles by reference always pickles to the same bytes:
        the next such call shares them (no pickling, no binding check, one payload in
        memory for them all). A function pickled by value (cloudpickle: its closure or
        globals may change) is pickled afresh each time. A function pickled by reference
        lives in its module anyway: holding it costs nothing; the table is bounded all
        the same."""
        try:
            by_reference = pickle.dumps((fn, (), {}), protocol=5) == payload
        except Exception:
            by_reference = False
        if by_reference:
            if len(self._plain_calls) >= PLAIN_CALLS:
                self._plain_calls.clear()
            self._plain_calls[fn] = payload

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

    def _command(self, cmd: _C) -> _C:
        """Run a command in the loop and return it, answered."""
        self._ask(lambda: self._do(cmd))
        return cmd

    def _post(self, fn: Callable[[], Any]) -> None:
        self._commands.append(fn)
        self._reactor.wake()

    def _check_process(self) -> None:
        if _forks != self._forks or not self._here[0] or os.getpid() != self._pid:
            raise RuntimeError(
                f"this Supervisor belongs to process {self._pid}: it cannot be used in a "
                f"child made by os.fork() (nothing there would run its tasks); create a new "
                f"Supervisor in the child"
            )

    def _ask(self, fn: Callable[[], R]) -> R:
        """Run ``fn`` in the loop thread and return its answer (inline if we are it)."""
        self._check_process()
        if threading.get_ident() == self._loop_ident or not self._thread.is_alive():
            if threading.get_ident() == self._loop_ident:
                self._take_adds()
            value = fn()
            if threading.get_ident() == self._loop_ident:
                self._apply()
            return value
        call: _Call[R] = _Call(fn, self._apply)
        self._post(call)
        while not call.done.wait(1.0):
            if not self._thread.is_alive():
                return fn()
        if call.error is not None:
            raise call.error
        return cast(R, call.value)

    def _cancel_run(self, task: Task[Any], wait: bool = True) -> bool:
        """Cancel; with ``wait``, answer once the outcome is final: True if the body never
        ran or its process is gone. The loop itself never waits for a process: a killed
        run resolves when its worker's exit is seen, and this caller waits for that."""
        # Named in the loop, where a seed's run, once made, is the task's (see _adopt).
        answer = self._ask(lambda: self._do_cancel(task))
        if answer is False:
            return False
        if not wait:
            # From an asyncio event loop: the loop's answer comes within one of its rounds
            # (it never waits for a process), the process's end is not waited for.
            return True
        if threading.get_ident() != self._loop_ident:
            concurrent.futures.wait((task,))
        return task.done() and task.state in (TaskState.CANCELLED, TaskState.SUPERSEDED)

    def _postpone_run(self, task: Task[Any], delay: float | timedelta | None) -> bool:
        d = (task._delay or 0.0) if delay is None else seconds("delay", delay)
        if task._view[0].final:
            # Nothing to move (nor to ask the loop: after its end, the core would make a
            # run of a seed that its task no longer stands for).
            return False
        # The new time is read in the loop: the wait for it does not shorten the delay.
        return bool(self._ask(lambda: self._do_answer(
            E.Reschedule(task._run, self._clock.monotonic() + d, seq=task._seq))))

    def _do_answer(self, cmd: E.Reschedule) -> bool:
        self._do(cmd)
        return cmd.answer

    def _do_cancel(self, task: Task[Any]) -> bool | None:
        cmd = E.Cancel(task._run, seq=task._seq)
        self._do(cmd)
        return cmd.answer

    def _reschedule_run(
        self, task: Task[Any], at: datetime | float | None, delay: float | timedelta | None
    ) -> bool:
        due, wall = self._start_of(at, delay, required=True)
        assert due is not None
        if task._view[0].final:
            return False  # (see _postpone_run)
        return bool(self._ask(lambda: self._do_answer(
            E.Reschedule(task._run, due, wall, seq=task._seq))))



_C = TypeVar("_C", E.Add, E.Cancel, E.Reschedule, E.JobControl)



# What ``help()`` and ``inspect.signature`` show of schedule(): every keyword, by name.
_SCHEDULE_SIGNATURE = inspect.signature(Supervisor._schedule)
_POLICY_KEYWORDS = frozenset(_SCHEDULE_SIGNATURE.parameters) - frozenset(
    inspect.signature(Supervisor.schedule).parameters)
cast(Any, Supervisor.schedule).__signature__ = _SCHEDULE_SIGNATURE


def _default_timings(engine: Engine) -> E.Timings:
    delay = replace_delay(engine)
    return E.Timings() if delay is None else E.Timings(replace_delay=delay)


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
