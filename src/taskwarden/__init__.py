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

if TYPE_CHECKING:
    from .driver.job import Job
    from .driver.supervisor import Supervisor
    from .driver.task import Task

# The supervisor side is imported on first use: a worker process imports this
# package (for heartbeat() and current_task()) and should boot without it.
_LAZY = {
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
