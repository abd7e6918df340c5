"""taskwarden in one minute: CPU jobs, a hung task killed, a crash isolated, a cancel.

Run it with:  python examples/quickstart.py
"""

from __future__ import annotations

import os
import time

from taskwarden import Supervisor, TaskTimeout, WorkerCrashed


def crunch(n: int) -> int:
    """Some CPU-heavy work."""
    return sum(i * i for i in range(n))


def hang() -> None:
    time.sleep(3600)  # a task that never returns


def crash() -> None:
    os._exit(1)  # a worker that dies under its task


def main() -> None:
    with Supervisor(workers=2, timeout=30) as sup:
        jobs = [sup.submit(crunch, 200_000 + i) for i in range(8)]
        print("8 CPU jobs:", [j.result() % 1000 for j in jobs])

        hung = sup.schedule(hang, timeout=0.5)
        try:
            hung.result()
        except TaskTimeout as exc:
            print(f"hung task: {hung.state} ({exc}); its worker {hung.worker_pid} was killed")

        crashed = sup.submit(crash)
        try:
            crashed.result()
        except WorkerCrashed as exc:
            print(f"crashed task: {crashed.state} ({exc})")

        long_running = sup.submit(hang)
        while long_running.state != "RUNNING":
            time.sleep(0.01)
        print("cancel a running task:", long_running.cancel(), long_running.state)

        print("the pool lives on:", sup.submit(crunch, 10).result())
        stats = sup.stats()
        print("workers replaced:", stats["workers_replaced"], "| by state:",
              {k: v for k, v in stats["by_state"].items() if v})


if __name__ == "__main__":
    main()
