"""The task's side of the contract with whatever engine runs it: ``heartbeat()``,
``current_task()`` and ``CurrentTask``.

A task imports these (re-exported by ``taskwarden``) wherever it runs. The
engine's worker (``pool/_worker.py``, in a local process or a remote actor)
sets ``running`` for the length of each run, and reads ``raise_in_task``'s
rule for signals: a grace signal or Ctrl-C raises in the task, but never
while ``heartbeat`` is writing a frame (a cut frame garbles the channel).
Outside a worker ``running`` is None, and both functions are harmless.

This module imports nothing of the supervisor: a worker boots without it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ._ids import make_uuid
from .pool._wire import Beating, dumps

_NO: Any = object()  # heartbeat() without a progress value


class CurrentTask:
    """What a task may know about itself: see ``taskwarden.current_task()``.

    Immutable, compared and hashed by its fields. (Written out rather than a frozen
    dataclass: building that class costs every worker's boot about half a millisecond.)
    """

    __slots__ = ("attempt", "deadline", "id_base", "previous_progress", "seq")
    _FIELDS = ("id_base", "seq", "attempt", "deadline", "previous_progress")
    __match_args__ = ("id_base", "seq", "attempt", "deadline", "previous_progress")

    id_base: int
    seq: int
    attempt: int
    deadline: float | None  # time.time() at which the hard limit strikes, or None
    previous_progress: Any  # the last progress of the previous attempt, or None

    def __init__(self, id_base: int, seq: int, attempt: int, deadline: float | None,
                 previous_progress: Any) -> None:
        put = object.__setattr__
        put(self, "id_base", id_base)
        put(self, "seq", seq)
        put(self, "attempt", attempt)
        put(self, "deadline", deadline)
        put(self, "previous_progress", previous_progress)

    def _values(self) -> tuple[int, int, int, float | None, Any]:
        return (self.id_base, self.seq, self.attempt, self.deadline, self.previous_progress)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: CurrentTask is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: CurrentTask is immutable")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, CurrentTask)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        values = zip(self._FIELDS, self._values(), strict=True)
        fields = ", ".join(f"{name}={value!r}" for name, value in values)
        return f"CurrentTask({fields})"

    def __reduce__(self) -> tuple[type[CurrentTask], tuple[Any, ...]]:
        return (CurrentTask, self._values())

    @property
    def id(self) -> str:
        """The task's id, as ``Task.id`` gives it (made only when asked for)."""
        return make_uuid(self.id_base, self.seq)


class Running:
    """The run in progress in this worker, for heartbeat() and the grace signal.

    ``send`` writes one whole frame to the supervisor (the worker's, thread-safe).
    """

    __slots__ = ("info", "interval", "next_send", "progress", "send", "seq", "unsent")

    def __init__(self, send: Any, seq: int, info: CurrentTask, interval: float) -> None:
        self.send = send
        self.seq = seq
        self.info = info
        self.interval = interval  # the least time between two beats on the wire
        self.next_send = 0.0
        self.progress: Any = _NO
        self.unsent = False  # progress set since the last beat that carried one


running: Running | None = None  # set by the worker around each run

_sending = False  # heartbeat() is writing a frame
_deferred: BaseException | None = None  # what a signal raises once that frame is out


def heartbeat(progress: Any = _NO) -> None:
    """Tell the supervisor this task is alive, optionally with a progress value.

    Outside a worker it does nothing. It is cheap enough for a tight loop:
    what crosses the channel is throttled (the last progress value is never
    lost; it travels with the result at the latest).
    """
    r = running
    if r is None:
        return
    thread = threading.current_thread()
    if thread is not _main_thread and getattr(thread, _RUN_OF_THREAD, None) != r.seq:
        # A thread that this run did not start (one an earlier task left behind, or
        # the initializer's): its heartbeat is not this run's sign of life.
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
    message = Beating(r.seq, data).encode()
    # The grace signal and Ctrl-C raise inside the task, but never in the middle of a
    # frame (a cut frame would garble the channel): their handlers leave the exception
    # for here while the frame is being written.
    global _sending, _deferred
    _sending = True
    try:
        r.send(message)
    finally:
        _sending = False
        exc, _deferred = _deferred, None
        if exc is not None:
            raise exc


def current_task() -> CurrentTask | None:
    """The task running in this process (id, attempt, deadline, previous progress), or None."""
    r = running
    return None if r is None else r.info


def raise_in_task(exc: BaseException) -> None:
    """Raise ``exc`` in the task now (from a signal handler), or, while heartbeat()
    writes a frame, as soon as the frame is out."""
    global _deferred
    if _sending:
        _deferred = exc
        return
    raise exc


_main_thread = threading.main_thread()
_RUN_OF_THREAD = "_taskwarden_run"  # set on each Thread at start(): the run it belongs to
_thread_start = threading.Thread.start


def _start_in_run(self: threading.Thread) -> None:
    """threading.Thread.start in a worker: note which run started the thread, so that
    its heartbeats count for that run only."""
    r = running
    setattr(self, _RUN_OF_THREAD, None if r is None else r.seq)
    _thread_start(self)


def mark_threads_with_their_run() -> None:
    """In a worker: from now on each new thread remembers the run that started it."""
    threading.Thread.start = _start_in_run  # type: ignore[method-assign]
