"""Exceptions that ``Task.result()`` raises, besides the task's own."""

from __future__ import annotations

from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool


class TaskTimeout(TimeoutError):
    """The task ran past its hard time limit, or went silent past its heartbeat."""


class TaskCancelled(CancelledError):
    """The task was cancelled before it could finish (its process killed if it ran)."""


class TaskSuperseded(TaskCancelled):
    """A newer task with the same key won; ``winner_id`` names it."""

    def __init__(self, message: str, winner_id: str | None = None) -> None:
        super().__init__(message)
        self.winner_id = winner_id


class WorkerCrashed(BrokenProcessPool):
    """The worker process died under the task; the worker is replaced, the pool lives on."""

    def __init__(self, message: str, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode


class RemoteTraceback(Exception):
    """Carries the worker's formatted traceback, attached as ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class RemoteError(Exception):
    """A task's exception that could not be pickled back: its type name and message."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
