"""The order of messages on a worker's channel, where two threads on each side meet.

Two races here once lost a task for good (CI caught one as a hang in map):
the worker's main thread could block on an empty channel with a run already
in its inbox, and a SKIPPED answer could reach the supervisor after the
result of a later run, which then looked like a stray message. These tests
pin each interleaving down without relying on timing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from taskwarden import Supervisor, TaskTimeout, _taskside
from taskwarden._policy import Policy
from taskwarden.core import engine as E
from taskwarden.driver._reactor import Reactor
from taskwarden.driver.supervisor import Supervisor as _Sup
from taskwarden.pool import _wire, _worker
from taskwarden.pool._channel import Channel
from taskwarden.pool._worker import _Inbox

import _tasks as T


@pytest.fixture
def channel() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def _inbox(sock: socket.socket, send: Any = None) -> _Inbox:
    return _Inbox(sock.fileno(), send or (lambda data: None), -1)


class _ReaderWinsTheRace:
    """A read lock whose first acquire lets the reader thread deliver a run first,
    as if it had read the channel between next_run's check and its acquire."""

    def __init__(self, inbox: _Inbox, run: tuple[int, bytes, None]) -> None:
        self.inbox = inbox
        self.run: tuple[int, bytes, None] | None = run
        self.lock = threading.Lock()

    def acquire(self, blocking: bool = True) -> bool:
        if self.run is not None:
            with self.inbox.cond:
                self.inbox.runs.append(self.run)
            self.run = None
        return self.lock.acquire(blocking)

    def release(self) -> None:
        self.lock.release()


def test_next_run_takes_a_run_the_reader_delivered_while_it_reached_for_the_channel(
    channel: tuple[socket.socket, socket.socket],
) -> None:
    inbox = _inbox(channel[0])
    inbox.read_lock = _ReaderWinsTheRace(inbox, (7, b"call", None))  # type: ignore[assignment]

    def read_once() -> None:
        raise AssertionError("read the channel with a run waiting: this read would block")

    inbox._read_once = read_once  # type: ignore[method-assign]
    assert inbox.next_run() == (7, b"call", None)


def test_skipped_is_written_before_the_main_thread_can_start_a_later_run(
    channel: tuple[socket.socket, socket.socket],
) -> None:
    holding: list[bool] = []

    def send(data: bytes) -> None:
        # The inbox's lock must still be held: the main thread takes the next run
        # under it, so no later run can start (and answer) ahead of this message.
        free = inbox.cond.acquire(blocking=False)
        if free:
            inbox.cond.release()
        holding.append(not free)

    inbox = _inbox(channel[0], send)
    inbox.runs.extend([(1, b"", None), (2, b"", None)])
    inbox._skip(1)
    assert holding == [True]
    assert list(inbox.runs) == [(2, b"", None)]
    inbox._skip(99)  # not there (already started): no answer
    assert holding == [True]


class _Recorder:
    def __init__(self) -> None:
        self.wire: list[tuple[str, int, Any]] = []

    def send(self, wid: int, runs: list[tuple[int, bytes, Any]]) -> None:
        self.wire.append(("run", wid, [r[0] for r in runs]))

    def skip(self, wid: int, seq: int) -> None:
        self.wire.append(("skip", wid, seq))

    def stop(self, wid: int) -> None:
        self.wire.append(("stop", wid, None))


def test_a_skip_never_overtakes_the_run_it_names_in_one_round() -> None:
    # The loop applies a round's actions together, and one round can hand a run
    # out ahead of time and then take it back (the steal check fires later in
    # the same round).
    sup = _Sup.__new__(_Sup)
    sup._core = E.Core(2)
    recorder = _Recorder()
    sup._pool = recorder  # type: ignore[assignment]
    sup._applying = False
    sup._parked = {}
    runs = [E.Run(seq, b"", Policy()) for seq in (1, 2, 3, 4)]
    sup._actions = [E.Send(1, runs[:3]), E.Skip(1, 3), E.Send(1, runs[3:]), E.Stop(2)]
    sup._apply()
    assert recorder.wire == [
        ("run", 1, [1, 2, 3]), ("skip", 1, 3), ("stop", 2, None), ("run", 1, [4]),
    ]


def test_the_wire_carries_runs_and_skips_in_the_order_written(
    channel: tuple[socket.socket, socket.socket],
) -> None:
    sent: list[Any] = []
    inbox = _inbox(channel[0], lambda data: sent.append(data))
    os.write(channel[1].fileno(), _wire.frame((_wire.RUN, [(1, b"", None), (2, b"", None)])))
    os.write(channel[1].fileno(), _wire.frame((_wire.SKIP, 2)))
    with inbox.read_lock:
        inbox._read_once()
    assert [r[0] for r in inbox.runs] == [1]
    assert sent == [_wire.frame((_wire.SKIPPED, 2))]


def test_fresh_pools_under_a_burst_lose_nothing() -> None:
    # The shape that hung in CI: a burst meets a cold pool, one worker gets a
    # deep batch, the other becomes ready and takes part of it back.
    for _ in range(8):
        with Supervisor(workers=2) as sup:
            tasks = [sup.submit(T.square, x) for x in range(30)]
            assert [t.result(timeout=20) for t in tasks] == [x * x for x in range(30)]


def test_a_grace_signal_during_a_heartbeat_is_raised_once_the_frame_is_whole() -> None:
    written: list[bytes] = []

    def send(data: bytes) -> None:  # the frame goes out in two writes...
        written.append(data[:3])
        if len(written) == 1:  # ...and the signal lands between them, the first time
            _worker._on_interrupt(signal.SIGUSR1, None)
        written.append(data[3:])

    running = _taskside.Running(send, 5, _taskside.CurrentTask(0, 5, 1, None, None), 0.0)
    _taskside.running = running
    try:
        with pytest.raises(TaskTimeout):
            _taskside.heartbeat("half way")
        running.next_send = 0.0
        _taskside.heartbeat()  # nothing left over from the signal: no second raise
    finally:
        _taskside.running = None
    frames = _wire.split_frames(bytearray(b"".join(written)))
    assert frames[0] == (_wire.BEAT, 5, _wire.dumps("half way"))
    assert frames[1] == (_wire.BEAT, 5, None)


class _WatchedLock:
    """A lock that tells when someone other than its holder tried to take it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tried = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self.lock.acquire(blocking, timeout)
        if not got:
            self.tried.set()
        return got

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class _HungUp(Exception):
    pass


def _hang_up() -> None:
    raise _HungUp  # where a worker would exit


def _read_until_hung_up(inbox: _Inbox) -> None:
    with contextlib.suppress(_HungUp):
        inbox.reader()


def test_a_nudge_is_answered_even_when_the_main_thread_held_the_channel_at_that_moment(
    channel: tuple[socket.socket, socket.socket],
) -> None:
    nudge_r, nudge_w = os.pipe()
    os.set_blocking(nudge_r, False)
    answered = threading.Event()
    sent: list[bytes] = []

    def send(data: bytes) -> None:
        sent.append(data)
        answered.set()

    inbox = _Inbox(channel[0].fileno(), send, nudge_r)
    inbox.on_hangup = _hang_up  # type: ignore[assignment]
    lock = _WatchedLock()
    inbox.read_lock = lock  # type: ignore[assignment]
    inbox.runs.extend([(1, b"", None), (2, b"", None)])
    reader = threading.Thread(target=_read_until_hung_up, args=(inbox,), daemon=True)
    try:
        lock.acquire()  # the main thread is busy with what it has just read
        reader.start()
        os.write(channel[1].fileno(), _wire.frame((_wire.SKIP, 2)))
        os.write(nudge_w, b"\0")
        assert lock.tried.wait(5)  # the reader came while the channel was taken
        lock.release()  # and no second nudge follows
        assert answered.wait(5), "the skip request waited for a nudge that never came"
        assert sent == [_wire.frame((_wire.SKIPPED, 2))]
        assert [r[0] for r in inbox.runs] == [1]
    finally:
        channel[1].shutdown(socket.SHUT_RDWR)  # the reader sees the hang-up and ends
        reader.join(5)
        os.close(nudge_r)
        os.close(nudge_w)
    assert not reader.is_alive()


def test_the_pool_nudges_a_worker_only_once_the_skip_request_is_in_the_channel(
    channel: tuple[socket.socket, socket.socket],
) -> None:
    reactor = Reactor()
    nudged: list[int] = []
    chan = Channel(1, reactor, [], memoryview(bytearray(1 << 16)),
                   nudge=lambda: nudged.append(1), on_garbled=lambda: None)
    try:
        chan.attach(channel[0].fileno())
        chan.ready = True
        chan.outbuf += b"rest of a batch of runs"  # the socket was full a moment ago
        chan.skip(7)
        assert nudged == []
        chan.flush()
        assert nudged == [1]
        expected = b"rest of a batch of runs" + _wire.frame((_wire.SKIP, 7))
        assert channel[1].recv(1 << 16) == expected
        chan.skip(8)  # nothing queued: at once
        assert nudged == [1, 1]
    finally:
        chan.detach()
        reactor.close()
