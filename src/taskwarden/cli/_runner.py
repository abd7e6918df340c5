"""What runs inside a supervisor worker: one run of one target, measured.

    worker process (run_one)                      the run's process tree
    ────────────────────────                      ──────────────────────
    Popen ─────────────────────────────────────▶  script / sh -c (+ children)
    reader threads  ◀── stdout, stderr pipes ───
      │ chunks
      ▼
    main thread: echo or capture, stderr tail, heartbeat(last line)
    waiter thread: os.wait4 → exit status, rusage (CPU, ru_maxrss)
    TreeSampler thread: tree RSS every 20 ms → peak memory

Only the main thread calls ``taskwarden.heartbeat``, once per burst of
output (at most every 50 ms), with the last line printed as progress: a run
that prints nothing for ``--heartbeat`` seconds is judged hung.

If the worker is killed (timeout, heartbeat, cancel), the supervisor kills
this whole tree; nothing here runs. If ``run_one`` itself is interrupted
(an exception, KeyboardInterrupt), its ``finally`` kills the tree.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import BinaryIO, TypedDict

import psutil

from taskwarden.cli._treewatch import TreeSampler, kill_tree

STDERR_TAIL_LINES = 20
_TAIL_BYTES = 64 * 1024
_HEARTBEAT_EVERY = 0.05
_PROGRESS_CHARS = 200
_DRAIN_AFTER_EXIT = 5.0  # seconds to wait for the pipes to close once the tree is dead


@dataclass(frozen=True)
class RunSpec:
    """One run, as sent to a worker (pickled): what to start and where output goes."""

    command: tuple[str, ...]  # argv; for a shell target, (shell command,)
    shell: bool
    cwd: str
    stderr_path: str  # the run's stderr is appended here too, for runs that get killed
    stats_path: str  # peak memory and CPU so far, for runs that get killed
    capture_path: str | None = None  # if set, stdout+stderr go here instead of the terminal
    env: dict[str, str] = field(default_factory=dict)  # added to the worker's environment


class RunResult(TypedDict):
    """What ``run_one`` returns for a run whose process exited by itself."""

    exit_status: int  # negative: killed by that signal (as subprocess reports it)
    wall: float  # seconds, from start to exit
    cpu: float  # user + system seconds of the tree (the script and its waited-for children)
    peak_rss: int  # bytes, the tree's total resident memory at its largest
    stderr_tail: list[str]
    pid: int


def quiet_worker() -> None:
    """Worker initializer: let the command line, not KeyboardInterrupt, handle Ctrl-C.

    A terminal's Ctrl-C signals the whole foreground process group. The
    command line then cancels every run; a worker that died of
    KeyboardInterrupt on its own would only add a traceback. The handler is a
    Python function, not SIG_IGN, because exec resets handlers (but not
    SIG_IGN) to the default: the scripts still see Ctrl-C as usual.
    """
    signal.signal(signal.SIGINT, _ignore_signal)


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    pass


def run_one(spec: RunSpec) -> RunResult:
    """Run ``spec`` to completion in a fresh process and measure it (in a worker)."""
    from taskwarden import heartbeat

    return run_measured(spec, heartbeat)


def run_measured(spec: RunSpec, beat: Callable[[object], None]) -> RunResult:
    """``run_one`` with the heartbeat function passed in (so tests can run it in-process)."""
    env = {**os.environ, **spec.env}
    command: str | list[str] = spec.command[0] if spec.shell else list(spec.command)
    events: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
    inherited_maxrss = _own_maxrss()
    started = time.monotonic()
    proc = subprocess.Popen(
        command,
        shell=spec.shell,
        cwd=spec.cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        root = psutil.Process(proc.pid)
    except psutil.Error:  # already gone (and not yet reaped, so this is rare)
        root = None
    sampler = TreeSampler(proc.pid, spec.stats_path) if root is not None else None
    waiter = _Waiter(proc, events)
    readers = [
        threading.Thread(target=_pump, args=(proc.stdout, "out", events), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, "err", events), daemon=True),
    ]
    exited = False
    try:
        if sampler is not None:
            sampler.start()
        waiter.start()
        for reader in readers:
            reader.start()
        with _Output(spec) as output:
            open_streams = 2
            last_beat = 0.0
            drain_deadline: float | None = None
            while open_streams or not exited:
                try:
                    timeout = None if drain_deadline is None else drain_deadline - time.monotonic()
                    kind, data = events.get(timeout=timeout if timeout is None else max(timeout, 0))
                except queue.Empty:
                    break  # a process we never saw still holds the pipes: give up on them
                if kind == "exit":
                    exited = True
                    # Whatever the script left running dies with the run.
                    if sampler is not None:
                        sampler.stop()
                        kill_tree(sampler.descendants())
                    drain_deadline = time.monotonic() + _DRAIN_AFTER_EXIT
                elif not data:
                    open_streams -= 1
                else:
                    output.write(kind, data)
                    now = time.monotonic()
                    if now - last_beat >= _HEARTBEAT_EVERY:
                        last_beat = now
                        beat(output.last_line)
        wall = waiter.finished_at - started
    finally:
        if not exited:
            seen = sampler.descendants() if sampler is not None else []
            kill_tree([root, *seen] if root is not None else seen, reaped_elsewhere=proc.pid)
            waiter.join()
        if sampler is not None:
            sampler.stop()
        for pipe in (proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                pipe.close()
    cpu = waiter.cpu_seconds
    # Linux carries the high-water mark across fork and exec, so a small child
    # reports this worker's own peak: ru_maxrss is a floor only when it is larger.
    peak = waiter.maxrss_bytes if waiter.maxrss_bytes > inherited_maxrss else 0
    if sampler is not None:
        cpu = max(cpu, sampler.cpu_seconds)
        peak = max(peak, sampler.peak_rss)
    assert proc.returncode is not None
    return RunResult(
        exit_status=proc.returncode,
        wall=wall,
        cpu=cpu,
        peak_rss=peak,
        stderr_tail=output.stderr_tail(),
        pid=proc.pid,
    )


def _own_maxrss() -> int:
    try:
        import resource
    except ImportError:  # Windows
        return 0
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _pump(pipe: BinaryIO, kind: str, events: queue.SimpleQueue[tuple[str, bytes]]) -> None:
    """Forward a pipe's bytes as they come (not line by line); b"" marks its end."""
    fd = pipe.fileno()
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        events.put((kind, data))
        if not data:
            return


class _Waiter:
    """Reaps the run's process with ``os.wait4`` to get its rusage (CPU, ru_maxrss)."""

    def __init__(
        self, proc: subprocess.Popen[bytes], events: queue.SimpleQueue[tuple[str, bytes]]
    ) -> None:
        self.cpu_seconds = 0.0
        self.maxrss_bytes = 0
        self.finished_at = 0.0
        self._proc = proc
        self._events = events
        self._thread = threading.Thread(target=self._wait, name="taskwarden-wait", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        if self._thread.ident is not None:  # started
            self._thread.join()

    def _wait(self) -> None:
        if hasattr(os, "wait4"):
            _, status, usage = os.wait4(self._proc.pid, 0)
            self.finished_at = time.monotonic()
            self.cpu_seconds = usage.ru_utime + usage.ru_stime
            # ru_maxrss is in KiB on Linux, in bytes on macOS.
            scale = 1 if sys.platform == "darwin" else 1024
            self.maxrss_bytes = usage.ru_maxrss * scale
            # Tell Popen, so that it does not try to reap the pid again.
            self._proc.returncode = os.waitstatus_to_exitcode(status)
        else:  # Windows: no rusage; the sampler's numbers stand alone
            self._proc.wait()
            self.finished_at = time.monotonic()
        self._events.put(("exit", b""))


class _Output:
    """Where a run's output goes: echoed to this process's stdout/stderr, or to a file.

    The stderr tail is kept either way, and stderr is also appended to
    ``spec.stderr_path`` so that the parent can show it for a killed run.
    """

    def __init__(self, spec: RunSpec) -> None:
        self._spec = spec
        self._tail = bytearray()
        self.last_line = ""
        self._stderr_file: BinaryIO | None = None
        self._capture_file: BinaryIO | None = None
        self._closed: set[str] = set()  # streams we can no longer echo to

    def __enter__(self) -> _Output:
        self._stderr_file = open(self._spec.stderr_path, "ab", buffering=0)
        if self._spec.capture_path is not None:
            self._capture_file = open(self._spec.capture_path, "ab", buffering=0)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for f in (self._stderr_file, self._capture_file):
            if f is not None:
                f.close()

    def write(self, kind: str, data: bytes) -> None:
        if self._capture_file is not None:
            self._capture_file.write(data)
        elif kind not in self._closed:
            try:
                _echo(sys.stdout if kind == "out" else sys.stderr, data)
            except OSError:  # the reader went away (``| head``): the run goes on
                self._closed.add(kind)
        if kind == "err":
            assert self._stderr_file is not None
            self._stderr_file.write(data)
            self._tail += data
            del self._tail[:-_TAIL_BYTES]
        line = _last_line(data)
        if line:
            self.last_line = line

    def stderr_tail(self) -> list[str]:
        return tail_lines(bytes(self._tail))


def tail_lines(data: bytes, count: int = STDERR_TAIL_LINES) -> list[str]:
    """The last ``count`` lines of ``data``, decoded leniently."""
    return data.decode("utf-8", errors="replace").splitlines()[-count:]


def _last_line(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    for line in reversed(text.split("\n")):
        if line.strip():
            return line.strip()[:_PROGRESS_CHARS]
    return ""


def _echo(stream: object, data: bytes) -> None:
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        buffer.write(data)
        buffer.flush()
    else:  # a replaced sys.stdout (a test's capture, say) that takes text
        write = getattr(stream, "write", None)
        if write is not None:
            write(data.decode("utf-8", errors="replace"))
