"""Watching and killing one run's process tree (the script and everything it starts).

``TreeSampler`` samples the memory of the whole tree every 20 ms, because
``ru_maxrss`` only knows the largest single process, not the sum of a script
and its children alive at the same time. The sum is of proportional set
sizes (PSS, from ``/proc/PID/smaps_rollup``): a page shared by ten processes
counts a tenth in each, so the tree's shared libraries count once, not once
per process (summed RSS made 100 idle ``sleep`` processes look like 180 MiB).
Where smaps_rollup cannot be read, RSS stands in.

Finding what a run leaves behind. A process that double-forks or calls
``setsid`` leaves its parent's tree: the kernel hands an orphan to the
nearest *child subreaper* among its ancestors, else to init. So the command
line makes itself a subreaper (``taskwarden._proctree.become_subreaper``),
and so does each of its workers: an orphan of a run lands on the worker that
ran it (or on the command line, if that worker was killed), never on init.
Each run also carries ``TASKWARDEN_RUN=<id>`` in its environment, which every
descendant inherits, so that the command line can tell whose orphan it
holds. When a run ends, ``_proctree.leftovers`` lists what is still there,
and ``_proctree.kill_trees`` ends it.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterable

import psutil

SAMPLE_INTERVAL = 0.02
_CHILDREN_EVERY = 5  # listing descendants scans /proc: do it every 5th sample only
_STATS_EVERY = 0.25  # seconds between writes of the stats file
RUN_MARKER = "TASKWARDEN_RUN"  # environment variable naming the run a process belongs to


def describe(proc: psutil.Process) -> str:
    """``1234 sleep 60``: a pid and its command line, for reports."""
    try:
        cmdline = " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        cmdline = "?"
    return f"{proc.pid} {cmdline}"[:200]


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def marked(proc: psutil.Process, run_id: str) -> bool:
    """Whether ``proc`` was started (directly or not) by the run ``run_id``."""
    try:
        return proc.environ().get(RUN_MARKER) == run_id
    except psutil.Error:
        return False


class TreeSampler:
    """Samples a process tree's total RSS until ``stop()``; see the module docstring.

    With ``stats_path``, the peak so far and the tree's CPU time are written
    there (JSON, replaced atomically) every quarter second, so that the
    parent can still report them if this whole process is killed.
    """

    def __init__(self, pid: int, stats_path: str | None = None) -> None:
        self.peak_rss = 0
        self.cpu_seconds = 0.0
        self._root = psutil.Process(pid)
        self._seen: dict[int, psutil.Process] = {}
        self._reaped_cpu = 0.0
        self._stats_path = stats_path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="taskwarden-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def descendants(self) -> list[psutil.Process]:
        """Every descendant seen alive at some sample (some may be gone by now)."""
        return list(self._seen.values())

    def _loop(self) -> None:
        members: list[psutil.Process] = [self._root]
        last_stats = 0.0
        sample = 0
        while True:
            if sample % _CHILDREN_EVERY == 0:
                members = self._refresh_members(members)
            self._sample(members)
            now = time.monotonic()
            if self._stats_path is not None and now - last_stats >= _STATS_EVERY:
                last_stats = now
                self._write_stats()
            sample += 1
            if self._stop.wait(SAMPLE_INTERVAL):
                break
        self._sample(members)
        if self._stats_path is not None:
            self._write_stats()

    def _refresh_members(self, members: list[psutil.Process]) -> list[psutil.Process]:
        try:
            children = self._root.children(recursive=True)
        except psutil.Error:
            return members
        for child in children:
            self._seen.setdefault(child.pid, child)
        return [self._root, *children]

    def _sample(self, members: Iterable[psutil.Process]) -> None:
        rss = 0
        cpu = 0.0
        for proc in members:
            try:
                with proc.oneshot():
                    rss += _proportional_size(proc)
                    times = proc.cpu_times()
            except psutil.Error:  # gone, zombie or not ours: it no longer holds memory
                continue
            # A process's own high-water mark catches peaks between two samples.
            self.peak_rss = max(self.peak_rss, _high_water_mark(proc.pid))
            cpu += times.user + times.system
            if proc is self._root:
                # Descendants the script has waited for count in its children_* times.
                cpu += times.children_user + times.children_system
        self.peak_rss = max(self.peak_rss, rss)
        self.cpu_seconds = max(self.cpu_seconds, cpu)

    def _write_stats(self) -> None:
        assert self._stats_path is not None
        tmp = f"{self._stats_path}.tmp"
        with contextlib.suppress(OSError):
            with open(tmp, "w") as f:
                json.dump({"peak_rss": self.peak_rss, "cpu": self.cpu_seconds}, f)
            os.replace(tmp, self._stats_path)


def _proc_kb(path: str, field: bytes) -> int | None:
    """A ``Field:  N kB`` line of a /proc file, in bytes; None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _proportional_size(proc: psutil.Process) -> int:
    """The process's PSS in bytes (Linux), else its RSS."""
    pss = _proc_kb(f"/proc/{proc.pid}/smaps_rollup", b"Pss:")
    return int(proc.memory_info().rss) if pss is None else pss


def _high_water_mark(pid: int) -> int:
    """Linux: the process's peak RSS since its exec (VmHWM), in bytes; 0 elsewhere.

    Unlike ``ru_maxrss``, VmHWM belongs to the process's current memory map,
    so it does not carry the parent's peak over fork and exec.
    """
    return _proc_kb(f"/proc/{pid}/status", b"VmHWM:") or 0
