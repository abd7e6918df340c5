"""Recurring jobs with real workers: cron jobs on seconds, and jobs a few ms apart."""

from __future__ import annotations

import itertools
import time

import pytest

from taskwarden import Job, Supervisor, TaskState

import _tasks as T
from _live import wait_for


def _ended(job: Job) -> bool:
    return job.state == "FINISHED" and all(t.done() for t in job.runs)


@pytest.mark.timeout(20)  # the old loop spun forever at a cron job's first run
def test_cron_jobs_on_seconds_run_again_and_again_with_every_overlap() -> None:
    with Supervisor(workers=2) as sup:
        # Workers up and _tasks imported first: a run waiting for a worker's start on a
        # loaded machine (CI: a fifth of a second) is late by that, not by the trigger.
        assert list(sup.map(T.square, range(4))) == [0, 1, 4, 9]
        jobs = {overlap: sup.schedule(T.stamp, cron="* * * * * *", overlap=overlap,
                                      max_runs=3)
                for overlap in ("skip", "parallel", "replace")}
        # Meanwhile the supervisor serves everything else.
        assert sup.submit(T.square, 3).result(timeout=5) == 9
        wait_for(lambda: all(_ended(j) for j in jobs.values()), timeout=8)
        for overlap, job in jobs.items():
            runs = job.runs
            assert [t.state for t in runs] == [TaskState.COMPLETED] * 3, overlap
            stamps = [t.result() for t in runs]
            # Each run on its second: one second apart, at the start of the second.
            gaps = [b - a for a, b in itertools.pairwise(stamps)]
            assert all(0.7 < g < 1.3 for g in gaps), (overlap, gaps)
            assert all(s % 1.0 < 0.3 for s in stamps), (overlap, stamps)
        # No run was made twice (job runs are kept; the dropped submit() task is not).
        assert len(sup.tasks()) == 3 * 3


@pytest.mark.parametrize("every", [0.002, 0.005])
def test_a_fast_job_with_overlap_skip_loses_no_slot(every: float) -> None:
    n = 60
    with Supervisor(workers=2) as sup:
        # time.time: nothing to import in a fresh worker, so no run is slow by itself.
        job = sup.schedule(time.time, every=every, delay=0, overlap="skip", max_runs=n)
        wait_for(lambda: _ended(job), timeout=10)
        stamps = sorted(t.result() for t in job.runs)
    slots = (stamps[-1] - stamps[0]) / every + 1
    # The old loop counted a run handed over early as running, and skipped the next
    # slots: one run in 2 (5 ms) to 6 (2 ms). Late slots on a loaded machine coalesce.
    assert n / slots > 0.6, (n, slots)  # the old loop: 0.5 at 5 ms, 1/6 at 2 ms


def test_a_fast_job_with_overlap_replace_replaces_only_runs_still_running() -> None:
    n = 60
    with Supervisor(workers=2) as sup:
        job = sup.schedule(time.time, every=0.005, delay=0, overlap="replace", max_runs=n)
        wait_for(lambda: _ended(job), timeout=10)
        states = [t.state for t in job.runs]
        replaced = sup.stats()["workers_replaced"]
    superseded = states.count(TaskState.SUPERSEDED)
    # A trivial run ends well within 5 ms; the old loop superseded (and killed a worker
    # for) nearly every one. A loaded machine may make a few really overrun.
    assert superseded <= n // 10, states
    assert replaced <= n // 10
