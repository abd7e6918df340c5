"""Helpers for tests against live supervisors: wait on a condition, tell a process gone,
run a supervisor's loop on a fake clock."""

from __future__ import annotations

import contextlib
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from taskwarden import Supervisor
from taskwarden.pool import _template

WAIT = 20.0  # generous bound for anything that should take milliseconds


def wait_for(cond: Callable[[], object], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.002)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def read_pid(path: Path) -> int:
    wait_for(lambda: path.exists() and path.read_text().strip())
    return int(path.read_text())


class FakeClock:
    """A clock for the supervisor's loop that moves only when told (``advance``); it
    starts at the real clocks' readings. Give it to a live Supervisor with
    ``supervisor_on``: schedules of minutes or hours then fire in no time.

    The pool's workers still live in real time: a run handed out ahead of its start
    (``LEAD`` early) tells its worker to wait for that instant on the real clock, so
    advance past a start, not to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now = time.monotonic()
        self._offset = time.time() - self._now
        self._wakes: list[Callable[[], None]] = []

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._offset

    def wait_timeout(self, deadline: float) -> float | None:
        return 0.0 if deadline <= self._now else None  # None: until advance() wakes it

    def on_change(self, wake: Callable[[], None]) -> None:
        with self._lock:
            self._wakes.append(wake)

    def advance(self, seconds: float) -> None:
        """Move on by ``seconds``, and wake every loop waiting on this clock."""
        with self._lock:
            self._now += seconds
            wakes = list(self._wakes)
        for wake in wakes:
            wake()


def supervisor_on(clock: FakeClock, **kw: Any) -> Supervisor:
    """A Supervisor whose loop (its deadlines, its wait, the times its calls read) runs
    on ``clock``."""
    cls = type("FakeClockSupervisor", (Supervisor,), {"_clock": clock})
    return cls(**kw)


def busy_parent_script(path: Path, then: str) -> Path:
    """A program that starts a two-worker Supervisor with a task running and every worker
    (the spare too) up, then runs ``then`` (source, with ``s`` the Supervisor): what a
    test kills, to see what its workers do."""
    path.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from taskwarden import Supervisor
        import _tasks
        s = Supervisor(workers=2)
        t = s.submit(_tasks.sleep, 60)
        while t.state != "RUNNING" or len(s._pool.pids()) < 3:
            time.sleep(0.01)
    """) + textwrap.dedent(then))
    return path


def forked_workers_only(s: Supervisor, workers: int) -> int:
    """The pid of ``s``'s template process, once the pool (``workers`` and the spare)
    is all workers it forked. The pool's first worker starts the plain way (beside the
    template's own start): it is killed here, idle, and replaced from the template."""
    import os
    import signal

    pool: Any = s._pool  # type: ignore[attr-defined]
    wait_for(lambda: pool._forker.template is not None)
    template: int = pool._forker.template.pid

    def every_worker_forked() -> bool:
        try:
            pids = list(pool.pids().values())  # (read from this thread: it may change)
            parents = [psutil.Process(p).ppid() for p in pids]
        except (RuntimeError, psutil.NoSuchProcess):
            return False
        for pid, parent in zip(pids, parents, strict=True):
            if parent != template:
                with contextlib.suppress(ProcessLookupError):  # (killed a moment ago)
                    os.kill(pid, signal.SIGKILL)
        return len(pids) == workers + 1 and all(parent == template for parent in parents)

    wait_for(every_worker_forked)
    return template


class LoopFatal(BaseException):
    """What ``break_the_loop`` raises in the loop: no Exception, so nothing contains it."""


def break_the_loop(s: Supervisor) -> None:
    """Make the supervisor's loop die at its next round (its Tick raises, once)."""
    real = s._core._advance  # what handle() calls for a Tick

    def advance(now: float) -> None:
        s._core._advance = real  # type: ignore[method-assign]
        raise LoopFatal("the loop cannot go on")

    s._core._advance = advance  # type: ignore[method-assign]
    s._reactor.wake()


def use_workers(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers of one kind for the test: "plain" (no template), or "forked" from the
    template (skipped where there is none)."""
    if kind == "plain":
        monkeypatch.setattr(_template, "supported", lambda: False)
    elif not _template.supported():
        pytest.skip("no fork/pidfd here")
