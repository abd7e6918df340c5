"""Every test must leave no process behind: the fixture below fails one that does."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import psutil
import pytest

from taskwarden import Supervisor

# Ray's own processes (a local Ray started once for the Ray tests: its raylet, GCS,
# agents, and the worker processes it keeps or ends on its own schedule), recognised
# by their own command lines. Not exempt: what taskwarden starts on Ray (a worker
# process, ``python -m taskwarden.pool._ray_child``), nor anything a task starts.
_RAY_BINARIES = ("raylet", "gcs_server")
_RAY_SCRIPTS = ("/ray/_private/", "/ray/dashboard/", "/ray/autoscaler/", "/ray/util/client/")


def _ray_own(cmdline: list[str]) -> bool:
    if not cmdline:
        return False
    if cmdline[0].startswith("ray::") or os.path.basename(cmdline[0]) in _RAY_BINARIES:
        return True
    return any(script in part for part in cmdline[:3] for script in _RAY_SCRIPTS)


def _ours() -> list[psutil.Process]:
    """Descendants of the test process, but loky's resource tracker (one per session)
    and Ray's own processes."""
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            cmdline = child.cmdline()
            if any("resource_tracker" in part for part in cmdline):
                continue
            if _ray_own(cmdline):
                continue
        except psutil.Error:
            continue
        out.append(child)
    return out


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    before = {p.pid for p in _ours()}
    yield
    deadline = time.monotonic() + 10.0
    leaked = [p for p in _ours() if p.pid not in before]
    while leaked and time.monotonic() < deadline:
        psutil.wait_procs(leaked, timeout=0.2)
        leaked = [p for p in _ours() if p.pid not in before]
    if leaked:
        desc = [(p.pid, " ".join(p.cmdline())[:80]) for p in leaked if p.is_running()]
        for p in leaked:
            with contextlib.suppress(psutil.Error):
                p.kill()
        pytest.fail(f"test left processes running: {desc}")


@pytest.fixture
def sup() -> Iterator[Supervisor]:
    """A two-worker supervisor, shut down (and its workers gone) after the test."""
    s = Supervisor(workers=2)
    yield s
    s.shutdown(wait=True, cancel_futures=True)
