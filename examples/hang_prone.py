"""Hang-prone tasks: a time limit, heartbeats with progress, a grace period, retries.

Shows:
- ``timeout=``: a task that never returns is killed (its process tree dies), TIMED_OUT;
- ``heartbeat=``: a slow task that keeps calling ``heartbeat()`` lives on, one that
  goes silent is judged hung and killed; ``task.progress`` is its last progress;
- ``grace=``: ``TaskTimeout`` is raised inside the task first, so its ``finally`` runs;
- ``retries=``/``retry_on=``: a flaky task is re-run, and ``current_task()`` tells it
  which attempt it is and how far the previous one got (``previous_progress``).

Run it with:  python examples/hang_prone.py
"""

from __future__ import annotations

import os
import tempfile
import time

import taskwarden
from taskwarden import Supervisor, TaskTimeout


def hang() -> None:
    time.sleep(3600)  # never returns


def slow_but_alive(steps: int) -> int:
    """Takes longer than its heartbeat interval in total, but beats at every step."""
    for i in range(steps):
        time.sleep(0.05)
        taskwarden.heartbeat(i)
    return steps


def hangs_halfway(steps: int) -> None:
    """Makes some progress, then gets stuck (a dead socket, a deadlocked C library)."""
    for i in range(steps):
        time.sleep(0.05)
        taskwarden.heartbeat(f"page {i + 1}/{2 * steps}")
    time.sleep(3600)


def cleans_up(marker: str) -> None:
    """Holds a resource; the grace period lets its ``finally`` block release it."""
    try:
        time.sleep(3600)
    finally:
        with open(marker, "w") as f:
            f.write(f"cleaned up in worker {os.getpid()}")


def flaky_download(chunks: int) -> str:
    """Fails with ConnectionError on its first two attempts; resumes where it stopped."""
    info = taskwarden.current_task()
    assert info is not None
    start = info.previous_progress or 0
    for chunk in range(start, chunks):
        taskwarden.heartbeat(chunk)
        if info.attempt < 3 and chunk == start + 2:
            raise ConnectionError(f"connection reset at chunk {chunk}")
    return f"attempt {info.attempt} finished, resumed at chunk {start}"


def broken() -> None:
    raise ValueError("a bug, not a network error: retrying will not help")


def main() -> None:
    with Supervisor(workers=2) as sup:
        run(sup)


def run(sup: Supervisor, heartbeat: float = 0.5) -> None:
    """The workload, under the supervisor it is given (examples/ray_cluster.py runs it
    on Ray, with more room for a heartbeat)."""
    # 1. A hard time limit.
    task = sup.schedule(hang, timeout=0.5)
    try:
        task.result()
    except TaskTimeout as exc:
        print(f"timeout:   {task.state} ({exc}); worker {task.worker_pid} killed")

    # 2. Heartbeats: slow but alive (1.5 heartbeats of work, a beat every 0.05 s) vs hung.
    alive = sup.schedule(slow_but_alive, args=(round(heartbeat * 30),), heartbeat=heartbeat)
    print(f"heartbeat: slow but alive -> {alive.result()} steps, {alive.state}")
    hung = sup.schedule(hangs_halfway, args=(5,), heartbeat=heartbeat)
    try:
        hung.result()
    except TaskTimeout as exc:
        print(f"heartbeat: went silent -> {hung.state} ({exc}); "
              f"last progress {hung.progress!r}")

    # 3. A grace period: TaskTimeout inside the task first, the kill only later.
    with tempfile.TemporaryDirectory() as tmp:
        marker = os.path.join(tmp, "released")
        graceful = sup.schedule(cleans_up, args=(marker,), timeout=0.3, grace=3)
        try:
            graceful.result()
        except TaskTimeout as exc:
            with open(marker) as f:
                print(f"grace:     {graceful.state} ({exc}); "
                      f"the finally block ran: {f.read()!r}")

    # 4. Retries, narrowed to ConnectionError, resuming from the last progress.
    download = sup.schedule(
        flaky_download, args=(10,),
        retries=3, retry_delay=0.05, retry_on=(ConnectionError,),
    )
    print(f"retries:   {download.result()!r} after {download.attempts} attempts")
    bug = sup.schedule(broken, retries=3, retry_delay=0.05, retry_on=(ConnectionError,))
    try:
        bug.result()
    except ValueError as exc:
        print(f"retries:   ValueError not retried ({bug.attempts} attempt): {exc}")


if __name__ == "__main__":
    main()
