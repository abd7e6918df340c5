"""Worker and pool hardening (issue 9): what a task, an initializer or a worker's
channel does to its worker never stops the supervisor or reaches another task."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import taskwarden
from taskwarden import Supervisor, TaskState, TaskTimeout, WorkerCrashed
from taskwarden._policy import Policy
from taskwarden._proctree import descendants as _descendants
from taskwarden._proctree import kill_tree
from taskwarden.core import engine as E
from taskwarden.driver._reactor import Reactor
from taskwarden.pool import _wire
from taskwarden.pool._channel import Channel

import _tasks as T
from _live import WAIT, gone, read_pid, wait_for

TESTS = Path(__file__).resolve().parent
SRC = Path(taskwarden.__file__).resolve().parents[1]  # the code under test


def shutdown_returns(sup: Supervisor, within: float = 10.0) -> bool:
    t = threading.Thread(target=sup.shutdown, kwargs={"wait": True, "cancel_futures": True})
    t.start()
    t.join(within)
    return not t.is_alive()


def _kill(*pids: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _script(body: str) -> list[str]:
    prelude = f"import sys; sys.path[:0] = [{str(SRC)!r}, {str(TESTS)!r}]\n"
    return [sys.executable, "-c", prelude + textwrap.dedent(body)]


@pytest.fixture
def one() -> Iterator[Supervisor]:
    s = Supervisor(workers=1)
    yield s
    s.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------ 9: stdio flushed after the task
def test_a_task_that_closes_stdout_still_succeeds(one: Supervisor) -> None:
    task = one.submit(T.close_stdout_then_return, 5)
    assert task.result(timeout=WAIT) == 5
    assert task.state is TaskState.COMPLETED
    assert one.submit(T.square, 3).result(timeout=WAIT) == 9  # the same worker lives on


def test_tasks_printing_into_a_broken_pipe_succeed() -> None:
    """``python app.py | head -1``: the reader of stdout went away."""
    proc = subprocess.Popen(
        _script("""
            from taskwarden import Supervisor
            import _tasks as T
            with Supervisor(workers=1) as sup:
                tasks = [sup.submit(T.print_and_return, i) for i in range(5)]
                out = []
                for t in tasks:
                    try:
                        out.append(t.result(timeout=20))
                    except BaseException as exc:
                        out.append(type(exc).__name__)
                replaced = sup.stats()["workers_replaced"]
            sys.stderr.write(f"RESULT {out!r} {replaced}\\n")
        """),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        # Block-buffered, as a pipe is by default: the task's print() succeeds, and the
        # error only comes when the worker flushes after the task.
        env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
    )
    assert proc.stdout is not None
    proc.stdout.close()  # before any task prints: every write to it is EPIPE
    _, err = proc.communicate(timeout=60)
    lines = [ln for ln in err.decode().splitlines() if ln.startswith("RESULT ")]
    assert lines, err.decode()[-2000:]
    assert lines[-1] == "RESULT [0, 1, 2, 3, 4] 0"


# ------------------------------------------------ 15: a forked child stays silent
def test_a_forked_child_that_returns_does_not_answer_for_its_parent(one: Supervisor) -> None:
    task = one.submit(T.fork_child_that_returns)
    assert task.result(timeout=WAIT) == "parent-result"
    # The worker's channel was not read by the child: the next runs go where they should.
    assert [one.submit(T.square, i).result(timeout=WAIT) for i in range(5)] == [0, 1, 4, 9, 16]
    assert one.stats()["workers_replaced"] == 0


# ------------------------------------------------ 14: a heartbeat counts for its own run
def test_a_heartbeat_from_a_thread_an_earlier_task_left_counts_for_nothing(
    one: Supervisor,
) -> None:
    pid = one.submit(T.leave_a_heartbeat_thread, 0.01).result(timeout=WAIT)
    hung = one.schedule(T.sleep, args=(30,), heartbeat=0.3)
    started = time.monotonic()
    with pytest.raises(TaskTimeout, match="heartbeat"):
        hung.result(timeout=WAIT)
    assert hung.worker_pid == pid  # it ran beside the leftover thread
    assert time.monotonic() - started < 5


def test_a_heartbeat_from_a_thread_the_task_started_counts(one: Supervisor) -> None:
    task = one.schedule(T.heartbeat_from_own_thread, args=(1.0, 0.05), heartbeat=0.3)
    assert task.result(timeout=WAIT) == "done"


# ------------------------------------------------ 17: the tree walk under churn
def _churner(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    pidfile = tmp_path / "child.pid"
    proc = subprocess.Popen(_script(f"""
        import _tasks as T
        T.churn_threads_with_a_child({str(pidfile)!r})
    """))
    return proc, read_pid(pidfile)


def test_the_tree_walk_keeps_a_child_of_a_parent_that_churns_threads(tmp_path: Path) -> None:
    proc, child = _churner(tmp_path)
    try:
        wait_for(lambda: len(os.listdir(f"/proc/{proc.pid}/task")) > 4)
        missed = sum(child not in _descendants(proc.pid) for _ in range(3000))
        assert missed == 0, f"{missed} of 3000 walks lost the live child"
    finally:
        _kill(child, proc.pid)
        proc.wait()
        wait_for(lambda: gone(child))


def test_kill_tree_takes_the_child_of_a_parent_that_churns_threads(tmp_path: Path) -> None:
    proc, child = _churner(tmp_path)
    try:
        wait_for(lambda: len(os.listdir(f"/proc/{proc.pid}/task")) > 4)
        kill_tree(proc.pid)
        proc.wait(timeout=WAIT)
        wait_for(lambda: gone(child), timeout=5)
    finally:
        _kill(child, proc.pid)
        proc.wait()


# ------------------------------------------------ 16: a supervisor killed with SIGKILL
def _supervisor_process(tmp_path: Path, setup: str, task: str) -> tuple[subprocess.Popen[bytes],
                                                                        int, int]:
    """A supervisor in a process of its own, with a task that started a child; returns
    (the supervisor process, the worker's pid, the child's pid)."""
    pidfile = tmp_path / "child.pid"
    proc = subprocess.Popen(_script(f"""
        import time
        from taskwarden import Supervisor
        import _tasks as T
        sup = Supervisor(workers=1{setup.format(pidfile=str(pidfile))})
        {task.format(pidfile=str(pidfile))}
        time.sleep(1000)
    """))
    child = read_pid(pidfile)
    worker = psutil.Process(child).ppid()
    return proc, worker, child


@pytest.mark.parametrize(("options", "work"), [
    ("", "sup.submit(T.spawn_hanging_child, {pidfile!r})"),  # a task's child
    (", initializer=T.init_child_then_hang, initargs=({pidfile!r},)", ""),  # still starting
], ids=["running-task", "still-starting"])
def test_a_worker_whose_supervisor_is_killed_takes_its_children(
    tmp_path: Path, options: str, work: str
) -> None:
    proc, worker, child = _supervisor_process(tmp_path, options, work)
    try:
        proc.kill()
        proc.wait()
        wait_for(lambda: gone(worker), timeout=10)
        wait_for(lambda: gone(child), timeout=5)
    finally:
        _kill(child, worker, proc.pid)


# ------------------------------------------------ 3: initializers that kill or hang
@pytest.mark.parametrize("init", [T.init_exit, T.init_segfault, T.init_abort],
                         ids=["os._exit", "segfault", "abort"])
def test_an_initializer_that_kills_its_process_breaks_the_pool(
    init: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="taskwarden")
    sup = Supervisor(workers=2, initializer=init)
    try:
        task = sup.submit(T.square, 3)
        with pytest.raises(WorkerCrashed, match=r"broken.*in a row") as info:
            task.result(timeout=WAIT)
        assert "while starting" in str(info.value)
        with pytest.raises(WorkerCrashed, match="broken"):  # later work fails at once
            sup.submit(T.square, 4).result(timeout=5)
        assert sup.stats()["workers_replaced"] <= E.BOOT_STRIKES + 2  # no endless respawns
        messages = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert any(level == logging.WARNING and "while starting" in m and "1 of 3" in m
                   for level, m in messages), messages
        assert any(level == logging.ERROR and "pool is broken" in m and "in a row" in m
                   for level, m in messages), messages
    finally:
        assert shutdown_returns(sup)


def test_a_timed_task_waiting_for_a_hanging_initializer_times_out() -> None:
    sup = Supervisor(workers=1, initializer=T.init_hang,
                     _timings=E.Timings(boot_allowance=0.5))
    try:
        started = time.monotonic()
        task = sup.schedule(T.square, args=(3,), timeout=2)
        with pytest.raises(TaskTimeout, match="waiting for its worker process to start"):
            task.result(timeout=WAIT)
        assert 1.9 < time.monotonic() - started < 6
        assert task.state is TaskState.TIMED_OUT and task.attempts == 0
    finally:
        assert shutdown_returns(sup, within=5)


def test_a_worker_that_never_gets_ready_is_killed_and_then_the_pool_breaks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="taskwarden")
    sup = Supervisor(workers=2, initializer=T.init_hang, _timings=E.Timings(boot_limit=1.0))
    try:
        task = sup.submit(T.square, 3)  # no time limit: only the boot limit ends this
        with pytest.raises(WorkerCrashed, match="did not finish starting within 1 s"):
            task.result(timeout=WAIT)
        assert any(r.levelno == logging.WARNING and "did not finish starting" in r.getMessage()
                   for r in caplog.records)
    finally:
        assert shutdown_returns(sup, within=5)


def test_a_slow_initializer_is_not_a_broken_pool() -> None:
    with Supervisor(workers=1, initializer=T.init_slow, initargs=(0.5,),
                    _timings=E.Timings(boot_allowance=0.2)) as sup:
        # The first waits out the start (its limit is shorter than the start): it times
        # out, the worker starts on, and the next runs.
        early = sup.schedule(T.square, args=(2,), timeout=0.3)
        with pytest.raises(TaskTimeout):
            early.result(timeout=WAIT)
        assert sup.schedule(T.square, args=(3,), timeout=5).result(timeout=WAIT) == 9


# fake clock: the rules behind the live tests above
def _booting(workers: int = 1) -> tuple[E.Core, list[int], float]:
    core = E.Core(workers)
    now = 1000.0
    core.start(now)
    wids = [a.wid for a in core.actions if isinstance(a, E.Spawn)]
    core.actions.clear()
    return core, wids, now


def _spawns(core: E.Core) -> list[int]:
    out = [a.wid for a in core.actions if isinstance(a, E.Spawn)]
    return out


def test_core_deaths_before_ready_in_a_row_break_the_pool() -> None:
    core, wids, now = _booting(1)
    run = E.Run(1, b"", Policy())
    core.add(run, now)
    for strike in range(E.BOOT_STRIKES):
        assert run.state is TaskState.PENDING
        core.worker_exited(wids[-1], -11, now)
        now += 1
        core.advance(now)  # the replacement starts after REPLACE_DELAY
        wids = _spawns(core) or wids
        core.actions.clear()
        if strike < E.BOOT_STRIKES - 1:
            assert core.broken is None
    assert core.broken is not None and "SIGSEGV" in core.broken
    assert run.state is TaskState.FAILED and isinstance(run.value, WorkerCrashed)


def test_core_a_ready_worker_resets_the_count_of_deaths() -> None:
    core, wids, now = _booting(1)
    for _ in range(E.BOOT_STRIKES - 1):
        core.worker_exited(wids[-1], 1, now)
        now += 1
        core.advance(now)
        wids = _spawns(core) or wids
        core.actions.clear()
    core.worker_ready(wids[-1], 123, now)
    assert core.boot_failures == 0 and core.broken is None


def test_core_a_worker_not_ready_by_the_boot_limit_is_killed() -> None:
    core, wids, now = _booting(1)
    run = E.Run(1, b"", Policy())
    core.add(run, now)
    core.actions.clear()
    core.advance(now + E.BOOT_LIMIT - 1)
    assert not [a for a in core.actions if isinstance(a, E.Kill)]
    core.advance(now + E.BOOT_LIMIT)
    assert [a.wid for a in core.actions if isinstance(a, E.Kill)] == wids
    assert run.state is TaskState.PENDING and run.worker is None and run in core.pending
    assert core.boot_failures == 1


def test_core_a_run_cancelled_on_a_starting_worker_that_dies_stays_cancelled() -> None:
    # cancel() of a run handed to a worker still starting waits for the worker's answer;
    # if the worker dies before READY instead, the run ends cancelled: it never runs.
    core, wids, now = _booting(1)
    run = E.Run(1, b"", Policy())
    core.add(run, now)
    assert run.worker is not None
    assert core.cancel(run, now) is None
    core.worker_exited(wids[0], 1, now)
    assert run.state is TaskState.CANCELLED and run not in core.pending


def test_core_the_boot_limit_timer_does_not_outlive_the_start() -> None:
    core, wids, now = _booting(1)
    core.worker_ready(wids[0], 1, now)
    core.advance(now)
    core.actions.clear()
    # The spare's start is still watched; the ready worker's is not.
    spare = [w for w in core.workers.values() if not w.ready]
    assert len(spare) == 1
    core.worker_ready(spare[0].wid, 2, now)
    assert core.next_deadline() is None


def test_core_a_run_waiting_for_a_starting_worker_times_out_and_is_skipped() -> None:
    core, wids, now = _booting(1)
    run = E.Run(1, b"", Policy(timeout=2.0))
    core.add(run, now)
    core.actions.clear()
    wait = max(2.0, E.BOOT_ALLOWANCE)
    core.advance(now + wait - 0.01)
    assert run.state is TaskState.PENDING
    core.advance(now + wait)
    assert run.state is TaskState.TIMED_OUT and isinstance(run.value, TaskTimeout)
    assert [(a.wid, a.seq) for a in core.actions if isinstance(a, E.Skip)] == [(wids[0], 1)]
    assert not [a for a in core.actions if isinstance(a, E.Kill)]  # the worker starts on
    core.skipped(wids[0], 1, now + wait)
    assert core.busy == 0


def test_core_a_worker_ready_in_time_starts_the_run_with_its_full_limit() -> None:
    core, wids, now = _booting(1)
    run = E.Run(1, b"", Policy(timeout=10.0))
    core.add(run, now)
    core.worker_ready(wids[0], 1, now + 3)
    assert run.state is TaskState.RUNNING and run.deadline == now + 3 + 10.0
    core.advance(now + 10.5)  # the wait for the start would have ended here
    assert run.state is TaskState.RUNNING


# ------------------------------------------------ 4: a garbled channel
GARBAGE = {
    "unpicklable": _wire.HEADER.pack(8) + b"\x80\x05\xff\xfe\xfd\xfc\xfb\xfa",
    "not-a-pickle": b"hello, supervisor: this is not a frame",
    "unknown-kind": _wire.frame((99, "what is this")),
    "wrong-shape": _wire.frame((_wire.DONE, 1)),
    "not-a-tuple": _wire.frame(12345),
}


@pytest.mark.parametrize("data", list(GARBAGE.values()), ids=list(GARBAGE))
def test_garbage_in_a_workers_channel_crashes_that_worker_only(
    sup: Supervisor, data: bytes
) -> None:
    other = sup.submit(T.sleep, 1.0)
    wait_for(lambda: other.state is TaskState.RUNNING)
    task = sup.submit(T.write_into_channel, data)
    with pytest.raises(WorkerCrashed, match="garbled its channel"):
        task.result(timeout=WAIT)
    assert other.result(timeout=WAIT) == 1.0  # the other task never noticed
    assert sup.submit(T.square, 4).result(timeout=WAIT) == 16  # the supervisor lives on
    assert sup.stats()["workers_replaced"] == 1


def test_split_frames_refuses_garbage_but_keeps_the_messages_before_it() -> None:
    good = _wire.frame((_wire.READY, 1))
    buf = bytearray(good + b"\x00\x00\x00\x10nonsense-nonsense")
    with pytest.raises(_wire.ProtocolError) as info:
        _wire.split_frames(buf)
    assert info.value.parsed == [(_wire.READY, 1)]


def test_split_frames_refuses_a_length_over_the_frame_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_wire, "MAX_FRAME", 1000)
    with pytest.raises(_wire.ProtocolError, match="announced 5000 bytes"):
        _wire.split_frames(bytearray(_wire.HEADER.pack(5000) + b"\x80\x05"))


# ------------------------------------------------ 5: payloads and the frame limit
LIMIT = 100_000


def test_an_oversized_payload_is_refused_at_the_call(
    sup: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_wire, "MAX_FRAME", LIMIT)
    with pytest.raises(ValueError, match="frame limit"):
        sup.submit(len, b"x" * LIMIT)
    with pytest.raises(ValueError, match="frame limit"):
        sup.schedule(len, args=(b"x" * LIMIT,), delay=10)
    with pytest.raises(ValueError, match="frame limit"):
        sup.schedule(len, args=(b"x" * LIMIT,), every=10)
    assert sup.submit(len, b"x" * (LIMIT // 2)).result(timeout=WAIT) == LIMIT // 2


def test_runs_queued_together_never_make_a_frame_past_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_wire, "MAX_FRAME", LIMIT)
    with Supervisor(workers=1) as sup:
        # All due before the worker is up: they go out together once it is ready.
        tasks = [sup.submit(len, b"x" * (LIMIT // 3)) for _ in range(8)]
        assert [t.result(timeout=WAIT) for t in tasks] == [LIMIT // 3] * 8


def test_the_pool_splits_a_batch_to_fit_the_frame_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_wire, "MAX_FRAME", LIMIT)
    reactor = Reactor()
    chan = Channel(1, reactor, [], memoryview(bytearray(16)),
                   nudge=lambda: None, on_garbled=lambda: None)
    frames: list[bytes] = []
    monkeypatch.setattr(Channel, "write", lambda self, data: frames.append(data))
    try:
        runs: list[tuple[int, bytes, dict[str, Any] | None]] = [
            (i, b"y" * 30_000, {"attempt": 2, "previous_progress": "p" * (i * 1000)})
            for i in range(10)
        ]
        runs.append((99, b"z" * (LIMIT - _wire.FRAME_SLACK - 100), None))  # the largest allowed
        chan.send(runs)
    finally:
        reactor.close()
    assert all(len(f) <= _wire.HEADER.size + LIMIT for f in frames)
    buf = bytearray(b"".join(frames))
    got = [run for msg in _wire.split_frames(buf) for run in msg[1]]
    assert [r[0] for r in got] == [r[0] for r in runs]  # every run, in order
    assert got == runs


def test_a_result_over_the_frame_limit_fails_that_task(monkeypatch: pytest.MonkeyPatch) -> None:
    from taskwarden import _taskside
    from taskwarden.pool import _worker

    monkeypatch.setattr(_wire, "MAX_FRAME", LIMIT)
    running = _taskside.Running(None, 1, None, 0.05)  # type: ignore[arg-type]
    msg = _worker._done_ok(1, b"r" * LIMIT, running)
    kind, seq, ok, _, _, _, message, _ = pickle.loads(msg[_wire.HEADER.size:])
    assert (kind, seq, ok) == (_wire.DONE, 1, False)
    assert "frame limit" in message and len(msg) <= LIMIT


# ------------------------------------------------ 12: prefetch and GIL-holding tasks
@pytest.mark.parametrize("round_", range(3))
def test_runs_queued_behind_a_task_holding_the_gil_are_taken_back(round_: int) -> None:
    with Supervisor(workers=2) as sup:
        # Due before the workers are up: once ready, each is handed a batch at once, so
        # runs are certainly queued behind the task that is about to take the GIL.
        long = sup.submit(T.hold_the_gil, 3.0)
        started = time.monotonic()
        tiny = [sup.submit(T.square, i) for i in range(40)]
        for t in tiny:
            t.result(timeout=WAIT)
        took = time.monotonic() - started
        assert not long.done(), f"the tiny tasks waited for the long one ({took:.2f} s)"
        assert [t.result() for t in tiny] == [i * i for i in range(40)]
        assert sup.stats()["workers_replaced"] == 0
        assert long.cancel()
