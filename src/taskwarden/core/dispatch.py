"""Dispatch: which worker runs what, and when a run queued on a busy worker is taken back.

Assignment: at most ``workers`` processes run tasks at once; a pending run goes to an
idle worker, ready ones first. Prefetch: a busy, ready worker may be given a few more
runs ahead of time so that it never waits for a round trip between trivial tasks; the
head of its queue is the run it executes, the rest are still PENDING. Take-back
(steal): once a head has run ``Timings.steal_after``, an idle worker may take back half
of what waits behind it (the busy worker is told to skip those runs; each comes back
to the queue when the worker confirms).

``Dispatcher`` is a part of ``engine.Core`` (its base class): the core calls
``_dispatch(now)`` once at the end of every input (``Core.handle``), when the input's
outcome is known; the dispatcher calls back into the core for what is not its own (a
run's states and endings, the timer heap, starting and stopping worker processes).
"""

from __future__ import annotations

import functools
from collections import deque
from typing import TYPE_CHECKING, Any

from .._errors import TaskTimeout, WorkerCrashed
from .._states import TaskState
from .model import Action, Run, RunMore, Send, Skip, Worker
from .timers import BEAT, CALLBACK, DEADLINE, SKIP_WAIT, Timings

_S = TaskState


class Dispatcher:
    """Assignment, prefetch and take-back of ``engine.Core`` (see the module docstring)."""

    # The core's state that dispatch reads and writes (set up by ``Core.__init__``).
    n_workers: int
    prefetch: int
    max_tasks_per_worker: int | None
    timings: Timings
    actions: list[Action]
    pending: deque[Run]
    workers: dict[int, Worker]
    busy: int  # workers with a non-empty inflight queue
    closing: bool
    broken: str | None
    _steal_at: float | None  # a take-back check is due then
    _prefetched: bool  # runs may sit queued behind a worker's head

    if TYPE_CHECKING:  # what the core provides (engine.Core)
        def _set(self, run: Run, new: TaskState) -> None: ...

        def _end(self, run: Run, state: TaskState, now: float, *, ok: bool, value: Any,
                 tb: str | None = None) -> None: ...

        def push_timer(self, when: float, kind: int, obj: Any, gen: int) -> None: ...

        def _refill(self, now: float) -> int: ...

        def _closing_dispatch(self, now: float) -> None: ...

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, now: float) -> None:
        """Hand out what is pending, or take back what waits behind a long head; at
        shutdown, let idle workers go."""
        pending = self.pending
        if self.broken is not None:
            # The pool cannot start workers: whatever comes due fails, nothing hangs.
            while pending:
                run = pending.popleft()
                self._end(run, _S.FAILED, now, ok=False, value=WorkerCrashed(self.broken))
        if pending:
            self._assign(now)
        if self.closing:
            self._closing_dispatch(now)
        elif not pending and self.busy < self.n_workers and self.prefetch > 1:
            self._steal(now)

    def _can_take(self, w: Worker) -> bool:
        if w.retiring:
            return False
        limit = self.max_tasks_per_worker
        return limit is None or w.done_count + len(w.inflight) < limit

    def _assign(self, now: float) -> None:
        """Hand pending runs to workers: idle ones first, then ahead of time."""
        pending = self.pending
        sends: dict[int, list[Run]] = {}
        # 1. Idle workers, ready ones first, while a slot is free.
        if self.busy < self.n_workers:
            idle = [w for w in self.workers.values() if not w.inflight and self._can_take(w)]
            idle.sort(key=lambda w: not w.ready)
            for w in idle:
                if not pending or self.busy >= self.n_workers:
                    break
                run = pending.popleft()
                more = run.more
                if more is None:
                    more = run.more = RunMore()
                more.worker = w
                w.inflight.append(run)
                self.busy += 1
                sends[w.wid] = [run]
                if w.ready:
                    self._start_head(w, now)
                elif run.policy.timeout is not None:
                    # Its time limit covers the wait for a worker still starting.
                    wait = max(run.policy.timeout, self.timings.boot_allowance)
                    self.push_timer(now + wait, CALLBACK,
                                    functools.partial(self._boot_wait_over, run, w, now), 0)
        # 2. Prefetch onto busy, ready workers so they never wait for a round trip.
        #    Refill only below half the depth, so that sends go out in batches.
        if pending and self.prefetch > 1:
            low = self.prefetch // 2
            for w in self.workers.values():
                if not pending:
                    break
                if (
                    len(w.inflight) > low
                    or not w.inflight
                    or not w.ready
                    or w.inflight[0].policy.grace
                    or now >= (w.inflight[0].started_at or now) + self.timings.steal_after
                ):
                    continue
                while pending and len(w.inflight) < self.prefetch and self._can_take(w):
                    run = pending[0]
                    if run.policy.grace:
                        break
                    pending.popleft()
                    more = run.more
                    if more is None:
                        more = run.more = RunMore()
                    more.worker = w
                    w.inflight.append(run)
                    sends.setdefault(w.wid, []).append(run)
                    self._prefetched = True
        for wid, runs in sends.items():
            self.actions.append(Send(wid, runs))

    def _start_head(self, w: Worker, now: float) -> None:
        """The head of a ready worker's queue begins: RUNNING, its time limits armed."""
        run = w.inflight[0]
        more = run.more  # its rarer fields (see model.Run), read once
        if (more is not None and more.cancel_pending is not None) or run.state.final:
            # The worker is told to skip it; if it runs it anyway, kill it.
            self.push_timer(now + self.timings.skip_ack_wait, SKIP_WAIT, run, run.gen)
            return
        self._set(run, _S.RUNNING)
        if more is None:
            more = run.more = RunMore()
        else:
            if more.not_before is not None and more.not_before > now:
                now = more.not_before  # the worker waits until then: limits count from there
            more.hb_reason = None
        more.attempts += 1
        more.started_at = now
        more.worker_pid = w.pid
        p = run.policy
        if p.timeout is not None:
            run.deadline = now + p.timeout
            self.push_timer(now + p.timeout, DEADLINE, run, more.gen)
        if p.heartbeat is not None:
            run.last_beat = now  # read by the BEAT timer only
            self.push_timer(now + p.heartbeat, BEAT, run, more.gen)

    def _boot_wait_over(self, run: Run, w: Worker, since: float, now: float) -> None:
        """A run's time limit ran out while its worker was still starting: it ends
        TIMED_OUT, never started; the worker is told to skip it and starts on."""
        if run.worker is not w or w.ready or run.state is not _S.PENDING:
            return
        run.cancel_pending = _S.TIMED_OUT
        self.actions.append(Skip(w.wid, run.seq))
        waited = now - since
        self._end(run, _S.TIMED_OUT, now, ok=False, value=TaskTimeout(
            f"task timed out after {waited:.3g} s waiting for its worker process to start "
            f"(its initializer has not returned)"))

    # ------------------------------------------------------------------ take-back
    def _steal(self, now: float) -> None:
        """An idle worker may take back runs queued behind a long-running head."""
        if not self._prefetched or (self._steal_at is not None and now < self._steal_at):
            return  # nothing was handed out ahead of time, or a check is already due then
        if not any(not w.inflight and self._can_take(w) for w in self.workers.values()):
            return
        retry_at: float | None = None
        any_queued = False
        for victim in self.workers.values():
            queued = [r for r in list(victim.inflight)[1:]
                      if not r.stealing and r.cancel_pending is None and not r.state.final]
            if not queued:
                continue
            any_queued = True
            head = victim.inflight[0]
            started = head.started_at if head.started_at is not None else now
            when = started + self.timings.steal_after
            if now < when:
                retry_at = when if retry_at is None else min(retry_at, when)
                continue
            for run in queued[len(queued) // 2:]:
                run.stealing = True
                self.actions.append(Skip(victim.wid, run.seq))
        self._prefetched = any_queued
        if retry_at is not None and (self._steal_at is None or retry_at < self._steal_at):
            self._steal_at = retry_at
            self.push_timer(retry_at, CALLBACK, self._steal_timer, 0)

    def _steal_timer(self, now: float) -> None:
        # Fired by ``Core.advance``, whose input ends with the dispatch that looks again.
        self._steal_at = None
