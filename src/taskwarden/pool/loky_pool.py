"""Worker processes started through loky's process context, one channel each.

Each worker gets its own socket pair, so the supervisor always knows which
process runs which task and can kill exactly that process tree. Process
starts (a few milliseconds of fork and exec each) happen on a small
spawner thread so that the loop never waits for them: the spawner hands a
started process over through a deque and wakes the loop. A worker's death
is seen through a pidfd (Linux) or loky's sentinel, without polling. The
pool waits on nothing itself: its sockets and pidfds are watched by the
loop's reactor, and their callbacks gather events for ``take_events``.

What a worker's channel carries is the ``Channel``'s business
(``pool/_channel.py``); what is particular to a local process (its pid,
signals to nudge or interrupt it, its exit, reaping, killing its tree) is
this module's.
"""

from __future__ import annotations

import contextlib
import multiprocessing.process
import os
import queue
import threading
from collections import deque
from typing import Any

from loky.backend.context import get_context

from .._proctree import kill_tree
from ._channel import Channel
from ._wire import RunItem
from ._worker import INTERRUPT_SIGNAL, NUDGE_SIGNAL, worker_main
from .base import Event, Reactor, WorkerExited


class _Proc:
    """One worker: its channel, and, once the spawner handed it over, its process."""

    __slots__ = ("chan", "conn", "exit_fd", "pid", "process", "wid")

    def __init__(self, wid: int, chan: Channel) -> None:
        self.wid = wid
        self.chan = chan
        self.process: Any = None  # None while starting
        self.conn: Any = None
        self.pid = 0
        self.exit_fd: int = -1


class LokyPool:
    """The process engine behind ``Supervisor``. Only the loop thread calls it."""

    def __init__(
        self, id_base: int, init_payload: bytes | None, max_memory: int | None = None
    ) -> None:
        self._ctx = get_context("loky")
        self._id_base = id_base
        self._init_payload = init_payload
        self._max_memory = max_memory
        self._reactor: Reactor | None = None
        self._procs: dict[int, _Proc] = {}  # started or starting, until reaped
        self._spawn_q: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._spawned: deque[tuple[int, Any, Any]] = deque()  # from the spawner thread
        self._spawner: threading.Thread | None = None
        self._events: list[Event] = []  # the channels append to it: never rebound
        self._scratch = memoryview(bytearray(1 << 20))  # reads land here: no buffer each
        self._doomed: set[int] = set()  # killed while starting: killed once handed over
        self._killed: list[_Proc] = []

    def bind(self, reactor: Reactor) -> None:
        self._reactor = reactor

    # ---------------------------------------------------------------- spawning
    def spawn(self, wid: int) -> None:
        reactor = self._reactor
        assert reactor is not None, "bind() the pool to the loop's reactor first"
        if self._spawner is None:
            self._spawner = threading.Thread(
                target=self._spawn_loop, args=(reactor,), name="taskwarden-spawner",
                daemon=True,
            )
            self._spawner.start()
        chan = Channel(wid, reactor, self._events, self._scratch,
                       nudge=lambda: self._signal(wid, NUDGE_SIGNAL),
                       on_garbled=lambda: self._kill_garbled(wid))
        self._procs[wid] = _Proc(wid, chan)
        self._spawn_q.put(wid)

    def _spawn_loop(self, reactor: Reactor) -> None:
        while True:
            wid = self._spawn_q.get()
            if wid is None:
                return
            try:
                parent_conn, child_conn = self._ctx.Pipe(duplex=True)
                process = self._ctx.Process(
                    target=worker_main,
                    args=(child_conn, self._id_base, self._init_payload, self._max_memory),
                    name=f"taskwarden-worker-{wid}",
                )
                process.start()
                # Only this pool reaps its workers. multiprocessing's own bookkeeping
                # would reap a dead one on the next Process.start() or
                # active_children() anywhere in the program (its waitpid racing ours),
                # and the exit status of a crash would be lost.
                multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]
                child_conn.close()
            except Exception:
                self._spawned.append((wid, None, None))
            else:
                self._spawned.append((wid, process, parent_conn))
            reactor.wake()

    def _take_spawned(self) -> None:
        while self._spawned:
            wid, process, conn = self._spawned.popleft()
            self._adopt(wid, process, conn)
            if wid in self._doomed:
                self._doomed.discard(wid)
                self.kill(wid)

    def _adopt(self, wid: int, process: Any, conn: Any) -> None:
        p = self._procs[wid]
        if process is None:
            del self._procs[wid]
            self._events.append(WorkerExited(wid, None))
            return
        reactor = self._reactor
        assert reactor is not None
        p.process = process
        p.conn = conn
        p.pid = process.pid
        p.chan.name = f"worker process {p.pid}"
        try:
            p.exit_fd = os.pidfd_open(p.pid)
        except (AttributeError, OSError):
            p.exit_fd = -1
        on_exit = lambda mask: self._on_exit(p)  # noqa: E731
        if p.exit_fd >= 0:
            reactor.watch(p.exit_fd, on_exit)
        else:  # pragma: no cover - no pidfd: loky's sentinel pipe
            reactor.watch(process.sentinel, on_exit)
        p.chan.attach(conn.fileno())  # what was sent while it started goes out now

    # ------------------------------------------------------------ the workers
    def send(self, wid: int, runs: list[RunItem]) -> None:
        p = self._procs.get(wid)
        if p is not None:
            p.chan.send(runs)

    def skip(self, wid: int, seq: int) -> None:
        p = self._procs.get(wid)
        if p is not None:
            p.chan.skip(seq)

    def stop(self, wid: int) -> None:
        p = self._procs.get(wid)
        if p is not None:
            p.chan.stop()

    def _signal(self, wid: int, signum: int) -> None:
        p = self._procs.get(wid)
        if p is not None and p.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signum)

    def interrupt(self, wid: int, seq: int) -> None:
        p = self._procs.get(wid)
        if p is not None and p.process is not None and not p.chan.dead:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, INTERRUPT_SIGNAL)

    def kill(self, wid: int) -> bool:
        """SIGKILL a worker's tree; True if a process will be reported gone later."""
        p = self._procs.get(wid)
        if p is None:
            return False  # already gone (reaped earlier in this round)
        if p.process is None:
            # Not handed over yet: kill it as soon as the spawner hands it over.
            self._doomed.add(wid)
            return True
        kill_tree(p.pid)
        # The process dies in the background (its exit fd reports it); settle() waits.
        # Nothing more is read from or written to it.
        p.chan.cut()
        self._killed.append(p)
        return True

    def _kill_garbled(self, wid: int) -> None:
        self.kill(wid)  # its exit reports the channel's ``crash``

    def settle(self) -> list[int]:
        """Wait until every process killed so far is gone (reaped); their worker ids."""
        gone = []
        while self._killed:
            p = self._killed.pop()
            if p.wid in self._procs:
                self._reap(p, block=True)
            gone.append(p.wid)
        return gone

    # ---------------------------------------------------------------- events
    def has_events(self) -> bool:
        return bool(self._events) or bool(self._spawned)

    def take_events(self) -> list[Event]:
        if self._spawned:
            self._take_spawned()
        if not self._events:
            return []
        events = self._events[:]  # the channels hold this list: it is emptied, not replaced
        self._events.clear()
        return events

    def _on_exit(self, p: _Proc) -> None:
        p.chan.read()  # what it wrote before it died
        self._reap(p, block=False)

    def _reap(self, p: _Proc, *, block: bool) -> None:
        if self._procs.pop(p.wid, None) is None:
            return
        if p.chan.killed and p in self._killed:
            self._killed.remove(p)
        popen = p.process._popen
        try:
            code = popen.poll(0 if block else os.WNOHANG)
        except OSError:
            code = None
        if code is None and not block:
            # The exit fd fired but the process is not reapable yet: wait for it.
            code = popen.poll(0)
        p.chan.detach()
        if self._reactor is not None:
            self._reactor.unwatch(p.exit_fd if p.exit_fd >= 0 else p.process.sentinel)
        with contextlib.suppress(OSError):
            p.conn.close()
        if p.exit_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(p.exit_fd)
        self._events.append(WorkerExited(p.wid, code, p.chan.crash))

    def alive(self) -> int:
        return len(self._procs)

    def pids(self) -> dict[int, int]:
        return {wid: p.pid for wid, p in self._procs.items() if p.process is not None}

    def close(self) -> None:
        self._spawn_q.put(None)
        if self._spawner is not None:
            self._spawner.join()
        self._take_spawned()
        for p in list(self._procs.values()):
            if p.process is None:
                continue  # never started (the spawner stopped first)
            kill_tree(p.pid)
            self._reap(p, block=True)
        self._procs.clear()
        self._events.clear()


__all__ = ["LokyPool", "kill_tree"]
