"""A Supervisor that finds no Ray running starts one, and shuts it down at the end."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import psutil
import pytest

pytest.importorskip("ray")  # the Ray engine's tests need Ray: pip install 'taskwarden[ray]'
pytestmark = pytest.mark.timeout(120)

TESTS = str(Path(__file__).resolve().parent.parent)


def test_a_ray_started_by_the_supervisor_is_shut_down_with_it() -> None:
    temp = tempfile.mkdtemp(prefix="tw-ray-")  # short: Ray puts unix sockets in it
    os.mkdir(os.path.join(temp, "ray"))
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_ENABLE_AUTO_CONNECT": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TMPDIR": temp,
        "PYTHONPATH": os.pathsep.join([TESTS, *(p for p in sys.path if p)]),
    }
    script = textwrap.dedent("""
        import ray
        from taskwarden import Supervisor
        import _tasks as T

        with Supervisor(workers=1, engine="ray") as sup:
            assert ray.is_initialized()
            print(sup.submit(T.square, 12).result(timeout=60))
        assert not ray.is_initialized()
    """)
    try:
        proc = subprocess.run([sys.executable, "-c", script], env=env, timeout=100,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.split()[-1] == "144"
        # Nothing of that Ray is left (its processes name their session folder).
        left = []
        for p in psutil.process_iter(["cmdline"]):
            if any(temp in part for part in p.info["cmdline"] or ()):
                left.append(p)
        _, alive = psutil.wait_procs(left, timeout=10)
        assert not alive, [p.info["cmdline"][:2] for p in alive]
    finally:
        shutil.rmtree(temp, ignore_errors=True)
