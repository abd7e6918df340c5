"""Holds MB megabytes (default 64) of touched memory for a moment, then exits 0."""

import sys
import time

megabytes = int(sys.argv[1]) if len(sys.argv) > 1 else 64
block = bytearray(megabytes * 1024 * 1024)
for i in range(0, len(block), 4096):
    block[i] = 1
time.sleep(0.2)
print(f"memory.py: held {megabytes} MB")
