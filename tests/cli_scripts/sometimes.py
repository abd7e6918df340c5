"""Fails fast on its first two runs (counted through files in DIR), then takes 0.2 s."""

import os
import sys
import time

directory = sys.argv[1]
n = len([name for name in os.listdir(directory) if name.endswith(".run")])
with open(os.path.join(directory, f"{os.getpid()}.run"), "w"):
    pass
if n < 2:
    sys.exit(1)
time.sleep(0.2)
