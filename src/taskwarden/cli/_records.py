"""The outcome of each run, per-target summaries, and the JSON report.

A run's state is the task's state, except that a script that exits with a
non-zero status is FAILED (the task itself completed: ``run_one`` returned).
Wall and CPU statistics cover the runs whose process exited by itself
(COMPLETED or FAILED); killed or interrupted runs (TIMED_OUT, CANCELLED)
show in the state counts, and their measurements up to the kill are kept
in the JSON.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from taskwarden.cli._args import RunConfig, Target

COMPLETED = "COMPLETED"
FAILED = "FAILED"
TIMED_OUT = "TIMED_OUT"
CANCELLED = "CANCELLED"

JSON_FORMAT_VERSION = 1


@dataclass
class RunRecord:
    """One run of one target, as reported in the table and the JSON."""

    target: Target
    repeat: int  # 0-based
    state: str
    exit_status: int | None = None  # None: killed or never started
    wall: float | None = None  # seconds
    cpu: float | None = None  # seconds, user + system of the tree
    peak_rss: int | None = None  # bytes
    stderr_tail: tuple[str, ...] = ()
    error: str | None = None
    started_at: float | None = None  # time.time()
    finished_at: float | None = None
    worker_pid: int | None = None

    @property
    def ok(self) -> bool:
        return self.state == COMPLETED and self.exit_status == 0

    @property
    def name(self) -> str:
        return f"{self.target.label} #{self.repeat + 1}"

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target.text,
            "kind": self.target.kind,
            "target_index": self.target.index,
            "repeat": self.repeat,
            "state": self.state,
            "exit_status": self.exit_status,
            "wall_seconds": self.wall,
            "cpu_seconds": self.cpu,
            "peak_rss_bytes": self.peak_rss,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "worker_pid": self.worker_pid,
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
class Spread:
    """min / median / max of some measurements."""

    low: float
    median: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        if not values:
            return None
        return cls(min(values), statistics.median(values), max(values))

    def to_json(self) -> dict[str, float]:
        return {"min": self.low, "median": self.median, "max": self.high}


@dataclass(frozen=True)
class TargetSummary:
    target: Target
    runs: int
    states: dict[str, int]  # in a fixed order: COMPLETED, FAILED, TIMED_OUT, CANCELLED, others
    wall: Spread | None
    cpu: Spread | None
    peak_rss: int | None  # the largest over the runs
    exit_statuses: dict[int, int]  # status -> runs
    failures: tuple[RunRecord, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target.text,
            "kind": self.target.kind,
            "target_index": self.target.index,
            "runs": self.runs,
            "states": self.states,
            "wall_seconds": self.wall.to_json() if self.wall else None,
            "cpu_seconds": self.cpu.to_json() if self.cpu else None,
            "peak_rss_bytes": self.peak_rss,
            "exit_statuses": {str(k): v for k, v in self.exit_statuses.items()},
        }


_STATE_ORDER = (COMPLETED, FAILED, TIMED_OUT, CANCELLED)


def summarize(targets: Sequence[Target], records: Sequence[RunRecord]) -> list[TargetSummary]:
    summaries = []
    for target in targets:
        mine = [r for r in records if r.target == target]
        counts = Counter(r.state for r in mine)
        states = {s: counts[s] for s in _STATE_ORDER if counts[s]}
        states.update({s: n for s, n in sorted(counts.items()) if s not in states})
        # Runs that ended by themselves; an interrupted run's times mean little.
        exited = [r for r in mine if r.exit_status is not None and r.state in (COMPLETED, FAILED)]
        peaks = [r.peak_rss for r in exited if r.peak_rss is not None]
        summaries.append(
            TargetSummary(
                target=target,
                runs=len(mine),
                states=states,
                wall=Spread.of([r.wall for r in exited if r.wall is not None]),
                cpu=Spread.of([r.cpu for r in exited if r.cpu is not None]),
                peak_rss=max(peaks) if peaks else None,
                exit_statuses=dict(
                    sorted(
                        Counter(r.exit_status for r in exited if r.exit_status is not None).items()
                    )
                ),
                failures=tuple(r for r in mine if not r.ok and r.state != CANCELLED),
            )
        )
    return summaries


def exit_code(records: Sequence[RunRecord], interrupted_by: int | None) -> int:
    """0 if every run exited 0; 128 + signal if interrupted; 1 otherwise."""
    if interrupted_by is not None:
        return 128 + interrupted_by
    return 0 if records and all(r.ok for r in records) else 1


def write_json(
    path: str,
    config: RunConfig,
    records: Sequence[RunRecord],
    *,
    interrupted_by: int | None,
    status: int,
) -> None:
    """Write the report to ``path`` atomically (a reader never sees half a file)."""
    document = {
        "format": JSON_FORMAT_VERSION,
        "settings": {
            "timeout": config.timeout,
            "heartbeat": config.heartbeat,
            "jobs": config.jobs,
            "repeat": config.repeat,
            "args": list(config.args),
        },
        "interrupted": interrupted_by is not None,
        "exit_status": status,
        "targets": [s.to_json() for s in summarize(config.targets, records)],
        "runs": [r.to_json() for r in records],
    }
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
