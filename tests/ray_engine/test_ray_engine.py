"""The Ray engine on a real local Ray: every watchdog of the local engine, on Ray actors."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest

from taskwarden import (
    Supervisor,
    TaskCancelled,
    TaskState,
    TaskSuperseded,
    TaskTimeout,
    WorkerCrashed,
)
from taskwarden.pool import ray_pool

import _tasks as T
from _live import WAIT, gone, read_pid, wait_for

pytest.importorskip("ray")  # the Ray engine's tests need Ray: pip install 'taskwarden[ray]'
pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("unix", [True, False], ids=["unix-socket", "tcp"])
def test_submit_and_map_run_on_ray_workers(
    local_ray: None, monkeypatch: pytest.MonkeyPatch, unix: bool
) -> None:
    """On the supervisor's machine workers connect over a Unix socket; from any other
    node, over TCP (forced here)."""
    monkeypatch.setattr(ray_pool, "UNIX_SOCKETS", unix)
    with Supervisor(workers=2, engine="ray") as sup:
        task = sup.submit(T.square, 7)
        assert task.result(timeout=WAIT) == 49
        assert list(sup.map(T.square, range(500))) == [x * x for x in range(500)]
        # The worker is a process of its own, the child of the slot's Ray actor.
        assert task.worker_pid is not None
        agent = psutil.Process(task.worker_pid).parent()
        assert agent.cmdline()[0].startswith("ray::")
        family = socket.AF_UNIX if unix else socket.AF_INET
        conns = psutil.Process(task.worker_pid).net_connections(kind="all")
        assert [c.family for c in conns if c.status in ("ESTABLISHED", "NONE")] == [family]


def test_a_task_in_a_python_loop_is_killed_at_its_deadline(rsup: Supervisor) -> None:
    task = rsup.schedule(T.hold_the_gil, args=(0,), timeout=30)  # a warm-up: both ready
    task.result(timeout=WAIT)
    started = time.monotonic()
    hung = rsup.schedule(T.sleep, args=(60,), timeout=0.3)
    with pytest.raises(TaskTimeout):
        hung.result(timeout=WAIT)
    assert time.monotonic() - started < 10
    assert hung.state is TaskState.TIMED_OUT
    assert hung.worker_pid is not None and gone(hung.worker_pid)
    assert rsup.submit(T.square, 3).result(timeout=WAIT) == 9


def test_c_code_holding_the_gil_is_killed_at_its_deadline(rsup: Supervisor) -> None:
    """The agent (which runs no task) kills the worker: the task's GIL is no obstacle."""
    hung = rsup.schedule(T.hold_the_gil, args=(60,), timeout=0.5)
    with pytest.raises(TaskTimeout):
        hung.result(timeout=WAIT)
    assert hung.worker_pid is not None and gone(hung.worker_pid)
    assert rsup.submit(T.square, 4).result(timeout=WAIT) == 16


def test_a_task_that_stops_beating_is_killed(rsup: Supervisor) -> None:
    task = rsup.schedule(T.beat_then_go_silent, args=(5, 0.05), heartbeat=0.5)
    with pytest.raises(TaskTimeout, match="heartbeat"):
        task.result(timeout=WAIT)
    assert task.progress == 4
    assert task.worker_pid is not None and gone(task.worker_pid)


def test_a_slow_task_that_keeps_beating_lives(rsup: Supervisor) -> None:
    task = rsup.schedule(T.beat_steadily, args=(0.6, 0.05), heartbeat=0.3)
    assert task.result(timeout=WAIT) == "done"
    assert isinstance(task.progress, int) and task.progress > 3


def test_grace_raises_inside_the_task_before_the_kill(rsup: Supervisor, tmp_path: Path) -> None:
    marker = tmp_path / "finally"
    task = rsup.schedule(T.sleep_with_finally, args=(str(marker), 60), timeout=0.3, grace=5)
    with pytest.raises(TaskTimeout):
        task.result(timeout=WAIT)
    assert marker.read_text() == "finally ran"


def test_current_task_and_retries_inside_a_ray_worker(rsup: Supervisor) -> None:
    info = rsup.schedule(T.whoami, timeout=30)
    task_id, attempt, deadline, _ = info.result(timeout=WAIT)
    assert task_id == info.id and attempt == 1 and deadline is not None
    retried = rsup.schedule(T.fail_until_attempt, args=(3,), retries=3,
                            retry_on=(ConnectionError,))
    assert retried.result(timeout=WAIT) == 3 and retried.attempts == 3


def test_a_newer_task_with_the_same_key_kills_the_running_one(
    rsup: Supervisor, tmp_path: Path
) -> None:
    marker = tmp_path / "pid"
    old = rsup.schedule(T.touch_then_sleep, args=(str(marker), 60), key="render")
    old_pid = read_pid(marker)
    wait_for(lambda: old.state == "RUNNING")
    new = rsup.schedule(T.square, args=(9,), key="render")
    assert new.result(timeout=WAIT) == 81
    with pytest.raises(TaskSuperseded):
        old.result(timeout=WAIT)
    assert gone(old_pid)


def test_cancel_of_a_running_task_kills_its_process(rsup: Supervisor, tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    task = rsup.submit(T.touch_then_sleep, str(marker), 60)
    worker = read_pid(marker)
    wait_for(lambda: task.state == "RUNNING")
    assert task.cancel() is True
    assert task.state is TaskState.CANCELLED
    assert gone(worker)
    with pytest.raises(TaskCancelled):
        task.result()


@pytest.mark.parametrize(
    ("fn", "args", "what"),
    [
        (T.exit_with, (3,), "exited with code 3"),
        (T.kill_self, (signal.SIGKILL,), "SIGKILL"),
        (T.segfault, (), "SIGSEGV"),
    ],
    ids=["exit-code", "sigkill", "segfault"],
)
def test_a_crash_names_its_exit_code_or_signal(
    rsup: Supervisor, fn: object, args: tuple[object, ...], what: str
) -> None:
    task = rsup.schedule(fn, args=args)  # type: ignore[call-overload]
    with pytest.raises(WorkerCrashed, match=what):
        task.result(timeout=WAIT)
    assert rsup.submit(T.square, 5).result(timeout=WAIT) == 25


def test_a_recurring_job_and_stats(rsup: Supervisor) -> None:
    job = rsup.schedule(T.stamp, every=0.05, delay=0, name="tick")
    wait_for(lambda: rsup.stats()["by_state"]["COMPLETED"] >= 3)
    assert job.cancel() is True
    assert len(job.runs) >= 3
    assert rsup.stats()["workers_alive"] == 2


def test_a_task_can_be_awaited(rsup: Supervisor) -> None:
    async def main() -> int:
        return await rsup.submit(T.add, 2, 3)

    assert asyncio.run(main()) == 5


def test_the_port_listens_on_loopback_and_turns_away_a_stranger(
    rsup: Supervisor, tmp_path: Path
) -> None:
    rsup.submit(T.square, 1).result(timeout=WAIT)
    # Ray's processes (children of this one) and this supervisor: loopback only.
    listening = []
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            listening += [c.laddr.ip for c in proc.net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN]
    assert listening and set(listening) <= {"127.0.0.1", "::ffff:127.0.0.1"}
    host, port = rsup._pool.address  # type: ignore[attr-defined]
    assert host == "127.0.0.1"
    with socket.create_connection((host, port), timeout=WAIT) as stranger:
        stranger.settimeout(WAIT)
        assert len(stranger.recv(16)) == 16  # the nonce
        # A hello with a wrong MAC, then a pickle that would leave a mark if it were
        # ever unpickled: the supervisor closes the connection unread.
        mark = tmp_path / "unpickled"
        stranger.sendall(b"TWR1" + bytes(45) + f"cos\nsystem\n(S'touch {mark}'\ntR.".encode())
        # Closed unread: an end, or a reset (what was sent is still unread), as good.
        with contextlib.suppress(ConnectionResetError):
            assert stranger.recv(16) == b""
    assert not mark.exists()
    assert rsup.submit(T.square, 2).result(timeout=WAIT) == 4


def test_runs_handed_ahead_to_a_busy_worker_are_taken_back_for_the_idle_one(
    rsup: Supervisor,
) -> None:
    """The take-back (skip, and the nudge over the agent's connection) works on Ray:
    work queued behind a task holding the GIL does not wait for it."""
    rsup.submit(T.square, 0).result(timeout=WAIT)
    busy = rsup.submit(T.hold_the_gil, 5.0)
    wait_for(lambda: busy.state == "RUNNING")
    assert list(rsup.map(T.square, range(50))) == [x * x for x in range(50)]
    assert not busy.done()
    busy.cancel()


def test_a_bad_actor_option_fails_the_construction(local_ray: None) -> None:
    with pytest.raises(ValueError, match="num_cpu"):
        Supervisor(workers=1, engine="ray", ray_options={"num_cpu": 1})
