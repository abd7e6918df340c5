"""The ``taskwarden run`` command line.

Most tests run the real command (``python -m taskwarden run ...``) on the
small scripts in ``tests/cli_scripts/``. Scripts that must be caught in the
act announce themselves through files in a test's ``tmp_path`` (their pid,
their child's pid), so the tests wait on files, never on fixed sleeps, and
every wait is bounded. Every process a script starts has ``tmp_path`` on its
command line, which is how "nothing is left running" is checked.
"""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import taskwarden
from taskwarden._proctree import descendants as descendant_pids
from taskwarden._proctree import kill_trees as kill_tree
from taskwarden.cli import main
from taskwarden.cli._args import RunConfig, Target, UsageError, parse_args, script_interpreter
from taskwarden.cli._display import SIGMA, format_bytes, noise_warnings, run_line
from taskwarden.cli._records import (
    CANCELLED,
    COMPLETED,
    FAILED,
    TIMED_OUT,
    RunRecord,
    describe_exit,
    exit_code,
    summarize,
)
from taskwarden.cli._runner import RunResult, RunSpec, run_measured
from taskwarden.cli._stats import outliers, relative_speed, student_t_two_sided, welch
from taskwarden.cli._treewatch import _cpu_times as cpu_times

from _live import gone

SCRIPTS = Path(__file__).parent / "cli_scripts"
WAIT = 30.0  # upper bound of every wait; a healthy run takes a fraction of it

pytestmark = pytest.mark.timeout(120)


# --- helpers -----------------------------------------------------------------


def script(name: str) -> str:
    return str(SCRIPTS / name)


def taskwarden_run(
    *args: str, timeout: float = 90.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskwarden", "run", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def start_taskwarden_run(*args: str, new_session: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "taskwarden", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=new_session,
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(0.02)


def running_with(marker: str) -> list[psutil.Process]:
    """Live processes whose command line mentions ``marker``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(marker in part for part in cmdline) and not gone(proc.pid):
            found.append(proc)
    return found


def assert_nothing_left(marker: Path, *pids: int) -> None:
    # Processes killed a moment ago may take a little while to be reaped.
    wait_for(lambda: all(gone(pid) for pid in pids), f"pids {pids} to be gone", timeout=10)
    wait_for(lambda: not running_with(str(marker)), f"no process mentioning {marker}", 10)


def child_pids(directory: Path) -> list[int]:
    return [int(p.read_text()) for p in directory.glob("*.child")]


def load_json(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


# --- parsing -----------------------------------------------------------------



def interrupt_twice(cli: subprocess.Popen[str]) -> tuple[str, str]:
    """Two SIGINTs 5 ms apart (Ctrl-C under a runner that forwards it): the output."""
    cli.send_signal(signal.SIGINT)
    time.sleep(0.005)
    cli.send_signal(signal.SIGINT)
    return cli.communicate(timeout=WAIT)

def test_targets_keep_their_command_line_order() -> None:
    ok, fail = script("ok.py"), script("fail.py")
    config = parse_args(["run", ok, "-c", "echo one", fail, "-c", "echo two"])
    assert [(t.kind, t.text) for t in config.targets] == [
        ("script", ok),
        ("shell", "echo one"),
        ("script", fail),
        ("shell", "echo two"),
    ]


def test_arguments_after_double_dash_go_to_the_scripts() -> None:
    config = parse_args(["run", script("ok.py"), "--timeout", "5", "--", "-x", "--", "a.py"])
    assert config.args == ("-x", "--", "a.py")
    assert config.timeout == 5.0
    assert len(config.targets) == 1


def test_options_may_come_after_targets() -> None:
    config = parse_args(["run", script("ok.py"), "-j", "3", "--repeat=4", "--heartbeat", "2.5"])
    assert (config.jobs, config.repeat, config.heartbeat) == (3, 4, 2.5)


def test_a_shell_command_may_start_with_a_dash() -> None:
    config = parse_args(["run", "-c", "--version", "-c", "--"])
    assert [t.text for t in config.targets] == ["--version", "--"]
    assert config.args == ()


def test_defaults() -> None:
    config = parse_args(["run", script("ok.py")])
    assert isinstance(config, RunConfig)
    assert (config.timeout, config.heartbeat, config.jobs) == (None, None, 1)
    assert (config.repeat, config.min_runs, config.max_runs, config.warmup) == (None, 10, None, 0)
    assert (config.output, config.python, config.json_path) == ("null", None, None)


@pytest.mark.parametrize(
    "argv",
    [
        ["run"],
        ["run", "--", "x"],
        ["run", "no/such/script.py"],
        ["run", script("ok.py"), "--timeout", "0"],
        ["run", script("ok.py"), "--timeout", "-1"],
        ["run", script("ok.py"), "--heartbeat", "nan"],
        ["run", script("ok.py"), "--jobs", "0"],
        ["run", script("ok.py"), "--repeat", "two"],
        ["run", script("ok.py"), "--bogus"],
        ["run", script("ok.py"), "--repeat", "3", "--min-runs", "2"],
        ["run", script("ok.py"), "--min-runs", "5", "--max-runs", "2"],
        ["run", script("ok.py"), "--warmup", "-1"],
        ["run", script("ok.py"), "--parameter-scan", "n", "3", "1"],
        ["run", script("ok.py"), "--parameter-scan", "n", "1", "x"],
        ["run", script("ok.py"), "--parameter-scan", "n", "1", "3", "--step", "0"],
        ["run", script("ok.py"), "--step", "2"],
        ["run", script("ok.py"), "--parameter-list", "n", "a,,b"],
        ["run", script("ok.py"), "--parameter-list", "1n", "a"],
        ["run", script("ok.py"), "--python", "no-such-python-here"],
        ["run", script("ok.py"), "--plot", "out.txt"],
        ["run", script("ok.py"), "--export-json", "-", "--export-csv", "-"],
        ["run", "-c", "true", "--output", ""],
        ["compare", "only-one.json"],
        ["walk", script("ok.py")],
        [],
    ],
)
def test_a_bad_command_line_exits_2_with_a_message(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_help_exits_0_and_explains_heartbeat(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--heartbeat" in out and "silent" in out and "-- ARGS" in out


# --- one run, measured in-process (what a worker does) -------------------------


def spec_for(tmp_path: Path, *command: str, shell: bool = False, **fields: Any) -> RunSpec:
    options: dict[str, Any] = {
        "output": "file",
        "output_path": str(tmp_path / "run.out"),
        "watch": True,
        "env": {"PYTHONUNBUFFERED": "1"},
        "run_id": f"test-{uuid.uuid4().hex}",
    }
    options.update(fields)
    return RunSpec(
        command=command,
        shell=shell,
        cwd=str(tmp_path),
        stderr_path=str(tmp_path / "run.err"),
        stats_path=str(tmp_path / "run.stats"),
        **options,
    )


def run_python(
    tmp_path: Path, name: str, *args: str, beats: list[object] | None = None
) -> RunResult:
    beat = (beats if beats is not None else []).append
    return run_measured(spec_for(tmp_path, sys.executable, script(name), *args), beat)


def test_a_run_reports_its_exit_status_and_stderr_tail(tmp_path: Path) -> None:
    result = run_python(tmp_path, "fail.py")
    assert result["exit_status"] == 3
    assert len(result["stderr_tail"]) == 20
    assert result["stderr_tail"][-1] == "fail.py: something went wrong"
    assert "something went wrong" in (tmp_path / "run.err").read_text()


def test_a_run_heartbeats_with_its_last_output_line(tmp_path: Path) -> None:
    beats: list[object] = []
    result = run_python(tmp_path, "chatty.py", "0.5", beats=beats)
    assert result["exit_status"] == 0
    assert beats and all(isinstance(b, str) and b.startswith("step ") for b in beats)
    assert "step 0" in (tmp_path / "run.out").read_text()


def test_a_run_measures_the_cpu_time_of_its_process(tmp_path: Path) -> None:
    result = run_python(tmp_path, "spin.py", "0.3")
    assert 0.25 <= result["cpu"] <= result["wall"] + 0.5


def test_a_run_measures_the_peak_memory_of_its_tree(tmp_path: Path) -> None:
    result = run_python(tmp_path, "memory.py", "100")
    assert result["peak_rss"] >= 100 * 1024 * 1024
    assert json.loads((tmp_path / "run.stats").read_text())["peak_rss"] >= 100 * 1024 * 1024


def test_the_tree_listing_finds_grandchildren_parents_first(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, script("hang_child.py"), str(tmp_path)], stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: bool(child_pids(tmp_path)), "hang_child.py's child")
        (child,) = child_pids(tmp_path)
        # The child is the script's; it is a grandchild of this test.
        ours = descendant_pids(os.getpid())
        assert ours.index(proc.pid) < ours.index(child)
        assert descendant_pids(proc.pid) == [child]
    finally:
        kill_tree([psutil.Process(proc.pid)])
    assert_nothing_left(tmp_path, proc.pid, child)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/stat")
def test_cpu_times_read_a_process_whose_name_holds_spaces_and_parentheses(
    tmp_path: Path,
) -> None:
    odd = tmp_path / "a) (b c"
    odd.symlink_to(sys.executable)
    proc = subprocess.Popen([str(odd), "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert "(a) (b c)" in Path(f"/proc/{proc.pid}/stat").read_text()
        seconds = cpu_times(proc.pid, with_children=True)
        assert seconds is not None and 0.0 <= seconds < 60.0
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()
    assert cpu_times(proc.pid, with_children=False) is None  # reaped: gone


def test_a_shell_command_runs_through_the_shell(tmp_path: Path) -> None:
    result = run_measured(spec_for(tmp_path, "echo out; echo err >&2; exit 4", shell=True), print)
    assert result["exit_status"] == 4
    assert result["stderr_tail"] == ["err"]
    assert result["argv"] == ["/bin/sh", "-c", "echo out; echo err >&2; exit 4"]
    assert (tmp_path / "run.out").read_text() == "out\n"  # stdout to the --output file


def test_a_run_kills_what_its_script_leaves_behind(tmp_path: Path) -> None:
    result = run_python(tmp_path, "orphan.py", str(tmp_path))
    assert result["exit_status"] == 0
    (child,) = child_pids(tmp_path)
    assert [entry.split()[0] for entry in result["left_behind"]] == [str(child)]
    assert_nothing_left(tmp_path, child)


def test_a_run_interrupted_in_its_worker_kills_its_tree(tmp_path: Path) -> None:
    class Interrupted(Exception):
        pass

    def beat(progress: object) -> None:
        if child_pids(tmp_path):  # the script is up and its child started
            raise Interrupted

    spec = spec_for(tmp_path, sys.executable, script("hang_child.py"), str(tmp_path))
    with pytest.raises(Interrupted):
        run_measured(spec, beat)
    (child,) = child_pids(tmp_path)
    assert_nothing_left(tmp_path, child)


needs_pidfd = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="no pidfd here")


@needs_pidfd
def test_a_run_without_pipes_starts_no_thread_of_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No second thread may hold the GIL when the run ends: its end is timed at once.
    def no_thread(self: threading.Thread) -> None:
        raise AssertionError(f"a thread was started: {self.name}")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    spec = spec_for(
        tmp_path, sys.executable, script("memory.py"), "30", output="null", watch=False, env={}
    )
    result = run_measured(spec, print)
    assert result["exit_status"] == 0
    assert result["wall"] > 0 and result["cpu"] > 0
    assert result["peak_rss"] >= 30 * 1024 * 1024
    failed = run_measured(
        spec_for(tmp_path, sys.executable, script("fail.py"), output="null", watch=False), print
    )
    assert failed["exit_status"] == 3
    assert failed["stderr_tail"][-1] == "fail.py: something went wrong"


@needs_pidfd
def test_a_run_without_pipes_interrupted_in_its_worker_kills_its_tree(tmp_path: Path) -> None:
    class Interrupted(Exception):
        pass

    def interrupt_once_the_child_is_up(signum: int, frame: object) -> None:
        if child_pids(tmp_path):
            raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt_once_the_child_is_up)
    signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
    try:
        spec = spec_for(
            tmp_path, sys.executable, script("hang_child.py"), str(tmp_path),
            output="null", watch=False,
        )  # fmt: skip
        with pytest.raises(Interrupted):
            run_measured(spec, print)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    (child,) = child_pids(tmp_path)
    assert_nothing_left(tmp_path, child)


# --- records, summary, formatting -----------------------------------------------


def record(target: Target, repeat: int, state: str, **fields: Any) -> RunRecord:
    return RunRecord(target, repeat, state, **fields)


def test_statistics_cover_completed_runs_only_and_failures_are_counted_apart() -> None:
    a = Target("script", "a.py", 0)
    records = [
        record(a, 0, COMPLETED, exit_status=0, wall=1.0, cpu=0.5, peak_rss=100),
        record(a, 1, FAILED, exit_status=3, wall=0.01, cpu=0.7, peak_rss=300),
        record(a, 2, COMPLETED, exit_status=0, wall=2.0, cpu=0.6, peak_rss=200),
        record(a, 3, COMPLETED, exit_status=0, wall=3.0, cpu=0.7, peak_rss=200),
        record(a, 4, TIMED_OUT, wall=9.0, error="timed out"),
        record(a, 5, CANCELLED, error="interrupted"),
        record(a, 0, COMPLETED, exit_status=0, wall=50.0, warmup=True),
    ]
    (summary,) = summarize([a], records)
    assert summary.runs == 6  # the warmup is not one
    assert summary.states == {COMPLETED: 3, FAILED: 1, TIMED_OUT: 1, CANCELLED: 1}
    assert summary.wall is not None and summary.cpu is not None
    assert (summary.wall.low, summary.wall.median, summary.wall.high) == (1.0, 2.0, 3.0)
    assert (summary.wall.mean, summary.wall.stddev, summary.wall.count) == (2.0, 1.0, 3)
    assert summary.cpu.median == 0.6
    assert summary.peak_rss == 200
    assert summary.exit_statuses == {0: 3, 3: 1}
    assert [r.repeat for r in summary.failures] == [1, 4]


def test_the_same_script_twice_is_two_targets() -> None:
    first, second = Target("script", "a.py", 0), Target("script", "a.py", 1)
    records = [record(first, 0, COMPLETED, exit_status=0), record(second, 0, FAILED, exit_status=1)]
    assert [s.runs for s in summarize([first, second], records)] == [1, 1]


def test_exit_code_is_0_only_if_every_run_exited_0() -> None:
    a = Target("shell", "true", 0)
    ok = record(a, 0, COMPLETED, exit_status=0)
    assert exit_code([ok, ok], None) == 0
    assert exit_code([ok, record(a, 1, FAILED, exit_status=1)], None) == 1
    assert exit_code([ok, record(a, 1, TIMED_OUT)], None) == 1
    assert exit_code([ok], signal.SIGINT) == 130
    assert exit_code([], None) == 1


def test_exit_descriptions_name_signals() -> None:
    assert describe_exit(3) == "exit status 3"
    assert describe_exit(-9) == "killed by SIGKILL"


def test_sizes_are_human_readable() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * 1024 * 1024) == "3.0 MiB"
    assert format_bytes(None) == "-"


def test_a_finished_run_gets_one_line() -> None:
    a = Target("script", "a.py", 0)
    line = run_line(record(a, 1, FAILED, exit_status=3, wall=1.5, cpu=1.25, peak_rss=2048), 2, 10)
    assert line.startswith("[ 2/10] FAILED")
    assert "a.py #2" in line and "exit status 3" in line and "2.0 KiB" in line


# --- end to end: python -m taskwarden run ... -------------------------------------


def test_a_successful_script_exits_0_and_its_output_passes_through(tmp_path: Path) -> None:
    done = taskwarden_run("--repeat", "1", "--output", "inherit", script("ok.py"), "--", "a", "b")
    assert done.returncode == 0, done.stderr
    assert "hello from ok.py a b" in done.stdout
    assert "1 COMPLETED" in done.stdout


def test_a_failing_script_fails_the_command_and_shows_its_stderr(tmp_path: Path) -> None:
    done = taskwarden_run("-n", "1", script("fail.py"), "--json", str(tmp_path / "out.json"))
    assert done.returncode == 1
    assert "1 FAILED" in done.stdout
    assert "exit status 3" in done.stdout
    assert "    fail.py: something went wrong" in done.stdout  # the tail, in the report
    (run,) = load_json(tmp_path / "out.json")["runs"]
    assert (run["state"], run["exit_status"]) == (FAILED, 3)
    assert run["stderr_tail"][-1] == "fail.py: something went wrong"


def test_a_hung_script_is_killed_at_its_timeout_and_nothing_is_left(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    started = time.monotonic()
    cli = start_taskwarden_run(
        "--timeout", "1", "-n1", script("hang.py"), "--json", str(out), "--", str(tmp_path)
    )
    try:
        wait_for(lambda: any(tmp_path.glob("*.running")), "the run to start")
        # The supervisor's workers and helpers, and the script: all must be gone at exit.
        tree = [p.pid for p in psutil.Process(cli.pid).children(recursive=True)]
        stdout, _ = cli.communicate(timeout=WAIT)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    assert time.monotonic() - started < WAIT
    assert cli.returncode == 1
    assert "1 TIMED_OUT" in stdout
    (run,) = load_json(out)["runs"]
    assert run["state"] == TIMED_OUT
    assert run["exit_status"] is None
    assert "1" in run["error"]  # says after how long
    assert run["wall_seconds"] >= 0.9
    assert run["stderr_tail"] == []
    (pid_file,) = tmp_path.glob("*.running")
    assert int(pid_file.read_text()) in tree
    assert_nothing_left(tmp_path, *tree)


def test_a_timeout_kills_the_children_of_a_hung_script_too(tmp_path: Path) -> None:
    done = taskwarden_run("--timeout", "1", "-n1", script("hang_child.py"), "--", str(tmp_path))
    assert done.returncode == 1
    assert "1 TIMED_OUT" in done.stdout
    (child,) = child_pids(tmp_path)
    assert_nothing_left(tmp_path, child)


def test_a_silent_script_is_killed_by_heartbeat(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = taskwarden_run("--heartbeat", "1", "-n1", script("silent.py"), "--json", str(out))
    assert done.returncode == 1
    (run,) = load_json(out)["runs"]
    assert run["state"] == TIMED_OUT
    assert "heartbeat" in run["error"].lower()


def test_a_chatty_script_outlives_its_heartbeat(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = taskwarden_run(
        "--heartbeat", "1", "-n1", script("chatty.py"), "--json", str(out), "--", "2.5"
    )
    assert done.returncode == 0, done.stdout
    (run,) = load_json(out)["runs"]
    assert run["state"] == COMPLETED
    assert run["wall_seconds"] >= 2.5


def test_a_script_that_leaves_a_child_behind_completes_and_the_child_dies(tmp_path: Path) -> None:
    done = taskwarden_run("-n1", script("orphan.py"), "--", str(tmp_path))
    assert done.returncode == 0, done.stdout
    (child,) = child_pids(tmp_path)
    assert "1 process left behind, killed" in done.stdout
    assert_nothing_left(tmp_path, child)


def test_shell_commands_are_targets(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = taskwarden_run(
        "-n1", "--output", "inherit", "-c", "echo from the shell", "-c", "exit 4",
        "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 1
    assert "from the shell" in done.stdout
    runs = load_json(out)["runs"]
    assert [(r["kind"], r["target"], r["state"], r["exit_status"]) for r in runs] == [
        ("shell", "echo from the shell", COMPLETED, 0),
        ("shell", "exit 4", FAILED, 4),
    ]
    # A command without shell syntax runs directly (no shell start-up measured with it);
    # "exit" is the shell's own word.
    assert runs[0]["argv"][1:] == ["from", "the", "shell"]
    assert runs[0]["argv"][0].endswith("/echo")
    assert runs[1]["argv"] == ["/bin/sh", "-c", "exit 4"]


def test_the_json_report_lists_every_run(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = taskwarden_run(
        script("spin.py"), script("fail.py"), "--repeat", "2", "--json", str(out), "--", "0.2"
    )
    assert done.returncode == 1
    report = load_json(out)
    assert report["exit_status"] == 1 and report["interrupted"] is False
    settings = report["settings"]
    assert (settings["timeout"], settings["heartbeat"], settings["jobs"]) == (None, None, 1)
    assert (settings["repeat"], settings["args"], settings["output"]) == (2, ["0.2"], "null")
    assert report["env_changes"] == {}
    context = report["context"]
    assert context["taskwarden_version"] == taskwarden.__version__
    assert context["python_executable"] == sys.executable
    assert context["cpu_count"] == os.cpu_count() and context["host"]
    assert len(context["load_average_start"]) == 3 and context["cwd"] == os.getcwd()
    runs = report["runs"]
    assert sorted((r["target"], r["repeat"]) for r in runs) == [
        (script("fail.py"), 0),
        (script("fail.py"), 1),
        (script("spin.py"), 0),
        (script("spin.py"), 1),
    ]
    for run in runs:
        assert set(run) >= {
            "target",
            "kind",
            "repeat",
            "state",
            "exit_status",
            "wall_seconds",
            "cpu_seconds",
            "peak_memory_bytes",
            "stderr_tail",
            "error",
            "argv",
            "cwd",
            "left_behind",
        }
        assert run["wall_seconds"] > 0
        assert run["started_at"] <= run["finished_at"]
        assert run["argv"] == [sys.executable, run["target"], "0.2"]
        assert run["cwd"] == os.getcwd()
    spin = [r for r in runs if r["target"] == script("spin.py")]
    # (fail.py may end before the first memory sample; spin.py lives long enough)
    assert all(r["state"] == COMPLETED and r["cpu_seconds"] >= 0.15 for r in spin)
    assert all(r["peak_memory_bytes"] > 1024 * 1024 for r in spin)
    summary = {s["target"]: s for s in report["targets"]}
    assert summary[script("spin.py")]["states"] == {COMPLETED: 2}
    assert summary[script("fail.py")]["exit_statuses"] == {"3": 2}


def test_jobs_run_in_parallel_and_repeat_runs_each_target_again(tmp_path: Path) -> None:
    # Each barrier.py run waits until two runs are alive at once; serially it would give up.
    out = tmp_path / "out.json"
    done = taskwarden_run(
        "--jobs", "2", "--repeat", "2", script("barrier.py"), "--json", str(out),
        "--", str(tmp_path), "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    runs = load_json(out)["runs"]
    assert sorted(r["repeat"] for r in runs) == [0, 1]
    assert all(r["state"] == COMPLETED for r in runs)
    assert len(list(tmp_path.glob("*.here"))) == 2  # two fresh processes


def test_jobs_caps_how_many_runs_are_in_flight(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = taskwarden_run(
        "--jobs", "2", "--repeat", "4", script("chatty.py"), "--json", str(out), "--", "0.4"
    )  # fmt: skip
    assert done.returncode == 0
    runs = load_json(out)["runs"]
    edges = sorted([(r["started_at"], 1) for r in runs] + [(r["finished_at"], -1) for r in runs])
    in_flight, most = 0, 0
    for _, step in edges:
        in_flight += step
        most = max(most, in_flight)
    assert most == 2


def test_each_run_is_a_fresh_process(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = taskwarden_run("--repeat", "3", "--output=inherit", script("ok.py"), "--json", str(out))
    assert done.returncode == 0
    assert done.stdout.count("hello from ok.py") == 3


def test_sigint_stops_every_run_and_still_reports(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    cli = start_taskwarden_run(
        "--repeat", "3", script("hang_child.py"), "--json", str(out), "--", str(tmp_path)
    )
    try:
        wait_for(lambda: bool(child_pids(tmp_path)), "the first run to start its child")
        (child,) = child_pids(tmp_path)
        tree = [p.pid for p in psutil.Process(cli.pid).children(recursive=True)]
        cli.send_signal(signal.SIGINT)
        stdout, stderr = cli.communicate(timeout=WAIT)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    assert cli.returncode == 130, stdout + stderr
    assert "3 CANCELLED" in stdout
    report = load_json(out)
    assert report["interrupted"] is True and report["exit_status"] == 130
    states = [(r["repeat"], r["state"], r["started_at"] is not None) for r in report["runs"]]
    assert states == [(0, CANCELLED, True), (1, CANCELLED, False), (2, CANCELLED, False)]
    assert "SIGINT" in report["runs"][0]["error"]
    assert_nothing_left(tmp_path, child, *tree)


def test_ctrl_c_at_a_terminal_stops_everything(tmp_path: Path) -> None:
    # A terminal's Ctrl-C signals the whole foreground process group: the CLI, the
    # supervisor's workers and the scripts all get SIGINT at once.
    out = tmp_path / "out.json"
    cli = start_taskwarden_run(
        "--jobs", "2", "--repeat", "2", script("hang_child.py"), "--json", str(out),
        "--", str(tmp_path),
        new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: len(child_pids(tmp_path)) == 2, "both runs to start their child")
        children = child_pids(tmp_path)
        tree = [p.pid for p in psutil.Process(cli.pid).children(recursive=True)]
        os.killpg(cli.pid, signal.SIGINT)
        stdout, stderr = cli.communicate(timeout=WAIT)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.communicate()
    assert cli.returncode == 130, stdout + stderr
    report = load_json(out)
    assert [r["state"] for r in report["runs"]] == [CANCELLED, CANCELLED]
    assert_nothing_left(tmp_path, *children, *tree)


def test_sigterm_stops_everything_too(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    cli = start_taskwarden_run("-n1", script("hang.py"), "--json", str(out), "--", str(tmp_path))
    try:
        wait_for(lambda: any(tmp_path.glob("*.running")), "the run to start")
        cli.send_signal(signal.SIGTERM)
        cli.communicate(timeout=WAIT)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    assert cli.returncode == 128 + signal.SIGTERM
    assert load_json(out)["runs"][0]["state"] == CANCELLED
    assert_nothing_left(tmp_path)


def test_a_closed_stdout_still_gets_the_json_written(tmp_path: Path) -> None:
    # ``taskwarden run ... | head -1``: the reader is gone before the report.
    out = tmp_path / "out.json"
    cli = subprocess.Popen(
        [sys.executable, "-m", "taskwarden", "run", "-n1", script("chatty.py"),
         "--json", str(out), "--", "0.3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert cli.stdout is not None
    cli.stdout.close()
    _, stderr = cli.communicate(timeout=WAIT)
    assert cli.returncode == 0, stderr
    assert [r["state"] for r in load_json(out)["runs"]] == [COMPLETED]


def test_python_dash_m_taskwarden_without_a_command_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "taskwarden"], capture_output=True, text=True, timeout=WAIT
    )
    assert done.returncode == 2
    assert "usage:" in done.stderr


# --- exports: never replace a symlink or a special file ---------------------------


@pytest.mark.parametrize("option", ["--export-json", "--json"])
def test_an_export_writes_through_a_symlink_and_keeps_it(tmp_path: Path, option: str) -> None:
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    done = taskwarden_run("-n1", "-c", "true", option, str(link))
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert load_json(real)["runs"][0]["state"] == COMPLETED


def test_an_export_writes_through_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    try:
        done = taskwarden_run("-n1", "-c", "true", "--export-csv", str(fifo))
    finally:
        if reader.is_alive():  # the command never opened it: unblock the reader
            with open(fifo, "w"):
                pass
        reader.join()
    assert done.returncode == 0, done.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still a fifo, not replaced by a file
    assert received[0].startswith("label,kind,runs,completed,failed,mean,")


def test_an_export_to_dash_goes_to_stdout_and_the_table_to_stderr() -> None:
    done = taskwarden_run("-n2", "-c", "true", "--export-json", "-")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [r["state"] for r in report["runs"]] == [COMPLETED, COMPLETED]
    assert "2 COMPLETED" in done.stderr


def test_a_regular_file_export_is_replaced_and_keeps_its_mode(tmp_path: Path) -> None:
    out = tmp_path / "out.md"
    out.write_text("old")
    out.chmod(0o640)
    done = taskwarden_run(
        "-n2", "-c", "sleep 0.01", "-c", "sleep 0.05", "--export-markdown", str(out)
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert text.startswith(f"| target | runs | states | mean ± {SIGMA} |")
    assert "| -c sleep 0.01 | 2 | 2 COMPLETED |" in text
    assert "- `-c sleep 0.01` ran " in text and "times faster than `-c sleep 0.05`" in text
    assert not [p for p in tmp_path.iterdir() if p.name != "out.md"]  # no temporary left


# --- statistics over completed runs ----------------------------------------------


def test_fast_failures_do_not_pull_the_statistics_down(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = taskwarden_run("-n4", script("sometimes.py"), "--json", str(out), "--", str(tmp_path))
    assert done.returncode == 1
    (target,) = load_json(out)["targets"]
    assert target["states"] == {COMPLETED: 2, FAILED: 2}
    assert target["wall_seconds"]["min"] >= 0.2 and target["wall_seconds"]["median"] >= 0.2
    assert (target["completed"], target["failed"]) == (2, 2)
    assert "2 of 4 runs did not complete" in done.stdout


def test_relative_speed_is_the_ratio_of_means_with_propagated_uncertainty() -> None:
    (slow, fast) = relative_speed([(2.0, 0.2), (1.0, 0.05)])
    assert fast is not None and slow is not None
    assert (fast.ratio, fast.fastest) == (1.0, True)
    assert slow.ratio == 2.0 and not slow.fastest
    assert slow.stddev == pytest.approx(2.0 * ((0.2 / 2.0) ** 2 + (0.05 / 1.0) ** 2) ** 0.5)
    assert relative_speed([(0.0, None)]) == [None]


def test_outliers_are_found_by_modified_z_score() -> None:
    values = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 5.0]
    assert outliers(values) == [7]
    assert outliers([1.0, 1.0, 1.0]) == []


def test_welch_t_test_tells_noise_from_a_change() -> None:
    same = welch([1.0, 1.1, 0.9, 1.05, 0.95], [1.02, 0.98, 1.1, 0.92, 1.0])
    moved = welch([1.0, 1.1, 0.9, 1.05, 0.95], [1.5, 1.6, 1.4, 1.55, 1.45])
    assert same is not None and moved is not None
    assert not same.significant and moved.significant and moved.p < 0.001
    # Student t, two-sided: the textbook 5 % point for 10 degrees of freedom.
    assert student_t_two_sided(2.228, 10) == pytest.approx(0.05, abs=1e-3)


def test_warnings_name_outliers_a_slow_first_run_and_too_many_jobs() -> None:
    a, b = Target("script", "a.py", 0), Target("script", "b.py", 1)
    walls_a = [5.0] + [1.0 + i * 0.001 for i in range(9)]
    walls_b = [1.0 + i * 0.001 for i in range(9)] + [5.0]
    records = [record(a, i, COMPLETED, exit_status=0, wall=w) for i, w in enumerate(walls_a)]
    records += [record(b, i, COMPLETED, exit_status=0, wall=w) for i, w in enumerate(walls_b)]
    config = parse_args(["run", "-c", "true", "--jobs", str((os.cpu_count() or 1) + 1)])
    assert isinstance(config, RunConfig)
    warnings = noise_warnings(config, summarize([a, b], records), (0.0, 0.0, 0.0))
    assert any("--jobs" in w and "cores" in w for w in warnings)
    assert any(w.startswith("a.py: the first run was much slower") for w in warnings)
    assert any(w.startswith("b.py: 1 statistical outlier among 10 runs") for w in warnings)
    busy = noise_warnings(config, [], (float(os.cpu_count() or 1) * 2, 0.0, 0.0))
    assert any("busy" in w for w in busy)


def test_targets_are_compared_fastest_first(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = taskwarden_run(
        "-n3", "-c", "sleep 0.2", "-c", "sleep 0.05", "--json", str(out)
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "`-c sleep 0.05` ran" in done.stdout
    assert "times faster than `-c sleep 0.2`" in done.stdout
    slow, fast = load_json(out)["targets"]
    assert fast["relative"]["fastest"] is True and fast["relative"]["ratio"] == 1.0
    assert 2.5 < slow["relative"]["ratio"] < 4.5 and slow["relative"]["stddev"] > 0
    assert f"mean ± {SIGMA}" in done.stdout and " ms ± " in done.stdout


# --- what a run sees: output, environment, interpreter ------------------------------


def io_report(directory: Path) -> dict[str, Any]:
    (path,) = directory.glob("*.io")
    report: dict[str, Any] = json.loads(path.read_text())
    return report


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ((), {"stdout": "null", "stderr": "file", "unbuffered": None}),
        (("--output", "pipe"), {"stdout": "pipe", "stderr": "pipe", "unbuffered": None}),
        (("--output", "{tmp}/out.txt"), {"stdout": "file", "stderr": "file", "unbuffered": None}),
        (("--heartbeat", "30"), {"stdout": "pipe", "stderr": "pipe", "unbuffered": "1"}),
    ],
)
def test_a_run_is_not_changed_unless_asked(
    tmp_path: Path, options: tuple[str, ...], expected: dict[str, Any]
) -> None:
    args = [o.replace("{tmp}", str(tmp_path)) for o in options]
    out = tmp_path / "out.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = taskwarden_run(
        "-n1", *args, script("io_report.py"), "--json", str(out), "--", str(tmp_path), env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = io_report(tmp_path)
    assert {k: report[k] for k in expected} == expected
    assert report["marker"]  # the one variable always added: it marks the run's processes
    assert "io_report.py: to stdout" not in done.stdout  # not shown unless inherit
    assert load_json(out)["env_changes"] == (
        {"PYTHONUNBUFFERED": "1"} if "--heartbeat" in options else {}
    )
    if "{tmp}/out.txt" in options:
        assert (tmp_path / "out.txt").read_text() == "io_report.py: to stdout\n"


def test_output_inherit_passes_the_runs_output_through(tmp_path: Path) -> None:
    done = taskwarden_run("-n1", "--output", "inherit", script("io_report.py"), "--", str(tmp_path))
    assert done.returncode == 0
    assert "io_report.py: to stdout" in done.stdout and "io_report.py: to stderr" in done.stderr
    assert io_report(tmp_path)["stdout"] == "pipe"  # the test's own pipe, not one of ours


def test_python_names_the_interpreter_of_scripts(tmp_path: Path) -> None:
    wrapper = tmp_path / "wrapped-python"
    wrapper.write_text(f'#!/bin/sh\ntouch "{tmp_path}/wrapped"\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    out = tmp_path / "out.json"
    done = taskwarden_run(
        "-n1", "--python", str(wrapper), script("ok.py"), "--json", str(out), "--", "x"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "wrapped").exists()
    (run,) = load_json(out)["runs"]
    assert run["argv"] == [str(wrapper), script("ok.py"), "x"]
    (target,) = load_json(out)["targets"]
    assert (target["interpreter"], target["interpreter_source"]) == ([str(wrapper)], "--python")
    assert f"scripts ran under {wrapper} (--python)" in done.stdout


def test_the_report_names_the_interpreter_and_the_argv_of_each_run(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = taskwarden_run("-n1", script("ok.py"), "--json", str(out), "--", "x")
    assert done.returncode == 0, done.stdout + done.stderr
    (run,) = load_json(out)["runs"]
    assert run["argv"] == [sys.executable, script("ok.py"), "x"]
    assert run["cwd"] == os.getcwd()
    assert f"scripts ran under {sys.executable} (taskwarden's own)" in done.stdout


def test_a_shebang_is_honoured_unless_it_asks_for_just_a_python(tmp_path: Path) -> None:
    shell_script = tmp_path / "job.sh"
    shell_script.write_text("#!/bin/sh\nexit 0\n")
    generic = tmp_path / "generic.py"
    generic.write_text("#!/usr/bin/env python3\n")
    specific = tmp_path / "specific.py"
    specific.write_text("#!/usr/bin/env sh -e\n")
    plain = tmp_path / "plain.py"
    plain.write_text("print(1)\n")
    assert script_interpreter(str(shell_script), None) == (("/bin/sh",), "shebang")
    own = ((sys.executable,), "taskwarden's own")
    assert script_interpreter(str(generic), None) == own
    assert script_interpreter(str(plain), None) == own
    found = script_interpreter(str(specific), None)
    assert found[0][0].endswith("/sh") and found[0][1:] == ("-e",) and found[1] == "shebang"
    assert script_interpreter(str(shell_script), "/opt/py") == (("/opt/py",), "--python")
    missing = tmp_path / "missing.py"
    missing.write_text("#!/usr/bin/env no-such-interpreter-here\n")
    with pytest.raises(UsageError, match="no-such-interpreter-here"):
        script_interpreter(str(missing), None)


# --- what a run leaves behind --------------------------------------------------------


@pytest.mark.parametrize("piped_by", [("--output", "pipe"), ("--heartbeat", "30")])
def test_a_child_holding_the_pipe_costs_no_wait_and_is_killed(
    tmp_path: Path, piped_by: tuple[str, str]
) -> None:
    # The script exits at once; a child in a new session keeps its stdout open.
    out = tmp_path / "out.json"
    started = time.monotonic()
    done = taskwarden_run(
        "-n3", *piped_by, script("escape.py"), "--json", str(out), "--", str(tmp_path), "setsid"
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    runs = load_json(out)["runs"]
    assert all(r["wall_seconds"] < 2.0 for r in runs)
    assert elapsed < 10.0  # it took 3 x 5 s more before
    assert [len(r["left_behind"]) for r in runs] == [1, 1, 1]
    children = child_pids(tmp_path)
    assert len(children) == 3
    assert sorted(int(r["left_behind"][0].split()[0]) for r in runs) == sorted(children)
    assert "3 processes left behind, killed" in done.stdout
    assert_nothing_left(tmp_path, *children)


def test_a_double_forked_orphan_is_found_and_killed(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = taskwarden_run(
        "-n1", script("escape.py"), "--json", str(out), "--", str(tmp_path), "double"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (child,) = child_pids(tmp_path)
    assert_nothing_left(tmp_path, child)
    (run,) = load_json(out)["runs"]
    assert [int(entry.split()[0]) for entry in run["left_behind"]] == [child]
    assert "1 process left behind, killed" in done.stdout


def test_an_orphan_of_a_timed_out_run_is_killed_too(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = taskwarden_run(
        "-n1", "--timeout", "1", script("escape.py"), "--json", str(out),
        "--", str(tmp_path), "double", "hang",
    )  # fmt: skip
    assert done.returncode == 1
    (child,) = child_pids(tmp_path)
    (run,) = load_json(out)["runs"]
    assert run["state"] == TIMED_OUT
    assert_nothing_left(tmp_path, child)


def test_peak_memory_counts_shared_pages_once(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = taskwarden_run("-n1", script("many_sleeps.py"), "--json", str(out), "--", "40")
    assert done.returncode == 0, done.stdout + done.stderr
    (run,) = load_json(out)["runs"]
    # 40 sleeps have ~70 MiB of RSS between them, almost all shared libc pages.
    assert 5 * 2**20 < run["peak_memory_bytes"] < 40 * 2**20


# --- signals --------------------------------------------------------------------------


def test_two_signals_a_few_ms_apart_lose_no_result(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    cli = start_taskwarden_run(
        "-n1", script("ok.py"), script("hang.py"), "--json", str(out), "--", str(tmp_path)
    )
    try:
        wait_for(lambda: any(tmp_path.glob("*.running")), "hang.py to start (ok.py has ended)")
        stdout, stderr = interrupt_twice(cli)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    assert cli.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    assert "taskwarden run" in stdout and "1 COMPLETED" in stdout
    runs = load_json(out)["runs"]
    assert (runs[0]["target"], runs[0]["state"]) == (script("ok.py"), COMPLETED)
    assert_nothing_left(tmp_path)


def test_the_journal_has_each_run_as_it_ends_and_survives_an_interrupt(tmp_path: Path) -> None:
    journal = tmp_path / "runs.jsonl"
    cli = start_taskwarden_run(
        "-n2", script("ok.py"), script("hang.py"), "--export-jsonl", str(journal),
        "--", str(tmp_path),
    )  # fmt: skip
    try:
        wait_for(lambda: any(tmp_path.glob("*.running")), "hang.py to start")
        first = json.loads(journal.read_text().splitlines()[0])  # written as the run ended
        assert (first["target"], first["state"]) == (script("ok.py"), COMPLETED)
        stdout, stderr = interrupt_twice(cli)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    assert cli.returncode == 130, stdout + stderr
    assert [json.loads(line)["state"] for line in journal.read_text().splitlines()][:2] == [
        COMPLETED,
        CANCELLED,
    ]
    assert_nothing_left(tmp_path)


# --- runs: warmup, prepare, setup and cleanup, counts, parameters ----------------------


def test_warmup_runs_come_first_and_are_not_counted(tmp_path: Path) -> None:
    out, log = tmp_path / "out.json", tmp_path / "prepared"
    done = taskwarden_run(
        "--warmup", "2", "-n3", "--prepare", f"echo x >> {log}", "-c", "true", "--json", str(out)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = load_json(out)
    assert [r["warmup"] for r in report["runs"]] == [True, True, False, False, False]
    assert report["targets"][0]["runs"] == 3
    assert log.read_text() == "x\n" * 5  # --prepare before every run, warmups included


def test_a_failing_prepare_fails_the_run_untimed(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = taskwarden_run("-n1", "--prepare", "exit 7", "-c", "true", "--json", str(out))
    assert done.returncode == 1
    (run,) = load_json(out)["runs"]
    assert run["state"] == FAILED and "--prepare" in run["error"] and "7" in run["error"]
    assert run["wall_seconds"] is None


def test_setup_and_cleanup_wrap_each_target_with_parameters(tmp_path: Path) -> None:
    log = tmp_path / "log"
    done = taskwarden_run(
        "-n2", "--jobs", "2", "--parameter-list", "v", "a,b",
        "--setup", f"echo setup {{v}} >> {log}", "--cleanup", f"echo cleanup {{v}} >> {log}",
        "-c", f"echo run {{v}} >> {log}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = log.read_text().splitlines()
    assert lines == ["setup a", "run a", "run a", "cleanup a",
                     "setup b", "run b", "run b", "cleanup b"]  # fmt: skip


def test_a_failing_setup_skips_its_target_and_fails_the_command(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = taskwarden_run("-n1", "--setup", "exit 5", "-c", "true", "--json", str(out))
    assert done.returncode == 1
    assert load_json(out)["runs"] == []
    assert "--setup" in done.stdout and "exit status 5" in done.stdout


def test_the_run_count_adapts_between_min_and_max_runs(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = taskwarden_run(
        "--min-runs", "2", "--max-runs", "6", "-c", "sleep 0.01", "-c", "sleep 0.9",
        "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = load_json(out)
    fast, slow = report["targets"]
    assert fast["runs"] == 6  # 3 s / 10 ms asks for 300: capped by --max-runs
    # About 3 s of runs, from the first run's time (3 or 4 for 0.9 s, by the machine's load).
    first = next(r for r in report["runs"] if r["target"] == "sleep 0.9" and r["repeat"] == 0)
    assert slow["runs"] == min(6, max(2, math.ceil(3.0 / first["wall_seconds"])))
    assert 2 <= slow["runs"] < 6


def test_a_parameter_scan_makes_a_target_per_value() -> None:
    config = parse_args(["run", "-P", "t", "0.1", "0.3", "--step", "0.1", "-c", "sleep {t}"])
    assert isinstance(config, RunConfig)
    assert [t.text for t in config.targets] == ["sleep 0.1", "sleep 0.2", "sleep 0.3"]
    assert [t.params for t in config.targets] == [(("t", "0.1"),), (("t", "0.2"),), (("t", "0.3"),)]
    config = parse_args(
        ["run", "--parameter-scan", "n", "1", "2", "--parameter-list", "x", "a,b",
         script("ok.py"), "--", "{n}", "{x}"]
    )  # fmt: skip
    assert isinstance(config, RunConfig)
    assert [t.args for t in config.targets] == [("1", "a"), ("1", "b"), ("2", "a"), ("2", "b")]
    assert config.targets[1].label == f"{script('ok.py')} (n=1, x=b)"


def test_parameters_are_substituted_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = taskwarden_run(
        "-n1", "--parameter-scan", "code", "0", "2", "-c", "exit {code}",
        "--export-csv", str(tmp_path / "out.csv"), "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 1
    targets = load_json(out)["targets"]
    assert [(t["label"], t["parameters"], t["exit_statuses"]) for t in targets] == [
        ("-c exit 0", {"code": "0"}, {"0": 1}),
        ("-c exit 1", {"code": "1"}, {"1": 1}),
        ("-c exit 2", {"code": "2"}, {"2": 1}),
    ]
    header, *rows = (tmp_path / "out.csv").read_text().splitlines()
    assert header.endswith(",parameter_code")
    assert [r.split(",")[-1] for r in rows] == ["0", "1", "2"]


# --- compare, plot, version --------------------------------------------------------------


def fake_report(path: Path, walls: dict[str, list[float]]) -> None:
    runs = [
        {"label": label, "target": label, "kind": "script", "state": COMPLETED,
         "exit_status": 0, "wall_seconds": wall, "warmup": False}
        for label, values in walls.items()
        for wall in values
    ]  # fmt: skip
    path.write_text(json.dumps({"format": 2, "targets": [], "runs": runs}))


def test_compare_reports_significant_changes_only_as_such(tmp_path: Path) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    base = [1.0, 1.02, 0.98, 1.01, 0.99]
    fake_report(old, {"a.py": base, "b.py": base, "gone.py": base})
    fake_report(new, {"a.py": [v * 1.5 for v in base], "b.py": [1.01, 0.99, 1.0, 1.02, 0.98]})
    done = subprocess.run(
        [sys.executable, "-m", "taskwarden", "compare", str(old), str(new)],
        capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (a_line,) = [line for line in done.stdout.splitlines() if "a.py" in line]
    (b_line,) = [line for line in done.stdout.splitlines() if " b.py" in line]
    assert "1.50x slower, significant" in a_line
    assert "not significant" in b_line
    assert f"only in {old}: gone.py" in done.stdout


def test_compare_reads_real_reports(tmp_path: Path) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    for path in (old, new):
        assert taskwarden_run("-n3", "-c", "sleep 0.02", "--json", str(path)).returncode == 0
    done = subprocess.run(
        [sys.executable, "-m", "taskwarden", "compare", str(old), str(new)],
        capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "-c sleep 0.02" in done.stdout and "(p = " in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "taskwarden", "compare", str(old), str(tmp_path / "none.json")],
        capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert bad.returncode == 2 and "none.json" in bad.stdout


def test_plot_without_matplotlib_is_a_clear_error_before_any_run(tmp_path: Path) -> None:
    shim = tmp_path / "shim" / "matplotlib"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    done = subprocess.run(
        [sys.executable, "-m", "taskwarden", "run", "-c", f"touch {tmp_path}/ran",
         "--plot", str(tmp_path / "out.svg")],
        capture_output=True, text=True, timeout=WAIT,
        env={**os.environ, "PYTHONPATH": str(shim.parent)},
    )  # fmt: skip
    assert done.returncode == 2
    assert "pip install 'taskwarden[plot]'" in done.stderr
    assert not (tmp_path / "ran").exists()


def test_plot_writes_a_whisker_plot_and_histogram(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    svg = tmp_path / "out.svg"
    done = taskwarden_run("-n3", "-c", "sleep 0.01", "-c", "sleep 0.03", "--plot", str(svg))
    assert done.returncode == 0, done.stderr
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "distribution" in text


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "taskwarden", "--version"],
        capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert done.returncode == 0
    assert done.stdout.strip() == f"taskwarden {taskwarden.__version__}"
