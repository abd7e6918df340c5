"""The ``taskwarden`` command line (also ``python -m taskwarden``).

    taskwarden run [options] TARGET... [-- ARGS]     benchmark scripts and commands
    taskwarden compare OLD.json NEW.json             what changed between two reports
    taskwarden --version

Each TARGET (a Python script, or ``-c "shell command"``) runs several times,
each run in a fresh process started by ``run_one`` inside a Supervisor
worker; hung runs are killed; statistics per target, and a comparison of
the targets, are printed at the end.

Modules: ``_args`` (parsing), ``_runner`` (``run_one``: one measured run,
inside a worker), ``_treewatch`` (a run's process tree: memory, subreaper,
kill), ``_command`` (scheduling, signals), ``_records`` (outcomes,
summaries), ``_stats`` (the statistics), ``_export`` (JSON, CSV, Markdown,
safe writes), ``_display`` (live progress, summary), ``_plot`` (matplotlib,
optional), ``_compare`` (``taskwarden compare``).

The command line is its own process, so it may set process-wide things
(signal handlers, ``PR_SET_CHILD_SUBREAPER``) for itself and its workers;
nothing here is imported by the library.
"""

from __future__ import annotations

import sys

from taskwarden.cli._runner import RunResult, RunSpec, run_one

__all__ = ["RunResult", "RunSpec", "main", "run_one"]

_PLAIN_WIDTH = 200  # off a terminal rich would wrap the table at 80 columns


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    # Imported here: workers import this package for ``run_one`` and need none of it.
    from taskwarden.cli._args import CompareConfig, parse_args
    from taskwarden.cli._display import ReportConsole, silence_stdout

    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit:  # argparse: --help, or a usage error
        return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 2)
    # An export to standard output (``--export-json -``) owns it: the report goes to stderr.
    to_stderr = not isinstance(config, CompareConfig) and any(p == "-" for _, p in config.exports)
    console = ReportConsole(highlight=False, stderr=to_stderr)
    if isinstance(config, CompareConfig):
        from taskwarden.cli._compare import run_compare

        if not console.is_terminal:
            console = ReportConsole(highlight=False, width=_PLAIN_WIDTH)
        return run_compare(config.old, config.new, console)
    live = console.is_terminal and not console.is_dumb_terminal and config.output != "inherit"
    if not console.is_terminal:
        console = ReportConsole(
            highlight=False, width=max(console.width, _PLAIN_WIDTH), stderr=to_stderr
        )
    # Imported after parsing, so that ``--help`` and usage errors do not pay for it.
    from taskwarden.cli._command import run_command

    try:
        return run_command(config, console, live=live)
    except BrokenPipeError:
        silence_stdout()
        return 1
