"""A hostile review of the Ray engine: a task that turns on the actor that runs it."""

from __future__ import annotations

import signal

import pytest

from taskwarden import Supervisor, TaskTimeout, WorkerCrashed

import _tasks as T
from _live import WAIT

pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["kill", "stop"])
def test_a_task_that_signals_its_agent_costs_no_other_outcome(
    rsup: Supervisor, sig: int
) -> None:
    task = rsup.submit(T.signal_parent_then_sleep, sig, 0.2)
    try:
        assert task.result(timeout=WAIT) == "slept"  # its agent stopped: it runs on
    except WorkerCrashed:
        assert sig == signal.SIGKILL  # its agent died: it went with it
    for _ in range(4):  # kills (on both workers): each one's outcome comes
        hung = rsup.schedule(T.sleep, args=(60,), timeout=0.2)
        with pytest.raises(TaskTimeout):
            hung.result(timeout=WAIT)
    assert [rsup.submit(T.square, i).result(timeout=WAIT) for i in range(4)] == [0, 1, 4, 9]
