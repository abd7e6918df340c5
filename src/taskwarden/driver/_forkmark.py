"""Whether this is still the process that made a mark, at the cost of a memory read.

A Supervisor belongs to the process that made it: in a child made by ``fork()`` nothing
runs its tasks, so ``submit()`` and ``schedule()`` must refuse there. A child forked
through libc (ctypes, a C extension) runs none of Python's fork hooks, so only the
process can tell, and ``os.getpid()`` is a system call (about 0.2 µs: a tenth of a
``schedule()``). On Linux a page advised ``MADV_WIPEONFORK`` reads as zeros in every
child forked from its process, however it was forked: the mark is one such page with a
byte set. Elsewhere (or on a kernel before 4.14) the pid is compared.
"""

from __future__ import annotations

import mmap
import os
import platform
import sys
from typing import Protocol

# The advice's number where the mmap module does not name it: the generic Linux value,
# which these architectures use.
_GENERIC_WIPEONFORK = 18
_GENERIC_MACHINES = ("x86_64", "amd64", "i386", "i686", "aarch64", "arm64", "armv7l",
                     "armv6l", "riscv64", "ppc64le", "ppc64", "s390x")


class Mark(Protocol):
    """``mark[0]`` is non-zero in the process that made the mark, zero in a forked child."""

    def __getitem__(self, index: int, /) -> int: ...


class _PidMark:
    """Where no page is wiped on fork: the pid tells."""

    __slots__ = ("_pid",)

    def __init__(self) -> None:
        self._pid = os.getpid()

    def __getitem__(self, index: int, /) -> int:
        return int(os.getpid() == self._pid)


def _wipe_advice() -> int | None:
    advice = getattr(mmap, "MADV_WIPEONFORK", None)
    if isinstance(advice, int):
        return advice
    if sys.platform.startswith("linux") and platform.machine().lower() in _GENERIC_MACHINES:
        return _GENERIC_WIPEONFORK
    return None


def fork_mark() -> Mark:
    """A new mark for this process."""
    advice = _wipe_advice()
    if advice is not None and hasattr(mmap.mmap, "madvise"):
        try:
            page = mmap.mmap(-1, mmap.PAGESIZE,
                             flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except (OSError, ValueError, AttributeError):
            return _PidMark()
        try:
            page.madvise(advice)
        except (OSError, ValueError):
            page.close()
            return _PidMark()
        page[0] = 1
        return page
    return _PidMark()
