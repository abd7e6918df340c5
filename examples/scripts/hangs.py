"""A benchmark script that hangs: `taskwarden run --timeout` kills it and its child."""

import subprocess
import sys

child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
child.wait()
