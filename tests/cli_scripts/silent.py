"""Says one thing, then falls silent for ten minutes (a hung run for --heartbeat)."""

import time

print("silent.py: about to go quiet", flush=True)
time.sleep(600)
