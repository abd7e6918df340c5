"""The supervisor's loop thread: it owns every record, feeds the core, carries out its
actions, publishes the runs' states to their Tasks and resolves the futures.

One round: wait on the pool (``_wait``: the only place the loop blocks) until the core's
next deadline, an event or a wake-up; hand each event, the new tasks and the queued
commands to ``Core.handle``; tell the core the time (``Tick``); carry out the actions
(``_apply``: sends, kills, skips...; then the futures). User code never runs here: the
done-callbacks run on a callback thread of their own.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures._base import FINISHED as _FINISHED
from typing import Any, cast

from .._errors import TaskCancelled
from .._states import JobState, TaskState
from ..core import engine as E
from ..core.model import JobRec, Seed
from ..pool import base as P
from ._clock import SYSTEM_CLOCK, Clock
from ._reactor import Reactor
from .job import Job
from .task import PENDING_VIEW, SCHEDULED_VIEW, Task, TaskOwner, TaskView, finish_unwatched

CLOCK_STEP = 0.05  # a change of wall - monotonic larger than this is a clock step
MAX_WAIT = 24 * 3600.0  # the loop wakes at least this often (no far deadline reaches a timer)
LOOP_ERRORS = 100  # this many failing rounds in a row: the loop gives up (tasks are resolved)
HELD_SWEEP = 1024  # weak references to finished tasks are swept from this many on
_JOB_ENDED = (JobState.FINISHED, JobState.CANCELLED)
_PENDING, _SCHEDULED = TaskState.PENDING, TaskState.SCHEDULED

_log = logging.getLogger("taskwarden")
# CPython's count of references to an object: a task with no more than the local name
# and the call's own argument is held by nobody else. Not every Python has it.
_refcount: Callable[[object], int] | None = getattr(sys, "getrefcount", None)
_LOCAL_REFS = 2
_NOBODY: Any = None


class LoopSide:
    """The loop thread's half of the Supervisor (its state is set up by
    ``Supervisor.__init__``): everything here runs on the loop thread, but for
    ``_run_callbacks``, which any thread that resolves a task calls."""

    # The loop's time, and its wait's (a test may give a Supervisor a fake clock: see
    # driver/_clock.py); read through it, never through the time module.
    _clock: Clock = SYSTEM_CLOCK
    _core: E.Core
    _pool: P.Pool
    _reactor: Reactor  # the loop's wait: the pool's fds, wake-ups, deadlines
    _actions: list[E.Action]  # the core's, not carried out yet
    # New tasks, their runs' due and wall_due set by the caller (see model.AddMany). A
    # seed's task (see model.Seed) comes after its seed's parts, (due, seq, payload):
    # flat, so that the collector stops tracking them at once (a task and a tuple holding
    # it would both be walked while they wait here).
    _adds: deque[Task[Any] | tuple[float, int, bytes]]
    _commands: deque[Callable[[], Any]]
    _close_lock: threading.Lock
    _closed: bool
    _loop_ident: int | None
    _applying: bool
    _round_failed: bool
    # Live tasks, and finished ones kept for get(); active, paused and kept jobs.
    _tasks: dict[int, Task[Any]]
    _jobs: dict[int, Job]
    _held: dict[int, weakref.ref[Task[Any] | Job]]
    _sweep_at: int
    _parked: dict[int, list[E.Run]]  # killed worker -> runs to resolve when it is gone
    _finished: deque[tuple[int, int]]
    _kept_bytes: int
    _keep_finished: int
    _keep_finished_bytes: int
    _callbacks: queue.SimpleQueue[tuple[Task[Any], list[Any]] | None]
    _callback_thread: threading.Thread | None
    _callbacks_closed: bool
    _callback_lock: threading.Lock

    def _new_job_run(self, rec: JobRec, run: E.Run) -> None:
        """A job started a run (NewRun): its Task."""
        job = self._jobs.get(rec.seq)
        if job is None:
            return
        # This is a part of the Supervisor, which is the task's owner.
        task: Task[Any] = Task(cast(TaskOwner, self), run.seq, run, job.name, view=_view(run),
                               keep=True)
        task.job = job
        self._tasks[run.seq] = task
        job._started(task)

    def _take_adds(self) -> None:
        """The new tasks queued so far go to the core together (one AddMany)."""
        adds = self._adds
        if not adds:
            return
        tasks = self._tasks
        batch: list[tuple[Task[Any], E.Run]] = []
        runs: list[E.Run | Seed] = []
        pop, put = adds.popleft, runs.append
        # Under the lock: a caller that found the supervisor closed takes its seed back
        # under it (Supervisor._withdraw), never half of one from under this loop.
        with self._close_lock:
            while adds:
                item = pop()
                if isinstance(item, tuple):  # a seed, then its task
                    tasks[item[1]] = pop()  # type: ignore[assignment]
                    put(item)
                    continue
                run = item._run
                assert run is not None
                tasks[item._seq] = item
                batch.append((item, run))
                put(run)
        self._do(E.AddMany(runs))
        del runs
        for task, run in batch:
            state = run.state
            if task._view[0] is not state:
                # The core chose another first state. A change it made (RUNNING, an end)
                # is in ``touched``: _publish shows it this round, built once.
                if state is _PENDING:
                    task._view = PENDING_VIEW
                elif state is _SCHEDULED:
                    task._view = SCHEDULED_VIEW

    def _c_add(self, task: Task[Any], due: float | None, wall: float | None) -> Task[Any]:
        run = task._run
        assert run is not None
        self._tasks[run.seq] = task
        cmd = E.Add(run, due, wall)
        self._do(cmd)
        stands = cmd.answer
        if stands is not run:
            del self._tasks[run.seq]  # "drop": the call stands for the live task
            assert stands is not None
            return self._tasks[stands.seq]
        if task._view[0] is not run.state:  # the core chose another first state
            task._view = _view(run)
        return task

    def _do(self, item: E.Command | P.Event, now: float | None = None) -> None:
        """Hand the core one input (on the loop thread) and keep its actions for
        ``_apply``, which first publishes what changed to the tasks."""
        self._take(self._core.handle(item, self._clock.monotonic() if now is None else now))

    def _take(self, actions: list[E.Action]) -> None:
        if self._core.made:
            self._adopt()
        if self._core.jobs_touched:
            actions = self._answer_jobs(actions)
        if actions:
            if self._actions:
                self._actions.extend(actions)
            else:
                self._actions = actions

    def _adopt(self) -> None:
        """Runs the core made from seeds: their Tasks get them (commands name the run
        from now on). A state the core gave them is published with the others."""
        made, tasks = self._core.made, self._tasks
        for run in made:
            task = tasks.get(run.seq)
            if task is not None:
                task._run = run
        made.clear()

    def _answer_jobs(self, actions: list[E.Action]) -> list[E.Action]:
        """A job's new runs get their Tasks, and its changes are published, as soon as
        the core returns: a job must never show a state the core was not in (ended with
        none of its runs left, while the run it just started has no Task yet)."""
        self._core.jobs_touched = False
        rest: list[E.Action] = []
        for a in actions:
            match a:
                case E.NewRun(rec, run):
                    self._new_job_run(rec, run)
                case E.JobChanged(rec):
                    self._job_changed(rec)
                case _:
                    rest.append(a)
        return rest

    def _publish(self) -> None:
        """Each run that changed shows its Task the new state, in one assignment."""
        tasks = self._tasks
        touched = self._core.touched
        for run in touched:
            task = tasks.get(run.seq)
            if task is not None:
                more = run.more
                if more is None:
                    task._view = (run.state, 0, None, None, None, None)
                else:
                    task._view = (run.state, more.attempts, more.worker_pid, more.started_at,
                                  more.finished_at, more.progress)
        touched.clear()

    # -------------------------------------------------------------- the loop
    def _loop(self) -> None:
        self._loop_ident = threading.get_ident()
        core, pool, commands, clock = self._core, self._pool, self._commands, self._clock
        self._do(E.Start())
        self._apply()
        failures = 0  # rounds in a row that raised
        try:
            while True:
                self._round_failed = False
                deadline = core.next_deadline()
                if core.wall_anchored:
                    # Starts that follow the wall clock: look at it now and then, so that a
                    # clock step or a suspend is noticed (one wake-up a minute).
                    check = clock.monotonic() + core.timings.wall_check
                    deadline = check if deadline is None else min(deadline, check)
                if commands or self._adds or pool.has_events():
                    deadline = 0.0  # work is waiting: do not block
                elif deadline is not None:
                    # A far deadline (timeout=sys.maxsize) never reaches the timer as such.
                    deadline = min(deadline, clock.monotonic() + MAX_WAIT)
                # No local keeps the batch: an outcome delivered is the task's alone.
                self._on_events(self._wait(deadline))
                self._take_adds()
                while commands:
                    self._take_adds()  # a command must see every task added before it
                    try:
                        commands.popleft()()
                    except Exception:
                        self._contained("running a command")
                now = clock.monotonic()
                offset = clock.time() - now
                try:
                    if abs(offset - core.wall_offset) > CLOCK_STEP:
                        self._do(E.ClockChanged(offset))
                    self._do(E.TICK)
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
                while self._adds:  # (a seed's caller may withdraw it: see _take_adds)
                    item = self._adds.popleft()
                    if not isinstance(item, tuple):
                        self._tasks[item._seq] = item
            pool.close()
            self._reactor.close()
            for wid in list(self._parked):
                self._release(wid)
            # Anything still unresolved (the loop died) must not hang its callers, and
            # its state says what its future says.
            for task in list(self._tasks.values()):
                if not task.done():
                    if not task.state.final:
                        task._view = (TaskState.CANCELLED, *task._view[1:])
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
        now = self._clock.monotonic()
        for ev in events:
            try:
                self._on_event(ev, now)
            except Exception:
                self._contained(f"handling {type(ev).__name__}")

    def _wait(self, deadline: float | None) -> list[P.Event]:
        """Block until ``deadline`` (None: no deadline; 0: do not block), an event or a
        wake-up; returns the pool's events. The one place the loop waits."""
        self._reactor.wait(deadline)
        return self._pool.take_events()

    def _on_event(self, ev: P.Event, now: float) -> None:
        match ev:
            case P.RunDone():
                if ev.size:
                    task = self._tasks.get(ev.seq)
                    if task is not None and task._keep:
                        task._size = ev.size  # what keeping it for get() costs
                self._take(self._core.handle(ev, now))
            case P.WorkerExited():
                self._take(self._core.handle(ev, now))
                self._release(ev.wid)
            case _:
                self._take(self._core.handle(ev, now))

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
        pool, core = self._pool, self._core
        if core.touched:
            self._publish()
        while self._actions:
            actions, self._actions = self._actions, []
            sends: dict[int, list[tuple[int, bytes, dict[str, Any] | None]]] = {}
            killing: dict[int, int] = {}
            resolved: list[E.Run] = []
            cancelled: list[E.Cancelled] = []
            for a in actions:
                try:
                    match a:
                        case E.Send(wid, runs):
                            # One write per worker per round: runs for a worker travel
                            # together.
                            batch = sends.get(wid)
                            if batch is None:
                                batch = sends[wid] = []
                            for one in runs:
                                batch.append((one.seq, one.payload, _opts(one)))
                        case E.Resolve(ended):
                            killer = killing.get(id(ended)) if killing else None
                            if killer is None:
                                resolved.append(ended)
                            else:
                                # Its process was just killed: resolve once it is gone, so
                                # that result() never raises while the process still exists.
                                self._parked.setdefault(killer, []).append(ended)
                        case E.Cancelled():
                            cancelled.append(a)
                        case E.NewRun() | E.JobChanged():
                            pass  # answered as soon as the core returned (_answer_jobs)
                        case E.Spawn(wid):
                            pool.spawn(wid)
                        case E.Kill(wid, run, also):
                            if pool.kill(wid):
                                for r in (run, *also):
                                    if r is not None:
                                        killing[id(r)] = wid
                        case E.Skip(wid, seq):
                            # The runs it may name go first: a skip that overtook its run
                            # would find nothing to skip, and the run would start anyway.
                            self._send_now(sends, wid)
                            pool.skip(wid, seq)
                        case E.Interrupt(wid, seq):
                            pool.interrupt(wid, seq)
                        case E.Stop(wid):
                            self._send_now(sends, wid)
                            pool.stop(wid)
                        case E.Note(level, text):
                            _log.log(level, "%s", text)
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
            for bulk in cancelled:
                try:
                    self._resolve_cancelled(bulk.runs, bulk.at, bulk.seqs)
                except Exception:
                    self._contained("resolving cancelled tasks")
            if core.touched:  # a resolve's callback may have called back in
                self._publish()

    def _send_now(
        self, sends: dict[int, list[tuple[int, bytes, dict[str, Any] | None]]], wid: int
    ) -> None:
        batch = sends.pop(wid, None)
        if batch:
            self._pool.send(wid, batch)

    def _resolve(self, run: E.Run) -> None:
        task = self._tasks.get(run.seq)
        run.payload = b""  # the call is no longer needed (no attempt is left): free it now
        if task is None or task._state == _FINISHED:
            return
        # The run may stay named by the core a while (a stale timer, a job's recent runs):
        # it lets go of the outcome, which the task alone holds from now.
        more = run.more
        if more is None:  # an end without an outcome (never so, but for a bulk cancel)
            more = run.more = E.RunMore()
        value, more.value = more.value, None
        # Kept or let go before the callbacks, which may look it up.
        if task._keep or task.job is not None:
            self._retain(task)
        else:
            self._let_go(run.seq, task)  # what _retain does with a submit()'s task
        if more.value_ok:
            if not task._finish_quietly(value, None):
                Future.set_result(task, value)
        else:
            task.traceback = more.tb
            task.set_exception(value)
        del value
        job = task.job
        if job is not None:
            job._run_finished(task)
            if job._view[0] in _JOB_ENDED and not job._open:
                self._job_ended(job)

    def _resolve_cancelled(self, runs: list[E.Run], at: float, seqs: list[int]) -> None:
        """Scheduled runs cancelled together (shutdown), and seeds (``seqs``): what
        ``_resolve`` does to each, in bulk. The tasks nobody waits on are resolved without
        a Condition; their view is one shared tuple, as none of them has begun an
        attempt."""
        get = self._tasks.get
        shared: TaskView = (TaskState.CANCELLED, 0, None, None, at, None)
        ended: list[Task[Any]] = []
        for seq in seqs:  # never made a Run: nothing to let go of but the task
            task = get(seq)
            if task is not None and task._state != _FINISHED:
                task._view = shared
                ended.append(task)
        for run in runs:  # never ran to an end: no outcome (run.value) to let go of
            run.payload = b""
            task = get(run.seq)
            if task is None or task._state == _FINISHED:
                continue
            more = run.more
            fresh = more is None or (more.attempts == 0 and more.progress is None)
            task._view = shared if fresh else _view(run)
            ended.append(task)
        watched = finish_unwatched(ended)
        if watched:
            watching = set(map(id, watched))
            ended = [t for t in ended if id(t) not in watching]
        self._retain_many(ended)
        for task in watched:  # someone waits, or a callback: the usual way
            self._retain(task)
            task.set_exception(TaskCancelled("cancelled"))

    def _retain_many(self, items: list[Task[Any]]) -> None:
        """``_retain`` of many finished tasks (no job's), the bounds applied once.
        ``items`` is emptied: the loop then holds each task only where it keeps it."""
        if not self._keep_finished:
            self._let_go_many(items)
            return
        kept = [t for t in items if t._keep]
        if len(kept) < len(items):
            rest = [t for t in items if not t._keep]
            items.clear()
            self._let_go_many(rest)
        items.clear()
        # The newest keep_finished of them at most are kept: the older ones would only
        # be appended to be trimmed at once.
        over = len(kept) - self._keep_finished
        if over > 0:
            older = kept[:over]
            del kept[:over]
            self._let_go_many(older)
        finished = self._finished
        for task in kept:
            finished.append((task._seq, task._size))
            self._kept_bytes += task._size
        self._trim()

    def _let_go_many(self, items: list[Task[Any]]) -> None:
        """``_let_go`` of many tasks of no job, emptying ``items``: held weakly, one
        sweep at the end. A task that nobody else holds gets no weak reference: it
        would be dead at once (and a million of them cost the loop a full collection)."""
        tasks, held, ref = self._tasks, self._held, weakref.ref
        for i in range(len(items)):
            task = items[i]
            items[i] = _NOBODY
            seq = task._seq
            tasks.pop(seq, None)
            if _refcount is None or _refcount(task) > _LOCAL_REFS:
                held[seq] = ref(task)
        items.clear()
        if len(held) >= self._sweep_at:
            for dead in [k for k, r in held.items() if r() is None]:
                del held[dead]
            self._sweep_at = max(HELD_SWEEP, 2 * len(held))

    def _retain(self, item: Task[Any] | Job) -> None:
        """A task is final, or a job ended: keep it for get() (a schedule() task, a job
        run, a job) within the bounds, or hold it only weakly (a submit() task)."""
        if isinstance(item, Task):
            seq, keep, size = item._seq, item._keep, item._size
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
        job = self._jobs.get(rec.seq)
        if job is None:
            return
        job._publish()
        if rec.state in _JOB_ENDED and not job._open:
            self._job_ended(job)

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
    more = run.more
    attempts = 0 if more is None else more.attempts
    attempt = attempts + (0 if run.state is TaskState.RUNNING else 1)
    not_before = None if more is None else more.not_before
    if attempt == 1 and p.timeout is None and p.heartbeat is None and not_before is None:
        return None
    opts: dict[str, Any] = {"attempt": attempt}
    if p.timeout is not None:
        opts["timeout"] = p.timeout
    if p.heartbeat is not None:
        opts["heartbeat"] = p.heartbeat
    if attempts and more is not None and more.progress is not None:
        opts["previous_progress"] = more.progress
    if not_before is not None:
        opts["not_before"] = not_before
    return opts


def _invoke_callbacks(task: Task[Any], callbacks: list[Any]) -> None:
    for callback in callbacks:
        try:
            callback(task)
        except BaseException:  # KeyboardInterrupt and SystemExit too: logged, not fatal
            _log.exception("a done-callback of %r raised", task)


def _view(run: E.Run) -> TaskView:
    """What a task shows its callers of its run."""
    more = run.more
    if more is None:
        return (run.state, 0, None, None, None, None)
    return (run.state, more.attempts, more.worker_pid, more.started_at, more.finished_at,
            more.progress)
