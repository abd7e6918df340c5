"""Fails: prints a few lines to stderr, exits with status 3."""

import sys

for i in range(30):
    print(f"noise line {i}", file=sys.stderr)
print("fail.py: something went wrong", file=sys.stderr)
sys.exit(3)
