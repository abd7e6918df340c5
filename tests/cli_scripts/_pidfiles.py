"""Helpers for the fixture scripts: announce pids through files in a directory."""

import os
import subprocess
import sys


def announce(directory: str, name: str, text: str) -> None:
    """Write ``text`` to ``directory/name`` atomically (a reader never sees half of it)."""
    tmp = os.path.join(directory, f".{name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(directory, name))


def start_sleeper(directory: str) -> subprocess.Popen[bytes]:
    """A child that sleeps for ten minutes; ``directory`` is on its command line so
    that a test can find it by that."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", directory],
        stdin=subprocess.DEVNULL,
    )
