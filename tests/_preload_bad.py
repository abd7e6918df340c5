"""A tasks' module that is harmful to import in a template process (and only there:
the test process and the workers import it as any module). What it does there is
chosen by the environment variable ``TW_PRELOAD_BAD``: ``hang``, ``thread``,
``process`` (leaves a child running), or ``thread-in-template`` (starts a thread only
in the template itself, whose parent is ``TW_PRELOAD_SUPERVISOR``, not in a probe)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import threading
import time

_stop = threading.Event()
_how = os.environ.get("TW_PRELOAD_BAD", "")
if multiprocessing.current_process().name == "taskwarden-worker-template":
    if _how == "hang":
        time.sleep(3600)
    elif _how == "thread":
        threading.Thread(target=_stop.wait, daemon=True).start()
    elif _how == "process":
        subprocess.Popen(["sleep", "60"])  # left running on purpose
    elif _how == "thread-in-template" and str(os.getppid()) == os.environ.get(
        "TW_PRELOAD_SUPERVISOR"
    ):
        threading.Thread(target=_stop.wait, daemon=True).start()


def value() -> int:
    return 42
