"""The public surface is typed: mypy sees each policy keyword and each option string.

A user's misspelt keyword or unknown option string is caught by their type checker, before
it reaches the call (where it raises TypeError or ValueError, see test_supervisor.py).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

CALLER = '''
from datetime import timedelta
from fractions import Fraction

import numpy as np

from taskwarden import Job, Supervisor, Task


def work(x: int) -> int:
    return x


sup = Supervisor(workers=2, timeout=np.float64(5), retries=np.int64(2), retry_on=OSError)
task: Task[int] = sup.schedule(work, args=(1,), delay=Fraction(1, 2), timeout=None,
                               key="k", on_conflict="queue", debounce=0.1)
job: Job = sup.schedule(work, args=(1,), every=timedelta(seconds=1), overlap="replace",
                        anchor="end", max_runs=3)
nightly: Job = sup.schedule(work, args=(1,), cron="0 3 * * *", heartbeat=5, grace=1)
'''


def _mypy(tmp_path: Path, source: str) -> str:
    path = tmp_path / "caller.py"
    path.write_text(textwrap.dedent(source))
    out, err, _ = mypy_api.run([
        "--strict", "--no-incremental", "--cache-dir", str(tmp_path / ".cache"),
        "--ignore-missing-imports", str(path),
    ])
    return out + err


@pytest.mark.timeout(180)
def test_the_policy_keywords_and_options_type_check_as_documented(tmp_path: Path) -> None:
    wrong = CALLER + '''
sup.schedule(work, args=(1,), timout=3)
sup.schedule(work, args=(1,), key="k", on_conflict="newest")
sup.schedule(work, args=(1,), every=1, overlap="pile")
sup.schedule(work, args=(1,), every=1, anchor="middle")
sup.schedule(work, args=(1,), retries=1.5)
sup.schedule(work, args=(1,), delay=1, overlap="skip")
Supervisor(workers=2, bogus=1)
'''
    report = _mypy(tmp_path, wrong)
    errors = [line for line in report.splitlines() if ": error:" in line]
    lines = sorted({int(line.split(":")[1]) for line in errors})
    first_wrong = len(CALLER.splitlines()) + 2
    # Every line of the correct caller passes; each of the seven wrong calls is an error.
    assert lines == list(range(first_wrong, first_wrong + 7)), report
