"""Review of the seeds change (a plain ``schedule()`` task kept as a START key and a
payload until it must be a run): what it broke, each pinned by a test that failed on it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from taskwarden import Supervisor, TaskCancelled, TaskState

import _tasks as T
from _live import WAIT, FakeClock, break_the_loop, supervisor_on, wait_for


# ---------------------------------------------------------------- the call
@pytest.mark.parametrize(
    "args",
    [None, 0, False, np.array([0]), np.array([1, 2])],
    ids=["None", "zero", "False", "numpy-one", "numpy-two"],
)
def test_schedule_reads_args_as_an_iterable_on_the_fast_path_too(
        sup: Supervisor, args: Any) -> None:
    """``args`` is an iterable made a tuple, whatever its truth value: a plain delay
    (the seeds' fast path) must not take a falsy one for "no arguments" and reuse the
    argument-less call's payload, nor ask a numpy array for its truth value."""
    assert sup.schedule(T.pid, delay=0.01).result(timeout=WAIT) > 0  # its call is cached
    # T.pid takes no argument: a non-iterable fails as not iterable, an array's item
    # fails to bind; either way at the call, as with a policy keyword (no seed).
    for kw in ({}, {"timeout": 30}):
        with pytest.raises(TypeError):
            sup.schedule(T.pid, args=args, delay=0.05, **kw)
    assert sup.stats()["scheduled"] == 0


def test_an_array_as_args_is_the_call_with_its_items(sup: Supervisor) -> None:
    """An array as ``args`` is the call with its items, never the argument-less call nor
    an error about the array's truth value."""
    assert sup.schedule(T.add, args=np.array([0]), delay=0.01).result(timeout=WAIT) == 0
    assert sup.schedule(T.square, args=np.array([3]), delay=0.01).result(timeout=WAIT) == 9
    assert sup.schedule(T.add, args=np.array([2, 3]), delay=0.01).result(timeout=WAIT) == 5


class _SlowToPickle:
    """An argument whose pickling takes ``seconds`` of the fake clock (once); it arrives
    in the worker as 0."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.clock, self.seconds = clock, seconds

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        seconds, self.seconds = self.seconds, 0.0
        self.clock.advance(seconds)
        return (int, (0,))


@pytest.mark.parametrize("policy", [{}, {"timeout": 600}], ids=["seed", "policy"])
def test_a_delay_counts_from_the_call_not_from_the_end_of_its_pickling(
        policy: dict[str, Any]) -> None:
    """``delay`` is measured from the call (what a watchdog's caller counts on): the
    time its arguments take to pickle is part of it, with or without a policy."""
    clock = FakeClock()
    s = supervisor_on(clock, workers=1)
    try:
        # Pickled in 10 s (of the loop's clock): due 5 s after the call, it is late
        # already, and starts without the clock moving again.
        task = s.schedule(T.add, args=(_SlowToPickle(clock, 10.0), 7), delay=5, **policy)
        assert task.result(timeout=WAIT) == 7
    finally:
        s.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- the loop's end
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_after_the_loop_dies_a_cancelled_seed_stays_cancelled_and_cannot_be_moved() -> None:
    """The loop's end cancels every unfinished task, seeds too ("the state says what the
    future says"). Moving one afterwards moves nothing: kick(), postpone() and
    reschedule() answer False, and its state stays CANCELLED (no run is made of its
    seed, to show SCHEDULED beside a cancelled future)."""
    s = Supervisor(workers=1)
    try:
        seed = s.schedule(T.square, args=(3,), delay=600)
        assert s.submit(T.square, 2).result(timeout=WAIT) == 4
        break_the_loop(s)
        with pytest.raises(TaskCancelled):
            seed.result(timeout=WAIT)
        wait_for(lambda: not s._thread.is_alive())
        assert seed.state is TaskState.CANCELLED
        assert seed.kick() is False
        assert seed.postpone(5) is False
        assert seed.reschedule(delay=5) is False
        assert seed.state is TaskState.CANCELLED and seed.done()
        with pytest.raises(ValueError):
            seed.postpone(-1)  # bad input still fails at the call
    finally:
        s.shutdown(wait=True)
