"""Busy but alive: prints a line every 0.1 s for SECONDS seconds (default 2.5)."""

import sys
import time

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.5
deadline = time.monotonic() + seconds
step = 0
while time.monotonic() < deadline:
    print(f"step {step}")
    step += 1
    time.sleep(0.1)
