"""The order of messages on a worker's channel, where two threads on each side meet.

Two races here once lost a task for good (CI caught one as a hang in map):
the worker's main thread could block on an empty channel with a run already
in its inbox, and a SKIPPED answer could reach the supervisor after the
result of a later run, which then looked like a stray message. These tests
pin each interleaving down without relying on timing.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from taskwarden import Supervisor
from taskwarden._policy import Policy
from taskwarden.core import engine as E
from taskwarden.driver.supervisor import Supervisor as _Sup
from taskwarden.pool import _wire
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
    sup._core.actions = [E.Send(1, runs[:3]), E.Skip(1, 3), E.Send(1, runs[3:]), E.Stop(2)]
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
