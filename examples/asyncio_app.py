"""taskwarden from asyncio: awaitable tasks, ``async def`` tasks, cancellation that kills.

Shows:
- ``async with Supervisor(...)``: its exit waits for shutdown off the event loop;
- tasks are awaitable (``await sup.submit(...)``, ``asyncio.gather``);
- an ``async def`` function runs to completion inside the worker process;
- cancelling the coroutine that awaits a task (here ``asyncio.wait_for`` timing out)
  cancels the task, and a running task's process is killed.

Run it with:  python examples/asyncio_app.py
"""

from __future__ import annotations

import asyncio
import os
import time

from taskwarden import Supervisor


def crunch(n: int) -> int:
    return sum(i * i for i in range(n))


async def fetch(name: str, seconds: float) -> str:
    """An async def task: it gets its own event loop in the worker."""
    await asyncio.sleep(seconds)
    return f"{name} fetched in worker {os.getpid()}"


def stuck() -> None:
    time.sleep(3600)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def main() -> None:
    async with Supervisor(workers=2, timeout=30) as sup:
        print("await a task:", await sup.submit(crunch, 100_000))

        results = await asyncio.gather(*(sup.submit(crunch, n) for n in (10, 100, 1000)))
        print("gather:      ", results)

        print("async def:   ", await sup.submit(fetch, "a page", 0.1))

        task = sup.submit(stuck)
        while task.worker_pid is None or task.state != "RUNNING":
            await asyncio.sleep(0.01)
        pid = task.worker_pid
        try:
            await asyncio.wait_for(task, timeout=0.3)  # gives up: cancels the await
        except asyncio.TimeoutError:
            print("wait_for:     gave up after 0.3 s, which cancelled the awaited task")
        for _ in range(100):  # the kill is asynchronous: give it a moment
            if not alive(pid):
                break
            await asyncio.sleep(0.02)
        print(f"cancelled:    task {task.state}, its worker {pid} alive: {alive(pid)}")

        print("pool lives on:", await sup.submit(crunch, 10))


if __name__ == "__main__":
    asyncio.run(main())
