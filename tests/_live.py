"""Helpers for tests against live supervisors: wait on a condition, tell a process gone."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil

WAIT = 20.0  # generous bound for anything that should take milliseconds


def wait_for(cond: Callable[[], object], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.002)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def read_pid(path: Path) -> int:
    wait_for(lambda: path.exists() and path.read_text().strip())
    return int(path.read_text())
