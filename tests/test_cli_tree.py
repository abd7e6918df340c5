"""What the command line's tree code reads, and when: the sampler on a made-up tree
(its /proc reads replaced by tables), the sweep and the leftovers listing on real
processes.

What a run's sampler and sweep read is taken from the run they measure, so these
tests pin down what is read at each sample, not only what is reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from taskwarden._proctree import leftovers, read_proc, reap_zombie_children
from taskwarden.cli import _treewatch
from taskwarden.cli._runner import RunSpec, run_measured
from taskwarden.cli._treewatch import TreeSampler

pytestmark = pytest.mark.timeout(120)
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

MiB = 2**20
ROOT = 1000


class FakeTree:
    """A process tree as the sampler's /proc reads would see it, sample by sample."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pids: list[int] = [ROOT]  # the tree now, root first
        self.hwm: dict[int, int] = {}
        self.pss: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.pss_reads: list[int] = []
        self.cpu_reads: list[int] = []
        monkeypatch.setattr(_treewatch, "children", self._children)
        monkeypatch.setattr(_treewatch, "_start_time", self._start_time)
        monkeypatch.setattr(_treewatch, "_status", self._status)
        monkeypatch.setattr(_treewatch, "_proportional_size", self._pss)
        monkeypatch.setattr(_treewatch, "_cpu_times", self._cpu_times)

    def _children(self, pid: int, *, single_threaded: bool) -> list[int]:
        assert single_threaded  # each one's status said so: its threads are not listed
        return self.pids[1:] if pid == ROOT else []

    def _status(self, pid: int) -> tuple[int, int] | None:
        return (self.hwm.get(pid, 0), 1) if pid in self.pids else None

    def _start_time(self, pid: int) -> float | None:
        return float(pid) if pid in self.pids else None

    def _pss(self, pid: int) -> int:
        self.pss_reads.append(pid)
        return self.pss[pid]

    def _cpu_times(self, pid: int, *, with_children: bool) -> float | None:
        assert with_children  # a waited-for child is in no live process's times
        self.cpu_reads.append(pid)
        return self.cpu.get(pid) if pid in self.pids else None


def test_the_pss_walk_skips_small_short_lived_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    tree = FakeTree(monkeypatch)
    now = [0.0]
    sampler = TreeSampler(ROOT, clock=lambda: now[0])
    tree.hwm = {ROOT: 4 * MiB, 11: 3 * MiB, 12: 3 * MiB}
    tree.pss = {ROOT: 3 * MiB, 12: 3 * MiB}

    now[0] = 0.02
    tree.pids = [ROOT, 11]  # a helper forked by a shell script
    sampler.sample()
    now[0] = 0.04
    tree.pids = [ROOT, 12]  # gone, and another one started
    sampler.sample()
    now[0] = 0.12  # the root has been there for 0.1 s, 12 for 0.08 s only
    sampler.sample()
    assert tree.pss_reads == []  # each counts by its own high-water mark
    assert sampler.peak_rss == 4 * MiB

    now[0] = 0.14  # two processes that have lived 0.1 s together: summed, page by page
    sampler.sample()
    assert sorted(tree.pss_reads) == [12, ROOT]
    assert sampler.peak_rss == 6 * MiB

    tree.pss_reads.clear()
    tree.hwm = {ROOT: 3 * MiB, 12: 3 * MiB}  # even summed, they cannot raise the peak
    sampler.sample()
    assert tree.pss_reads == []
    assert sampler.peak_rss == 6 * MiB


def test_the_pss_walk_sums_a_young_tree_that_holds_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tree = FakeTree(monkeypatch)
    now = [0.0]
    sampler = TreeSampler(ROOT, clock=lambda: now[0])
    tree.hwm = {ROOT: 4 * MiB, 13: 30 * MiB, 14: 30 * MiB}  # could add more than 16 MiB
    tree.pss = {ROOT: 3 * MiB, 13: 20 * MiB, 14: 20 * MiB}
    now[0] = 0.02
    tree.pids = [ROOT, 13, 14]  # all seen for the first time
    sampler.sample()
    assert sorted(tree.pss_reads) == [13, 14, ROOT]
    assert sampler.peak_rss == 43 * MiB


def test_cpu_times_are_read_when_the_stats_are_due_and_at_the_end(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tree = FakeTree(monkeypatch)
    now = [0.0]
    stats = tmp_path / "stats"
    sampler = TreeSampler(ROOT, str(stats), clock=lambda: now[0])
    tree.pids = [ROOT, 21]
    tree.hwm = {ROOT: MiB, 21: MiB}
    tree.pss = {ROOT: MiB // 2, 21: MiB // 2}
    tree.cpu = {ROOT: 0.5, 21: 0.25}

    now[0] = 0.2
    sampler.sample()
    assert tree.cpu_reads == [] and sampler.cpu_seconds == 0.0
    assert not stats.exists()

    now[0] = 0.3  # a quarter second since the sampler started: the stats file is due
    sampler.sample()
    assert sorted(tree.cpu_reads) == [21, ROOT]
    assert sampler.cpu_seconds == 0.75
    assert json.loads(stats.read_text()) == {"peak_rss": MiB, "cpu": 0.75}

    tree.cpu_reads.clear()
    now[0] = 0.4
    sampler.sample()
    assert tree.cpu_reads == []

    tree.pids = [ROOT]  # 21 ended and was waited for: its time is in the root's now
    tree.cpu = {ROOT: 1.0}
    sampler.finish()
    assert tree.cpu_reads == [ROOT]
    assert sampler.cpu_seconds == 1.0
    assert json.loads(stats.read_text())["cpu"] == 1.0


def test_the_sampler_hands_over_only_descendants_that_are_still_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tree = FakeTree(monkeypatch)
    sampler = TreeSampler(ROOT, clock=lambda: 0.0)
    tree.pids = [ROOT, os.getpid()]  # one that is surely there (this process)
    sampler.sample()
    tree.pids = [ROOT]  # and now gone (as far as the start-time check can tell)
    assert sampler.descendants() == []
    tree.pids = [ROOT, os.getpid()]
    assert [p.pid for p in sampler.descendants()] == [os.getpid()]


@linux_only
def test_a_run_that_leaves_nothing_reads_no_process_outside_its_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # psutil's children() and process_iter() read every process on the machine
    # (milliseconds per run); the sweep walks the /proc children lists instead.
    def scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("a scan of every process")

    monkeypatch.setattr(psutil.Process, "children", scan)
    monkeypatch.setattr(psutil, "process_iter", scan)
    spec = RunSpec(
        command=("/bin/sh", "-c", "sleep 0.05 & wait"), shell=False, cwd=str(tmp_path),
        stderr_path=str(tmp_path / "err"), stats_path=str(tmp_path / "stats"),
        run_id="tree-test",
    )  # fmt: skip
    result = run_measured(spec, lambda progress: None)
    assert result["exit_status"] == 0
    assert result["left_behind"] == []


@linux_only
def test_leftovers_lists_zombie_children_and_reap_zombie_children_reaps_them() -> None:
    pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 0"], os.environ)
    reaped = False
    try:
        deadline = time.monotonic() + 30
        while not _zombie(pid):
            assert time.monotonic() < deadline, f"{pid} never became a zombie"
            time.sleep(0.005)
        assert pid in [p.pid for p in leftovers()]
        reap_zombie_children()
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped already
        reaped = True
    finally:
        if not reaped:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _zombie(pid: int) -> bool:
    stat = read_proc(f"/proc/{pid}/stat")
    return stat is not None and stat.rsplit(b")", 1)[1].split()[0] == b"Z"


@linux_only
def test_leftovers_lists_grandchildren_after_their_parents() -> None:
    proc = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        grandchild = int(proc.stdout.readline())
        found = [p.pid for p in leftovers()]
        assert found.index(proc.pid) < found.index(grandchild)
        assert [p.pid for p in leftovers(proc.pid)] == [grandchild]
    finally:
        with contextlib.suppress(ProcessLookupError, ValueError, NameError):
            os.kill(grandchild, signal.SIGKILL)
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


@linux_only
def test_read_proc_reads_a_file_of_many_records_to_its_end() -> None:
    # /proc/PID/maps comes a page or so per read; stat and status in one record each.
    proc = subprocess.Popen(
        [sys.executable, "-c", "import asyncio, decimal, json, sys; print(1, flush=True); input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # its modules are loaded, and it waits: its maps hold still
        maps = read_proc(f"/proc/{proc.pid}/maps")
        assert maps is not None and len(maps) > 4096
        assert maps == Path(f"/proc/{proc.pid}/maps").read_bytes()
        status = read_proc(f"/proc/{proc.pid}/status", one_record=True)
        assert status is not None and status.startswith(b"Name:") and b"\nVmHWM:" in status
    finally:
        proc.communicate(b"\n")
    assert read_proc(f"/proc/{proc.pid}/stat", one_record=True) is None  # reaped: gone


def test_freezing_a_process_yields_the_cpu_while_it_waits_for_the_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A sleeping process must be scheduled to stop, maybe on this thread's CPU: the
    # wait yields it rather than spin.
    from taskwarden import _proctree

    checks: list[int] = []
    yields: list[None] = []
    monkeypatch.setattr(_proctree, "_stopped", lambda pid: checks.append(pid) or len(checks) > 2)
    monkeypatch.setattr(_proctree, "_yield_cpu", lambda: yields.append(None))
    proc = subprocess.Popen(["sleep", "30"], stdin=subprocess.DEVNULL)
    try:
        _proctree._freeze(proc.pid)
        assert checks == [proc.pid] * 3
        assert len(yields) == 2
    finally:
        proc.kill()
        proc.wait()
