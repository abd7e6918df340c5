"""Chaos: a seeded random mix of operations against a live supervisor and its workers.

Protocol races between the loop, its pool and the workers (prefetch, take-back
by SKIP, cancel of a prefetched or running run, key supersede, kills on timeout,
crashes, recycling, shutdown with work queued) once lost a task for good. Each
test here fires a random but reproducible mix of submissions and cancels, then
waits for everything or shuts down at a random point, and checks that:

- every task ends (none is lost), in a final state;
- its outcome is what the task would give in that state (exact values: every
  trivial task gets its own argument, so a result delivered to the wrong
  future shows);
- the state is one the task may end in, given what was done to it;
- ``stats()["by_state"]`` agrees with the tasks, and ``get(id)`` finds each one;
- no process is left behind (the autouse fixture in conftest.py).

A failure prints the seed and the operations; rerun one seed with
``pytest tests/test_chaos.py -k 'seed-N'``.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import signal
import threading
import time
from collections import Counter
from concurrent.futures import wait
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest

from taskwarden import (
    Supervisor,
    Task,
    TaskCancelled,
    TaskState,
    TaskSuperseded,
    TaskTimeout,
    WorkerCrashed,
)

import _tasks as T

SEEDS = [11, 23, 37, 58]
RECYCLE = {23: 3, 58: 3}  # max_tasks_per_worker by seed (None for the others)
SETTLE = 20.0  # generous bound for every task to end (each takes milliseconds)
SHUTDOWN = 15.0  # and for shutdown(wait=True) to return

# Keys, each with one conflict mode, shared by all threads of a test.
KEYS: dict[str, dict[str, Any]] = {
    "s1": {"on_conflict": "supersede"},
    "s2": {"on_conflict": "supersede"},
    "sd": {"on_conflict": "supersede", "debounce": 0.003},
    "q1": {"on_conflict": "queue"},
    "d1": {"on_conflict": "drop"},
}

# What an operation does, and how often (relative weights).
OPS: dict[str, int] = {
    "square": 26,     # trivial: exact value
    "add": 6,         # trivial through schedule(kwargs=...)
    "sleep": 18,      # 1-5 ms: long enough for the idle worker to take queued runs back
    "delayed": 4,     # a timed start, handed out early with the instant to begin
    "fail": 6,        # raises ValueError
    "retry": 3,       # fails once with ConnectionError, then succeeds on attempt 2
    "crash": 3,       # os._exit or SIGKILL of its own process: WorkerCrashed
    "hang": 3,        # sleeps far past its timeout: killed, TIMED_OUT
    "hang_grace": 1,  # the same, TaskTimeout raised inside first
    "keyed": 16,      # sleep or square under a key (supersede / queue / drop)
    "burst": 5,       # 8-30 squares and a few sleeps at once: deep prefetch, take-backs
    "cancel": 9,      # cancel() a task made earlier, whatever its state now
    "pause": 10,      # let the loop and the workers move on
}


@dataclass
class Rec:
    """One task, and what its final state and outcome may be."""

    task: Task[Any]
    kind: str
    order: int  # submission order (keyed ones are submitted in this order)
    value: Any = None  # the result if it completes; the message for "fail"
    key: str | None = None
    mode: str | None = None
    delayed: bool = False
    cancels: list[bool] = field(default_factory=list)  # what each cancel() returned

    def describe(self) -> str:
        t = self.task
        return (f"#{self.order} {self.kind} key={self.key} mode={self.mode} state={t.state.value} "
                f"done={t.done()} cancels={self.cancels} attempts={t.attempts} "
                f"worker={t.worker_pid} value={self.value!r}")


class Chaos:
    """The tasks of one test and the operations that made them (shared by its threads)."""

    def __init__(self, sup: Supervisor, seed: int) -> None:
        self.sup = sup
        self.seed = seed
        self.recs: list[Rec] = []
        self.by_task: dict[int, Rec] = {}
        self.log: list[str] = []
        self.lock = threading.Lock()  # keyed submissions are made one at a time, in order
        self.unique = 0

    def _next(self) -> int:
        with self.lock:
            self.unique += 1
            return self.seed * 100_000 + self.unique

    def _add(self, task: Task[Any], kind: str, **info: Any) -> Rec:
        with self.lock:
            rec = Rec(task, kind, len(self.recs), **info)
            self.recs.append(rec)
            self.by_task[id(task)] = rec
            return rec

    def step(self, rng: random.Random, who: int) -> None:
        """One random operation (raises RuntimeError once the supervisor is shut down)."""
        op = rng.choices(list(OPS), weights=list(OPS.values()))[0]
        if op == "burst":
            for _ in range(rng.randint(8, 30)):
                self.do("square" if rng.random() < 0.9 else "sleep", rng, who)
        else:
            self.do(op, rng, who)

    def do(self, op: str, rng: random.Random, who: int = 0) -> None:
        sup = self.sup
        self.log.append(f"t{who}:{op}")
        if op == "square":
            n = self._next()
            self._add(sup.submit(T.square, n), op, value=n * n)
        elif op == "add":
            n = self._next()
            self._add(sup.schedule(T.add, args=(n,), kwargs={"b": 7}), op, value=n + 7)
        elif op == "sleep":
            s = rng.randint(1, 5) / 1000 + self._next() * 1e-12  # unique, still ~1-5 ms
            self._add(sup.submit(T.sleep, s), op, value=s)
        elif op == "delayed":
            n = self._next()
            task = sup.schedule(T.square, args=(n,), delay=rng.uniform(0.002, 0.03))
            self._add(task, op, value=n * n, delayed=True)
        elif op == "fail":
            msg = f"planned failure {self._next()}"
            self._add(sup.submit(T.fail, msg), op, value=msg)
        elif op == "retry":
            task = sup.schedule(T.fail_until_attempt, args=(2,), retries=1,
                                retry_on=(ConnectionError,))
            self._add(task, op, value=2)
        elif op == "crash":
            if rng.random() < 0.5:
                code = rng.randint(3, 9)
                self._add(sup.submit(T.exit_with, code), op, value=f"exited with code {code}")
            else:
                self._add(sup.submit(T.kill_self, signal.SIGKILL), op, value="SIGKILL")
        elif op == "hang":
            task = sup.schedule(T.sleep, args=(30.0,), timeout=rng.uniform(0.01, 0.05))
            self._add(task, op)
        elif op == "hang_grace":
            task = sup.schedule(T.sleep, args=(30.0,), timeout=0.02, grace=0.02)
            self._add(task, op)
        elif op == "keyed":
            key = rng.choice(list(KEYS))
            policy = KEYS[key]
            n = self._next()
            if rng.random() < 0.5:
                fn: Any = T.square
                args: tuple[Any, ...] = (n,)
                value: Any = n * n
            else:
                fn, args = T.sleep, (rng.randint(1, 4) / 1000 + n * 1e-12,)
                value = args[0]
            with self.lock:  # registered in the order the supervisor sees them
                task = sup.schedule(fn, args=args, key=key, **policy)
                known = self.by_task.get(id(task))
                if known is None:
                    rec = Rec(task, op, len(self.recs), value=value, key=key,
                              mode=policy["on_conflict"], delayed="debounce" in policy)
                    self.recs.append(rec)
                    self.by_task[id(task)] = rec
            assert known is None or policy["on_conflict"] == "drop", "an old task came back"
        elif op == "cancel":
            with self.lock:  # mostly a recent one: pending, prefetched or running
                recent = self.recs[-8:] if rng.random() < 0.8 else self.recs
                rec = rng.choice(recent) if recent else None
            if rec is not None:
                rec.cancels.append(rec.task.cancel())
        elif op == "pause":
            time.sleep(rng.uniform(0.0, 0.005))

    def warm_up(self) -> None:
        """One task through first, so that the rest meets a ready pool, as work stealing
        needs (a cold one takes everything in at once)."""
        self.do("square", random.Random(0))
        self.recs[-1].task.result(timeout=SETTLE)


def _check(chaos: Chaos, ended: str, settle: float = SETTLE) -> None:
    """Every task ended, as it may have; the supervisor's counts agree."""
    sup, recs = chaos.sup, chaos.recs
    tasks = [r.task for r in recs]
    _, not_done = wait(tasks, timeout=settle)
    assert not not_done, (
        f"seed {chaos.seed}: {len(not_done)} of {len(tasks)} tasks never ended ({ended}):\n"
        + "\n".join(chaos.by_task[id(t)].describe() for t in not_done)
        + f"\nstats: {sup.stats()}\n{_ops(chaos)}"
    )
    problems = []
    for rec in recs:
        why = _wrong(rec, chaos, ended)
        if why:
            problems.append(f"{rec.describe()}: {why}")
    assert not problems, (
        f"seed {chaos.seed} ({ended}):\n" + "\n".join(problems) + f"\n{_ops(chaos)}"
    )
    for key, policy in KEYS.items():
        if policy["on_conflict"] == "queue":
            _check_one_at_a_time([r for r in recs if r.key == key])
    stats = sup.stats()
    seen = Counter(t.state.value for t in tasks)
    counted = {state: n for state, n in stats["by_state"].items() if n}
    assert counted == dict(seen), f"seed {chaos.seed}: stats {counted} != tasks {dict(seen)}"
    assert stats["pending"] == 0 and stats["scheduled"] == 0, stats
    for task in tasks:
        assert sup.get(task.id) is task


def _ops(chaos: Chaos) -> str:
    ops = chaos.log
    return f"last ops of {len(ops)} (oldest first): {' '.join(ops[-200:])}"


def _wrong(rec: Rec, chaos: Chaos, ended: str) -> str | None:
    """Why this task's end is wrong, or None."""
    task, state = rec.task, rec.task.state
    if not state.final:
        return "done, but its state is not final"
    if task.cancelled() != (state in (TaskState.CANCELLED, TaskState.SUPERSEDED)):
        return "cancelled() disagrees with the state"
    allowed = {
        "square": {TaskState.COMPLETED}, "add": {TaskState.COMPLETED},
        "sleep": {TaskState.COMPLETED}, "delayed": {TaskState.COMPLETED},
        "retry": {TaskState.COMPLETED}, "keyed": {TaskState.COMPLETED},
        "fail": {TaskState.FAILED}, "crash": {TaskState.FAILED},
        "hang": {TaskState.TIMED_OUT}, "hang_grace": {TaskState.TIMED_OUT},
    }[rec.kind].copy()
    if any(rec.cancels):
        allowed = {TaskState.CANCELLED}  # cancel() said it was cancelled: nothing else
    else:
        # (Had cancel() returned False, the task had ended by then; a shutdown from
        # another thread may have cancelled it just before.)
        if ended.startswith("shutdown") and rec.delayed:
            allowed.add(TaskState.CANCELLED)  # scheduled for later: cancelled at shutdown
        if ended.startswith("shutdown, cancel_futures"):
            allowed.add(TaskState.CANCELLED)  # queued: cancelled at shutdown
        if ended.startswith("shutdown") and rec.kind == "retry":
            allowed.add(TaskState.FAILED)  # no retry once shutting down
    later = [r for r in chaos.recs if r.key == rec.key and r.order > rec.order]
    if rec.mode == "supersede" and later:
        # A newer task of its key may get there first, even before a cancel() that then
        # says True (the task is cancelled; being superseded is being cancelled).
        allowed.add(TaskState.SUPERSEDED)
    if state not in allowed:
        return f"ended {state.value}, expected one of {sorted(s.value for s in allowed)}"

    error = task.exception(timeout=0)
    if state is TaskState.COMPLETED:
        if error is not None:
            return f"COMPLETED with an exception {error!r}"
        if task.result(timeout=0) != rec.value:
            return f"wrong result {task.result(timeout=0)!r}"
        if rec.kind == "retry" and task.attempts != 2:
            return f"completed after {task.attempts} attempts, not 2"
        if task.worker_pid is None or task.started_at is None or task.finished_at is None:
            return "completed without a worker pid or start and finish times"
    elif state is TaskState.FAILED:
        if rec.kind == "fail":
            if not (isinstance(error, ValueError) and str(error) == rec.value):
                return f"failed with {error!r}"
        elif rec.kind == "retry":
            if not (isinstance(error, ConnectionError) and task.attempts == 1):
                return f"failed with {error!r} after {task.attempts} attempts"
        elif not (isinstance(error, WorkerCrashed) and rec.value in str(error)):
            return f"crashed with {error!r}"
    elif state is TaskState.TIMED_OUT:
        if not isinstance(error, TaskTimeout):
            return f"timed out with {error!r}"
    elif state is TaskState.SUPERSEDED:
        if not isinstance(error, TaskSuperseded):
            return f"superseded with {error!r}"
        winner = next((r for r in later if r.task.id == error.winner_id), None)
        if winner is None:
            return f"superseded by {error.winner_id}, not a later task of its key"
    elif state is TaskState.CANCELLED and (
        not isinstance(error, TaskCancelled) or isinstance(error, TaskSuperseded)
    ):
        return f"cancelled with {error!r}"
    return None


def _check_one_at_a_time(recs: list[Rec]) -> None:
    """A queue key runs its tasks one at a time, in order: each one that completed ended
    before any later one started."""
    done = [r.task for r in sorted(recs, key=lambda r: r.order)
            if r.task.state is TaskState.COMPLETED]
    for first, then in itertools.pairwise(done):
        assert first.finished_at is not None and then.started_at is not None
        assert then.started_at >= first.finished_at, "two tasks of a queue key overlapped"


def _supervisor(seed: int) -> tuple[Supervisor, float]:
    """A fresh supervisor for this seed, and how much work to give it: a worker
    recycled after 3 tasks is a new process every 3 tasks, so fewer of them."""
    recycle = RECYCLE.get(seed)
    return Supervisor(workers=2, max_tasks_per_worker=recycle), 1.0 if recycle is None else 0.2


def _ending(rng: random.Random) -> str:
    return rng.choice(["wait", "shutdown", "shutdown, cancel_futures"])


def _shutdown(sup: Supervisor, cancel_futures: bool, bound: float = SHUTDOWN) -> bool:
    """``shutdown(wait=True)``; False if it had not returned after ``bound`` seconds
    (a lost run keeps it waiting: the test then fails rather than hangs)."""
    closer = threading.Thread(target=sup.shutdown, daemon=True,
                              kwargs={"wait": True, "cancel_futures": cancel_futures})
    closer.start()
    closer.join(bound)
    return not closer.is_alive()


def _finish(chaos: Chaos, ended: str) -> None:
    if ended == "wait":
        _check(chaos, ended)  # stats while the supervisor still runs
        assert _shutdown(chaos.sup, False), "shutdown(wait=True) did not return"
    else:
        if not _shutdown(chaos.sup, ended.endswith("cancel_futures")):
            _check(chaos, ended + " (did not return)", settle=0.0)
            raise AssertionError("shutdown(wait=True) did not return")
        _check(chaos, ended)
    assert chaos.sup.stats()["workers_alive"] == 0


def _close(sup: Supervisor) -> None:
    """Shut down for good, even after a failure: if a lost run keeps shutdown waiting,
    kill the workers (their exits let it end) rather than leave the loop running."""
    if _shutdown(sup, True, 10.0):
        return
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any(part.startswith("taskwarden-worker-") for part in child.cmdline()):
                child.kill()
    _shutdown(sup, True, 10.0)


@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed-{s}" for s in SEEDS])
def test_random_operations_lose_nothing(seed: int) -> None:
    rng = random.Random(seed)
    sup, scale = _supervisor(seed)
    chaos = Chaos(sup, seed)
    try:
        chaos.warm_up()
        for _ in range(round(rng.randint(150, 250) * scale)):
            chaos.step(rng, 0)
        _finish(chaos, _ending(rng))
    finally:
        _close(sup)


@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed-{s}" for s in SEEDS])
def test_bursts_and_cancels_on_a_busy_pool(seed: int) -> None:
    # Rounds of one short sleep and a burst of trivial tasks, from an idle pool: the
    # sleep heads one worker's queue, the trivial runs queue deep on both (prefetch),
    # and the worker that runs dry takes back half of what waits behind the sleep
    # (SKIP, a nudge, SKIPPED) while new runs reach it on the same channel. Cancels,
    # failures, keys and now and then a crash or a hang hit runs queued or starting.
    rng = random.Random(seed * 7)
    sup, scale = _supervisor(seed)
    chaos = Chaos(sup, seed)
    try:
        chaos.warm_up()
        rounds, most = (100, 40) if scale == 1.0 else (12, 8)
        for _ in range(rounds):
            chaos.do("sleep", rng)
            for _ in range(rng.randint(1, most)):
                chaos.do("keyed" if rng.random() < 0.05 else "square", rng)
            for _ in range(rng.choice([0, 0, 0, 1, 2, 3])):
                chaos.do(rng.choice(["cancel", "cancel", "cancel", "fail"]), rng)
            if rng.random() < 0.05:  # rarely: a pool busy replacing workers steals less
                chaos.do(rng.choice(["crash", "hang"]), rng)
            time.sleep(rng.uniform(0.0, 0.02))
        _finish(chaos, _ending(rng))
    finally:
        _close(sup)


@pytest.mark.parametrize("seed", SEEDS[:3], ids=[f"seed-{s}" for s in SEEDS[:3]])
def test_three_threads_at_once(seed: int) -> None:
    # Three caller threads share the supervisor (and its keys); for a shutdown, the
    # test thread calls it while they are still submitting and cancelling.
    rng = random.Random(seed * 13)
    sup, scale = _supervisor(seed)
    chaos = Chaos(sup, seed)
    ended = _ending(rng)
    errors: list[BaseException] = []
    start = threading.Barrier(4, timeout=SETTLE)

    def fire(who: int, steps: int) -> None:
        mine = random.Random(seed * 100 + who)
        start.wait()
        try:
            for _ in range(steps):
                chaos.step(mine, who)
        except RuntimeError as e:
            if "after shutdown" not in str(e):
                errors.append(e)
        except BaseException as e:  # reported by the test thread
            errors.append(e)

    steps = [round(rng.randint(80, 120) * scale) for _ in range(3)]
    threads = [threading.Thread(target=fire, args=(i, steps[i]), daemon=True) for i in range(3)]
    try:
        chaos.warm_up()
        for t in threads:
            t.start()
        start.wait()
        returned = True
        if ended != "wait":
            time.sleep(rng.uniform(0.02, 0.15))
            returned = _shutdown(sup, ended.endswith("cancel_futures"))
        for t in threads:
            t.join(SETTLE)
            assert not t.is_alive(), "a caller thread is stuck"
        assert not errors, errors
        if not returned:
            _check(chaos, ended + " (did not return)", settle=0.0)
            raise AssertionError("shutdown(wait=True) did not return")
        _finish(chaos, ended)
    finally:
        _close(sup)
