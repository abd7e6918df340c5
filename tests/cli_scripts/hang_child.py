"""Starts a child that hangs, writes DIR/<pid>.child (the child's pid), then hangs too."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _pidfiles import announce, start_sleeper

directory = sys.argv[1]
child = start_sleeper(directory)
announce(directory, f"{os.getpid()}.child", str(child.pid))
print(f"hang_child.py: started child {child.pid}", flush=True)
time.sleep(600)
