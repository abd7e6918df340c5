"""Exports of ``taskwarden run``: JSON, JSON Lines, CSV, Markdown; and how they are written.

``write_text(path, text)`` is the one way a report reaches a file:
``-`` is standard output; an existing symlink is followed; what it leads to
(or the path itself), if it is a regular file or does not exist, is replaced
atomically (a reader never sees half a report); anything else (a device, a
pipe, ``/dev/stdout``) is opened and written through, never replaced. The
old code renamed a temporary file over the path, which replaced a symlink
or a device with a regular file.

``RunJournal`` writes one JSON line per run as each run ends
(``--export-jsonl``), flushed at once, so that no finished run is lost to a
crash or a kill of the command line.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import platform
import socket
import stat
import sys
import tempfile
from collections.abc import Sequence
from typing import IO, Any

from taskwarden.cli._args import RunConfig
from taskwarden.cli._records import JSON_FORMAT_VERSION, RunRecord, TargetSummary, summarize


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` safely (see the module docstring)."""
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    real = os.path.realpath(path)
    try:
        mode: int | None = os.stat(real).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        with open(real, "w", encoding="utf-8") as f:  # a device or a pipe: write through
            f.write(text)
        return
    directory = os.path.dirname(real) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(real)}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if mode is not None:
            os.chmod(tmp, stat.S_IMODE(mode))
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, real)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def context(load_at_start: tuple[float, float, float] | None) -> dict[str, Any]:
    """What the machine was: for telling two reports' conditions apart."""
    from taskwarden import __version__

    return {
        "taskwarden_version": __version__,
        "python": sys.version,
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_start": list(load_at_start) if load_at_start else None,
        "load_average_end": list(load_average() or ()) or None,
        "cwd": os.getcwd(),
    }


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def cpu_model() -> str | None:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def env_changes(config: RunConfig) -> dict[str, str]:
    """What a run's environment has that taskwarden's own does not (besides the marker)."""
    return {"PYTHONUNBUFFERED": "1"} if config.heartbeat is not None else {}


def json_report(
    config: RunConfig,
    records: Sequence[RunRecord],
    *,
    interrupted_by: int | None,
    status: int | None,
    load_at_start: tuple[float, float, float] | None,
    partial: bool = False,
) -> str:
    document = {
        "format": JSON_FORMAT_VERSION,
        "partial": partial,  # true while runs are still going (a report written as they end)
        "context": context(load_at_start),
        "argv": list(config.argv),
        "settings": {
            "timeout": config.timeout,
            "heartbeat": config.heartbeat,
            "jobs": config.jobs,
            "repeat": config.repeat,
            "min_runs": config.min_runs,
            "max_runs": config.max_runs,
            "warmup": config.warmup,
            "prepare": config.prepare,
            "setup": config.setup,
            "cleanup": config.cleanup,
            "output": config.output_path or config.output,
            "python": config.python,
            "args": list(config.args),
            "parameters": {name: list(values) for name, values in config.parameters},
        },
        "env_changes": env_changes(config),
        "interrupted": interrupted_by is not None,
        "exit_status": status,
        "targets": [s.to_json() for s in summarize(config.targets, records)],
        "runs": [r.to_json() for r in records],
    }
    return json.dumps(document, indent=2) + "\n"


_CSV_FIELDS = (
    "label", "kind", "runs", "completed", "failed", "mean", "stddev", "median", "min", "max",
    "cpu_mean", "peak_memory_bytes", "relative", "relative_stddev",
)  # fmt: skip


def csv_report(config: RunConfig, summaries: Sequence[TargetSummary]) -> str:
    names = [name for name, _ in config.parameters]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*_CSV_FIELDS, *(f"parameter_{n}" for n in names)])
    for s in summaries:
        w = s.wall
        rel = s.relative
        timing = (w.mean, w.stddev, w.median, w.low, w.high) if w else (None,) * 5
        params = dict(s.target.params)
        writer.writerow(
            [
                s.target.label, s.target.kind, s.runs, s.completed, s.runs - s.completed,
                *(_num(v) for v in timing), _num(s.cpu.mean if s.cpu else None),
                s.peak_rss if s.peak_rss is not None else "",
                _num(rel.ratio if rel else None), _num(rel.stddev if rel else None),
                *(params.get(n, "") for n in names),
            ]
        )  # fmt: skip
    return out.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def markdown_report(lines: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """A Markdown table of ``header`` and ``lines`` (cells already formatted)."""

    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(header))) + "|"
    out = [row(header), rule]
    out += [row(cells) for cells in lines]
    return "\n".join(out) + "\n"


class RunJournal:
    """``--export-jsonl``: a JSON line per run, written and flushed as the run ends."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._file: IO[str] | None = None
        self.error: OSError | None = None

    def open(self) -> None:
        try:
            if self._path == "-":
                self._file = sys.stdout
                return
            real = os.path.realpath(self._path)
            # A regular file is truncated here: the journal grows as runs end, so it
            # cannot be replaced atomically at the end; a device or pipe is written through.
            self._file = open(real, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as error:
            self.error = error

    def write(self, record: RunRecord) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(record.to_json()) + "\n")
            self._file.flush()
        except OSError as error:
            self.error = error
            self._file = None

    def close(self) -> None:
        if self._file is not None and self._file is not sys.stdout:
            with contextlib.suppress(OSError):
                self._file.close()
        self._file = None
