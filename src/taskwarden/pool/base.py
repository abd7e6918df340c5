"""The interface between the supervisor loop and whatever runs tasks.

The loop asks a pool to start a worker, send it runs, skip or interrupt a
run, stop or kill a worker, and waits on it for events. loky processes on
this machine are one engine (``LokyPool``); another (Ray, for work that
outgrows one machine) can stand in behind the same few methods.
"""

from __future__ import annotations

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


class Pool(Protocol):
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

    def wait(self, deadline: float | None) -> list[Event]:
        """Block until events arrive, ``deadline`` (monotonic) passes or ``wake()`` is called."""

    def wake(self) -> None:
        """Make a blocked ``wait`` return now (from any thread)."""

    def alive(self) -> int:
        """How many worker processes are still alive."""

    def close(self) -> None:
        """Kill what is left and release every resource."""
