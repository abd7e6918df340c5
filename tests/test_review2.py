"""A second hostile review of the issue 12 work (the lean Run, the START heap, the
schedule()/submit() fast path, the plain first worker beside the template, exit_process):
each test here failed on the code it fixes."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from taskwarden import Supervisor
from taskwarden.pool import _template

import _tasks as T
from _live import WAIT, forked_workers_only, use_workers, wait_for

needs_template = pytest.mark.skipif(not _template.supported(), reason="no fork/pidfd here")

HOLD = 8.0  # how long a stray child of the supervisor's process keeps its copies


@needs_template
@pytest.mark.parametrize("template_state", ["starting", "up"])
def test_a_child_forked_while_the_template_starts_does_not_hold_up_shutdown(
    monkeypatch: pytest.MonkeyPatch, template_state: str
) -> None:
    # A process forked off the supervisor's own while the template process is being
    # started (os.fork, a fork-context multiprocessing child) holds copies of both ends
    # of the template's control socket. The template's death is then no end-of-file
    # for the start waiting on its hello, and the pool's closing of its end no EOF for
    # the template: the socket itself must be shut down, not only closed.
    from loky.backend.process import LokyProcess

    forked = threading.Event()
    holder: list[int] = []
    r, w = os.pipe()
    real_start = LokyProcess.start

    def start(self: Any) -> None:
        real_start(self)
        if self.name == "taskwarden-worker-template" and not holder:
            if template_state == "starting":
                os.kill(self.pid, signal.SIGSTOP)  # no hello: its start stays in progress
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the stray child: holds its copies a while
                os.close(w)
                select.select([r], [], [], HOLD)
                os._exit(0)
            holder.append(pid)
            forked.set()

    monkeypatch.setattr(LokyProcess, "start", start)
    killed: list[int] = []  # templates killed, not left on their own
    real_sigkill = _template._sigkill

    def sigkill(pid: int) -> None:
        killed.append(pid)
        real_sigkill(pid)

    monkeypatch.setattr(_template, "_sigkill", sigkill)
    template = 0
    try:
        s = Supervisor(workers=1)
        assert forked.wait(WAIT)
        if template_state == "up":
            forker = s._pool._forker  # type: ignore[attr-defined]
            wait_for(lambda: forker.state == "up")
            template = forker.template.pid
        began = time.monotonic()
        s.shutdown(wait=True)
        took = time.monotonic() - began
    finally:
        os.close(w)  # the child reads EOF and leaves
        os.close(r)
        for pid in holder:
            os.waitpid(pid, 0)
    # Without the fix: starting, the shutdown waited until the child left (HOLD here,
    # START_TIMEOUT in life: 60 s); up, the template was killed after its 1 s grace.
    assert took < HOLD / 2
    assert template not in killed  # (up: it saw the end-of-file and left on its own)


@pytest.mark.parametrize("kind", ["plain", "forked"])
def test_a_worker_a_task_left_a_thread_in_still_runs_its_exit_hooks(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A thread a task left running must not keep the worker alive, and does not: but the
    # way out it took (os._exit at once) skipped the exit hooks that exit_process runs.
    use_workers(kind, monkeypatch)
    path = tmp_path / "exits"
    with Supervisor(workers=1, initializer=T.note_pid_at_exit, initargs=(str(path),)) as s:
        s.submit(T.pid).result(timeout=WAIT)
        if kind == "forked":
            forked_workers_only(s, 1)
        pid = s.submit(T.leave_a_thread_running).result(timeout=WAIT)
    assert pid in {int(x) for x in path.read_text().split()}


# The test's program: forks through libc once its supervisor is quiet, and prints what the
# child was told and the parent's next result.
_LIBC_FORK = """
import ctypes, os, sys, time
from taskwarden import Supervisor
import _tasks as T

# PyDLL: the call keeps the GIL, as a C extension's fork() does (through CDLL a parent
# thread taking the GIL during the call holds it forever in the child).
libc = ctypes.PyDLL(None, use_errno=True)
with Supervisor(workers=1) as sup:
    assert sup.submit(T.square, 2).result(timeout=20) == 4
    # Fork once the supervisor is quiet (worker and spare up, its template up: no thread
    # starting one). A thread that asks for the GIL just before the fork leaves a drop
    # request behind, and the child (whose fork hooks a libc fork skips) waits forever to
    # hand the GIL over at its next check. Nothing tells when the loop's round after the
    # last stats() has parked it in its wait again: a moment's sleep covers that round.
    forker = sup._pool._forker
    end = time.monotonic() + 20
    while not (sup.stats()["workers_alive"] == 2 and forker.state in ("up", "off")):
        assert time.monotonic() < end, "the supervisor did not settle"
        time.sleep(0.01)
    time.sleep(0.2)
    r, w = os.pipe()
    pid = libc.fork()
    if pid == 0:  # the child: no thread of the supervisor's runs here
        said = b""
        for call in (lambda: sup.submit(T.square, 3),
                     lambda: sup.schedule(T.square, args=(3,), delay=5)):
            try:
                call()
                said += b"accepted;"
            except RuntimeError:
                said += b"refused;"
            except BaseException:
                said += b"other;"
        os.write(w, said)
        os._exit(0)
    os.close(w)
    got = b""
    while chunk := os.read(r, 100):
        got += chunk
    os.waitpid(pid, 0)
    print(got.decode(), sup.submit(T.square, 5).result(timeout=20))
"""


@pytest.mark.timeout(60)
def test_a_supervisor_in_a_child_forked_through_libc_refuses_work() -> None:
    """A fork that skips Python's fork hooks (libc's fork() through ctypes or a C
    extension): submit() and schedule() must still refuse at the call, not accept a task
    that nothing there would ever run. In a program of its own: a thread another test left
    behind could ask for the GIL at the fork (see _LIBC_FORK)."""
    here = str(Path(__file__).parent)
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", _LIBC_FORK], capture_output=True, text=True,
                         env=env, timeout=50, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["refused;refused;", "25"]  # and the parent's goes on
