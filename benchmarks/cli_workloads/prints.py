"""Print-heavy: 200,000 short lines to stdout (buffered, as Python does to a non-terminal)."""

import sys

count = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
for i in range(count):
    print("line", i)
