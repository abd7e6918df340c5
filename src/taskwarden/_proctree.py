"""Process trees: finding and killing a process and everything under it.

Used by the pool (a worker's tree, killed from the loop: ``kill_tree``), by a
worker itself (its task's children, when its supervisor is gone:
``kill_own_tree``) and by the command line (what a run leaves behind:
``become_subreaper``, ``leftovers``, ``kill_trees``, ``reap_zombie_children``).

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
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

STOP_WAIT = 0.005  # how long to wait for a SIGSTOP to take hold before reading on anyway
KILL_WAIT = 5.0  # seconds kill_trees waits for killed processes to die
_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
_READ_SIZE = 65536


def read_proc(path: str, *, one_record: bool = False) -> bytes | None:
    """The whole of a /proc file, or None if it cannot be read (the process is gone).

    ``os.open``/``os.read`` rather than ``open()``: no buffer or text layer to
    build, which is most of the cost of a small /proc read from Python. A
    /proc file is made as it is read (seq_file), a read returning whole
    records up to a page or so: with ``one_record`` (``stat``, ``status``,
    ``smaps_rollup``: one record each, always returned whole), one read is
    the whole file; otherwise (``children``: a record per child) reads go on
    to the end.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = [os.read(fd, _READ_SIZE)]
        while chunks[-1] and not one_record:
            chunks.append(os.read(fd, _READ_SIZE))
        return b"".join(chunks)
    except OSError:  # ESRCH: the process exited between open and read
        return None
    finally:
        os.close(fd)


def _children(pid: int, *, single_threaded: bool = False) -> list[int]:
    """Direct children of ``pid``; a thread or the process vanishing is no error.

    Each thread has its own list (a child is listed under the thread that
    started it). ``single_threaded`` (the caller has just read that ``pid``
    has one thread) reads the main thread's alone, without listing the threads.
    """
    out: list[int] = []
    try:
        tids = [str(pid)] if single_threaded else os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return out  # the process is gone
    for tid in tids:
        text = read_proc(f"/proc/{pid}/task/{tid}/children")
        if text:  # None: that thread ended just now
            out.extend(map(int, text.split()))
    return out


_proc_children: bool | None = None


def _have_proc_children() -> bool:
    global _proc_children
    if _proc_children is None:
        _proc_children = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    return _proc_children


def _state(stat: bytes) -> bytes:
    """The state letter of a /proc/<pid>/stat line (after the command name, which may
    itself hold spaces and ")"); b"" if the line is cut short."""
    end = stat.rfind(b")")
    return stat[end + 2 : end + 3]


def _stopped(pid: int) -> bool:
    """True once ``pid`` is stopped, dead or gone (read from /proc/<pid>/stat)."""
    stat = read_proc(f"/proc/{pid}/stat", one_record=True)
    return stat is None or _state(stat) in (b"T", b"t", b"Z", b"X", b"")


_yield_cpu = getattr(os, "sched_yield", lambda: None)


def _freeze(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGSTOP)
    # The signal takes hold when the process next runs in the kernel (at once, unless it
    # runs on another CPU at this moment, or sleeps uninterruptibly: then it cannot
    # fork either). Wait a moment for it, never long. A sleeping process must be
    # scheduled to stop: the wait yields the CPU rather than spin on it, since the
    # process may be queued behind this thread (on a busy 2-core machine, killing a
    # sleeping 3-process tree took 5.6 ms spinning, 1.5 ms yielding).
    deadline = time.monotonic() + STOP_WAIT
    while not _stopped(pid) and time.monotonic() < deadline:
        _yield_cpu()


def children(pid: int, *, single_threaded: bool = False) -> list[int]:
    """Direct children of ``pid`` (see ``_children``; where /proc has no children
    lists, psutil's scan of every process)."""
    if _have_proc_children():
        return _children(pid, single_threaded=single_threaded)
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children()]
    except psutil.Error:
        return []


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


# ------------------------------------------------ the command line's runs (psutil)
# psutil (and ctypes) are imported in each function: a worker imports this module,
# and boots without them.


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux); True if it is.

    Process-wide, so only for processes the command line owns (itself and its
    workers), never for a library caller.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # here: a worker imports this module, and boots without ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def leftovers(under: int | None = None) -> list[psutil.Process]:
    """Every descendant of ``under`` (default: this process), zombies included.

    Read from the /proc children lists (``descendants``: microseconds), not
    psutil's ``children(recursive=True)``, which reads every process on the
    machine (milliseconds, on every run's sweep). Like any listing it is a
    moment's: a process forked while it is read may be missed. What that
    leaves is found when the process that forked it is killed (its orphans
    come to the subreaper, and the command line sweeps again).
    """
    import psutil

    found: list[psutil.Process] = []
    for pid in descendants(os.getpid() if under is None else under):
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(pid))
    return found


def reap_zombie_children() -> None:
    """Reap this process's children that have already exited (orphans handed to us)."""
    if not _have_proc_children():
        import psutil

        for child in leftovers():
            with contextlib.suppress(psutil.Error, ChildProcessError, OSError):
                if child.ppid() == os.getpid() and child.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(child.pid, os.WNOHANG)
        return
    for pid in _children(os.getpid()):
        stat = read_proc(f"/proc/{pid}/stat", one_record=True)
        if stat is not None and _state(stat) == b"Z":
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)


def kill_trees(roots: Iterable[psutil.Process], *, reaped_elsewhere: int | None = None) -> None:
    """SIGKILL every process in ``roots`` and all their descendants, then wait for them.

    Unlike ``kill_tree`` (the loop's, which must not wait), this one waits, and
    works on psutil processes: psutil checks each one's start time, so a
    recycled pid is never killed by mistake. Processes are collected before any
    is killed, so that children cannot slip away to init between kills. The
    process whose pid is ``reaped_elsewhere`` is killed but not waited for
    here: another thread reaps it (with ``os.wait4``, to read its resource usage).
    """
    import psutil

    victims: dict[int, psutil.Process] = {}
    for root in roots:
        victims.setdefault(root.pid, root)
        with contextlib.suppress(psutil.Error):
            for child in root.children(recursive=True):
                victims.setdefault(child.pid, child)
    for proc in victims.values():
        with contextlib.suppress(psutil.Error):
            proc.kill()
    deadline = time.monotonic() + KILL_WAIT
    for pid, proc in victims.items():
        if pid != reaped_elsewhere:
            _wait_gone(proc, deadline)


def _wait_gone(proc: psutil.Process, deadline: float) -> None:
    """Wait until ``proc`` is dead: reaped if it is our child, else gone or a zombie
    (its new parent, often init, reaps it in its own time)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        if proc.ppid() == os.getpid():
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            return
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        except psutil.Error:
            pass
        time.sleep(0.005)
