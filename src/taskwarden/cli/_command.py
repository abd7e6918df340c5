"""``taskwarden run``: schedule every run on a Supervisor, watch them, report.

    main thread                         Supervisor (its own thread)      workers
    ───────────                         ───────────────────────────      ───────
    schedule(run_one, spec) x N ──────▶ heap, timeouts, heartbeats ────▶ run_one(spec)
    wait on `finished` queue  ◀──────── done callbacks (run index)  ◀─── RunResult
    display, records, JSON

SIGINT and SIGTERM only set a flag (a handler that touched locks could
deadlock the thread it interrupts); the main loop sees it within 0.1 s,
cancels every task (which kills running process trees), shuts the
supervisor down and still reports what finished. A second signal while
stopping raises KeyboardInterrupt, for a user who will not wait.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass
from types import FrameType
from typing import Any

from rich.console import Console

from taskwarden import Supervisor, Task
from taskwarden.cli._args import RunConfig, Target
from taskwarden.cli._display import (
    Display,
    InFlight,
    LiveDisplay,
    PlainDisplay,
    print_summary,
    silence_stdout,
)
from taskwarden.cli._records import (
    CANCELLED,
    COMPLETED,
    FAILED,
    TIMED_OUT,
    RunRecord,
    describe_exit,
    exit_code,
    summarize,
    write_json,
)
from taskwarden.cli._runner import RunResult, RunSpec, quiet_worker, run_one, tail_lines

_TICK = 0.1  # seconds between redraws of the live area, and the latency of a Ctrl-C
_IN_FLIGHT_SHOWN = 20
# A run that ends this soon before the interrupt counts as interrupted: a terminal's
# Ctrl-C reaches the scripts at the same moment it reaches us.
_INTERRUPT_SLACK = 0.5


@dataclass(frozen=True)
class _Run:
    """One planned run: which target, which repeat, and how to start it."""

    target: Target
    repeat: int
    spec: RunSpec

    @property
    def name(self) -> str:
        return f"{self.target.label} #{self.repeat + 1}"


class _StopSignals:
    """Turns SIGINT/SIGTERM into a flag while installed (main thread only)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        self.at = time.time()


def plan_runs(config: RunConfig, log_dir: str, capture: bool) -> list[_Run]:
    """Every run, interleaved: repeat 1 of every target, then repeat 2, and so on.

    Interleaving spreads slow drifts of the machine (thermal throttling,
    other load) over all targets instead of biasing whichever runs last.
    """
    runs: list[_Run] = []
    for repeat in range(config.repeat):
        for target in config.targets:
            n = len(runs)
            if target.kind == "script":
                command: tuple[str, ...] = (sys.executable, target.text, *config.args)
            else:
                command = (target.text,)
            spec = RunSpec(
                command=command,
                shell=target.kind == "shell",
                cwd=os.getcwd(),
                stderr_path=os.path.join(log_dir, f"{n}.err"),
                stats_path=os.path.join(log_dir, f"{n}.stats"),
                capture_path=os.path.join(log_dir, f"{n}.out") if capture else None,
                env={"PYTHONUNBUFFERED": "1"},
            )
            runs.append(_Run(target, repeat, spec))
    return runs


def run_command(config: RunConfig, console: Console, *, live: bool) -> int:
    """Run everything ``config`` asks for; return the process exit status."""
    display: Display = LiveDisplay(console) if live else PlainDisplay(console)
    with (
        tempfile.TemporaryDirectory(prefix="taskwarden-run-") as log_dir,
        _StopSignals() as stop,
    ):
        runs = plan_runs(config, log_dir, capture=display.capture_output)
        records = _run_all(config, runs, display, stop)
    status = exit_code(records, stop.signum)
    # The JSON first: a closed stdout (``| head``) must not cost the report.
    if config.json_path is not None:
        try:
            write_json(config.json_path, config, records, interrupted_by=stop.signum, status=status)
        except OSError as error:
            print(f"taskwarden: cannot write {config.json_path}: {error}", file=sys.stderr)
            status = status or 1
    try:
        print_summary(console, summarize(config.targets, records))
    except BrokenPipeError:
        silence_stdout()
    return status


def _run_all(
    config: RunConfig, runs: Sequence[_Run], display: Display, stop: _StopSignals
) -> list[RunRecord]:
    policy: dict[str, Any] = {}
    if config.timeout is not None:
        policy["timeout"] = config.timeout
    if config.heartbeat is not None:
        policy["heartbeat"] = config.heartbeat
    finished: queue.SimpleQueue[int] = queue.SimpleQueue()
    records: dict[int, RunRecord] = {}
    tasks: list[Task[RunResult]] = []
    supervisor = Supervisor(workers=config.jobs, initializer=quiet_worker)
    display.start(len(runs))
    try:
        for i, run in enumerate(runs):
            if stop.signum is not None:
                break
            task = supervisor.schedule(run_one, args=(run.spec,), name=run.name, **policy)
            tasks.append(task)
            task.add_done_callback(functools.partial(_put_index, finished, i))
        while len(records) < len(tasks) and stop.signum is None:
            try:
                i = finished.get(timeout=_TICK)
            except queue.Empty:
                display.update(_in_flight(runs, tasks))
                continue
            records[i] = _record(runs[i], tasks[i], stop)
            display.finished(records[i], len(records), _captured(runs[i]))
    finally:
        if stop.signum is not None:
            display.note(f"{signal.Signals(stop.signum).name}: stopping every run ...")
        # Normally nothing is left to cancel; after an interrupt or an error this drops
        # the runs that have not started, then kills every running process tree (in
        # that order, so that no waiting run takes the place of a killed one).
        for task in sorted(tasks, key=lambda task: task.state == "RUNNING"):
            task.cancel()
        supervisor.shutdown(wait=True, cancel_futures=True)
        for i in range(len(tasks)):
            if i not in records:
                records[i] = _record(runs[i], tasks[i], stop)
                if records[i].started_at is not None:
                    display.finished(records[i], len(records), _captured(runs[i]))
        display.stop()
    never_scheduled = [
        RunRecord(run.target, run.repeat, CANCELLED, error="interrupted before it started")
        for run in runs[len(tasks) :]
    ]
    return [records[i] for i in range(len(tasks))] + never_scheduled


def _put_index(finished: queue.SimpleQueue[int], i: int, _task: object) -> None:
    finished.put(i)


def _in_flight(runs: Sequence[_Run], tasks: Sequence[Task[RunResult]]) -> list[InFlight]:
    shown = []
    for run, task in zip(runs, tasks, strict=False):
        if task.state == "RUNNING":
            progress = task.progress
            last_line = progress if isinstance(progress, str) else ""
            shown.append(InFlight(run.name, task.started_at, last_line))
            if len(shown) >= _IN_FLIGHT_SHOWN:
                break
    return shown


def _record(run: _Run, task: Task[RunResult], stop: _StopSignals) -> RunRecord:
    """What became of one run, from its task (and the files its worker wrote)."""
    record = RunRecord(
        run.target,
        run.repeat,
        str(task.state.value),
        started_at=task.started_at,
        finished_at=task.finished_at,
        worker_pid=task.worker_pid,
    )
    if record.state == COMPLETED:
        result: RunResult = task.result()
        record.exit_status = result["exit_status"]
        record.wall = result["wall"]
        record.cpu = result["cpu"]
        record.peak_rss = result["peak_rss"] or None  # 0: too quick to sample
        record.stderr_tail = tuple(result["stderr_tail"])
        if record.exit_status != 0:
            record.state = FAILED
            record.error = describe_exit(record.exit_status)
    else:
        record.error = _error_message(task)
        if record.started_at is not None:
            if record.finished_at is not None:
                record.wall = record.finished_at - record.started_at
            record.cpu, record.peak_rss = _stats_so_far(run.spec.stats_path)
            record.stderr_tail = tuple(_read_tail(run.spec.stderr_path))
    if stop.signum is not None and not record.ok and record.state != TIMED_OUT:
        ended = record.finished_at
        if ended is None or ended >= stop.at - _INTERRUPT_SLACK:
            why = f"interrupted by {signal.Signals(stop.signum).name}"
            detail = record.error if record.state != CANCELLED else None
            record.state = CANCELLED
            record.error = f"{why} ({detail})" if detail else why
    return record


def _error_message(task: Task[RunResult]) -> str:
    if not task.done():
        return f"still {task.state.value} after the supervisor shut down"
    try:
        error = task.exception(timeout=0)
    except CancelledError as cancelled:
        error = cancelled
    if error is None:
        return ""
    text = str(error)
    if isinstance(error, CancelledError):
        return text or "cancelled"
    if task.state == "TIMED_OUT":
        return text or "timed out"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _stats_so_far(path: str) -> tuple[float | None, int | None]:
    """CPU and peak memory of a killed run, as its worker last wrote them."""
    try:
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
        return float(stats["cpu"]), int(stats["peak_rss"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def _read_tail(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            return tail_lines(f.read())
    except OSError:
        return []


def _captured(run: _Run) -> bytes | None:
    if run.spec.capture_path is None:
        return None
    with contextlib.suppress(OSError), open(run.spec.capture_path, "rb") as f:
        return f.read()
    return None
