"""Hardening with real worker processes: far-off times, done-callbacks, kills that take
long, asyncio cancels, forked children, decorated functions, numpy and Decimal numbers,
and what the supervisor logs."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from taskwarden import Job, Supervisor, TaskCancelled, TaskState, TaskTimeout
from taskwarden._policy import MAX_SECONDS, seconds
from taskwarden.core.timers import Timings
from taskwarden.driver._timer import make_timer
from taskwarden.pool import loky_pool

import _tasks as T
from _live import WAIT, break_the_loop, gone, read_pid, wait_for

# --------------------------------------------------- 2. huge finite times


def test_a_far_off_time_is_clamped_to_about_a_century() -> None:
    assert seconds("timeout", sys.maxsize) == MAX_SECONDS
    assert seconds("timeout", 2**64) == MAX_SECONDS
    assert seconds("timeout", float("inf")) == MAX_SECONDS
    assert seconds("timeout", 10**400) == MAX_SECONDS  # past float's range
    assert seconds("timeout", 1.5) == 1.5


def test_the_loop_timer_takes_a_far_deadline_without_firing() -> None:
    import select

    timer = make_timer()
    if timer is None:
        pytest.skip("no timerfd here")
    try:
        for deadline in (float(sys.maxsize), 2.0**64 - 1, 1e30):
            timer.arm(deadline)  # neither overflows nor wraps to "now"
            assert select.select([timer.fileno()], [], [], 0.02)[0] == []
            timer.disarm()
    finally:
        timer.close()


@pytest.mark.parametrize(
    "policy",
    [
        {"timeout": sys.maxsize},
        {"timeout": 2**64 - 1},
        {"heartbeat": sys.maxsize},
        {"timeout": sys.maxsize, "grace": sys.maxsize},
        {"retries": 1, "retry_delay": sys.maxsize},
    ],
    ids=lambda p: ",".join(p),
)
def test_a_huge_time_limit_means_no_limit_and_the_loop_lives_on(
    sup: Supervisor, policy: dict[str, Any]
) -> None:
    task = sup.schedule(T.square, args=(6,), **policy)
    assert task.result(timeout=WAIT) == 36
    assert task.state is TaskState.COMPLETED
    assert sup.submit(T.square, 7).result(timeout=WAIT) == 49


def test_a_supervisor_wide_huge_timeout_is_no_limit() -> None:
    with Supervisor(workers=1, timeout=sys.maxsize, heartbeat=sys.maxsize) as s:
        assert s.submit(T.square, 3).result(timeout=WAIT) == 9


def test_a_huge_grace_still_lets_a_timed_out_task_end(sup: Supervisor, tmp_path: Path) -> None:
    marker = tmp_path / "finally"
    task = sup.schedule(T.sleep_with_finally, args=(str(marker), 60), timeout=0.3,
                        grace=sys.maxsize)
    with pytest.raises(TaskTimeout):
        task.result(timeout=WAIT)
    assert marker.read_text() == "finally ran"
    assert sup.submit(T.square, 2).result(timeout=WAIT) == 4


@pytest.mark.parametrize("how", ["delay", "debounce", "at"])
def test_a_start_a_huge_time_away_waits_and_can_be_cancelled(sup: Supervisor, how: str) -> None:
    if how == "delay":
        task = sup.schedule(T.square, args=(2,), delay=sys.maxsize)
    elif how == "debounce":
        task = sup.schedule(T.square, args=(2,), key="k", debounce=sys.maxsize)
    else:
        task = sup.schedule(T.square, args=(2,), at=float(sys.maxsize))
    assert sup.submit(T.square, 3).result(timeout=WAIT) == 9  # the loop lives
    assert task.state is TaskState.SCHEDULED
    assert task.cancel() is True
    assert task.state is TaskState.CANCELLED


def test_a_job_a_huge_interval_apart_is_scheduled_far_ahead(sup: Supervisor) -> None:
    job = sup.schedule(T.square, args=(2,), every=sys.maxsize)
    assert isinstance(job, Job)
    assert sup.submit(T.square, 3).result(timeout=WAIT) == 9
    nxt = job.next_run_at
    assert nxt is not None and nxt.year >= 2100
    assert job.cancel() is True


# ----------------------------------------- 2. an error in the loop is contained


def test_an_error_in_the_loop_is_logged_and_the_loop_carries_on(
    sup: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="taskwarden")
    real_beat = sup._core._beat  # what handle() calls for a Beat
    calls = []

    def beat_that_breaks_once(*args: Any) -> None:
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("a bug in the core")
        real_beat(*args)

    sup._core._beat = beat_that_breaks_once  # type: ignore[method-assign]
    task = sup.schedule(T.beat_steadily, args=(0.3, 0.02), heartbeat=5)
    assert task.result(timeout=WAIT) == "done"
    assert task.state is TaskState.COMPLETED
    assert sup.submit(T.square, 5).result(timeout=WAIT) == 25
    assert any("a bug in the core" in (r.exc_text or "") and r.name == "taskwarden"
               for r in caplog.records)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_if_the_loop_dies_every_unfinished_task_says_cancelled() -> None:
    s = Supervisor(workers=1)
    try:
        running = s.submit(T.sleep, 30)
        wait_for(lambda: running.state is TaskState.RUNNING)
        break_the_loop(s)
        with pytest.raises(TaskCancelled):
            running.result(timeout=WAIT)
        assert running.state is TaskState.CANCELLED  # the state says what the future says
    finally:
        s.shutdown(wait=True)


# ------------------------------------------------------- 6. done-callbacks


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_a_callback_that_raises_anything_is_logged_and_nothing_else_happens(
    sup: Supervisor, caplog: pytest.LogCaptureFixture, error: type[BaseException]
) -> None:
    caplog.set_level(logging.ERROR, logger="taskwarden")
    ran = []

    def bad(task: Any) -> None:
        raise error("from a callback")

    tasks = [sup.submit(T.square, i) for i in range(20)]
    for t in tasks:
        t.add_done_callback(bad)
        t.add_done_callback(ran.append)  # the next callback still runs
    assert [t.result(timeout=WAIT) for t in tasks] == [i * i for i in range(20)]
    wait_for(lambda: len(ran) == 20)
    assert all(t.state is TaskState.COMPLETED for t in tasks)
    assert sup.submit(T.square, 9).result(timeout=WAIT) == 81
    logged = [r for r in caplog.records if "done-callback" in r.getMessage()]
    assert len(logged) == 20 and all(r.levelno == logging.ERROR for r in logged)


def test_a_callback_that_blocks_does_not_delay_a_watchdog(sup: Supervisor) -> None:
    release = threading.Event()
    first = sup.submit(T.square, 2)
    first.add_done_callback(lambda t: release.wait(10))
    try:
        first.result(timeout=WAIT)
        t0 = time.monotonic()
        hung = sup.schedule(T.sleep, args=(60,), timeout=0.3)
        assert isinstance(hung.exception(timeout=5), TaskTimeout)
        assert time.monotonic() - t0 < 2.0
    finally:
        release.set()


def test_a_callback_may_wait_for_another_task(sup: Supervisor) -> None:
    later = sup.submit(T.sleep, 0.3)
    got: list[Any] = []

    def wait_for_later(task: Any) -> None:
        try:
            got.append(later.result(timeout=5))
        except BaseException as exc:
            got.append(exc)

    sup.submit(T.square, 2).add_done_callback(wait_for_later)
    wait_for(lambda: got, timeout=10)
    assert got == [0.3]


def test_callbacks_run_in_order_off_the_loop_thread_and_before_shutdown_returns() -> None:
    seen: list[tuple[int, str]] = []
    with Supervisor(workers=2) as s:
        tasks = [s.submit(T.square, i) for i in range(10)]
        for i, t in enumerate(tasks):
            t.add_done_callback(lambda _t, i=i: seen.append((i, threading.current_thread().name)))
    assert sorted(i for i, _ in seen) == list(range(10))
    assert {name for _, name in seen} == {"taskwarden-callbacks"}


# ------------------------------------------- 7. the loop never waits for a kill


@pytest.fixture
def slow_kill(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], None]]:
    """Make one pid's kill take effect a second late (as a process in uninterruptible
    sleep, or one slow to tear down, is gone late): the loop must not wait for it."""
    slow: set[int] = set()
    timers: list[threading.Timer] = []
    real = loky_pool.kill_tree

    def kill_tree(pid: int) -> None:
        if pid in slow:
            timer = threading.Timer(1.0, real, (pid,))
            timer.start()
            timers.append(timer)
        else:
            real(pid)

    monkeypatch.setattr(loky_pool, "kill_tree", kill_tree)
    yield slow.add
    for timer in timers:
        timer.join()


def test_cancel_waits_for_the_process_but_the_loop_serves_others_meanwhile(
    sup: Supervisor, slow_kill: Callable[[int], None], tmp_path: Path
) -> None:
    marker = tmp_path / "pid"
    victim = sup.submit(T.touch_then_sleep, str(marker), 30)
    pid = read_pid(marker)
    slow_kill(pid)
    answer: dict[str, Any] = {}

    def cancel() -> None:
        t0 = time.monotonic()
        answer["ok"] = victim.cancel()
        answer["took"] = time.monotonic() - t0
        answer["gone"] = gone(pid)

    thread = threading.Thread(target=cancel)
    thread.start()
    wait_for(lambda: victim.state is TaskState.CANCELLED)  # the loop has killed it
    t0 = time.monotonic()
    assert sup.submit(T.square, 3).result(timeout=WAIT) == 9
    assert time.monotonic() - t0 < 0.6  # not stuck behind the dying process
    thread.join(WAIT)
    assert answer["ok"] is True and answer["gone"]
    assert answer["took"] >= 0.8  # it answered only once the process was gone


def test_cancelling_an_await_does_not_block_the_event_loop(
    slow_kill: Callable[[int], None], tmp_path: Path
) -> None:
    marker = tmp_path / "pid"

    async def main() -> tuple[float, TaskState]:
        async with Supervisor(workers=1) as s:
            task = s.submit(T.touch_then_sleep, str(marker), 30)
            loop = asyncio.get_running_loop()
            pid = await loop.run_in_executor(None, read_pid, marker)
            slow_kill(pid)
            ticks: list[float] = []

            async def tick() -> None:
                while True:
                    ticks.append(time.monotonic())
                    await asyncio.sleep(0.01)

            ticker = asyncio.ensure_future(tick())
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(task, 0.05)  # cancels the await, so the task
            await asyncio.sleep(0.5)
            ticker.cancel()
            await loop.run_in_executor(None, task.exception, WAIT)  # gone by now
            gap = max(b - a for a, b in itertools.pairwise(ticks))
            return gap, task.state

    gap, state = asyncio.run(main())
    assert state is TaskState.CANCELLED
    assert gap < 0.3


# ------------------------------------------------------- 13. kick of a queued task


def test_kick_of_a_queued_task_submitted_without_a_delay_is_false() -> None:
    # No run is ever handed to a busy worker ahead of time (steal_after=0: its head has
    # always run "too long" for that), so the new task waits in the queue: no sleep to
    # get past the moment a worker's queue is filled ahead of time.
    with Supervisor(workers=1, _timings=Timings(steal_after=0.0)) as s:
        blocker = s.submit(T.sleep, 0.5)
        wait_for(lambda: blocker.state is TaskState.RUNNING)
        queued = s.submit(T.square, 2)
        assert queued.kick() is False  # nothing moved: it waits for the worker
        assert queued.state is TaskState.PENDING
        assert queued.result(timeout=WAIT) == 4


# ------------------------------------------------------------- 8. os.fork()


def test_a_supervisor_used_in_a_forked_child_refuses_work(sup: Supervisor) -> None:
    live = sup.submit(T.sleep, 30)
    wait_for(lambda: live.state is TaskState.RUNNING)
    calls: dict[str, Callable[[], object]] = {
        "submit": lambda: sup.submit(T.square, 2),
        "schedule": lambda: sup.schedule(T.square, args=(2,), delay=1),
        "job": lambda: sup.schedule(T.square, args=(2,), every=1),
        "map": lambda: list(sup.map(T.square, [1, 2])),
        "get": lambda: sup.get(live.id),
        "stats": sup.stats,
        "tasks": sup.tasks,
        "result": lambda: live.result(timeout=1),
        "cancel": live.cancel,
    }
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            out = {}
            for name, call in calls.items():
                try:
                    call()
                    out[name] = "accepted"
                except RuntimeError as exc:
                    out[name] = "refused" if "fork" in str(exc) else f"RuntimeError: {exc}"
                except BaseException as exc:
                    out[name] = type(exc).__name__
            sup.shutdown(wait=True)  # a no-op here: the workers are the parent's
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert json.loads(data) == dict.fromkeys(calls, "refused")
    assert sup.submit(T.square, 4).result(timeout=WAIT) == 16  # the parent's is fine
    assert live.cancel() is True


# ------------------------------------------------------ 10. decorated functions


def test_a_decorator_that_injects_an_argument_is_accepted(sup: Supervisor) -> None:
    assert sup.submit(T.add_to_ten, 5).result(timeout=WAIT) == 15


def test_a_decorator_that_adds_a_keyword_is_accepted_and_still_checked(
    sup: Supervisor,
) -> None:
    assert sup.submit(T.square_or_negated, 3, negate=True).result(timeout=WAIT) == -9
    with pytest.raises(TypeError, match="arguments do not match"):
        sup.submit(T.square_or_negated, 3, 4)


def test_a_c_wrapper_is_checked_against_the_function_it_wraps(sup: Supervisor) -> None:
    assert sup.submit(T.lru_square, 4).result(timeout=WAIT) == 16
    with pytest.raises(TypeError, match="arguments do not match"):
        sup.submit(T.lru_square, 4, 5)


# ------------------------------------------- 18. numpy, Decimal, Fraction


def test_numpy_decimal_and_fraction_numbers_are_accepted() -> None:
    with Supervisor(
        workers=np.int64(2),
        max_tasks_per_worker=np.int32(50),
        max_memory_per_worker=np.int64(1 << 34),
        keep_finished=np.uint16(100),
        timeout=np.float64(30),
        heartbeat=Fraction(30),
        retries=np.int8(1),
        retry_delay=Decimal("0.01"),
    ) as s:
        assert s.submit(T.square, 3).result(timeout=WAIT) == 9
        task = s.schedule(T.square, args=(4,), delay=Decimal("0.01"), timeout=Fraction(20, 1),
                          grace=np.float32(0.5), retries=np.int64(0))
        assert task.result(timeout=WAIT) == 16
        at = s.schedule(T.square, args=(5,), at=Decimal(repr(time.time() + 0.05)))
        assert at.result(timeout=WAIT) == 25
        assert list(s.map(T.square, range(5), chunksize=np.int64(2))) == [0, 1, 4, 9, 16]
        job = s.schedule(T.square, args=(6,), every=np.float64(0.01), delay=0,
                         max_runs=np.int64(2))
        wait_for(lambda: job.state == "FINISHED" and all(t.done() for t in job.runs))
        assert [t.result() for t in job.runs] == [36, 36]
        key = s.schedule(T.square, args=(7,), key="k", debounce=np.float64(0.01))
        assert key.result(timeout=WAIT) == 49


@pytest.mark.parametrize(
    "bad", [Decimal("NaN"), Decimal("sNaN"), np.float64("nan"), -Fraction(1, 2), "1", None]
)
def test_a_number_that_is_not_a_time_is_still_refused(sup: Supervisor, bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        sup.schedule(T.square, args=(1,), delay=bad if bad is not None else object())


@pytest.mark.parametrize("bad", [np.float64(2.0), np.bool_(True), True, Decimal(2)])
def test_a_count_must_still_be_integral(bad: object) -> None:
    with pytest.raises(ValueError, match="whole number"):
        Supervisor(workers=bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ logging


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="taskwarden")
    return caplog


def logged(log: pytest.LogCaptureFixture, *words: str, level: int = logging.INFO) -> None:
    """Wait until a "taskwarden" record at ``level`` or above holds every word."""

    def found() -> bool:
        return any(r.name == "taskwarden" and r.levelno >= level
                   and all(w in r.getMessage() for w in words) for r in log.records)

    wait_for(found, timeout=10)


def test_a_timeout_kill_is_logged(sup: Supervisor, log: pytest.LogCaptureFixture) -> None:
    task = sup.schedule(T.sleep, args=(60,), timeout=0.2)
    task.exception(timeout=WAIT)
    logged(log, "killing worker process", task.id, "timed out after 0.2 s",
           level=logging.WARNING)
    logged(log, "replacement worker")


def test_a_heartbeat_kill_is_logged(sup: Supervisor, log: pytest.LogCaptureFixture) -> None:
    task = sup.schedule(T.beat_then_go_silent, args=(2, 0.02), heartbeat=0.2)
    task.exception(timeout=WAIT)
    logged(log, "killing worker process", task.id, "missed its heartbeat",
           level=logging.WARNING)


def test_a_cancel_and_a_supersede_kill_are_logged(
    sup: Supervisor, log: pytest.LogCaptureFixture
) -> None:
    first = sup.schedule(T.sleep, args=(60,), key="k")
    wait_for(lambda: first.state is TaskState.RUNNING)
    second = sup.schedule(T.sleep, args=(60,), key="k")
    logged(log, "killing worker process", first.id, "superseded")
    wait_for(lambda: second.state is TaskState.RUNNING)
    assert second.cancel() is True
    logged(log, "killing worker process", second.id, "cancelled")


@pytest.mark.parametrize(("fn", "args", "words"), [
    (T.kill_self, (signal.SIGKILL,), ("killed by SIGKILL",)),
    (T.exit_with, (3,), ("exited with code 3",)),
])
def test_a_crash_is_logged_with_its_signal_or_exit_code(
    sup: Supervisor, log: pytest.LogCaptureFixture, fn: Any, args: Any, words: tuple[str, ...]
) -> None:
    task = sup.submit(fn, *args)
    task.exception(timeout=WAIT)
    logged(log, task.id, "crashed", *words, level=logging.WARNING)


def test_a_retry_is_logged(sup: Supervisor, log: pytest.LogCaptureFixture) -> None:
    task = sup.schedule(T.fail_until_attempt, args=(2,), retries=1)
    assert task.result(timeout=WAIT) == 2
    logged(log, task.id, "attempt 1 failed", "ConnectionError", "retry 1 of 1")


def test_a_broken_pool_is_logged(log: pytest.LogCaptureFixture) -> None:
    with Supervisor(workers=1, initializer=T.init_fails) as s:
        s.submit(T.square, 2).exception(timeout=WAIT)
    logged(log, "pool is broken", "initializer broke", level=logging.ERROR)


def test_successful_tasks_log_nothing_at_info(
    sup: Supervisor, log: pytest.LogCaptureFixture
) -> None:
    assert [t.result(timeout=WAIT) for t in [sup.submit(T.square, i) for i in range(50)]] \
        == [i * i for i in range(50)]
    assert not [r for r in log.records if r.name == "taskwarden" and r.levelno >= logging.INFO]
