"""Shared helpers: statistics, process bookkeeping and one adapter per pool.

Every adapter exposes the same small surface (``submit``, ``result``,
``shutdown``) so that a benchmark is written once and run against each peer.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import ProcessPoolExecutor as StdProcessPoolExecutor
from typing import Any

import psutil

WORKERS = 2

# Display names, in table order.
PEERS: dict[str, str] = {
    "taskwarden": "taskwarden",
    "ppe": "PPE",
    "loky": "loky",
    "pebble": "pebble",
    "mp": "mp.Pool",
    "sched": "sched",
    "apscheduler": "APS3",
}

PEER_DESCRIPTIONS: dict[str, str] = {
    "taskwarden": "taskwarden.Supervisor(workers=2)",
    "ppe": "concurrent.futures.ProcessPoolExecutor(2)",
    "loky": "loky.get_reusable_executor(max_workers=2)",
    "pebble": "pebble.ProcessPool(max_workers=2)",
    "mp": "multiprocessing.Pool(2) (apply_async)",
    "sched": "stdlib sched.scheduler thread submitting to ProcessPoolExecutor(2)",
    "apscheduler": "APScheduler 3 BackgroundScheduler + its ProcessPoolExecutor(2)",
}

START_METHODS: dict[str, str] = {
    "taskwarden": "loky",
    "ppe": "fork",
    "loky": "loky (spawn)",
    "pebble": "fork",
    "mp": "fork",
    "sched": "fork (PPE)",
    "apscheduler": "fork (PPE)",
}


CLEANUP_PROBLEMS: list[str] = []  # failed shutdowns, reported with the cell's figures


class NotSupported(Exception):
    """The peer has no such feature; the cell shows the message instead of a figure."""


# --------------------------------------------------------------------------- stats


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else math.nan


def percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 100]."""
    if not xs:
        return math.nan
    s = sorted(xs)
    if len(s) == 1:
        return float(s[0])
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


# ---------------------------------------------------------------- process helpers


def pid_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (does not exist, or is a zombie)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return True


def wait_gone(pid: int, timeout: float, poll: float = 0.0002) -> float | None:
    """Poll ``pid`` every ``poll`` seconds; the perf_counter time it was seen
    gone, or None if it still runs after ``timeout``."""
    end = time.perf_counter() + timeout
    while True:
        now = time.perf_counter()
        if pid_gone(pid):
            return now
        if now > end:
            return None
        time.sleep(poll)


def wait_until(cond: Callable[[], bool], timeout: float, poll: float = 0.0002) -> bool:
    end = time.perf_counter() + timeout
    while not cond():
        if time.perf_counter() > end:
            return False
        time.sleep(poll)
    return True


def read_pid(path: str, timeout: float) -> int | None:
    """Wait for a task to write its worker pid to ``path``."""
    pid: int | None = None

    def ready() -> bool:
        nonlocal pid
        try:
            with open(path) as f:
                pid = int(f.read())
        except (OSError, ValueError):
            return False
        return True

    return pid if wait_until(ready, timeout) else None


def live_descendants() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
    return out


def describe(procs: Iterable[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            cmd = " ".join(p.cmdline())[:120]
        except psutil.Error:
            cmd = "?"
        out.append(f"{p.pid}: {cmd}")
    return out


def kill_all(procs: Iterable[psutil.Process], timeout: float = 5.0) -> None:
    procs = list(procs)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=timeout)


def is_helper(p: psutil.Process) -> bool:
    """Resource trackers outlive pools by design and exit with the interpreter."""
    try:
        return "resource_tracker" in " ".join(p.cmdline())
    except psutil.Error:
        return True


def bounded(fn: Callable[[], Any], timeout: float, what: str) -> None:
    """Run ``fn`` in a daemon thread; raise TimeoutError if it does not return in time."""
    err: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as e:
            err.append(e)

    t = threading.Thread(target=target, name=f"bounded-{what}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"{what} did not return within {timeout:g} s")
    if err:
        raise err[0]


def done_time(fut: Any) -> list[float]:
    """Record (perf_counter) when ``fut`` resolves, via a done callback."""
    box: list[float] = []
    fut.add_done_callback(lambda _f: box.append(time.perf_counter()))
    return box


def when(box: list[float], timeout: float = 5.0) -> float:
    """The time ``done_time`` recorded. A done-callback may run in another thread than
    the one that resolved the future (taskwarden runs them on a callback thread), so
    it may come a moment after ``result()`` returned: wait for it."""
    deadline = time.monotonic() + timeout
    while not box:
        if time.monotonic() > deadline:
            raise AssertionError("the done-callback did not run")
        time.sleep(0.0005)
    return box[0]


# ------------------------------------------------------------------------ adapters


class PoolAdapter:
    """One pool of WORKERS processes behind a uniform surface."""

    key = ""
    closed = False

    def close(self) -> None:
        """Shut down once (idempotent)."""
        if not self.closed:
            self.closed = True
            self.shutdown()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> Iterator[Any]:
        """The pool's own ``map`` (results in order, as they are consumed)."""
        raise NotSupported("no map")

    def result(self, handle: Any, timeout: float) -> Any:
        return handle.result(timeout=timeout)

    def shutdown(self) -> None:
        raise NotImplementedError

    def submit_timeout(self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float) -> Any:
        raise NotSupported("no per-task timeout")

    def worker_pid(self, handle: Any, pid_path: str, timeout: float) -> int | None:
        return read_pid(pid_path, timeout)

    def is_running(self, handle: Any) -> bool:
        return bool(handle.running())


class PPEAdapter(PoolAdapter):
    key = "ppe"

    def __init__(self) -> None:
        self.ex = StdProcessPoolExecutor(max_workers=WORKERS)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return self.ex.submit(fn, *args)

    def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> Iterator[Any]:
        return self.ex.map(fn, items)

    def shutdown(self) -> None:
        self.ex.shutdown(wait=True, cancel_futures=True)


class LokyAdapter(PoolAdapter):
    key = "loky"

    def __init__(self) -> None:
        from loky import get_reusable_executor

        self.ex = get_reusable_executor(max_workers=WORKERS)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.ex.submit(fn, *args)

    def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> Iterator[Any]:
        return self.ex.map(fn, items)  # type: ignore[no-any-return]

    def shutdown(self) -> None:
        self.ex.shutdown(wait=True, kill_workers=True)


class PebbleAdapter(PoolAdapter):
    key = "pebble"

    def __init__(self, timeout: float | None = None) -> None:
        import pebble

        self.pool = pebble.ProcessPool(max_workers=WORKERS)
        self.timeout = timeout

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.schedule(fn, args=args, timeout=self.timeout)

    def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> Iterator[Any]:
        return self.pool.map(fn, items, timeout=self.timeout).result()  # type: ignore[no-any-return]

    def submit_timeout(self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float) -> Any:
        return self.pool.schedule(fn, args=args, timeout=timeout)

    def shutdown(self) -> None:
        self.pool.stop()  # type: ignore[no-untyped-call]
        self.pool.join(timeout=10)


class MPAdapter(PoolAdapter):
    key = "mp"

    def __init__(self) -> None:
        import multiprocessing

        self.pool = multiprocessing.Pool(processes=WORKERS)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.apply_async(fn, args)

    def result(self, handle: Any, timeout: float) -> Any:
        return handle.get(timeout)

    def is_running(self, handle: Any) -> bool:
        raise NotSupported("AsyncResult has no running()")

    def shutdown(self) -> None:
        self.pool.terminate()
        self.pool.join()


class TaskwardenAdapter(PoolAdapter):
    key = "taskwarden"

    def __init__(self, timeout: float | None = None) -> None:
        import taskwarden

        policy: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        self.sup = taskwarden.Supervisor(workers=WORKERS, **policy)
        self.shutdown_timeout = 30.0

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.sup.submit(fn, *args)

    def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> Iterator[Any]:
        return self.sup.map(fn, items)

    def submit_timeout(self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float) -> Any:
        return self.sup.schedule(fn, args=args, timeout=timeout)

    def worker_pid(self, handle: Any, pid_path: str, timeout: float) -> int | None:
        box: list[int] = []

        def ready() -> bool:
            pid = handle.worker_pid
            if pid:
                box.append(int(pid))
            return bool(pid)

        return box[0] if wait_until(ready, timeout) else None

    def is_running(self, handle: Any) -> bool:
        return bool(handle.state == "RUNNING" and handle.worker_pid)

    def shutdown(self) -> None:
        bounded(
            lambda: self.sup.shutdown(wait=True, cancel_futures=True),
            self.shutdown_timeout,
            "Supervisor.shutdown(wait=True, cancel_futures=True)",
        )


def make_pool(peer: str, timeout: float | None = None) -> PoolAdapter:
    if peer == "taskwarden":
        return TaskwardenAdapter(timeout)
    if peer == "pebble":
        return PebbleAdapter(timeout)
    if timeout is not None:
        raise NotSupported("no per-task timeout")
    if peer == "ppe":
        return PPEAdapter()
    if peer == "loky":
        return LokyAdapter()
    if peer == "mp":
        return MPAdapter()
    raise NotSupported(f"{peer} is not a pool")


class pool_of(contextlib.AbstractContextManager["PoolAdapter"]):
    """``with pool_of(peer) as pool:`` -- always shuts the pool down."""

    def __init__(self, peer: str, timeout: float | None = None) -> None:
        self.peer = peer
        self.timeout = timeout
        self.pool: PoolAdapter | None = None

    def __enter__(self) -> PoolAdapter:
        self.pool = make_pool(self.peer, self.timeout)
        return self.pool

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self.pool is None:
            return
        try:
            self.pool.close()
        except Exception as e:
            # Never mask the benchmark's own error, never drop figures already taken:
            # the cell reports the failed shutdown next to them.
            CLEANUP_PROBLEMS.append(f"{PEERS.get(self.peer, self.peer)} shutdown: "
                                    f"{type(e).__name__}: {e}")


def warm(pool: PoolAdapter, timeout: float = 30.0) -> None:
    """Return once both workers are up: two concurrent tasks ran in two distinct pids."""
    from _tasks import sleep_pid

    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        hs = [pool.submit(sleep_pid, 0.03) for _ in range(WORKERS)]
        pids = {pool.result(h, timeout) for h in hs}
        if len(pids) == WORKERS:
            return
    raise TimeoutError(f"pool did not bring {WORKERS} workers up within {timeout:g} s")


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


def cpu_seconds(proc: psutil.Process | None = None) -> float:
    t = (proc or psutil.Process()).cpu_times()
    return float(t.user + t.system)


def children_cpu_seconds() -> float:
    total = 0.0
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += cpu_seconds(p)
    return total


def machine_info() -> dict[str, Any]:
    import platform
    import sys
    from datetime import datetime, timezone

    load = os.getloadavg()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average": [round(x, 2) for x in load],
        "workers": WORKERS,
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor()


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("taskwarden", "loky", "cloudpickle", "pebble", "apscheduler", "psutil"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out
