"""A deadline the loop's epoll can wait on with microsecond precision (Linux timerfd).

``epoll_wait`` takes its timeout in whole milliseconds, and CPython rounds it
up, so a loop that sleeps through a timeout wakes up to a millisecond late.
A timerfd armed at an absolute CLOCK_MONOTONIC time (the clock behind
``time.monotonic()``) fires within the kernel's timer slack (~50 µs) and is
just another file descriptor in the same epoll set. Python 3.13 has
``os.timerfd_create``; older versions reach the same system calls through
ctypes. Where neither works, ``make_timer()`` returns None and the loop
falls back to epoll's own timeout.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
import time

CLOCK_MONOTONIC = 1
TFD_TIMER_ABSTIME = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = getattr(os, "O_CLOEXEC", 0o2000000)
MAX_DEADLINE = float(2**31 - 1)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class DeadlineTimer:
    """One-shot timer at an absolute ``time.monotonic()`` instant; readable when due."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._fd: int = fd
        self.armed_at: float | None = None

    def fileno(self) -> int:
        return self._fd

    def arm(self, deadline: float) -> None:
        if deadline == self.armed_at:
            return
        # Clamped to what a 32-bit time_t holds (68 years of uptime: "never"), so that a
        # far deadline neither overflows tv_sec nor wraps to zero and fires at once.
        frac, whole = math.modf(min(max(deadline, 1e-9), MAX_DEADLINE))
        spec = _Itimerspec()
        spec.it_value.tv_sec = int(whole)
        spec.it_value.tv_nsec = int(frac * 1e9)
        if self._libc.timerfd_settime(self._fd, TFD_TIMER_ABSTIME, ctypes.byref(spec), None):
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        self.armed_at = deadline

    def disarm(self) -> None:
        spec = _Itimerspec()
        self._libc.timerfd_settime(self._fd, 0, ctypes.byref(spec), None)
        self.armed_at = None

    def clear(self) -> None:
        """Consume an expiry (the fd stays readable until then)."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._fd, 8)
        self.armed_at = None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def make_timer() -> DeadlineTimer | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        timer = DeadlineTimer()
        # Check that the kernel's clock is the one time.monotonic() reads.
        timer.arm(time.monotonic() + 3600)
        timer.disarm()
        return timer
    except (OSError, AttributeError):
        return None
