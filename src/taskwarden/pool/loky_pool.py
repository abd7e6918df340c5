"""Worker processes started through loky's process context, one channel each.

Each worker gets its own socket pair, so the supervisor always knows which
process runs which task and can kill exactly that process tree. Process
starts (a few milliseconds of fork and exec each) happen on a small
spawner thread so that the loop never waits for them; a worker's death is
seen through a pidfd (Linux) or loky's sentinel, without polling.

Whatever a worker's channel carries that is not a well-formed message (a task
that wrote into it, a corrupt frame) is that worker crashing: it is killed,
and its exit reports why. Nothing read from a worker raises in the loop.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.process
import os
import pickle
import queue
import select
import selectors
import signal
import threading
import time
from collections import deque
from typing import Any

from loky.backend.context import get_context

from .._errors import RemoteError, RemoteTraceback
from ._template import Forker, modules_of
from ._timer import make_timer
from ._tree import descendants as _descendants  # noqa: F401 - its old home
from ._tree import kill_tree
from ._wire import (
    BEAT,
    DONE,
    INIT_FAILED,
    READY,
    RETIRING,
    RUN,
    SKIP,
    SKIPPED,
    STOP,
    FrameTooLarge,
    ProtocolError,
    frame,
    frame_limit,
    split_frames,
)
from ._worker import INTERRUPT_SIGNAL, NUDGE_SIGNAL, worker_main
from .base import (
    Beat,
    Event,
    InitFailed,
    RunDone,
    RunSkipped,
    WorkerExited,
    WorkerReady,
    WorkerRetiring,
)

log = logging.getLogger("taskwarden")

_IO = 1
_EXIT = 2
_WAKE = 3
_TIMER = 4
_CALL = 5  # a callback of the template's forker


class _Forked:
    """A worker forked by the template: its pid, and the pidfd the template sent."""

    __slots__ = ("pid", "pidfd")

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd


class _SelectorReactor:
    """The forker's view of this pool's selector."""

    def __init__(self, pool: LokyPool) -> None:
        self._pool = pool

    def watch(self, fd: int, on_ready: Any, *, write: bool = False) -> None:
        self._pool._sel.register(fd, selectors.EVENT_READ, (_CALL, on_ready))

    def unwatch(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._pool._sel.unregister(fd)

    def wake(self) -> None:
        self._pool.wake()


class _Proc:
    __slots__ = ("conn", "crash", "dead", "exit_fd", "exit_pending", "fd", "inbuf", "killed",
                 "nudge", "outbuf", "outstanding", "pid", "process", "ready", "revoked", "wid",
                 "writing")

    def __init__(self, wid: int, process: Any, conn: Any) -> None:
        self.wid = wid
        self.process = process
        self.conn = conn
        self.fd: int = conn.fileno()
        self.pid: int = process.pid
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.writing = False
        self.dead = False
        self.killed = False
        self.ready = False
        self.nudge = False  # nudge the worker once outbuf is written out
        self.exit_fd: int = -1
        self.exit_pending = False  # dead, its exit status still to come from the template
        # Runs sent and not reported done or skipped yet, in the worker's order.
        self.outstanding: deque[int] = deque()
        # Runs taken back without the worker's answer: its SKIPPED for them is dropped.
        self.revoked: set[int] = set()
        self.crash: str | None = None  # why the pool killed it on its own (a garbled channel)


class LokyPool:
    """The process engine behind ``Supervisor``. Only the loop thread calls it, but ``wake``."""

    def __init__(
        self, id_base: int, init_payload: bytes | None, max_memory: int | None = None
    ) -> None:
        self._ctx = get_context("loky")
        self._id_base = id_base
        self._init_payload = init_payload
        self._max_memory = max_memory
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, (_WAKE, None))
        self._timer = make_timer()
        if self._timer is not None:
            self._sel.register(self._timer.fileno(), selectors.EVENT_READ, (_TIMER, None))
        self._armed = False
        self._procs: dict[int, _Proc] = {}
        self._spawn_q: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._spawned: deque[tuple[int, Any, Any]] = deque()
        self._spawner: threading.Thread | None = None
        self._events: list[Event] = []
        self._scratch = memoryview(bytearray(1 << 20))  # reads land here: no buffer each
        self._doomed: set[int] = set()
        self._killed: list[_Proc] = []
        # What was sent to a worker before its process was handed over by the spawner.
        self._early: dict[int, bytearray] = {}
        self._early_runs: dict[int, list[int]] = {}  # the seqs of the runs among them
        self._forker = Forker(
            self._ctx, (id_base, init_payload, max_memory), modules_of(init_payload),
            on_spawned=self._on_forked, on_failed=self._spawn_plain,
            on_status=self._on_status,
        )
        self._forker.bind(_SelectorReactor(self))

    # ---------------------------------------------------------------- spawning
    def spawn(self, wid: int) -> None:
        self._early[wid] = bytearray()
        self._early_runs[wid] = []
        if not self._forker.request(wid):
            self._spawn_plain(wid)

    def _spawn_plain(self, wid: int) -> None:
        if self._spawner is None:
            self._spawner = threading.Thread(
                target=self._spawn_loop, name="taskwarden-spawner", daemon=True
            )
            self._spawner.start()
        self._spawn_q.put(wid)

    def _on_forked(self, wid: int, sock: Any, pid: int, pidfd: int) -> None:
        self._adopt(wid, _Forked(pid, pidfd), sock)
        if wid in self._doomed:
            self._doomed.discard(wid)
            self.kill(wid)

    def _on_status(self, wid: int) -> None:
        p = self._procs.get(wid)
        if p is not None and p.exit_pending:
            self._reap(p, block=False)

    def _spawn_loop(self) -> None:
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
            self.wake()

    def _adopt(self, wid: int, process: Any, conn: Any) -> None:
        early = self._early.pop(wid, None)
        early_runs = self._early_runs.pop(wid, ())
        if process is None:
            self._events.append(WorkerExited(wid, None))
            return
        p = _Proc(wid, process, conn)
        p.outstanding.extend(early_runs)
        os.set_blocking(p.fd, False)
        self._procs[wid] = p
        self._sel.register(p.fd, selectors.EVENT_READ, (_IO, p))
        if isinstance(process, _Forked):
            p.exit_fd = process.pidfd
        else:
            try:
                p.exit_fd = os.pidfd_open(p.pid)
            except (AttributeError, OSError):
                p.exit_fd = -1
        if p.exit_fd >= 0:
            self._sel.register(p.exit_fd, selectors.EVENT_READ, (_EXIT, p))
        else:  # pragma: no cover - no pidfd: loky's sentinel pipe
            self._sel.register(process.sentinel, selectors.EVENT_READ, (_EXIT, p))
        if early:
            self._write(p, bytes(early))

    # ------------------------------------------------------------------ sending
    def _out(self, wid: int, data: bytes) -> None:
        p = self._procs.get(wid)
        if p is not None and not p.killed:
            self._write(p, data)
        elif wid in self._early:
            self._early[wid] += data

    def _write(self, p: _Proc, data: bytes) -> None:
        if p.dead:
            return
        if p.outbuf:
            p.outbuf += data
            return
        try:
            n = os.write(p.fd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            return  # the worker is gone; its exit event follows
        if n < len(data):
            p.outbuf += data[n:]
            self._want_write(p, True)

    def _want_write(self, p: _Proc, on: bool) -> None:
        if p.writing == on or p.dead:
            return
        p.writing = on
        mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        self._sel.modify(p.fd, mask, (_IO, p))

    def _flush(self, p: _Proc) -> None:
        try:
            n = os.write(p.fd, p.outbuf)
        except BlockingIOError:
            return
        except OSError:
            p.outbuf.clear()
            self._want_write(p, False)
            return
        del p.outbuf[:n]
        if not p.outbuf:
            self._want_write(p, False)
            if p.nudge:
                p.nudge = False
                self._nudge(p)

    def send(self, wid: int, runs: list[tuple[int, bytes, dict[str, Any] | None]]) -> None:
        p = self._procs.get(wid)
        seqs = [r[0] for r in runs]
        if p is not None:
            p.outstanding.extend(seqs)
        elif wid in self._early_runs:
            self._early_runs[wid].extend(seqs)
        budget = frame_limit() // 2  # estimated (payload + options) bytes per frame
        if len(runs) == 1 or sum(len(r[1]) for r in runs) + 256 * len(runs) <= budget:
            self._send_frame(wid, runs)
            return
        batch: list[tuple[int, bytes, dict[str, Any] | None]] = []
        size = 0
        for run in runs:
            cost = len(run[1]) + 256
            if batch and size + cost > budget:
                self._send_frame(wid, batch)
                batch, size = [], 0
            batch.append(run)
            size += cost
        if batch:
            self._send_frame(wid, batch)

    def _send_frame(self, wid: int, runs: list[tuple[int, bytes, dict[str, Any] | None]]) -> None:
        """One RUN frame; never past the frame limit (a batch is split, however it came)."""
        try:
            data = frame((RUN, runs))
        except FrameTooLarge:
            if len(runs) > 1:
                half = len(runs) // 2
                self._send_frame(wid, runs[:half])
                self._send_frame(wid, runs[half:])
                return
            # One run whose call fits (checked at the call) but not with its options:
            # only a huge previous_progress can do that. The run goes without it.
            seq, payload, opts = runs[0]
            log.warning("run %d: its previous progress is too large to send; dropped", seq)
            opts = {k: v for k, v in (opts or {}).items() if k != "previous_progress"}
            data = frame((RUN, [(seq, payload, opts or None)]))
        self._out(wid, data)

    def skip(self, wid: int, seq: int) -> None:
        self._out(wid, frame((SKIP, seq)))
        p = self._procs.get(wid)
        if p is not None and not p.killed and self._surely_unstarted(p, seq):
            # Taken back at once, whatever the worker is doing (even holding the GIL in
            # C code, where it could not answer): it will find the request before it
            # could start the run. Its own answer, when it comes, is dropped.
            p.outstanding.remove(seq)
            p.revoked.add(seq)
            self._events.append(RunSkipped(wid, seq))
            return
        if p is not None and p.ready and not p.killed:
            # The worker may be busy in a task: nudge its reader thread to answer now,
            # or, while the request still waits in outbuf, once it is in the channel.
            if p.outbuf:
                p.nudge = True
            else:
                self._nudge(p)

    def _surely_unstarted(self, p: _Proc, seq: int) -> bool:
        """Can the worker never start run ``seq``, now that the skip request is written?

        A worker writes a run's result before it reads the channel to the end and
        starts its next run (``_Inbox.next_run``). So if the request is all in the
        socket, and, reading after that, the run before ``seq`` has not reported an
        end (nor begun to: no partial message either), the worker had not finished it
        when the request landed, and it reads the request before it starts ``seq``.
        """
        if p.outbuf or p.dead or seq not in p.outstanding:
            return False  # the request is not all out yet, or the run is no longer ahead
        self._read(p)  # everything the worker has written until now
        if p.dead or p.killed or p.inbuf or seq not in p.outstanding:
            return False
        # A worker that has not said READY has started nothing (it reads the channel
        # to the end before its first run); else the oldest run it holds is running
        # (or ahead of it), and ``seq`` is behind it.
        return not p.ready or p.outstanding[0] != seq

    def _nudge(self, p: _Proc) -> None:
        self._signal(p, NUDGE_SIGNAL)

    def _signal(self, p: _Proc, signum: int) -> None:
        if isinstance(p.process, _Forked):
            # Through its pidfd: not our child, its pid could be another's once it died.
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(p.exit_fd, signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signum)

    def stop(self, wid: int) -> None:
        self._out(wid, frame((STOP,)))

    def interrupt(self, wid: int, seq: int) -> None:
        p = self._procs.get(wid)
        if p is not None and not p.dead:
            self._signal(p, INTERRUPT_SIGNAL)

    def kill(self, wid: int) -> bool:
        """SIGKILL a worker's tree; True if a process will be reported gone later."""
        p = self._procs.get(wid)
        if p is None:
            if wid not in self._early:
                return False  # already gone (reaped earlier in this round)
            # Not adopted yet: kill it as soon as the spawner hands it over.
            self._doomed.add(wid)
            return True
        self._kill_tree(p)
        # The process dies in the background (its exit fd reports it); settle() waits.
        # Nothing more is read from or written to it.
        p.killed = True
        self._killed.append(p)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(p.fd)
        p.writing = False
        return True

    def _kill_tree(self, p: _Proc) -> None:
        if isinstance(p.process, _Forked) and _exited(p.exit_fd):
            return  # dead already; its pid may be another's (if its template died too)
        kill_tree(p.pid)

    def settle(self) -> list[int]:
        """Wait until every process killed so far is gone (reaped); their worker ids."""
        gone = []
        while self._killed:
            p = self._killed.pop()
            if p.wid in self._procs:
                self._reap(p, block=True)
            gone.append(p.wid)
        return gone

    # ---------------------------------------------------------------- receiving
    def wake(self) -> None:
        if not self._armed:
            self._armed = True
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"\0")

    def wait(self, deadline: float | None) -> list[Event]:
        """Block until events arrive, ``deadline`` (monotonic) passes, or ``wake()``."""
        self._take_spawned()
        timeout: float | None
        if self._events:
            timeout = 0
        elif deadline is None:
            timeout = None
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timeout = 0
            elif self._timer is not None:
                self._timer.arm(deadline)
                timeout = None
            else:
                timeout = remaining
        for key, mask in self._sel.select(timeout):
            tag, p = key.data
            if tag == _IO:
                if mask & selectors.EVENT_WRITE:
                    self._flush(p)
                if mask & selectors.EVENT_READ:
                    self._read(p)
            elif tag == _EXIT:
                self._read(p)
                self._reap(p, block=False)
            elif tag == _CALL:
                p(mask)
            elif tag == _TIMER:
                assert self._timer is not None
                self._timer.clear()
            else:
                # Drain first, then disarm: a wake() between the two leaves its byte
                # in the pipe, so it is never lost.
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)  # one byte per arming: this drains it
                self._armed = False
        self._take_spawned()
        events, self._events = self._events, []
        return events

    def _take_spawned(self) -> None:
        if self._forker.has_news():
            self._forker.take_news()
        while self._spawned:
            wid, process, conn = self._spawned.popleft()
            self._adopt(wid, process, conn)
            if wid in self._doomed:
                self._doomed.discard(wid)
                self.kill(wid)

    def _read(self, p: _Proc) -> None:
        if p.dead or p.killed:
            return
        scratch = self._scratch
        while True:
            try:
                n = os.readv(p.fd, (scratch,))
            except BlockingIOError:
                break
            except OSError:
                n = 0
            if not n:
                # EOF: the worker closed its end; its exit event follows.
                self._sel.unregister(p.fd)
                p.writing = False
                p.dead = True
                break
            p.inbuf += scratch[:n]
            if n < len(scratch):
                break
        try:
            msgs = split_frames(p.inbuf)
        except ProtocolError as exc:
            msgs = exc.parsed
            fault: Exception | None = exc
        else:
            fault = None
        try:
            for msg in msgs:
                self._on_message(p, msg)
        except Exception as exc:  # a frame that unpickled, but is no message of ours
            fault = exc
        if fault is not None:
            self._garbled(p, fault)

    def _garbled(self, p: _Proc, fault: Exception) -> None:
        """The worker's channel carries garbage: the worker is broken. Kill it; its
        exit (reported once it is gone) fails the run it had, as a crash would."""
        if isinstance(fault, ProtocolError):
            why = str(fault)
        else:
            why = f"a message could not be read: {type(fault).__name__}: {fault}"
        log.error("worker process %d: its channel is garbled (%s); killing it", p.pid, why)
        p.crash = f"worker process {p.pid} garbled its channel to the supervisor ({why})"
        p.inbuf.clear()
        self.kill(p.wid)

    def _on_message(self, p: _Proc, msg: tuple[Any, ...]) -> None:
        if p.killed:
            return  # killed while reading this batch: nothing more from it counts
        kind = msg[0]
        if kind == DONE:
            _, seq, ok, data, tb, type_name, message, progress = msg
            if p.outstanding and p.outstanding[0] == seq:
                p.outstanding.popleft()
            else:
                with contextlib.suppress(ValueError):
                    p.outstanding.remove(seq)
            ok, value = _load_outcome(ok, data, tb, type_name, message)
            has_progress = progress != b""
            prog = _load_quiet(progress) if has_progress else None
            size = (len(data) if data else 0) + (len(tb) if tb else 0)
            self._events.append(RunDone(p.wid, seq, ok, value, tb, prog, has_progress, size))
        elif kind == BEAT:
            _, seq, data = msg
            has_progress = data is not None
            prog = _load_quiet(data) if has_progress else None
            self._events.append(Beat(p.wid, seq, prog, has_progress))
        elif kind == SKIPPED:
            seq = msg[1]
            if seq in p.revoked:
                p.revoked.discard(seq)  # already taken back (see skip())
                return
            with contextlib.suppress(ValueError):
                p.outstanding.remove(seq)
            self._events.append(RunSkipped(p.wid, seq))
        elif kind == READY:
            p.ready = True  # its signal handlers are in place from now on
            self._events.append(WorkerReady(p.wid, msg[1]))
        elif kind == INIT_FAILED:
            self._events.append(InitFailed(p.wid, msg[1]))
        elif kind == RETIRING:
            self._events.append(WorkerRetiring(p.wid, msg[1]))
        else:
            raise ProtocolError(f"unknown message kind {kind!r}")

    def _reap(self, p: _Proc, *, block: bool) -> None:
        if p.wid not in self._procs:
            return
        code: int | None
        if isinstance(p.process, _Forked):
            if p.killed and p.crash is None:
                # Killed on the loop's word: nobody reads its exit status (the core let go
                # of it already), so it is reported once its pidfd says it is gone,
                # without waiting for the template's word on it.
                if block:
                    select.select([p.exit_fd], [], [])
                known, code = self._forker.exit_status(p.wid, block=False)
            else:
                # The template holds its exit status: it says it a moment after the death.
                known, code = self._forker.exit_status(p.wid, block=block)
            if not known and p.killed and p.crash is None:
                code = None
            elif not known:
                if not p.exit_pending:
                    p.exit_pending = True
                    with contextlib.suppress(KeyError, ValueError):
                        self._sel.unregister(p.exit_fd)
                return  # _on_status() comes back here
            if p.wid not in self._procs:
                return  # reaped meanwhile (while waiting for the template)
        del self._procs[p.wid]
        if p.killed and p in self._killed:
            self._killed.remove(p)
        if isinstance(p.process, _Forked):
            self._forker.done(p.wid)
        else:
            popen = p.process._popen
            try:
                code = popen.poll(0 if block else os.WNOHANG)
            except OSError:
                code = None
            if code is None and not block:
                # The exit fd fired but the process is not reapable yet: wait for it.
                code = popen.poll(0)
        for fd in (p.fd, p.exit_fd if p.exit_fd >= 0 else p.process.sentinel):
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(fd)
        with contextlib.suppress(OSError):
            p.conn.close()
        if p.exit_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(p.exit_fd)
        p.dead = True
        self._events.append(WorkerExited(p.wid, code, p.crash))

    def alive(self) -> int:
        return len(self._procs) + len(self._early)

    def pids(self) -> dict[int, int]:
        return {wid: p.pid for wid, p in self._procs.items()}

    def close(self) -> None:
        self._spawn_q.put(None)
        if self._spawner is not None:
            self._spawner.join()
        self._take_spawned()
        for p in list(self._procs.values()):
            self._kill_tree(p)
        for p in list(self._procs.values()):
            self._reap(p, block=True)
        self._forker.close()
        self._events.clear()
        self._sel.close()
        if self._timer is not None:
            self._timer.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _exited(pidfd: int) -> bool:
    """Has the process behind ``pidfd`` ended?"""
    return bool(select.select([pidfd], [], [], 0)[0])


def _load_quiet(data: bytes) -> Any:
    try:
        return pickle.loads(data)
    except BaseException:
        return None


def _load_outcome(
    ok: bool, data: bytes, tb: str | None, type_name: str | None, message: str | None
) -> tuple[bool, Any]:
    """Unpickle a result or an exception. Whatever unpickling does fails this task only."""
    if ok:
        try:
            return True, pickle.loads(data)
        except BaseException as exc:
            err = RemoteError(
                "ResultUnpicklingError",
                f"the task's result could not be unpickled in the supervisor: "
                f"{type(exc).__name__}: {exc}",
            )
            return False, err
    exc_value: BaseException
    try:
        loaded = pickle.loads(data) if data else None
    except BaseException:
        loaded = None
    if isinstance(loaded, BaseException):
        exc_value = loaded
    else:
        exc_value = RemoteError(type_name or "Exception", message or "")
    if tb:
        exc_value.__cause__ = RemoteTraceback(tb)
    return False, exc_value


__all__ = ["LokyPool", "kill_tree"]
