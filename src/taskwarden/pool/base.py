"""The interface between the supervisor loop and whatever runs tasks.

The loop asks a pool to start a worker, send it runs, skip or interrupt a
run, stop or kill a worker, and takes the events the pool gathered. The loop
owns its wait (``Reactor``): a pool registers the file descriptors it wants
watched and turns their readiness into events. loky processes on this
machine are one engine (``LokyPool``); another (Ray, for work that outgrows
one machine) can stand in behind the same few methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(slots=True)
class WorkerReady:
    wid: int
    pid: int


@dataclass(slots=True)
class RunDone:
    wid: int
    seq: int
    ok: bool
    value: Any  # the result, or the exception (with the worker traceback as __cause__)
    tb: str | None
    progress: Any
    has_progress: bool
    size: int = 0  # bytes the outcome took on the wire: what keeping it for get() costs


@dataclass(slots=True)
class RunSkipped:
    wid: int
    seq: int


@dataclass(slots=True)
class Beat:
    wid: int
    seq: int
    progress: Any
    has_progress: bool


@dataclass(slots=True)
class WorkerExited:
    wid: int
    exitcode: int | None
    reason: str | None = None  # why the pool killed it on its own (e.g. a garbled channel)


@dataclass(slots=True)
class InitFailed:
    wid: int
    tb: str


@dataclass(slots=True)
class WorkerRetiring:
    """The worker grew past its memory limit and exits before its next run."""

    wid: int
    rss: int


Event = WorkerReady | RunDone | RunSkipped | Beat | WorkerExited | InitFailed | WorkerRetiring


class Reactor(Protocol):
    """The loop's wait, as an engine sees it (implemented by ``driver/_reactor.py``).

    An engine owns no selector and no thread that the loop waits on: it asks
    the reactor to watch its file descriptors, and each callback runs on the
    loop thread when its fd is ready. An engine without fds (one that gathers
    results on a thread of its own) calls ``wake`` when it has events.
    """

    def watch(self, fd: int, on_ready: Callable[[int], None], *, write: bool = False) -> None:
        """Call ``on_ready(mask)`` (``selectors.EVENT_READ``/``EVENT_WRITE`` bits) on
        the loop thread whenever ``fd`` is readable, and with ``write`` writable."""

    def modify(self, fd: int, *, write: bool) -> None:
        """Start (``write=True``) or stop watching a watched ``fd`` for writability."""

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd``; no error if it is not watched."""

    def wake(self) -> None:
        """Make the loop's wait return now. The one method any thread may call."""


class Pool(Protocol):
    """An engine that runs tasks in workers, driven by the loop thread alone.

    After each wait the loop takes the pool's events (``take_events``); it
    does not block while ``has_events()`` is true.
    """

    def bind(self, reactor: Reactor) -> None:
        """Give the pool the loop's reactor; called once, before the first ``spawn``
        (by the Supervisor's constructor: an engine may start its first worker here)."""

    def spawn(self, wid: int) -> None:
        """Start a worker; it reports ``WorkerReady`` (or ``InitFailed``) when up."""

    def send(self, wid: int, runs: list[tuple[int, bytes, dict[str, Any] | None]]) -> None:
        """Give a worker runs (seq, payload, options), to run in order."""

    def skip(self, wid: int, seq: int) -> None:
        """Ask a worker not to start a run it was given ahead of time. ``RunSkipped``
        reports it done (at once, when the pool can tell the run will never start)."""

    def interrupt(self, wid: int, seq: int) -> None:
        """Raise TaskTimeout inside the run a worker is executing (the grace period)."""

    def stop(self, wid: int) -> None:
        """Ask an idle worker to exit."""

    def kill(self, wid: int) -> bool:
        """Kill a worker's whole process tree at once (it is reaped in the background);
        True if its exit will be reported, False if it was already gone."""

    def settle(self) -> list[int]:
        """Wait until every worker killed so far is gone; returns their ids."""

    def has_events(self) -> bool:
        """Events are waiting to be taken: the loop must not block."""

    def take_events(self) -> list[Event]:
        """Every event gathered since the last call, in order."""

    def alive(self) -> int:
        """How many workers are still alive (started, or starting)."""

    def pids(self) -> dict[int, int]:
        """The process id of each started worker, by worker id."""

    def close(self) -> None:
        """Kill what is left and release every resource (not the reactor: the loop's)."""
