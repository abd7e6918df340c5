"""benchmarks/run.py's warm-up of the bytecode cache: its failure path (it must not wait
for a process it left behind, and it says why it failed). The harness runs in a child
interpreter: its modules (``_tasks``, ``_common``) are not the tests' own."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

# Fails, and leaves behind a process that holds the warm-up's stdout and stderr for
# LINGER seconds (as a worker of a pool that did not close would).
LINGER = 30.0
_FAILING = (
    "import subprocess, sys\n"
    f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep({LINGER})'])\n"
    "open('lingering.pid', 'w').write(str(p.pid))\n"
    "sys.exit('the warm-up failed here')  # {peers}\n"
)

# Runs ``warm_cache`` with the given program; prints its answer and whether the process
# it left (if any) still ran when it returned. (The runner is a subreaper that kills
# what a warm-up leaves; this child is not, and reaps nothing.)
_CALL = """
import json, os, sys, time
sys.path.insert(0, {benchmarks!r})
import psutil, run
run._WARM = {program!r}
run.reap_orphans = lambda grace=2.0: []
t0 = time.monotonic()
error = run.warm_cache({workdir!r}, {peers!r})
took = time.monotonic() - t0
alive = None
pid_file = os.path.join({workdir!r}, "lingering.pid")
if os.path.exists(pid_file):
    pid = int(open(pid_file).read())
    alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
print(json.dumps({{"error": error, "alive": alive, "took": took}}))
"""


def _warm(tmp_path: Path, program: str, peers: list[str]) -> tuple[dict[str, object], str]:
    code = _CALL.format(benchmarks=str(BENCHMARKS), program=program,
                        workdir=str(tmp_path), peers=peers)
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=3 * LINGER, check=True, cwd=tmp_path)
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((tmp_path / "lingering.pid").read_text()), 9)
    *said, answer = done.stdout.strip().splitlines()
    return json.loads(answer), "\n".join(said)


def test_a_failed_warm_up_does_not_wait_for_what_it_left_and_says_why(tmp_path: Path) -> None:
    answer, said = _warm(tmp_path, _FAILING, ["taskwarden"])
    # Returned while the process it left still ran (it holds the warm-up's output).
    assert answer["alive"] is True, answer
    assert isinstance(answer["error"], str) and "the warm-up failed here" in answer["error"]
    assert "the warm-up failed here" in said and "subprocess.Popen" not in said


def test_a_warm_up_that_succeeds_reports_no_error(tmp_path: Path) -> None:
    answer, said = _warm(tmp_path, "import sys; print({peers!r}, file=sys.stderr)",
                         ["taskwarden", "ppe"])
    assert answer["error"] is None and not said
    # Its output went to the run's folder, not to the runner's.
    assert (tmp_path / "warm-up.log").read_text().strip() == "['taskwarden', 'ppe']"
    answer, said = _warm(tmp_path, "raise SystemExit(3)", ["no such pool"])
    assert answer["error"] is None  # nothing to warm: no warm-up ran
