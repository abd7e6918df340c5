"""``Core.handle``: each input's own effect first, then one dispatch, then the actions.

The paths where the dispatch used to run in the middle of an input (shutdown, a job
starting or replacing a run, a supersede) are driven through ``handle`` here."""

from __future__ import annotations

from typing import Any

import pytest

from taskwarden import TaskState
from taskwarden._policy import Policy
from taskwarden.core import engine as E
from taskwarden.core.jobs import JobRec
from taskwarden.pool import base as P


class Fed:
    """A core driven only through ``handle``, with a fake clock; counts its dispatches."""

    def __init__(self, workers: int = 1, ready: bool = True, **kw: Any) -> None:
        self.now = 1000.0
        self.seq = 0
        self.core = E.Core(workers, seqs=self._seqs(), **kw)
        self.dispatches = 0
        inner = self.core._dispatch

        def counted(now: float) -> None:
            self.dispatches += 1
            inner(now)

        setattr(self.core, "_dispatch", counted)  # noqa: B010 - an instance attribute
        self.booting: list[int] = []
        self.feed(E.Start())
        if ready:  # the first ones; the spare their first READY starts is left booting
            for wid in list(self.booting):
                self.ready(wid)

    def _seqs(self) -> Any:
        while True:
            self.seq += 1
            yield self.seq

    def feed(self, item: E.Command | P.Event) -> list[E.Action]:
        before = self.dispatches
        actions = list(self.core.handle(item, self.now))
        assert self.dispatches == before + 1, f"{type(item).__name__} dispatched " \
            f"{self.dispatches - before} times"
        self.booting += [a.wid for a in actions if isinstance(a, E.Spawn)]
        return actions

    def ready(self, wid: int) -> list[E.Action]:
        self.booting.remove(wid)
        return self.feed(P.WorkerReady(wid, 10_000 + wid))

    def add(self, **policy: Any) -> tuple[E.Run, list[E.Action]]:
        run = E.Run(self.seq + 1, b"", Policy(**policy))
        self.seq += 1
        return run, self.feed(E.Add(run))

    def tick(self, dt: float) -> list[E.Action]:
        self.now += dt
        return self.feed(E.TICK)


def _sent(actions: list[E.Action]) -> list[int]:
    return [r.seq for a in actions if isinstance(a, E.Send) for r in a.runs]


def _killed(actions: list[E.Action]) -> list[int]:
    return [a.wid for a in actions if isinstance(a, E.Kill)]


def test_every_input_dispatches_exactly_once_at_its_end() -> None:
    f = Fed(workers=2, prefetch=4)
    runs = [f.add()[0] for _ in range(6)]
    head = runs[0]
    assert head.worker is not None
    wid = head.worker.wid
    f.feed(P.Beat(wid, head.seq, None, False))
    f.feed(P.RunDone(wid, head.seq, True, 1, None, None, False))
    f.feed(E.Cancel(runs[-1]))
    f.feed(E.Reschedule(runs[-2], f.now + 1))
    job = JobRec(f.seq + 1, b"", Policy(), every=0.5)
    f.seq += 1
    f.feed(E.AddJob(job))
    f.feed(E.JobControl(job, "kick"))
    f.feed(E.ClockChanged(5.0))
    f.tick(0.6)
    f.feed(P.WorkerExited(wid, -9))
    f.feed(P.WorkerRetiring(next(iter(f.core.workers)), 1 << 30))
    f.feed(E.Close(False))
    f.feed(P.InitFailed(0, "Traceback"))


def test_a_run_that_frees_a_worker_is_followed_by_the_next_send_in_the_same_answer() -> None:
    f = Fed(workers=1, prefetch=1)
    a, _ = f.add()
    b, queued = f.add()
    assert _sent(queued) == [] and b.state is TaskState.PENDING
    assert a.worker is not None
    answer = f.feed(P.RunDone(a.worker.wid, a.seq, True, 1, None, None, False))
    assert [type(x) for x in answer] == [E.Resolve, E.Send]  # the outcome, then the next run
    assert _sent(answer) == [b.seq] and b.state is TaskState.RUNNING


def test_close_gives_a_queued_run_to_a_worker_still_starting_rather_than_killing_it() -> None:
    f = Fed(workers=1, prefetch=1, ready=False)
    (wid,) = f.booting
    run, actions = f.add()
    assert _sent(actions) == [run.seq]  # handed to the worker that is still starting
    closing = f.feed(E.Close(False))
    assert _killed(closing) == [] and wid in f.core.workers  # it has work: waited for
    f.ready(wid)
    assert run.state is TaskState.RUNNING


def test_close_kills_a_worker_still_starting_with_nothing_to_do() -> None:
    f = Fed(workers=1, prefetch=1)
    (spare,) = f.booting  # the first ready worker started the spare
    closing = f.feed(E.Close(False))
    assert spare in _killed(closing) and spare not in f.core.workers
    assert not any(isinstance(a, E.Spawn) for a in closing)  # and starts none


def test_close_with_runs_waiting_kills_the_idle_spare_and_starts_no_other() -> None:
    f = Fed(workers=1, prefetch=1)
    (spare,) = f.booting
    running, _ = f.add()
    waiting, _ = f.add()
    closing = f.feed(E.Close(False))
    assert _killed(closing) == [spare]
    assert not any(isinstance(a, E.Spawn) for a in closing)
    assert running.state is TaskState.RUNNING and waiting.state is TaskState.PENDING
    assert running.worker is not None
    after = f.feed(P.RunDone(running.worker.wid, running.seq, True, 1, None, None, False))
    assert _sent(after) == [waiting.seq]  # a run already due still runs at shutdown


def test_a_job_run_started_by_a_tick_is_sent_in_the_same_answer() -> None:
    f = Fed(workers=1, prefetch=1)
    job = JobRec(f.seq + 1, b"", Policy(), every=1.0)
    f.seq += 1
    f.feed(E.AddJob(job))
    actions = f.tick(1.0)
    new = [a.run for a in actions if isinstance(a, E.NewRun)]
    assert len(new) == 1 and _sent(actions) == [new[0].seq]
    assert new[0].state is TaskState.RUNNING


@pytest.mark.parametrize("overlap", ["replace", "parallel"])
def test_a_job_replacing_or_overlapping_its_run_sends_the_new_one_in_the_same_answer(
    overlap: str,
) -> None:
    f = Fed(workers=2, prefetch=1)
    job = JobRec(f.seq + 1, b"", Policy(), every=1.0, overlap=overlap)
    f.seq += 1
    f.feed(E.AddJob(job))
    first = next(a.run for a in f.tick(1.0) if isinstance(a, E.NewRun))
    assert first.state is TaskState.RUNNING and first.worker is not None
    old_wid = first.worker.wid
    actions = f.tick(1.0)
    second = next(a.run for a in actions if isinstance(a, E.NewRun))
    assert _sent(actions) == [second.seq] and second.state is TaskState.RUNNING
    if overlap == "replace":
        assert _killed(actions) == [old_wid] and first.state is TaskState.SUPERSEDED
    else:
        assert _killed(actions) == [] and first.state is TaskState.RUNNING


def test_a_supersede_of_a_running_run_hands_the_new_one_over_in_the_same_answer() -> None:
    f = Fed(workers=1, prefetch=1)
    old, _ = f.add(key="k", on_conflict="supersede")
    assert old.worker is not None
    old_wid = old.worker.wid
    new, actions = f.add(key="k", on_conflict="supersede")
    assert old.state is TaskState.SUPERSEDED and _killed(actions) == [old_wid]
    assert _sent(actions) == [new.seq]  # to the spare, whose start it waits for
    assert new.worker is not None and new.worker.wid != old_wid


def test_add_many_adds_each_run_in_order_with_one_dispatch() -> None:
    f = Fed(workers=2)
    now_runs = [E.Run(f.seq + i, b"", Policy()) for i in (1, 2, 3)]
    later = E.Run(f.seq + 4, b"", Policy(), f.now + 60)
    keyed = E.Run(f.seq + 5, b"", Policy(key="k"), f.now + 30)
    f.seq += 5
    actions = f.feed(E.AddMany([now_runs[0], later, now_runs[1], keyed, now_runs[2]]))
    sends = [[r.seq for r in a.runs] for a in actions if isinstance(a, E.Send)]
    # Handed out after them all (one Send per worker), each worker's in the order given.
    assert len(sends) == 2 and all(s == sorted(s) for s in sends)
    assert sorted(seq for s in sends for seq in s) == [r.seq for r in now_runs]
    assert later.state is TaskState.SCHEDULED and keyed.state is TaskState.SCHEDULED
    assert f.core.scheduled == 2 and f.core.by_state[TaskState.SCHEDULED] == 2
    assert {id(r) for r in f.core.armed_starts()} == {id(later), id(keyed)}
    assert later.more is None  # a plain scheduled run has none of the rarer fields
    assert f.core.streams["k"][0] is keyed  # the long way (a key) was taken for it
    f.now += 31
    f.feed(E.TICK)
    assert keyed.state is not TaskState.SCHEDULED and later.state is TaskState.SCHEDULED


def test_a_run_moved_away_and_back_to_its_time_starts_once() -> None:
    f = Fed(workers=1)
    run = E.Run(f.seq + 1, b"", Policy(), f.now + 10)
    f.seq += 1
    f.feed(E.AddMany([run]))
    first = run.due
    for due in (f.now + 20, first):  # away, and back: the first entry is live again
        f.feed(E.Reschedule(run, due))
    assert len(f.core._starts) == 3 and len(f.core.armed_starts()) == 2
    f.now += 11
    actions = f.feed(E.TICK)
    assert run.state is TaskState.RUNNING and run.attempts == 1
    assert [r.seq for a in actions if isinstance(a, E.Send) for r in a.runs] == [run.seq]
    f.now += 10
    assert f.feed(E.TICK) == [] and run.attempts == 1
    assert not f.core._starts  # the other entries went as stale
