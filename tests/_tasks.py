"""Task functions for the real-process tests (importable by the worker processes)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0) -> int:
    return a + b


def pid() -> int:
    return os.getpid()


def fail(message: str) -> None:
    raise ValueError(message)


def exit_with(code: int) -> None:
    os._exit(code)


def kill_self(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(10)


def segfault() -> None:
    ctypes.string_at(0)


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def touch_then_sleep(marker: str, seconds: float) -> None:
    Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)


def stuck_in_c_ignoring_sigterm(marker: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(marker).write_text(str(os.getpid()))
    libc = ctypes.CDLL(None)
    libc.sleep(1000)  # C code: no Python signal handler runs here


def spawn_hanging_child(pidfile: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
    Path(pidfile).write_text(str(child.pid))
    child.wait()


def unpicklable_result() -> Any:
    return threading.Lock()


class Unpicklable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable() -> None:
    raise Unpicklable("cannot travel")


class _Bomb:
    def __reduce__(self) -> Any:
        return (_explode, ())


def _explode() -> None:
    raise RuntimeError("boom while unpickling")


class _Exiter:
    def __reduce__(self) -> Any:
        return (sys.exit, (3,))


def result_that_explodes_when_unpickled() -> Any:
    return _Bomb()


def result_that_exits_when_unpickled() -> Any:
    return _Exiter()


def raise_system_exit() -> None:
    raise SystemExit(4)


def remember(value: int) -> None:
    global _remembered
    _remembered = value


_remembered: int | None = None


def recall() -> int | None:
    return _remembered


def init_fails() -> None:
    raise RuntimeError("initializer broke")


def beat_then_go_silent(beats: int, interval: float) -> None:
    import taskwarden

    for i in range(beats):
        taskwarden.heartbeat(i)
        time.sleep(interval)
    time.sleep(1000)


def beat_steadily(total: float, interval: float) -> str:
    import taskwarden

    end = time.monotonic() + total
    n = 0
    while time.monotonic() < end:
        n += 1
        taskwarden.heartbeat(n)
        time.sleep(interval)
    return "done"


def sleep_with_finally(marker: str, seconds: float) -> None:
    try:
        time.sleep(seconds)
    finally:
        Path(marker).write_text("finally ran")


def whoami() -> tuple[str, int, float | None, Any]:
    import taskwarden

    info = taskwarden.current_task()
    assert info is not None
    return info.id, info.attempt, info.deadline, info.previous_progress


def fail_until_attempt(n: int) -> int:
    import taskwarden

    info = taskwarden.current_task()
    assert info is not None
    taskwarden.heartbeat(f"attempt {info.attempt}")
    if info.attempt < n:
        raise ConnectionError(f"attempt {info.attempt} failed")
    return info.attempt


async def async_add(a: int, b: int) -> int:
    import asyncio

    await asyncio.sleep(0.01)
    return a + b


def stamp() -> float:
    return time.time()


_hoard: list[bytes] = []


def hoard(megabytes: int) -> int:
    """Keep memory after returning, as a leak would."""
    _hoard.append(b"x" * (megabytes << 20))
    return os.getpid()


def leave_a_thread_running() -> int:
    """Start a non-daemon thread that never ends: it would keep its process from exiting."""
    threading.Thread(target=time.sleep, args=(3600,), name="left-behind").start()
    return os.getpid()


def note_pid_at_exit(path: str) -> None:
    """An initializer: when this process exits, its exit hook appends its pid to ``path``."""
    import atexit

    def note() -> None:
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")

    atexit.register(note)


def hang_at_exit() -> int:
    """Register an exit hook that never returns: the process cannot end by itself."""
    import atexit

    atexit.register(time.sleep, 3600)
    return os.getpid()


# Decorated task functions (the binding check must look at what is actually called).
def inject_first(value: int) -> Any:
    """A decorator that passes ``value`` as the first argument: callers give one less."""
    import functools

    def decorate(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn(value, *args, **kwargs)

        return wrapper

    return decorate


@inject_first(10)
def add_to_ten(a: int, b: int) -> int:
    return a + b


def negatable(fn: Any) -> Any:
    """A decorator that adds a keyword of its own."""
    import functools

    @functools.wraps(fn)
    def wrapper(x: int, *, negate: bool = False) -> Any:
        result = fn(x)
        return -result if negate else result

    return wrapper


@negatable
def square_or_negated(x: int) -> int:
    return x * x


def _cache(fn: Any) -> Any:
    import functools

    return functools.lru_cache(maxsize=None)(fn)


@_cache
def lru_square(x: int) -> int:
    """Wrapped by C code (no signature of its own): the wrapped function's is checked."""
    return x * x


def blob(i: int, size: int = 1 << 20) -> bytes:
    """A result of ``size`` bytes (1 MiB by default)."""
    return bytes([i % 256]) * size


class Box:
    """A result that can be watched with a weakref (bytes and ints cannot)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def boxed(i: int) -> Box:
    return Box(i)


class Holder:
    """An object whose bound methods are submitted; a weakref tells when it is freed."""

    def __init__(self, payload: Any = None) -> None:
        self.payload = payload

    def get(self) -> Any:
        return self.payload

    def times(self, x: int, factor: int = 2) -> int:
        return x * factor

    def __call__(self, x: int, factor: int = 3) -> int:
        return x * factor


# ----------------------------------------------------- hardening (worker and pool side)
def print_and_return(value: int) -> int:
    print("a line from the task", value)
    return value


def close_stdout_then_return(value: int) -> int:
    sys.stdout.close()
    return value


def fork_child_that_returns() -> str:
    """A forked child that returns (falls back into the caller) instead of os._exit."""
    child = os.fork()
    if child == 0:
        return "child-result"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        done, _ = os.waitpid(child, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    time.sleep(0.05)  # let a child that answered for us be read first, if it did
    return "parent-result"


def leave_a_heartbeat_thread(interval: float) -> int:
    """Start a thread that heartbeats for ever, and return: it outlives this task."""
    import taskwarden

    def beat() -> None:
        while True:
            taskwarden.heartbeat("left behind")
            time.sleep(interval)

    threading.Thread(target=beat, daemon=True, name="left-behind-beat").start()
    return os.getpid()


def heartbeat_from_own_thread(total: float, interval: float) -> str:
    """The usual pattern: a thread this task starts heartbeats while the main thread works."""
    import taskwarden

    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            taskwarden.heartbeat()
            time.sleep(interval)

    t = threading.Thread(target=beat, daemon=True)
    t.start()
    time.sleep(total)
    stop.set()
    t.join()
    return "done"


def _channel_fds() -> list[int]:
    import stat

    fds = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                fds.append(fd)
        except OSError:
            pass
    return fds


def write_into_channel(data: bytes) -> int:
    """What a use-after-close write to a reused fd does: garbage into the worker's socket."""
    fds = _channel_fds()
    for fd in fds:
        os.write(fd, data)
    time.sleep(2)  # the supervisor kills us for it long before this
    return len(fds)


def hold_the_gil(seconds: float) -> float:
    """C code that keeps the GIL (a PyDLL call does not release it) and that no signal
    cuts short, as a long computation in a C extension (the signals the worker uses go
    to its other thread, which then waits for the GIL)."""
    blocked = {signal.SIGUSR1, signal.SIGUSR2}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        ctypes.PyDLL(None).usleep(int(seconds * 1e6))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return seconds


def churn_threads_with_a_child(pidfile: str) -> None:
    """A live child, and threads starting and ending as fast as they can."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
    Path(pidfile).write_text(str(child.pid))

    def churn() -> None:
        while True:
            t = threading.Thread(target=lambda: None)
            t.start()
            t.join()

    for _ in range(6):
        threading.Thread(target=churn, daemon=True).start()
    child.wait()


def init_exit() -> None:
    os._exit(3)


def init_segfault() -> None:
    ctypes.string_at(0)


def init_abort() -> None:
    os.abort()


def init_hang() -> None:
    time.sleep(1000)


def init_child_then_hang(pidfile: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
    Path(pidfile).write_text(str(child.pid))
    time.sleep(1000)


def init_slow(seconds: float) -> None:
    time.sleep(seconds)


def note_pid_then_remember(path: str, value: int) -> None:
    """An initializer that appends this process's pid to ``path``, then remembers."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    remember(value)


def pid_and_recall() -> tuple[int, int | None]:
    return os.getpid(), _remembered


def stop_parent() -> str:
    """Stop this process's parent (a template, for a forked worker) with SIGSTOP; a
    worker whose parent is not a template (the supervisor itself) refuses."""
    parent = os.getppid()
    with open(f"/proc/{parent}/cmdline", "rb") as f:
        if b"taskwarden-worker-template" not in f.read():
            raise RuntimeError(f"the parent {parent} is not a template: not stopped")
    os.kill(parent, signal.SIGSTOP)
    return "stopped"


def signal_parent_then_sleep(sig: int, seconds: float) -> str:
    """Signal this process's parent (a template, a Ray agent...), then sleep."""
    os.kill(os.getppid(), sig)
    time.sleep(seconds)
    return "slept"
