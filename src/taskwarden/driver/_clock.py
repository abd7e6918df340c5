"""The loop's time: a monotonic clock for deadlines and a wall clock for timestamps.

The loop, the commands it runs for callers and its wait read time only through a
``Clock``. ``SYSTEM_CLOCK`` is ``time.monotonic`` and ``time.time``; a test may give the
Supervisor a clock of its own that moves only when told (``tests/_live.py``'s
``FakeClock``), so that a live pool waits minutes of its time in no time.

A clock that does not run by itself says so through ``wait_timeout`` (a wait for a
future deadline may block until woken) and wakes the loop (``on_change``) whenever it
moves; the Reactor converts each deadline into a real timeout through the clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """What the loop needs of time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never steps: deadlines, the core's ``now``."""
        ...

    def time(self) -> float:
        """The wall clock, as ``time.time()``: timestamps, cron and ``at``."""
        ...

    def wait_timeout(self, deadline: float) -> float | None:
        """How long (real seconds) a wait for ``deadline`` (a ``monotonic()`` instant)
        may block: 0 once it has passed; None: until woken."""
        ...

    def on_change(self, wake: Callable[[], None]) -> None:
        """Call ``wake()`` (from any thread) whenever this clock moves other than with
        real time; a clock that follows real time never calls it."""
        ...


class SystemClock:
    """The real clocks (the default)."""

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    def wait_timeout(self, deadline: float) -> float | None:
        return max(0.0, deadline - time.monotonic())

    def on_change(self, wake: Callable[[], None]) -> None:
        """Real time needs no wake-up: the wait's timeout (or timer) ends it."""


SYSTEM_CLOCK = SystemClock()
