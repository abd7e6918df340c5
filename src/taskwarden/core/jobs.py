"""Recurring jobs: triggers (fixed interval, cron), overlap and anchor rules.

Pure like the engine: the engine calls in when a job's timer fires and when
one of its runs ends; the job starts runs through the engine. Times are the
engine's monotonic clock; cron and ``at`` are computed on the wall clock and
mapped through ``Core.wall_offset``, which the driver keeps current, so that
a clock step or a suspend moves them to the right monotonic instant.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from .._errors import TaskSuperseded
from .._states import JobState, TaskState, check_job
from .model import RUNS_KEPT, CronTrigger, JobRec, Run
from .timers import JOB, Timings

__all__ = ["RUNS_KEPT", "CronTrigger", "JobBook", "JobHost", "JobRec"]


class JobHost(Protocol):
    """What the job rules need of the core (``engine.Core``): its clock offset and
    timers, and a way to add, cancel and announce runs (``add_run`` and ``cancel_run``
    do not dispatch: the input that called in ends with the core's one dispatch)."""

    wall_offset: float
    wall_anchored: dict[tuple[str, int], Any]
    timings: Timings

    def push_timer(self, when: float, kind: int, obj: Any, gen: int) -> None: ...

    def add_run(self, run: Run, now: float, due: float | None = None,
                wall_due: float | None = None) -> Run: ...

    def cancel_run(self, run: Run, now: float, state: TaskState = TaskState.CANCELLED,
                   error: BaseException | None = None) -> bool | None: ...

    def job_changed(self, job: JobRec) -> None: ...

    def new_job_run(self, job: JobRec) -> Run: ...

class JobBook:
    """The engine's jobs: timers, runs started, overlap and anchor rules."""

    def __init__(self, core: JobHost) -> None:
        self.core = core
        self.jobs: dict[int, JobRec] = {}

    # ------------------------------------------------------------- timing
    def _wall(self, now: float) -> float:
        return now + self.core.wall_offset

    def _arm(self, job: JobRec, due: float, wall_due: float | None = None) -> None:
        job.gen += 1
        job.due = due
        job.wall_due = wall_due
        if wall_due is not None:
            self.core.wall_anchored[("job", job.seq)] = job
        else:
            self.core.wall_anchored.pop(("job", job.seq), None)
        self.core.push_timer(due - self.core.timings.lead, JOB, job, job.gen)
        self.core.job_changed(job)

    def _disarm(self, job: JobRec) -> None:
        job.gen += 1
        job.due = None
        job.wall_due = None
        self.core.wall_anchored.pop(("job", job.seq), None)
        self.core.job_changed(job)

    def _arm_next_after(self, job: JobRec, now: float, wall_from: float | None = None) -> None:
        """The next run from ``now`` on: one interval, or the next cron time (after
        ``wall_from`` if that is later: the slot just fired, which ``now`` may precede)."""
        if job.cron is not None:
            wall = self._wall(now)
            if wall_from is not None and wall_from > wall:
                wall = wall_from
            wall = job.cron.next_after(wall)
            self._arm(job, wall - self.core.wall_offset, wall)
        else:
            assert job.every is not None
            self._arm(job, now + job.every)

    def rewall(self, job: JobRec) -> None:
        """The wall clock moved against the monotonic one: re-place the next run."""
        if job.wall_due is not None and job.state is JobState.ACTIVE:
            self._arm(job, job.wall_due - self.core.wall_offset, job.wall_due)

    # -------------------------------------------------------------- input
    def add(self, job: JobRec, now: float, first_due: float | None,
            first_wall: float | None = None) -> None:
        """Register a job; its first run is at ``first_due``, else one interval from now."""
        self.jobs[job.seq] = job
        if first_due is not None:
            self._arm(job, first_due, first_wall)
        else:
            self._arm_next_after(job, now)

    def fire(self, job: JobRec, now: float) -> None:
        if job.state is not JobState.ACTIVE:
            return
        if job.until is not None and self._wall(now) > job.until:
            self._finish(job, now)
            return
        slot = job.due if job.due is not None else now
        live = [r for r in job.live if not r.state.final]
        if live and job.overlap != "parallel":
            if slot > now:
                # Fired LEAD early. Whether the previous run is still running is asked at
                # the slot itself: a fast job's previous run has not even begun yet.
                self.core.push_timer(slot, JOB, job, job.gen)
                return
            if any(not _has_begun(r, now) for r in live):
                # The previous run waits for a worker: it stands for this slot too
                # (late runs are coalesced, never piled up).
                live = []
                start = False
            else:
                start = True
        else:
            start = True
        if live:
            if job.overlap == "skip":
                start = False
            elif job.overlap == "queue":
                job.queued = True  # coalesced: at most one run waits
                start = False
            elif job.overlap == "replace":
                for old in live:
                    self.core.cancel_run(old, now, TaskState.SUPERSEDED,
                                     TaskSuperseded("replaced by the job's next run"))
        if start:
            self._start_run(job, now, slot)
        if job.state is not JobState.ACTIVE:
            return
        # The next run. anchor="end" waits for the run to end (unless none started).
        if job.anchor == "end" and start:
            self._disarm(job)
        elif job.cron is not None:
            self._arm_next_after(job, now, job.wall_due)
        else:
            assert job.every is not None
            if job.anchor == "end":
                self._arm(job, now + job.every)
            else:
                # Fixed rate on the grid of the first slot; missed slots collapse into one.
                nxt = slot + job.every
                if nxt <= now:
                    nxt = slot + job.every * (math.floor((now - slot) / job.every) + 1)
                self._arm(job, nxt)

    def _start_run(self, job: JobRec, now: float, slot: float | None = None) -> None:
        run = self.core.new_job_run(job)
        if slot is not None and slot > now:
            run.not_before = slot  # fired a little early on purpose: begin on time
        job.started += 1
        job.live.append(run)
        job.runs.append(run)
        job.latest = run
        self.core.add_run(run, now)
        if job.max_runs is not None and job.started >= job.max_runs:
            self._finish(job, now)

    def run_ended(self, run: Run, now: float) -> None:
        job = run.job
        assert job is not None
        if run in job.live:
            job.live.remove(run)
        if job.state is not JobState.ACTIVE:
            return
        if job.queued and not any(not r.state.final for r in job.live):
            job.queued = False
            self._start_run(job, now)
            if job.state is not JobState.ACTIVE:
                return
        if job.anchor == "end" and job.due is None:
            if job.cron is not None:
                self._arm_next_after(job, now)
            else:
                assert job.every is not None
                self._arm(job, now + job.every)

    # ------------------------------------------------------------ control
    def _set(self, job: JobRec, new: JobState) -> None:
        job.state = check_job(job.state, new)

    def _finish(self, job: JobRec, now: float) -> None:
        self._disarm(job)
        self._set(job, JobState.FINISHED)
        self.jobs.pop(job.seq, None)
        self.core.job_changed(job)

    def pause(self, job: JobRec, now: float) -> bool:
        if job.state is not JobState.ACTIVE:
            return False
        self._disarm(job)
        self._set(job, JobState.PAUSED)
        self.core.job_changed(job)
        return True

    def resume(self, job: JobRec, now: float) -> bool:
        if job.state is not JobState.PAUSED:
            return False
        self._set(job, JobState.ACTIVE)
        self._arm_next_after(job, now)
        self.core.job_changed(job)
        return True

    def cancel(self, job: JobRec, now: float, kill_running: bool) -> bool:
        if job.state in (JobState.FINISHED, JobState.CANCELLED):
            return False
        self._disarm(job)
        self._set(job, JobState.CANCELLED)
        self.jobs.pop(job.seq, None)
        job.queued = False
        if kill_running:
            for run in list(job.live):
                self.core.cancel_run(run, now)
        self.core.job_changed(job)
        return True

    def kick(self, job: JobRec, now: float) -> bool:
        """Restart the countdown: the next run is one interval (or cron step) from now."""
        if job.state is not JobState.ACTIVE:
            return False
        self._arm_next_after(job, now)
        return True

    def reschedule(self, job: JobRec, now: float, due: float, wall_due: float | None) -> bool:
        if job.state is not JobState.ACTIVE:
            return False
        self._arm(job, due, wall_due)
        return True


def _has_begun(run: Run, now: float) -> bool:
    """The run is executing on a worker (not queued, nor waiting for its start time)."""
    return run.state is TaskState.RUNNING and (run.started_at is None or run.started_at <= now)
