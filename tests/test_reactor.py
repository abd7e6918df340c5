"""The loop's wait (driver/_reactor.py) and the named wire messages (pool/_wire.py)."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from taskwarden.driver._reactor import Reactor
from taskwarden.pool import _wire

from _live import FakeClock


@pytest.fixture
def reactor() -> Iterator[Reactor]:
    r = Reactor()
    yield r
    r.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_on_a_fake_clock_a_wait_ends_when_the_clock_passes_its_deadline() -> None:
    clock = FakeClock()
    r = Reactor(clock)
    try:
        deadline = clock.monotonic() + 3600.0
        returned = threading.Event()

        def waiter() -> None:
            r.wait(deadline)  # an hour on the fake clock: it must not end on real time
            returned.set()

        t = threading.Thread(target=waiter)
        t.start()
        assert not returned.wait(0.2)  # blocks: no real-time timeout stands for the hour
        clock.advance(3600.0)  # the clock wakes the wait
        assert returned.wait(5)
        t.join(5)
        started = time.monotonic()
        r.wait(deadline)  # past: returns at once
        assert time.monotonic() - started < 1.0
    finally:
        r.close()


def test_a_ready_fd_runs_its_callback_with_the_ready_mask(
    reactor: Reactor, pair: tuple[socket.socket, socket.socket]
) -> None:
    seen: list[int] = []
    reactor.watch(pair[0].fileno(), seen.append)
    pair[1].send(b"x")
    reactor.wait(None)
    assert seen == [selectors.EVENT_READ]


def test_write_interest_is_added_and_removed(
    reactor: Reactor, pair: tuple[socket.socket, socket.socket]
) -> None:
    seen: list[int] = []
    fd = pair[0].fileno()
    reactor.watch(fd, seen.append)
    reactor.modify(fd, write=True)
    reactor.wait(None)  # an empty socket is writable at once
    assert seen == [selectors.EVENT_WRITE]
    reactor.modify(fd, write=False)
    seen.clear()
    reactor.wait(0.0)
    assert seen == []


def test_an_unwatched_fd_runs_nothing_and_unwatching_twice_is_no_error(
    reactor: Reactor, pair: tuple[socket.socket, socket.socket]
) -> None:
    seen: list[int] = []
    reactor.watch(pair[0].fileno(), seen.append)
    reactor.unwatch(pair[0].fileno())
    reactor.unwatch(pair[0].fileno())
    reactor.unwatch(12345)
    pair[1].send(b"x")
    reactor.wait(0.0)
    assert seen == []


def test_wake_from_another_thread_ends_a_wait_without_deadline(reactor: Reactor) -> None:
    waiting = threading.Event()

    def wake_when_waiting() -> None:
        waiting.wait()
        reactor.wake()

    t = threading.Thread(target=wake_when_waiting)
    t.start()
    waiting.set()
    reactor.wait(None)  # would block for ever without the wake-up
    t.join()


def test_a_wake_before_the_wait_is_not_lost_and_the_next_wake_works_again(
    reactor: Reactor,
) -> None:
    reactor.wake()
    reactor.wake()  # armed already: no second byte
    reactor.wait(None)  # would block for ever had the wake-up been lost
    reactor.wake()  # disarmed by that wait: this one writes its byte again
    reactor.wait(None)


def test_the_wait_returns_once_its_deadline_has_passed(reactor: Reactor) -> None:
    deadline = time.monotonic() + 0.02
    reactor.wait(deadline)
    assert time.monotonic() >= deadline


def test_every_message_decodes_to_what_was_encoded() -> None:
    messages: list[_wire.Message] = [
        _wire.Run([(1, b"call", None), (2, b"call", {"attempt": 2})]),
        _wire.Skip(3),
        _wire.Stop(),
        _wire.Ready(1234),
        _wire.Done(4, True, b"data", None, None, None, _wire.NO_PROGRESS),
        _wire.Skipped(5),
        _wire.Beating(6, None),
        _wire.InitFailed("Traceback"),
        _wire.Retiring(1 << 30),
    ]
    buf = bytearray(b"".join(m.encode() for m in messages))
    decoded = [_wire.decode(raw) for raw in _wire.split_frames(buf)]
    assert decoded == messages
    assert [type(m) for m in decoded] == [type(m) for m in messages]


@pytest.mark.parametrize("raw", [(99, "what"), (_wire.DONE, 1), 12345, ()])
def test_a_frame_that_is_no_message_of_ours_does_not_decode(raw: object) -> None:
    with pytest.raises(_wire.ProtocolError):
        _wire.decode(raw)
