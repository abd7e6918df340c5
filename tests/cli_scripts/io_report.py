"""Reports how it was started: writes DIR/<pid>.io (JSON) with the kind of its
stdout and stderr (pipe, file, null device...), PYTHONUNBUFFERED and TASKWARDEN_RUN."""

import json
import os
import stat
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _pidfiles import announce


def kind(fd: int) -> str:
    mode = os.fstat(fd).st_mode
    if stat.S_ISFIFO(mode):
        return "pipe"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISCHR(mode):
        return "null" if os.path.samestat(os.fstat(fd), os.stat(os.devnull)) else "tty"
    return "other"


report = {
    "stdout": kind(1),
    "stderr": kind(2),
    "unbuffered": os.environ.get("PYTHONUNBUFFERED"),
    "marker": os.environ.get("TASKWARDEN_RUN"),
    "executable": sys.executable,
}
announce(sys.argv[1], f"{os.getpid()}.io", json.dumps(report))
print("io_report.py: to stdout")
print("io_report.py: to stderr", file=sys.stderr)
