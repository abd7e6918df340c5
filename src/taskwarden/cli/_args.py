"""Command-line parsing: ``taskwarden run [options] TARGET... [-- ARGS]``, ``compare``.

argparse alone cannot keep the order of script paths and ``-c`` commands
when they are mixed (it consumes positionals in chunks and would reject the
second chunk), nor tell ``--`` ARGS apart from targets. So ``_split_run``
walks the tokens once: it takes out the targets (paths and ``-c COMMAND``)
in order, cuts ARGS off at the first bare ``--`` that is not an option's
value, and leaves the options to argparse (types, help, error messages).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal, cast

PROG = "taskwarden"

TargetKind = Literal["script", "shell"]
OutputMode = Literal["null", "pipe", "inherit", "file"]
ExportKind = Literal["json", "jsonl", "csv", "markdown"]

# A shell target made only of these characters (and spaces) needs no shell: it is
# run directly, so that a shell's start-up (about 1 ms) is not measured with it.
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
# Words that a shell gives its own meaning, even where a program of that name exists.
_SHELL_WORDS = frozenset(
    {
        "!", "{", "}", "[[", "]]", ".", ":", "alias", "bg", "break", "builtin", "case", "cd",
        "command", "continue", "declare", "do", "done", "elif", "else", "esac", "eval", "exec",
        "exit", "export", "fc", "fg", "for", "function", "getopts", "hash", "if", "in", "jobs",
        "let", "local", "read", "readonly", "return", "select", "set", "shift", "source", "then",
        "time", "times", "trap", "type", "typeset", "ulimit", "umask", "unalias", "unset",
        "until", "wait", "while",
    }
)  # fmt: skip
_GENERIC_PYTHONS = frozenset({"python", "python3"})


@dataclass(frozen=True)
class Target:
    """One thing to run: a Python script path, or a shell command given with ``-c``.

    With parameters (``--parameter-scan``, ``--parameter-list``), each value (or
    combination) is a target of its own, with ``{NAME}`` substituted in ``text`` and
    ``args``.
    """

    kind: TargetKind
    text: str  # the script path as typed, or the shell command (parameters substituted)
    index: int  # position among the targets, so the same script twice stays two targets
    params: tuple[tuple[str, str], ...] = ()
    args: tuple[str, ...] = ()  # for a script: the arguments after ``--``
    interpreter: tuple[str, ...] = ()  # for a script: argv before the path
    interpreter_source: str = ""  # "--python", "shebang" or "taskwarden's own"
    template: str = ""  # ``text`` before substitution

    @property
    def label(self) -> str:
        base = self.text if self.kind == "script" else f"-c {self.text}"
        hidden = [f"{k}={v}" for k, v in self.params if "{" + k + "}" not in self.template]
        return f"{base} ({', '.join(hidden)})" if hidden else base

    @property
    def key(self) -> str:
        """What ``compare`` matches targets by across two reports."""
        return self.label


@dataclass(frozen=True)
class RunConfig:
    """Everything ``taskwarden run`` was asked to do."""

    targets: tuple[Target, ...]
    args: tuple[str, ...]  # after ``--``: passed to every script target (before substitution)
    timeout: float | None
    heartbeat: float | None
    jobs: int
    repeat: int | None  # exactly this many runs per target; None: adaptive
    json_path: str | None  # --json / --export-json
    min_runs: int = 10
    max_runs: int | None = None
    warmup: int = 0
    prepare: str | None = None
    setup: str | None = None
    cleanup: str | None = None
    output: OutputMode = "null"
    output_path: str | None = None
    python: str | None = None  # --python, resolved to a path
    exports: tuple[tuple[ExportKind, str], ...] = ()
    plot: str | None = None
    parameters: tuple[tuple[str, tuple[str, ...]], ...] = ()
    argv: tuple[str, ...] = ()  # the command line, for the report

    @property
    def interleaved(self) -> bool:
        """Runs of different targets alternate, unless a setup or cleanup is per target."""
        return self.setup is None and self.cleanup is None


@dataclass(frozen=True)
class CompareConfig:
    old: str
    new: str


class UsageError(Exception):
    """Bad command line; the message is shown after the usage line."""


# Options of ``run`` that take values, and how many: the splitter must skip their
# values, which may themselves look like ``--`` or a path.
_VALUE_OPTIONS = {
    "--timeout": 1, "--heartbeat": 1, "--jobs": 1, "-j": 1, "--repeat": 1, "-n": 1,
    "--runs": 1, "-r": 1, "--json": 1, "--min-runs": 1, "-m": 1, "--max-runs": 1, "-M": 1,
    "--warmup": 1, "-w": 1, "--prepare": 1, "-p": 1, "--setup": 1, "-s": 1, "--cleanup": 1,
    "--output": 1, "--python": 1, "--export-json": 1, "--export-jsonl": 1,
    "--export-csv": 1, "--export-markdown": 1, "--plot": 1, "--step": 1,
    "--parameter-step-size": 1, "-D": 1, "--parameter-scan": 3, "-P": 3,
    "--parameter-list": 2, "-L": 2,
}  # fmt: skip


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
        count = _VALUE_OPTIONS.get(token, 0)
        if token.startswith("-c") and len(token) > 2:  # -cCOMMAND, -c=COMMAND
            targets.append(("shell", token[3:] if token[2] == "=" else token[2:]))
        elif count == 1 and i + 1 < len(tokens):
            # Joined, so that argparse takes a value such as "-1" as the value
            # (and reports it as a bad number, not as a missing argument).
            value = tokens[i + 1]
            options.append(f"{token}={value}" if token.startswith("--") else f"{token}{value}")
            i += 1
        elif count > 1 and i + count < len(tokens):
            options.extend(tokens[i : i + count + 1])
            i += count
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


def _int_at_least(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {what}: {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1, "at least 1")


def _count(text: str) -> int:
    return _int_at_least(text, 0, "0 or more")


def _output(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("empty: give null, pipe, inherit or a file name")
    return text


_RUN_DESCRIPTION = """\
Benchmark each TARGET (a Python script, or a shell command given with -c):
run it several times, each run in a fresh process under a taskwarden
Supervisor, and report mean ± sd, median and min…max of the completed runs,
how the targets compare, and every failure apart. Hung runs are killed
(--timeout, --heartbeat) with their whole process tree, and whatever a run
leaves behind is killed and reported when it ends. Exit status is 0 only if
every run exited 0.
"""

_RUN_EPILOG = """\
runs: --repeat K runs each target exactly K times. Otherwise the count is
adaptive, as with hyperfine: at least --min-runs (10), about 3 s of runs in
all, at most --max-runs. --warmup runs come first and are not counted.

output: --output null (default) discards stdout; stderr goes to a file, so
that a failure's last lines can be shown. pipe reads both through pipes;
inherit passes them through to this terminal; FILE appends stdout to FILE.
--heartbeat S kills a run that has printed nothing (stdout or stderr) for S
seconds; it reads output through pipes, and sets PYTHONUNBUFFERED=1 for the
runs, so that their prints arrive at once. Without --heartbeat nothing is
added to a run's environment but TASKWARDEN_RUN (which marks its processes).

scripts run under --python PATH, else the interpreter a shebang line names,
else this taskwarden's interpreter; "#!/usr/bin/env python3" (or python) is
taken as "a Python 3", and gets this taskwarden's interpreter too.

parameters: --parameter-scan N 1 5 [--step 2] or --parameter-list N a,b,c
makes one target per value, with {N} substituted in targets, ARGS and the
--prepare, --setup and --cleanup commands.

exports (FILE may be - for stdout; a symlink, device or pipe is written
through, a regular file is replaced atomically): --export-json (alias --json),
--export-jsonl (one line per run, written as each run ends), --export-csv,
--export-markdown; --plot FILE.svg|.png needs matplotlib (taskwarden[plot]).

examples:
  taskwarden run bench_a.py bench_b.py --warmup 2
  taskwarden run --timeout 60 --repeat 5 a.py -c "make test" -- --size 1000
  taskwarden run --parameter-scan n 1 4 -c "sleep 0.{n}" --export-json out.json
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="taskwarden: a multiprocessing supervisor.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run",
        help="benchmark scripts in supervised processes and print a results table",
        description=_RUN_DESCRIPTION,
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        usage=(
            f"{PROG} run [-h] [--timeout S] [--heartbeat S] [--jobs N] [--repeat K] "
            "[--warmup N] [--min-runs N] [--max-runs N] [--prepare CMD] [--setup CMD] "
            "[--cleanup CMD] [--parameter-scan NAME LO HI [--step S]] "
            "[--parameter-list NAME VALUES] [--output WHERE] [--python PATH] "
            "[--export-json FILE] [--export-jsonl FILE] [--export-csv FILE] "
            "[--export-markdown FILE] [--plot FILE] TARGET... [-- ARGS]"
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
        "-n", "-r", "--repeat", "--runs", metavar="K", type=_positive_int, dest="repeat",
        help="exactly K runs per target (default: adaptive, see below)",
    )  # fmt: skip
    run.add_argument(
        "-m", "--min-runs", metavar="N", type=_positive_int, help="at least N runs (10)"
    )
    run.add_argument("-M", "--max-runs", metavar="N", type=_positive_int, help="at most N runs")
    run.add_argument(
        "-w", "--warmup", metavar="N", type=_count, default=0, help="N uncounted runs first (0)"
    )
    run.add_argument("-p", "--prepare", metavar="CMD", help="shell command before each run")
    run.add_argument("-s", "--setup", metavar="CMD", help="shell command before a target's runs")
    run.add_argument("--cleanup", metavar="CMD", help="shell command after a target's runs")
    run.add_argument(
        "-P", "--parameter-scan", nargs=3, metavar=("NAME", "LO", "HI"),
        help="a target per value LO, LO+step, ... HI of {NAME}",
    )  # fmt: skip
    run.add_argument(
        "-D", "--step", "--parameter-step-size", metavar="S", dest="step",
        help="the step of --parameter-scan (1)",
    )  # fmt: skip
    run.add_argument(
        "-L", "--parameter-list", nargs=2, action="append", metavar=("NAME", "VALUES"),
        help="a target per comma-separated value of {NAME} (may be repeated)",
    )  # fmt: skip
    run.add_argument(
        "--output", metavar="WHERE", type=_output, default="null",
        help="null (default), pipe, inherit, or a FILE for the runs' stdout",
    )  # fmt: skip
    run.add_argument("--python", metavar="PATH", help="the interpreter for script targets")
    for kind, dest in (
        ("json", "export_json"),
        ("jsonl", "export_jsonl"),
        ("csv", "export_csv"),
        ("markdown", "export_markdown"),
    ):
        run.add_argument(f"--export-{kind}", metavar="FILE", dest=dest, help=f"write {kind}")
    run.add_argument("--json", metavar="FILE", dest="json_path", help="the same as --export-json")
    run.add_argument("--plot", metavar="FILE", help="whisker plot and histogram (svg, png, pdf)")
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
    compare = commands.add_parser(
        "compare",
        help="compare two JSON reports of taskwarden run, target by target",
        description=(
            "Compare two reports written by `taskwarden run --export-json`: for each "
            "target in both, the change of the mean and whether it is significant "
            "(Welch's t-test, 95 %%)."
        ),
        allow_abbrev=False,
    )
    compare.add_argument("old", metavar="OLD.json")
    compare.add_argument("new", metavar="NEW.json")
    return parser


def _version() -> str:
    from taskwarden import __version__

    return __version__


def parse_args(argv: Sequence[str]) -> RunConfig | CompareConfig:
    """Parse a ``taskwarden`` command line. argparse exits (SystemExit) on usage errors."""
    original = tuple(argv)
    argv = list(argv)
    raw_targets: list[tuple[TargetKind, str]] = []
    script_args: list[str] = []
    if argv and argv[0] == "run":
        options, raw_targets, script_args = _split_run(argv[1:])
        argv = ["run", *options]
    parser = build_parser()
    namespace = parser.parse_args(argv)
    if namespace.command == "compare":
        return CompareConfig(namespace.old, namespace.new)
    run_parser = _subparser(parser, "run")
    try:
        return _run_config(namespace, raw_targets, script_args, original)
    except UsageError as error:
        run_parser.error(str(error))


def _run_config(
    ns: argparse.Namespace,
    raw_targets: list[tuple[TargetKind, str]],
    script_args: list[str],
    argv: tuple[str, ...],
) -> RunConfig:
    if not raw_targets:
        raise UsageError("no TARGET given: name a Python script, or -c COMMAND")
    min_runs, max_runs = ns.min_runs, ns.max_runs
    if ns.repeat is not None and (min_runs is not None or max_runs is not None):
        raise UsageError("--repeat fixes the number of runs: give it or --min/--max-runs")
    if min_runs is None:
        min_runs = min(10, max_runs) if max_runs is not None else 10
    if max_runs is not None and max_runs < min_runs:
        raise UsageError(f"--max-runs {max_runs} is below --min-runs {min_runs}")
    parameters = _parameters(ns)
    python = _resolve_python(ns.python) if ns.python is not None else None
    output, output_path = _output_mode(ns.output)
    exports = _exports(ns)
    if ns.plot is not None:
        _check_plot(ns.plot)
    targets: list[Target] = []
    for values in _combinations(parameters):
        for kind, text in raw_targets:
            params = tuple(zip([name for name, _ in parameters], values, strict=True))
            targets.append(_target(kind, text, len(targets), params, tuple(script_args), python))
    return RunConfig(
        targets=tuple(targets),
        args=tuple(script_args),
        timeout=ns.timeout,
        heartbeat=ns.heartbeat,
        jobs=ns.jobs,
        repeat=ns.repeat,
        json_path=ns.json_path or ns.export_json,
        min_runs=min_runs,
        max_runs=max_runs,
        warmup=ns.warmup,
        prepare=ns.prepare,
        setup=ns.setup,
        cleanup=ns.cleanup,
        output=output,
        output_path=output_path,
        python=python,
        exports=exports,
        plot=ns.plot,
        parameters=parameters,
        argv=argv,
    )


def substitute(text: str, params: Sequence[tuple[str, str]]) -> str:
    """``text`` with each ``{NAME}`` of a parameter replaced by its value."""
    for name, value in params:
        text = text.replace("{" + name + "}", value)
    return text


def _target(
    kind: TargetKind,
    text: str,
    index: int,
    params: tuple[tuple[str, str], ...],
    args: tuple[str, ...],
    python: str | None,
) -> Target:
    real = substitute(text, params)
    if kind == "shell":
        return Target(kind, real, index, params, template=text)
    if not os.path.isfile(real):
        raise UsageError(f"no such script: {real}")
    interpreter, source = script_interpreter(real, python)
    return Target(
        kind, real, index, params, tuple(substitute(a, params) for a in args),
        interpreter, source, template=text,
    )  # fmt: skip


def script_interpreter(path: str, python: str | None) -> tuple[tuple[str, ...], str]:
    """The argv prefix that runs the script ``path``, and why that one.

    ``--python`` wins; else a shebang line that names an interpreter is honoured,
    except ``#!/usr/bin/env python3`` (or ``python``), which asks for "a Python",
    and gets the one running taskwarden (a virtual environment's, say) like a
    script without a shebang.
    """
    if python is not None:
        return (python,), "--python"
    own = ((sys.executable,), "taskwarden's own")
    try:
        with open(path, "rb") as f:
            first = f.readline(512)
    except OSError:
        return own
    if not first.startswith(b"#!"):
        return own
    words = first[2:].decode("utf-8", errors="replace").split()
    if not words:
        return own
    if os.path.basename(words[0]) == "env":
        words = words[1:]
        while words and words[0].startswith("-"):  # env's own options: env -S ...
            words = words[1:]
        if not words:
            return own
        if words[0] in _GENERIC_PYTHONS and len(words) == 1:
            return own
        found = shutil.which(words[0])
        if found is None:
            raise UsageError(f"{path}: its shebang names {words[0]!r}, not found on PATH")
        return (found, *words[1:]), "shebang"
    if not os.access(words[0], os.X_OK):
        raise UsageError(f"{path}: its shebang names {words[0]!r}, which cannot be run")
    return tuple(words), "shebang"


def shell_argv(command: str) -> tuple[str, ...] | None:
    """The argv of a ``-c`` command that needs no shell, or None if it does need one."""
    words = command.split()
    if not words or not all(_PLAIN_WORD.fullmatch(w) for w in words):
        return None
    if words[0] in _SHELL_WORDS or "=" in words[0]:
        return None
    program = shutil.which(words[0])
    if program is None:
        return None
    return (program, *words[1:])


def _resolve_python(text: str) -> str:
    found = shutil.which(text)
    if found is None:
        raise UsageError(f"--python {text}: no such interpreter")
    return os.path.abspath(found)


def _output_mode(text: str) -> tuple[OutputMode, str | None]:
    if text in ("null", "pipe", "inherit"):
        return cast(OutputMode, text), None
    path = os.path.abspath(text)
    try:  # truncate it once here; each run appends
        with open(path, "wb"):
            pass
    except OSError as error:
        raise UsageError(f"--output {text}: {error.strerror}") from None
    return "file", path


def _exports(ns: argparse.Namespace) -> tuple[tuple[ExportKind, str], ...]:
    exports: list[tuple[ExportKind, str]] = []
    json_path = ns.json_path or ns.export_json
    if ns.json_path and ns.export_json and ns.json_path != ns.export_json:
        raise UsageError("--json is --export-json: give one")
    if json_path:
        exports.append(("json", json_path))
    for kind, path in (
        ("jsonl", ns.export_jsonl),
        ("csv", ns.export_csv),
        ("markdown", ns.export_markdown),
    ):
        if path:
            exports.append((cast(ExportKind, kind), path))
    if sum(path == "-" for _, path in exports) > 1:
        raise UsageError("only one export can go to standard output (-)")
    return tuple(exports)


def _check_plot(path: str) -> None:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".svg", ".png", ".pdf"):
        raise UsageError(f"--plot {path}: name a .svg, .png or .pdf file")
    try:
        import matplotlib  # noqa: F401  (lazy: only with --plot)
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed: pip install 'taskwarden[plot]'"
        ) from None


def _parameters(ns: argparse.Namespace) -> tuple[tuple[str, tuple[str, ...]], ...]:
    parameters: list[tuple[str, tuple[str, ...]]] = []
    if ns.parameter_scan is not None:
        name, low, high = ns.parameter_scan
        parameters.append((_parameter_name(name), _scan(low, high, ns.step)))
    elif ns.step is not None:
        raise UsageError("--step goes with --parameter-scan")
    for name, values in ns.parameter_list or []:
        items = tuple(values.split(","))
        if any(not v for v in items):
            raise UsageError(f"--parameter-list {name}: an empty value in {values!r}")
        parameters.append((_parameter_name(name), items))
    names = [name for name, _ in parameters]
    if len(set(names)) != len(names):
        raise UsageError("each parameter NAME may be given once")
    return tuple(parameters)


def _parameter_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise UsageError(f"parameter name {name!r}: letters, digits and _ only")
    return name


def _scan(low: str, high: str, step: str | None) -> tuple[str, ...]:
    try:
        lo, hi = Decimal(low), Decimal(high)
        by = Decimal(step) if step is not None else Decimal(1)
    except InvalidOperation:
        raise UsageError(f"--parameter-scan: not numbers: {low} {high} {step or ''}") from None
    if not (lo.is_finite() and hi.is_finite() and by.is_finite()) or by <= 0:
        raise UsageError("--parameter-scan: LO and HI must be numbers, --step above 0")
    if hi < lo:
        raise UsageError(f"--parameter-scan: HI {high} is below LO {low}")
    count = int((hi - lo) / by) + 1
    if count > 10_000:
        raise UsageError(f"--parameter-scan: {count} values; 10000 at most")
    return tuple(str(lo + by * i) for i in range(count))


def _combinations(
    parameters: Sequence[tuple[str, tuple[str, ...]]],
) -> list[tuple[str, ...]]:
    return list(itertools.product(*[values for _, values in parameters]))


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub: argparse.ArgumentParser = action.choices[name]
            return sub
    raise LookupError(name)
