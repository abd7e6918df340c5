"""The supervisor with real worker processes: isolation, kills, cancellation, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import psutil
import pytest

from taskwarden import (
    RemoteError,
    RemoteTraceback,
    Supervisor,
    Task,
    TaskCancelled,
    TaskState,
    TaskTimeout,
    WorkerCrashed,
)

import _tasks as T
from _live import WAIT, busy_parent_script, gone, read_pid, wait_for


# ------------------------------------------------------------------ basics
def test_submit_returns_a_task_with_its_result_and_metadata(sup: Supervisor) -> None:
    task = sup.submit(T.square, 7)
    assert task.result(timeout=WAIT) == 49
    assert task.state is TaskState.COMPLETED and task.state == "COMPLETED"
    assert uuid.UUID(task.id).version == 4
    assert task.attempts == 1 and task.worker_pid not in (None, os.getpid())
    assert task.started_at is not None and task.finished_at is not None
    assert task.started_at <= task.finished_at <= time.time() + 1


def test_map_keeps_order_with_and_without_chunks(sup: Supervisor) -> None:
    assert list(sup.map(T.square, range(20))) == [x * x for x in range(20)]
    assert list(sup.map(T.add, range(10), range(10), chunksize=3)) == [2 * x for x in range(10)]


def test_functions_defined_on_the_fly_travel_by_value(sup: Supervisor) -> None:
    offset = 5
    assert sup.submit(lambda x: x + offset, 1).result(timeout=WAIT) == 6


def test_the_tasks_exception_comes_back_with_the_worker_traceback(sup: Supervisor) -> None:
    task = sup.submit(T.fail, "no good")
    with pytest.raises(ValueError, match="no good") as info:
        task.result(timeout=WAIT)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "in fail" in str(info.value.__cause__)
    assert task.state is TaskState.FAILED and task.traceback and "ValueError" in task.traceback


def test_get_tasks_and_stats(sup: Supervisor) -> None:
    task = sup.submit(T.square, 3)
    task.result(timeout=WAIT)
    assert sup.get(task.id) is task
    assert sup.get(str(uuid.uuid4())) is None and sup.get("not a uuid") is None
    assert task in sup.tasks()
    stats = sup.stats()
    assert stats["by_state"]["COMPLETED"] >= 1
    assert stats["workers_alive"] == 3  # two working, one spare
    assert {"workers_replaced", "pending", "scheduled"} <= set(stats)


def test_keep_finished_bounds_what_is_remembered() -> None:
    # What the supervisor keeps for get() after the fact: schedule() tasks (a submit()
    # task is found while the caller holds it; see test_memory.py).
    with Supervisor(workers=1, keep_finished=5) as s:
        tasks = [s.schedule(T.square, args=(i,)) for i in range(20)]
        for t in tasks:
            t.result(timeout=WAIT)
        first, last = tasks[0].id, tasks[-1]
        del t, tasks
        assert len(s.tasks()) == 5
        assert s.get(first) is None and s.get(last.id) is last


# --------------------------------------------------------------- isolation
@pytest.mark.parametrize(
    ("fn", "args", "words"),
    [
        (T.exit_with, (3,), "exited with code 3"),
        (T.kill_self, (signal.SIGKILL,), "SIGKILL"),
        (T.segfault, (), "SIGSEGV"),
    ],
)
def test_a_worker_dying_fails_its_task_alone(
    sup: Supervisor, fn: Callable[..., object], args: tuple[object, ...], words: str
) -> None:
    neighbour = sup.submit(T.sleep, 0.5)
    wait_for(lambda: neighbour.state == "RUNNING")
    task = sup.submit(fn, *args)
    with pytest.raises(WorkerCrashed, match=words) as info:
        task.result(timeout=WAIT)
    assert isinstance(info.value, BrokenProcessPool)
    assert neighbour.result(timeout=WAIT) == 0.5
    assert sup.submit(T.square, 4).result(timeout=WAIT) == 16
    assert sup.stats()["workers_replaced"] >= 1


def test_system_exit_in_a_task_fails_it_and_the_worker_lives_on() -> None:
    with Supervisor(workers=1) as s:
        task = s.submit(T.raise_system_exit)
        with pytest.raises(SystemExit):
            task.result(timeout=WAIT)
        assert task.state is TaskState.FAILED
        assert s.submit(T.pid).result(timeout=WAIT) == task.worker_pid


# ------------------------------------------------------------------- kills
def test_timeout_kills_the_worker_and_the_next_task_is_served(sup: Supervisor) -> None:
    task = sup.schedule(T.sleep, args=(60,), timeout=0.3)
    with pytest.raises(TaskTimeout, match=r"timed out after 0\.3 s"):
        task.result(timeout=WAIT)
    assert task.state is TaskState.TIMED_OUT
    assert task.worker_pid is not None and gone(task.worker_pid)
    assert sup.submit(T.square, 5).result(timeout=WAIT) == 25


def test_timeout_kills_a_task_stuck_in_c_that_ignores_sigterm(
    sup: Supervisor, tmp_path: Path
) -> None:
    marker = tmp_path / "pid"
    task = sup.schedule(T.stuck_in_c_ignoring_sigterm, args=(str(marker),), timeout=1.0)
    worker = read_pid(marker)
    with pytest.raises(TaskTimeout):
        task.result(timeout=WAIT)
    assert gone(worker)


def test_timeout_kills_the_tasks_children_too(sup: Supervisor, tmp_path: Path) -> None:
    pidfile = tmp_path / "child"
    task = sup.schedule(T.spawn_hanging_child, args=(str(pidfile),), timeout=1.0)
    child = read_pid(pidfile)
    with pytest.raises(TaskTimeout):
        task.result(timeout=WAIT)
    wait_for(lambda: gone(child), timeout=5)


def test_supervisor_default_timeout_applies_to_submit() -> None:
    with Supervisor(workers=1, timeout=0.2) as s, pytest.raises(TaskTimeout):
        s.submit(T.sleep, 30).result(timeout=WAIT)


def test_cancel_of_a_running_task_kills_its_process(sup: Supervisor, tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    task = sup.submit(T.touch_then_sleep, str(marker), 60)
    worker = read_pid(marker)
    wait_for(lambda: task.state == "RUNNING")
    assert task.cancel() is True
    assert task.state is TaskState.CANCELLED and task.cancelled() and task.done()
    assert gone(worker)  # gone by the time cancel() returns
    with pytest.raises(TaskCancelled):
        task.result()
    with pytest.raises(CancelledError):
        task.result()
    assert task.cancel() is False
    assert sup.submit(T.square, 6).result(timeout=WAIT) == 36


def test_a_pending_task_cancelled_never_starts() -> None:
    with Supervisor(workers=1) as s:
        blocker = s.submit(T.sleep, 0.5)
        waiting = s.submit(T.square, 2)
        assert waiting.cancel() is True
        assert blocker.result(timeout=WAIT) == 0.5
        assert waiting.state is TaskState.CANCELLED and waiting.attempts == 0


def test_tasks_queued_behind_a_hung_task_are_taken_back_by_an_idle_worker() -> None:
    with Supervisor(workers=2) as s:
        hung = s.submit(T.sleep, 60)
        try:
            wait_for(lambda: hung.state == "RUNNING")
            quick = [s.submit(T.square, i) for i in range(50)]
            assert [t.result(timeout=WAIT) for t in quick] == [i * i for i in range(50)]
            assert hung.state is TaskState.RUNNING
        finally:
            hung.cancel()


# --------------------------------------------------------------- bad input
def test_arguments_that_do_not_bind_fail_at_the_call(sup: Supervisor) -> None:
    with pytest.raises(TypeError, match="arguments do not match square"):
        sup.submit(T.square, 1, 2)
    with pytest.raises(TypeError, match="arguments do not match"):
        sup.submit(T.add, 1, c=2)
    with pytest.raises(TypeError):
        sup.submit(42)  # type: ignore[arg-type]


def test_arguments_that_cannot_be_pickled_fail_at_the_call(sup: Supervisor) -> None:
    with pytest.raises(TypeError, match="cloudpickle"):
        sup.submit(T.square, threading.Lock())


def test_unknown_or_invalid_policy_keywords_fail_at_the_call(sup: Supervisor) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'timout'"):
        sup.schedule(T.square, args=(1,), timout=3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        Supervisor(workers=1, bogus=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        sup.schedule(T.square, args=(1,), timeout=-1)
    with pytest.raises(ValueError):
        sup.schedule(T.square, args=(1,), timeout=float("nan"))
    with pytest.raises(ValueError):
        sup.schedule(T.square, args=(1,), delay=-1)
    with pytest.raises(ValueError, match="not both"):
        sup.schedule(T.square, args=(1,), delay=1, at=time.time())
    with pytest.raises(ValueError):
        Supervisor(workers=0)


def test_submit_after_shutdown_raises() -> None:
    s = Supervisor(workers=1)
    s.shutdown()
    with pytest.raises(RuntimeError, match="shutdown"):
        s.submit(T.square, 1)


def test_a_result_that_cannot_be_pickled_fails_that_task_only(sup: Supervisor) -> None:
    task = sup.submit(T.unpicklable_result)
    with pytest.raises(Exception, match="could not be pickled"):
        task.result(timeout=WAIT)
    assert task.state is TaskState.FAILED
    assert sup.submit(T.square, 3).result(timeout=WAIT) == 9


def test_an_exception_that_cannot_be_pickled_arrives_as_text(sup: Supervisor) -> None:
    task = sup.submit(T.raise_unpicklable)
    with pytest.raises(RemoteError, match="cannot travel") as info:
        task.result(timeout=WAIT)
    assert "Unpicklable" in info.value.type_name
    assert "raise_unpicklable" in str(info.value.__cause__)


@pytest.mark.parametrize(
    "fn", [T.result_that_explodes_when_unpickled, T.result_that_exits_when_unpickled]
)
def test_whatever_unpickling_a_result_does_fails_that_task_only(
    sup: Supervisor, fn: Callable[[], object]
) -> None:
    task = sup.submit(fn)
    with pytest.raises(RemoteError, match="could not be unpickled"):
        task.result(timeout=WAIT)
    assert sup.submit(T.square, 2).result(timeout=WAIT) == 4


# --------------------------------------------------------------- lifecycle
def test_shutdown_waits_and_leaves_no_worker_alive() -> None:
    s = Supervisor(workers=2)
    pids = list(s._pool.pids().values())
    running = s.submit(T.sleep, 0.3)
    later = s.schedule(T.square, args=(1,), delay=60)
    s.shutdown(wait=True)
    assert running.result() == 0.3
    assert later.state is TaskState.CANCELLED
    assert all(gone(p) for p in pids)


def test_shutdown_cancels_scheduled_tasks_in_bulk_each_with_its_own_error() -> None:
    s = Supervisor(workers=1, keep_finished=3)
    plain = [s.schedule(T.square, args=(i,), delay=60) for i in range(6)]
    watched = s.schedule(T.square, args=(7,), delay=60)
    called = threading.Event()
    watched.add_done_callback(lambda t: called.set())
    keyed = s.schedule(T.square, args=(8,), delay=60, key="k")
    ids = [t.id for t in plain]
    s.shutdown(wait=True)
    assert called.wait(WAIT)
    errors = []
    for task in [*plain, watched, keyed]:
        assert task.state is TaskState.CANCELLED and task.cancelled() and task.done()
        assert task.finished_at is not None and task.attempts == 0
        err = task.exception()
        assert isinstance(err, TaskCancelled) and str(err) == "cancelled"
        assert task.exception() is err  # made once, then the task's own
        with pytest.raises(TaskCancelled) as raised:
            task.result()
        assert raised.value is err
        errors.append(err)
    assert len({id(e) for e in errors}) == len(errors)  # no traceback is shared
    # Kept within keep_finished (the newest), or found while the caller holds them.
    assert all(s.get(i) is t for i, t in zip(ids, plain, strict=True))
    assert s.stats()["by_state"]["CANCELLED"] == 8 and s.stats()["scheduled"] == 0


def test_argumentless_calls_of_a_module_function_share_one_payload(sup: Supervisor) -> None:
    a, b = (sup.schedule(T.pid, delay=60) for _ in range(2))

    def payloads(x: Task[Any], y: Task[Any]) -> tuple[bytes, bytes]:
        # Scheduled under the Supervisor's policy: the core keeps them as seeds, with
        # their payloads (asked in the loop, which owns the core).
        seeds = sup._core._seeds
        return sup._ask(lambda: (seeds[x._seq], seeds[y._seq]))

    pa, pb = payloads(a, b)
    assert pa is pb  # pickled once
    assert sup.submit(T.pid).result(timeout=WAIT) > 0
    with_args = [sup.schedule(T.square, args=(3,), delay=60) for _ in range(2)]
    pa, pb = payloads(*with_args)
    assert pa == pb and pa is not pb
    counter = [0]

    def local() -> int:  # pickled by value: its closure may change between calls
        return counter[0]

    assert sup.submit(local).result(timeout=WAIT) == 0
    counter[0] = 5
    assert sup.submit(local).result(timeout=WAIT) == 5
    holder = T.Holder(1)  # a method's object may change between calls too
    assert sup.submit(holder.get).result(timeout=WAIT) == 1
    holder.payload = 2
    assert sup.submit(holder.get).result(timeout=WAIT) == 2


def test_shutdown_with_cancel_futures_cancels_what_has_not_started() -> None:
    s = Supervisor(workers=1)
    running = s.submit(T.sleep, 0.3)
    wait_for(lambda: running.state == "RUNNING")
    waiting = [s.submit(T.square, i) for i in range(5)]
    s.shutdown(wait=True, cancel_futures=True)
    assert running.result() == 0.3
    assert all(t.state is TaskState.CANCELLED for t in waiting)


def test_initializer_runs_in_every_worker() -> None:
    with Supervisor(workers=1, initializer=T.remember, initargs=(11,)) as s:
        assert s.submit(T.recall).result(timeout=WAIT) == 11


def test_a_failing_initializer_fails_tasks_instead_of_hanging() -> None:
    with (
        Supervisor(workers=1, initializer=T.init_fails) as s,
        pytest.raises(WorkerCrashed, match="initializer"),
    ):
        s.submit(T.square, 1).result(timeout=WAIT)


def test_max_tasks_per_worker_recycles_workers() -> None:
    with Supervisor(workers=1, max_tasks_per_worker=2) as s:
        pids = [s.submit(T.pid).result(timeout=WAIT) for _ in range(6)]
        assert len(set(pids)) == 3


def test_workers_exit_by_themselves_when_the_parent_is_killed(tmp_path: Path) -> None:
    script = busy_parent_script(tmp_path / "parent.py", """
        print(" ".join(map(str, s._pool.pids().values())), flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 3
    finally:
        parent.kill()
        parent.wait()
    procs = [psutil.Process(p) for p in pids if not gone(p)]
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive


def test_a_done_callback_may_call_back_into_the_supervisor() -> None:
    with Supervisor(workers=1) as s:
        follow_ups: list[object] = []

        def chain(_: object) -> None:
            follow_ups.append(s.submit(T.square, 5))
            s.stats()

        first = [s.submit(T.square, i) for i in range(3)]
        first[-1].add_done_callback(chain)
        assert [t.result(timeout=WAIT) for t in first] == [0, 1, 4]
        wait_for(lambda: follow_ups)
        assert follow_ups[0].result(timeout=WAIT) == 25  # type: ignore[attr-defined]


def test_cancelled_implies_done(sup: Supervisor) -> None:
    task = sup.submit(T.sleep, 60)
    wait_for(lambda: task.state == "RUNNING")
    assert task.cancel() is True
    assert task.cancelled() and task.done()


def test_tasks_work_with_concurrent_futures_wait_and_as_completed(sup: Supervisor) -> None:
    from concurrent.futures import FIRST_COMPLETED, as_completed, wait

    done_first = sup.submit(T.square, 2)
    done_first.result(timeout=WAIT)
    slow = sup.submit(T.sleep, 0.3)
    quick = sup.submit(T.square, 3)
    finished, _ = wait([slow, quick], timeout=WAIT, return_when=FIRST_COMPLETED)
    assert quick in finished
    results = {t.result() for t in as_completed([done_first, slow, quick], timeout=WAIT)}
    assert results == {4, 0.3, 9}
    assert list(sup.map(T.square, range(3), timeout=WAIT)) == [0, 1, 4]


def test_many_threads_submitting_cancelling_and_asking_at_once(sup: Supervisor) -> None:
    errors: list[BaseException] = []
    all_tasks: list[object] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        try:
            mine = []
            for i in range(150):
                if i % 3 == 0:
                    t = sup.schedule(T.square, args=(i,), delay=0.05 * (i % 4))
                elif i % 3 == 1:
                    t = sup.schedule(T.square, args=(i,), key=f"k{n}")
                else:
                    t = sup.submit(T.square, i)
                mine.append(t)
                if i % 5 == 0:
                    t.cancel()
                if i % 25 == 0:
                    sup.stats()
                    assert sup.get(t.id) is t
            with lock:
                all_tasks.extend(mine)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(WAIT)
    assert not errors
    for t in all_tasks:
        t.exception(timeout=WAIT)  # type: ignore[attr-defined]  # every task ends
        assert t.state.final  # type: ignore[attr-defined]
    stats = sup.stats()
    assert stats["pending"] == 0 and stats["scheduled"] == 0
    assert sum(stats["by_state"].values()) == len(all_tasks)


def test_shutdown_ends_a_worker_that_a_task_left_a_thread_in() -> None:
    # Python waits for non-daemon threads before a process exits: a worker told to
    # stop must leave anyway, or shutdown(wait=True) would never return.
    s = Supervisor(workers=1)
    pid = s.submit(T.leave_a_thread_running).result(timeout=WAIT)
    t0 = time.monotonic()
    s.shutdown(wait=True)
    assert gone(pid)
    assert time.monotonic() - t0 < 10.0


def test_shutdown_kills_a_worker_that_hangs_on_its_way_out() -> None:
    from taskwarden.core.engine import Timings

    STOP_WAIT = 1.0  # short, injected: the rule is the same at the default 5 s
    s = Supervisor(workers=1, _timings=Timings(stop_wait=STOP_WAIT))
    pid = s.submit(T.hang_at_exit).result(timeout=WAIT)
    t0 = time.monotonic()
    s.shutdown(wait=True)
    took = time.monotonic() - t0
    assert gone(pid)
    assert STOP_WAIT - 0.5 < took < STOP_WAIT + 10.0  # waited for it, then killed it


def test_workers_are_reaped_by_the_pool_alone(sup: Supervisor) -> None:
    # multiprocessing reaps the processes it lists on every Process.start() and
    # active_children(), anywhere in the program: were the workers listed, a crash's
    # exit status could be taken from under the pool ("exit status unknown").
    import multiprocessing

    workers = {sup.submit(T.pid).result(timeout=WAIT) for _ in range(4)}
    assert not workers & {p.pid for p in multiprocessing.active_children()}
    crashed = sup.submit(T.exit_with, 7)
    multiprocessing.active_children()
    with pytest.raises(WorkerCrashed, match="exited with code 7"):
        crashed.result(timeout=WAIT)


def test_a_drop_keyed_call_that_races_shutdown_is_refused_not_lost() -> None:
    s = Supervisor(workers=1)
    check = s._queue

    def check_then_shut_down(put: Callable[[], object] | None) -> None:
        check(put)
        if put is None:  # the loop ends between the call's check and its add
            s.shutdown(wait=True)

    s._queue = check_then_shut_down  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="after shutdown"):
        s.schedule(T.square, args=(2,), key="k", on_conflict="drop")
    assert s.stats()["by_state"]["PENDING"] == 0
