"""``taskwarden compare OLD.json NEW.json``: what changed between two reports.

Targets are matched by their label (the script or command, with parameter
values). For each, the means of the completed runs, the ratio new/old, and
Welch's t-test on the run times: a change is called significant when
p < 0.05, so that noise between two runs of the same code is not reported
as a regression. Reads the reports of ``--export-json`` (format 1 and 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from taskwarden.cli._display import SIGMA, format_mean
from taskwarden.cli._stats import Timing, TTest, welch


@dataclass(frozen=True)
class Change:
    label: str
    old: Timing | None
    new: Timing | None
    test: TTest | None

    @property
    def ratio(self) -> float | None:
        if self.old is None or self.new is None or self.old.mean <= 0:
            return None
        return self.new.mean / self.old.mean

    def verdict(self) -> str:
        ratio = self.ratio
        if ratio is None:
            return "no completed runs in " + ("OLD" if self.old is None else "NEW")
        word = f"{ratio:.2f}x slower" if ratio >= 1 else f"{1 / ratio:.2f}x faster"
        if self.test is None:
            return f"{word} (too few runs to test)"
        if self.test.significant:
            return f"{word}, significant (p = {self.test.p:.3g})"
        return f"{word}, not significant (p = {self.test.p:.2g})"


def load_walls(path: str) -> dict[str, list[float]]:
    """Label -> wall times of the completed, measured runs in a report."""
    with open(path, encoding="utf-8") as f:
        document = json.load(f)
    if not isinstance(document, dict) or not isinstance(document.get("runs"), list):
        raise ValueError(f"{path}: not a report of taskwarden run --export-json")
    walls: dict[str, list[float]] = {}
    for target in document.get("targets", []):
        walls.setdefault(_label(target), [])
    for run in document["runs"]:
        if run.get("warmup"):
            continue
        values = walls.setdefault(_label(run), [])
        wall = run.get("wall_seconds")
        completed = run.get("state") == "COMPLETED" and run.get("exit_status") == 0
        if completed and isinstance(wall, (int, float)):
            values.append(float(wall))
    return walls


def _label(entry: dict[str, Any]) -> str:
    label = entry.get("label")
    if isinstance(label, str):
        return label
    text = str(entry.get("target"))
    return text if entry.get("kind") == "script" else f"-c {text}"


def compare(old_path: str, new_path: str) -> tuple[list[Change], list[str], list[str]]:
    """The changes of targets in both reports, and the labels only in OLD, only in NEW."""
    old, new = load_walls(old_path), load_walls(new_path)
    changes = [
        Change(label, Timing.of(old[label]), Timing.of(new[label]), welch(old[label], new[label]))
        for label in old
        if label in new
    ]
    return changes, [k for k in old if k not in new], [k for k in new if k not in old]


def run_compare(old_path: str, new_path: str, console: Console) -> int:
    try:
        changes, only_old, only_new = compare(old_path, new_path)
    except (OSError, ValueError) as error:
        print(f"taskwarden compare: {error}", flush=True)
        return 2
    table = Table(box=box.SIMPLE_HEAD, title=f"{old_path} -> {new_path}", title_justify="left")
    for name in ("target", f"old mean ± {SIGMA}", f"new mean ± {SIGMA}", "change"):
        table.add_column(name, justify="left" if name in ("target", "change") else "right")
    for change in changes:
        verdict = Text(change.verdict())
        if change.test is not None and change.test.significant and change.ratio is not None:
            verdict.stylize("red" if change.ratio > 1 else "green")
        table.add_row(change.label, format_mean(change.old), format_mean(change.new), verdict)
    console.print(table)
    for label in only_old:
        console.print(Text(f"only in {old_path}: {label}", style="dim"))
    for label in only_new:
        console.print(Text(f"only in {new_path}: {label}", style="dim"))
    return 0
