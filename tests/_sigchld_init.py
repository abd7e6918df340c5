"""A module that ignores SIGCHLD when imported (as some libraries do, to have their
children reaped for them): imported in a template, it must not cost the workers' exit
statuses; the workers still see SIGCHLD ignored, as they would have imported it."""

from __future__ import annotations

import signal

signal.signal(signal.SIGCHLD, signal.SIG_IGN)


def init() -> None:
    pass


def sigchld_ignored() -> bool:
    return signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN
