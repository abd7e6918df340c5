"""Memory follows the caller: what a caller drops is freed, what get() keeps is bounded."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import weakref
from collections.abc import Callable
from typing import Any

import psutil
import pytest

from taskwarden import JobState, Supervisor

import _tasks as T
from _live import wait_for

WAIT = 20.0
MiB = 1 << 20
N = 400  # 1 MiB results: the code before this fix grew the parent by about N MiB


def _malloc_trim() -> Callable[[int], int] | None:
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    return None


MALLOC_TRIM = _malloc_trim()


def rss() -> int:
    """Resident memory of this process, after freeing what is unreferenced and asking
    glibc to give its free pages back: what is measured is memory still referenced,
    whatever earlier tests or the allocator's caching left behind."""
    gc.collect()
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)
    return int(psutil.Process().memory_info().rss)


def settled(sup: Supervisor) -> None:
    """Wait until the loop has finished the round that resolved what we waited on (a
    command is answered only after it), then collect what is now unreferenced."""
    sup.stats()
    gc.collect()


# ------------------------------------------------------------ parent RSS
def test_a_map_of_large_results_consumed_and_dropped_frees_them(sup: Supervisor) -> None:
    list(sup.map(T.blob, range(8)))  # warm up: workers, buffers
    before = rss()
    total = 0
    for b in sup.map(T.blob, range(N)):
        total += len(b)
    del b
    grown = rss() - before
    assert total == N * MiB
    assert grown < 64 * MiB, f"the parent grew by {grown / MiB:.0f} MiB"


def test_submits_of_large_results_consumed_and_dropped_free_them(sup: Supervisor) -> None:
    list(sup.map(T.blob, range(8)))
    before = rss()
    for start in range(0, N, 20):
        batch = [sup.submit(T.blob, i) for i in range(start, start + 20)]
        for t in batch:
            assert len(t.result(timeout=WAIT)) == MiB
    del batch, t
    grown = rss() - before
    assert grown < 64 * MiB, f"the parent grew by {grown / MiB:.0f} MiB"


# ------------------------------------------------------ what the caller drops
@pytest.mark.parametrize("chunksize", [1, 4])
def test_an_object_yielded_by_map_is_freed_when_the_caller_drops_it(
    sup: Supervisor, chunksize: int
) -> None:
    results = sup.map(T.boxed, range(12), chunksize=chunksize)
    first = next(results)
    assert first.value == 0
    watch = weakref.ref(first)
    del first
    gc.collect()
    assert watch() is None  # while the map goes on
    assert [b.value for b in results] == list(range(1, 12))


def test_a_submitted_bound_methods_object_is_freed_once_the_task_ended_and_was_dropped(
    sup: Supervisor,
) -> None:
    obj = T.Holder(bytes(1000))
    watch = weakref.ref(obj)
    task = sup.submit(obj.times, 21)
    assert task.result(timeout=WAIT) == 42
    del obj, task
    settled(sup)
    assert watch() is None


def test_a_result_is_not_held_by_the_time_limit_of_a_finished_task() -> None:
    # The core's timers let go of a finished run lazily (a 60 s deadline stays in its heap):
    # the run must not hold the task or its result meanwhile.
    with Supervisor(workers=1, keep_finished=0, timeout=60) as s:
        task = s.submit(T.boxed, 7)
        box = task.result(timeout=WAIT)
        watch = weakref.ref(box)
        assert task._run.payload == b""  # the call is freed with the last attempt
        del box, task
        settled(s)
        assert watch() is None


@pytest.mark.parametrize(
    "make",
    [
        lambda h: h.times,  # a bound method
        lambda h: h,  # a callable object
        lambda h: functools.partial(h.times, 4),  # a partial
    ],
    ids=["bound-method", "callable-object", "partial"],
)
def test_the_signature_cache_keeps_no_callable_alive(
    sup: Supervisor, make: Callable[[T.Holder], Callable[..., int]]
) -> None:
    obj = T.Holder(bytes(1000))
    watch = weakref.ref(obj)
    fn = make(obj)
    args = () if isinstance(fn, functools.partial) else (4,)
    task = sup.submit(fn, *args, factor=5)  # keywords: the signature is looked up
    assert task.result(timeout=WAIT) == 20
    with pytest.raises(TypeError, match="arguments do not match"):
        sup.submit(fn, 1, 2, 3, 4)  # the check still works (and is cached)
    del obj, fn, task
    settled(sup)
    assert watch() is None


# ------------------------------------------------------------- get() later
def test_submitted_tasks_are_found_while_the_caller_holds_them(sup: Supervisor) -> None:
    tasks = [sup.submit(T.square, i) for i in range(5)]
    for t in tasks:
        t.result(timeout=WAIT)
    assert all(sup.get(t.id) is t for t in tasks)
    assert set(tasks) <= set(sup.tasks())
    ids = [t.id for t in tasks]
    del t, tasks
    settled(sup)
    assert [sup.get(i) for i in ids] == [None] * 5
    assert sup.tasks() == [] and sup.stats()["retained"] == 0


def test_scheduled_tasks_are_kept_for_get_within_a_byte_bound() -> None:
    with Supervisor(workers=1, keep_finished=1000, keep_finished_bytes=350_000) as s:
        tasks = [s.schedule(T.blob, args=(i, 100_000)) for i in range(12)]
        for t in tasks:
            assert len(t.result(timeout=WAIT)) == 100_000
        ids = [t.id for t in tasks]
        del t, tasks
        settled(s)
        kept = [i for i in ids if s.get(i) is not None]
        stats = s.stats()
        assert kept == ids[-3:] and stats["retained"] == 3  # the last ones (one worker)
        assert 300_000 <= stats["retained_bytes"] <= 350_000
        found = s.get(kept[-1])
        assert found is not None and found.result() == T.blob(ids.index(kept[-1]), 100_000)


def test_ended_jobs_leave_the_registry_and_free_what_they_held() -> None:
    with Supervisor(workers=2, keep_finished=0) as s:
        watches: list[weakref.ref[Any]] = []
        for i in range(20):
            job = s.schedule(T.boxed, args=(i,), every=0.001, delay=0, max_runs=1)
            watches.append(weakref.ref(job.result(timeout=WAIT)))
        settled(s)
        assert job.state is JobState.FINISHED and job._rec.payload == b""
        assert s.jobs() == [job]  # found while the caller holds it
        del job
        gc.collect()
        assert [w() for w in watches] == [None] * 20
        assert s.jobs() == [] and s.tasks() == []


def test_ended_jobs_are_kept_within_the_byte_bound() -> None:
    with Supervisor(workers=1, keep_finished=1000, keep_finished_bytes=350_000) as s:
        jobs = [s.schedule(T.blob, args=(i, 100_000), every=0.001, delay=0, max_runs=1)
                for i in range(8)]
        for j in jobs:
            assert len(j.result(timeout=WAIT)) == 100_000
        ids = [j.id for j in jobs]
        del j, jobs
        settled(s)
        # A job counts its last result (its run, kept apart, counts its own): of the
        # last entries (job 7, run of job 8, job 8) the bound keeps three.
        assert [j.id for j in s.jobs()] == ids[-2:]
        assert s.stats()["retained_bytes"] <= 350_000
        assert s.get(ids[0]) is None


def test_a_job_keeps_only_the_runs_kept_for_get() -> None:
    with Supervisor(workers=1, keep_finished=3) as s:
        job = s.schedule(T.square, args=(3,), every=0.005, delay=0)
        wait_for(lambda: job._rec.started >= 10)  # the job ran 10 times
        job.cancel()
        job.latest.exception(timeout=WAIT)  # type: ignore[union-attr]
        settled(s)
        finished = [r for r in job.runs if r.done()]
        assert 1 <= len(finished) <= 3
        assert job.latest is not None and job.result() == 9
        assert len(s.tasks()) <= 4  # the kept runs, and the latest if it was pushed out


def test_keep_finished_bytes_is_validated() -> None:
    for bad in (-1, 1.5, "10", True):
        with pytest.raises(ValueError, match="keep_finished_bytes"):
            Supervisor(workers=1, keep_finished_bytes=bad)


def test_the_weak_registry_of_dropped_tasks_stays_small(sup: Supervisor) -> None:
    from taskwarden.driver.supervisor import HELD_SWEEP

    for start in range(0, 3 * HELD_SWEEP, 100):
        batch = [sup.submit(T.square, i) for i in range(start, start + 100)]
        for t in batch:
            t.result(timeout=WAIT)
        del batch, t
    settled(sup)
    assert sup.tasks() == []
    assert len(sup._held) <= HELD_SWEEP  # dead references are swept, not hoarded
