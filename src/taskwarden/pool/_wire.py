"""The framing both ends of a worker channel speak: a 4-byte length, then a pickle.

Both ends are ours, so the channel is a plain socket pair read in large
chunks: one read may carry many messages, which is what lets a busy
worker's results and a burst of dispatches travel without a system call
each.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

import cloudpickle

HEADER = struct.Struct("!I")
MAX_FRAME = 2**32 - 1

# Supervisor -> worker
RUN = 1  # (RUN, [(seq, payload, opts), ...])
SKIP = 2  # (SKIP, seq)
STOP = 3  # (STOP,)
# Worker -> supervisor
READY = 10  # (READY, pid)
DONE = 11  # (DONE, seq, ok, data, tb, type_name, message, progress)
SKIPPED = 12  # (SKIPPED, seq)
BEAT = 13  # (BEAT, seq, progress_data_or_None)
INIT_FAILED = 14  # (INIT_FAILED, tb)
RETIRING = 15  # (RETIRING, rss): over its memory limit, it exits before the next run

NO_PROGRESS = b""


def frame(msg: Any) -> bytes:
    body = pickle.dumps(msg, protocol=5)
    if len(body) > MAX_FRAME:
        raise ValueError("message too large for the worker channel (4 GiB)")
    return HEADER.pack(len(body)) + body


def dumps(obj: Any) -> bytes:
    """Pickle with the fast stdlib pickler, falling back to cloudpickle (lambdas, locals)."""
    try:
        return pickle.dumps(obj, protocol=5)
    except Exception:
        return cloudpickle.dumps(obj, protocol=5)  # type: ignore[no-any-return]


def split_frames(buf: bytearray) -> list[Any]:
    """Take every complete message off the front of ``buf``."""
    out: list[Any] = []
    pos = 0
    n = len(buf)
    size = HEADER.size
    while n - pos >= size:
        (length,) = HEADER.unpack_from(buf, pos)
        end = pos + size + length
        if end > n:
            break
        out.append(pickle.loads(memoryview(buf)[pos + size : end]))
        pos = end
    if pos:
        del buf[:pos]
    return out


def write_all(fd: int, data: bytes) -> None:
    """Blocking write of everything (the worker side)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
