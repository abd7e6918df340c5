"""Hardening of the pure core (fake clock): cron slots, fast jobs, cancels that wait for
the worker's answer, kick of a queued task, retries without end."""

from __future__ import annotations

from typing import Any

import pytest

from taskwarden import TaskCancelled, TaskState
from taskwarden.core import engine as E
from taskwarden.core.jobs import CronTrigger, JobRec

from _harness import Harness, JobHarness


class Jobs(JobHarness):
    """A core with jobs; the wall clock reads a whole second at the start."""

    def job(self, first_in: float | None = None, **kw: Any) -> JobRec:
        job = super().job(first_in, **kw)
        self.take()
        return job

    def run_for(self, job: JobRec, seconds: float, step: float, run_time: float) -> None:
        """Let time pass in ``step``s; each run of ``job`` ends ``run_time`` after it began."""
        end = self.now + seconds
        while self.now < end:
            self.tick(step)
            for run in list(job.live):
                if (run.state is TaskState.RUNNING and run.started_at is not None
                        and run.started_at + run_time <= self.now):
                    self.finish(run)
                    self.take()


# ---------------------------------------------------------------- 1. cron
@pytest.mark.timeout(10)  # the old core looped forever inside advance()
def test_a_seconds_cron_job_fires_once_per_slot() -> None:
    h = Jobs()
    start = h.now
    job = h.job(cron=CronTrigger("* * * * * *"))
    runs = []
    for second in (1, 2, 3):
        h.now = start + second - E.LEAD  # the job's timer fires LEAD before its slot
        h.core.advance(h.now)
        h.take()
        assert job.started == second
        run = job.latest
        assert run is not None and run.not_before == pytest.approx(start + second)
        assert job.wall_due == 1_700_000_000.0 + second + 1  # the next slot, not this one
        h.now = start + second + 0.5
        h.core.advance(h.now)
        h.finish(run)
        h.take()
        runs.append(run)
    assert [r.state for r in runs] == [TaskState.COMPLETED] * 3


@pytest.mark.timeout(10)
@pytest.mark.parametrize("overlap", ["parallel", "replace"])
def test_a_cron_job_that_overlaps_starts_one_run_per_slot(overlap: str) -> None:
    h = Jobs()
    start = h.now
    job = h.job(cron=CronTrigger("* * * * * *"), overlap=overlap)
    for second in (1, 2):  # the runs never end
        h.now = start + second - E.LEAD
        h.core.advance(h.now)
        h.now = start + second
        h.core.advance(h.now)
        h.take()
        assert job.started == second


# --------------------------------------------------------- 11. fast jobs
def test_a_1_ms_job_with_overlap_skip_runs_at_every_slot() -> None:
    h = Jobs()
    job = h.job(first_in=0.0, every=0.001, overlap="skip")
    h.run_for(job, 0.1, step=0.0001, run_time=0.0003)
    # One run per slot: a run handed over early is not "the previous run still running".
    assert job.started >= 99


def test_a_fast_job_with_overlap_replace_supersedes_nothing_that_ended() -> None:
    h = Jobs()
    job = h.job(first_in=0.0, every=0.005, overlap="replace")
    kills = 0
    end = h.now + 0.5
    while h.now < end:
        h.tick(0.0005)
        kills += sum(isinstance(a, E.Kill) for a in h.actions)
        for run in list(job.live):
            if run.state is TaskState.RUNNING and run.started_at is not None \
                    and run.started_at + 0.001 <= h.now:
                h.finish(run)
                kills += len(h.take(E.Kill))
    runs = list(job.runs)
    assert len(runs) >= 99
    assert not [r for r in runs if r.state is TaskState.SUPERSEDED]
    assert kills == 0


def test_replace_still_kills_a_previous_run_that_is_running_at_the_slot() -> None:
    h = Jobs()
    job = h.job(first_in=0.0, every=0.01, overlap="replace")
    h.tick(0.001)
    first = job.latest
    assert first is not None and first.state is TaskState.RUNNING
    h.now += 0.004  # within LEAD of the next slot: not decided yet
    h.core.advance(h.now)
    assert first.state is TaskState.RUNNING and not h.take(E.Kill)
    h.now += 0.005  # the slot
    h.core.advance(h.now)
    assert first.state is TaskState.SUPERSEDED and h.take(E.Kill)
    assert job.started == 2


def test_skip_still_skips_while_the_previous_run_really_runs() -> None:
    h = Jobs()
    job = h.job(first_in=0.0, every=0.002, overlap="skip")
    h.run_for(job, 0.05, step=0.0005, run_time=1.0)
    assert job.started == 1


def test_queue_keeps_one_run_waiting_behind_a_long_one() -> None:
    h = Jobs()
    job = h.job(first_in=0.0, every=0.002, overlap="queue")
    h.run_for(job, 0.05, step=0.0005, run_time=1.0)
    assert job.started == 1 and job.queued


# ------------------------------------------- 13. cancel of a prefetched run
def _prefetched() -> tuple[Harness, E.Run, E.Run]:
    h = Harness(workers=1, prefetch=4)
    head, behind = h.run(), h.run()
    assert behind.worker is head.worker and behind.state is TaskState.PENDING
    h.take()
    return h, head, behind


def test_a_cancelled_prefetched_run_that_began_anyway_keeps_its_result() -> None:
    h, head, behind = _prefetched()
    assert h.core.cancel(behind, h.now) is None  # not known until the worker answers
    assert not h.take(E.Resolve)
    h.finish(head)
    h.tick(0.001)  # the worker had begun it: its result comes before the skip timer
    h.finish(behind, "ran")
    assert behind.state is TaskState.COMPLETED and behind.value == "ran"
    assert [a.run for a in h.take(E.Resolve)] == [behind]
    h.tick(E.SKIP_ACK_WAIT)
    assert not h.take(E.Kill)


def test_a_cancelled_prefetched_run_at_the_head_without_an_answer_is_killed_first() -> None:
    h, head, behind = _prefetched()
    h.core.cancel(behind, h.now)
    assert not h.take(E.Resolve)
    h.finish(head)
    h.take()
    h.tick(E.SKIP_ACK_WAIT)
    kinds = [type(a) for a in h.actions if isinstance(a, (E.Kill, E.Resolve))]
    assert kinds == [E.Kill, E.Resolve]  # resolved with the kill: once the process is gone
    kill = next(a for a in h.actions if isinstance(a, E.Kill))
    assert kill.run is behind
    assert behind.state is TaskState.CANCELLED and isinstance(behind.value, TaskCancelled)


def test_a_kill_names_the_cancelled_runs_behind_the_head() -> None:
    h = Harness(workers=1, prefetch=4)
    head = h.run(timeout=1.0)
    behind = h.run()
    h.take()
    h.core.cancel(behind, h.now)
    h.take()
    h.tick(1.0)  # the head times out; the worker may have begun the cancelled run
    kill = next(a for a in h.actions if isinstance(a, E.Kill))
    assert kill.run is head and kill.also == (behind,)
    assert behind.state is TaskState.CANCELLED


def test_a_cancelled_prefetched_run_on_a_worker_that_dies_ends_cancelled() -> None:
    h, head, behind = _prefetched()
    wid = head.worker.wid if head.worker else -1
    h.core.cancel(behind, h.now)
    h.core.worker_exited(wid, -9, h.now)
    assert behind.state is TaskState.CANCELLED and behind not in h.core.pending


# --------------------------------------------------------------- 13. kick
def test_kick_of_a_queued_task_without_a_delay_moves_nothing() -> None:
    h = Harness(workers=1, prefetch=1)
    h.run()
    queued = h.run()
    assert queued.state is TaskState.PENDING and queued.worker is None
    assert h.core.reschedule(queued, h.now, h.now) is False
    assert queued.state is TaskState.PENDING
    assert h.core.reschedule(queued, h.now + 5, h.now) is True
    assert queued.state is TaskState.SCHEDULED


# ----------------------------------------------------- 2. retries without end
def test_retries_without_end_do_not_overflow_the_backoff() -> None:
    h = Harness(workers=1)
    run = h.run(retries=10**6, retry_delay=0.001)
    for _ in range(1100):
        if run.state is TaskState.SCHEDULED:
            h.tick(300.0)  # the longest backoff
        assert run.state is TaskState.RUNNING
        h.finish(run, ValueError("again"), ok=False)
        h.take()
    assert run.attempts == 1100
