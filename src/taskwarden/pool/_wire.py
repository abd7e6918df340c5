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
MAX_FRAME = 2**32 - 1  # read at each use, so that tests can lower it
# Room a run's frame needs beyond its payload (seq, options, the list around it).
FRAME_SLACK = 1024
_MAGIC = b"\x80\x05"  # every body is a protocol-5 pickle: anything else is garbage

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


class FrameTooLarge(ValueError):
    """A message does not fit in one frame of the channel."""


class ProtocolError(ValueError):
    """What came off a channel is not a well-formed message: the peer is broken.

    ``parsed`` holds the messages that came before the fault, still to be acted on.
    """

    def __init__(self, message: str, parsed: list[Any] | None = None) -> None:
        super().__init__(message)
        self.parsed: list[Any] = parsed if parsed is not None else []


def frame_limit() -> int:
    return MAX_FRAME


def payload_limit() -> int:
    """The largest pickled call one run may carry (its frame must fit the channel)."""
    return MAX_FRAME - FRAME_SLACK


def frame(msg: Any) -> bytes:
    body = pickle.dumps(msg, protocol=5)
    if len(body) > MAX_FRAME:
        raise FrameTooLarge(
            f"message of {len(body)} bytes too large for the worker channel "
            f"(frame limit {MAX_FRAME} bytes)"
        )
    return HEADER.pack(len(body)) + body


def dumps(obj: Any) -> bytes:
    """Pickle with the fast stdlib pickler, falling back to cloudpickle (lambdas, locals)."""
    try:
        return pickle.dumps(obj, protocol=5)
    except Exception:
        return cloudpickle.dumps(obj, protocol=5)  # type: ignore[no-any-return]


def split_frames(buf: bytearray) -> list[Any]:
    """Take every complete message off the front of ``buf``.

    Raises ProtocolError on garbage: a length over the frame limit, a body that
    is not a pickle (seen from its first bytes, before the rest has come), or
    one that does not unpickle.
    """
    out: list[Any] = []
    pos = 0
    n = len(buf)
    size = HEADER.size
    limit = MAX_FRAME
    try:
        while n - pos >= size:
            (length,) = HEADER.unpack_from(buf, pos)
            if length > limit or length < len(_MAGIC):
                raise ProtocolError(
                    f"a frame announced {length} bytes (the limit is {limit})", out
                )
            start = pos + size
            if n - start >= len(_MAGIC) and not buf.startswith(_MAGIC, start):
                raise ProtocolError(
                    f"a frame's body begins {bytes(buf[start : start + 8])!r}, "
                    f"not a pickle", out
                )
            end = start + length
            if end > n:
                break
            try:
                out.append(pickle.loads(memoryview(buf)[start:end]))
            except Exception as exc:
                raise ProtocolError(
                    f"a frame could not be unpickled: {type(exc).__name__}: {exc}", out
                ) from exc
            pos = end
    finally:
        if pos:
            del buf[:pos]
    return out


def write_all(fd: int, data: bytes) -> None:
    """Blocking write of everything (the worker side)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
