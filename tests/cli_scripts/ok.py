"""Succeeds: prints a greeting and its arguments, exits 0."""

import sys

print("hello from ok.py", *sys.argv[1:])
