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
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from taskwarden.cli import main
from taskwarden.cli._args import Target, parse_args
from taskwarden.cli._display import format_bytes, run_line
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

from test_supervisor import gone

SCRIPTS = Path(__file__).parent / "cli_scripts"
WAIT = 30.0  # upper bound of every wait; a healthy run takes a fraction of it

pytestmark = pytest.mark.timeout(120)


# --- helpers -----------------------------------------------------------------


def script(name: str) -> str:
    return str(SCRIPTS / name)


def taskwarden_run(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskwarden", "run", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
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
    assert (config.timeout, config.heartbeat, config.jobs, config.repeat) == (None, None, 1, 1)
    assert config.json_path is None


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


def spec_for(tmp_path: Path, *command: str, shell: bool = False) -> RunSpec:
    return RunSpec(
        command=command,
        shell=shell,
        cwd=str(tmp_path),
        stderr_path=str(tmp_path / "run.err"),
        stats_path=str(tmp_path / "run.stats"),
        capture_path=str(tmp_path / "run.out"),
        env={"PYTHONUNBUFFERED": "1"},
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


def test_a_shell_command_runs_through_the_shell(tmp_path: Path) -> None:
    result = run_measured(spec_for(tmp_path, "echo out; echo err >&2; exit 4", shell=True), print)
    assert result["exit_status"] == 4
    assert result["stderr_tail"] == ["err"]
    # Two pipes: their relative order is up to the thread scheduler.
    assert sorted((tmp_path / "run.out").read_text().splitlines()) == ["err", "out"]


def test_a_run_kills_what_its_script_leaves_behind(tmp_path: Path) -> None:
    result = run_python(tmp_path, "orphan.py", str(tmp_path))
    assert result["exit_status"] == 0
    (child,) = child_pids(tmp_path)
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


# --- records, summary, formatting -----------------------------------------------


def record(target: Target, repeat: int, state: str, **fields: Any) -> RunRecord:
    return RunRecord(target, repeat, state, **fields)


def test_the_summary_counts_states_and_spreads_exited_runs_only() -> None:
    a = Target("script", "a.py", 0)
    records = [
        record(a, 0, COMPLETED, exit_status=0, wall=1.0, cpu=0.5, peak_rss=100),
        record(a, 1, FAILED, exit_status=3, wall=3.0, cpu=0.7, peak_rss=300),
        record(a, 2, COMPLETED, exit_status=0, wall=2.0, cpu=0.6, peak_rss=200),
        record(a, 3, TIMED_OUT, wall=9.0, error="timed out"),
        record(a, 4, CANCELLED, error="interrupted"),
    ]
    (summary,) = summarize([a], records)
    assert summary.runs == 5
    assert summary.states == {COMPLETED: 2, FAILED: 1, TIMED_OUT: 1, CANCELLED: 1}
    assert summary.wall is not None and summary.cpu is not None
    assert (summary.wall.low, summary.wall.median, summary.wall.high) == (1.0, 2.0, 3.0)
    assert summary.cpu.median == 0.6
    assert summary.peak_rss == 300
    assert summary.exit_statuses == {0: 2, 3: 1}
    assert [r.repeat for r in summary.failures] == [1, 3]


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
    done = taskwarden_run(script("ok.py"), "--", "a", "b")
    assert done.returncode == 0, done.stderr
    assert "hello from ok.py a b" in done.stdout
    assert "1 COMPLETED" in done.stdout


def test_a_failing_script_fails_the_command_and_shows_its_stderr(tmp_path: Path) -> None:
    done = taskwarden_run(script("fail.py"), "--json", str(tmp_path / "out.json"))
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
        "--timeout", "1", script("hang.py"), "--json", str(out), "--", str(tmp_path)
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
    done = taskwarden_run("--timeout", "1", script("hang_child.py"), "--", str(tmp_path))
    assert done.returncode == 1
    assert "1 TIMED_OUT" in done.stdout
    (child,) = child_pids(tmp_path)
    assert_nothing_left(tmp_path, child)


def test_a_silent_script_is_killed_by_heartbeat(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = taskwarden_run("--heartbeat", "1", script("silent.py"), "--json", str(out))
    assert done.returncode == 1
    (run,) = load_json(out)["runs"]
    assert run["state"] == TIMED_OUT
    assert "heartbeat" in run["error"].lower()


def test_a_chatty_script_outlives_its_heartbeat(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = taskwarden_run("--heartbeat", "1", script("chatty.py"), "--json", str(out), "--", "2.5")
    assert done.returncode == 0, done.stdout
    (run,) = load_json(out)["runs"]
    assert run["state"] == COMPLETED
    assert run["wall_seconds"] >= 2.5


def test_a_script_that_leaves_a_child_behind_completes_and_the_child_dies(tmp_path: Path) -> None:
    done = taskwarden_run(script("orphan.py"), "--", str(tmp_path))
    assert done.returncode == 0, done.stdout
    (child,) = child_pids(tmp_path)
    assert_nothing_left(tmp_path, child)


def test_shell_commands_are_targets(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = taskwarden_run("-c", "echo from the shell", "-c", "exit 4", "--json", str(out))
    assert done.returncode == 1
    assert "from the shell" in done.stdout
    runs = load_json(out)["runs"]
    assert [(r["kind"], r["target"], r["state"], r["exit_status"]) for r in runs] == [
        ("shell", "echo from the shell", COMPLETED, 0),
        ("shell", "exit 4", FAILED, 4),
    ]


def test_the_json_report_lists_every_run(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = taskwarden_run(
        script("spin.py"), script("fail.py"), "--repeat", "2", "--json", str(out), "--", "0.2"
    )
    assert done.returncode == 1
    report = load_json(out)
    assert report["exit_status"] == 1 and report["interrupted"] is False
    assert report["settings"] == {
        "timeout": None,
        "heartbeat": None,
        "jobs": 1,
        "repeat": 2,
        "args": ["0.2"],
    }
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
            "peak_rss_bytes",
            "stderr_tail",
            "error",
        }
        assert run["wall_seconds"] > 0
        assert run["started_at"] <= run["finished_at"]
    spin = [r for r in runs if r["target"] == script("spin.py")]
    # (fail.py may end before the first memory sample; spin.py lives long enough)
    assert all(r["state"] == COMPLETED and r["cpu_seconds"] >= 0.15 for r in spin)
    assert all(r["peak_rss_bytes"] > 1024 * 1024 for r in spin)
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
    done = taskwarden_run("--repeat", "3", script("ok.py"), "--json", str(out))
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
    cli = start_taskwarden_run(script("hang.py"), "--json", str(out), "--", str(tmp_path))
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
        [sys.executable, "-m", "taskwarden", "run", script("chatty.py"), "--json", str(out),
         "--", "0.3"],
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
