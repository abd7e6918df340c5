"""Finding and killing a process tree: used by the pool (a worker's tree) and by a
worker itself (its task's children, when its supervisor is gone).

The tree is read from ``/proc/<pid>/task/*/children``, which is fast but racy:
threads and processes come and go while it is read. Each vanished entry is
skipped, not the whole walk; and before a process's children are read it is
stopped (SIGSTOP), so that it can neither start a new child nor end the thread
that owns one (that child would move to a thread already read) under the walk.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

STOP_WAIT = 0.005  # how long to wait for a SIGSTOP to take hold before reading on anyway


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``; a thread or the process vanishing is no error."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return out  # the process is gone
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                text = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue  # that thread ended just now
        out.extend(int(c) for c in text.split())
    return out


def _have_proc_children() -> bool:
    return os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _stopped(pid: int) -> bool:
    """True once ``pid`` is stopped, dead or gone (read from /proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state in (b"T", b"t", b"Z", b"X", b"")


def _freeze(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGSTOP)
    # The signal takes hold when the process next enters the kernel (at once, unless it
    # runs on another CPU at this moment, or sleeps uninterruptibly: then it cannot
    # fork either). Wait a moment for it, never long.
    deadline = time.monotonic() + STOP_WAIT
    while not _stopped(pid) and time.monotonic() < deadline:
        pass


def descendants(pid: int, *, freeze: bool = False) -> list[int]:
    """Every descendant of ``pid``, parents before children. With ``freeze``, each
    process is stopped before its children are read (``pid`` itself too, unless it
    is this process), so that the list is complete when it returns."""
    if not _have_proc_children():
        import psutil  # no /proc/<pid>/task/*/children here: psutil scans every process

        try:
            return [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    found: list[int] = []
    if freeze and pid != os.getpid():
        _freeze(pid)
    frontier = [pid]
    while frontier:
        kids: list[int] = []
        for p in frontier:
            for c in _children(p):
                if freeze:
                    _freeze(c)
                kids.append(c)
        found.extend(kids)
        frontier = kids
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (as loky's kill_process_tree does).

    The tree is read (each process stopped first) before anything is killed,
    since the children of a dead process are handed to init and could no longer
    be found. A daemon that detached itself (double fork) before the walk
    escapes, as under every process pool.
    """
    found = descendants(pid, freeze=True)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for child in reversed(found):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def kill_own_tree() -> None:
    """SIGKILL every descendant of this process (a worker whose supervisor is gone
    takes its task's children with it). Passes are repeated while new ones appear,
    since this process's own threads may still be starting children."""
    for _ in range(3):
        found = descendants(os.getpid(), freeze=True)
        if not found:
            return
        for child in reversed(found):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
