"""The supervisor's decisions, with no threads, no pipes and no clock of its own.

The driver hands each input to ``Core.handle(item, now)``: a pool event (a
worker is ready, a result came back, a worker died) or a command of
``model`` (add a run or a job, cancel, reschedule, control a job, close,
time went by, the wall clock stepped), with the current monotonic time; it
returns the actions to carry out (spawn a worker, send runs to a worker,
kill a worker, resolve a task, make a job run's Task...). Tests drive it
with a fake clock, in microseconds.

Every input's own effect comes first; ``handle`` then runs the dispatcher once
(``dispatch.Dispatcher``, the base of ``Core``: assignment, prefetch and take-back),
when the outcome is known: a run that ended freed its worker, a queued one came due.
This module owns the inputs and the workers' lifecycle: a spare process is kept
started, so that a killed worker is replaced by one that is already up; a worker
that dies or is killed gives back what it was sent ahead of time.

Starting: a worker process that does not report READY within BOOT_LIMIT is
killed; BOOT_STRIKES workers in a row that die or time out before READY
break the pool (as ProcessPoolExecutor's does: its initializer crashes or
hangs), and every task then fails at once rather than wait for ever. A run
handed to a worker that is still starting waits for it no longer than its
own time limit (but at least BOOT_ALLOWANCE, a normal start on a busy machine).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from .._errors import TaskCancelled, TaskSuperseded, TaskTimeout, WorkerCrashed
from .._policy import MAX_RETRY_DELAY, Policy
from .._states import InvalidTransition, TaskState, check_task
from ..pool.base import (
    Beat,
    Event,
    InitFailed,
    RunDone,
    RunSkipped,
    WorkerExited,
    WorkerReady,
    WorkerRetiring,
)
from .dispatch import Dispatcher
from .jobs import JobBook
from .model import (
    NOT_ARMED,
    TICK,
    Action,
    Add,
    AddJob,
    AddMany,
    Cancel,
    Cancelled,
    ClockChanged,
    Close,
    Command,
    CronTrigger,
    Interrupt,
    JobChanged,
    JobControl,
    JobOp,
    JobRec,
    Kill,
    NewRun,
    Note,
    Rearm,
    Reschedule,
    Resolve,
    Run,
    RunMore,
    Seed,
    Send,
    Skip,
    Spawn,
    Start,
    Stop,
    Tick,
    Worker,
)
from .timers import (
    BEAT,
    BOOT,
    BOOT_ALLOWANCE,
    BOOT_LIMIT,
    BOOT_STRIKES,
    CALLBACK,
    DEADLINE,
    GRACE,
    JOB,
    LEAD,
    REPLACE_DELAY,
    SKIP_ACK_WAIT,
    SKIP_WAIT,
    START,
    STEAL_AFTER,
    STOP_WAIT,
    Timings,
)

# What the driver and the tests use through ``engine``: the core and its vocabulary.
__all__ = [
    "BEAT", "BOOT", "BOOT_ALLOWANCE", "BOOT_LIMIT", "BOOT_STRIKES", "CALLBACK", "DEADLINE",
    "GRACE", "JOB", "LEAD", "REPLACE_DELAY", "SKIP_ACK_WAIT", "SKIP_WAIT", "START",
    "STEAL_AFTER", "STOP_WAIT", "TICK", "Action", "Add", "AddJob", "AddMany", "Cancel", "Cancelled",
    "ClockChanged",
    "Close", "Command", "Core", "CronTrigger", "Interrupt", "JobChanged", "JobControl",
    "JobOp", "JobRec", "Kill", "NewRun", "Note", "Reschedule", "Resolve", "Run", "RunMore", "Send",
    "Skip", "Spawn", "Start", "Stop", "Tick", "Timings", "Worker",
]

_NONE: list[Action] = []  # handle's answer when nothing is to be done: never filled
_NEVER = math.inf  # the first start when none is armed

_S = TaskState


def _armed_run(entry: Run | Rearm) -> Run | None:
    """The run of a START entry while the entry is live: the run is SCHEDULED for the
    time the entry was armed for (a run moved elsewhere has another ``due``; two live
    entries of one run and time fire it once, the second finding it started)."""
    run = entry.run if type(entry) is Rearm else entry
    assert isinstance(run, Run)
    return run if run.state is _S.SCHEDULED and run.due == entry.armed else None


class Core(Dispatcher):
    """Scheduling heap, dispatch, watchdogs and retries. See the module docstring."""

    def __init__(
        self,
        workers: int,
        *,
        spare: int = 1,
        prefetch: int = 16,
        max_tasks_per_worker: int | None = None,
        timings: Timings | None = None,
        id_format: Callable[[int], str] = str,
        seqs: Iterator[int] | None = None,
        wall_offset: float = 0.0,
        default_policy: Policy | None = None,
    ) -> None:
        """``id_format`` says how a task id reads in messages; ``seqs`` numbers the runs
        the core makes itself (a job's), from the same count as the driver's;
        ``default_policy`` is the policy of the runs made from seeds (see ``Seed``)."""
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.n_workers = workers
        self.spare = spare
        self.prefetch = max(1, prefetch)
        self.max_tasks_per_worker = max_tasks_per_worker
        self.actions: list[Action] = []
        self.pending: deque[Run] = deque()
        self.workers: dict[int, Worker] = {}
        self.busy = 0  # workers with a non-empty inflight queue
        self.replaced = 0
        self.recycled = 0  # workers that left over their memory limit
        self.by_state: dict[TaskState, int] = dict.fromkeys(TaskState, 0)
        self.scheduled = 0
        self.closing = False
        self._heap: list[tuple[float, int, int, Any, int]] = []
        # Scheduled starts, apart: (due, seq, run), fired ``lead`` before ``due`` if the
        # run is still SCHEDULED for ``due`` (see ``_arm``).
        self._starts: list[Run | Rearm] = []
        # Seeds (see ``Seed``): their START keys, fired like ``_starts`` (merged by
        # (due, seq)), and their payloads by seq. A key is live while its seq is in
        # ``_seeds``: a seed made a Run before its time leaves a stale key behind.
        self._seed_keys: list[tuple[float, int]] = []
        self._seeds: dict[int, bytes] = {}
        self._seed_stale = 0
        self.default_policy = Policy() if default_policy is None else default_policy
        # Runs made from seeds since the driver last looked (it adopts them: their Tasks
        # had none).
        self.made: list[Run] = []
        self._counter = itertools.count()
        self._wids = itertools.count(1)
        self._stale = 0
        self.broken: str | None = None
        self.streams: dict[str, deque[Run]] = {}  # live runs of each key, oldest first
        self.timings = Timings() if timings is None else timings
        self._id = id_format
        self.seqs: Iterator[int] = itertools.count(1) if seqs is None else seqs
        # Runs whose state, attempts or progress changed since the driver last looked:
        # it publishes them to their Tasks (see ``handle``).
        self.touched: list[Run] = []
        self.jobs_touched = False  # a NewRun or JobChanged is among the actions
        # Wall clock = monotonic + wall_offset; ClockChanged updates it when the clock steps.
        self.wall_offset = wall_offset
        self.wall_anchored: dict[tuple[str, int], Any] = {}
        self.jobs = JobBook(self)
        self._steal_at: float | None = None
        self._refill_at: float | None = None
        self._prefetched = False  # runs may sit queued behind a worker's head
        self._leaving: set[int] = set()  # workers that should exit on their own soon
        self.boot_failures = 0  # workers in a row that died or timed out before READY

    # ---------------------------------------------------------- entry point
    def handle(self, item: Command | Event, now: float) -> list[Action]:
        """The one way in: a pool event or a command, at monotonic time ``now``. Returns
        the actions to carry out, in order. The runs whose state, attempts or progress
        changed are left in ``touched`` for the driver to publish (it empties it; a new
        run's first state is ``Add.answer.state``); ``jobs_touched`` says a NewRun or
        JobChanged is among the actions, which the driver answers at once."""
        match item:
            case AddMany():
                self._add_many(item.runs, now)
            case Add():
                item.answer = self.add_run(item.run, now, item.due, item.wall_due)
            case RunDone():
                self._done(item.wid, item.seq, item.ok, item.value, item.tb, now,
                           item.progress, item.has_progress)
            case Tick():
                self._advance(now)
            case Beat():
                self._beat(item.wid, item.seq, item.progress, item.has_progress, now)
            case WorkerReady():
                self._worker_ready(item.wid, item.pid, now)
            case RunSkipped():
                self._skipped(item.wid, item.seq, now)
            case WorkerExited():
                self._worker_exited(item.wid, item.exitcode, now, item.reason)
            case WorkerRetiring():
                self._worker_retiring(item.wid, now)
            case InitFailed():
                self._initializer_failed(item.tb, now)
            case Cancel():
                run = item.run if item.run is not None else self.seed_run(item.seq, now)
                item.answer = False if run is None else self.cancel_run(run, now)
            case Reschedule():
                run = item.run if item.run is not None else self.seed_run(item.seq, now)
                item.answer = (False if run is None
                               else self._reschedule(run, item.due, now, item.wall_due))
            case JobControl():
                item.answer = self._job_control(item, now)
            case AddJob():
                self._add_job(item.job, now, item.first_due, item.first_wall)
            case ClockChanged():
                self._clock_changed(item.wall_offset, now)
            case Close():
                self._close(now, item.cancel_pending)
            case Start():
                self._start(now)
        # Once the input's outcome is known (a run freed a worker, a queued one came due):
        # hand out what waits, take back what waits too long, let idle workers go.
        self._dispatch(now)
        actions = self.actions
        if actions:
            self.actions = []
            return actions
        return _NONE

    def _job_control(self, cmd: JobControl, now: float) -> bool:
        jobs, job = self.jobs, cmd.job
        match cmd.op:
            case "pause":
                done = jobs.pause(job, now)
            case "resume":
                done = jobs.resume(job, now)
            case "kick":
                done = jobs.kick(job, now)
            case "cancel":
                done = jobs.cancel(job, now, cmd.kill_running)
            case "reschedule":
                assert cmd.due is not None
                done = jobs.reschedule(job, now, cmd.due, cmd.wall_due)
        return done

    # ------------------------------------------------------- direct inputs
    # One input each and the dispatch that ends it, as ``handle`` does, with the actions
    # left in ``actions``: the fake-clock tests call the core so.
    def start(self, now: float) -> None:
        self._start(now)
        self._dispatch(now)

    def advance(self, now: float) -> None:
        """Fire every timer due at ``now``."""
        self._advance(now)
        self._dispatch(now)

    def add(self, run: Run, now: float, due: float | None = None,
            wall_due: float | None = None) -> Run:
        stands = self.add_run(run, now, due, wall_due)
        self._dispatch(now)
        return stands

    def cancel(self, run: Run, now: float, state: TaskState = _S.CANCELLED,
               error: BaseException | None = None) -> bool | None:
        done = self.cancel_run(run, now, state, error)
        self._dispatch(now)
        return done

    def reschedule(self, run: Run, due: float, now: float, wall_due: float | None = None) -> bool:
        moved = self._reschedule(run, due, now, wall_due)
        self._dispatch(now)
        return moved

    def add_job(self, job: JobRec, now: float, first_due: float | None = None,
                first_wall: float | None = None) -> None:
        self._add_job(job, now, first_due, first_wall)
        self._dispatch(now)

    def clock_changed(self, wall_offset: float, now: float) -> None:
        self._clock_changed(wall_offset, now)
        self._dispatch(now)

    def worker_ready(self, wid: int, pid: int, now: float) -> None:
        self._worker_ready(wid, pid, now)
        self._dispatch(now)

    def beat(self, wid: int, seq: int, progress: Any, has_progress: bool, now: float) -> None:
        self._beat(wid, seq, progress, has_progress, now)
        self._dispatch(now)

    def skipped(self, wid: int, seq: int, now: float) -> None:
        self._skipped(wid, seq, now)
        self._dispatch(now)

    def done(self, wid: int, seq: int, ok: bool, value: Any, tb: str | None, now: float,
             progress: Any = None, has_progress: bool = False) -> None:
        self._done(wid, seq, ok, value, tb, now, progress, has_progress)
        self._dispatch(now)

    def worker_exited(self, wid: int, exitcode: int | None, now: float,
                      reason: str | None = None) -> None:
        self._worker_exited(wid, exitcode, now, reason)
        self._dispatch(now)

    def worker_retiring(self, wid: int, now: float) -> None:
        self._worker_retiring(wid, now)
        self._dispatch(now)

    def initializer_failed(self, tb: str, now: float) -> None:
        self._initializer_failed(tb, now)
        self._dispatch(now)

    def close(self, now: float, cancel_pending: bool) -> None:
        self._close(now, cancel_pending)
        self._dispatch(now)

    # ----------------------------------------------------------- job runs
    def new_job_run(self, job: JobRec) -> Run:
        """A run of a recurring job, numbered from the shared count; the driver is told
        (NewRun) to make its Task."""
        run = Run(next(self.seqs), job.payload, job.policy)
        run.job = job
        self.actions.append(NewRun(job, run))
        self.jobs_touched = True
        return run

    # ------------------------------------------------------------------ setup
    def _start(self, now: float) -> None:
        """Start the pool's processes: ``workers`` now, the spare once one is ready
        (so that it does not slow down the first result on a small machine)."""
        for _ in range(self.n_workers):
            self._spawn(now)

    def _spawn(self, now: float) -> None:
        wid = next(self._wids)
        self.workers[wid] = Worker(wid)
        self.actions.append(Spawn(wid))
        self.push_timer(now + self.timings.boot_limit, BOOT, self.workers[wid], 0)

    def _live_target(self) -> int:
        if self.broken is not None:
            return 0
        if self.closing:
            # Runs already due still run at shutdown: keep workers (no spare) while
            # any wait, and replace those that leave on the way.
            return self.n_workers if self.pending else 0
        return self.n_workers + self.spare

    # ------------------------------------------------------------- states
    def _set(self, run: Run, new: TaskState) -> None:
        old = run.state
        check_task(old, new)
        self.by_state[old] -= 1
        self.by_state[new] += 1
        if old is _S.SCHEDULED:
            self.scheduled -= 1
        if new is _S.SCHEDULED:
            self.scheduled += 1
        run.state = new
        self.touched.append(run)

    # --------------------------------------------------------------- timers
    def push_timer(self, when: float, kind: int, obj: Any, gen: int) -> None:
        heapq.heappush(self._heap, (when, next(self._counter), kind, obj, gen))

    def _arm(self, run: Run) -> None:
        """A START timer for ``run``, fired ``lead`` before ``run.due``. The first is the
        run itself (a million scheduled runs: no other object each, so nothing more for
        the garbage collector to walk); later ones are a ``Rearm``. An entry stays live
        while the run is SCHEDULED for its time (no ``gen`` needed: a run moved elsewhere
        has another ``due``, and two entries of one time fire it once)."""
        if run.armed == NOT_ARMED:
            run.armed = run.due  # its own entry: no other object per scheduled run
            heapq.heappush(self._starts, run)
        else:  # it may still be in the heap under its first time, which stays
            heapq.heappush(self._starts, Rearm(run))

    def _invalidate(self, run: Run) -> None:
        """Make every heap entry of ``run`` stale (lazy deletion)."""
        more = run.more
        if more is None:
            more = run.more = RunMore()
        more.gen += 1
        self._stale += 1

    def next_deadline(self) -> float | None:
        if self._stale > 1024 and self._stale > (len(self._heap) + len(self._starts)) // 2:
            self._compact()
        heap, starts, keys, seeds = self._heap, self._starts, self._seed_keys, self._seeds
        if self._seed_stale > 1024 and self._seed_stale > len(keys) // 2:
            keys[:] = [k for k in keys if k[1] in seeds]
            heapq.heapify(keys)
            self._seed_stale = 0
        while heap:
            _, _, kind, obj, gen = heap[0]
            if kind != CALLBACK and obj.gen != gen:
                heapq.heappop(heap)
                self._stale = max(0, self._stale - 1)
                continue
            break
        while starts:
            if _armed_run(starts[0]) is not None:
                break
            heapq.heappop(starts)
            self._stale = max(0, self._stale - 1)
        while keys and keys[0][1] not in seeds:
            heapq.heappop(keys)
            self._seed_stale = max(0, self._seed_stale - 1)
        first = self._first_start()
        if first != _NEVER:
            start = first - self.timings.lead
            return min(start, heap[0][0]) if heap else start
        return heap[0][0] if heap else None

    def _first_start(self) -> float:
        """The earliest time a START entry or seed is armed for (stale ones too)."""
        starts, keys = self._starts, self._seed_keys
        if keys:
            return min(keys[0][0], starts[0].armed) if starts else keys[0][0]
        return starts[0].armed if starts else _NEVER

    def armed_starts(self) -> list[Run]:
        """The runs whose START timer is live (for tests' invariants)."""
        return [run for run in map(_armed_run, self._starts) if run is not None]

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if e[2] == CALLBACK or e[3].gen == e[4]]
        heapq.heapify(self._heap)
        self._starts = [e for e in self._starts if _armed_run(e) is not None]
        heapq.heapify(self._starts)
        self._stale = 0

    def _fire_starts(self, until: float, now: float) -> None:
        """Fire the START timers and seeds due by ``until`` (``<= now``), in the order of
        (time, seq)."""
        starts, keys, seeds, lead = self._starts, self._seed_keys, self._seeds, self.timings.lead
        pop = heapq.heappop
        while True:
            if keys:
                due, seq = keys[0]
                if starts:
                    head = starts[0]
                    seed_first = due < head.armed or (due == head.armed and seq < head.seq)
                else:
                    seed_first = True
            elif starts:
                seed_first = False
            else:
                return
            if seed_first:
                if due - lead > until:
                    return
                pop(keys)
                payload = seeds.pop(seq, None)
                if payload is None:  # made a Run before its time
                    self._seed_stale = max(0, self._seed_stale - 1)
                    continue
                self._make_pending(self._grow(seq, payload, due), now)
                continue
            if starts[0].armed - lead > until:
                return
            run = _armed_run(pop(starts))
            if run is None:
                self._stale = max(0, self._stale - 1)
                continue
            self._make_pending(run, now)

    def _grow(self, seq: int, payload: bytes, due: float) -> Run:
        """The Run of a seed (taken out of ``_seeds``): SCHEDULED, counted as such since
        the seed came in; the driver adopts it (``made``)."""
        run = Run(seq, payload, self.default_policy, due)
        run.state = _S.SCHEDULED
        self.made.append(run)
        return run

    def seed_run(self, seq: int, now: float) -> Run | None:
        """The run of seed ``seq``, made now for a command that names it (it is SCHEDULED
        and not armed: the command moves or ends it at once); None if ``seq`` is no seed
        (its run was made before, or it was cancelled at shutdown)."""
        payload = self._seeds.pop(seq, None)
        if payload is None:
            return None
        self._seed_stale += 1  # its key stays in the heap until it is popped
        return self._grow(seq, payload, now)

    def _advance(self, now: float) -> None:
        """Fire every timer due at ``now`` (the dispatch follows: ``handle``)."""
        heap, lead = self._heap, self.timings.lead
        # Starts and the other timers fire in the order of their times (a start first
        # on a tie).
        while heap and heap[0][0] <= now:
            if self._first_start() - lead <= heap[0][0]:
                self._fire_starts(heap[0][0], now)
            _, _, kind, obj, gen = heapq.heappop(heap)
            if kind == CALLBACK:
                obj(now)
                continue
            if obj.gen != gen:
                self._stale = max(0, self._stale - 1)
                continue
            if kind == JOB:
                self.jobs.fire(obj, now)
                continue
            if kind == BOOT:
                self._boot_overdue(obj, now)
                continue
            run: Run = obj
            if kind == START:
                self._make_pending(run, now)
            elif kind == DEADLINE:
                self._expire(run, now, f"timed out after {run.policy.timeout:g} s")
            elif kind == BEAT:
                hb = run.policy.heartbeat
                assert hb is not None
                if run.last_beat + hb > now:
                    self.push_timer(run.last_beat + hb, BEAT, run, run.gen)
                else:
                    silent = now - run.last_beat
                    self._expire(run, now, f"missed its heartbeat: silent for {silent:.3f} s "
                                 f"(heartbeat={hb:g} s)")
            elif kind == GRACE:
                if run.worker is not None and run.state is _S.RUNNING:
                    self._kill_worker(run.worker, now, f"task {self._id(run.seq)} "
                                      f"{run.hb_reason}, and its grace of "
                                      f"{run.policy.grace:g} s ran out", logging.WARNING)
                    self._finish_timeout(run, now)
            elif kind == SKIP_WAIT:
                # A cancelled prefetched run is at its worker's head and the worker
                # has not said it skipped it: it may be running, so kill.
                w = run.worker
                if w is not None and w.inflight and w.inflight[0] is run:
                    self._kill_worker(w, now, f"task {self._id(run.seq)} was cancelled "
                                      f"and may have begun before its worker read the cancel")
                    self._end_cancelled(run, now)
        if self._first_start() - lead <= now:
            self._fire_starts(now, now)

    # ----------------------------------------------------------------- input
    def add_run(self, run: Run, now: float, due: float | None = None,
                wall_due: float | None = None) -> Run:
        """A new run: SCHEDULED until ``due`` if that is in the future, else PENDING.

        Returns the run that stands for the call: ``run`` itself, or, for a key
        with ``on_conflict="drop"``, the older run of that key still live.
        """
        key = run.policy.key
        mode = run.policy.on_conflict
        if key is not None and mode == "drop" and self.streams.get(key):
            return self.streams[key][-1]
        if run.state is _S.PENDING and (
            (due is not None and due > now) or (key is not None and run.policy.debounce)
        ):
            run.state = _S.SCHEDULED  # its first state: it waits for its time
        self.by_state[run.state] += 1
        if run.state is _S.SCHEDULED:
            self.scheduled += 1
        if key is not None:
            if mode == "supersede":
                winner = self._id(run.seq)
                for old in list(self.streams.get(key, ())):
                    err = TaskSuperseded(f"superseded by task {winner}", winner_id=winner)
                    self.cancel_run(old, now, _S.SUPERSEDED, err)
            if run.policy.debounce:
                due = max(due if due is not None else now, now + run.policy.debounce)
            # Superseding may have emptied (and dropped) the stream: fetch it again.
            stream = self.streams.setdefault(key, deque())
            stream.append(run)
            if mode == "queue" and len(stream) > 1:
                # Waits for its turn: PENDING, but not in the dispatch queue yet.
                run.blocked = True
                run.due = now if due is None else due
                return run
        if self.broken is not None:
            self._end(run, _S.FAILED, now, ok=False, value=WorkerCrashed(self.broken))
            return run
        if wall_due is not None and due is not None and due > now:
            self._anchor(run, wall_due)
        self._enter(run, now, due)
        return run

    def _add_many(self, runs: list[Run | Seed], now: float) -> None:
        """``add_run`` of each (see ``AddMany``), the common one (no key, due later, not
        on the wall clock) on a short path: a million of them may come in a row. A seed
        due later stays one; one due already is made a Run and added so."""
        scheduled, pending = _S.SCHEDULED, _S.PENDING
        starts, push = self._starts, heapq.heappush
        keys, seeds, sown = self._seed_keys, self._seeds, 0
        later = self.broken is None  # (else every run ends FAILED at once)
        try:
            for run in runs:
                if isinstance(run, tuple):
                    due, seq, payload = run
                    if due > now and later:
                        seeds[seq] = payload
                        push(keys, (due, seq))
                        sown += 1
                        continue
                    run = Run(seq, payload, self.default_policy, due)
                    self.made.append(run)
                    self.touched.append(run)  # its Task shows SCHEDULED: publish its state
                due, more = run.due, run.more
                if (more is None and due > now and run.policy.key is None and self.broken is None
                        and run.state is pending):  # no RunMore: no worker either
                    # What add_run and _enter do with it: SCHEDULED, its START entry armed.
                    run.state = scheduled
                    self.by_state[scheduled] += 1
                    self.scheduled += 1
                    run.armed = due  # its own START entry (see _arm)
                    push(starts, run)
                    continue
                wall = None
                if more is not None and more.wall_due is not None:
                    wall, more.wall_due = more.wall_due, None  # add_run anchors it if due later
                self.add_run(run, now, due if due > now else None, wall)
        finally:  # (counted once, as they came in)
            self.by_state[scheduled] += sown
            self.scheduled += sown

    def _clock_changed(self, wall_offset: float, now: float) -> None:
        """The wall clock stepped (or the machine slept): re-place wall-anchored starts."""
        self.wall_offset = wall_offset
        for key, obj in list(self.wall_anchored.items()):
            if isinstance(obj, JobRec):
                self.jobs.rewall(obj)
            elif obj.state is _S.SCHEDULED and obj.wall_due is not None:
                obj.due = obj.wall_due - wall_offset
                if not obj.blocked:  # a blocked run is armed when its turn comes
                    self._invalidate(obj)
                    self._arm(obj)
            else:
                del self.wall_anchored[key]

    def _add_job(self, job: JobRec, now: float, first_due: float | None = None,
                 first_wall: float | None = None) -> None:
        if self.closing:
            return
        self.jobs.add(job, now, first_due, first_wall)

    def job_changed(self, job: JobRec) -> None:
        actions = self.actions
        last = actions[-1] if actions else None
        if not (isinstance(last, JobChanged) and last.job is job):
            actions.append(JobChanged(job))
            self.jobs_touched = True

    def _enter(self, run: Run, now: float, due: float | None) -> None:
        more = run.more
        if run.state not in (_S.PENDING, _S.SCHEDULED) or (
                more is not None and more.worker is not None):
            raise InvalidTransition(f"{run!r} cannot enter the queue again")
        if due is not None and due > now:
            if run.state is _S.SCHEDULED:  # the driver made it SCHEDULED at the call
                run.due = due
                self._arm(run)
            else:
                self._schedule(run, due)
        else:
            if run.state is _S.SCHEDULED:
                self._set(run, _S.PENDING)
            run.due = now
            self.pending.append(run)

    def _stream_ended(self, run: Run, now: float) -> None:
        """A keyed run is final: take it off its stream; in a queue, the next one may go."""
        key = run.policy.key
        assert key is not None
        stream = self.streams.get(key)
        if stream is None:
            return
        try:
            stream.remove(run)
        except ValueError:
            return
        if not stream:
            del self.streams[key]
            return
        nxt = stream[0]
        if nxt.blocked:
            nxt.blocked = False
            self._enter(nxt, now, nxt.due)

    def _schedule(self, run: Run, due: float) -> None:
        self._set(run, _S.SCHEDULED)
        run.due = due
        self._arm(run)

    def _make_pending(self, run: Run, now: float) -> None:
        self._set(run, _S.PENDING)
        run.not_before = run.due if run.due > now else None
        self.pending.append(run)
        if run.wall_due is not None:
            run.wall_due = None
            self.wall_anchored.pop(("run", run.seq), None)

    def _reschedule(self, run: Run, due: float, now: float, wall_due: float | None = None) -> bool:
        """Move a run that has not started; False if it already started or ended."""
        if run.blocked:
            # Waiting for its turn in a key's queue: the new time applies once it comes.
            run.due = due
            self._anchor(run, wall_due)
            return True
        if run.state is _S.SCHEDULED:
            self._invalidate(run)
            run.due = due
            if due <= now:
                self._make_pending(run, now)
            else:
                self._arm(run)
                self._anchor(run, wall_due)
            return True
        if run.state is _S.PENDING and run.worker is None:
            if due <= now:
                return False  # already due and queued: nothing moved
            self.pending.remove(run)
            self._schedule(run, due)
            self._anchor(run, wall_due)
            return True
        return False

    def _anchor(self, run: Run, wall_due: float | None) -> None:
        run.wall_due = wall_due
        if wall_due is None:
            self.wall_anchored.pop(("run", run.seq), None)
        else:
            self.wall_anchored[("run", run.seq)] = run

    def cancel_run(self, run: Run, now: float, state: TaskState = _S.CANCELLED,
                   error: BaseException | None = None) -> bool | None:
        """Cancel in any state but a final one; a running run's worker is killed.

        True: the run is cancelled (a killed worker's run resolves once the process is
        gone). False: it had already ended. None: not known yet: the run was handed to
        a worker ahead of time, and the worker may have begun it before reading the
        request; it ends cancelled once the worker confirms the skip (or once its
        process is killed, if it reaches the head without a confirmation), and ends
        with its own outcome if its result arrives first (the body ran)."""
        if run.state.final:
            return False
        if error is None:
            error = (TaskSuperseded("superseded") if state is _S.SUPERSEDED
                     else TaskCancelled("cancelled"))
        w = run.worker
        if run.state is _S.RUNNING:
            assert w is not None
            what = "superseded" if state is _S.SUPERSEDED else "cancelled"
            # Takes run off the worker, re-queues the rest.
            self._kill_worker(w, now, f"task {self._id(run.seq)} was {what}")
        elif w is not None:
            # Handed out ahead of time, not started: ask the worker to skip it.
            if run.cancel_pending is None:
                run.cancel_pending = state
                run.cancel_error = error
                self.actions.append(Skip(w.wid, run.seq))
            return None
        elif run.state is _S.PENDING and not run.blocked:
            self.pending.remove(run)
        run.blocked = False
        self._invalidate(run)
        self._end(run, state, now, ok=False, value=error)
        return True

    def _worker_ready(self, wid: int, pid: int, now: float) -> None:
        w = self.workers.get(wid)
        if w is None:
            return
        w.pid = pid
        w.ready = True
        w.gen += 1  # its BOOT timer is stale
        self._stale += 1
        self.boot_failures = 0
        if w.inflight:
            self._start_head(w, now)
        self._refill(now)  # the first ready worker starts the spare

    def _beat(self, wid: int, seq: int, progress: Any, has_progress: bool, now: float) -> None:
        w = self.workers.get(wid)
        if w is None or not w.inflight or w.inflight[0].seq != seq:
            return
        run = w.inflight[0]
        run.last_beat = now
        if has_progress:
            run.progress = progress

    def _skipped(self, wid: int, seq: int, now: float) -> None:
        """A worker gave back a run it had not started (cancelled, or taken back)."""
        w = self.workers.get(wid)
        if w is None:
            return
        for i, run in enumerate(w.inflight):  # noqa: B007 - i is used after the loop
            if run.seq == seq:
                break
        else:
            return
        del w.inflight[i]
        run.worker = None
        run.stealing = False
        self._unstart(run)  # it may have become the head, but the worker never began it
        if run.cancel_pending is not None:
            self._end_cancelled(run, now)
        elif not run.state.final:
            self.pending.appendleft(run)
        if i == 0:
            self._after_head_change(w, now)

    def _done(self, wid: int, seq: int, ok: bool, value: Any, tb: str | None, now: float,
              progress: Any = None, has_progress: bool = False) -> None:
        """A worker finished its head run: ``value`` is the result or the exception."""
        w = self.workers.get(wid)
        if w is None or not w.inflight or w.inflight[0].seq != seq:
            return  # a late message from a worker that was killed
        run = w.inflight.popleft()
        if has_progress:
            run.progress = progress
            self.touched.append(run)
        if run.more is not None:  # (it has one: it was handed to the worker)
            run.more.worker = None
        w.done_count += 1
        self._after_head_change(w, now)  # the worker's bookkeeping first, then the outcome
        if run.state.final:
            return
        more = run.more  # its rarer fields, read once
        if more is not None and more.cancel_pending is not None:
            # It began before its worker read the cancel, and ran to its end: its own
            # outcome stands (cancel() said "not known yet" and now answers False).
            self._invalidate(run)
            more.cancel_pending = None
            if run.state is not _S.RUNNING:
                self._set(run, _S.RUNNING)
                run.attempts += 1
                run.started_at = now
                run.worker_pid = w.pid
            if ok:
                self._end(run, _S.COMPLETED, now, ok=True, value=value)
            else:
                self._end(run, _S.FAILED, now, ok=False, value=value, tb=tb)
        elif more is not None and more.hb_reason is not None:
            self._finish_timeout(run, now)  # it ended inside its grace period
        else:
            self._invalidate(run)
            if ok:
                self._end(run, _S.COMPLETED, now, ok=True, value=value)
            elif not self._maybe_retry(run, now, value):
                self._end(run, _S.FAILED, now, ok=False, value=value, tb=tb)

    def _worker_exited(self, wid: int, exitcode: int | None, now: float,
                       reason: str | None = None) -> None:
        """A worker process is gone. If it was not killed on purpose, its head run crashed.
        ``reason`` says why, when the pool killed it on its own (a garbled channel)."""
        self._leaving.discard(wid)
        w = self.workers.get(wid)
        if w is None:
            return  # already accounted for (we killed it)
        if not w.ready and not w.retiring:
            self._boot_failed(w, reason or _describe_exit(exitcode, w.pid, starting=True), now)
            return
        head = self._release(w, now)
        if head is not None:
            if head.state is _S.RUNNING:
                self._invalidate(head)
                what = reason or _describe_exit(exitcode, w.pid)
                self._note(logging.WARNING, f"task {self._id(head.seq)} crashed: {what}")
                err = WorkerCrashed(what, exitcode)
                if not self._maybe_retry(head, now, err):
                    self._end(head, _S.FAILED, now, ok=False, value=err)
            elif head.cancel_pending is not None:
                self._end_cancelled(head, now)  # its process is gone
            elif not head.state.final:
                # Never started (the worker died before it was ready): try it again.
                self.pending.appendleft(head)
        elif not w.retiring:
            self._note(logging.WARNING, f"{_describe_exit(exitcode, w.pid, idle=True)}")
        if not w.retiring:
            self.replaced += 1
        self._refill_soon(now)

    def _worker_retiring(self, wid: int, now: float) -> None:
        """A worker leaves on its own (over its memory limit) after finishing its head
        run: what it was sent ahead of time, never started, goes back to the queue."""
        w = self.workers.get(wid)
        if w is None:
            return
        self._expect_exit(w, now)
        head = self._release(w, now)
        if head is not None and head.cancel_pending is not None:
            self._end_cancelled(head, now)  # the worker leaves before starting it
        elif head is not None and not head.state.final:
            self._unstart(head)  # presumed started, but the worker left first
            self.pending.appendleft(head)
        self.recycled += 1
        self._refill_soon(now)

    def _boot_overdue(self, w: Worker, now: float) -> None:
        if self.workers.get(w.wid) is w and not w.ready and not w.retiring:
            self.actions.append(Kill(w.wid))
            who = f"worker process {w.pid}" if w.pid else "a worker process"
            limit = self.timings.boot_limit
            self._boot_failed(w, f"{who} did not finish starting within {limit:g} s "
                              "(is the initializer hanging?)", now)

    def _boot_failed(self, w: Worker, why: str, now: float) -> None:
        """A worker died (or was killed) before READY: what it was given goes back to the
        queue, never started; enough of these in a row break the pool."""
        head = self._release(w, now)
        if head is not None and head.cancel_pending is not None:
            self._end_cancelled(head, now)  # it never began: the worker was not ready
        elif head is not None and not head.state.final:
            self.pending.appendleft(head)
        self.replaced += 1
        self.boot_failures += 1
        if self.boot_failures >= self.timings.boot_strikes:
            self._break(f"{self.boot_failures} worker processes in a row ended before they "
                        f"were ready (the last: {why})", now)
            return
        strikes = self.timings.boot_strikes
        self._note(logging.WARNING, f"{why} ({self.boot_failures} of {strikes} in a row "
                   "before the pool counts as broken); starting another")
        self._refill_soon(now)

    def _initializer_failed(self, tb: str, now: float) -> None:
        """The pool's initializer raised: like ProcessPoolExecutor, the pool is broken."""
        self._break("the worker initializer failed:\n" + tb, now)

    def _break(self, reason: str, now: float) -> None:
        """The pool cannot start workers: whatever waits, or comes due, fails."""
        if self.broken is not None:
            return
        self.broken = "the pool is broken: " + reason
        self._note(logging.ERROR, self.broken + "\n(every task fails from now on)")
        while self.pending:
            run = self.pending.popleft()
            self._end(run, _S.FAILED, now, ok=False, value=WorkerCrashed(self.broken))
        for w in list(self.workers.values()):
            for run in w.inflight:
                run.worker = None
                if not run.state.final:
                    self._end(run, _S.FAILED, now, ok=False, value=WorkerCrashed(self.broken))
            if w.inflight:
                self.busy -= 1
            w.inflight.clear()
            if not w.retiring:
                self._stop(w, now)

    def _close(self, now: float, cancel_pending: bool) -> None:
        """Shutdown: cancel scheduled runs (and pending ones if asked); no more spawns."""
        self.closing = True
        for job in list(self.jobs.jobs.values()):
            self.jobs.cancel(job, now, kill_running=False)
        starts, self._starts = self._starts, []
        seeds, self._seeds = self._seeds, {}
        self._seed_keys, self._seed_stale = [], 0
        self._stale = sum(1 for e in self._heap if e[2] != CALLBACK and e[3].gen != e[4])
        # A plain scheduled run (no key, job or wall clock to tell) ends in bulk: a
        # million of them must not cost a million cancel()s and Resolves.
        check_task(_S.SCHEDULED, _S.CANCELLED)
        bulk: list[Run] = []
        scheduled, cancelled = _S.SCHEDULED, _S.CANCELLED
        for entry in starts:
            run = _armed_run(entry)
            if run is not None:
                more = run.more
                if run.policy.key is None and (
                        more is None or (more.job is None and more.wall_due is None)):
                    # What cancel() does to it, at once (counted below).
                    run.state = cancelled
                    if more is not None:  # else it ends at the Cancelled action's ``at``
                        more.gen += 1  # (without, it never had a timer but its START)
                        more.finished_at = now
                        more.value_ok = False
                    bulk.append(run)
                else:
                    self.cancel_run(run, now)
        del starts
        if bulk or seeds:
            n = len(bulk) + len(seeds)
            self.by_state[scheduled] -= n
            self.by_state[cancelled] += n
            self.scheduled -= n
            self.actions.append(Cancelled(bulk, now, list(seeds)))
        del seeds
        for stream in list(self.streams.values()):
            for run in list(stream):
                if run.blocked and (cancel_pending or run.due > now):  # due later: cancel
                    self.cancel_run(run, now)
        if cancel_pending:
            for run in list(self.pending):
                self.cancel_run(run, now)
            for w in self.workers.values():
                for run in list(w.inflight)[1:]:
                    self.cancel_run(run, now)
        # The dispatch that ends this input lets the idle workers go (_closing_dispatch).

    def idle(self) -> bool:
        """Nothing runs, nothing waits: the pool may be stopped."""
        return self.busy == 0 and not self.pending

    # ------------------------------------------------------------- internals
    def _closing_dispatch(self, now: float) -> None:
        """At shutdown, after the runs are handed out: the workers left with nothing to
        do go; while runs wait, workers are replaced (but no spare)."""
        # A process still booting with nothing to do is killed rather than waited for
        # (with runs waiting, every slot is taken, or it would have been given one).
        for w in list(self.workers.values()):
            if not w.ready and all(r.state.final for r in w.inflight):
                self._release(w, now)
                self.actions.append(Kill(w.wid))
        if self.pending:
            self._refill(now)
        else:
            for w in list(self.workers.values()):
                if not w.inflight and not w.retiring:
                    self._stop(w, now)

    def _stop(self, w: Worker, now: float) -> None:
        """Tell a worker to exit (it finishes nothing more)."""
        if not w.ready:
            # Still starting (its initializer may hang): it would not read the request.
            self._release(w, now)
            self.actions.append(Kill(w.wid))
            return
        self.actions.append(Stop(w.wid))
        self._expect_exit(w, now)

    def _expect_exit(self, w: Worker, now: float) -> None:
        w.retiring = True
        self._leaving.add(w.wid)
        heapq.heappush(self._heap, (now + self.timings.stop_wait, next(self._counter), CALLBACK,
                                    functools.partial(self._exit_overdue, w.wid), 0))

    def _exit_overdue(self, wid: int, now: float) -> None:
        if wid in self._leaving:  # still there: its process tree is killed
            self._leaving.discard(wid)
            self._note(logging.WARNING, f"killing a worker that did not exit "
                       f"{self.timings.stop_wait:g} s after it was told to")
            self.actions.append(Kill(wid))

    def _note(self, level: int, text: str) -> None:
        self.actions.append(Note(level, text))

    def _refill(self, now: float) -> int:
        live = sum(1 for w in self.workers.values() if not w.retiring)
        started = 0
        for _ in range(self._live_target() - live):
            self._spawn(now)
            started += 1
        return started

    def _refill_soon(self, now: float) -> None:
        """Start replacements a moment later: a new process's fork and exec would
        compete for the CPU with what matters right after a kill (the spare taking
        over, the task's result); the new process needs ~100 ms to boot anyway."""
        if self._refill_at is None:
            self._refill_at = now + self.timings.replace_delay
            heapq.heappush(self._heap, (self._refill_at, next(self._counter), CALLBACK,
                                        self._refill_timer, 0))

    def _refill_timer(self, now: float) -> None:
        self._refill_at = None
        started = self._refill(now)
        if started:
            self._note(logging.INFO, f"starting {started} replacement worker process"
                       f"{'es' if started > 1 else ''}")

    def _requeue(self, w: Worker, now: float) -> None:
        """Runs prefetched on a dead worker go back to the front of the queue, in order
        (but those being cancelled: they end so)."""
        rest = [r for r in w.inflight if not r.state.final]
        w.inflight.clear()
        for run in reversed(rest):
            run.worker = None
            if run.cancel_pending is not None:
                self._end_cancelled(run, now)
            else:
                self.pending.appendleft(run)

    def _release(self, w: Worker, now: float) -> Run | None:
        """Take a worker out of the pool: its head run is returned, the runs it was sent
        ahead of time go back to the front of the queue, in order."""
        self.workers.pop(w.wid, None)
        if not w.ready:
            w.gen += 1  # its BOOT timer is stale
            self._stale += 1
        if not w.inflight:
            return None
        self.busy -= 1
        head = w.inflight.popleft()
        head.worker = None
        self._requeue(w, now)
        return head

    def _end_cancelled(self, run: Run, now: float) -> None:
        """A cancel that waited for its worker's answer: the run never began, or its
        process is gone (then the driver resolves it once the process has died)."""
        state, err = run.cancel_pending, run.cancel_error
        if state is None or run.state.final:
            return
        self._invalidate(run)
        run.cancel_pending = None
        run.cancel_error = None
        self._end(run, state, now, ok=False, value=err)

    def _unstart(self, run: Run) -> None:
        """A run presumed started (the head) that its worker never began: PENDING again."""
        if run.state is _S.RUNNING:
            self._invalidate(run)
            run.attempts -= 1
            self._set(run, _S.PENDING)

    def _kill_worker(self, w: Worker, now: float, why: str = "",
                     level: int = logging.INFO) -> None:
        head = w.inflight[0] if w.inflight else None
        # Cancelled runs queued behind the head may have begun in the worker (it finished
        # the head before the core heard): they resolve once the process is gone too.
        also = tuple(r for r in list(w.inflight)[1:] if r.cancel_pending is not None)
        self.actions.append(Kill(w.wid, head, also))
        if why:
            self._note(level, f"killing worker process {w.pid}: {why}")
        self._release(w, now)
        self.replaced += 1
        self._refill_soon(now)

    def _expire(self, run: Run, now: float, reason: str) -> None:
        w = run.worker
        if w is None or run.state is not _S.RUNNING:
            return
        run.hb_reason = reason
        grace = run.policy.grace
        if grace:
            self._invalidate(run)
            self._note(logging.WARNING, f"task {self._id(run.seq)} {reason}: TaskTimeout "
                       f"raised in it; its worker is killed if it is still there in {grace:g} s")
            self.actions.append(Interrupt(w.wid, run.seq))
            self.push_timer(now + grace, GRACE, run, run.gen)
            return
        self._kill_worker(w, now, f"task {self._id(run.seq)} {reason}", logging.WARNING)
        self._finish_timeout(run, now)

    def _finish_timeout(self, run: Run, now: float) -> None:
        self._invalidate(run)
        err = TaskTimeout(f"task {run.hb_reason}")
        if not self._maybe_retry(run, now, err):
            self._end(run, _S.TIMED_OUT, now, ok=False, value=err)

    def _maybe_retry(self, run: Run, now: float, error: BaseException) -> bool:
        p = run.policy
        if run.attempts > p.retries or self.closing:
            return False
        if p.retry_on is not None and not isinstance(error, p.retry_on):
            return False
        run.not_before = None
        # The doubling stops at 2**64: a float cannot hold 2**1024 (retries=sys.maxsize).
        delay = min(p.retry_delay * (2.0 ** min(run.attempts - 1, 64)), MAX_RETRY_DELAY)
        self._note(logging.INFO, f"task {self._id(run.seq)}: attempt {run.attempts} failed "
                   f"({type(error).__name__}: {error}); retry {run.attempts} of {p.retries}"
                   f" in {delay:g} s")
        if delay > 0:
            self._schedule(run, now + delay)
        else:
            self._set(run, _S.PENDING)
            self.pending.append(run)
        return True

    def _end(self, run: Run, state: TaskState, now: float, *, ok: bool, value: Any,
             tb: str | None = None) -> None:
        if run.state is _S.SCHEDULED:
            self._invalidate(run)
        self._set(run, state)
        more = run.more
        if more is None:
            more = run.more = RunMore()
        more.finished_at = now
        more.value_ok = ok
        more.value = value
        more.tb = tb
        self.actions.append(Resolve(run))
        if more.wall_due is not None:
            more.wall_due = None
            self.wall_anchored.pop(("run", run.seq), None)
        if run.policy.key is not None:
            self._stream_ended(run, now)
        if more.job is not None:
            self.jobs.run_ended(run, now)

    def _after_head_change(self, w: Worker, now: float) -> None:
        if w.inflight:
            if w.ready:
                self._start_head(w, now)
            return
        self.busy -= 1
        limit = self.max_tasks_per_worker
        if limit is not None and w.done_count >= limit and not w.retiring:
            self._stop(w, now)
            self.workers.pop(w.wid, None)
            self._refill_soon(now)
        # At shutdown an idle worker is stopped by the dispatch that follows every
        # event, once the event's outcome (which may make a queued run due) is known.

    # ---------------------------------------------------------------- queries
    def stats(self) -> dict[str, Any]:
        return {
            "by_state": {s.value: n for s, n in self.by_state.items()},
            "workers_alive": sum(1 for w in self.workers.values() if not w.retiring),
            "workers_busy": self.busy,
            "workers_replaced": self.replaced,
            "workers_recycled": self.recycled,
            "pending": len(self.pending),
            "scheduled": self.scheduled,
            "jobs_active": sum(1 for j in self.jobs.jobs.values() if j.state.value == "ACTIVE"),
        }


def _describe_exit(exitcode: int | None, pid: int | None, idle: bool = False,
                   starting: bool = False) -> str:
    import signal

    who = f"worker process {pid}" if pid else "worker process"
    if starting:
        if exitcode is not None and exitcode < 0:
            try:
                name = signal.Signals(-exitcode).name
            except ValueError:
                name = f"signal {-exitcode}"
            return f"{who} was killed by {name} while starting (exit code {exitcode})"
        return f"{who} exited with code {exitcode} while starting"
    if idle:
        who = "idle " + who
    if exitcode is None:
        return f"{who} died (exit status unknown)"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"{who} was killed by {name} (exit code {exitcode})"
    if idle:
        return f"{who} exited with code {exitcode}"
    return f"{who} exited with code {exitcode} while running the task"
