"""Random sequences of events against the pure core: its invariants must always hold.

Each seed drives one core through a few hundred events (adds with every policy,
cancels, reschedules, results, crashes, skips, jobs, clock steps, a broken pool,
shutdown, time passing) and checks after every one that no run is lost or in two
places, that the busy count is right and that no impossible transition happens.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from taskwarden._policy import Policy
from taskwarden._states import TaskState as S
from taskwarden.core import engine as E
from taskwarden.core.jobs import JobRec


def check_invariants(core: E.Core, runs: list[E.Run]) -> None:
    busy = sum(1 for w in core.workers.values() if w.inflight)
    assert core.busy == busy, f"busy {core.busy} != {busy}"
    inflight = {}
    for w in core.workers.values():
        for i, r in enumerate(w.inflight):
            assert r.worker is w
            assert i == 0 or r.state is not S.RUNNING, f"{r} runs behind the head"
            inflight[id(r)] = w
    pending = [id(r) for r in core.pending]
    assert len(pending) == len(set(pending)), "a run is twice in the queue"
    for r in core.pending:
        assert r.state is S.PENDING and r.worker is None, f"{r} in the queue"
    armed = {id(e[3]) for e in core._heap if e[2] == E.START and e[3].gen == e[4]}
    for r in runs:
        if r.state.final:
            continue
        if r.state is S.RUNNING:
            w = inflight.get(id(r))
            assert w is not None and w.inflight[0] is r, f"{r} is lost"
        elif r.state is S.PENDING:
            places = (id(r) in pending) + (id(r) in inflight) + r.blocked
            assert places == 1, f"{r} is in {places} places"
        else:
            assert (id(r) in armed) != r.blocked, f"{r} will never start"
    if core.broken is not None:
        assert not core.pending, "a broken pool keeps runs waiting"


def run_seed(seed: int, steps: int = 250, broken: bool = False) -> None:
    rnd = random.Random(seed)
    now = 1000.0
    seqs = itertools.count(1)
    core = E.Core(rnd.choice([1, 2, 3]), prefetch=rnd.choice([1, 4, 16]),
                  max_tasks_per_worker=rnd.choice([None, None, 3]), seqs=seqs)
    runs: list[E.Run] = []
    booting: list[int] = []
    skip_acks: list[tuple[int, int]] = []
    stopped: list[int] = []
    jobs: list[JobRec] = []
    def new_run(policy: Policy) -> E.Run:
        run = E.Run(next(seqs), b"", policy)
        runs.append(run)
        return run

    def apply() -> None:
        actions, core.actions = core.actions, []
        for a in actions:
            if isinstance(a, E.Spawn):
                booting.append(a.wid)
            elif isinstance(a, E.NewRun):
                runs.append(a.run)
            elif isinstance(a, E.Skip):
                w = core.workers.get(a.wid)
                if w is not None and rnd.random() < 0.7:
                    for i, r in enumerate(w.inflight):
                        if r.seq == a.seq and (i > 0 or rnd.random() < 0.5):
                            skip_acks.append((a.wid, a.seq))
            elif isinstance(a, E.Stop):
                stopped.append(a.wid)

    core.start(now)
    apply()
    for _ in range(steps):
        op = rnd.random()
        if op < 0.2 and not core.closing:
            pol: dict[str, Any] = {}
            if rnd.random() < 0.4:
                pol["key"] = rnd.choice("kq")
                pol["on_conflict"] = rnd.choice(["supersede", "queue", "drop"])
                if rnd.random() < 0.3:
                    pol["debounce"] = rnd.choice([0.0, 0.5])
            if rnd.random() < 0.3:
                pol["timeout"] = rnd.choice([0.3, 1.0])
            if rnd.random() < 0.2:
                pol["grace"] = 0.2
            if rnd.random() < 0.2:
                pol["heartbeat"] = 0.5
            if rnd.random() < 0.3:
                pol.update(retries=2, retry_delay=rnd.choice([0.0, 0.3]))
            run = new_run(Policy(**pol))
            due = now + rnd.choice([0.005, 0.5, 2.0]) if rnd.random() < 0.3 else None
            if due is not None or (run.policy.debounce and run.policy.key):
                run.state = S.SCHEDULED  # as the driver makes it at the call
            if core.add(run, now, due) is not run:
                runs.remove(run)
        elif op < 0.3 and runs:
            core.cancel(rnd.choice(runs), now, rnd.choice([S.CANCELLED, S.SUPERSEDED]))
        elif op < 0.37 and runs:
            core.reschedule(rnd.choice(runs), now + rnd.choice([0.0, 0.2, 1.0]), now)
        elif op < 0.55:
            busy = [w for w in core.workers.values() if w.inflight and w.ready]
            if busy:
                w = rnd.choice(busy)
                ok = rnd.random() < 0.7
                core.done(w.wid, w.inflight[0].seq, ok, 1 if ok else ValueError("x"), None, now)
        elif op < 0.6 and core.workers:
            core.worker_exited(rnd.choice(list(core.workers)), -11, now)
        elif op < 0.7 and booting:
            wid = booting.pop(0)
            core.worker_ready(wid, 100 + wid, now)
        elif op < 0.78 and skip_acks:
            wid, s = skip_acks.pop(rnd.randrange(len(skip_acks)))
            core.skipped(wid, s, now)
        elif op < 0.8 and stopped:
            core.worker_exited(stopped.pop(0), 0, now)
        elif op < 0.83:
            job = JobRec(1_000_000 + len(jobs), b"", Policy(), every=rnd.choice([0.1, 1.0]),
                         overlap=rnd.choice(["skip", "queue", "parallel", "replace"]),
                         anchor=rnd.choice(["start", "end"]), max_runs=rnd.choice([None, 3]))
            jobs.append(job)
            core.add_job(job, now, rnd.choice([None, now]))
        elif op < 0.86 and jobs:
            job = rnd.choice(jobs)
            what = rnd.choice(["pause", "resume", "cancel", "kick"])
            if what == "cancel":
                core.jobs.cancel(job, now, rnd.random() < 0.5)
            else:
                getattr(core.jobs, what)(job, now)
            core._dispatch(now)
        elif op < 0.865:
            core.clock_changed(core.wall_offset + rnd.choice([-5, 5]), now)
        elif op < 0.87 and broken and core.broken is None:
            core.initializer_failed("Traceback: the initializer failed", now)
        elif op < 0.875 and not core.closing and rnd.random() < 0.3:
            core.close(now, rnd.random() < 0.5)
        else:
            now += rnd.choice([0.001, 0.01, 0.05, 0.3, 1.0])
            core.advance(now)
        apply()
        check_invariants(core, runs)


@pytest.mark.parametrize("block", range(4))
def test_random_event_sequences_keep_the_core_consistent(block: int) -> None:
    for seed in range(block * 100, block * 100 + 100):
        run_seed(seed)


def test_random_event_sequences_with_a_broken_pool() -> None:
    for seed in range(150):
        run_seed(seed, broken=True)
