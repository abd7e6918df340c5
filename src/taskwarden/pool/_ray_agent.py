"""What runs on a Ray node: the agent actor of one worker slot.

The agent is a plain Ray actor, placed by Ray (with the slot's resource
requests), and never runs a task itself. For each worker it is given it
starts one worker process, its own child, that runs taskwarden's worker loop
(``_worker.worker_main``) over a TCP connection to the supervisor; the agent
keeps a control connection of its own (see ``_ray_link``)::

    supervisor ==data (frames)=================> worker process (child of the agent)
        ||                                              ^  signals, kill_tree, waitpid
        ++====control (GO/INTERRUPT/NUDGE/KILL)==> agent (Ray actor)

Being the worker's parent is what lets the agent do what Ray cannot: signal
the worker (the grace interrupt, the take-back nudge), kill its whole
process tree at once even while its task holds the GIL in C code (the agent
runs no task, so it always answers), and report the exit status the kernel
gives (a code, or the signal), which Ray does not know. The worker dies with
its agent (PR_SET_PDEATHSIG), and with its supervisor (its connection closes).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import subprocess
import sys
from typing import Any

from .._proctree import kill_tree
from . import _ray_link as L

CHILD_MODULE = "taskwarden.pool._ray_child"


class Agent:
    """The Ray actor behind one worker slot (``ray.remote`` is applied by the pool).

    It keeps the slot's next worker process started ahead of time (booted, its
    imports done, waiting for its boot data on stdin), as the local engine keeps a
    spare worker: a killed worker's replacement is up in milliseconds.
    """

    def __init__(self) -> None:
        self._next: subprocess.Popen[bytes] | None = None

    def pid(self) -> int:
        return os.getpid()

    def _start_child(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        # The worker imports what the agent can (Ray's working_dir, py_modules and
        # the like are on the agent's sys.path): the task's functions come by reference.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        return subprocess.Popen(
            [sys.executable, "-m", CHILD_MODULE], stdin=subprocess.PIPE, env=env, close_fds=True
        )

    def _take_child(self) -> subprocess.Popen[bytes]:
        child, self._next = self._next, None
        if child is not None and child.poll() is None:
            return child
        if child is not None:
            with contextlib.suppress(OSError):
                child.wait()
        return self._start_child()

    def serve(self, where: L.Where, secret: bytes, wid: int, boot: bytes) -> int | None:
        """Run one worker to its end: connect, wait for GO, start the worker process,
        carry out the supervisor's commands, report its exit. Returns the exit status
        (None if no worker was started)."""
        ctl = L.connect(where, secret, L.ROLE_CONTROL, wid)
        try:
            return self._serve(ctl, where, secret, wid, boot)
        finally:
            ctl.close()

    def _serve(self, ctl: Any, where: L.Where, secret: bytes, wid: int,
               boot: bytes) -> int | None:
        buf = bytearray()
        while True:  # nothing starts before the supervisor has accepted this agent
            chunk = ctl.recv(4096)
            if not chunk:
                return None  # the supervisor no longer wants this worker
            buf += chunk
            kinds = [kind for kind, _ in L.split_control(buf)]
            if L.KILL in kinds:
                return None
            if L.GO in kinds:
                break
        try:
            child = self._take_child()
        except OSError as exc:
            ctl.sendall(L.control(L.SPAWN_FAILED, exc.errno or 0))
            return None
        assert child.stdin is not None
        with contextlib.suppress(OSError):
            child.stdin.write(pickle.dumps((tuple(where), secret, wid, os.getpid(), boot)))
        with contextlib.suppress(OSError):
            child.stdin.close()
        ctl.sendall(L.control(L.STARTED, child.pid))
        with contextlib.suppress(OSError):
            self._next = self._start_child()  # the replacement, ready when needed
        code = _watch(ctl, child, buf)
        with contextlib.suppress(OSError):
            ctl.sendall(L.control(L.EXITED, code))
        return code


def _watch(ctl: Any, child: subprocess.Popen[bytes], buf: bytearray) -> int:
    """Carry out the supervisor's commands until the worker process has exited;
    its exit status (minus the signal number if a signal killed it)."""
    poller = select.poll()
    try:
        exit_fd = os.pidfd_open(child.pid)
    except (AttributeError, OSError):  # pragma: no cover - Linux < 5.3
        exit_fd = -1
    else:
        poller.register(exit_fd, select.POLLIN)
    poller.register(ctl.fileno(), select.POLLIN)
    ctl_open = True
    try:
        while True:
            if exit_fd < 0:  # pragma: no cover - no pidfd: look every 50 ms
                ready = poller.poll(50)
                if child.poll() is not None:
                    return child.returncode
            else:
                ready = poller.poll()
            for fd, _ in ready:
                if fd == exit_fd:
                    return child.wait()
                chunk = b""
                with contextlib.suppress(OSError):
                    chunk = ctl.recv(4096)
                if not chunk:
                    # The supervisor is gone: its worker goes too (it would notice its
                    # own connection closing, but not while holding the GIL).
                    poller.unregister(ctl.fileno())
                    ctl_open = False
                    kill_tree(child.pid)
                    continue
                buf += chunk
                for kind, _ in L.split_control(buf):
                    _command(kind, child.pid)
            if not ctl_open and exit_fd < 0:  # pragma: no cover
                return child.wait()
    finally:
        if exit_fd >= 0:
            os.close(exit_fd)


def _command(kind: bytes, pid: int) -> None:
    from ._worker import INTERRUPT_SIGNAL, NUDGE_SIGNAL

    if kind == L.KILL:
        kill_tree(pid)
    elif kind == L.INTERRUPT:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, INTERRUPT_SIGNAL)
    elif kind == L.NUDGE:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, NUDGE_SIGNAL)
