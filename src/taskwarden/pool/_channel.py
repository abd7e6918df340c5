"""The supervisor's end of one worker's channel: a connected stream socket.

A ``Channel`` is everything the supervisor knows about the conversation
with one worker, whatever the worker is (a local process over a socket
pair, or a remote one over TCP): the bytes not yet written (written as the
socket takes them, watched for writability through the loop's reactor
meanwhile) and not yet parsed, the runs the worker holds (``outstanding``,
in its order) and those taken back without its answer (``revoked``).
Readiness turns into events (``pool/base.py``) appended to the engine's list.

What depends on what the worker is stays with the engine and is given as
two callables: ``nudge`` (make the worker read its channel now: a signal to
a local process) and ``on_garbled`` (kill it). Whatever the channel carries
that is not a well-formed message is the worker crashing: ``crash`` says
why, and the engine reports it with the worker's exit. Nothing read from a
worker raises in the loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import selectors
from collections import deque
from collections.abc import Callable
from typing import Any

from .._errors import RemoteError, RemoteTraceback
from ._wire import (
    Beating,
    Done,
    FrameTooLarge,
    Message,
    ProtocolError,
    Ready,
    Retiring,
    Run,
    RunItem,
    Skip,
    Skipped,
    Stop,
    decode,
    frame_limit,
    split_frames,
)
from ._wire import InitFailed as InitFailedMsg
from .base import (
    Beat,
    Event,
    InitFailed,
    Reactor,
    RunDone,
    RunSkipped,
    WorkerReady,
    WorkerRetiring,
)

log = logging.getLogger("taskwarden")

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
RUN_SLACK = 256  # estimated bytes of a run's frame beyond its payload, when batching


class Channel:
    """One worker's channel; only the loop thread uses it. See the module docstring."""

    __slots__ = ("crash", "dead", "events", "fd", "inbuf", "killed", "name", "nudge",
                 "nudge_after_flush", "on_garbled", "outbuf", "outstanding", "reactor",
                 "ready", "revoked", "scratch", "wid", "writing")

    def __init__(
        self,
        wid: int,
        reactor: Reactor,
        events: list[Event],
        scratch: memoryview,
        *,
        nudge: Callable[[], None],
        on_garbled: Callable[[], None],
    ) -> None:
        self.wid = wid
        self.reactor = reactor
        self.events = events  # the engine's: what the loop takes next
        self.scratch = scratch  # reads land here (the engine's, shared by its channels)
        self.nudge = nudge
        self.on_garbled = on_garbled
        self.name = f"worker {wid}"  # for messages; the engine names the process once known
        self.fd = -1  # until attach(): what is written waits in outbuf
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.writing = False  # watched for writability (outbuf waits for room)
        self.dead = False  # the peer closed its end, or the channel is detached
        self.killed = False  # cut: nothing more is read from or written to it
        self.ready = False  # the worker said READY
        self.nudge_after_flush = False  # nudge the worker once outbuf is written out
        # Runs sent and not reported done or skipped yet, in the worker's order.
        self.outstanding: deque[int] = deque()
        # Runs taken back without the worker's answer: its SKIPPED for them is dropped.
        self.revoked: set[int] = set()
        self.crash: str | None = None  # why the engine killed it on its own (garbled)

    # --------------------------------------------------------------- lifecycle
    def attach(self, fd: int) -> None:
        """Connect to the worker's socket: watched from now on, and what was written
        before goes out."""
        self.fd = fd
        os.set_blocking(fd, False)
        self.reactor.watch(fd, self.on_ready)
        if self.outbuf:
            data = bytes(self.outbuf)
            self.outbuf.clear()
            self.write(data)

    def cut(self) -> None:
        """The worker is being killed: nothing more is read from or written to it."""
        self.killed = True
        if self.fd >= 0:
            self.reactor.unwatch(self.fd)
        self.writing = False

    def detach(self) -> None:
        """The worker is gone: stop watching (the engine closes the socket)."""
        if self.fd >= 0:
            self.reactor.unwatch(self.fd)
        self.dead = True

    def on_ready(self, mask: int) -> None:
        """The reactor's callback for this channel's fd."""
        if mask & _WRITE:
            self.flush()
        if mask & _READ:
            self.read()

    # ----------------------------------------------------------------- writing
    def write(self, data: bytes) -> None:
        if self.dead or self.killed:
            return
        if self.outbuf or self.fd < 0:
            self.outbuf += data
            return
        try:
            n = os.write(self.fd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            return  # the worker is gone; its exit event follows
        if n < len(data):
            self.outbuf += data[n:]
            self._want_write(True)

    def _want_write(self, on: bool) -> None:
        if self.writing == on or self.dead:
            return
        self.writing = on
        self.reactor.modify(self.fd, write=on)

    def flush(self) -> None:
        """Write what the socket takes of outbuf (it was full a moment ago)."""
        try:
            n = os.write(self.fd, self.outbuf)
        except BlockingIOError:
            return
        except OSError:
            self.outbuf.clear()
            self._want_write(False)
            return
        del self.outbuf[:n]
        if not self.outbuf:
            self._want_write(False)
            if self.nudge_after_flush:
                self.nudge_after_flush = False
                self.nudge()

    def send(self, runs: list[RunItem]) -> None:
        """Give the worker runs, in order, in as few frames as fit the frame limit."""
        self.outstanding.extend([r[0] for r in runs])
        budget = frame_limit() // 2  # estimated (payload + options) bytes per frame
        if len(runs) == 1 or sum(len(r[1]) for r in runs) + RUN_SLACK * len(runs) <= budget:
            self._send_frame(runs)
            return
        batch: list[RunItem] = []
        size = 0
        for run in runs:
            cost = len(run[1]) + RUN_SLACK
            if batch and size + cost > budget:
                self._send_frame(batch)
                batch, size = [], 0
            batch.append(run)
            size += cost
        if batch:
            self._send_frame(batch)

    def _send_frame(self, runs: list[RunItem]) -> None:
        """One RUN frame; never past the frame limit (a batch is split, however it came)."""
        try:
            data = Run(runs).encode()
        except FrameTooLarge:
            if len(runs) > 1:
                half = len(runs) // 2
                self._send_frame(runs[:half])
                self._send_frame(runs[half:])
                return
            # One run whose call fits (checked at the call) but not with its options:
            # only a huge previous_progress can do that. The run goes without it.
            seq, payload, opts = runs[0]
            log.warning("run %d: its previous progress is too large to send; dropped", seq)
            opts = {k: v for k, v in (opts or {}).items() if k != "previous_progress"}
            data = Run([(seq, payload, opts or None)]).encode()
        self.write(data)

    def stop(self) -> None:
        self.write(Stop().encode())

    def skip(self, seq: int) -> None:
        """Ask the worker not to start run ``seq``; see ``Pool.skip``."""
        self.write(Skip(seq).encode())
        if self.killed:
            return
        if self._surely_unstarted(seq):
            # Taken back at once, whatever the worker is doing (even holding the GIL in
            # C code, where it could not answer): it will find the request before it
            # could start the run. Its own answer, when it comes, is dropped.
            self.outstanding.remove(seq)
            self.revoked.add(seq)
            self.events.append(RunSkipped(self.wid, seq))
            return
        if self.ready:
            # The worker may be busy in a task: nudge it to answer now, or, while the
            # request still waits in outbuf, once it is in the channel.
            if self.outbuf:
                self.nudge_after_flush = True
            else:
                self.nudge()

    def _surely_unstarted(self, seq: int) -> bool:
        """Can the worker never start run ``seq``, now that the skip request is written?

        A worker writes a run's result before it reads the channel to the end and
        starts its next run (``_Inbox.next_run``). So if the request is all in the
        socket, and, reading after that, the run before ``seq`` has not reported an
        end (nor begun to: no partial message either), the worker had not finished it
        when the request landed, and it reads the request before it starts ``seq``.
        """
        if self.outbuf or self.dead or seq not in self.outstanding:
            return False  # the request is not all out yet, or the run is no longer ahead
        self.read()  # everything the worker has written until now
        if self.dead or self.killed or self.inbuf or seq not in self.outstanding:
            return False
        # A worker that has not said READY has started nothing (it reads the channel
        # to the end before its first run); else the oldest run it holds is running
        # (or ahead of it), and ``seq`` is behind it.
        return not self.ready or self.outstanding[0] != seq

    # ----------------------------------------------------------------- reading
    def read(self) -> None:
        """Read everything the socket holds and turn each message into its event."""
        if self.dead or self.killed:
            return
        scratch = self.scratch
        while True:
            try:
                n = os.readv(self.fd, (scratch,))
            except BlockingIOError:
                break
            except OSError:
                n = 0
            if not n:
                # EOF: the worker closed its end; its exit event follows.
                self.reactor.unwatch(self.fd)
                self.writing = False
                self.dead = True
                break
            self.inbuf += scratch[:n]
            if n < len(scratch):
                break
        try:
            msgs = split_frames(self.inbuf)
        except ProtocolError as exc:
            msgs = exc.parsed
            fault: Exception | None = exc
        else:
            fault = None
        try:
            for msg in msgs:
                if self.killed:
                    break  # killed while reading this batch: nothing more from it counts
                self._on_message(decode(msg))
        except Exception as exc:  # a frame that unpickled, but is no message of ours
            fault = exc
        if fault is not None:
            self._garbled(fault)

    def _garbled(self, fault: Exception) -> None:
        """The channel carries garbage: the worker is broken. The engine kills it; its
        exit (reported once it is gone) fails the run it had, as a crash would."""
        if isinstance(fault, ProtocolError):
            why = str(fault)
        else:
            why = f"a message could not be read: {type(fault).__name__}: {fault}"
        log.error("%s: its channel is garbled (%s); killing it", self.name, why)
        self.crash = f"{self.name} garbled its channel to the supervisor ({why})"
        self.inbuf.clear()
        self.on_garbled()

    def _on_message(self, msg: Message) -> None:
        wid = self.wid
        match msg:
            case Done():
                seq, ok, data, tb, type_name, message, progress = msg  # (unpacking is fastest)
                outstanding = self.outstanding
                if outstanding and outstanding[0] == seq:
                    outstanding.popleft()
                else:
                    with contextlib.suppress(ValueError):
                        outstanding.remove(seq)
                ok, value = _load_outcome(ok, data, tb, type_name, message)
                has_progress = progress != b""
                prog = _load_quiet(progress) if has_progress else None
                size = (len(data) if data else 0) + (len(tb) if tb else 0)
                self.events.append(RunDone(wid, seq, ok, value, tb, prog, has_progress, size))
            case Beating(seq, data):
                has_progress = data is not None
                prog = None if data is None else _load_quiet(data)
                self.events.append(Beat(wid, seq, prog, has_progress))
            case Skipped(seq):
                if seq in self.revoked:
                    self.revoked.discard(seq)  # already taken back (see skip())
                    return
                with contextlib.suppress(ValueError):
                    self.outstanding.remove(seq)
                self.events.append(RunSkipped(wid, seq))
            case Ready(pid):
                self.ready = True  # its signal handlers are in place from now on
                self.events.append(WorkerReady(wid, pid))
            case InitFailedMsg(tb):
                self.events.append(InitFailed(wid, tb))
            case Retiring(rss):
                self.events.append(WorkerRetiring(wid, rss))
            case _:
                raise ProtocolError(f"a worker sent {type(msg).__name__}, a supervisor's message")


def _load_quiet(data: bytes) -> Any:
    try:
        return pickle.loads(data)
    except BaseException:
        return None


def _load_outcome(
    ok: bool, data: bytes, tb: str | None, type_name: str | None, message: str | None
) -> tuple[bool, Any]:
    """Unpickle a result or an exception. Whatever unpickling does fails this task only."""
    if ok:
        try:
            return True, pickle.loads(data)
        except BaseException as exc:
            err = RemoteError(
                "ResultUnpicklingError",
                f"the task's result could not be unpickled in the supervisor: "
                f"{type(exc).__name__}: {exc}",
            )
            return False, err
    exc_value: BaseException
    try:
        loaded = pickle.loads(data) if data else None
    except BaseException:
        loaded = None
    if isinstance(loaded, BaseException):
        exc_value = loaded
    else:
        exc_value = RemoteError(type_name or "Exception", message or "")
    if tb:
        exc_value.__cause__ = RemoteTraceback(tb)
    return False, exc_value
