"""Starts N `sleep` processes at once, holds them 0.5 s, then ends them and exits 0."""

import subprocess
import sys
import time

count = int(sys.argv[1])
children = [subprocess.Popen(["sleep", "30"]) for _ in range(count)]
time.sleep(0.5)
for child in children:
    child.kill()
for child in children:
    child.wait()
