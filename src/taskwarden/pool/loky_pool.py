"""Worker processes started through loky's process context, one channel each.

Each worker gets its own socket pair, so the supervisor always knows which
process runs which task and can kill exactly that process tree. Where it can
(Linux), the pool forks its workers from a template process
(``pool/_template.py``): a fork request is one small write from the loop and
the worker is ready in a few milliseconds; the template's exit-status reports
and the workers' pidfds come back to the loop through the reactor. The first
worker starts the plain way (the first result waits for one interpreter's
start, not for the template's and then a fork's), and its process starts as
soon as the pool is bound, in the Supervisor's constructor: the loop's first
round adopts it (a cold start is mostly that interpreter's start). The
template starts beside it where each start has a CPU, else once it is READY.
Other plain starts (where there is no fork or pidfds, or the template cannot
start: a fork and an exec each) happen on a small spawner
thread so that the loop never waits for them: the spawner hands a started
process over through a deque and wakes the loop. A worker's death
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
import select
import signal
import threading
from collections import deque
from typing import Any

from loky.backend.context import cpu_count, get_context

from .._proctree import kill_tree
from ._channel import Channel
from ._template import Forker, modules_of
from ._wire import RunItem
from ._worker import INTERRUPT_SIGNAL, NUDGE_SIGNAL, worker_process
from .base import Event, InitFailed, Reactor, WorkerExited, WorkerReady

FIRST_WID = 1  # the core numbers its workers from 1: the first worker's name
# loky's context starts two resource-tracker processes (interpreter starts, as a
# worker's) with the first process it starts in a program: that start is this
# module's first, unless another start through loky's context came before.
_started_any = False
# The events that end a worker's start (its READY, or its end), for a held template.
_START_OVER = (WorkerReady, WorkerExited, InitFailed)


class _Forked:
    """A worker forked by the template (pool/_template.py): its pid, and the pidfd the
    template sent. The pool owns the pidfd: its exit watch, and what signals go through
    (the worker is not the pool's child: once dead, its pid could be another's)."""

    __slots__ = ("pid", "pidfd")

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd


class _Proc:
    """One worker: its channel, and, once the spawner handed it over, its process."""

    __slots__ = ("chan", "conn", "exit_fd", "exit_pending", "fresh", "pid", "process", "wid")

    def __init__(self, wid: int, chan: Channel) -> None:
        self.wid = wid
        self.chan = chan
        self.process: Any = None  # None while starting
        self.conn: Any = None
        self.pid = 0
        self.exit_fd: int = -1
        self.exit_pending = False  # dead; its exit status is still to come from the template
        self.fresh = True  # no runs sent yet: the first ones name modules to preload


class LokyPool:
    """The process engine behind ``Supervisor``. Only the loop thread calls it."""

    # Does the template start beside the first worker (True), or once that worker has
    # started (False)? None: beside it where each process starting then has a CPU of
    # its own (see ``_beside_first``). (A class attribute: tests set it.)
    template_beside_first: bool | None = None

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
        # Reads land here (no buffer each). Made at the first spawn(), not now: a fresh
        # MiB costs ~0.6 ms of page faults, which the first worker's start need not wait for.
        self._scratch: memoryview | None = None
        self._doomed: set[int] = set()  # killed while starting: killed once handed over
        self._killed: list[_Proc] = []
        self._first: tuple[Any, Any] | None = None  # started in bind(): the first spawn's
        self._held_for = 0  # the first worker's wid while the template waits for its start
        self._trackers_start = False  # loky's resource trackers start with the first worker
        # Where it can, the pool forks its workers from a template process (a few ms
        # each, not a process start); else, or if that fails, the spawner thread starts
        # them through loky's context.
        self._forker = Forker(
            self._ctx, (id_base, init_payload, max_memory), modules_of(init_payload),
            on_spawned=self._on_forked, on_failed=self._spawn_plain,
            on_status=self._on_status,
        )

    def bind(self, reactor: Reactor) -> None:
        self._reactor = reactor
        self._forker.bind(reactor)
        # A cold start is mostly the first worker's interpreter starting: start it now,
        # in the Supervisor's constructor, rather than a thread hand-off after the loop's
        # first round (the first spawn() adopts it, and starts the template beside it).
        global _started_any
        self._trackers_start = not _started_any
        try:
            self._first = self._start_process(FIRST_WID)
            _started_any = True
        except Exception:
            self._first = None  # the first spawn() goes the usual way (and reports it)

    # ---------------------------------------------------------------- spawning
    def spawn(self, wid: int) -> None:
        reactor = self._reactor
        assert reactor is not None, "bind() the pool to the loop's reactor first"
        if self._scratch is None:
            self._scratch = memoryview(bytearray(1 << 20))
        chan = Channel(wid, reactor, self._events, self._scratch,
                       nudge=lambda: self._signal(wid, NUDGE_SIGNAL),
                       on_garbled=lambda: self._kill_garbled(wid))
        self._procs[wid] = _Proc(wid, chan)
        first, self._first = self._first, None
        if first is not None:
            self._adopt(wid, *first)  # started in bind()
            if not self._beside_first():
                self._held_for = wid
                self._forker.start(hold=True)
        elif not self._forker.request(wid):
            self._spawn_plain(wid)
        # (The first spawn: the template starts now, on a thread of its own. Not in
        # bind(): the constructor would wait for the GIL while that thread starts it.)
        self._forker.start()

    def _beside_first(self) -> bool:
        """Does the template start beside the first worker, or once it is READY? A
        start is mostly CPU work (an interpreter's, and its imports): with fewer CPUs
        than processes starting (the first worker, the template, and with a
        program's first worker loky's two resource trackers), each start slows the
        others, and the first result waits for the first worker's. With an
        initializer, beside it: its READY comes once the initializer has returned,
        which may take long."""
        if self.template_beside_first is not None:
            return self.template_beside_first
        if self._init_payload is not None:
            return True
        starting = 4 if self._trackers_start else 2
        try:
            return int(cpu_count()) >= starting
        except Exception:  # pragma: no cover - loky could not tell
            return True

    def _spawn_plain(self, wid: int) -> None:
        """Start a worker through loky's context, on the spawner thread."""
        reactor = self._reactor
        assert reactor is not None
        if self._spawner is None:
            self._spawner = threading.Thread(
                target=self._spawn_loop, args=(reactor,), name="taskwarden-spawner",
                daemon=True,
            )
            self._spawner.start()
        self._spawn_q.put(wid)

    def _on_forked(self, wid: int, sock: Any, pid: int, pidfd: int) -> None:
        """The template forked ``wid``: adopt it as the spawner's processes are."""
        if wid not in self._procs:  # pragma: no cover - every fork asked is for a _Proc
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
            sock.close()
            return
        self._adopt(wid, _Forked(pid, pidfd), sock)
        if wid in self._doomed:
            self._doomed.discard(wid)
            self.kill(wid)

    def _on_status(self, wid: int) -> None:
        """The template said how a worker ended: report it if its death is waiting."""
        p = self._procs.get(wid)
        if p is not None and p.exit_pending:
            self._reap(p, block=False)

    def _spawn_loop(self, reactor: Reactor) -> None:
        while True:
            wid = self._spawn_q.get()
            if wid is None:
                return
            try:
                process, parent_conn = self._start_process(wid)
            except Exception:
                self._spawned.append((wid, None, None))
            else:
                self._spawned.append((wid, process, parent_conn))
            reactor.wake()

    def _start_process(self, wid: int) -> tuple[Any, Any]:
        """Start a worker process through loky's context: (process, our end of its
        channel). Blocks for the process start (a fork and an exec), not its boot."""
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        try:
            process = self._ctx.Process(
                target=worker_process,
                args=(child_conn, self._id_base, self._init_payload, self._max_memory),
                name=f"taskwarden-worker-{wid}",
            )
            process.start()
        except BaseException:
            parent_conn.close()
            raise
        finally:
            child_conn.close()
        # Only this pool reaps its workers. multiprocessing's own bookkeeping would reap
        # a dead one on the next Process.start() or active_children() anywhere in the
        # program (its waitpid racing ours), and the exit status of a crash would be lost.
        vars(multiprocessing.process)["_children"].discard(process)
        return process, parent_conn

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
        if isinstance(process, _Forked):
            p.exit_fd = process.pidfd
        else:
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
            if p.fresh:
                # Only a new worker's first batch is read (never every payload): the
                # template imports their modules, so its next workers have them.
                p.fresh = False
                self._forker.learn(runs)
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
        if p is None or not p.pid:
            return
        if isinstance(p.process, _Forked):
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(p.exit_fd, signum)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signum)

    def interrupt(self, wid: int, seq: int) -> None:
        p = self._procs.get(wid)
        if p is not None and p.process is not None and not p.chan.dead:
            self._signal(wid, INTERRUPT_SIGNAL)

    def kill(self, wid: int) -> bool:
        """SIGKILL a worker's tree; True if a process will be reported gone later."""
        p = self._procs.get(wid)
        if p is None:
            return False  # already gone (reaped earlier in this round)
        if p.process is None:
            if self._forker.cancel(wid):
                # Still waiting for the template to start: no process was ever made.
                del self._procs[wid]
                self._events.append(WorkerExited(wid, None))
                return False
            # Not handed over yet: kill it as soon as the spawner hands it over.
            self._doomed.add(wid)
            return True
        self._kill_tree(p)
        # The process dies in the background (its exit fd reports it); settle() waits.
        # Nothing more is read from or written to it.
        p.chan.cut()
        self._killed.append(p)
        return True

    def _kill_tree(self, p: _Proc) -> None:
        if isinstance(p.process, _Forked) and _exited(p.exit_fd):
            return  # dead already; its pid may be another's (if its template died too)
        kill_tree(p.pid)

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
        return bool(self._events) or bool(self._spawned) or self._forker.has_news()

    def take_events(self) -> list[Event]:
        if self._forker.has_news():
            self._forker.take_news()  # the template is up (or will not be)
        if self._spawned:
            self._take_spawned()
        if not self._events:
            return []
        events = self._events[:]  # the channels hold this list: it is emptied, not replaced
        self._events.clear()
        if self._held_for:
            held = self._held_for
            if any(e.wid == held and isinstance(e, _START_OVER) for e in events):
                # The first worker's start is over (READY, or its end): the template's now.
                # (Not any event naming it: a run skipped before its READY is one.)
                self._held_for = 0
                self._forker.release()
        return events

    def _on_exit(self, p: _Proc) -> None:
        p.chan.read()  # what it wrote before it died
        self._reap(p, block=False)

    def _reap(self, p: _Proc, *, block: bool) -> None:
        if p.wid not in self._procs:
            return
        code: int | None
        if isinstance(p.process, _Forked):
            if block:
                select.select([p.exit_fd], [], [])  # killed (always, here): gone at once
            if p.chan.killed and p.chan.crash is None:
                # Killed on the loop's word: nobody reads its exit status (the core let
                # go of it already), so it is reported once its pidfd says it is gone,
                # without waiting for the template's word.
                known, code = self._forker.exit_status(p.wid, block=False)
            else:
                # The template holds its exit status and says it a moment after the
                # death; with ``block``, wait for it here.
                known, code = self._forker.exit_status(p.wid, block=block)
                if not known:
                    if not p.exit_pending:
                        p.exit_pending = True
                        if self._reactor is not None:
                            self._reactor.unwatch(p.exit_fd)
                    return  # _on_status() comes back here
            if p.wid not in self._procs:
                return  # reported meanwhile (while waiting for the template)
        del self._procs[p.wid]
        if p.chan.killed and p in self._killed:
            self._killed.remove(p)
        if isinstance(p.process, _Forked):
            self._forker.done(p.wid)  # the template may reap it now
        else:
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
        first, self._first = self._first, None
        if first is not None:  # started in bind(), never asked for
            process, conn = first
            kill_tree(process.pid)
            process.join()
            conn.close()
        self._spawn_q.put(None)
        if self._spawner is not None:
            self._spawner.join()
        self._forker.drain()  # forks asked of the template: adopted, so killed below
        self._take_spawned()
        started = [p for p in self._procs.values() if p.process is not None]
        for p in started:  # never started: the spawner stopped first
            self._kill_tree(p)
        for p in started:
            self._reap(p, block=True)
        self._forker.close()
        self._procs.clear()
        self._events.clear()


def _exited(pidfd: int) -> bool:
    """Has the process behind ``pidfd`` ended?"""
    return bool(select.select([pidfd], [], [], 0)[0])


__all__ = ["LokyPool", "kill_tree"]
