"""Command-line parsing: ``taskwarden run [options] TARGET... [-- ARGS]``.

argparse alone cannot keep the order of script paths and ``-c`` commands
when they are mixed (it consumes positionals in chunks and would reject the
second chunk), nor tell ``--`` ARGS apart from targets. So ``_split_run``
walks the tokens once: it takes out the targets (paths and ``-c COMMAND``)
in order, cuts ARGS off at the first bare ``--`` that is not an option's
value, and leaves the options to argparse (types, help, error messages).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

PROG = "taskwarden"

TargetKind = Literal["script", "shell"]


@dataclass(frozen=True)
class Target:
    """One thing to run: a Python script path, or a shell command given with ``-c``."""

    kind: TargetKind
    text: str  # the script path as typed, or the shell command
    index: int  # position on the command line, so the same script twice stays two targets

    @property
    def label(self) -> str:
        return self.text if self.kind == "script" else f"-c {self.text}"


@dataclass(frozen=True)
class RunConfig:
    """Everything ``taskwarden run`` was asked to do."""

    targets: tuple[Target, ...]
    args: tuple[str, ...]  # after ``--``: passed to every script target
    timeout: float | None
    heartbeat: float | None
    jobs: int
    repeat: int
    json_path: str | None


class UsageError(Exception):
    """Bad command line; the message is shown after the usage line."""


# Options of ``run`` that take a value: the splitter must skip their value,
# which may itself look like ``--`` or a path.
_VALUE_OPTIONS = frozenset({"--timeout", "--heartbeat", "--jobs", "-j", "--repeat", "-n", "--json"})


def _split_run(
    tokens: Sequence[str],
) -> tuple[list[str], list[tuple[TargetKind, str]], list[str]]:
    """Split the tokens after ``run`` into (options for argparse, targets, ARGS after ``--``)."""
    options: list[str] = []
    targets: list[tuple[TargetKind, str]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--":
            return options, targets, list(tokens[i + 1 :])
        if token == "-c" and i + 1 < len(tokens):
            targets.append(("shell", tokens[i + 1]))
            i += 2
            continue
        if token.startswith("-c") and len(token) > 2:  # -cCOMMAND, -c=COMMAND
            targets.append(("shell", token[3:] if token[2] == "=" else token[2:]))
        elif token in _VALUE_OPTIONS and i + 1 < len(tokens):
            # Joined, so that argparse takes a value such as "-1" as the value
            # (and reports it as a bad number, not as a missing argument).
            value = tokens[i + 1]
            options.append(f"{token}={value}" if token.startswith("--") else f"{token}{value}")
            i += 1
        elif token.startswith("-") and token != "-":
            options.append(token)  # a flag or ``--opt=value``: argparse's job
        else:
            targets.append(("script", token))
        i += 1
    return options, targets, []


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


_RUN_DESCRIPTION = """\
Run each TARGET (a Python script, or a shell command given with -c) --repeat
times, each run in a fresh process under a taskwarden Supervisor. Hung runs
are killed (--timeout, --heartbeat); live progress is shown; a table per
target is printed at the end. Exit status is 0 only if every run exited 0.
"""

_RUN_EPILOG = """\
--heartbeat S kills a run whose process tree has printed nothing (stdout or
stderr) for S seconds: output is the run's sign of life. Python targets run
with PYTHONUNBUFFERED=1 so that their prints arrive at once.

examples:
  taskwarden run bench.py --repeat 5
  taskwarden run --jobs 4 --timeout 60 a.py b.py -c "make test" -- --size 1000
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="taskwarden: a multiprocessing supervisor.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run",
        help="run scripts in supervised processes and print a results table",
        description=_RUN_DESCRIPTION,
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        usage=(
            f"{PROG} run [-h] [--timeout S] [--heartbeat S] [--jobs N] [--repeat K] "
            "[--json FILE] TARGET... [-- ARGS]"
        ),
    )
    run.add_argument(
        "--timeout", metavar="S", type=_positive_float, help="kill a run after S seconds"
    )
    run.add_argument(
        "--heartbeat",
        metavar="S",
        type=_positive_float,
        help="kill a run that has been silent (no output) for S seconds",
    )
    run.add_argument(
        "-j", "--jobs", metavar="N", type=_positive_int, default=1, help="runs in parallel (1)"
    )
    run.add_argument(
        "-n", "--repeat", metavar="K", type=_positive_int, default=1, help="runs per target (1)"
    )
    run.add_argument("--json", metavar="FILE", dest="json_path", help="write every run as JSON")
    # The splitter takes -c and the paths out before argparse sees them: these two
    # are here for --help (and to make a lone "-c" an error).
    run.add_argument(
        "-c",
        metavar="COMMAND",
        action="append",
        help="a shell command to run as a target (may be repeated, mixed with scripts)",
    )
    run.add_argument(
        "target_help", nargs="*", metavar="TARGET", help="a Python script path, or -c COMMAND"
    )
    return parser


def parse_args(argv: Sequence[str]) -> RunConfig:
    """Parse a ``taskwarden`` command line. argparse exits (SystemExit) on usage errors."""
    argv = list(argv)
    raw_targets: list[tuple[TargetKind, str]] = []
    script_args: list[str] = []
    if argv and argv[0] == "run":
        options, raw_targets, script_args = _split_run(argv[1:])
        argv = ["run", *options]
    parser = build_parser()
    namespace = parser.parse_args(argv)
    run_parser = _subparser(parser, "run")
    if not raw_targets:
        run_parser.error("no TARGET given: name a Python script, or -c COMMAND")
    targets = tuple(Target(kind, text, i) for i, (kind, text) in enumerate(raw_targets))
    for target in targets:
        if target.kind == "script" and not os.path.isfile(target.text):
            run_parser.error(f"no such script: {target.text}")
    return RunConfig(
        targets=targets,
        args=tuple(script_args),
        timeout=namespace.timeout,
        heartbeat=namespace.heartbeat,
        jobs=namespace.jobs,
        repeat=namespace.repeat,
        json_path=namespace.json_path,
    )


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub: argparse.ArgumentParser = action.choices[name]
            return sub
    raise LookupError(name)
