"""A hostile review of this morning's work (issues 10-13): each test here failed on the
code it fixes."""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from taskwarden import Supervisor, WorkerCrashed
from taskwarden.pool import _template

import _tasks as T
from _live import WAIT, forked_workers_only

needs_template = pytest.mark.skipif(not _template.supported(), reason="no fork/pidfd here")


@needs_template
def test_an_initializer_module_that_ignores_sigchld_keeps_exit_statuses() -> None:
    before = signal.getsignal(signal.SIGCHLD)
    import _sigchld_init  # ignores SIGCHLD here too: put back below

    signal.signal(signal.SIGCHLD, before)

    with Supervisor(workers=1, initializer=_sigchld_init.init) as s:
        assert s.submit(_sigchld_init.sigchld_ignored).result(timeout=WAIT) is True
        for _ in range(3):
            with pytest.raises(WorkerCrashed, match="exited with code 3"):
                s.submit(T.exit_with, 3).result(timeout=WAIT)
        forker = s._pool._forker  # type: ignore[attr-defined]
        assert forker.template is not None and "_sigchld_init" in forker.template.preload
        assert forker.deaths == 0


@pytest.fixture
def tz_east_of_utc() -> Iterator[None]:
    """A local time zone where ``datetime.max`` (naive, local) lies past year 9999 in UTC."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.usefixtures("tz_east_of_utc")
def test_the_ends_of_datetime_are_far_times_not_errors() -> None:
    with Supervisor(workers=1) as s:
        never = s.schedule(T.pid, at=datetime.max)  # "never": honoured (clamped)
        assert never.state == "SCHEDULED"
        assert never.cancel()
        long_ago = s.schedule(T.pid, at=datetime.min)  # in the past: runs now
        assert long_ago.result(timeout=WAIT) > 0
        job = s.schedule(T.pid, every=60, until=datetime.max)
        assert job.state == "ACTIVE"
        job.cancel()


def test_a_bad_until_is_named_until() -> None:
    with Supervisor(workers=1) as s, pytest.raises(TypeError, match=r"^until must be"):
        s.schedule(T.pid, every=1, until=math.inf)


@needs_template
def test_a_task_that_stops_its_template_costs_no_outcome_and_no_shutdown() -> None:
    s = Supervisor(workers=1)
    try:
        s.submit(T.pid).result(timeout=WAIT)
        forked_workers_only(s, 1)  # (the first worker's parent is this process)
        assert s.submit(T.stop_parent).result(timeout=WAIT) == "stopped"
        with pytest.raises(WorkerCrashed, match="exited with code 3"):
            s.submit(T.exit_with, 3).result(timeout=WAIT)
        assert s.submit(T.square, 4).result(timeout=WAIT) == 16
        t0 = time.monotonic()
    finally:
        s.shutdown(wait=True)
    assert time.monotonic() - t0 < WAIT / 4  # not minutes: the template was waited on


@pytest.mark.parametrize(
    "timeout", [Decimal(10), Fraction(10), 10.0], ids=["Decimal", "Fraction", "float"]
)
def test_a_wait_takes_any_real_number_of_seconds(sup: Supervisor, timeout: Any) -> None:
    assert sup.submit(T.square, 3).result(timeout=timeout) == 9
    assert sup.submit(T.square, 3).exception(timeout=timeout) is None
    assert list(sup.map(T.square, range(3), timeout=timeout)) == [0, 1, 4]
    assert list(sup.map(T.square, range(3), timeout=timeout, chunksize=2)) == [0, 1, 4]
    job = sup.schedule(T.square, args=(2,), every=60, delay=0)
    assert job.result(timeout=timeout) == 4
    job.cancel()
