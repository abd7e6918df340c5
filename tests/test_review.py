"""A hostile review of this morning's work (issues 10-13): each test here failed on the
code it fixes."""

from __future__ import annotations

import pytest

from taskwarden import Supervisor, WorkerCrashed
from taskwarden.pool import _template

import _tasks as T
from _live import WAIT

needs_template = pytest.mark.skipif(not _template.supported(), reason="no fork/pidfd here")


@needs_template
def test_an_initializer_module_that_ignores_sigchld_keeps_exit_statuses() -> None:
    import _sigchld_init

    with Supervisor(workers=1, initializer=_sigchld_init.init) as s:
        assert s.submit(_sigchld_init.sigchld_ignored).result(timeout=WAIT) is True
        for _ in range(3):
            with pytest.raises(WorkerCrashed, match="exited with code 3"):
                s.submit(T.exit_with, 3).result(timeout=WAIT)
        forker = s._pool._forker  # type: ignore[attr-defined]
        assert forker.template is not None and "_sigchld_init" in forker.template.preload
        assert forker.deaths == 0
