"""Every script in examples/ runs to the end and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(path)], timeout=60, capture_output=True, text=True
    )
    if proc.returncode != 0:
        print("--- stdout ---", proc.stdout, "--- stderr ---", proc.stderr, sep="\n")
    assert proc.returncode == 0, f"{path.name} exited with {proc.returncode}"
