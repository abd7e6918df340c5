"""The ``taskwarden`` command line (also ``python -m taskwarden``).

    taskwarden run [--timeout S] [--heartbeat S] [--jobs N] [--repeat K]
                   [--json FILE] TARGET... [-- ARGS]

Each TARGET (a Python script, or ``-c "shell command"``) runs K times, each
run in a fresh process started by ``run_one`` inside a Supervisor worker;
hung runs are killed; a table per target is printed at the end.

Modules: ``_args`` (parsing), ``_runner`` (``run_one``: one measured run,
inside a worker), ``_treewatch`` (a run's process tree: memory, kill),
``_command`` (scheduling, signals), ``_records`` (outcomes, JSON),
``_display`` (live progress, summary table).
"""

from __future__ import annotations

import sys

from taskwarden.cli._runner import RunResult, RunSpec, run_one

__all__ = ["RunResult", "RunSpec", "main", "run_one"]

_PLAIN_WIDTH = 200  # off a terminal rich would wrap the table at 80 columns


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    # Imported here: workers import this package for ``run_one`` and need none of it.
    from taskwarden.cli._args import parse_args
    from taskwarden.cli._display import ReportConsole, silence_stdout

    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit:  # argparse: --help, or a usage error
        return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 2)
    console = ReportConsole(highlight=False)
    live = console.is_terminal and not console.is_dumb_terminal
    if not console.is_terminal:
        console = ReportConsole(highlight=False, width=max(console.width, _PLAIN_WIDTH))
    # Imported after parsing, so that ``--help`` and usage errors do not pay for it.
    from taskwarden.cli._command import run_command

    try:
        return run_command(config, console, live=live)
    except BrokenPipeError:
        silence_stdout()
        return 1
