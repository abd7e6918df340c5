"""The benchmark functions.

Each one is ``fn(peer, cfg, tmp) -> dict`` of figures for one peer; ``run.py``
calls it in a fresh interpreter per (benchmark, peer) cell, so that a hang or
a leaked process in one cell cannot spoil another. A peer without the
feature raises ``NotSupported``; any other exception makes the cell "n/a".
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import sched
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from _common import (
    NotSupported,
    PoolAdapter,
    TaskwardenAdapter,
    children_cpu_seconds,
    cpu_seconds,
    done_time,
    make_pool,
    median,
    percentile,
    pool_of,
    read_pid,
    rss,
    wait_gone,
    wait_until,
    warm,
    when,
)

from _tasks import blob, hang, heartbeat_cost, identity, noop, record_time, sleep_pid

perf = time.perf_counter

KILL_TIMEOUT = 0.2  # seconds: the per-task limit in the kill benchmark
TIMER_PERIOD = 0.1  # seconds: the periodic job's interval


@dataclass(frozen=True)
class Config:
    quick: bool = False

    @property
    def repeats(self) -> int:
        return 1 if self.quick else 2

    @property
    def tasks(self) -> int:
        return 20_000

    @property
    def latency_n(self) -> int:
        return 500 if self.quick else 2_000

    @property
    def cold_runs(self) -> int:
        return 5 if self.quick else 9

    @property
    def kill_repeats(self) -> int:
        return 4 if self.quick else 10

    @property
    def timer_s(self) -> float:
        return 2.0 if self.quick else 30.0

    @property
    def timer_loaded_s(self) -> float:
        return 2.0 if self.quick else 10.0

    @property
    def idle_s(self) -> float:
        return 2.0 if self.quick else 10.0

    @property
    def heartbeat_n(self) -> int:
        return 20_000 if self.quick else 100_000


Figures = dict[str, Any]


def _ms(xs: list[float]) -> list[float]:
    return [round(x * 1e3, 3) for x in xs]


# ------------------------------------------------------------------ throughput


def _throughput(peer: str, cfg: Config, timeout: float | None) -> Figures:
    with pool_of(peer, timeout) as pool:
        warm(pool)
        rates: list[float] = []
        submit_rates: list[float] = []
        n = cfg.tasks
        for _ in range(cfg.repeats):
            gc.collect()
            t0 = perf()
            handles = [pool.submit(identity, i) for i in range(n)]
            t1 = perf()
            end = t0 + 120.0
            wrong = 0
            for i, h in enumerate(handles):
                if pool.result(h, max(0.1, end - perf())) != i:
                    wrong += 1
            t2 = perf()
            if wrong:
                raise AssertionError(f"{wrong} of {n} results were wrong")
            rates.append(n / (t2 - t0))
            submit_rates.append(n / (t1 - t0))
            del handles
    return {
        "tasks_per_s": median(rates),
        "submit_per_s": median(submit_rates),
        "tasks": n,
        "runs_tasks_per_s": [round(r) for r in rates],
    }


def throughput(peer: str, cfg: Config, tmp: str) -> Figures:
    """20,000 trivial tasks submitted one by one, then wait for all."""
    return _throughput(peer, cfg, None)


def throughput_timeout(peer: str, cfg: Config, tmp: str) -> Figures:
    """The same with a per-task time limit of 60 s (a watchdog per task)."""
    return _throughput(peer, cfg, 60.0)


# ----------------------------------------------------------------- latency


def latency(peer: str, cfg: Config, tmp: str) -> Figures:
    """Warm pool: submit one trivial task, wait for it, repeat."""
    with pool_of(peer) as pool:
        warm(pool)
        for i in range(50):
            pool.result(pool.submit(identity, i), 30)
        lat: list[float] = []
        for i in range(cfg.latency_n):
            t0 = perf()
            r = pool.result(pool.submit(identity, i), 30)
            lat.append(perf() - t0)
            if r != i:
                raise AssertionError(f"round trip {i} returned {r!r}")
    return {
        "p50_us": percentile(lat, 50) * 1e6,
        "p99_us": percentile(lat, 99) * 1e6,
        "mean_us": sum(lat) / len(lat) * 1e6,
        "n": len(lat),
    }


# --------------------------------------------------------------- cold start


def cold_start(peer: str, cfg: Config, tmp: str) -> Figures:
    """From constructing the pool to the first result (imports already done). The
    first run is the program's first process start through its library: loky's
    context starts its two resource-tracker processes with it (both peers here use
    that context); it is reported on its own, and the others' median as the cold
    start."""
    if peer == "taskwarden":
        # (import cost is not part of the figure; the package imports its names on first
        # use, so name the Supervisor: that imports the supervisor side now)
        from taskwarden import Supervisor  # noqa: F401
    elif peer == "pebble":
        import pebble  # noqa: F401
    elif peer == "loky":
        import loky  # noqa: F401
    starts: list[float] = []
    stops: list[float] = []
    for _ in range(cfg.cold_runs):
        gc.collect()
        t0 = perf()
        pool = make_pool(peer)
        try:
            r = pool.result(pool.submit(identity, 1), 60)
            starts.append(perf() - t0)
            if r != 1:
                raise AssertionError(f"first result was {r!r}")
        finally:
            t1 = perf()
            pool.close()
            stops.append(perf() - t1)
        time.sleep(0.05)
    return {
        "cold_ms": median(starts[1:]) * 1e3,
        "first_ms": starts[0] * 1e3,
        "shutdown_ms": median(stops) * 1e3,
        "runs_ms": _ms(starts),
    }


# ------------------------------------------------------- kill on timeout


def kill_timeout(peer: str, cfg: Config, tmp: str) -> Figures:
    """Both workers run a task that hangs, each with a 0.2 s limit; a trivial task is
    submitted at the deadline and has to wait for a replacement worker."""
    if peer not in ("taskwarden", "pebble"):
        raise NotSupported("no per-task timeout")
    T = KILL_TIMEOUT
    late: list[float] = []
    gone: list[float] = []
    recovery: list[float] = []
    problems: list[str] = []
    with pool_of(peer) as pool:
        warm(pool)
        for r in range(cfg.kill_repeats):
            pa = os.path.join(tmp, f"kill-{r}-a.pid")
            pb = os.path.join(tmp, f"kill-{r}-b.pid")
            ta = perf()
            ha = pool.submit_timeout(hang, (pa,), T)
            da = done_time(ha)
            tb = perf()
            hb = pool.submit_timeout(hang, (pb,), T)
            db = done_time(hb)
            pid = pool.worker_pid(ha, pa, T)
            file_pid = read_pid(pa, T + 2.0)
            if pid is None:
                problems.append(f"run {r}: no worker pid before the deadline")
                pid = file_pid
            elif file_pid is not None and file_pid != pid:
                problems.append(f"run {r}: worker_pid {pid} but the task ran in {file_pid}")
                pid = file_pid
            deadline = ta + T
            time.sleep(max(0.0, deadline - perf()))
            tc = perf()
            hc = pool.submit(identity, r)
            dc = done_time(hc)
            t_gone = wait_gone(pid, 5.0) if pid else None
            if pool.result(hc, 15) != r:
                raise AssertionError("the task after the kill returned a wrong result")
            for h, name in ((ha, "a"), (hb, "b")):
                exc = h.exception(timeout=15)
                if not isinstance(exc, TimeoutError):
                    problems.append(f"run {r}{name}: expected a TimeoutError, got {exc!r}")
            late += [when(da) - (ta + T), when(db) - (tb + T)]
            if t_gone is None:
                problems.append(f"run {r}: worker {pid} still alive 5 s after the deadline")
            else:
                gone.append(t_gone - deadline)
            recovery.append(when(dc) - tc)
            warm(pool)
    out: Figures = {
        "lateness_ms": median(late) * 1e3,
        "lateness_max_ms": max(late) * 1e3,
        "gone_ms": median(gone) * 1e3 if gone else math.nan,
        "recovery_ms": median(recovery) * 1e3,
        "timeout_s": T,
        "repeats": cfg.kill_repeats,
        "lateness_runs_ms": _ms(late),
        "gone_runs_ms": _ms(gone),
        "recovery_runs_ms": _ms(recovery),
    }
    if problems:
        out["problems"] = problems
    return out


# -------------------------------------------------------- cancel running


def _unsupported_cancel(pool: PoolAdapter, tmp: str) -> None:
    path = os.path.join(tmp, "cancel.pid")
    h = pool.submit(hang, path)
    pid = read_pid(path, 10)
    ok = h.cancel()
    still = pid is not None and wait_gone(pid, 0.5) is None
    if pid is not None:
        with contextlib.suppress(Exception):
            import psutil

            psutil.Process(pid).kill()  # let shutdown finish (breaks the pool; fine)
    raise NotSupported(f"cancel()->{ok}" + (", process lives" if still else ""))


def cancel_running(peer: str, cfg: Config, tmp: str) -> Figures:
    """A running task is cancelled: time until its process is gone."""
    if peer == "mp":
        raise NotSupported("no cancel()")
    gone: list[float] = []
    ret: list[float] = []
    done: list[float] = []
    returned: list[bool] = []
    problems: list[str] = []
    with pool_of(peer) as pool:
        warm(pool)
        if peer in ("ppe", "loky"):
            _unsupported_cancel(pool, tmp)
        for r in range(cfg.kill_repeats):
            path = os.path.join(tmp, f"cancel-{r}.pid")
            h = pool.submit(hang, path)
            file_pid = read_pid(path, 10)
            if not wait_until(partial(pool.is_running, h), 10):
                raise TimeoutError("task never showed as running")
            pid = pool.worker_pid(h, path, 5)
            if pid != file_pid:
                problems.append(f"run {r}: worker_pid {pid} but the task ran in {file_pid}")
                pid = file_pid
            assert pid is not None
            dh = done_time(h)
            t0 = perf()
            ok = h.cancel()
            t1 = perf()
            t_gone = wait_gone(pid, 5.0)
            wait_until(h.done, 5.0)
            returned.append(bool(ok))
            ret.append(t1 - t0)
            if t_gone is None:
                problems.append(f"run {r}: process {pid} alive 5 s after cancel()")
            else:
                gone.append(t_gone - t0)
            done.append(when(dh) - t0)
            warm(pool)
    out: Figures = {
        "gone_ms": median(gone) * 1e3 if gone else math.nan,
        "cancel_call_ms": median(ret) * 1e3,
        "done_ms": median(done) * 1e3 if done else math.nan,
        "cancel_returned_true": sum(returned),
        "repeats": len(returned),
        "gone_runs_ms": _ms(gone),
    }
    if problems:
        out["problems"] = problems
    return out


# --------------------------------------------------------------- supersede


def supersede(peer: str, cfg: Config, tmp: str) -> Figures:
    """sup.schedule(hang, key="k") runs; sup.schedule(identity, key="k") supersedes it."""
    if peer != "taskwarden":
        raise NotSupported("no task keys")
    gone: list[float] = []
    old_done: list[float] = []
    served: list[float] = []
    problems: list[str] = []
    with pool_of(peer) as pool:
        assert isinstance(pool, TaskwardenAdapter)
        sup = pool.sup
        warm(pool)
        for r in range(cfg.kill_repeats):
            path = os.path.join(tmp, f"supersede-{r}.pid")
            old = sup.schedule(hang, args=(path,), key="k")
            file_pid = read_pid(path, 10)
            if not wait_until(partial(pool.is_running, old), 10):
                raise TimeoutError("the old task never showed as running")
            pid = pool.worker_pid(old, path, 5) or file_pid
            assert pid is not None
            do = done_time(old)
            t0 = perf()
            new = sup.schedule(identity, args=(r,), key="k")
            dn = done_time(new)
            t_gone = wait_gone(pid, 5.0)
            if new.result(15) != r:
                raise AssertionError("the superseding task returned a wrong result")
            if not wait_until(old.done, 5.0):
                state = old.state
                old.cancel()
                raise AssertionError(
                    f"not superseded: the old task is still {state} 5 s after "
                    "schedule(fn, key='k') ran its successor"
                )
            exc = old.exception(timeout=0)
            if type(exc).__name__ != "TaskSuperseded":
                problems.append(f"run {r}: old task ended with {exc!r}, not TaskSuperseded")
            if t_gone is None:
                problems.append(f"run {r}: old process {pid} alive 5 s later")
            else:
                gone.append(t_gone - t0)
            old_done.append(when(do) - t0)
            served.append(when(dn) - t0)
            warm(pool)
    out: Figures = {
        "gone_ms": median(gone) * 1e3 if gone else math.nan,
        "old_done_ms": median(old_done) * 1e3,
        "new_result_ms": median(served) * 1e3,
        "repeats": cfg.kill_repeats,
    }
    if problems:
        out["problems"] = problems
    return out


# ------------------------------------------------------------------- timer


def _lateness(path: str, t0: float, duration: float, period: float) -> Figures:
    try:
        with open(path) as f:
            times = [float(line) for line in f if line.strip()]
    except FileNotFoundError:
        times = []
    lat: list[float] = []
    slots: list[int] = []
    for t in sorted(times):
        k = math.floor((t - t0 + 0.002) / period)  # 2 ms of tolerance for an early start
        if k < 0 or k * period > duration + 1e-9:
            continue
        slots.append(k)
        lat.append(t - (t0 + k * period))
    expected = math.floor(duration / period + 1e-9) + 1
    if not lat:
        raise AssertionError("the periodic job never ran")
    return {
        "p50_ms": percentile(lat, 50) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3,
        "max_ms": max(lat) * 1e3,
        "min_ms": min(lat) * 1e3,  # negative: a run started before its slot
        "early_runs": sum(1 for x in lat if x < 0),
        "runs": len(lat),
        "expected_runs": expected,
        "missed": expected - len(set(slots)),
        "doubled": len(slots) - len(set(slots)),
        "period_s": period,
        "duration_s": duration,
    }


def timer(peer: str, cfg: Config, tmp: str) -> Figures:
    """A 0.1 s periodic job: lateness of each run's start, taken inside the worker."""
    return _timer(peer, cfg.timer_s, tmp)


def timer_loaded(peer: str, cfg: Config, tmp: str) -> Figures:
    """The same while two processes keep both cores busy (a loaded machine)."""
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)
    ]
    try:
        return _timer(peer, cfg.timer_loaded_s, tmp)
    finally:
        for b in burners:
            b.kill()
            b.wait()


def _timer(peer: str, duration: float, tmp: str) -> Figures:
    period = TIMER_PERIOD
    path = os.path.join(tmp, "timer.txt")
    if peer == "taskwarden":
        with pool_of("taskwarden") as pool:
            assert isinstance(pool, TaskwardenAdapter)
            warm(pool)
            t0 = time.time()
            job = pool.sup.schedule(record_time, args=(path,), every=period, delay=0)
            time.sleep(max(0.0, t0 + duration + period / 2 - time.time()))
            job.cancel()
            time.sleep(period)
    elif peer == "sched":
        with pool_of("ppe") as pool:
            warm(pool)
            s = sched.scheduler(time.time, time.sleep)
            t0 = time.time() + 0.05

            def tick(k: int) -> None:
                pool.submit(record_time, path)
                if (k + 1) * period <= duration + 1e-9:
                    s.enterabs(t0 + (k + 1) * period, 0, tick, (k + 1,))

            s.enterabs(t0, 0, tick, (0,))
            th = threading.Thread(target=s.run, daemon=True)
            th.start()
            th.join(duration + 10)
            time.sleep(period)
    elif peer == "apscheduler":
        t0 = _apscheduler_timer(path, tmp, duration, period)
    else:
        raise NotSupported("not a scheduler")
    return _lateness(path, t0, duration, period)


def _apscheduler_timer(path: str, tmp: str, duration: float, period: float) -> float:
    import logging
    from datetime import datetime, timedelta, timezone

    from apscheduler.executors.pool import ProcessPoolExecutor as APSProcessPool
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    utc = timezone.utc
    scheduler = BackgroundScheduler(
        executors={"default": APSProcessPool(2)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 1},
        timezone=utc,
    )
    scheduler.start()
    try:
        warm_path = os.path.join(tmp, "aps-warm.txt")
        for _ in range(2):
            scheduler.add_job(record_time, "date", run_date=datetime.now(utc), args=[warm_path])
        if not wait_until(lambda: os.path.exists(warm_path), 30, poll=0.01):
            raise TimeoutError("APScheduler warm-up job never ran")
        time.sleep(0.1)
        dt0 = datetime.now(utc) + timedelta(seconds=0.1)
        t0 = dt0.timestamp()
        job = scheduler.add_job(
            record_time,
            IntervalTrigger(seconds=period, start_date=dt0, timezone=utc),
            args=[path],
        )
        time.sleep(max(0.0, t0 + duration + period / 2 - time.time()))
        job.remove()
        time.sleep(period)
    finally:
        scheduler.shutdown(wait=True)
    return t0


# -------------------------------------------------------------- heap scale


def _heap(peer: str, cfg: Config, n: int) -> Figures:
    if peer == "sched":
        s = sched.scheduler(time.monotonic, time.sleep)
        gc.collect()
        r0 = rss()
        t0 = perf()
        for _ in range(n):
            s.enter(3600, 0, noop)
        t1 = perf()
        r1 = rss()
        return {
            "n": n,
            "schedule_s": t1 - t0,
            "per_task_us": (t1 - t0) / n * 1e6,
            "bytes_per_task": (r1 - r0) / n,
        }
    if peer != "taskwarden":
        raise NotSupported("no scheduling")
    out: Figures = {"n": n}
    with pool_of("taskwarden") as pool:
        assert isinstance(pool, TaskwardenAdapter)
        pool.shutdown_timeout = 300.0
        sup = pool.sup
        warm(pool)
        gc.collect()
        r0 = rss()
        t0 = perf()
        for _ in range(n):
            sup.schedule(noop, delay=3600)
        t1 = perf()
        out["schedule_s"] = t1 - t0
        out["per_task_us"] = (t1 - t0) / n * 1e6

        def absorbed() -> bool:
            return int(sup.stats()["scheduled"]) >= n

        try:
            if wait_until(absorbed, 120, poll=0.01):
                out["absorbed_s"] = perf() - t0
            else:
                out["stats_scheduled"] = sup.stats()["scheduled"]
        except (AttributeError, KeyError, TypeError, NotImplementedError) as e:
            out["stats_error"] = f"{type(e).__name__}: {e}"
        gc.collect()
        out["bytes_per_task"] = (rss() - r0) / n
        time.sleep(0.5)  # let the dust settle before the idle measurement
        me = cpu_seconds()
        kids = children_cpu_seconds()
        w0 = perf()
        time.sleep(cfg.idle_s)
        wall = perf() - w0
        out["idle_cpu_pct"] = (cpu_seconds() - me) / wall * 100
        out["idle_workers_cpu_pct"] = (children_cpu_seconds() - kids) / wall * 100
        out["idle_s"] = round(wall, 2)
        try:
            got = sup.submit(identity, 42).result(timeout=30)
            w1 = perf()
            out["served_while_loaded_ms"] = (w1 - w0 - wall) * 1e3
            if got != 42:
                out["problem"] = f"a task among {n} scheduled returned {got!r}"
        except Exception as e:
            out["submit_error"] = f"{type(e).__name__}: {e}"
        s0 = perf()
        pool.close()
        out["shutdown_s"] = perf() - s0
    return out


def heap_100k(peer: str, cfg: Config, tmp: str) -> Figures:
    """Schedule 100,000 tasks an hour ahead; time, memory per task, idle CPU."""
    return _heap(peer, cfg, 100_000)


def heap_1m(peer: str, cfg: Config, tmp: str) -> Figures:
    """Schedule 1,000,000 tasks an hour ahead; time, memory per task, idle CPU."""
    return _heap(peer, cfg, 1_000_000)


# ------------------------------------------------------------- hang storm

STORM_TASKS = 100  # half of them hang


def _storm(peer: str, cfg: Config, limit: float) -> Figures:
    """100 tasks on 2 workers, every other one hanging, each with ``limit`` as its time
    limit: total time until every task has its outcome, against the floor (the time
    spent waiting on deadlines alone: hangs x limit / workers)."""
    if peer not in ("taskwarden", "pebble"):
        raise NotSupported("no per-task timeout")
    totals: list[float] = []
    problems: list[str] = []
    hangs = STORM_TASKS // 2
    floor = hangs * limit / 2
    with pool_of(peer) as pool:
        for r in range(cfg.repeats + 1):
            warm(pool)
            t0 = perf()
            handles = [
                pool.submit_timeout(hang if i % 2 else identity, (() if i % 2 else (i,)), limit)
                for i in range(STORM_TASKS)
            ]
            timed_out = 0
            for i, h in enumerate(handles):
                exc = h.exception(timeout=60)
                if i % 2:
                    timed_out += isinstance(exc, TimeoutError)
                elif exc is not None:
                    problems.append(f"round {r}: trivial task {i} failed: {exc!r}")
            totals.append(perf() - t0)
            if timed_out != hangs:
                problems.append(f"round {r}: {timed_out} of {hangs} hung tasks timed out")
    total = median(totals)
    out: Figures = {
        "total_s": total,
        "floor_s": floor,
        "x_floor": total / floor,
        "limit_s": limit,
        "tasks": STORM_TASKS,
        "rounds": len(totals),
        "total_runs_s": [round(t, 4) for t in totals],
    }
    if problems:
        out["problems"] = problems
    return out


def storm_10ms(peer: str, cfg: Config, tmp: str) -> Figures:
    return _storm(peer, cfg, 0.01)


def storm_50ms(peer: str, cfg: Config, tmp: str) -> Figures:
    return _storm(peer, cfg, 0.05)


def replacement(peer: str, cfg: Config, tmp: str) -> Figures:
    """Both workers hang past a 0.1 s limit; at the deadline a 1 s task takes the first
    process free (taskwarden's spare), so that the trivial task submitted next has to
    wait for a freshly started process: time from the deadline to its result."""
    if peer not in ("taskwarden", "pebble"):
        raise NotSupported("no per-task timeout")
    T = 0.1
    ready: list[float] = []
    with pool_of(peer) as pool:
        for _ in range(cfg.kill_repeats):
            warm(pool)
            t0 = perf()
            hung = [pool.submit_timeout(hang, (), T) for _ in range(2)]
            time.sleep(max(0.0, t0 + T - perf()))
            busy = pool.submit(sleep_pid, 1.0)
            probe = pool.submit(identity, 7)
            served = done_time(probe)
            if pool.result(probe, 30) != 7:
                raise AssertionError("the task after the kills returned a wrong result")
            for h in hung:
                if not isinstance(h.exception(timeout=30), TimeoutError):
                    raise AssertionError("a hung task did not time out")
            ready.append(when(served) - (t0 + T))
            pool.result(busy, 30)
    return {
        "ready_ms": median(ready) * 1e3,
        "limit_s": T,
        "repeats": len(ready),
        "ready_runs_ms": _ms(ready),
    }


KILL_RATE_TASKS = 100  # every one hangs
KILL_RATE_LIMIT = 0.01  # seconds: each task's time limit


def kill_rate(peer: str, cfg: Config, tmp: str) -> Figures:
    """100 tasks on 2 workers, every one hanging past a 0.01 s limit: each costs a kill
    and a replacement process. Kills per second until every task has timed out, and
    its floor (the deadlines alone: 2 workers / limit)."""
    if peer not in ("taskwarden", "pebble"):
        raise NotSupported("no per-task timeout")
    rates: list[float] = []
    problems: list[str] = []
    with pool_of(peer) as pool:
        for r in range(cfg.repeats + 1):
            warm(pool)
            t0 = perf()
            handles = [pool.submit_timeout(hang, (), KILL_RATE_LIMIT)
                       for _ in range(KILL_RATE_TASKS)]
            timed_out = sum(isinstance(h.exception(timeout=60), TimeoutError) for h in handles)
            rates.append(KILL_RATE_TASKS / (perf() - t0))
            if timed_out != KILL_RATE_TASKS:
                problems.append(f"round {r}: {timed_out} of {KILL_RATE_TASKS} timed out")
    out: Figures = {
        "kills_per_s": median(rates),
        "ceiling_per_s": 2 / KILL_RATE_LIMIT,
        "limit_s": KILL_RATE_LIMIT,
        "tasks": KILL_RATE_TASKS,
        "rate_runs": [round(x, 1) for x in rates],
    }
    if problems:
        out["problems"] = problems
    return out


# --------------------------------------------------------------- heartbeat


def heartbeat(peer: str, cfg: Config, tmp: str) -> Figures:
    """Cost of one taskwarden.heartbeat() call inside a task (and outside a worker)."""
    if peer != "taskwarden":
        raise NotSupported("no heartbeat")
    import taskwarden

    n = cfg.heartbeat_n
    hb = taskwarden.heartbeat
    t0 = perf()
    for _ in range(n):
        hb()
    outside_ns = (perf() - t0) / n * 1e9
    with pool_of("taskwarden") as pool:
        assert isinstance(pool, TaskwardenAdapter)
        warm(pool)
        watched = pool.sup.schedule(heartbeat_cost, args=(n,), heartbeat=30).result(timeout=120)
        plain = pool.sup.schedule(heartbeat_cost, args=(n,)).result(timeout=120)
    return {
        "heartbeat_us": watched["heartbeat_ns"] / 1e3,
        "heartbeat_progress_us": watched["heartbeat_progress_ns"] / 1e3,
        "heartbeat_no_policy_us": plain["heartbeat_ns"] / 1e3,
        "empty_call_us": watched["empty_call_ns"] / 1e3,
        "outside_worker_us": outside_ns / 1e3,
        "calls": n,
    }


# ----------------------------------------------------------- large results

BIG_RESULTS = 1_000
BIG_SIZE = 1 << 20


def big_results(peer: str, cfg: Config, tmp: str) -> Figures:
    """1,000 tasks returning 1 MiB each through the pool's ``map``, every result consumed
    and dropped as it comes: how much the parent's RSS grew (after ``gc.collect()``)."""
    mib = float(1 << 20)
    with pool_of(peer) as pool:
        warm(pool)
        assert len(list(pool.map(blob, range(8)))) == 8  # the result path, warm
        gc.collect()
        r0 = rss()
        peak = r0
        total = 0
        t0 = perf()
        for i, b in enumerate(pool.map(blob, range(BIG_RESULTS))):
            total += len(b)
            if i % 25 == 0:
                peak = max(peak, rss())
        del b
        elapsed = perf() - t0
        gc.collect()
        r1 = rss()
    if total != BIG_RESULTS * BIG_SIZE:
        raise AssertionError(f"got {total} bytes of results, not {BIG_RESULTS * BIG_SIZE}")
    return {
        "grown_mib": (r1 - r0) / mib,
        "peak_mib": (max(peak, r1) - r0) / mib,  # while consuming, sampled every 25 results
        "elapsed_s": elapsed,
        "tasks": BIG_RESULTS,
    }


# ---------------------------------------------------------------- registry


POOLS = ("taskwarden", "ppe", "loky", "pebble", "mp")


@dataclass(frozen=True)
class Bench:
    fn: Callable[[str, Config, str], Figures]
    peers: tuple[str, ...]
    budget_s: float  # a cell is killed past this (a hung peer must not stall the run)
    quick: bool = True  # also part of --quick
    notes: tuple[tuple[str, str], ...] = ()  # (peer, reason) shown without running
    # Rounds of every peer's cell, interleaved (full runs only): figures are medians over
    # rounds, and ratios medians of per-round ratios, so that drift in the machine's load
    # falls on both sides of a ratio.
    rounds: int = 1


_NO_TIMEOUT = (("ppe", "no timeout"), ("loky", "no timeout"), ("mp", "no timeout"))

BENCHMARKS: dict[str, Bench] = {
    "throughput": Bench(throughput, POOLS, 150, rounds=3),
    "throughput_timeout": Bench(throughput_timeout, ("taskwarden", "pebble"), 150,
                                notes=_NO_TIMEOUT, rounds=3),
    "latency": Bench(latency, POOLS, 90, rounds=3),
    "cold_start": Bench(cold_start, POOLS, 90, rounds=3),
    "kill_timeout": Bench(kill_timeout, ("taskwarden", "pebble"), 120, notes=_NO_TIMEOUT),
    "cancel_running": Bench(cancel_running, ("taskwarden", "pebble", "ppe", "loky"), 120,
                            notes=(("mp", "no cancel()"),)),
    "supersede": Bench(supersede, ("taskwarden",), 120),
    "timer": Bench(timer, ("taskwarden", "sched", "apscheduler"), 90),
    "timer_loaded": Bench(timer_loaded, ("taskwarden", "sched", "apscheduler"), 60),
    "heap_100k": Bench(heap_100k, ("taskwarden", "sched"), 180),
    "heap_1m": Bench(heap_1m, ("taskwarden", "sched"), 420, quick=False),
    "heartbeat": Bench(heartbeat, ("taskwarden",), 120),
    "storm_10ms": Bench(storm_10ms, ("taskwarden", "pebble"), 120, notes=_NO_TIMEOUT),
    "storm_50ms": Bench(storm_50ms, ("taskwarden", "pebble"), 120, notes=_NO_TIMEOUT),
    "replacement": Bench(replacement, ("taskwarden", "pebble"), 120, notes=_NO_TIMEOUT),
    "kill_rate": Bench(kill_rate, ("taskwarden", "pebble"), 120, notes=_NO_TIMEOUT),
    "big_results": Bench(big_results, ("taskwarden", "ppe", "loky", "pebble"), 90, rounds=3),
}
