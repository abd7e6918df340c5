"""Task functions run inside worker processes.

They live in their own module (not ``__main__``) so that every peer can pickle
them by reference: fork, spawn and loky workers all re-import ``_tasks`` by
name (``run.py`` puts this folder on ``sys.path`` and ``PYTHONPATH``).
"""

from __future__ import annotations

import os
import time


def identity(x: int) -> int:
    """The trivial task: returns its argument."""
    return x


def blob(i: int, size: int = 1 << 20) -> bytes:
    """A large result: ``size`` bytes (1 MiB by default)."""
    return bytes([i % 256]) * size


def sleep_pid(seconds: float) -> int:
    """Sleep, then return the worker pid (used to check that all workers are up)."""
    time.sleep(seconds)
    return os.getpid()


def noop() -> None:
    """A task that does nothing (used for far-future scheduling)."""


def _write_pid(pid_path: str | None) -> None:
    if pid_path:
        tmp = f"{pid_path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        os.replace(tmp, pid_path)  # atomic: a reader never sees a half-written pid


def hang(pid_path: str | None = None) -> None:
    """Write the worker pid (if asked), then sleep "forever" (a hung task)."""
    _write_pid(pid_path)
    while True:
        time.sleep(3600)


def record_time(path: str) -> float:
    """Append this run's start time (wall clock, taken in the worker) to ``path``."""
    now = time.time()
    with open(path, "a") as f:
        f.write(f"{now!r}\n")
    return now


def _empty(progress: object = None) -> None:
    return None


def heartbeat_cost(n: int) -> dict[str, float]:
    """Time ``n`` calls of ``taskwarden.heartbeat`` (with and without progress)
    against ``n`` calls of an empty function, inside the worker."""
    import taskwarden

    hb = taskwarden.heartbeat
    perf = time.perf_counter
    t0 = perf()
    for _ in range(n):
        _empty()
    t_empty = perf() - t0
    t0 = perf()
    for _ in range(n):
        hb()
    t_hb = perf() - t0
    t0 = perf()
    for i in range(n):
        hb(i)
    t_hb_progress = perf() - t0
    return {
        "empty_call_ns": t_empty / n * 1e9,
        "heartbeat_ns": t_hb / n * 1e9,
        "heartbeat_progress_ns": t_hb_progress / n * 1e9,
    }


def _write_pid_and_deadline(pid_path: str) -> None:
    """The worker pid, the time the task began and, under taskwarden, its deadline
    (wall clock; 0 if none)."""
    import taskwarden

    began = time.time()
    info = taskwarden.current_task()
    deadline = info.deadline if info is not None and info.deadline is not None else 0.0
    tmp = f"{pid_path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {began!r} {deadline!r}")
    os.replace(tmp, pid_path)


def spin(pid_path: str) -> None:
    """A hung task in Python code (a loop that never ends)."""
    _write_pid_and_deadline(pid_path)
    while True:
        pass


def hold_the_gil(pid_path: str) -> None:
    """A hung task in C code that keeps the GIL (a PyDLL call does not release it)."""
    import ctypes

    _write_pid_and_deadline(pid_path)
    usleep = ctypes.PyDLL(None).usleep
    while True:
        usleep(10_000_000)
