"""The worker process of a slot on Ray: started by its agent, it runs the worker loop.

``python -m taskwarden.pool._ray_child`` imports the worker loop, then waits
for its boot data on stdin (a pickle its own parent, the agent, writes when
it needs a worker: the agent starts the next one ahead of time), dies with
that parent, opens its data connection to the supervisor and runs
``worker_main`` over it. An agent that goes away first closes the pipe: the
process exits without a word.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys

from . import _ray_link as L
from ._worker import worker_main

_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """SIGKILL this process when its parent (the agent) dies, whatever it is doing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent:
        os._exit(1)  # the agent died before the line above: nobody wants this worker


def main() -> None:
    data = sys.stdin.buffer.read()
    if not data:
        return  # the agent went away (or stopped) before it needed this process
    where, secret, wid, agent_pid, boot = pickle.loads(data)
    _die_with(agent_pid)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the task's stdin: as in a local worker, nothing to read
    os.close(devnull)
    id_base, init_payload, max_memory = pickle.loads(boot)
    sock = L.connect(L.Where(*where), secret, L.ROLE_DATA, wid)
    worker_main(sock, id_base, init_payload, max_memory)


if __name__ == "__main__":
    main()
