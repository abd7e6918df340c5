"""Every script in examples/ runs to the end and exits 0."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))
# The Ray example starts a local Ray: on loopback only, its token in the environment
# (no ~/.ray/auth_token), every file of its own in a temporary folder.
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_ENABLE_AUTO_CONNECT": "0",
    "RAY_AUTH_MODE": "token",
    "RAY_USAGE_STATS_ENABLED": "0",
}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path: Path) -> None:
    env = dict(os.environ)
    ray_temp = None
    if path.name == "ray_cluster.py":
        pytest.importorskip("ray")
        ray_temp = tempfile.mkdtemp(prefix="tw-ray-")  # short: Ray puts sockets in it
        env.update(RAY_ENV, RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_TMPDIR=ray_temp)
    try:
        proc = subprocess.run(
            [sys.executable, str(path)], timeout=60, capture_output=True, text=True, env=env
        )
    finally:
        if ray_temp is not None:
            shutil.rmtree(ray_temp, ignore_errors=True)
    if proc.returncode != 0:
        print("--- stdout ---", proc.stdout, "--- stderr ---", proc.stderr, sep="\n")
    assert proc.returncode == 0, f"{path.name} exited with {proc.returncode}"
