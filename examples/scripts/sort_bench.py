"""A tiny benchmark script for `taskwarden run`: sorts a shuffled list (size from argv)."""

import random
import sys
import time

size = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
data = list(range(size))
random.shuffle(data)
start = time.perf_counter()
data.sort()
print(f"sorted {size} items in {time.perf_counter() - start:.3f} s")
