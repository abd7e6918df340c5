"""taskwarden: a multiprocessing supervisor.

Kill and replace a worker whose task hangs, truly cancel a running task,
schedule one-shot, periodic and cron work with watchdog timers.

>>> from taskwarden import Supervisor
>>> with Supervisor(workers=2) as sup:          # doctest: +SKIP
...     task = sup.schedule(pow, args=(2, 10), timeout=5)
...     task.result()
1024
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._errors import (
        RemoteError,
        RemoteTraceback,
        TaskCancelled,
        TaskSuperseded,
        TaskTimeout,
        WorkerCrashed,
    )
    from ._states import JobState, TaskState
    from ._taskside import CurrentTask, current_task, heartbeat
    from .driver.job import Job
    from .driver.supervisor import Supervisor
    from .driver.task import Task

# Every public name is imported on first use. A worker process imports this package
# (its worker module lives here, and a task calls ``taskwarden.heartbeat()``): it
# boots without the supervisor side, the states' enums or anything else it does not
# use, and each millisecond of that is a millisecond of every cold start.
_LAZY = {
    "CurrentTask": "._taskside",
    "current_task": "._taskside",
    "heartbeat": "._taskside",
    "JobState": "._states",
    "TaskState": "._states",
    "RemoteError": "._errors",
    "RemoteTraceback": "._errors",
    "TaskCancelled": "._errors",
    "TaskSuperseded": "._errors",
    "TaskTimeout": "._errors",
    "WorkerCrashed": "._errors",
    "Supervisor": ".driver.supervisor",
    "Task": ".driver.task",
    "Job": ".driver.job",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'taskwarden' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "CurrentTask",
    "Job",
    "JobState",
    "RemoteError",
    "RemoteTraceback",
    "Supervisor",
    "Task",
    "TaskCancelled",
    "TaskState",
    "TaskSuperseded",
    "TaskTimeout",
    "WorkerCrashed",
    "current_task",
    "heartbeat",
]
__version__ = "0.1.0"
