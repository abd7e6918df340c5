"""Random sequences of inputs against the pure core: its invariants must always hold.

A Hypothesis state machine drives one core through ``Core.handle`` (adds with every
policy, cancels, reschedules, results, crashes, skips, jobs, clock steps, a broken
pool, shutdown, time passing) and checks after every step that no run is lost or in
two places (a run handed to a worker is in that live worker's queue), that the busy
and per-state counts are right and that no impossible transition happens. Bursts onto
a ready worker, kills of a running head and jumps to the next deadline have rules of
their own: they make the prefetch queues that a kill or a timeout must give back.
A failing sequence is shrunk to a short one.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from taskwarden._policy import Policy
from taskwarden._states import TaskState as S
from taskwarden.core import engine as E
from taskwarden.core.jobs import JobRec
from taskwarden.pool import base as P


def check_invariants(core: E.Core, runs: list[E.Run], ended: Counter[S] | None = None) -> None:
    """``ended``: the final runs no longer in ``runs``, by state."""
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
    armed = {id(r) for r in core.armed_starts()}  # armed START timers
    counts = Counter(r.state for r in runs)
    if ended:
        counts.update(ended)
    # Seeds (no Run yet) are SCHEDULED, each with a live START key, and never also a run.
    counts[S.SCHEDULED] += len(core._seeds)
    keyed = {seq for _, seq in core._seed_keys}
    assert all(seq in keyed for seq in core._seeds), "a seed will never start"
    assert not any(r.seq in core._seeds for r in runs), "a seed is also a run"
    assert not core.made, "a run made of a seed was not handed to the driver"
    for state, n in core.by_state.items():
        assert n == counts[state], f"{n} runs counted {state.value}, {counts[state]} are"
    assert core.scheduled == counts[S.SCHEDULED]
    for r in runs:
        if r.state.final:
            continue
        w = r.worker
        if w is not None:  # handed to a worker: it is there, and the worker is alive
            assert core.workers.get(w.wid) is w, f"{r} is on a worker that is gone"
            assert inflight.get(id(r)) is w, f"{r} is lost: not in its worker's queue"
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


_policies = st.fixed_dictionaries(
    {},
    optional={
        "key": st.sampled_from("kq"),
        "on_conflict": st.sampled_from(["supersede", "queue", "drop"]),
        "debounce": st.sampled_from([0.0, 0.5]),
        "timeout": st.sampled_from([0.3, 1.0]),
        "grace": st.just(0.2),
        "heartbeat": st.just(0.5),
        "retries": st.just(2),
        "retry_delay": st.sampled_from([0.0, 0.3]),
    },
)
_pick = st.integers(min_value=0, max_value=1 << 16)
FINAL_KEPT = 8
_due_in = st.sampled_from([None, None, None, 0.005, 0.5, 2.0])



# Preconditions are named functions, not lambdas: Hypothesis describes a precondition each
# time it checks one, and a lambda's description is read from its source (slow in older
# versions: the suite at the declared floor spent minutes there).
def _open(m: CoreMachine) -> bool:
    return not m.core.closing


def _open_with_a_ready_worker(m: CoreMachine) -> bool:
    return not m.core.closing and any(w.ready for w in m.core.workers.values())


def _has_runs(m: CoreMachine) -> bool:
    return bool(m.runs)


def _busy(m: CoreMachine) -> bool:
    return bool(m.core.busy)


def _has_seeds(m: CoreMachine) -> bool:
    return bool(m.seeds)


def _has_workers(m: CoreMachine) -> bool:
    return bool(m.core.workers)


def _booting(m: CoreMachine) -> bool:
    return bool(m.booting)


def _skips_asked(m: CoreMachine) -> bool:
    return bool(m.skips)


def _stopped(m: CoreMachine) -> bool:
    return bool(m.stopped)


def _has_jobs(m: CoreMachine) -> bool:
    return bool(m.jobs)


def _breakable(m: CoreMachine) -> bool:
    return m.breakable and m.core.broken is None


def _has_deadline(m: CoreMachine) -> bool:
    return m.core.next_deadline() is not None


class CoreMachine(RuleBasedStateMachine):
    """One core, a fake clock, and a fake pool that answers as a real one may."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.runs: list[E.Run] = []  # every live run, and the latest few final ones
        self.ended: Counter[S] = Counter()  # the final runs taken off ``runs``, by state
        self.booting: list[int] = []
        self.skips: list[tuple[int, int]] = []  # skips asked that the worker may confirm
        self.stopped: list[int] = []
        self.jobs: list[JobRec] = []
        self.seqs = itertools.count(1)
        self.seeds: list[int] = []  # seqs of the seeds added (their runs, once made, join runs)
        self.core = E.Core(1)
        self.breakable = False

    def feed(self, item: E.Command | P.Event) -> Any:
        for a in self.core.handle(item, self.now):
            match a:
                case E.Spawn(wid):
                    self.booting.append(wid)
                case E.Skip(wid, seq):
                    self.skips.append((wid, seq))
                case E.Stop(wid):
                    self.stopped.append(wid)
                case E.NewRun(_, run):
                    self.runs.append(run)
                case E.Cancelled(_, _, seqs):  # seeds ended without a run: counted here
                    self.ended[S.CANCELLED] += len(seqs)
        # Runs made of seeds: the driver adopts them (their tasks had none).
        self.runs.extend(self.core.made)
        self.core.made.clear()
        self.core.touched.clear()
        return item

    @initialize(
        workers=st.integers(1, 3),
        prefetch=st.sampled_from([1, 2, 4, 16]),
        max_tasks=st.sampled_from([None, None, 3]),
        breakable=st.booleans(),
    )
    def start(self, workers: int, prefetch: int, max_tasks: int | None,
              breakable: bool) -> None:
        self.breakable = breakable
        self.core = E.Core(workers, prefetch=prefetch, max_tasks_per_worker=max_tasks,
                           seqs=self.seqs)
        self.feed(E.Start())

    @precondition(_open)
    @rule(adds=st.lists(st.tuples(_policies, _due_in), min_size=1, max_size=4))
    def add(self, adds: list[tuple[dict[str, Any], float | None]]) -> None:
        """A few runs at the same instant (a burst is what fills the prefetch queues)."""
        for drawn, due_in in adds:
            policy = dict(drawn)
            if "on_conflict" in policy and "key" not in policy:
                policy["key"] = "k"
            run = E.Run(next(self.seqs), b"", Policy(**policy))
            self.runs.append(run)
            due = None if due_in is None else self.now + due_in
            if self.feed(E.Add(run, due)).answer is not run:
                self.runs.remove(run)  # "drop": the older run of its key stands for it

    @rule(adds=st.lists(st.tuples(_policies, _due_in), min_size=1, max_size=4))
    def add_many(self, adds: list[tuple[dict[str, Any], float | None]]) -> None:
        """A burst handed over in one AddMany, as the driver does, each run carrying its
        due (no "drop" run: the driver asks for those one by one, for the answer)."""
        runs = []
        for drawn, due_in in adds:
            policy = dict(drawn)
            if policy.get("on_conflict") == "drop":
                continue
            if "on_conflict" in policy and "key" not in policy:
                policy["key"] = "k"
            due = 0.0 if due_in is None else self.now + due_in
            runs.append(E.Run(next(self.seqs), b"", Policy(**policy), due))
        if runs:
            self.runs.extend(runs)
            self.feed(E.AddMany(runs))

    @precondition(_has_runs)
    @rule(i=_pick, superseded=st.booleans())
    def cancel(self, i: int, superseded: bool) -> None:
        live = [r for r in self.runs if not r.state.final]  # a final one: now and then
        run = live[i % len(live)] if live and i % 8 else self.runs[i % len(self.runs)]
        if superseded:  # as a newer run of its key does it
            self.core.cancel(run, self.now, S.SUPERSEDED)
            self.feed(E.TICK)
        else:
            self.feed(E.Cancel(run))

    @precondition(_has_runs)
    @rule(i=_pick, delay=st.sampled_from([0.0, 0.2, 1.0]))
    def reschedule(self, i: int, delay: float) -> None:
        self.feed(E.Reschedule(self.runs[i % len(self.runs)], self.now + delay))

    @precondition(_busy)
    @rule(i=_pick, ok=st.booleans())
    def done(self, i: int, ok: bool) -> None:
        busy = [w for w in self.core.workers.values() if w.inflight and w.ready]
        if busy:
            w = busy[i % len(busy)]
            self.feed(P.RunDone(w.wid, w.inflight[0].seq, ok, 1 if ok else ValueError("x"),
                                None, None, False))

    @precondition(_has_workers)
    @rule(i=_pick)
    def crash(self, i: int) -> None:
        wids = list(self.core.workers)
        self.feed(P.WorkerExited(wids[i % len(wids)], -11))

    @precondition(_booting)
    @rule()
    def ready(self) -> None:
        wid = self.booting.pop(0)
        self.feed(P.WorkerReady(wid, 100 + wid))

    @precondition(_skips_asked)
    @rule(i=_pick)
    def confirm_skip(self, i: int) -> None:
        wid, seq = self.skips.pop(i % len(self.skips))
        self.feed(P.RunSkipped(wid, seq))

    @precondition(_stopped)
    @rule()
    def stopped_exits(self) -> None:
        self.feed(P.WorkerExited(self.stopped.pop(0), 0))

    @rule(every=st.sampled_from([0.1, 1.0]),
          overlap=st.sampled_from(["skip", "queue", "parallel", "replace"]),
          anchor=st.sampled_from(["start", "end"]), max_runs=st.sampled_from([None, 3]),
          now=st.booleans())
    def add_job(self, every: float, overlap: str, anchor: str, max_runs: int | None,
                now: bool) -> None:
        job = JobRec(next(self.seqs), b"", Policy(), every=every, overlap=overlap,
                     anchor=anchor, max_runs=max_runs)
        self.jobs.append(job)
        self.feed(E.AddJob(job, self.now if now else None))

    @precondition(_has_jobs)
    @rule(i=_pick, op=st.sampled_from(["pause", "resume", "cancel", "kick"]),
          kill_running=st.booleans())
    def control_job(self, i: int, op: E.JobOp, kill_running: bool) -> None:
        self.feed(E.JobControl(self.jobs[i % len(self.jobs)], op, kill_running))

    @rule(step=st.sampled_from([-5.0, 5.0]))
    def clock_step(self, step: float) -> None:
        self.feed(E.ClockChanged(self.core.wall_offset + step))

    # Rare, as in life: an ending (a broken pool, shutdown) closes most of the paths.
    @precondition(_breakable)
    @rule(coin=st.integers(0, 7))
    def initializer_fails(self, coin: int) -> None:
        if coin == 0:
            self.feed(P.InitFailed(0, "Traceback: the initializer failed"))

    @precondition(_open)
    @rule(dues=st.lists(st.sampled_from([-0.1, 0.0, 0.005, 0.5, 0.5, 2.0]), min_size=1,
                        max_size=4), runs_too=st.booleans())
    def add_seeds(self, dues: list[float], runs_too: bool) -> None:
        """Seeds (plain scheduled runs, no Run until they must) in one AddMany, among runs
        as the driver hands them over; one already due is made a run at once."""
        items: list[E.Run | tuple[float, int, bytes]] = []
        for due_in in dues:
            seq = next(self.seqs)
            self.seeds.append(seq)
            items.append((self.now + due_in, seq, b"seed"))
            if runs_too:
                run = E.Run(next(self.seqs), b"", Policy(), self.now + due_in)
                self.runs.append(run)
                items.append(run)
        self.feed(E.AddMany(items))

    @precondition(_has_seeds)
    @rule(i=_pick, op=st.sampled_from(["cancel", "reschedule", "now"]))
    def name_a_seed(self, i: int, op: str) -> None:
        """A command naming a task by its seq alone, as the driver does for a task whose
        seed has no Run yet (or one it made already, or one cancelled at shutdown)."""
        seq = self.seeds[i % len(self.seeds)]
        run = next((r for r in self.runs if r.seq == seq), None)
        if op == "cancel":
            answer = self.feed(E.Cancel(run, seq=seq)).answer
        else:
            due = self.now + (0.3 if op == "reschedule" else 0.0)
            answer = self.feed(E.Reschedule(run, due, seq=seq)).answer
        if run is None and not any(r.seq == seq for r in self.runs):
            assert answer is False  # cancelled at shutdown: nothing to name

    @precondition(_open)
    @rule(cancel_pending=st.booleans(), coin=st.integers(0, 7))
    def close(self, cancel_pending: bool, coin: int) -> None:
        if coin == 0:
            self.feed(E.Close(cancel_pending))

    @rule(dt=st.sampled_from([0.001, 0.01, 0.05, 0.3, 1.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self.feed(E.TICK)

    # The interleavings that matter most get rules of their own (Hypothesis picks among
    # the enabled rules evenly): a burst onto a ready worker fills its prefetch queue,
    # a kill of a running head (cancel, supersede) or its time limit must give back what
    # was queued behind it, and time that jumps to the next deadline fires it exactly.
    @precondition(_open_with_a_ready_worker)
    @rule(n=st.integers(2, 8), timeout=st.sampled_from([None, None, 0.3]))
    def burst(self, n: int, timeout: float | None) -> None:
        for _ in range(n):
            run = E.Run(next(self.seqs), b"", Policy(timeout=timeout))
            self.runs.append(run)
            self.feed(E.Add(run))

    @precondition(_busy)
    @rule(i=_pick, superseded=st.booleans())
    def kill_head(self, i: int, superseded: bool) -> None:
        heads = [w.inflight[0] for w in self.core.workers.values()
                 if w.inflight and w.inflight[0].state is S.RUNNING]
        if heads:
            run = heads[i % len(heads)]
            if superseded:
                self.core.cancel(run, self.now, S.SUPERSEDED)
                self.feed(E.TICK)
            else:
                self.feed(E.Cancel(run))

    @precondition(_has_deadline)
    @rule()
    def next_deadline(self) -> None:
        due = self.core.next_deadline()
        assert due is not None
        self.now = max(self.now, due)
        self.feed(E.TICK)

    @invariant()
    def consistent(self) -> None:
        check_invariants(self.core, self.runs, self.ended)
        # Final runs leave the list, so that a step's check costs what is live (a long
        # sequence stays fast to run and to shrink); a few stay for cancel and reschedule.
        final = [r for r in self.runs if r.state.final]
        if len(final) > 2 * FINAL_KEPT:
            gone = final[:-FINAL_KEPT]
            self.ended.update(r.state for r in gone)
            ids = {id(r) for r in gone}
            self.runs = [r for r in self.runs if id(r) not in ids]


CoreMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=150,
    deadline=None,
    database=None,  # nothing written into the checkout; a failure prints its steps
    suppress_health_check=[HealthCheck.too_slow],
)
# A failing sequence takes a while to shrink: more than the suite's 60 s per test.
test_event_sequences_keep_the_core_consistent = pytest.mark.timeout(600)(CoreMachine.TestCase)
