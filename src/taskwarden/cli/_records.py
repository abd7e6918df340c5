"""The outcome of each run, and per-target summaries.

A run's state is the task's state, except that a script that exits with a
non-zero status is FAILED (the task itself completed: ``run_one`` returned).
Timing statistics are over COMPLETED runs only (exit status 0): a failure
that ends fast would otherwise pull the median down. FAILED, TIMED_OUT and
CANCELLED runs are counted apart, and their measurements up to the end are
kept in the exports. Warmup runs are recorded but never summarised.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from taskwarden.cli._args import Target
from taskwarden.cli._stats import (
    OUTLIER_THRESHOLD,
    Relative,
    Timing,
    modified_z_scores,
    outliers,
    relative_speed,
)

COMPLETED = "COMPLETED"
FAILED = "FAILED"
TIMED_OUT = "TIMED_OUT"
CANCELLED = "CANCELLED"

JSON_FORMAT_VERSION = 2


@dataclass
class RunRecord:
    """One run of one target, as reported in the table and the exports."""

    target: Target
    repeat: int  # 0-based, among the measured runs (or among the warmups)
    state: str
    exit_status: int | None = None  # None: killed or never started
    wall: float | None = None  # seconds
    cpu: float | None = None  # seconds, user + system of the tree
    peak_rss: int | None = None  # bytes (PSS summed over the tree, see _treewatch)
    stderr_tail: tuple[str, ...] = ()
    error: str | None = None
    started_at: float | None = None  # time.time()
    finished_at: float | None = None
    worker_pid: int | None = None
    warmup: bool = False
    argv: tuple[str, ...] = ()
    cwd: str | None = None
    left_behind: tuple[str, ...] = ()  # "pid command line" of each process killed at the end

    @property
    def ok(self) -> bool:
        return self.state == COMPLETED and self.exit_status == 0

    @property
    def name(self) -> str:
        return f"{self.target.label} {'warmup ' if self.warmup else ''}#{self.repeat + 1}"

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target.text,
            "label": self.target.label,
            "kind": self.target.kind,
            "target_index": self.target.index,
            "parameters": dict(self.target.params),
            "repeat": self.repeat,
            "warmup": self.warmup,
            "state": self.state,
            "exit_status": self.exit_status,
            "wall_seconds": self.wall,
            "cpu_seconds": self.cpu,
            "peak_memory_bytes": self.peak_rss,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "worker_pid": self.worker_pid,
            "argv": list(self.argv),
            "cwd": self.cwd,
            "left_behind": list(self.left_behind),
            "stderr_tail": list(self.stderr_tail),
            "error": self.error,
        }


def describe_exit(status: int) -> str:
    """``exit status 3``, or ``killed by SIGKILL`` for a negative (signal) status."""
    if status >= 0:
        return f"exit status {status}"
    try:
        return f"killed by {signal.Signals(-status).name}"
    except ValueError:
        return f"killed by signal {-status}"


@dataclass(frozen=True)
class TargetSummary:
    """One target's measured runs: timing of the completed ones, the rest counted apart."""

    target: Target
    runs: int  # measured runs (warmups not included)
    states: dict[str, int]  # in a fixed order: COMPLETED, FAILED, TIMED_OUT, CANCELLED, others
    wall: Timing | None  # over COMPLETED runs only
    cpu: Timing | None
    peak_rss: int | None  # the largest over the completed runs
    exit_statuses: dict[int, int]  # status -> runs, of the runs that exited by themselves
    failures: tuple[RunRecord, ...]
    walls: tuple[float, ...] = ()  # of the completed runs, in run order
    outliers: int = 0
    first_run_slow: bool = False
    relative: Relative | None = None
    left_behind: int = 0  # processes killed after the target's runs ended

    @property
    def completed(self) -> int:
        return self.states.get(COMPLETED, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target.text,
            "label": self.target.label,
            "kind": self.target.kind,
            "target_index": self.target.index,
            "parameters": dict(self.target.params),
            "interpreter": list(self.target.interpreter) or None,
            "interpreter_source": self.target.interpreter_source or None,
            "runs": self.runs,
            "completed": self.completed,
            "failed": self.runs - self.completed,
            "states": self.states,
            "wall_seconds": self.wall.to_json() if self.wall else None,
            "cpu_seconds": self.cpu.to_json() if self.cpu else None,
            "peak_memory_bytes": self.peak_rss,
            "exit_statuses": {str(k): v for k, v in self.exit_statuses.items()},
            "outliers": self.outliers,
            "relative": None
            if self.relative is None
            else {
                "ratio": self.relative.ratio,
                "stddev": self.relative.stddev,
                "fastest": self.relative.fastest,
            },
            "left_behind": self.left_behind,
        }


_STATE_ORDER = (COMPLETED, FAILED, TIMED_OUT, CANCELLED)


def summarize(targets: Sequence[Target], records: Sequence[RunRecord]) -> list[TargetSummary]:
    """Per target: statistics over its COMPLETED measured runs; failures counted apart."""
    summaries = []
    for target in targets:
        mine = [r for r in records if r.target == target and not r.warmup]
        counts = Counter(r.state for r in mine)
        states = {s: counts[s] for s in _STATE_ORDER if counts[s]}
        states.update({s: n for s, n in sorted(counts.items()) if s not in states})
        good = [r for r in mine if r.state == COMPLETED and r.wall is not None]
        walls = [r.wall for r in good if r.wall is not None]
        exited = [r for r in mine if r.exit_status is not None and r.state in (COMPLETED, FAILED)]
        peaks = [r.peak_rss for r in good if r.peak_rss is not None]
        scores = modified_z_scores(walls)
        summaries.append(
            TargetSummary(
                target=target,
                runs=len(mine),
                states=states,
                wall=Timing.of(walls),
                cpu=Timing.of([r.cpu for r in good if r.cpu is not None]),
                peak_rss=max(peaks) if peaks else None,
                exit_statuses=dict(
                    sorted(
                        Counter(r.exit_status for r in exited if r.exit_status is not None).items()
                    )
                ),
                failures=tuple(r for r in mine if not r.ok and r.state != CANCELLED),
                walls=tuple(walls),
                outliers=len(outliers(walls)),
                first_run_slow=bool(scores) and scores[0] > OUTLIER_THRESHOLD,
                left_behind=sum(len(r.left_behind) for r in records if r.target == target),
            )
        )
    ratios = relative_speed(
        [(s.wall.mean, s.wall.stddev) if s.wall else (0.0, None) for s in summaries]
    )
    if sum(r is not None for r in ratios) > 1:
        summaries = [replace(s, relative=r) for s, r in zip(summaries, ratios, strict=True)]
    return summaries


def exit_code(records: Sequence[RunRecord], interrupted_by: int | None) -> int:
    """0 if every run exited 0; 128 + signal if interrupted; 1 otherwise."""
    if interrupted_by is not None:
        return 128 + interrupted_by
    return 0 if records and all(r.ok for r in records) else 1
