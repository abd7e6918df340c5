"""What runs inside a supervisor worker: one run of one target, measured.

    worker process (run_one)                      the run's process tree
    ────────────────────────                      ──────────────────────
    [--prepare, untimed] ──────────────────────▶  sh -c CMD
    Popen ─────────────────────────────────────▶  script / command (+ children)

    no pipes (the default; Linux):
    main thread alone: poll(pidfd) → exit time; between polls, a tree sample
    every 20 ms (peak memory, CPU); then os.wait4 → exit status, rusage

    pipes (--heartbeat, --output pipe; or no pidfd):
    reader threads  ◀── stdout, stderr pipes ───
      │ chunks
      ▼
    main thread: echo or file, stderr tail, heartbeat(last line)
    waiter thread: os.wait4 → exit status, rusage (CPU, ru_maxrss)
    TreeSampler thread: a tree sample every 20 ms

Without pipes no second thread of ours runs while the run does, so none can
hold the GIL when it ends: the end is read off the clock as soon as the
kernel reports it.

Where output goes is what the run is measured with, so nothing is added
that the user did not ask for: with ``--output null`` (the default) stdout is
/dev/null and stderr a file (its tail is read from there), with ``inherit``
both are the worker's own (the terminal), with FILE stdout is appended to
FILE. Only ``--heartbeat`` (output is the sign of life) and ``--output pipe``
read through pipes. Only the main thread calls ``taskwarden.heartbeat``, once
per burst of output (at most every 50 ms), with the last line printed as
progress: a run that prints nothing for ``--heartbeat`` seconds is judged hung.

When the run's process exits, ``_sweep`` kills whatever it left running (the
worker is a child subreaper, see ``_treewatch``) and reports it; that also
closes any pipe a leftover held, so the drain ends at once. If the worker is
killed (timeout, heartbeat, cancel), the supervisor kills this whole tree;
nothing here runs. If ``run_one`` itself is interrupted (an exception,
KeyboardInterrupt), its ``finally`` kills the tree.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import BinaryIO, Literal, TypedDict

import psutil

from taskwarden._proctree import become_subreaper, leftovers, reap_zombie_children
from taskwarden._proctree import kill_trees as kill_tree
from taskwarden.cli._treewatch import (
    RUN_MARKER,
    SAMPLE_INTERVAL,
    TreeSampler,
    alive,
    describe,
    marked,
)

STDERR_TAIL_LINES = 20
_TAIL_BYTES = 64 * 1024
_HEARTBEAT_EVERY = 0.05
_PROGRESS_CHARS = 200
# Once the run's tree is dead, its pipes close at once; this bounds the wait for a
# process out of our reach (one that received the pipe over a socket, say).
_DRAIN_AFTER_EXIT = 0.5

OutputMode = Literal["null", "pipe", "inherit", "file"]


@dataclass(frozen=True)
class RunSpec:
    """One run, as sent to a worker (pickled): what to start and where output goes."""

    command: tuple[str, ...]  # argv; for a shell target, (shell command,)
    shell: bool
    cwd: str
    stderr_path: str  # where stderr is kept (or copied), for the failure report
    stats_path: str  # peak memory and CPU so far, for runs that get killed
    output: OutputMode = "null"  # where the run's stdout goes (see module docstring)
    output_path: str | None = None  # the file, for output="file"
    watch: bool = False  # read stdout and stderr through pipes and heartbeat on output
    env: dict[str, str] = field(default_factory=dict)  # added to the worker's environment
    prepare: str | None = None  # shell command run (untimed) just before the run
    run_id: str = ""  # TASKWARDEN_RUN: every process of the run inherits it


class RunResult(TypedDict):
    """What ``run_one`` returns for a run whose process exited by itself."""

    exit_status: int  # negative: killed by that signal (as subprocess reports it)
    wall: float  # seconds, from start to exit
    cpu: float  # user + system seconds of the tree (the script and its waited-for children)
    peak_rss: int  # bytes: the tree's memory at its largest (PSS summed, see _treewatch)
    stderr_tail: list[str]
    pid: int
    argv: list[str]  # what was executed
    left_behind: list[str]  # processes still running when the run ended (killed)
    prepare_status: int | None  # --prepare's exit status when it failed (the run did not start)


# Set in a worker of the command line (see quiet_worker): every process under it is a run's.
_dedicated_worker = False


def quiet_worker() -> None:
    """Worker initializer: Ctrl-C is the command line's business, orphans are ours.

    A terminal's Ctrl-C signals the whole foreground process group. The
    command line then cancels every run; a worker that died of
    KeyboardInterrupt on its own would only add a traceback. The handler is a
    Python function, not SIG_IGN, because exec resets handlers (but not
    SIG_IGN) to the default: the scripts still see Ctrl-C as usual.

    The worker also becomes a child subreaper, so that whatever a run leaves
    behind (double-forked, ``setsid``) is handed to it and found when the run
    ends (see ``_treewatch``).
    """
    global _dedicated_worker
    signal.signal(signal.SIGINT, _ignore_signal)
    _dedicated_worker = become_subreaper()


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    pass


def run_one(spec: RunSpec) -> RunResult:
    """Run ``spec`` to completion in a fresh process and measure it (in a worker)."""
    from taskwarden import heartbeat

    return run_measured(spec, heartbeat)


def executed_argv(spec: RunSpec) -> list[str]:
    """The argv that ``spec`` executes (a shell target goes through ``/bin/sh -c``)."""
    return ["/bin/sh", "-c", spec.command[0]] if spec.shell else list(spec.command)


def run_measured(spec: RunSpec, beat: Callable[[object], None]) -> RunResult:
    """``run_one`` with the heartbeat function passed in (so tests can run it in-process)."""
    env = {**os.environ, **spec.env}
    if spec.run_id:
        env[RUN_MARKER] = spec.run_id
    argv = executed_argv(spec)
    if spec.prepare is not None:
        status = _prepare(spec, env, beat)
        if status != 0:
            return RunResult(
                exit_status=status, wall=0.0, cpu=0.0, peak_rss=0, pid=0, argv=argv,
                stderr_tail=_file_tail(spec.stderr_path), left_behind=[], prepare_status=status,
            )  # fmt: skip
    piped = spec.watch or spec.output == "pipe"
    with contextlib.ExitStack() as files:
        stdout: int | BinaryIO | None
        stderr: int | BinaryIO | None
        if piped:
            stdout = stderr = subprocess.PIPE
        elif spec.output == "inherit":
            stdout = stderr = None
        else:
            stderr = files.enter_context(open(spec.stderr_path, "ab"))
            if spec.output == "file":
                assert spec.output_path is not None
                stdout = files.enter_context(open(spec.output_path, "ab"))
            else:
                stdout = subprocess.DEVNULL
        inherited_maxrss = _own_maxrss()
        started = time.monotonic()
        proc = subprocess.Popen(
            argv, cwd=spec.cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
        )
    if not piped and _HAVE_PIDFD:
        return _wait_alone(spec, proc, started, inherited_maxrss, argv)
    return _follow(spec, proc, started, inherited_maxrss, beat, argv)


_HAVE_PIDFD = hasattr(os, "pidfd_open") and hasattr(select, "poll")


def _wait_alone(
    spec: RunSpec,
    proc: subprocess.Popen[bytes],
    started: float,
    inherited_maxrss: int,
    argv: list[str],
) -> RunResult:
    """Wait for a run with no pipes to read, in this thread alone (Linux).

    This thread polls the run's pidfd and samples the tree between polls. No
    other thread of ours is running then, so none can hold the GIL when the
    run ends: its end is timed as soon as the kernel reports it. (With a
    waiter thread and a sampler thread, a sampler preempted on a loaded
    machine while it held the GIL delayed the waiter's clock reading.)
    """
    # Nothing here reads the tree before the first sample: the run's start is when it
    # is most sensitive to our CPU use, and until it is reaped below, its pid is its own.
    sampler = TreeSampler(proc.pid, spec.stats_path)
    ended = False
    try:
        pidfd = os.pidfd_open(proc.pid)
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            next_sample = started + SAMPLE_INTERVAL
            while not poller.poll(max(0, math.ceil((next_sample - time.monotonic()) * 1000))):
                sampler.sample()
                next_sample = max(next_sample + SAMPLE_INTERVAL, time.monotonic())
            finished_at = time.monotonic()
        finally:
            os.close(pidfd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        ended = True
        sampler.finish()
        left_behind = _sweep(spec, sampler)
    finally:
        if not ended:  # not reaped yet: proc.pid is still the run's process
            roots = []
            with contextlib.suppress(psutil.Error):
                roots.append(psutil.Process(proc.pid))
            kill_tree([*roots, *sampler.descendants()])
            if proc.returncode is None:
                with contextlib.suppress(ChildProcessError):
                    proc.wait()
    maxrss = usage.ru_maxrss * 1024  # KiB on Linux
    # Linux carries the high-water mark across fork and exec, so a small child
    # reports this worker's own peak: ru_maxrss is a floor only when it is larger.
    peak = max(maxrss if maxrss > inherited_maxrss else 0, sampler.peak_rss)
    cpu = max(usage.ru_utime + usage.ru_stime, sampler.cpu_seconds)
    return RunResult(
        exit_status=proc.returncode,
        wall=finished_at - started,
        cpu=cpu,
        peak_rss=peak,
        stderr_tail=_file_tail(spec.stderr_path),
        pid=proc.pid,
        argv=argv,
        left_behind=left_behind,
        prepare_status=None,
    )


def _follow(
    spec: RunSpec,
    proc: subprocess.Popen[bytes],
    started: float,
    inherited_maxrss: int,
    beat: Callable[[object], None],
    argv: list[str],
) -> RunResult:
    """Wait for the run's process (reading its pipes, if any), then sweep its tree."""
    events: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
    try:
        root: psutil.Process | None = psutil.Process(proc.pid)
    except psutil.Error:  # already gone (and not yet reaped, so this is rare)
        root = None
    sampler = TreeSampler(proc.pid, spec.stats_path) if root is not None else None
    waiter = _Waiter(proc, events)
    pipes = [p for p in (proc.stdout, proc.stderr) if p is not None]
    readers = [
        threading.Thread(target=_pump, args=(pipe, kind, events), daemon=True)
        for pipe, kind in zip(pipes, ("out", "err"), strict=False)
    ]
    exited = False
    left_behind: list[str] = []
    try:
        if sampler is not None:
            sampler.start()
        waiter.start()
        for reader in readers:
            reader.start()
        with _Output(spec, keep_tail=bool(pipes)) as output:
            open_streams = len(pipes)
            last_beat = 0.0
            drain_deadline: float | None = None
            while open_streams or not exited:
                try:
                    timeout = None if drain_deadline is None else drain_deadline - time.monotonic()
                    kind, data = events.get(timeout=timeout if timeout is None else max(timeout, 0))
                except queue.Empty:
                    break  # a process out of our reach still holds the pipes: give up on them
                if kind == "exit":
                    exited = True
                    # Whatever the script left running dies with the run; that closes the
                    # pipes it held, so the drain below ends at once.
                    if sampler is not None:
                        sampler.stop()
                    left_behind = _sweep(spec, sampler)
                    drain_deadline = time.monotonic() + _DRAIN_AFTER_EXIT
                elif not data:
                    open_streams -= 1
                else:
                    output.write(kind, data)
                    now = time.monotonic()
                    if spec.watch and now - last_beat >= _HEARTBEAT_EVERY:
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
        for pipe in pipes:
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
        stderr_tail=output.stderr_tail() if pipes else _file_tail(spec.stderr_path),
        pid=proc.pid,
        argv=argv,
        left_behind=left_behind,
        prepare_status=None,
    )


def _prepare(spec: RunSpec, env: dict[str, str], beat: Callable[[object], None]) -> int:
    """Run ``--prepare`` (heartbeating while it runs, so it does not count as silence)."""
    assert spec.prepare is not None
    with open(spec.stderr_path, "ab") as err:
        proc = subprocess.Popen(
            spec.prepare, shell=True, cwd=spec.cwd, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        while True:
            try:
                status = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if spec.watch:
                    beat("(--prepare)")
    finally:
        if proc.returncode is None:
            kill_tree([psutil.Process(proc.pid)])
            proc.wait()
    _sweep(spec, None)
    return status


def _sweep(spec: RunSpec, sampler: TreeSampler | None) -> list[str]:
    """Kill what the run left running; describe each process killed.

    In a command-line worker (a subreaper) every process under the worker is
    the run's; elsewhere (a test calling ``run_measured``), the run's are the
    ones carrying its marker, and those the sampler saw.
    """
    candidates = leftovers()
    if not _dedicated_worker:
        candidates = [p for p in candidates if spec.run_id and marked(p, spec.run_id)]
    if sampler is not None:
        known = {p.pid for p in candidates}
        candidates += [p for p in sampler.descendants() if p.pid not in known]
    # Only the running ones: a zombie has no children left to find (they went to the
    # subreaper when it died), and each root costs kill_tree a walk of its tree.
    running = [p for p in candidates if alive(p)]
    report = [describe(p) for p in running]
    kill_tree(running)
    if _dedicated_worker:
        reap_zombie_children()
    return report


def _file_tail(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            return tail_lines(f.read())
    except OSError:
        return []


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
    """Where piped output goes: discarded (null, pipe), echoed (inherit), or a file.

    The stderr tail is kept either way, and stderr is also appended to
    ``spec.stderr_path`` so that the parent can show it for a killed run.
    """

    def __init__(self, spec: RunSpec, *, keep_tail: bool) -> None:
        self._spec = spec
        self._keep_tail = keep_tail
        self._tail = bytearray()
        self.last_line = ""
        self._stderr_file: BinaryIO | None = None
        self._stdout_file: BinaryIO | None = None
        self._closed: set[str] = set()  # streams we can no longer echo to

    def __enter__(self) -> _Output:
        if self._keep_tail:
            self._stderr_file = open(self._spec.stderr_path, "ab", buffering=0)
            if self._spec.output == "file":
                assert self._spec.output_path is not None
                self._stdout_file = open(self._spec.output_path, "ab", buffering=0)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for f in (self._stderr_file, self._stdout_file):
            if f is not None:
                f.close()

    def write(self, kind: str, data: bytes) -> None:
        if self._spec.output == "inherit" and kind not in self._closed:
            try:
                _echo(sys.stdout if kind == "out" else sys.stderr, data)
            except OSError:  # the reader went away (``| head``): the run goes on
                self._closed.add(kind)
        elif kind == "out" and self._stdout_file is not None:
            self._stdout_file.write(data)
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
