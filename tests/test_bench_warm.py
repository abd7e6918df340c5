"""benchmarks/run.py's warm-up of the bytecode cache: its failure path (it must not wait
for a process it left behind, and it says why it failed)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

# Fails, and leaves behind a process that holds the warm-up's stdout and stderr for
# LINGER seconds (as a worker of a pool that did not close would).
_FAILING = """
import subprocess, sys
p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep({linger})"])
open("lingering.pid", "w").write(str(p.pid))
sys.exit("the warm-up failed here")  # {{peers}}
"""
LINGER = 30.0


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import run as run_module

    return run_module


def test_a_failed_warm_up_does_not_wait_for_what_it_left_and_says_why(
    run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(run, "_WARM", _FAILING.format(linger=LINGER))
    reaped: list[float] = []
    # (The runner is a subreaper that kills what is left; a test process is not.)
    monkeypatch.setattr(run, "reap_orphans", lambda grace=2.0: reaped.append(grace) or [])
    t0 = time.monotonic()
    try:
        error = run.warm_cache(str(tmp_path), ["taskwarden"])
        took = time.monotonic() - t0
        pid = int((tmp_path / "lingering.pid").read_text())
        # Returned while the process it left still runs (it holds the warm-up's output).
        assert psutil.pid_exists(pid), f"returned after {took:.1f} s"
        assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE, f"returned after {took:.1f} s"
    finally:
        with contextlib.suppress(Exception):
            os.kill(int((tmp_path / "lingering.pid").read_text()), 9)
    assert reaped  # and what it left is reaped by the runner
    assert error is not None and "the warm-up failed here" in error
    out = capsys.readouterr().out
    assert "the warm-up failed here" in out and "subprocess.Popen" not in out


def test_a_warm_up_that_succeeds_reports_no_error(
    run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(run, "_WARM", "import sys; print({peers!r}, file=sys.stderr)")
    monkeypatch.setattr(run, "reap_orphans", lambda grace=2.0: [])
    assert run.warm_cache(str(tmp_path), ["taskwarden", "ppe"]) is None
    assert run.warm_cache(str(tmp_path), ["no such pool"]) is None  # nothing to warm
