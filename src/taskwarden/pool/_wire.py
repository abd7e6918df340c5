"""The framing both ends of a worker channel speak: a 4-byte length, then a pickle.

Both ends are ours, so the channel is a plain socket pair read in large
chunks: one read may carry many messages, which is what lets a busy
worker's results and a burst of dispatches travel without a system call
each.

Each message has a named type below (a tuple subclass with a property per
field: as cheap as the plain tuple it is on the wire), with its encoder
(``.encode()``, a whole frame) beside its decoder (``decode``, from what
``split_frames`` took off the channel). On the wire a message is
``(KIND, *fields)``.
"""

from __future__ import annotations

import os
import pickle
import struct
from operator import itemgetter
from typing import Any, ClassVar, TypeAlias

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


RunItem: TypeAlias = tuple[int, bytes, dict[str, Any] | None]  # (seq, payload, options)


_new = tuple.__new__  # (a global: one lookup fewer on every message made)


def _field(index: int) -> Any:
    """A message's read-only field: item ``index`` of its tuple (a C-level getter)."""
    return property(itemgetter(index))


class _Fields(tuple[Any, ...]):
    """What every message class shares: its kind on the wire (``_kind``), its field
    names (``_fields``, in wire order), its encoder and a readable repr. Each message is
    a tuple of its fields, written out as a tuple subclass with a getter per field
    rather than a NamedTuple: creating the nine NamedTuple classes cost every worker's
    boot about a millisecond."""

    __slots__ = ()
    _kind: ClassVar[int]
    _fields: ClassVar[tuple[str, ...]]

    def encode(self) -> bytes:
        """The whole frame: ``(KIND, *fields)``."""
        return frame((self._kind, *self))

    def __repr__(self) -> str:
        values = zip(self._fields, self, strict=True)
        inner = ", ".join(f"{name}={value!r}" for name, value in values)
        return f"{type(self).__name__}({inner})"


# ----------------------------------------------------- supervisor -> worker
class Run(_Fields, tuple[list[RunItem]]):
    """Runs to execute in this order."""

    __slots__ = ()
    __match_args__ = _fields = ("runs",)
    _kind = RUN
    runs: list[RunItem] = _field(0)

    def __new__(cls, runs: list[RunItem]) -> Run:
        return _new(cls, (runs,))


class Skip(_Fields, tuple[int]):
    """Do not start run ``seq`` if it has not started (answered by ``Skipped``)."""

    __slots__ = ()
    __match_args__ = _fields = ("seq",)
    _kind = SKIP
    seq: int = _field(0)

    def __new__(cls, seq: int) -> Skip:
        return _new(cls, (seq,))


class Stop(_Fields, tuple[()]):
    """Exit once idle."""

    __slots__ = ()
    __match_args__ = _fields = ()
    _kind = STOP

    def __new__(cls) -> Stop:
        return _new(cls, ())


# ----------------------------------------------------- worker -> supervisor
class Ready(_Fields, tuple[int]):
    """Up (the initializer ran), signal handlers in place."""

    __slots__ = ()
    __match_args__ = _fields = ("pid",)
    _kind = READY
    pid: int = _field(0)

    def __new__(cls, pid: int) -> Ready:
        return _new(cls, (pid,))


class Done(_Fields, tuple[int, bool, bytes, str | None, str | None, str | None, bytes]):
    """Run ``seq`` ended: ``data`` is its pickled result (``ok``) or exception (else,
    with ``tb`` and, should it not unpickle, ``type_name`` and ``message``);
    ``progress`` its last unsent progress value, pickled, or ``NO_PROGRESS``."""

    __slots__ = ()
    __match_args__ = _fields = ("seq", "ok", "data", "tb", "type_name", "message", "progress")
    _kind = DONE
    seq: int = _field(0)
    ok: bool = _field(1)
    data: bytes = _field(2)
    tb: str | None = _field(3)
    type_name: str | None = _field(4)
    message: str | None = _field(5)
    progress: bytes = _field(6)

    def __new__(cls, seq: int, ok: bool, data: bytes, tb: str | None,
                type_name: str | None, message: str | None, progress: bytes) -> Done:
        return _new(cls, (seq, ok, data, tb, type_name, message, progress))


class Skipped(_Fields, tuple[int]):
    """Run ``seq`` was taken out of the worker's inbox unstarted."""

    __slots__ = ()
    __match_args__ = _fields = ("seq",)
    _kind = SKIPPED
    seq: int = _field(0)

    def __new__(cls, seq: int) -> Skipped:
        return _new(cls, (seq,))


class Beating(_Fields, tuple[int, bytes | None]):
    """Run ``seq`` is alive; ``progress`` is a pickled progress value, or None."""

    __slots__ = ()
    __match_args__ = _fields = ("seq", "progress")
    _kind = BEAT
    seq: int = _field(0)
    progress: bytes | None = _field(1)

    def __new__(cls, seq: int, progress: bytes | None) -> Beating:
        return _new(cls, (seq, progress))


class InitFailed(_Fields, tuple[str]):
    """The initializer raised (its traceback); the worker exits."""

    __slots__ = ()
    __match_args__ = _fields = ("tb",)
    _kind = INIT_FAILED
    tb: str = _field(0)

    def __new__(cls, tb: str) -> InitFailed:
        return _new(cls, (tb,))


class Retiring(_Fields, tuple[int]):
    """Over its memory limit (``rss`` bytes): the worker exits before its next run."""

    __slots__ = ()
    __match_args__ = _fields = ("rss",)
    _kind = RETIRING
    rss: int = _field(0)

    def __new__(cls, rss: int) -> Retiring:
        return _new(cls, (rss,))


Message: TypeAlias = Run | Skip | Stop | Ready | Done | Skipped | Beating | InitFailed | Retiring

_TYPES: dict[int, type[Message]] = {
    RUN: Run, SKIP: Skip, STOP: Stop, READY: Ready, DONE: Done, SKIPPED: Skipped,
    BEAT: Beating, INIT_FAILED: InitFailed, RETIRING: Retiring,
}
# kind -> (type, length on the wire): decode builds the tuple without the class's
# Python-level __new__ (this is the hot path: one call per message).
_DECODE = {kind: (cls, len(cls._fields) + 1) for kind, cls in _TYPES.items()}


def decode(msg: Any) -> Message:
    """The named message a frame carried; ProtocolError if it is none of ours."""
    try:
        cls, length = _DECODE[msg[0]]
    except (TypeError, IndexError, KeyError):
        raise ProtocolError(f"not a message of ours: {msg!r:.80}") from None
    if type(msg) is not tuple or len(msg) != length:
        raise ProtocolError(f"a message of kind {msg[0]} has the wrong shape")
    return _new(cls, msg[1:])


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
        data: bytes = cloudpickle.dumps(obj, protocol=5)  # cloudpickle is untyped
        return data


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
