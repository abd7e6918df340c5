"""The loop's one wait: a selector over every file descriptor the loop cares about.

The loop blocks in ``Reactor.wait(deadline)`` and in nothing else. Three
kinds of thing end that wait:

- an fd a pool asked to be watched (``watch``) is ready: its callback runs,
  on the loop thread, with the ready mask (``EVENT_READ``/``EVENT_WRITE``);
- the deadline passes: a Linux timerfd armed at that monotonic instant is one
  more fd in the set (``driver/_timer.py``: microsecond-precise, where
  ``epoll_wait``'s own timeout is rounded up to a whole millisecond). The
  deadline is on the loop's clock (``driver/_clock.py``); a clock other than the
  system's converts it into the wait's timeout, and wakes the wait when it moves;
- ``wake()``, from any thread (a caller queued a command, a pool's background
  thread has something): one byte in a pipe, written at most once per wait.

The reactor knows nothing of workers or tasks; it is the ``Reactor`` of
``pool/base.py`` that an engine registers its fds through.
"""

from __future__ import annotations

import contextlib
import os
import selectors
from collections.abc import Callable

from ._clock import SYSTEM_CLOCK, Clock, SystemClock
from ._timer import make_timer

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


class Reactor:
    """Selector, wake pipe and deadline timer of the supervisor loop.

    Only the loop thread calls it, but ``wake``.
    """

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._armed = False  # a wake-up byte is in the pipe (or on its way): no second one
        self._sel.register(self._wake_r, _READ, self._on_wake)
        # The timerfd counts real monotonic time: only for the system's clock.
        self._timer = make_timer() if isinstance(clock, SystemClock) else None
        clock.on_change(self.wake)
        if self._timer is not None:
            self._sel.register(self._timer.fileno(), _READ, self._on_timer)

    # ------------------------------------------------------------ registration
    def watch(self, fd: int, on_ready: Callable[[int], None], *, write: bool = False) -> None:
        """Call ``on_ready(mask)`` on the loop thread whenever ``fd`` is readable (and,
        with ``write``, writable)."""
        self._sel.register(fd, _READ | (_WRITE if write else 0), on_ready)

    def modify(self, fd: int, *, write: bool) -> None:
        """Start or stop watching a watched ``fd`` for writability."""
        key = self._sel.get_key(fd)
        self._sel.modify(fd, _READ | (_WRITE if write else 0), key.data)

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd``; no error if it is not watched (or already closed)."""
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(fd)

    # ----------------------------------------------------------------- waiting
    def wake(self) -> None:
        """Make the loop's current (or next) ``wait`` return now. Thread-safe."""
        if not self._armed:
            self._armed = True
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"\0")

    def wait(self, deadline: float | None) -> None:
        """Block until a watched fd is ready, ``deadline`` (the clock's ``monotonic()``)
        passes or ``wake()`` is called; then run the ready fds' callbacks."""
        timeout: float | None
        if deadline is None:
            timeout = None
        else:
            timeout = self._clock.wait_timeout(deadline)
            if timeout is not None and timeout > 0 and self._timer is not None:
                self._timer.arm(deadline)
                timeout = None
        for key, mask in self._sel.select(timeout):
            key.data(mask)

    def _on_wake(self, mask: int) -> None:
        # Drain first, then disarm: a wake() between the two leaves its byte in the
        # pipe, so it is never lost.
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)  # one byte per arming: this drains it
        self._armed = False

    def _on_timer(self, mask: int) -> None:
        assert self._timer is not None
        self._timer.clear()

    def close(self) -> None:
        """Release the selector, the pipe and the timer (after the pool is closed)."""
        self._armed = True  # a late wake() (a clock's, a pool thread's) writes nothing now
        self._sel.close()
        if self._timer is not None:
            self._timer.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
