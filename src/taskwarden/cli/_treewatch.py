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

What the sampling costs is taken from the run it measures (the sampler
shares the machine with it), so it is kept small:

- the tree is read from ``/proc/PID/task/*/children`` (the kernel's own
  lists, microseconds, where psutil's ``children()`` reads every process on
  the machine, milliseconds), each file with one ``os.read``;
- each sample reads one line per process: its high-water mark (VmHWM);
- CPU times (``/proc/PID/stat``) are read only when the stats file is due
  (every quarter second) and at the end. A process's times include those of
  the children it has waited for, and a dead child is in no other live
  process's, so the sum over the live tree only grows as the tree's processes
  end and are waited for; a reading every quarter second loses nothing but
  what unwaited orphans spent between two readings;
- the PSS walk (``smaps_rollup``, a walk of every page table of the process,
  and the most costly read by far: it also holds the process's memory map
  lock, which its ``mmap``, ``fork`` and ``exec`` then wait for) is made only
  while two or more processes are alive and the sum of their high-water marks
  could raise the peak (a process's PSS never exceeds its own high-water
  mark); and then only if it could raise it by more than 16 MiB, or if two of
  them have been alive for 0.1 s or more. So a tree that holds memory, or
  holds it for a while, is summed page by page; the short-lived helpers a
  shell script forks (a pyenv shim forks a dozen small ``bash`` processes per
  start, each alive a few milliseconds) count by their own high-water marks,
  and are not held up by the walk.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable

import psutil

from taskwarden._proctree import children, read_proc

SAMPLE_INTERVAL = 0.02
# The PSS walk is skipped while it could add at most this much to the peak, unless two
# or more of the live processes have been seen for _PSS_AGE (see the module docstring).
_PSS_SMALL = 16 * 2**20
_PSS_AGE = 0.1
_STATS_EVERY = 0.25  # seconds between writes of the stats file (the first one too)
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
    """Samples a process tree's memory and CPU until ``stop()``; see the module docstring.

    With ``stats_path``, the peak so far and the tree's CPU time are written
    there (JSON, replaced atomically) every quarter second, so that the
    parent can still report them if this whole process is killed.
    """

    def __init__(
        self,
        pid: int,
        stats_path: str | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.peak_rss = 0
        self.cpu_seconds = 0.0
        self._pid = pid
        # Each descendant seen: its start time (to tell it from a later process given
        # the same pid), and when it was first seen (our clock).
        self._seen: dict[int, tuple[float, float]] = {}
        self._stats_path = stats_path
        self._clock = clock
        self._started = clock()  # when the root was first seen
        self._last_stats = self._started  # nothing worth writing before an interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="taskwarden-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def descendants(self) -> list[psutil.Process]:
        """Every descendant seen at some sample that is still there (a zombie, maybe)."""
        found = []
        for pid, (started, _) in self._seen.items():
            if _start_time(pid) == started:
                with contextlib.suppress(psutil.Error):
                    found.append(psutil.Process(pid))
        return found

    def sample(self) -> None:
        """Take one sample now (with CPU times and the stats file, if they are due): for a
        caller that samples from its own thread instead of ``start()``."""
        now = self._clock()
        due = now - self._last_stats >= _STATS_EVERY
        self._sample(now, with_cpu=due)
        if due:
            self._last_stats = now
            if self._stats_path is not None:
                self._write_stats()

    def finish(self) -> None:
        """The last sample, and the stats file written (without ``start()``)."""
        self._sample(self._clock(), with_cpu=True)
        if self._stats_path is not None:
            self._write_stats()

    def _loop(self) -> None:
        # No sample at once: the process has only just exec'd (its VmHWM is the loader's
        # 2 MiB, which would stand as the "peak" of a run that ends before the next
        # sample), and its start is when the run is most sensitive to our CPU use.
        while not self._stop.wait(SAMPLE_INTERVAL):
            self.sample()
        self.finish()

    def _sample(self, now: float, *, with_cpu: bool) -> None:
        cpu = 0.0
        live = []
        settled = 0  # live processes seen for _PSS_AGE or more
        bound = 0  # the sum of the live processes' high-water marks: above any PSS sum
        frontier = [self._pid]  # the tree, level by level, parents before children
        while frontier:
            below: list[int] = []
            for pid in frontier:
                if pid == self._pid:
                    first_seen = self._started
                elif pid in self._seen:
                    first_seen = self._seen[pid][1]
                else:
                    started = _start_time(pid)
                    if started is None:
                        continue  # gone
                    self._seen[pid] = (started, now)
                    first_seen = now
                status = _status(pid)
                if status is None:
                    continue  # gone
                # A process's own high-water mark catches its peaks between two samples.
                hwm, threads = status
                if hwm:  # a zombie has no memory left (and no VmHWM line)
                    live.append(pid)
                    if now - first_seen >= _PSS_AGE:
                        settled += 1
                    bound += hwm
                    self.peak_rss = max(self.peak_rss, hwm)
                if with_cpu:
                    # With the children it has waited for: they are in no live process's.
                    cpu += _cpu_times(pid, with_children=True) or 0.0
                below += children(pid, single_threaded=threads == 1)
            frontier = below
        # Processes alive together: their sum, with the pages they share counted once.
        # Skipped when even the bound cannot raise the peak (PSS <= RSS <= VmHWM), and
        # while it could raise it a little only and the processes are short-lived.
        if (
            len(live) > 1
            and bound > self.peak_rss
            and (settled > 1 or bound - self.peak_rss > _PSS_SMALL)
        ):
            self.peak_rss = max(self.peak_rss, sum(_proportional_size(pid) for pid in live))
        if with_cpu:
            self.cpu_seconds = max(self.cpu_seconds, cpu)

    def _write_stats(self) -> None:
        assert self._stats_path is not None
        tmp = f"{self._stats_path}.tmp"
        with contextlib.suppress(OSError):
            with open(tmp, "w") as f:
                json.dump({"peak_rss": self.peak_rss, "cpu": self.cpu_seconds}, f)
            os.replace(tmp, self._stats_path)


_LINUX = sys.platform.startswith("linux")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if _LINUX else 100


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` after the command name (which may itself hold
    spaces and ")"): field N of stat(5) is item N - 3. None if the process is gone."""
    stat = read_proc(f"/proc/{pid}/stat", one_record=True)
    if not stat:
        return None
    fields = stat.rsplit(b")", 1)[-1].split()
    return fields if len(fields) > 19 else None


def _start_time(pid: int) -> float | None:
    """When ``pid`` started (in clock ticks after boot on Linux, else psutil's create
    time): with the pid, it names one process. None if it is gone."""
    if not _LINUX:
        try:
            return float(psutil.Process(pid).create_time())
        except psutil.Error:
            return None
    fields = _stat_fields(pid)
    return None if fields is None else float(fields[19])


def _cpu_times(pid: int, *, with_children: bool) -> float | None:
    """User + system seconds of ``pid`` (with ``with_children``, also of the children
    it has waited for); None if it is gone. Linux reads one /proc line; elsewhere psutil."""
    if not _LINUX:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            return None
        extra = times.children_user + times.children_system if with_children else 0.0
        return times.user + times.system + extra
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # utime, stime, cutime, cstime are fields 14-17 of stat(5).
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _CLOCK_TICKS


def _kb_field(text: bytes, field: bytes, *, unit: int = 1024) -> int | None:
    """A ``Field:  N kB`` line of a /proc file's ``text``, in bytes (``N * unit``);
    None if there is no such line (the field is never on the first line here)."""
    at = text.find(b"\n" + field)
    if at < 0:
        return None
    try:
        return int(text[at + 1 + len(field) :].split(None, 1)[0]) * unit
    except (ValueError, IndexError):
        return None


def _proportional_size(pid: int) -> int:
    """The process's PSS in bytes (Linux), else its RSS (0 if it is gone)."""
    text = read_proc(f"/proc/{pid}/smaps_rollup", one_record=True)
    pss = None if text is None else _kb_field(text, b"Pss:")
    if pss is not None:
        return pss
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def _status(pid: int) -> tuple[int, int] | None:
    """Linux: the process's peak RSS since its exec (VmHWM, bytes; 0 for a zombie) and
    its number of threads, from one read of /proc/PID/status; elsewhere its current RSS
    and 0. None if it is gone.

    Unlike ``ru_maxrss``, VmHWM belongs to the process's current memory map,
    so it does not carry the parent's peak over fork and exec.
    """
    if not _LINUX:
        try:
            return int(psutil.Process(pid).memory_info().rss), 0
        except psutil.Error:
            return None
    text = read_proc(f"/proc/{pid}/status", one_record=True)
    if text is None:
        return None
    return _kb_field(text, b"VmHWM:") or 0, _kb_field(text, b"Threads:", unit=1) or 0
