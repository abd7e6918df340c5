"""Seeds: a ``schedule()`` task under the Supervisor's policy, due later on the monotonic
clock, has no core Run until it comes due or a command names it (core.model.Seed). The
core keeps its START key and payload; its Task gets the Run once it is made. What a user
sees must not change: the tests below check that it does not, on the pure core and live."""

from __future__ import annotations

import inspect
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from taskwarden import Supervisor, Task, TaskCancelled, TaskState
from taskwarden._policy import Policy
from taskwarden.core import engine as E
from taskwarden.driver._forkmark import _PidMark, fork_mark

import _tasks as T
from _harness import Harness
from _live import WAIT, FakeClock, supervisor_on, wait_for


# ---------------------------------------------------------------- the core
def _sow(h: Harness, *dues: float) -> list[int]:
    seqs = [next(h._seqs) for _ in dues]
    h.core.handle(E.AddMany([(h.now + d, s, b"call") for d, s in zip(dues, seqs, strict=True)]),
                  h.now)
    return seqs


def test_seeds_and_runs_due_together_start_in_the_order_they_were_made() -> None:
    h = Harness(workers=1, prefetch=1)
    first = _sow(h, 5.0)
    run = E.Run(next(h._seqs), b"", Policy(), h.now + 5.0)
    later = _sow(h, 5.0, 5.0)
    h.core.handle(E.AddMany([run]), h.now)
    assert h.core.by_state[TaskState.SCHEDULED] == 4 and h.core.scheduled == 4
    assert h.core.made == []  # nothing made yet: three seeds and a run
    h.now += 5.0
    h.core.handle(E.TICK, h.now)
    made = h.core.made
    assert [r.seq for r in made] == first + later
    order = [r.seq for r in h.core.pending]
    for w in h.core.workers.values():
        order[:0] = [r.seq for r in w.inflight]
    assert sorted(order) == order == sorted(first + later + [run.seq])
    assert all(r.policy is h.core.default_policy for r in made)


def test_a_seed_due_already_is_made_a_run_at_once_and_queued() -> None:
    h = Harness(workers=1)
    [seq] = _sow(h, -1.0)
    [run] = h.core.made
    assert run.seq == seq and run.state is TaskState.RUNNING  # handed to the idle worker
    assert [r.seq for w in h.core.workers.values() for r in w.inflight] == [seq]
    assert seq not in h.core._seeds and h.core.scheduled == 0
    assert h.core.by_state[TaskState.RUNNING] == 1


def test_a_command_naming_a_seed_makes_its_run_and_leaves_no_live_key() -> None:
    h = Harness(workers=1)
    a, b, c = _sow(h, 60.0, 60.0, 60.0)
    cancel = E.Cancel(None, seq=a)
    h.core.handle(cancel, h.now)
    assert cancel.answer is True
    assert [r.seq for r in h.core.made] == [a] and h.core.made[0].state is TaskState.CANCELLED
    h.core.made.clear()
    again = E.Cancel(None, seq=a)  # no seed any more: the driver names its run from now on
    h.core.handle(again, h.now)
    assert again.answer is False
    move = E.Reschedule(None, h.now + 1.0, seq=b)
    h.core.handle(move, h.now)
    assert move.answer is True
    [moved] = h.core.made
    h.core.made.clear()
    assert moved.state is TaskState.SCHEDULED and moved.due == h.now + 1.0
    assert h.core.by_state[TaskState.SCHEDULED] == 2 == h.core.scheduled  # b (a run) and c
    assert h.core.next_deadline() == pytest.approx(h.now + 1.0 - E.LEAD)
    h.now += 1.0
    h.core.handle(E.TICK, h.now)
    assert moved.state in (TaskState.PENDING, TaskState.RUNNING)
    assert h.core.made == [] and c in h.core._seeds  # c is due in a minute


def test_cancelling_many_seeds_keeps_their_keys_bounded() -> None:
    h = Harness(workers=1)
    seqs = _sow(h, *(3600.0 + i for i in range(5000)))
    for seq in seqs:
        h.core.handle(E.Cancel(None, seq=seq), h.now)
        h.core.made.clear()
    assert h.core.next_deadline() is None
    assert len(h.core._seed_keys) < 5000 and not h.core._seeds
    assert h.core.by_state[TaskState.CANCELLED] == 5000


def test_shutdown_cancels_seeds_in_bulk_without_making_their_runs() -> None:
    h = Harness(workers=1)
    seqs = _sow(h, *(10.0 + i for i in range(100)))
    acts = h.core.handle(E.Close(False), h.now)
    [bulk] = [a for a in acts if isinstance(a, E.Cancelled)]
    assert sorted(bulk.seqs) == seqs and bulk.runs == []
    assert h.core.made == [] and not h.core._seeds and not h.core._seed_keys
    assert h.core.by_state[TaskState.CANCELLED] == 100 and h.core.scheduled == 0


def test_seeds_on_a_broken_pool_fail_at_once() -> None:
    h = Harness(workers=1)
    h.core.broken = "the pool is broken: test"
    [seq] = _sow(h, 60.0)
    [run] = h.core.made
    assert run.seq == seq and run.state is TaskState.FAILED


# ---------------------------------------------------------------- live
def _seeds_of(sup: Supervisor) -> dict[int, bytes]:
    seeds = sup._core._seeds
    return sup._ask(lambda: dict(seeds))  # read in the loop, which owns the core


def test_plain_scheduled_tasks_wait_as_seeds_and_run_once_in_due_order(
        sup: Supervisor) -> None:
    t0 = time.time()
    tasks = [sup.schedule(T.stamp, delay=0.3 + 0.02 * (i % 5)) for i in range(15)]
    now = sup.submit(T.square, 5)
    assert all(t.state is TaskState.SCHEDULED and t._run is None for t in tasks)
    assert set(_seeds_of(sup)) == {t._seq for t in tasks}
    assert sup.stats()["scheduled"] == 15
    assert sup.get(tasks[3].id) is tasks[3] and tasks[3].key is None
    assert now.result(timeout=WAIT) == 25
    stamps = [t.result(timeout=WAIT) for t in tasks]
    for t, stamp in zip(tasks, stamps, strict=True):
        assert t.state is TaskState.COMPLETED and t.attempts == 1 and t._run is not None
        assert stamp >= t0 + 0.29 and t.started_at is not None
    assert _seeds_of(sup) == {} and sup.stats()["scheduled"] == 0


def test_a_cancelled_seed_never_runs_and_its_call_is_let_go(sup: Supervisor) -> None:
    big = b"x" * 2_000_000
    task = sup.schedule(len, args=(big,), delay=0.3)
    other = sup.schedule(len, args=(b"abc",), delay=0.3)
    assert task._seq in _seeds_of(sup)
    assert task.cancel() is True and task.state is TaskState.CANCELLED
    with pytest.raises(TaskCancelled):
        task.result(timeout=WAIT)
    assert task._seq not in _seeds_of(sup)
    assert task._run is not None and task._run.payload == b""  # the call is let go
    assert task.cancel() is False and task.kick() is False
    assert other.result(timeout=WAIT) == 3
    assert task.state is TaskState.CANCELLED and task.attempts == 0


def test_kick_and_reschedule_of_a_seed_move_it_live(sup: Supervisor) -> None:
    kicked = sup.schedule(T.stamp, delay=0.4)
    moved = sup.schedule(T.stamp, delay=60)
    t0 = time.time()
    assert kicked.kick() is True  # its start is 0.4 s from now again
    assert moved.reschedule(delay=0.05) is True
    assert moved.result(timeout=WAIT) < t0 + 0.4
    assert kicked.result(timeout=WAIT) >= t0 + 0.39
    assert kicked.kick() is False and moved.reschedule(delay=1) is False


def test_shutdown_resolves_a_thousand_seeds_each_with_its_own_error() -> None:
    s = Supervisor(workers=1)
    tasks = [s.schedule(T.stamp, delay=600) for _ in range(1000)]
    waiter = tasks[10]
    seen = threading.Event()
    waiter.add_done_callback(lambda _t: seen.set())
    s.shutdown(wait=True)
    assert seen.wait(WAIT)
    assert all(t.state is TaskState.CANCELLED and t.done() for t in tasks)
    errors = []
    for t in (tasks[0], tasks[10], tasks[-1]):
        with pytest.raises(TaskCancelled) as raised:
            t.result()
        errors.append(raised.value)
    assert len({id(e) for e in errors}) == 3
    assert s.stats()["by_state"]["CANCELLED"] == 1000 and s.stats()["scheduled"] == 0


def test_a_seed_whose_time_passes_before_the_loop_takes_it_runs_at_once() -> None:
    clock = FakeClock()  # (its time passes while the loop is held, with no sleep)
    sup = supervisor_on(clock, workers=1)
    try:
        sup.submit(T.square, 1).result(timeout=WAIT)
        hold, held = threading.Event(), threading.Event()

        def block() -> None:  # the loop is busy: the new task waits in its queue
            held.set()
            hold.wait(WAIT)

        sup._post(block)
        assert held.wait(WAIT)
        task = sup.schedule(T.stamp, delay=5)
        clock.advance(10)  # its time passes while the loop is held; the clock stops there
        hold.set()
        assert task.result(timeout=WAIT) > 0 and task._run is not None
        wait_for(lambda: sup.stats()["by_state"]["COMPLETED"] == 2)
    finally:
        sup.shutdown(wait=True, cancel_futures=True)


def test_seeds_due_before_the_loop_takes_them_run_at_once_on_the_real_clock(
        sup: Supervisor) -> None:
    # Delays too small to be waited for (5e-324 adds nothing to the time it was read at):
    # each run is made as the loop takes its seed, and its state is published from there.
    delays: list[Any] = [1e-9, 5e-324, 1e-6, np.float64(1e-7), Fraction(1, 10**9)] * 4
    tasks = [sup.schedule(T.square, args=(i,), delay=d) for i, d in enumerate(delays)]
    assert [t.result(timeout=WAIT) for t in tasks] == [i * i for i in range(len(delays))]
    for t in tasks:
        assert t.state is TaskState.COMPLETED and t.attempts == 1 and t._run is not None
    wait_for(lambda: sup.stats()["by_state"]["COMPLETED"] == len(delays))
    assert sup.stats()["scheduled"] == 0 and _seeds_of(sup) == {}


# ---------------------------------------------------------------- the call
def test_schedule_shows_and_checks_every_keyword_by_name(sup: Supervisor) -> None:
    params = inspect.signature(sup.schedule).parameters
    for name in ("timeout", "heartbeat", "grace", "retries", "retry_delay", "retry_on", "key",
                 "on_conflict", "debounce", "overlap", "anchor", "max_runs", "until"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    with pytest.raises(TypeError, match="unexpected keyword argument 'timout'"):
        sup.schedule(T.stamp, delay=1, timout=3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="'retires'"):
        sup.schedule(T.stamp, retires=2, timeout=1)  # type: ignore[call-overload]
    task = sup.schedule(T.square, args=(3,), delay=0.01, timeout=5, retries=1)
    assert task.result(timeout=WAIT) == 9 and task._run is not None  # a policy: no seed
    for bad in (float("nan"), -1, True):
        with pytest.raises((ValueError, TypeError)):
            sup.schedule(T.stamp, delay=bad)
    with pytest.raises(TypeError, match="name"):
        sup.schedule(T.stamp, delay=1, name=3)  # type: ignore[call-overload]
    assert sup.stats()["scheduled"] == 0


# ---------------------------------------------------------------- fork mark
def _in_a_fork(child: Callable[[], bytes]) -> bytes:
    """What ``child()`` says in a child made by os.fork() (read back through a pipe)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(w, child())
        finally:
            os._exit(0)
    os.close(w)
    try:
        return os.read(r, 64)
    finally:
        os.close(r)
        os.waitpid(pid, 0)


@pytest.mark.parametrize("make", [fork_mark, _PidMark], ids=["page", "pid"])
def test_a_fork_mark_reads_zero_in_a_forked_child_only(make: Any) -> None:
    mark = make()
    assert mark[0]
    seen = _in_a_fork(lambda: bytes([mark[0], make()[0]]))
    assert seen == b"\x00\x01"  # the parent's mark is zero there; a child's own is not
    assert mark[0]


def test_a_python_fork_is_told_even_where_the_mark_is_not_honoured() -> None:
    # A sandbox may take MADV_WIPEONFORK without honouring it: the count of Python's forks
    # still tells a child made by os.fork().
    with Supervisor(workers=1) as s:
        s._here = b"\x01"  # a mark that reads "here" everywhere

        def child() -> bytes:
            try:
                s.schedule(T.stamp, delay=60)
            except RuntimeError:
                return b"refused"
            return b"accepted"

        assert _in_a_fork(child) == b"refused"


def test_a_seed_queued_as_the_supervisor_closes_is_withdrawn_or_stands() -> None:
    s = Supervisor(workers=1)
    s.submit(T.square, 2).result(timeout=WAIT)
    s.shutdown(wait=True)  # the loop is gone: nothing will take the queue
    task = Task(s, 10**9, None, None, 60.0)
    seed = (time.monotonic() + 60.0, 10**9, b"call")
    s._adds.extend((seed, task))
    with pytest.raises(RuntimeError, match="after shutdown"):
        s._withdraw(seed, task)  # still queued: taken back, and the call refused
    assert not s._adds
    s._withdraw(seed, task)  # taken already (by the loop, as it closed): the task stands
    with pytest.raises(RuntimeError, match="after shutdown"):
        s.schedule(T.stamp, delay=60)


def test_a_seed_queued_just_after_the_loop_ended_is_refused_not_lost() -> None:
    # The worst moment: the call found the supervisor open, and the loop ends (and takes
    # its queue for the last time) before the seed is queued.
    s = Supervisor(workers=1)
    s.submit(T.square, 2).result(timeout=WAIT)

    class Late(deque[Any]):
        def extend(self, items: Any) -> None:
            s.shutdown(wait=True)
            super().extend(items)

    s._adds = Late()
    with pytest.raises(RuntimeError, match="after shutdown"):
        s.schedule(T.stamp, delay=60)
    assert not s._adds


def _race_schedule_with_shutdown() -> None:
    s = Supervisor(workers=1)
    s.submit(T.square, 2).result(timeout=WAIT)
    got: list[Any] = []
    refused = threading.Event()

    def call() -> None:
        while not refused.is_set():
            try:
                got.append(s.schedule(T.stamp, delay=60))
            except RuntimeError:
                refused.set()

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.02)  # (let them queue some)
    s.shutdown(wait=True)
    for t in threads:
        t.join(WAIT)
    assert refused.is_set() and got
    for task in got:  # each one returned stands, and has ended (cancelled)
        assert task.done() and task.state is TaskState.CANCELLED


def test_schedule_racing_shutdown_leaves_no_task_unresolved() -> None:
    for _ in range(5):
        _race_schedule_with_shutdown()
