"""asyncio callers: awaiting tasks, async with, and what cancelling an await does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from taskwarden import Supervisor, TaskCancelled, TaskState, TaskSuperseded

import _tasks as T
from _live import gone, read_pid


def test_tasks_are_awaitable_inside_async_with() -> None:
    async def main() -> list[int]:
        async with Supervisor(workers=2) as sup:
            return list(await asyncio.gather(*(sup.submit(T.square, i) for i in range(5))))

    assert asyncio.run(main()) == [0, 1, 4, 9, 16]


def test_an_async_def_task_runs_to_completion_in_the_worker() -> None:
    async def main() -> int:
        async with Supervisor(workers=1) as sup:
            return await sup.submit(T.async_add, 20, 22)

    assert asyncio.run(main()) == 42


def test_a_task_error_is_raised_by_await() -> None:
    async def main() -> None:
        async with Supervisor(workers=1) as sup:
            await sup.submit(T.fail, "from the worker")

    with pytest.raises(ValueError, match="from the worker"):
        asyncio.run(main())


def test_cancelling_the_awaiting_coroutine_kills_the_running_task(tmp_path: Path) -> None:
    """As with run_in_executor, users expect the work to stop: here the process dies."""
    marker = tmp_path / "pid"

    async def main() -> tuple[TaskState, int]:
        async with Supervisor(workers=1) as sup:
            task = sup.submit(T.touch_then_sleep, str(marker), 60)
            waiter = asyncio.ensure_future(task)
            loop = asyncio.get_running_loop()
            pid = await loop.run_in_executor(None, read_pid, marker)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            return task.state, pid

    state, pid = asyncio.run(main())
    assert state is TaskState.CANCELLED
    assert gone(pid)


def test_async_exit_does_not_block_the_event_loop() -> None:
    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        async with Supervisor(workers=1) as sup:
            sup.submit(T.sleep, 0.3)
        tick_task.cancel()
        return ticks

    assert asyncio.run(main()) >= 5  # the loop kept ticking while shutdown waited


def test_awaiting_a_task_cancelled_elsewhere_raises_task_cancelled() -> None:
    async def main() -> None:
        async with Supervisor(workers=1) as sup:
            task = sup.schedule(T.square, args=(2,), delay=60)
            task.cancel()
            with pytest.raises(TaskCancelled):
                await task
            old = sup.schedule(T.sleep, args=(60,), key="k")
            new = sup.schedule(T.square, args=(3,), key="k")
            assert await new == 9
            with pytest.raises(TaskSuperseded) as info:
                await old
            assert info.value.winner_id == new.id

    asyncio.run(main())
