"""A task module that ignores SIGCHLD when imported: preloaded into the template, it must
not cost the workers' exit statuses (see _sigchld_init for the initializer's case)."""

from __future__ import annotations

import signal

signal.signal(signal.SIGCHLD, signal.SIG_IGN)


def sigchld_ignored() -> bool:
    return signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN
