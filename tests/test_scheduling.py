"""Scheduling on the pure core with a fake clock: one-shot starts, jobs, cron, clock steps."""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from taskwarden import JobState, TaskState
from taskwarden._policy import Policy
from taskwarden.core import engine as E
from taskwarden.core.jobs import CronTrigger, JobRec

from _harness import Harness, JobHarness


def test_first_run_is_one_interval_after_scheduling() -> None:
    h = JobHarness()
    job = h.job(every=10.0)
    h.tick(9.999 - E.LEAD)
    assert job.started == 0
    h.tick(0.001)
    assert job.started == 1 and job.latest is not None
    assert job.latest.state is TaskState.RUNNING
    assert job.latest.not_before == pytest.approx(h.now + E.LEAD)


def test_delay_zero_starts_now() -> None:
    h = JobHarness()
    job = h.job(first_in=0.0, every=10.0)
    h.tick(0)
    assert job.started == 1


def test_fixed_rate_does_not_drift_with_run_time() -> None:
    h = JobHarness()
    job = h.job(every=1.0)
    starts = []
    for _ in range(5):
        assert job.due is not None
        h.tick(job.due - h.now)
        starts.append(h.now)
        h.tick(0.3)  # the run takes 0.3 s
        h.finish_latest(job)
    assert [round(b - a, 9) for a, b in itertools.pairwise(starts)] == [1.0] * 4


def test_fixed_delay_waits_an_interval_after_each_run_ends() -> None:
    h = JobHarness()
    job = h.job(every=1.0, anchor="end")
    h.tick(1.0)
    assert job.started == 1 and job.due is None  # no next run while this one runs
    h.tick(0.5)
    h.finish_latest(job)
    assert job.due == pytest.approx(h.now + 1.0)


def test_late_runs_are_coalesced_into_one_after_a_stall() -> None:
    h = JobHarness()
    job = h.job(every=1.0)
    h.tick(5.5)  # the loop was stalled across five slots
    assert job.started == 1
    assert job.due == pytest.approx(h.now + 0.5)  # back on the grid, no pile-up


def test_overlap_skip_starts_nothing_while_the_previous_run_runs() -> None:
    h = JobHarness()
    job = h.job(every=1.0)
    h.tick(1.0)
    h.tick(1.0)
    assert job.started == 1


def test_overlap_queue_runs_one_coalesced_run_after_the_previous_ends() -> None:
    h = JobHarness()
    job = h.job(every=1.0, overlap="queue")
    h.tick(1.0)
    h.tick(1.0)
    h.tick(1.0)
    assert job.started == 1 and job.queued
    h.finish_latest(job)
    assert job.started == 2 and job.latest is not None
    assert job.latest.state is TaskState.RUNNING


def test_overlap_parallel_starts_regardless() -> None:
    h = JobHarness()
    job = h.job(every=1.0, overlap="parallel")
    h.tick(1.0)
    h.tick(1.0)
    assert job.started == 2 and len(job.live) == 2


def test_overlap_replace_kills_the_previous_run() -> None:
    h = JobHarness()
    job = h.job(every=1.0, overlap="replace")
    h.tick(1.0)
    first = job.latest
    h.tick(1.0)
    assert first is not None and first.state is TaskState.SUPERSEDED
    assert any(isinstance(a, E.Kill) for a in h.actions)
    assert job.latest is not first


def test_max_runs_finishes_the_job() -> None:
    h = JobHarness()
    job = h.job(every=1.0, max_runs=2, overlap="parallel")
    h.tick(1.0)
    h.tick(1.0)
    assert job.state is JobState.FINISHED and job.due is None
    h.tick(5.0)
    assert job.started == 2


def test_until_ends_the_job() -> None:
    h = JobHarness()
    job = h.job(every=1.0, overlap="parallel", until=h.wall + 2.5)
    h.tick(1.0)
    h.tick(1.0)
    h.tick(1.0)
    assert job.started == 2 and job.state is JobState.FINISHED


def test_kick_restarts_the_countdown() -> None:
    h = JobHarness()
    job = h.job(every=10.0)
    h.tick(8.0)
    assert h.core.jobs.kick(job, h.now) is True
    h.tick(9.0)
    assert job.started == 0
    h.tick(1.0)
    assert job.started == 1


def test_pause_and_resume() -> None:
    h = JobHarness()
    job = h.job(every=1.0)
    assert h.core.jobs.pause(job, h.now) is True
    h.tick(10.0)
    assert job.started == 0 and job.state is JobState.PAUSED
    assert h.core.jobs.resume(job, h.now) is True
    h.tick(1.0)
    assert job.started == 1


def test_cancel_with_kill_running() -> None:
    h = JobHarness()
    job = h.job(every=1.0)
    h.tick(1.0)
    run = job.latest
    assert h.core.jobs.cancel(job, h.now, kill_running=True) is True
    assert run is not None and run.state is TaskState.CANCELLED
    assert job.state is JobState.CANCELLED
    h.tick(10)
    assert job.started == 1


def test_shutdown_cancels_jobs() -> None:
    h = JobHarness()
    job = h.job(every=1.0)
    h.core.close(h.now, cancel_pending=False)
    assert job.state is JobState.CANCELLED


def test_cron_follows_the_wall_clock() -> None:
    h = JobHarness()
    job = h.job(cron=CronTrigger("*/5 * * * *", timezone.utc))
    assert job.wall_due is not None and job.wall_due % 300 == 0
    assert 0 < job.wall_due - h.wall <= 300


def test_cron_across_a_dst_change_keeps_local_wall_time() -> None:
    # Europe/Berlin moved from CET to CEST at 2024-03-31 02:00 local time.
    tz = ZoneInfo("Europe/Berlin")
    trigger = CronTrigger("30 3 * * *", tz)
    before = datetime(2024, 3, 29, 12, 0, tzinfo=tz).timestamp()
    first = trigger.next_after(before)
    second = trigger.next_after(first)
    assert datetime.fromtimestamp(first, tz).hour == 3
    assert datetime.fromtimestamp(second, tz).hour == 3
    assert second - first == 23 * 3600  # the night the clocks went forward


def test_an_invalid_cron_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid cron"):
        CronTrigger("every tuesday")


def test_an_interval_under_a_millisecond_is_refused() -> None:
    with pytest.raises(ValueError, match="1 ms"):
        JobRec(1, b"", Policy(), every=0.0001)


def test_a_wall_clock_start_moves_with_a_clock_step() -> None:
    h = Harness(workers=1)
    h.core.wall_offset = 0.0
    run = E.Run(99, b"", Policy())
    h.core.add(run, h.now, h.now + 86_400, wall_due=h.now + 86_400)
    # The wall clock jumps one hour ahead (or the machine slept for an hour).
    h.core.clock_changed(3600.0, h.now)
    h.tick(86_400 - 3600 - 1)
    assert run.state is TaskState.SCHEDULED
    h.tick(1)
    assert run.state is TaskState.RUNNING


def test_a_far_future_start_does_not_wake_the_core_before_it_is_due() -> None:
    h = Harness(workers=1)
    for i in range(1000):
        h.core.add(E.Run(1000 + i, b"", Policy()), h.now, h.now + 3600 + i)
    assert h.core.next_deadline() == pytest.approx(h.now + 3600 - E.LEAD)


def test_cancelling_scheduled_tasks_keeps_the_heap_bounded() -> None:
    h = Harness(workers=1)
    runs = [E.Run(1000 + i, b"", Policy()) for i in range(5000)]
    for r in runs:
        h.core.add(r, h.now, h.now + 3600)
    for r in runs:
        h.core.cancel(r, h.now)
    assert h.core.next_deadline() is None
    assert len(h.core._starts) < 5000
