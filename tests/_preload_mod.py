"""A tasks' module for the preload tests (issue 12): it notes which process imported
it, so a task can tell whether its worker imported it or inherited it from the template."""

from __future__ import annotations

import os

IMPORTED_BY = os.getpid()


def where() -> tuple[int, bool]:
    """(this worker's pid, whether this very process imported the module)."""
    return os.getpid(), os.getpid() == IMPORTED_BY
