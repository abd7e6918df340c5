"""taskwarden: a multiprocessing supervisor.

Kill and replace a worker whose task hangs, truly cancel a running task,
schedule one-shot, periodic and cron work with watchdog timers.

>>> from taskwarden import Supervisor
>>> with Supervisor(workers=2) as sup:          # doctest: +SKIP
...     task = sup.schedule(pow, args=(2, 10), timeout=5)
...     task.result()
1024
"""

from ._errors import (
    RemoteError,
    RemoteTraceback,
    TaskCancelled,
    TaskSuperseded,
    TaskTimeout,
    WorkerCrashed,
)
from ._states import JobState, TaskState
from .driver.job import Job
from .driver.supervisor import Supervisor
from .driver.task import Task
from .pool._worker import CurrentTask, current_task, heartbeat

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
