"""What runs inside a worker process: the task loop, heartbeat() and current_task().

A worker reads batches of runs from its channel, runs them one at a time
in its main thread and writes each result back as soon as it is ready.
Between runs it reads whatever else has arrived (more runs, a request to
skip a run it was given ahead of time). A watcher thread ends the process
when the supervisor's end of the channel closes, so that a supervisor
killed with SIGKILL leaves no worker behind.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import select
import signal
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from types import FrameType
from typing import Any

from .._errors import TaskTimeout
from .._ids import make_uuid
from ._wire import (
    BEAT,
    DONE,
    INIT_FAILED,
    NO_PROGRESS,
    READY,
    RUN,
    SKIP,
    SKIPPED,
    STOP,
    dumps,
    frame,
    split_frames,
    write_all,
)

INTERRUPT_SIGNAL = signal.SIGUSR1
_NO = object()


@dataclass(frozen=True, slots=True)
class CurrentTask:
    """What a task may know about itself: see ``taskwarden.current_task()``."""

    id: str
    attempt: int
    deadline: float | None  # time.time() at which the hard limit strikes, or None
    previous_progress: Any  # the last progress of the previous attempt, or None


class _Running:
    """The run in progress in this worker, for heartbeat() and the grace signal."""

    __slots__ = ("fd", "info", "interval", "next_send", "progress", "seq", "unsent")

    def __init__(self, fd: int, seq: int, info: CurrentTask, interval: float) -> None:
        self.fd = fd
        self.seq = seq
        self.info = info
        self.interval = interval
        self.next_send = 0.0
        self.progress: Any = _NO
        self.unsent = False


_running: _Running | None = None


def heartbeat(progress: Any = _NO) -> None:
    """Tell the supervisor this task is alive, optionally with a progress value.

    Outside a worker it does nothing. It is cheap enough for a tight loop:
    what crosses the channel is throttled (the last progress value is never
    lost; it travels with the result at the latest).
    """
    r = _running
    if r is None:
        return
    if progress is not _NO:
        r.progress = progress
        r.unsent = True
    now = time.monotonic()
    if now < r.next_send:
        return
    r.next_send = now + r.interval
    data = None
    if r.unsent:
        r.unsent = False
        data = dumps(r.progress)
    write_all(r.fd, frame((BEAT, r.seq, data)))


def current_task() -> CurrentTask | None:
    """The task running in this process (id, attempt, deadline, previous progress), or None."""
    r = _running
    return None if r is None else r.info


def _on_interrupt(signum: int, frame_: FrameType | None) -> None:
    if _running is not None:
        raise TaskTimeout("time limit reached: the task is being stopped (grace period)")


def _watch_parent(fd: int) -> None:
    """End this process when the supervisor's end of the channel is gone."""
    rdhup = getattr(select, "POLLRDHUP", 0)
    if rdhup:
        poller = select.poll()
        poller.register(fd, rdhup)
        while True:
            for _, ev in poller.poll():
                if ev & (rdhup | select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    os._exit(1)
    else:  # pragma: no cover - platforms without POLLRDHUP
        parent = os.getppid()
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)


def _run_call(payload: bytes) -> Any:
    fn, args, kwargs = pickle.loads(payload)
    result = fn(*args, **kwargs)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return result


def worker_main(conn: Any, id_base: int, init_payload: bytes | None) -> None:
    """Entry point of a worker process (started through loky's process context)."""
    global _running
    fd = conn.fileno()
    threading.Thread(target=_watch_parent, args=(fd,), daemon=True, name="taskwarden-watch").start()
    signal.signal(INTERRUPT_SIGNAL, _on_interrupt)
    if init_payload is not None:
        try:
            initializer, initargs = pickle.loads(init_payload)
            initializer(*initargs)
        except BaseException:
            write_all(fd, frame((INIT_FAILED, traceback.format_exc())))
            return
    write_all(fd, frame((READY, os.getpid())))

    buf = bytearray()
    local: deque[tuple[int, bytes, dict[str, Any]]] = deque()
    skip: set[int] = set()
    poller = select.poll()
    poller.register(fd, select.POLLIN)

    def take(block: bool) -> bool:
        """Read what has arrived; False once the channel is closed or STOP came."""
        while True:
            if not block and not poller.poll(0):
                return True
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return False
            buf.extend(chunk)
            msgs = split_frames(buf)
            for msg in msgs:
                kind = msg[0]
                if kind == RUN:
                    local.extend(msg[1])
                elif kind == SKIP:
                    skip.add(msg[1])
                elif kind == STOP:
                    return False
            if msgs:
                block = False

    while True:
        if not take(block=not local):
            return
        if not local:
            continue
        seq, payload, opts = local.popleft()
        if seq in skip:
            skip.discard(seq)
            write_all(fd, frame((SKIPPED, seq)))
            continue
        timeout = opts.get("timeout")
        info = CurrentTask(
            id=make_uuid(id_base, seq),
            attempt=opts.get("attempt", 1),
            deadline=None if timeout is None else time.time() + timeout,
            previous_progress=opts.get("previous_progress"),
        )
        hb = opts.get("heartbeat")
        interval = 0.05 if hb is None else min(0.05, hb / 4)
        running = _Running(fd, seq, info, interval)
        _running = running
        try:
            try:
                result = _run_call(payload)
            finally:
                _running = None
            msg = _done_ok(seq, result, running)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt fail the task only
            msg = _done_error(seq, exc, traceback.format_exc(), running)
        write_all(fd, msg)
        sys.stdout.flush()
        sys.stderr.flush()


def _progress(running: _Running) -> bytes:
    if not running.unsent:
        return NO_PROGRESS
    try:
        return dumps(running.progress)
    except Exception:
        return NO_PROGRESS


def _done_ok(seq: int, result: Any, running: _Running) -> bytes:
    try:
        data = dumps(result)
    except BaseException as exc:
        err = pickle.PicklingError(
            f"the task's result ({type(result).__qualname__}) could not be pickled: {exc}"
        )
        return _done_error(seq, err, traceback.format_exc(), running)
    return frame((DONE, seq, True, data, None, None, None, _progress(running)))


def _done_error(seq: int, exc: BaseException, tb: str, running: _Running) -> bytes:
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
    return frame((DONE, seq, False, data, tb, type_name, message, _progress(running)))
