"""Burns CPU for SECONDS seconds (default 0.5) of its own time, then exits 0."""

import sys
import time

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5
start = time.process_time()
while time.process_time() - start < seconds:
    pass
