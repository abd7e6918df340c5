"""Leaves a sleeper that has escaped its tree, then exits at once (or hangs).

    escape.py DIR setsid [hang]   a child in a new session (it holds our stdout/stderr)
    escape.py DIR double [hang]   fork, setsid, fork again: the grandchild is an orphan

The sleeper writes DIR/<pid>.child itself (its pid) and has DIR on its command
line; this script waits until it has, then exits 0 (or, with "hang", sleeps).
"""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _pidfiles import announce

directory, mode = sys.argv[1], sys.argv[2]
hang = len(sys.argv) > 3
sleeper = [
    sys.executable,
    "-c",
    "import os, sys, time; sys.path.insert(0, sys.argv[2]); from _pidfiles import announce; "
    "announce(sys.argv[1], f'{os.getpid()}.child', str(os.getpid())); time.sleep(600)",
    directory,
    os.path.dirname(os.path.abspath(__file__)),
]
before = set(os.listdir(directory))
if mode == "setsid":
    subprocess.Popen(sleeper, start_new_session=True)  # inherits stdout and stderr
else:
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, sleeper)
        os._exit(0)
    os.waitpid(pid, 0)
deadline = time.monotonic() + 20
while not any(n.endswith(".child") for n in set(os.listdir(directory)) - before):
    if time.monotonic() > deadline:
        sys.exit("escape.py: the sleeper never announced itself")
    time.sleep(0.005)
announce(directory, f"{os.getpid()}.escaped", "")
if hang:
    time.sleep(600)
