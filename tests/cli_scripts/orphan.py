"""Leaves a sleeping child behind and exits 0 at once; writes DIR/<pid>.child first."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _pidfiles import announce, start_sleeper

directory = sys.argv[1]
child = start_sleeper(directory)
announce(directory, f"{os.getpid()}.child", str(child.pid))
time.sleep(0.3)  # long enough for the run's tree sampler to see the child
print("orphan.py: leaving my child behind")
