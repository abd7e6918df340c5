"""Waits until N copies of itself run at once: writes DIR/<pid>.here, waits (up to
20 s) for N such files. Exits 0 if they all met, 1 if not (runs were not parallel)."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _pidfiles import announce

directory, count = sys.argv[1], int(sys.argv[2])
announce(directory, f"{os.getpid()}.here", "")
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    if sum(name.endswith(".here") for name in os.listdir(directory)) >= count:
        print("barrier.py: all here")
        sys.exit(0)
    time.sleep(0.01)
print("barrier.py: gave up waiting", file=sys.stderr)
sys.exit(1)
