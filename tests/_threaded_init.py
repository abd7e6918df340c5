"""A module that starts a thread when imported: a template must not import it before
forking (workers import it themselves, through the initializer)."""

from __future__ import annotations

import threading

_stop = threading.Event()
threading.Thread(target=_stop.wait, daemon=True, name="started-at-import").start()

_ran = False


def init() -> None:
    global _ran
    _ran = True


def ran() -> bool:
    return _ran
