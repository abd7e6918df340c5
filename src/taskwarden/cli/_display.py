"""What the user sees: progress while running, the summary at the end.

On a terminal, a rich live area shows a progress bar and the runs in
flight (elapsed time, last line printed). Off a terminal (a pipe, a CI
log), or with ``--output inherit`` (the runs' own output would scribble
over a live area), each finished run gets one plain line.

The summary: a table per target (timing of the completed runs, mean ± sd,
median, min…max, a histogram in block characters; failures counted apart),
how the targets compare ("`a` ran 1.83 ± 0.04 times faster than `b`"),
warnings (outliers, a busy machine), and the stderr tails of failures.
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

from taskwarden.cli._args import RunConfig
from taskwarden.cli._records import (
    CANCELLED,
    COMPLETED,
    FAILED,
    TIMED_OUT,
    RunRecord,
    TargetSummary,
    describe_exit,
)
from taskwarden.cli._stats import Timing

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


def time_unit(timing: Timing | None) -> tuple[str, float]:
    """Milliseconds for a target whose mean is under a second, else seconds."""
    if timing is not None and timing.mean < 1.0:
        return "ms", 1000.0
    return "s", 1.0


def format_time(value: float | None, unit: tuple[str, float]) -> str:
    if value is None:
        return "-"
    name, scale = unit
    scaled = value * scale
    digits = 1 if name == "ms" else 3
    return f"{scaled:.{digits}f} {name}"


def format_mean(timing: Timing | None) -> str:
    """``312.4 ms ± 3.1 ms`` (no ± for a single run)."""
    if timing is None:
        return "-"
    unit = time_unit(timing)
    mean = format_time(timing.mean, unit)
    return mean if timing.stddev is None else f"{mean} ± {format_time(timing.stddev, unit)}"


def format_range(timing: Timing | None) -> str:
    if timing is None:
        return "-"
    unit = time_unit(timing)
    return f"{format_time(timing.low, unit)} … {format_time(timing.high, unit)}"


_BLOCKS = " ▁▂▃▄▅▆▇█"


def histogram_line(values: Sequence[float], bins: int = 12) -> str:
    """The distribution of ``values`` from min to max, one block character per bin."""
    if len(values) < 2:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return "█"
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, int((value - low) / (high - low) * bins))] += 1
    top = max(counts)
    return "".join(_BLOCKS[0 if c == 0 else max(1, round(c / top * 8))] for c in counts)


def run_line(record: RunRecord, done: int, total: int) -> str:
    """The one line a finished run gets, e.g. ``[2/6] FAILED     a.py #2  exit status 3 ...``."""
    width = len(str(total))
    head = f"[{done:>{width}}/{max(total, done)}] {record.state:<9} {record.name}"
    parts: list[str] = []
    if record.exit_status is not None:
        parts.append(describe_exit(record.exit_status))
        parts.append(f"wall {format_seconds(record.wall)} s")
        parts.append(f"cpu {format_seconds(record.cpu)} s")
        parts.append(f"peak {format_bytes(record.peak_rss)}")
    elif record.error:
        parts.append(record.error)
    if record.left_behind:
        parts.append(_left_behind_text(len(record.left_behind)))
    return "  ".join([head, *parts])


def _left_behind_text(count: int) -> str:
    return f"{count} process{'es' if count != 1 else ''} left behind, killed"


@dataclass(frozen=True)
class InFlight:
    """A run in progress, as the live area shows it."""

    name: str
    started_at: float | None  # time.time(); None while waiting for a worker
    last_line: str


class Display(Protocol):
    def start(self, total: int) -> None: ...
    def update(self, in_flight: Sequence[InFlight]) -> None: ...
    def finished(self, record: RunRecord, done: int, total: int) -> None: ...
    def note(self, message: str) -> None: ...
    def stop(self) -> None: ...


class PlainDisplay:
    """One line per finished run."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._total = 0
        self._closed = False

    def start(self, total: int) -> None:
        self._total = total

    def update(self, in_flight: Sequence[InFlight]) -> None:
        pass

    def finished(self, record: RunRecord, done: int, total: int) -> None:
        self._print(run_line(record, done, total))

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

    def finished(self, record: RunRecord, done: int, total: int) -> None:
        line = Text(run_line(record, done, total))
        line.stylize(_STATE_STYLE.get(record.state, ""), 0, len(line.plain))
        self._console.print(line)
        self._progress.update(self._bar, completed=done, total=max(total, done))

    def note(self, message: str) -> None:
        self._console.print(message, markup=False, highlight=False, style="yellow")

    def stop(self) -> None:
        self._live.stop()


SIGMA = "\N{GREEK SMALL LETTER SIGMA}"
_SUMMARY_HEADER = (
    "target", "runs", "states", f"mean ± {SIGMA}", "median", "min … max", "cpu (mean)",
    "peak mem", "exit", "distribution",
)  # fmt: skip


def summary_rows(summaries: Sequence[TargetSummary]) -> list[list[str]]:
    """The summary table's cells, as text (the terminal table and --export-markdown)."""
    rows = []
    for s in summaries:
        exits = ", ".join(
            _exit_label(status) if len(s.exit_statuses) == 1 else f"{_exit_label(status)} x{count}"
            for status, count in s.exit_statuses.items()
        )
        rows.append(
            [
                s.target.label,
                str(s.runs),
                ", ".join(f"{count} {state}" for state, count in s.states.items()),
                format_mean(s.wall),
                format_time(s.wall.median, time_unit(s.wall)) if s.wall else "-",
                format_range(s.wall),
                format_time(s.cpu.mean, time_unit(s.cpu)) if s.cpu else "-",
                format_bytes(s.peak_rss),
                exits or "-",
                histogram_line(s.walls),
            ]
        )
    return rows


def relative_lines(summaries: Sequence[TargetSummary]) -> list[str]:
    r"""``\`a.py\` ran 1.83 ± 0.04 times faster than \`b.py\```, fastest first."""
    ranked = sorted(
        (s for s in summaries if s.relative is not None),
        key=lambda s: s.relative.ratio if s.relative else 0.0,
    )
    if len(ranked) < 2:
        return []
    fastest = ranked[0]
    lines = []
    for other in ranked[1:]:
        assert other.relative is not None
        spread = other.relative.stddev
        ratio = f"{other.relative.ratio:.2f}" + (f" ± {spread:.2f}" if spread is not None else "")
        lines.append(
            f"`{fastest.target.label}` ran {ratio} times faster than `{other.target.label}`"
        )
    return lines


def markdown_table(summaries: Sequence[TargetSummary]) -> str:
    """--export-markdown: the summary table as shown, and the comparison below it."""
    from taskwarden.cli._export import markdown_report

    text = markdown_report(summary_rows(summaries), _SUMMARY_HEADER)
    lines = relative_lines(summaries)
    if lines:
        text += "\n" + "\n".join(f"- {line}" for line in lines) + "\n"
    return text


def noise_warnings(
    config: RunConfig,
    summaries: Sequence[TargetSummary],
    load_at_start: tuple[float, float, float] | None,
) -> list[str]:
    """Why the numbers may mislead: outliers, a slow first run, a busy machine."""
    warnings = []
    cores = os.cpu_count() or 1
    if config.jobs > cores:
        warnings.append(
            f"--jobs {config.jobs} on {cores} cores: parallel runs compete for the CPU "
            "and their times grow"
        )
    if load_at_start is not None and load_at_start[0] > cores * 0.9:
        warnings.append(
            f"the machine was busy (load average {load_at_start[0]:.2f} on {cores} cores): "
            "times may be inflated and noisy"
        )
    for s in summaries:
        label = s.target.label
        if s.first_run_slow:
            warnings.append(
                f"{label}: the first run was much slower than the rest (a cold cache?): "
                "consider --warmup or --prepare"
            )
        elif s.outliers:
            warnings.append(
                f"{label}: {s.outliers} statistical outlier{'s' if s.outliers > 1 else ''} "
                f"among {len(s.walls)} runs: other programs may have interfered; consider "
                "re-running on a quiet machine"
            )
        if s.wall is not None and s.wall.mean < 0.005:
            warnings.append(
                f"{label}: runs took under 5 ms: start-up overhead dominates, the "
                "numbers are inexact"
            )
        failed = s.runs - s.completed
        if failed:
            warnings.append(
                f"{label}: {failed} of {s.runs} runs did not complete; the statistics "
                f"cover the {s.completed} that did"
            )
    return warnings


def print_summary(
    console: Console,
    summaries: Sequence[TargetSummary],
    *,
    warnings: Sequence[str] = (),
    phases: Sequence[RunRecord] = (),
) -> None:
    """The results table (a row per target), the comparison, warnings, failures."""
    table = Table(box=box.SIMPLE_HEAD, title="taskwarden run", title_justify="left")
    for i, name in enumerate(_SUMMARY_HEADER):
        table.add_column(name, justify="left" if i in (0, 2, 9) else "right", overflow="fold")
    for summary, cells in zip(summaries, summary_rows(summaries), strict=True):
        states = Text()
        for i, (state, count) in enumerate(summary.states.items()):
            if i:
                states.append(", ")
            states.append(f"{count} {state}", style=_STATE_STYLE.get(state, ""))
        table.add_row(Text(cells[0]), cells[1], states, *cells[3:9], Text(cells[9], style="cyan"))
    console.print(table)
    interpreters = {
        (" ".join(s.target.interpreter), s.target.interpreter_source)
        for s in summaries
        if s.target.kind == "script"
    }
    for interpreter, source in sorted(interpreters):
        console.print(Text(f"scripts ran under {interpreter} ({source})", style="dim"))
    lines = relative_lines(summaries)
    if lines:
        console.print(Text("Relative speed (mean of the completed runs):", style="bold"))
        for line in lines:
            console.print(Text("  " + line), soft_wrap=True)
    for summary in summaries:
        if summary.left_behind:
            console.print(
                Text(
                    f"{summary.target.label}: {_left_behind_text(summary.left_behind)}",
                    style="yellow",
                )
            )
    for record in phases:
        if not record.ok:
            console.print(
                Text(f"{record.target.label}: {record.error or record.state}", style="red")
            )
    for warning in warnings:
        console.print(Text(f"Warning: {warning}", style="yellow"), soft_wrap=True)
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
