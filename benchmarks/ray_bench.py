"""taskwarden's Ray engine against plain Ray (remote functions, actors), 2 slots each.

On one local Ray (``num_cpus=2``, loopback only, no dashboard), in one run:

- throughput of trivial tasks (tasks/s), with taskwarden's local engine too;
- round trip of one trivial task, submitted and awaited one at a time;
- time from a deadline to the hung task's process gone, for a task in Python
  code and one in C code holding the GIL. taskwarden: ``timeout=``. Plain Ray
  has no time limit: the user's own ``ray.wait(timeout)`` then
  ``ray.cancel(force=True)`` (tasks) or ``ray.kill`` (actors);
- supersede: from a newer task for the same key until the old process is gone
  and the new result is in (plain Ray: cancel or kill the old one, submit anew);
- the Ray engine's throughput and round trip over TCP, as from another node (a
  worker on the supervisor's machine connects over a Unix socket).

"Gone" is seen through a pidfd on the task's process (the kernel's word).
Medians over the repeats; ratios against plain Ray tasks and the local engine.

    python benchmarks/ray_bench.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import select
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# Set before Ray is imported (it reads them at import): every port on loopback, the
# token in the environment (no ~/.ray/auth_token), nothing restarted or reported.
os.environ.update({
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_ENABLE_AUTO_CONNECT": "0",
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": secrets.token_hex(32),
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONPATH": os.pathsep.join([str(HERE), *(p for p in sys.path if p)]),
})

from _common import median  # noqa: E402

import _tasks as T  # noqa: E402

WORKERS = 2
TIMEOUT = 0.2  # the hung tasks' time limit (s)


# ----------------------------------------------------------------- helpers
def read_pid(path: Path, timeout: float = 60.0) -> tuple[int, float]:
    """(pid, deadline) a task wrote (the deadline taskwarden gave it, or else the time
    it began plus TIMEOUT); waits for the file."""
    end = time.monotonic() + timeout
    while True:
        try:
            pid, began, deadline = path.read_text().split()
            return int(pid), float(deadline) or float(began) + TIMEOUT
        except (OSError, ValueError):
            if time.monotonic() > end:
                raise TimeoutError(f"no pid in {path}") from None
            time.sleep(0.0005)


def gone_at(pid: int, timeout: float = 30.0) -> float:
    """Wall-clock time at which ``pid`` exited (pidfd: the kernel says so)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return time.time()
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise TimeoutError(f"process {pid} still runs after {timeout} s")
        return time.time()
    finally:
        os.close(fd)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


# ------------------------------------------------------------- taskwarden
def both_ready(sup: Any) -> None:
    """Wait until both workers run tasks (a killed one's replacement is up)."""
    while len(set(sup.map(T.sleep_pid, [0.02] * WORKERS))) < WORKERS:
        pass


def tw_throughput(sup: Any, n: int) -> float:
    list(sup.map(T.identity, range(200)))  # warm
    t0 = time.perf_counter()
    out = list(sup.map(T.identity, range(n)))
    dt = time.perf_counter() - t0
    assert out[-1] == n - 1
    return n / dt


def tw_round_trip(sup: Any, n: int) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        sup.submit(T.identity, i).result()
        times.append(time.perf_counter() - t0)
    return median(times)


def tw_kill(sup: Any, fn: Callable[[str], None], tmp: Path, reps: int) -> float:
    late = []
    for _ in range(reps):
        path = Path(tempfile.mkdtemp(dir=tmp)) / "pid"
        task = sup.schedule(fn, args=(str(path),), timeout=TIMEOUT)
        pid, deadline = read_pid(path)
        late.append(gone_at(pid) - deadline)
        with contextlib.suppress(Exception):
            task.result(timeout=30)  # TaskTimeout
        both_ready(sup)
    return median(late)


def tw_supersede(sup: Any, tmp: Path, reps: int) -> float:
    spans = []
    for i in range(reps):
        path = Path(tempfile.mkdtemp(dir=tmp)) / "pid"
        sup.schedule(T.spin, args=(str(path),), key="k")
        pid, _ = read_pid(path)
        t0 = time.time()
        new = sup.schedule(T.identity, args=(i,), key="k")
        assert new.result(timeout=30) == i
        t_new = time.time()
        spans.append(max(t_new, gone_at(pid)) - t0)
        both_ready(sup)
    return median(spans)


def tw_engine(supervisor: Any, engine: str, results: dict[str, Any], tmp: Path,
              n_tw: int, n_rt: int, reps: int) -> None:
    t0 = time.perf_counter()
    with supervisor(workers=WORKERS, engine=engine) as sup:
        both_ready(sup)
        results[f"tw_{engine}_both_ready_s"] = round(time.perf_counter() - t0, 3)
        results[f"tw_{engine}_tasks_per_s"] = tw_throughput(sup, n_tw)
        results[f"tw_{engine}_round_trip_ms"] = ms(tw_round_trip(sup, n_rt))
        results[f"tw_{engine}_kill_python_ms"] = ms(tw_kill(sup, T.spin, tmp, reps))
        results[f"tw_{engine}_kill_gil_ms"] = ms(tw_kill(sup, T.hold_the_gil, tmp, reps))
        results[f"tw_{engine}_supersede_ms"] = ms(tw_supersede(sup, tmp, reps))


# --------------------------------------------------------------- plain Ray
def ray_task_throughput(ray: Any, f: Any, n: int) -> float:
    ray.get([f.remote(i) for i in range(100)])
    t0 = time.perf_counter()
    out = ray.get([f.remote(i) for i in range(n)])
    dt = time.perf_counter() - t0
    assert out[-1] == n - 1
    return n / dt


def ray_actor_throughput(ray: Any, actors: list[Any], n: int) -> float:
    ray.get([a.identity.remote(i) for i, a in zip(range(100), actors * 50, strict=False)])
    t0 = time.perf_counter()
    out = ray.get([actors[i % len(actors)].identity.remote(i) for i in range(n)])
    dt = time.perf_counter() - t0
    assert out[-1] == n - 1
    return n / dt


def ray_round_trip(ray: Any, call: Callable[[int], Any], n: int) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        ray.get(call(i))
        times.append(time.perf_counter() - t0)
    return median(times)


def ray_kill(ray: Any, start: Any, stop: Any, tmp: Path, reps: int, name: str) -> float:
    """The user's own time limit: ray.wait(timeout) on a running call, then ``stop`` it
    (a task: ray.cancel(force=True); an actor: ray.kill). ``start(path)`` returns the
    call's ref and what ``stop`` takes."""
    late = []
    for i in range(reps):
        path = tmp / f"ray-kill-{name}-{i}"
        ref, handle = start(str(path))
        pid, _ = read_pid(path)
        deadline = time.time() + TIMEOUT
        ready, _ = ray.wait([ref], timeout=TIMEOUT)
        assert not ready
        stop(handle)
        late.append(gone_at(pid) - deadline)
    return median(late)


def ray_task_kill(ray: Any, remote_fn: Any, tmp: Path, reps: int, name: str) -> float:
    def start(path: str) -> tuple[Any, Any]:
        ref = remote_fn.remote(path)
        return ref, ref

    return ray_kill(ray, start, lambda ref: ray.cancel(ref, force=True), tmp, reps, name)


def ray_actor_kill(ray: Any, cls: Any, tmp: Path, reps: int, name: str) -> float:
    def start(path: str) -> tuple[Any, Any]:
        actor = cls.remote()
        return actor.run.remote(name, path), actor

    return ray_kill(ray, start, ray.kill, tmp, reps, f"actor-{name}")


def ray_task_supersede(ray: Any, spin: Any, ident: Any, tmp: Path, reps: int) -> float:
    spans = []
    for i in range(reps):
        path = tmp / f"ray-sup-{i}"
        old = spin.remote(str(path))
        pid, _ = read_pid(path)
        t0 = time.time()
        ray.cancel(old, force=True)
        assert ray.get(ident.remote(i)) == i
        t_new = time.time()
        spans.append(max(t_new, gone_at(pid)) - t0)
    return median(spans)


def ray_actor_supersede(ray: Any, cls: Any, tmp: Path, reps: int) -> float:
    spans = []
    spare = cls.remote()
    ray.get(spare.identity.remote(0))
    for i in range(reps):
        path = tmp / f"ray-asup-{i}"
        actor = cls.remote()
        actor.run.remote("spin", str(path))
        pid, _ = read_pid(path)
        t0 = time.time()
        ray.kill(actor)
        assert ray.get(spare.identity.remote(i)) == i
        t_new = time.time()
        spans.append(max(t_new, gone_at(pid)) - t0)
    return median(spans)


# -------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer tasks and repeats")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    n_tw, n_ray, n_rt, reps = (5000, 1000, 100, 5) if args.quick else (20000, 3000, 300, 11)

    import logging

    import ray

    from taskwarden import Supervisor

    logging.getLogger("taskwarden").setLevel(logging.ERROR)  # not a line per kill

    temp = tempfile.mkdtemp(prefix="tw-ray-")
    tmp = Path(tempfile.mkdtemp(prefix="tw-bench-"))
    results: dict[str, Any] = {"ray_version": ray.__version__, "workers": WORKERS,
                               "timeout_s": TIMEOUT, "reps": reps}
    # The local engine first, before Ray starts in this process (the same machine and
    # minute: the figures the Ray engine's are compared with).
    tw_engine(Supervisor, "local", results, tmp, n_tw, n_rt, reps)
    ray.init(num_cpus=WORKERS, include_dashboard=False, object_store_memory=80 << 20,
             _temp_dir=temp, configure_logging=False, log_to_driver=False)
    try:
        ident = ray.remote(T.identity)
        spin = ray.remote(T.spin)
        gil = ray.remote(T.hold_the_gil)

        @ray.remote
        class Slot:
            def identity(self, x: int) -> int:
                return x

            def run(self, name: str, path: str) -> None:
                getattr(T, name)(path)

        # Plain Ray: remote functions, then actors.
        results["ray_tasks_per_s"] = ray_task_throughput(ray, ident, n_ray)
        results["ray_task_round_trip_ms"] = ms(ray_round_trip(ray, ident.remote, n_rt))
        results["ray_task_kill_python_ms"] = ms(ray_task_kill(ray, spin, tmp, reps, "spin"))
        results["ray_task_kill_gil_ms"] = ms(ray_task_kill(ray, gil, tmp, reps, "gil"))
        results["ray_task_supersede_ms"] = ms(ray_task_supersede(ray, spin, ident, tmp, reps))
        actors = [Slot.remote() for _ in range(WORKERS)]
        results["ray_actor_tasks_per_s"] = ray_actor_throughput(ray, actors, n_ray)
        results["ray_actor_round_trip_ms"] = ms(
            ray_round_trip(ray, actors[0].identity.remote, n_rt))
        for a in actors:
            ray.kill(a)
        results["ray_actor_kill_python_ms"] = ms(ray_actor_kill(ray, Slot, tmp, reps, "spin"))
        results["ray_actor_kill_gil_ms"] = ms(
            ray_actor_kill(ray, Slot, tmp, reps, "hold_the_gil"))
        results["ray_actor_supersede_ms"] = ms(ray_actor_supersede(ray, Slot, tmp, reps))

        tw_engine(Supervisor, "ray", results, tmp, n_tw, n_rt, reps)
        # As from another node: TCP, not the Unix socket a worker on this machine uses.
        from taskwarden.pool import ray_pool

        ray_pool.UNIX_SOCKETS = False
        with Supervisor(workers=WORKERS, engine="ray") as sup:
            both_ready(sup)
            results["tw_ray_tcp_tasks_per_s"] = tw_throughput(sup, n_tw)
            results["tw_ray_tcp_round_trip_ms"] = ms(tw_round_trip(sup, n_rt))
        ray_pool.UNIX_SOCKETS = True
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)

    r = results
    r["ratio_tw_ray_vs_ray_tasks"] = round(r["tw_ray_tasks_per_s"] / r["ray_tasks_per_s"], 1)
    r["ratio_tw_ray_vs_ray_actors"] = round(
        r["tw_ray_tasks_per_s"] / r["ray_actor_tasks_per_s"], 1)
    r["ratio_tw_ray_vs_local"] = round(r["tw_ray_tasks_per_s"] / r["tw_local_tasks_per_s"], 2)
    for key in list(r):
        if key.endswith("_per_s"):
            r[key] = round(r[key])
    width = max(map(len, r))
    for key, value in r.items():
        print(f"{key:<{width}}  {value}")
    if args.json is not None:
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
