"""Scheduling end to end on real workers; the rules themselves are in test_scheduling."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from taskwarden import Job, JobState, Supervisor, Task, TaskState

import _tasks as T
from _live import WAIT, FakeClock, supervisor_on, wait_for


def test_a_delayed_task_is_scheduled_then_runs(sup: Supervisor) -> None:
    before = time.time()
    task = sup.schedule(T.stamp, delay=0.2)
    assert isinstance(task, Task) and task.state is TaskState.SCHEDULED
    assert task.result(timeout=WAIT) >= before + 0.2
    assert sup.stats()["scheduled"] == 0


def test_at_takes_aware_and_naive_datetimes(sup: Supervisor) -> None:
    soon = datetime.now(timezone.utc) + timedelta(seconds=0.2)
    aware = sup.schedule(T.stamp, at=soon)
    naive = sup.schedule(T.stamp, at=datetime.now() + timedelta(seconds=0.2))
    past = sup.schedule(T.stamp, at=datetime.now() - timedelta(hours=1))
    assert aware.result(timeout=WAIT) >= soon.timestamp() - 0.001
    assert naive.result(timeout=WAIT) > 0 and past.result(timeout=WAIT) > 0


def test_kick_postpones_a_waiting_task_and_tells_once_it_fired() -> None:
    clock = FakeClock()  # the loop's time moves when the test says, not when it is late
    with supervisor_on(clock, workers=1) as s:
        watchdog = s.schedule(T.stamp, delay=0.3)
        for _ in range(3):
            clock.advance(0.1)
            assert watchdog.kick() is True  # fed in time: the dog does not bark
        clock.advance(0.25)
        s.stats()  # a round of the loop at the new time: nothing came due
        assert watchdog.state is TaskState.SCHEDULED
        clock.advance(0.1)  # 0.35 s since the last kick
        fired = watchdog.result(timeout=WAIT)
        assert watchdog.kick() is False  # it fired: the caller can tell
        assert watchdog.postpone(5) is False
        assert fired > 0


def test_a_live_supervisor_on_a_fake_clock_waits_hours_in_no_time() -> None:
    clock = FakeClock()
    with supervisor_on(clock, workers=1) as s:
        later = s.schedule(T.square, args=(4,), delay=timedelta(minutes=30))
        job = s.schedule(T.square, args=(3,), every=timedelta(hours=1))
        clock.advance(1799)
        s.stats()
        assert later.state is TaskState.SCHEDULED and job.runs == []
        clock.advance(2)
        assert later.result(timeout=WAIT) == 16
        assert job.runs == []  # the job's first run is an hour after the call
        clock.advance(1800)
        wait_for(lambda: len(job.runs) == 1 and job.runs[0].done())
        clock.advance(3600)
        wait_for(lambda: len(job.runs) == 2 and job.runs[1].done())
        assert [r.result() for r in job.runs] == [9, 9]
        nxt = job.next_run_at
        assert nxt is not None
        assert abs(nxt.timestamp() - (clock.time() + 3599)) < 1.5  # on the fake wall clock
        job.cancel()


def test_reschedule_and_cancel_of_a_scheduled_task(sup: Supervisor) -> None:
    task = sup.schedule(T.stamp, delay=60)
    assert task.reschedule(delay=0.05) is True
    assert task.result(timeout=WAIT) > 0
    later = sup.schedule(T.stamp, delay=60)
    assert later.cancel() is True and later.state is TaskState.CANCELLED


def test_a_recurring_job_runs_on_its_interval(sup: Supervisor) -> None:
    job = sup.schedule(T.stamp, every=0.05, delay=0, name="tick")
    assert isinstance(job, Job) and job.state is JobState.ACTIVE
    wait_for(lambda: len(job.runs) >= 4)
    assert job.result(timeout=WAIT) > 0
    assert sup.get(job.id) is job and job in sup.jobs()
    assert job.next_run_at is not None
    assert job.pause() is True and job.state is JobState.PAUSED
    assert job.resume() is True
    assert job.cancel() is True and job.state is JobState.CANCELLED
    assert job.next_run_at is None and job.kick() is False


def test_a_job_with_max_runs_finishes(sup: Supervisor) -> None:
    job = sup.schedule(T.square, args=(3,), every=0.01, max_runs=3)
    assert job.result(timeout=WAIT) == 9
    wait_for(lambda: job.state is JobState.FINISHED and len(job.runs) == 3)


def test_shutdown_cancels_jobs() -> None:
    s = Supervisor(workers=1)
    job = s.schedule(T.stamp, every=60)
    s.shutdown()
    assert job.state is JobState.CANCELLED
    with pytest.raises(Exception, match="ended without"):
        job.result(timeout=1)


def test_bad_schedules_are_refused_at_the_call(sup: Supervisor) -> None:
    with pytest.raises(ValueError, match="1 ms"):
        sup.schedule(T.stamp, every=0.0001)
    with pytest.raises(ValueError):
        sup.schedule(T.stamp, every=float("nan"))
    with pytest.raises(ValueError):
        sup.schedule(T.stamp, every=-1)
    with pytest.raises(ValueError, match="invalid cron"):
        sup.schedule(T.stamp, cron="61 * * * *")
    with pytest.raises(ValueError, match="not both"):
        sup.schedule(T.stamp, every=1, cron="* * * * *")
    with pytest.raises(ValueError, match="not both"):
        sup.schedule(T.stamp, every=1, delay=1, at=time.time())
    with pytest.raises(ValueError, match="overlap"):
        sup.schedule(T.stamp, every=1, overlap="pile")
    with pytest.raises(TypeError, match="unexpected keyword argument 'overlapp'"):
        sup.schedule(T.stamp, every=1, overlapp="skip")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"job keyword.*overlap.*one-shot"):
        sup.schedule(T.stamp, delay=1, overlap="skip")  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        sup.schedule(T.square, every=1)  # square needs an argument


def test_polling_a_one_run_job_never_sees_it_end_without_its_finished_run(
    sup: Supervisor,
) -> None:
    """A caller polls ``job.result(timeout=0)`` as a user would, while other work keeps
    the loop busy: the run COMPLETED, so every poll is "not yet" (TimeoutError) until
    the result itself, never TaskCancelled("ended without a finished run") in between
    (the loop's records must not be read half-updated from the caller's thread)."""
    for attempt in range(20):
        busy = [sup.submit(T.square, i) for i in range(300)]
        job = sup.schedule(T.square, args=(attempt,), every=3600, delay=0, max_runs=1)
        while True:
            try:
                value = job.result(timeout=0)
            except TimeoutError:
                continue
            break
        assert value == attempt * attempt
        for t in busy:
            t.result(timeout=WAIT)
