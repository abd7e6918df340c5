"""Hangs: writes DIR/<pid>.running (if DIR is given), then sleeps for ten minutes."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _pidfiles import announce

if len(sys.argv) > 1:
    announce(sys.argv[1], f"{os.getpid()}.running", str(os.getpid()))
print("hang.py: going to sleep", flush=True)
time.sleep(600)
