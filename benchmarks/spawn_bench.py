#!/usr/bin/env python
"""How long a new worker takes, from "start one" to its READY frame read by the supervisor.

    python benchmarks/spawn_bench.py [-n RUNS]

(a) loky's process context, ``ctx.Process(target=worker_process, ...)``: the pool's
    plain path (what its spawner thread does);
(b) multiprocessing's ``forkserver`` context, its server preloading taskwarden's
    worker module and cloudpickle (the server's own start is not counted);
(c) taskwarden's template process (pool/_template.py) forking on request (its
    own start, through loky's context, is printed apart).
Each: the worker is started, its READY read, then it is stopped and reaped.
Prints medians (and p10/p90) in milliseconds.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from loky.backend.context import get_context

from taskwarden.pool._template import Spawned, Template, supported
from taskwarden.pool._wire import READY, STOP, frame, split_frames
from taskwarden.pool._worker import worker_process

perf = time.perf_counter
PRELOAD = ["taskwarden.pool._worker", "cloudpickle"]
WORKER_ARGS: tuple[int, bytes | None, int | None] = (1, None, None)


def _read_ready(fd: int) -> int:
    buf = bytearray()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            raise RuntimeError("the worker closed its channel before READY")
        buf += chunk
        for msg in split_frames(buf):
            if msg[0] == READY:
                return int(msg[1])


def _stop(fd: int) -> None:
    os.write(fd, frame((STOP,)))


def via_context(ctx: Any) -> Callable[[], float]:
    def one() -> float:
        parent, child = ctx.Pipe(duplex=True)
        t0 = perf()
        p = ctx.Process(target=worker_process, args=(child, *WORKER_ARGS))
        p.start()
        child.close()
        _read_ready(parent.fileno())
        dt = perf() - t0
        _stop(parent.fileno())
        p.join()
        parent.close()
        return dt

    return one


def via_template(t: Template) -> Callable[[], float]:
    def one() -> float:
        t0 = perf()
        sock = t.fork(0)
        if sock is None:
            raise RuntimeError("the template refused a fork")
        sock.setblocking(True)
        _read_ready(sock.fileno())
        dt = perf() - t0
        events = t.wait_for(lambda ev: any(isinstance(e, Spawned) for e in ev), 10)
        spawned = next(e for e in events if isinstance(e, Spawned))
        _stop(sock.fileno())
        t.wait_for(lambda ev: bool(ev), 10)  # its exit
        t.release(0)
        os.close(spawned.pidfd)
        sock.close()
        return dt

    return one


def measure(name: str, one: Callable[[], float], runs: int) -> None:
    one()  # warm: caches, a forkserver's own start
    xs = sorted(one() * 1e3 for _ in range(runs))
    p10 = xs[len(xs) // 10]
    p90 = xs[(len(xs) * 9) // 10 - 1 if len(xs) >= 10 else -1]
    print(f"{name:<44} median {statistics.median(xs):7.2f} ms   "
          f"p10 {p10:7.2f}   p90 {p90:7.2f}   (n={runs})", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--runs", type=int, default=20)
    args = ap.parse_args()
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    measure("(a) loky context Process (today's path)", via_context(get_context("loky")),
            args.runs)
    fs = multiprocessing.get_context("forkserver")
    fs.set_forkserver_preload(PRELOAD)
    measure("(b) forkserver, preloaded", via_context(fs), args.runs)
    if not supported():
        print("(c) template: not supported on this platform")
        return 0
    t = Template(get_context("loky"), WORKER_ARGS)
    t0 = perf()
    t.start()
    print(f"    (template's own start through loky: {(perf() - t0) * 1e3:.1f} ms)")
    try:
        measure("(c) template fork", via_template(t), args.runs)
    finally:
        t.close()
    a, b = socket.socketpair()  # the floor: a bare fork whose child says one word
    try:
        def bare() -> float:
            t0 = perf()
            pid = os.fork()
            if pid == 0:
                os.write(b.fileno(), b"x")
                os._exit(0)
            a.recv(1)
            dt = perf() - t0
            os.waitpid(pid, 0)
            return dt

        measure("(floor) bare os.fork, one byte back", bare, args.runs)
    finally:
        a.close()
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
