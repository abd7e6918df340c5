"""What the user sees: progress while running, the summary table at the end.

On a terminal, a rich live area shows a progress bar and the runs in
flight (elapsed time, last line printed); each run's output is captured and
printed above the live area when the run ends, so parallel runs never
interleave and the live area is never scribbled over. Off a terminal
(a pipe, a CI log), output streams through as it comes and each finished
run gets one plain line.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from taskwarden.cli._records import (
    CANCELLED,
    COMPLETED,
    FAILED,
    TIMED_OUT,
    RunRecord,
    Spread,
    TargetSummary,
    describe_exit,
)

_CAPTURE_MAX_LINES = 1000
_FAILURES_SHOWN_PER_TARGET = 3
_STDERR_LINES_SHOWN = 10  # of the 20 kept (the JSON has them all)
_STATE_STYLE = {COMPLETED: "green", FAILED: "red", TIMED_OUT: "magenta", CANCELLED: "yellow"}


class ReportConsole(Console):
    """A rich Console that goes quiet when stdout is closed (``taskwarden run ... | head``).

    rich's default raises SystemExit(1) there, which would skip the JSON
    report and the clean-up of running processes.
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        silence_stdout()


def silence_stdout() -> None:
    """After EPIPE on stdout: point it at /dev/null so that exiting does not fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def format_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.3f}"
    if value < 100:
        return f"{value:.2f}"
    return f"{value:.1f}"


def format_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_spread(spread: Spread | None) -> str:
    if spread is None:
        return "-"
    return " / ".join(format_seconds(v) for v in (spread.low, spread.median, spread.high))


def run_line(record: RunRecord, done: int, total: int) -> str:
    """The one line a finished run gets, e.g. ``[2/6] FAILED     a.py #2  exit status 3 ...``."""
    width = len(str(total))
    head = f"[{done:>{width}}/{total}] {record.state:<9} {record.name}"
    parts: list[str] = []
    if record.exit_status is not None:
        parts.append(describe_exit(record.exit_status))
        parts.append(f"wall {format_seconds(record.wall)} s")
        parts.append(f"cpu {format_seconds(record.cpu)} s")
        parts.append(f"peak {format_bytes(record.peak_rss)}")
    elif record.error:
        parts.append(record.error)
    return "  ".join([head, *parts])


@dataclass(frozen=True)
class InFlight:
    """A run in progress, as the live area shows it."""

    name: str
    started_at: float | None  # time.time(); None while waiting for a worker
    last_line: str


class Display(Protocol):
    capture_output: bool  # runs' output goes to files that ``finished`` prints

    def start(self, total: int) -> None: ...
    def update(self, in_flight: Sequence[InFlight]) -> None: ...
    def finished(self, record: RunRecord, done: int, captured: bytes | None) -> None: ...
    def note(self, message: str) -> None: ...
    def stop(self) -> None: ...


class PlainDisplay:
    """One line per finished run; runs' own output streams through untouched."""

    capture_output = False

    def __init__(self, console: Console) -> None:
        self._console = console
        self._total = 0
        self._closed = False

    def start(self, total: int) -> None:
        self._total = total

    def update(self, in_flight: Sequence[InFlight]) -> None:
        pass

    def finished(self, record: RunRecord, done: int, captured: bytes | None) -> None:
        self._print(run_line(record, done, self._total))

    def note(self, message: str) -> None:
        self._print(message)

    def _print(self, line: str) -> None:
        if self._closed:
            return
        try:
            self._console.print(line, markup=False, highlight=False, soft_wrap=True)
            self._console.file.flush()
        except BrokenPipeError:  # ``taskwarden run ... | head``: carry on without output
            self._closed = True

    def stop(self) -> None:
        pass


class LiveDisplay:
    """A progress bar and the runs in flight, redrawn in place on a terminal."""

    capture_output = True

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress = Progress(
            TextColumn("[bold]runs"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self._bar = self._progress.add_task("runs", total=None)
        self._live = Live(console=console, transient=True, auto_refresh=False)
        self._total = 0

    def start(self, total: int) -> None:
        self._total = total
        self._progress.update(self._bar, total=total)
        self._live.start()
        self.update(())

    def update(self, in_flight: Sequence[InFlight]) -> None:
        table = Table(box=None, show_header=False, padding=(0, 1))
        table.add_column(style="cyan", no_wrap=True)
        table.add_column(justify="right", no_wrap=True)
        table.add_column(style="dim", no_wrap=True, overflow="ellipsis")
        now = time.time()
        for run in in_flight:
            elapsed = "waiting" if run.started_at is None else f"{now - run.started_at:.1f} s"
            table.add_row(run.name, elapsed, run.last_line)
        self._live.update(Group(self._progress, table), refresh=True)

    def finished(self, record: RunRecord, done: int, captured: bytes | None) -> None:
        if captured:
            self._console.rule(Text(record.name, style="dim"), style="dim")
            self._console.print(_captured_text(captured), end="", soft_wrap=True)
            if not captured.endswith(b"\n"):
                self._console.print()
        line = Text(run_line(record, done, self._total))
        line.stylize(_STATE_STYLE.get(record.state, ""), 0, len(line.plain))
        self._console.print(line)
        self._progress.update(self._bar, completed=done)

    def note(self, message: str) -> None:
        self._console.print(message, markup=False, highlight=False, style="yellow")

    def stop(self) -> None:
        self._live.stop()


def _captured_text(data: bytes) -> Text:
    lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
    dropped = len(lines) - _CAPTURE_MAX_LINES
    text = Text()
    if dropped > 0:
        text.append(f"[... {dropped} earlier lines not shown ...]\n", style="dim")
        lines = lines[-_CAPTURE_MAX_LINES:]
    text.append(Text.from_ansi("".join(lines)))
    return text


def print_summary(console: Console, summaries: Sequence[TargetSummary]) -> None:
    """The results table (a row per target), then the stderr tails of failed runs."""
    table = Table(box=box.SIMPLE_HEAD, title="taskwarden run", title_justify="left")
    table.add_column("target", overflow="fold")
    table.add_column("runs", justify="right")
    table.add_column("states")
    table.add_column("wall s min / med / max", justify="right")
    table.add_column("cpu s min / med / max", justify="right")
    table.add_column("peak mem", justify="right")
    table.add_column("exit", justify="right")
    for summary in summaries:
        states = Text()
        for i, (state, count) in enumerate(summary.states.items()):
            if i:
                states.append(", ")
            states.append(f"{count} {state}", style=_STATE_STYLE.get(state, ""))
        exits = ", ".join(
            _exit_label(status)
            if len(summary.exit_statuses) == 1
            else f"{_exit_label(status)} x{count}"
            for status, count in summary.exit_statuses.items()
        )
        table.add_row(
            Text(summary.target.label),
            str(summary.runs),
            states,
            format_spread(summary.wall),
            format_spread(summary.cpu),
            format_bytes(summary.peak_rss),
            exits or "-",
        )
    console.print(table)
    for summary in summaries:
        _print_failures(console, summary)


def _exit_label(status: int) -> str:
    """``3``, or the signal's name (``SIGKILL``) for a negative status."""
    return str(status) if status >= 0 else describe_exit(status).removeprefix("killed by ")


def _print_failures(console: Console, summary: TargetSummary) -> None:
    shown = summary.failures[:_FAILURES_SHOWN_PER_TARGET]
    for record in shown:
        reason = (
            describe_exit(record.exit_status)
            if record.exit_status is not None
            else (record.error or record.state)
        )
        head = Text(f"{record.name}: {record.state}, {reason}")
        head.stylize(_STATE_STYLE.get(record.state, "red"))
        console.print(head)
        if record.stderr_tail:
            console.print(Text("  stderr (last lines):", style="dim"))
            for line in record.stderr_tail[-_STDERR_LINES_SHOWN:]:
                console.print(Text("    " + line), soft_wrap=True)
    hidden = len(summary.failures) - len(shown)
    if hidden > 0:
        console.print(
            Text(f"{summary.target.label}: {hidden} more failed runs (see --json)", style="dim")
        )
