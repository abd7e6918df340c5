"""Heartbeats, grace, retries and last-task-wins keys, on real worker processes."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from taskwarden import (
    Supervisor,
    TaskState,
    TaskSuperseded,
    TaskTimeout,
    current_task,
    heartbeat,
)

import _tasks as T
from _live import WAIT, gone, read_pid, wait_for


def test_a_task_that_stops_beating_is_killed_and_the_error_says_so(sup: Supervisor) -> None:
    task = sup.schedule(T.beat_then_go_silent, args=(5, 0.05), heartbeat=0.5)
    with pytest.raises(TaskTimeout, match="heartbeat") as info:
        task.result(timeout=WAIT)
    assert "silent for" in str(info.value)
    assert task.state is TaskState.TIMED_OUT and task.progress == 4
    assert task.worker_pid is not None and gone(task.worker_pid)


def test_a_slow_task_that_keeps_beating_is_left_alone(sup: Supervisor) -> None:
    task = sup.schedule(T.beat_steadily, args=(1.0, 0.05), heartbeat=0.3)
    assert task.result(timeout=WAIT) == "done"
    assert isinstance(task.progress, int) and task.progress > 5


def test_heartbeat_and_current_task_outside_a_worker_are_harmless() -> None:
    heartbeat()
    heartbeat(3)
    assert current_task() is None


def test_grace_lets_finally_blocks_run_before_the_kill(sup: Supervisor, tmp_path: Path) -> None:
    marker = tmp_path / "finally"
    task = sup.schedule(T.sleep_with_finally, args=(str(marker), 60), timeout=0.3, grace=5)
    with pytest.raises(TaskTimeout):
        task.result(timeout=WAIT)
    assert marker.read_text() == "finally ran"
    assert task.state is TaskState.TIMED_OUT


def test_without_grace_the_kill_is_immediate(sup: Supervisor, tmp_path: Path) -> None:
    marker = tmp_path / "finally"
    task = sup.schedule(T.sleep_with_finally, args=(str(marker), 60), timeout=0.3)
    with pytest.raises(TaskTimeout):
        task.result(timeout=WAIT)
    assert not marker.exists()


def test_current_task_tells_a_task_its_id_attempt_and_deadline(sup: Supervisor) -> None:
    task = sup.schedule(T.whoami, timeout=30)
    task_id, attempt, deadline, previous = task.result(timeout=WAIT)
    assert task_id == task.id and attempt == 1 and previous is None
    assert deadline is not None and time.time() < deadline <= time.time() + 31


def test_retries_rerun_and_a_retried_task_sees_its_previous_progress(sup: Supervisor) -> None:
    task = sup.schedule(T.fail_until_attempt, args=(3,), retries=3, retry_on=(ConnectionError,))
    assert task.result(timeout=WAIT) == 3
    assert task.attempts == 3 and task.state is TaskState.COMPLETED


def test_retries_give_up_with_the_last_error(sup: Supervisor) -> None:
    task = sup.schedule(T.fail_until_attempt, args=(9,), retries=1)
    with pytest.raises(ConnectionError, match="attempt 2 failed"):
        task.result(timeout=WAIT)
    assert task.attempts == 2


def test_a_newer_task_with_the_same_key_kills_the_running_one(
    sup: Supervisor, tmp_path: Path
) -> None:
    marker = tmp_path / "pid"
    old = sup.schedule(T.touch_then_sleep, args=(str(marker), 60), key="render")
    old_pid = read_pid(marker)
    wait_for(lambda: old.state == "RUNNING")
    new = sup.schedule(T.square, args=(9,), key="render")
    assert new.result(timeout=WAIT) == 81
    with pytest.raises(TaskSuperseded) as info:
        old.result(timeout=WAIT)
    assert info.value.winner_id == new.id
    assert old.state is TaskState.SUPERSEDED and old.cancelled()
    assert gone(old_pid)


def test_drop_returns_the_live_task_instead_of_starting_another(sup: Supervisor) -> None:
    first = sup.schedule(T.sleep, args=(0.3,), key="once", on_conflict="drop")
    again = sup.schedule(T.sleep, args=(0.3,), key="once", on_conflict="drop")
    assert again is first
    assert first.result(timeout=WAIT) == 0.3


def test_queue_runs_tasks_of_a_key_one_at_a_time(sup: Supervisor, tmp_path: Path) -> None:
    tasks = [
        sup.schedule(T.sleep, args=(0.1,), key="q", on_conflict="queue") for _ in range(3)
    ]
    for t in tasks:
        t.result(timeout=WAIT)
    spans = [(t.started_at, t.finished_at) for t in tasks]
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end is not None and start is not None and start >= end - 0.01


def test_async_def_tasks_run_to_completion_in_the_worker(sup: Supervisor) -> None:
    assert sup.submit(T.async_add, 2, 3).result(timeout=WAIT) == 5


def test_a_worker_that_grew_past_its_memory_limit_is_recycled() -> None:
    with Supervisor(workers=1, max_memory_per_worker=200 << 20) as s:
        first = s.submit(T.hoard, 300).result(timeout=WAIT)
        later = [s.submit(T.pid).result(timeout=WAIT) for _ in range(3)]
        assert first not in later  # the grown worker left; the others never ran there
        assert s.stats()["workers_recycled"] == 1


def test_shutdown_runs_what_is_due_even_as_every_worker_retires() -> None:
    # One task per worker process: each run needs a fresh worker, shutdown included.
    with Supervisor(workers=1, max_tasks_per_worker=1) as s:
        tasks = [s.submit(T.pid) for _ in range(4)]
    pids = [t.result(timeout=0) for t in tasks]
    assert len(set(pids)) == 4


def test_shutdown_runs_a_queued_task_of_a_key_after_the_one_ahead() -> None:
    with Supervisor(workers=1) as s:
        first = s.schedule(T.sleep, args=(0.2,), key="k", on_conflict="queue")
        second = s.schedule(T.square, args=(3,), key="k", on_conflict="queue")
    assert first.result(timeout=0) == 0.2 and second.result(timeout=0) == 9
