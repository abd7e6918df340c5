"""``taskwarden run``: schedule every run on a Supervisor, watch them, report.

    main thread                         Supervisor (its own thread)      workers
    ───────────                         ───────────────────────────      ───────
    schedule(run_one, spec) x N ──────▶ heap, timeouts, heartbeats ────▶ run_one(spec)
    wait on `finished` queue  ◀──────── done callbacks (run index)  ◀─── RunResult
    display, records, JSON

Runs are scheduled as workers free up (at most ``--jobs`` in flight), so
that the count can follow the first run's time (adaptive, as hyperfine
does) and a target's ``--cleanup`` can wait for its last run.

SIGINT and SIGTERM only set a flag (a handler that touched locks could
deadlock the thread it interrupts); the main loop sees it within 0.1 s,
cancels every task (which kills running process trees), shuts the
supervisor down and still reports what finished. A second signal never
interrupts that: one within a second is the same interrupt, a later one is
noted. Each run is also journaled as it ends (``--export-jsonl``), and a
``--export-json`` regular file is rewritten every second while runs go on.

When a run ends, what it left running is killed and reported: its worker
sweeps its own subtree (it is a child subreaper), and this process, also a
subreaper, sweeps the orphans of workers that were killed (``_sweep_run``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import queue
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass
from types import FrameType
from typing import Any

import psutil
from rich.console import Console

from taskwarden import Supervisor, Task
from taskwarden._proctree import become_subreaper, leftovers
from taskwarden._proctree import kill_trees as kill_tree
from taskwarden.cli._args import RunConfig, Target, shell_argv, substitute
from taskwarden.cli._display import (
    Display,
    InFlight,
    LiveDisplay,
    PlainDisplay,
    markdown_table,
    noise_warnings,
    print_summary,
    silence_stdout,
)
from taskwarden.cli._export import (
    RunJournal,
    csv_report,
    env_changes,
    json_report,
    load_average,
    write_text,
)
from taskwarden.cli._records import (
    CANCELLED,
    COMPLETED,
    FAILED,
    TIMED_OUT,
    RunRecord,
    TargetSummary,
    describe_exit,
    exit_code,
    summarize,
)
from taskwarden.cli._runner import (
    RunResult,
    RunSpec,
    executed_argv,
    quiet_worker,
    run_one,
    tail_lines,
)
from taskwarden.cli._treewatch import RUN_MARKER, alive, describe, marked

_TICK = 0.1  # seconds between redraws of the live area, and the latency of a Ctrl-C
_IN_FLIGHT_SHOWN = 20
# A run that ends this soon before the interrupt counts as interrupted: a terminal's
# Ctrl-C reaches the scripts at the same moment it reaches us.
_INTERRUPT_SLACK = 0.5
# A second signal this soon after the first is the same interrupt (a terminal's Ctrl-C
# and a CI runner or ``timeout`` forwarding it): it must not cut the report short.
_SIGNAL_WINDOW = 1.0
_ADAPTIVE_SECONDS = 3.0  # without --repeat: about this much of runs per target (hyperfine's)
_REPORT_EVERY = 1.0  # seconds between rewrites of a --export-json file while runs go on


@dataclass(frozen=True)
class _Run:
    """One planned run: which target, which repeat, and how to start it."""

    target: Target
    repeat: int
    spec: RunSpec
    warmup: bool = False
    phase: str = "run"  # or "setup", "cleanup": a target's once-only shell commands

    @property
    def name(self) -> str:
        if self.phase != "run":
            return f"{self.target.label} --{self.phase}"
        return f"{self.target.label} {'warmup ' if self.warmup else ''}#{self.repeat + 1}"


class _StopSignals:
    """Turns SIGINT/SIGTERM into a flag while installed (main thread only).

    The handler never raises: a second signal within ``_SIGNAL_WINDOW`` is the
    first one again, and a later one only says that the command is stopping
    already. Everything that finished is still reported and written.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.at = 0.0  # time.time() of the first signal
        self._first = 0.0
        self.repeated = 0  # signals after the first, outside the window
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
        if self.signum is None:
            self.signum = signum
            self.at = time.time()
            self._first = time.monotonic()
        elif time.monotonic() - self._first > _SIGNAL_WINDOW:
            self.repeated += 1


class _TargetPlan:
    """How many runs of one target are wanted, issued and done."""

    def __init__(self, target: Target, config: RunConfig) -> None:
        self.target = target
        self.warmups = config.warmup
        self.fixed = config.repeat
        self.min_runs, self.max_runs = config.min_runs, config.max_runs
        self.decided: int | None = None
        self.warm_issued = self.measured_issued = 0
        self.outstanding = 0
        self.setup = "pending" if config.setup is not None else "none"  # ... running, ok, failed
        self.cleanup = "pending" if config.cleanup is not None else "none"

    @property
    def wanted(self) -> int:
        if self.fixed is not None:
            return self.fixed
        if self.decided is not None:
            return self.decided
        return self.min_runs

    def first_measured(self, record: RunRecord) -> None:
        """Adaptive count: from the first measured run's time, about 3 s of runs."""
        if self.fixed is not None or self.decided is not None:
            return
        # A failure's time says nothing of a good run's: a fast failure would ask for
        # thousands of runs. Only a completed run sets the count above the minimum.
        seconds = record.wall if record.ok and record.wall is not None else 0.0
        count = math.ceil(_ADAPTIVE_SECONDS / seconds) if seconds > 0 else self.min_runs
        count = max(self.min_runs, count)
        self.decided = min(count, self.max_runs) if self.max_runs is not None else count

    @property
    def runs_left(self) -> bool:
        return self.warm_issued < self.warmups or self.measured_issued < self.wanted


class _Planner:
    """Hands out the next run when a worker is free.

    Interleaved (the default): warmups first, then repeat 1 of every target,
    repeat 2 of every target, and so on, which spreads slow drifts of the
    machine (thermal throttling, other load) over all targets instead of
    biasing whichever runs last. With ``--setup`` or ``--cleanup``, a target's
    runs cannot mix with another's (a setup may build what the runs use): one
    target after the other, as hyperfine does: setup, warmups, runs, cleanup.
    """

    def __init__(self, config: RunConfig, log_dir: str, session: str) -> None:
        self._config = config
        self._log_dir = log_dir
        self._session = session
        self._plans = [_TargetPlan(t, config) for t in config.targets]
        self._cursor = 0
        self._count = 0

    def expected_total(self) -> int:
        return sum(p.warmups + p.wanted for p in self._plans)

    def next(self) -> _Run | None:
        if self._config.interleaved:
            n = len(self._plans)
            for step in range(n):
                plan = self._plans[(self._cursor + step) % n]
                run = self._next_of(plan)
                if run is not None:
                    self._cursor = (self._cursor + step + 1) % n
                    return run
            return None
        for plan in self._plans:
            if plan.setup == "pending":
                plan.setup = "running"
                return self._phase(plan, "setup")
            if plan.setup == "running":
                return None
            if plan.setup != "failed":
                run = self._next_of(plan)
                if run is not None:
                    return run
                if plan.outstanding:
                    return None  # the cleanup waits for the last run
            if plan.cleanup == "pending" and plan.setup != "failed":
                plan.cleanup = "running"
                return self._phase(plan, "cleanup")
            if plan.cleanup == "running":
                return None
        return None

    def finished(self, run: _Run, record: RunRecord) -> None:
        plan = self._plans[run.target.index]
        if run.phase == "setup":
            plan.setup = "ok" if record.ok else "failed"
            return
        if run.phase == "cleanup":
            plan.cleanup = "done"
            return
        plan.outstanding -= 1
        if not run.warmup and run.repeat == 0:
            plan.first_measured(record)

    def never_started(self) -> list[RunRecord]:
        """The runs planned but not issued (after an interrupt): each a CANCELLED record."""
        out = []
        for plan in self._plans:
            for repeat in range(plan.measured_issued, plan.wanted):
                out.append(
                    RunRecord(plan.target, repeat, CANCELLED, error="interrupted before it started")
                )
        return out

    def _next_of(self, plan: _TargetPlan) -> _Run | None:
        if plan.warm_issued < plan.warmups:
            plan.warm_issued += 1
            plan.outstanding += 1
            return self._run(plan.target, plan.warm_issued - 1, warmup=True)
        if plan.measured_issued < plan.wanted:
            # The count is not known before the first measured run ends; meanwhile
            # issue no more than the minimum.
            undecided = plan.fixed is None and plan.decided is None
            if undecided and plan.measured_issued >= plan.min_runs:
                return None
            plan.measured_issued += 1
            plan.outstanding += 1
            return self._run(plan.target, plan.measured_issued - 1, warmup=False)
        return None

    def _run(self, target: Target, repeat: int, *, warmup: bool) -> _Run:
        config = self._config
        if target.kind == "script":
            command: tuple[str, ...] = (*target.interpreter, target.text, *target.args)
            shell = False
        else:
            direct = shell_argv(target.text)
            shell = direct is None
            command = (target.text,) if direct is None else direct
        prepare = substitute(config.prepare, target.params) if config.prepare else None
        return _Run(target, repeat, self._spec(command, shell, prepare), warmup=warmup)

    def _phase(self, plan: _TargetPlan, phase: str) -> _Run:
        text = self._config.setup if phase == "setup" else self._config.cleanup
        assert text is not None
        spec = self._spec((substitute(text, plan.target.params),), True, None)
        return _Run(plan.target, 0, spec, phase=phase)

    def _spec(self, command: tuple[str, ...], shell: bool, prepare: str | None) -> RunSpec:
        n = self._count
        self._count += 1
        config = self._config
        return RunSpec(
            command=command,
            shell=shell,
            cwd=os.getcwd(),
            stderr_path=os.path.join(self._log_dir, f"{n}.err"),
            stats_path=os.path.join(self._log_dir, f"{n}.stats"),
            output=config.output,
            output_path=config.output_path,
            watch=config.heartbeat is not None,
            env=env_changes(config),
            prepare=prepare,
            run_id=f"{self._session}:{n}",
        )


class _Reports:
    """The exports, and the journal of runs written as they end."""

    def __init__(self, config: RunConfig, load_at_start: tuple[float, float, float] | None):
        self._config = config
        self._load = load_at_start
        self.journal: RunJournal | None = None
        self._last_partial = 0.0
        for kind, path in config.exports:
            if kind == "jsonl":
                self.journal = RunJournal(path)
                self.journal.open()

    def run_ended(self, records: Sequence[RunRecord]) -> None:
        """A run has ended: journal it, and refresh a --export-json that is a regular file."""
        if self.journal is not None:
            self.journal.write(records[-1])
        path = self._config.json_path
        now = time.monotonic()
        if path and path != "-" and now - self._last_partial >= _REPORT_EVERY:
            real = os.path.realpath(path)
            if not os.path.exists(real) or os.path.isfile(real):
                self._last_partial = now
                with contextlib.suppress(OSError):
                    write_text(path, self._json(records, None, None, partial=True))

    def _json(
        self,
        records: Sequence[RunRecord],
        interrupted_by: int | None,
        status: int | None,
        *,
        partial: bool = False,
    ) -> str:
        return json_report(
            self._config, records, interrupted_by=interrupted_by, status=status,
            load_at_start=self._load, partial=partial,
        )  # fmt: skip

    def write_all(
        self, records: Sequence[RunRecord], summaries: Sequence[TargetSummary],
        interrupted_by: int | None, status: int,
    ) -> int:  # fmt: skip
        """Write every export; return ``status``, or 1 if one could not be written."""
        for kind, path in self._config.exports:
            try:
                if kind == "json":
                    write_text(path, self._json(records, interrupted_by, status))
                elif kind == "csv":
                    write_text(path, csv_report(self._config, summaries))
                elif kind == "markdown":
                    write_text(path, markdown_table(summaries))
            except OSError as error:
                print(f"taskwarden: cannot write {path}: {error}", file=sys.stderr)
                status = status or 1
        if self.journal is not None:
            self.journal.close()
            if self.journal.error is not None:
                print(f"taskwarden: --export-jsonl: {self.journal.error}", file=sys.stderr)
                status = status or 1
        if self._config.plot is not None:
            from taskwarden.cli._plot import write_plot  # matplotlib: only with --plot

            try:
                write_plot(self._config.plot, summaries)
            except (OSError, ValueError, RuntimeError) as error:
                print(f"taskwarden: cannot write {self._config.plot}: {error}", file=sys.stderr)
                status = status or 1
        return status


def run_command(config: RunConfig, console: Console, *, live: bool) -> int:
    """Run everything ``config`` asks for; return the process exit status."""
    display: Display = LiveDisplay(console) if live else PlainDisplay(console)
    # This process is the command line, not a library: it may take orphans in.
    become_subreaper()
    load_at_start = load_average()
    reports = _Reports(config, load_at_start)
    with (
        tempfile.TemporaryDirectory(prefix="taskwarden-run-") as log_dir,
        _StopSignals() as stop,
    ):
        session = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        planner = _Planner(config, log_dir, session)
        records, phases = _run_all(config, planner, display, stop, reports, session)
    status = exit_code(records, stop.signum)
    if status == 0 and any(not r.ok for r in phases):
        status = 1
    summaries = summarize(config.targets, records)
    # The exports first: a closed stdout (``| head``) must not cost the report.
    status = reports.write_all(records, summaries, stop.signum, status)
    try:
        print_summary(
            console, summaries, warnings=noise_warnings(config, summaries, load_at_start),
            phases=phases,
        )  # fmt: skip
    except BrokenPipeError:
        silence_stdout()
    return status


def _run_all(
    config: RunConfig,
    planner: _Planner,
    display: Display,
    stop: _StopSignals,
    reports: _Reports,
    session: str,
) -> tuple[list[RunRecord], list[RunRecord]]:
    policy: dict[str, Any] = {}
    if config.timeout is not None:
        policy["timeout"] = config.timeout
    if config.heartbeat is not None:
        policy["heartbeat"] = config.heartbeat
    finished: queue.SimpleQueue[int] = queue.SimpleQueue()
    runs: list[_Run] = []
    tasks: list[Task[RunResult]] = []
    done: set[int] = set()
    records: list[RunRecord] = []
    phases: list[RunRecord] = []

    def conclude(i: int) -> None:
        done.add(i)
        record = _record(runs[i], tasks[i], stop)
        record.left_behind += tuple(_sweep_run(runs[i].spec.run_id))
        planner.finished(runs[i], record)
        if runs[i].phase != "run":
            phases.append(record)
            if not record.ok:
                display.note(f"{runs[i].name} failed: {record.error or record.state}")
            return
        records.append(record)
        reports.run_ended(records)
        if record.started_at is not None or stop.signum is None:
            display.finished(record, len(records), planner.expected_total())

    supervisor = Supervisor(workers=config.jobs, initializer=quiet_worker)
    display.start(planner.expected_total())
    try:
        while stop.signum is None:
            while len(tasks) - len(done) < config.jobs and stop.signum is None:
                run = planner.next()
                if run is None:
                    break
                task = supervisor.schedule(run_one, args=(run.spec,), name=run.name, **policy)
                runs.append(run)
                tasks.append(task)
                task.add_done_callback(functools.partial(_put_index, finished, len(tasks) - 1))
            if len(done) == len(tasks):
                break  # nothing in flight and nothing more to start
            try:
                i = finished.get(timeout=_TICK)
            except queue.Empty:
                display.update(_in_flight(runs, tasks))
                continue
            conclude(i)
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
            if i not in done:
                conclude(i)
        _sweep_session(session)
        if stop.repeated:
            display.note("(further signals ignored while stopping; the report follows)")
        display.stop()
    by_order = sorted(records, key=lambda r: (r.warmup is False, r.repeat, r.target.index))
    if stop.signum is not None:
        by_order += planner.never_started()
    return by_order, phases


def _sweep_run(run_id: str) -> list[str]:
    """Kill what is left of one run under this process (orphans handed to us); describe it.

    A run that ended by itself was swept by its worker already; this finds what
    a killed worker could not: processes of the run that outlived it.
    """
    found = [p for p in leftovers() if marked(p, run_id)]
    report = [describe(p) for p in found if alive(p)]
    if found:
        kill_tree(found)
    return report


def _sweep_session(session: str) -> None:
    """Last resort at the end: no process of this command's runs survives it."""
    found = []
    for proc in leftovers():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(RUN_MARKER, "").startswith(session + ":"):
                found.append(proc)
    if found:
        kill_tree(found)
    reap_zombie_children_of(found)


def reap_zombie_children_of(procs: Sequence[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(OSError, ChildProcessError, psutil.Error):
            if proc.ppid() == os.getpid():
                os.waitpid(proc.pid, os.WNOHANG)


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
        warmup=run.warmup,
        argv=tuple(executed_argv(run.spec)),
        cwd=run.spec.cwd,
    )
    if record.state == COMPLETED:
        result: RunResult = task.result()
        record.exit_status = result["exit_status"]
        record.wall = result["wall"]
        record.cpu = result["cpu"]
        record.peak_rss = result["peak_rss"] or None  # 0: too quick to sample
        record.stderr_tail = tuple(result["stderr_tail"])
        record.left_behind = tuple(result["left_behind"])
        if result["prepare_status"] is not None:
            record.state = FAILED
            record.wall = record.cpu = None
            record.error = f"--prepare failed ({describe_exit(result['prepare_status'])})"
        elif record.exit_status != 0:
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
