"""The same task as sort_bench.py done with heapq (size from argv): slower, for comparing."""

import heapq
import random
import sys
import time

size = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
data = list(range(size))
random.shuffle(data)
start = time.perf_counter()
heapq.heapify(data)
ordered = [heapq.heappop(data) for _ in range(size)]
print(f"heap-sorted {size} items in {time.perf_counter() - start:.3f} s")
