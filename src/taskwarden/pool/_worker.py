"""What runs inside a worker: the task loop (the task's side of it, ``heartbeat()``
and ``current_task()``, is ``taskwarden/_taskside.py``).

A reader thread takes batches of runs off the channel into an inbox; the
main thread runs them one at a time and writes each result back as soon as
it is ready. The reader also answers skip requests at once and ends the
process (its task's children first) when the supervisor's end of the channel
closes, so that a supervisor killed with SIGKILL leaves no worker behind. It
starts before the initializer, so that a worker still starting notices too.

Only the worker process speaks on the channel: a child that a task forks and
that returns (rather than calling ``os._exit``) exits there, silently.

``worker_main`` speaks over any connected stream socket (anything with
``fileno()``): the socket pair of a local process, or a TCP connection.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import sys
import threading
import time
import traceback
import types
from collections import deque
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from .. import _taskside as TS
from .._errors import TaskTimeout
from .._proctree import kill_own_tree
from .._taskside import CurrentTask, Running
from ._wire import (
    NO_PROGRESS,
    Done,
    FrameTooLarge,
    InitFailed,
    ProtocolError,
    Ready,
    Retiring,
    Run,
    Skip,
    Skipped,
    Stop,
    decode,
    dumps,
    payload_limit,
    split_frames,
    write_all,
)

if TYPE_CHECKING:  # (a Protocol class costs a worker's boot time: for mypy only)
    from typing import Protocol

    class Connected(Protocol):
        """A connected stream socket to the supervisor (a socket, a multiprocessing
        Connection over a socket pair): all the worker needs of it is its fd."""

        def fileno(self) -> int: ...


INTERRUPT_SIGNAL = signal.SIGUSR1  # raise TaskTimeout in the task (grace)
NUDGE_SIGNAL = signal.SIGUSR2  # read the channel now (a skip request is waiting)
_NO_OPTS: dict[str, Any] = {}


_forked = False  # this process is a child that a task forked, not the worker


def _after_fork_in_child() -> None:
    global _forked
    _forked = True
    TS.running = None  # heartbeat() and current_task() are the worker's, not the child's


def _child_exit(code: int) -> NoReturn:
    """A forked child came back into the worker's loop: leave without a word."""
    _flush_stdio()
    os._exit(code)


def _flush_stdio() -> None:
    """Flush the task's output. Whatever goes wrong (a closed stream, a reader that
    went away: ``python app.py | head -1``) is no business of the task's outcome."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            # Nobody reads it any more: what is written from now on is dropped (the
            # recipe of Python's signal docs), so that every later flush does not fail.
            with contextlib.suppress(Exception):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
                os.close(devnull)
        except Exception:
            pass


def _on_interrupt(signum: int, frame_: FrameType | None) -> None:
    if TS.running is not None:
        TS.raise_in_task(
            TaskTimeout("time limit reached: the task is being stopped (grace period)")
        )


def _on_sigint(signum: int, frame_: FrameType | None) -> None:
    # A terminal's Ctrl-C reaches the whole process group. A running task gets
    # KeyboardInterrupt (and ends FAILED, as in ProcessPoolExecutor); an idle
    # worker ignores it, so the pool is not torn down under its supervisor.
    if TS.running is not None:
        TS.raise_in_task(KeyboardInterrupt())


SPIN = 0.0005


def _wait_until(when: float) -> None:
    """Begin a timed run on time: sleep most of the way, spin the last half millisecond
    (a sleep alone wakes up late by the scheduler's wake-up latency)."""
    remaining = when - time.monotonic()
    if remaining > SPIN:
        time.sleep(remaining - SPIN)
    while time.monotonic() < when:
        pass


def _run_call(payload: bytes) -> Any:
    fn, args, kwargs = pickle.loads(payload)
    result = fn(*args, **kwargs)
    if isinstance(result, types.CoroutineType):  # an async def task: run it to the end
        import asyncio

        result = asyncio.run(result)
    return result


class _Inbox:
    """Runs given to this worker and not started yet.

    The main thread reads the channel itself whenever it is idle, so a run that
    arrives at an idle worker starts without a hand-off between threads. While
    it runs a task, nothing reads: runs sent ahead of time wait in the socket.
    When the supervisor needs an answer sooner (it takes back a run it handed
    out early), it sends NUDGE_SIGNAL after its message; the signal's wake-up
    byte wakes a reader thread, which reads and answers at once, even while
    the main thread is deep in C code. The same thread ends the process when
    the supervisor's end of the channel closes (POLLRDHUP), so that a
    supervisor killed with SIGKILL leaves no worker behind. Neither costs a
    thread wake-up per task.
    """

    def __init__(self, fd: int, send: Any, nudge_fd: int) -> None:
        self.fd = fd
        self.send = send
        self.nudge_fd = nudge_fd
        self.cond = threading.Condition(threading.Lock())
        self.read_lock = threading.Lock()
        self.runs: deque[tuple[int, bytes, dict[str, Any] | None]] = deque()
        self.stopping = False
        self.reader_turns = 0  # how many times the reader thread has let go of the channel
        self._buf = bytearray()
        self._probe = select.poll()  # the main thread's own (a poll object is not shared)
        self._probe.register(fd, select.POLLIN)

    def _read_once(self) -> None:
        """Block for the next chunk and act on it; the caller holds ``read_lock``."""
        try:
            chunk = os.read(self.fd, 1 << 20)
        except OSError:
            chunk = b""
        if not chunk:
            self.on_hangup()  # the supervisor is gone
        self._buf += chunk
        try:
            msgs = split_frames(self._buf)
        except ProtocolError:
            self.on_hangup()  # the channel is garbled: nothing on it can be trusted
        for raw in msgs:
            try:
                msg = decode(raw)
            except ProtocolError:
                self.on_hangup()  # not a message of ours: the channel is garbled
            match msg:
                case Run(runs):
                    with self.cond:
                        self.runs.extend(runs)
                        self.cond.notify()
                case Skip(seq):
                    self._skip(seq)
                case Stop():
                    with self.cond:
                        self.stopping = True
                        self.cond.notify()
                case _:
                    self.on_hangup()  # a worker's message, sent to a worker: garbled

    def reader(self) -> None:
        hangup = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR
        poller = select.poll()
        poller.register(self.fd, hangup)
        poller.register(self.nudge_fd, select.POLLIN)
        probe = select.poll()
        probe.register(self.fd, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == self.fd:
                    self.on_hangup()  # the supervisor's end closed: it is gone
                with contextlib.suppress(BlockingIOError):
                    while os.read(self.nudge_fd, 512):
                        pass
            # Read until the channel is empty at a frame boundary, so that the request
            # behind this nudge is answered. The main thread may hold the channel for a
            # moment (it reads, or parses what it read): try again shortly rather than
            # wait for a nudge that will not come.
            while probe.poll(0) or self._buf:
                if not self.read_lock.acquire(timeout=0.001):
                    continue
                try:
                    if probe.poll(0) or self._buf:
                        self._read_once()  # data is there, or the rest of a frame is coming
                finally:
                    self.read_lock.release()
                    with self.cond:
                        # Wake a main thread that found the channel taken: it may read now.
                        self.reader_turns += 1
                        self.cond.notify()

    @staticmethod
    def on_hangup() -> NoReturn:
        # The supervisor is gone (or the channel broken): take the task's children
        # along, as the supervisor's kill would have (a detached daemon escapes).
        with contextlib.suppress(BaseException):
            kill_own_tree()
        os._exit(1)

    def _drain(self) -> None:
        """Act on everything the supervisor has written so far; the caller holds
        ``read_lock``. Done before each run starts: a skip written before this
        moment is honoured, which is what lets the supervisor take back a queued run
        on its own (see LokyPool.skip) while this worker's task holds the GIL."""
        while self._probe.poll(0):
            self._read_once()

    def _skip(self, seq: int) -> None:
        with self.cond:
            for item in self.runs:
                if item[0] == seq:
                    self.runs.remove(item)
                    break
            else:
                return  # already started: the supervisor learns it from the result
            # Answer before the main thread can start a later run: the supervisor
            # must read SKIPPED ahead of that run's result, or it would take the
            # result for a run it believes is still ahead of it.
            self.send(Skipped(seq).encode())

    def next_run(self) -> tuple[int, bytes, dict[str, Any] | None] | None:
        while True:
            # Before a run starts, act on what the supervisor has written (see _drain).
            if self.runs:
                self.read_lock.acquire()  # the reader thread may be mid-read: wait for it
                try:
                    self._drain()
                finally:
                    self.read_lock.release()
            with self.cond:
                if self.runs:
                    return self.runs.popleft()
                if self.stopping:
                    return None
                turn = self.reader_turns
            if self.read_lock.acquire(blocking=False):
                try:
                    # The reader thread may have read a run between the check above and
                    # this lock: look again, or this read would block with a run waiting.
                    with self.cond:
                        waiting = bool(self.runs) or self.stopping
                    if not waiting:
                        self._read_once()
                finally:
                    self.read_lock.release()
                continue
            # The reader thread is inside a read: wait until it hands over a run or
            # lets go of the channel (then read for ourselves).
            with self.cond:
                while not self.runs and not self.stopping and self.reader_turns == turn:
                    self.cond.wait()


def _on_nudge(signum: int, frame_: FrameType | None) -> None:
    """Nothing to do here: the signal's wake-up byte already woke the reader thread."""


def _listen_for_nudges() -> tuple[int, int]:
    """Route NUDGE_SIGNAL (and any other handled signal) to a pipe the reader polls."""
    nudge_r, nudge_w = os.pipe()
    os.set_blocking(nudge_r, False)
    os.set_blocking(nudge_w, False)
    signal.signal(NUDGE_SIGNAL, _on_nudge)
    signal.siginterrupt(NUDGE_SIGNAL, False)  # restart the task's system calls
    signal.set_wakeup_fd(nudge_w, warn_on_full_buffer=False)
    return nudge_r, nudge_w


def _rss() -> int:
    """This process's resident memory in bytes (Linux: /proc/self/statm)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak, in KiB


def worker_main(
    conn: Connected, id_base: int, init_payload: bytes | None, max_memory: int | None = None
) -> None:
    """A worker's life, speaking over ``conn`` until told to stop or the supervisor is
    gone (in a process started through loky's process context, or any other)."""
    fd = conn.fileno()
    write_lock = threading.Lock()

    def send(data: bytes) -> None:
        if _forked:
            return  # a child that a task forked: only the worker answers
        with write_lock:
            write_all(fd, data)

    def close_in_child() -> None:
        _after_fork_in_child()
        with contextlib.suppress(OSError):
            os.close(fd)

    os.register_at_fork(after_in_child=close_in_child)
    TS.mark_threads_with_their_run()
    signal.signal(INTERRUPT_SIGNAL, _on_interrupt)
    signal.signal(signal.SIGINT, _on_sigint)
    # The reader watches the channel from the start: a supervisor that dies while the
    # initializer runs (or hangs) takes this process with it.
    nudge_r, nudge_w = _listen_for_nudges()
    inbox = _Inbox(fd, send, nudge_r)
    threading.Thread(target=inbox.reader, daemon=True, name="taskwarden-reader").start()
    if init_payload is not None:
        try:
            initializer, initargs = pickle.loads(init_payload)
            initializer(*initargs)
        except BaseException:
            if _forked:
                _child_exit(1)
            send(InitFailed(traceback.format_exc()).encode())
            _leave()
            return
        if _forked:
            _child_exit(0)
        signal.set_wakeup_fd(nudge_w, warn_on_full_buffer=False)  # it may have set its own
    send(Ready(os.getpid()).encode())

    while True:
        item = inbox.next_run()
        if item is None:
            _leave()
            return
        seq, payload, opts = item
        if opts is None:
            opts = _NO_OPTS
        not_before = opts.get("not_before")
        if not_before is not None:
            _wait_until(not_before)
        timeout = opts.get("timeout")
        info = CurrentTask(
            id_base=id_base,
            seq=seq,
            attempt=opts.get("attempt", 1),
            deadline=None if timeout is None else time.time() + timeout,
            previous_progress=opts.get("previous_progress"),
        )
        hb = opts.get("heartbeat")
        interval = 0.05 if hb is None else min(0.05, hb / 4)
        running = Running(send, seq, info, interval)
        TS.running = running
        try:
            try:
                result = _run_call(payload)
            finally:
                TS.running = None
            if _forked:
                _child_exit(0)
            msg = _done_ok(seq, result, running)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt fail the task only
            if _forked:
                _child_exit(1)
            msg = _done_error(seq, exc, traceback.format_exc(), running)
        _flush_stdio()
        send(msg)
        # A task may have replaced the signal wake-up fd (asyncio can): put ours back.
        signal.set_wakeup_fd(nudge_w, warn_on_full_buffer=False)
        if max_memory is not None:
            rss = _rss()
            if rss > max_memory:
                # Grown past its limit (a leak in a task or a library): leave before the
                # next run; the supervisor re-queues what it had sent ahead and replaces us.
                send(Retiring(rss).encode())
                _leave()
                return


def worker_process(
    conn: Connected, id_base: int, init_payload: bytes | None, max_memory: int | None = None
) -> NoReturn:
    """A worker process's whole life: ``worker_main``, then out at once. The target
    of a worker started through loky's process context, and what a worker forked
    from the template runs (``pool/_template.py``): both leave the same way."""
    code = 1
    try:
        worker_main(conn, id_base, init_payload, max_memory)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        exit_process(code)


def exit_process(code: int) -> NoReturn:
    """End the worker process now: its atexit handlers run (multiprocessing's among
    them) and its output is flushed, but the interpreter is not torn down module by
    module. That teardown (loky and what it imports, tens of milliseconds) is what a
    supervisor's shutdown would wait for, and a worker has nothing more to say."""
    with contextlib.suppress(BaseException):
        import atexit

        atexit._run_exitfuncs()
    _flush_stdio()
    os._exit(code)


def _leave() -> None:
    """Before the worker returns to exit normally: a thread a task left running would
    keep the process alive (Python waits for non-daemon threads), so then go at once,
    as ``exit_process`` does (the exit hooks run, the output is flushed).
    (The supervisor kills a worker that is still there a few seconds later anyway.)"""
    main = threading.main_thread()
    if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
        exit_process(0)


def _progress(running: Running) -> bytes:
    if not running.unsent:
        return NO_PROGRESS
    try:
        return dumps(running.progress)
    except Exception:
        return NO_PROGRESS


def _done_ok(seq: int, result: Any, running: Running) -> bytes:
    try:
        data = dumps(result)
        if len(data) > payload_limit():
            raise FrameTooLarge(
                f"it pickles to {len(data)} bytes, over the worker channel's frame limit "
                f"({payload_limit()} bytes)"
            )
        return Done(seq, True, data, None, None, None, _progress(running)).encode()
    except BaseException as exc:
        err = pickle.PicklingError(
            f"the task's result ({type(result).__qualname__}) could not be pickled: {exc}"
        )
        return _done_error(seq, err, traceback.format_exc(), running)


def _done_error(seq: int, exc: BaseException, tb: str, running: Running) -> bytes:
    type_name = type(exc).__qualname__
    module = type(exc).__module__
    if module not in ("builtins", "__main__"):
        type_name = f"{module}.{type_name}"
    try:
        message = str(exc)
    except Exception:
        message = "<str() of the exception failed>"
    try:
        data = dumps(exc)
    except BaseException:
        data = b""  # the supervisor rebuilds it from type name, message and traceback
    try:
        return Done(seq, False, data, tb, type_name, message, _progress(running)).encode()
    except FrameTooLarge:
        # Too big to travel whole (a huge exception or progress value): the text only.
        limit = payload_limit() // 4
        return Done(seq, False, b"", tb[-limit:], type_name, message[:limit],
                    NO_PROGRESS).encode()
