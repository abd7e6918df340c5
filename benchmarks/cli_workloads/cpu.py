"""A fixed amount of CPU work (about 0.3 s on a 2020s core): the same for every tool."""

import sys

count = int(sys.argv[1]) if len(sys.argv) > 1 else 2_500_000
total = 0
for i in range(count):
    total += i * i
