"""Workers forked from a warm template process (issue 12): fast replacements that keep
every guarantee of a worker started through loky (exit statuses, initializer, kills,
no worker outliving its supervisor), and the plain path where there is no template."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cloudpickle
import psutil
import pytest

from taskwarden import Supervisor, TaskTimeout, WorkerCrashed
from taskwarden.pool import _template

import _tasks as T
from _live import WAIT, busy_parent_script, forked_workers_only, gone, use_workers, wait_for

pytestmark = pytest.mark.skipif(not _template.supported(), reason="no fork/pidfd here")


def _forker(s: Supervisor) -> _template.Forker:
    return s._pool._forker  # type: ignore[attr-defined, no-any-return]


def _template_pid(s: Supervisor) -> int:
    wait_for(lambda: _forker(s).template is not None)
    t = _forker(s).template
    assert t is not None
    return t.pid


def _parent(pid: int) -> int:
    return psutil.Process(pid).ppid()


def _all_from(s: Supervisor, template: int) -> bool:
    pids = list(s._pool.pids().values())  # type: ignore[attr-defined]
    try:
        return bool(pids) and all(_parent(p) == template for p in pids)
    except psutil.NoSuchProcess:
        return False


def test_the_first_worker_starts_plain_and_the_next_are_forked_from_the_template() -> None:
    with Supervisor(workers=3) as s:
        first = s.submit(T.pid).result(timeout=WAIT)
        template = _template_pid(s)
        # The first starts the plain way, beside the template: a cold start waits for
        # one interpreter's start, not for the template's and then a fork.
        assert _parent(first) == os.getpid()
        assert _parent(template) == os.getpid()
        wait_for(lambda: len(s._pool.pids()) == 4)  # type: ignore[attr-defined]
        parents = sorted(_parent(p) for p in s._pool.pids().values())  # type: ignore[attr-defined]
        # The other first workers and the spare waited for the template: two
        # interpreters started, however many workers.
        assert parents == sorted([os.getpid(), template, template, template])
        assert _forker(s).deaths == 0


def test_replacements_are_forked_from_the_template_and_come_fast() -> None:
    with Supervisor(workers=1) as s:
        s.submit(T.pid).result(timeout=WAIT)
        template = _template_pid(s)
        ready = []
        for _ in range(5):
            hung = s.schedule(T.sleep, args=(60,), timeout=0.05)
            with pytest.raises(TaskTimeout):
                hung.result(timeout=WAIT)
            t0 = time.perf_counter()
            pid = s.submit(T.pid).result(timeout=WAIT)
            ready.append(time.perf_counter() - t0)
            assert _parent(pid) == template
        # Measured, not asserted (a shared machine): see benchmarks/spawn_bench.py.
        print(f"next task served after a kill: median {statistics.median(ready) * 1e3:.1f} ms")
        assert _forker(s).deaths == 0


@pytest.mark.parametrize(
    ("fn", "args", "words"),
    [
        (T.exit_with, (3,), "exited with code 3"),
        (T.kill_self, (signal.SIGKILL,), "killed by SIGKILL"),
        (T.segfault, (), "killed by SIGSEGV"),
    ],
)
def test_a_forked_worker_that_dies_reports_its_exit_code_or_signal(
    fn: Callable[..., object], args: tuple[object, ...], words: str
) -> None:
    with Supervisor(workers=1) as s:
        s.submit(T.pid).result(timeout=WAIT)
        forked_workers_only(s, 1)
        task = s.submit(fn, *args)
        with pytest.raises(WorkerCrashed, match=words):
            task.result(timeout=WAIT)
        assert task.worker_pid is not None
        assert s.submit(T.square, 5).result(timeout=WAIT) == 25


def test_the_initializer_runs_in_every_worker_and_never_in_the_template(
    tmp_path: Path,
) -> None:
    path = tmp_path / "inits"
    with Supervisor(workers=1, initializer=T.note_pid_then_remember,
                    initargs=(str(path), 7)) as s:
        seen = set()
        for _ in range(4):
            pid, value = s.submit(T.pid_and_recall).result(timeout=WAIT)
            assert value == 7
            seen.add(pid)
            with pytest.raises(WorkerCrashed):
                s.submit(T.kill_self, signal.SIGKILL).result(timeout=WAIT)
        template = _template_pid(s)
        t = _forker(s).template
        assert t is not None and "_tasks" in t.preload  # the initializer's module: imported
        inits = {int(x) for x in path.read_text().split()}
    assert seen <= inits
    assert template not in inits


def test_a_dead_template_is_restarted_and_its_workers_run_on() -> None:
    with Supervisor(workers=1) as s:
        s.submit(T.pid).result(timeout=WAIT)
        old = forked_workers_only(s, 1)
        first = s.submit(T.pid).result(timeout=WAIT)
        orphans = set(s._pool.pids().values())  # type: ignore[attr-defined]
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: _forker(s).template is not None and _template_pid(s) != old)
        new = _template_pid(s)
        assert _forker(s).deaths == 1
        assert gone(old)
        # The old template's workers work on, and their deaths are still seen (their
        # exit statuses went with the template).
        assert s.submit(T.pid).result(timeout=WAIT) in orphans
        assert first in orphans
        crash = s.submit(T.kill_self, signal.SIGKILL)
        with pytest.raises(WorkerCrashed, match="exit status unknown"):
            crash.result(timeout=WAIT)
        for pid in orphans:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
        # Their replacements come from the new template.
        wait_for(lambda: _all_from(s, new))
        assert s.submit(T.square, 3).result(timeout=WAIT) == 9


def test_a_template_that_keeps_dying_leaves_the_plain_path() -> None:
    with Supervisor(workers=1) as s:
        s.submit(T.pid).result(timeout=WAIT)
        for _ in range(_template.Forker.MAX_DEATHS):
            t = _template_pid(s)
            os.kill(t, signal.SIGKILL)
            wait_for(lambda t=t: _forker(s).template is None or _template_pid(s) != t)
        wait_for(lambda: _forker(s).state == "off")
        killed = set(s._pool.pids().values())  # type: ignore[attr-defined]
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        # (The first worker started the plain way too: wait for the pool to see it gone.)
        wait_for(lambda: not killed & set(s._pool.pids().values())  # type: ignore[attr-defined]
                 and _all_from(s, os.getpid()))  # started the plain way
        assert s.submit(T.square, 4).result(timeout=WAIT) == 16


def test_without_a_template_workers_start_the_plain_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_template, "supported", lambda: False)
    with Supervisor(workers=1) as s:
        pid = s.submit(T.pid).result(timeout=WAIT)
        assert _parent(pid) == os.getpid()
        assert _forker(s).state == "off"


def test_a_template_that_cannot_start_means_the_plain_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fail(self: _template.Template, timeout: float = 0.0) -> None:
        raise _template.TemplateUnavailable("no template today")

    monkeypatch.setattr(_template.Template, "start", fail)
    with Supervisor(workers=1) as s:
        pid = s.submit(T.pid).result(timeout=WAIT)
        assert _parent(pid) == os.getpid()
        wait_for(lambda: _forker(s).state == "off")


def test_an_initializer_module_that_starts_a_thread_is_left_to_the_workers() -> None:
    import _threaded_init

    with Supervisor(workers=1, initializer=_threaded_init.init) as s:
        assert s.submit(_threaded_init.ran).result(timeout=WAIT) is True
        t = _template_of(s)
        assert t.preload == () and t.threads == 1
        forked_workers_only(s, 1)  # a worker forked from it imports the module itself
        assert s.submit(_threaded_init.ran).result(timeout=WAIT) is True


@pytest.mark.parametrize("kind", ["plain", "forked"])
def test_a_worker_runs_its_exit_hooks_when_it_leaves(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both kinds leave at once (no interpreter teardown), but not before their hooks.
    use_workers(kind, monkeypatch)
    path = tmp_path / "exits"
    with Supervisor(workers=1, initializer=T.note_pid_at_exit, initargs=(str(path),)) as s:
        s.submit(T.pid).result(timeout=WAIT)
        parent = os.getpid() if kind == "plain" else forked_workers_only(s, 1)
        pid = s.submit(T.pid).result(timeout=WAIT)
        assert _parent(pid) == parent
    assert pid in {int(x) for x in path.read_text().split()}


def test_the_template_goes_at_shutdown() -> None:
    s = Supervisor(workers=1)
    s.submit(T.pid).result(timeout=WAIT)
    template = _template_pid(s)
    workers = list(s._pool.pids().values())  # type: ignore[attr-defined]
    s.shutdown(wait=True)
    assert gone(template)
    assert all(gone(p) for p in workers)


@pytest.mark.parametrize("template_died_first", [False, True],
                         ids=["template-alive", "template-died-first"])
def test_a_supervisor_killed_takes_its_template_and_forked_workers(
    tmp_path: Path, template_died_first: bool
) -> None:
    script = busy_parent_script(tmp_path / "parent.py", """
        first = s._pool._forker.template.pid
        print(first, *s._pool.pids().values(), flush=True)
        died = sys.stdin.readline().strip() == "died"  # the test may kill the template
        while (s._pool._forker.template is None
               or (died and s._pool._forker.template.pid == first)):
            time.sleep(0.01)
        print(s._pool._forker.template.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdin is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        template, workers = pids[0], pids[1:]
        # The first worker started the plain way; the other and the spare are forked.
        parents = sorted(psutil.Process(w).ppid() for w in workers)
        assert parents == sorted([parent.pid, template, template])
        if template_died_first:
            os.kill(template, signal.SIGKILL)
            wait_for(lambda: gone(template))
        parent.stdin.write("died\n" if template_died_first else "alive\n")
        parent.stdin.flush()
        pids.append(int(parent.stdout.readline()))  # the template now (a new one if it died)
        if template_died_first:
            assert pids[-1] != template
            assert all(not gone(w) for w in workers)  # its workers live on
    finally:
        parent.kill()
        parent.wait()
    procs = [psutil.Process(p) for p in set(pids) if not gone(p)]
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive


def test_modules_of_reads_the_modules_a_pickle_imports_without_loading_it() -> None:
    payload = cloudpickle.dumps((T.remember, (1,)))
    assert _template.modules_of(payload) == ("_tasks",)
    assert _template.modules_of(cloudpickle.dumps((lambda: 1, ()))) != ()  # cloudpickle's
    assert _template.modules_of(None) == ()
    assert _template.modules_of(b"not a pickle") == ()


def test_a_worker_released_before_the_template_saw_its_exit_leaves_it_sound() -> None:
    # The pool releases a worker it killed as soon as its own pidfd says it is gone,
    # maybe before the template has polled that exit; a fork asked right after may
    # reuse the released pidfd's number. The new worker must not be taken for dead,
    # nor the template spin on a closed descriptor.
    from loky.backend.context import get_context

    t = _template.Template(get_context("loky"), (1, None, None))
    t.start()
    held: list[object] = []

    def spawned(wid: int) -> _template.Spawned:
        events = t.wait_for(
            lambda evs: any(isinstance(e, _template.Spawned) and e.wid == wid for e in evs),
            WAIT)
        found = [e for e in events if isinstance(e, _template.Spawned) and e.wid == wid]
        assert found, f"worker {wid} was not forked"
        return found[0]

    try:
        held.append(t.fork(1))
        a = spawned(1)
        # The template sees the exit, the release and the fork in one poll round: it is
        # stopped meanwhile, and the two requests travel in one write.
        os.kill(t.pid, signal.SIGSTOP)
        try:
            signal.pidfd_send_signal(a.pidfd, signal.SIGKILL)
            wait_for(lambda: gone(a.pid))
            ours, theirs = socket.socketpair()
            held.append(ours)
            records = (_template._REC.pack(_template._RELEASE, 1, 0)
                       + _template._REC.pack(_template._FORK, 2, 0))
            socket.send_fds(t._sock, [records], [theirs.fileno()])  # type: ignore[arg-type]
            theirs.close()
        finally:
            os.kill(t.pid, signal.SIGCONT)
        b = spawned(2)
        cpu0 = sum(psutil.Process(t.pid).cpu_times()[:2])
        events = t.wait_for(lambda evs: False, 0.3)  # a window for a wrong report
        assert not [e for e in events if isinstance(e, _template.Exited) and e.wid == 2]
        assert sum(psutil.Process(t.pid).cpu_times()[:2]) - cpu0 < 0.15  # not spinning
        assert not gone(b.pid)
        signal.pidfd_send_signal(b.pidfd, signal.SIGTERM)
        events = t.wait_for(
            lambda evs: any(isinstance(e, _template.Exited) and e.wid == 2 for e in evs), WAIT)
        assert [e.status for e in events
                if isinstance(e, _template.Exited) and e.wid == 2] == [-signal.SIGTERM]
        t.release(2)
        for fd in (a.pidfd, b.pidfd):
            os.close(fd)
    finally:
        for sock in held:
            if sock is not None:
                sock.close()  # type: ignore[attr-defined]
        t.close()


def test_a_pool_shut_down_while_its_template_starts_leaves_nothing_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # (The leak fixture checks that the template processes are gone.)
    for _ in range(3):
        s = Supervisor(workers=2)
        s.shutdown(wait=True)
        assert s.stats()["workers_alive"] == 0
    assert not [r for r in caplog.records if "template" in r.getMessage()]


# ------------------------------------------------- the tasks' modules, preloaded


def _template_of(s: Supervisor) -> _template.Template:
    wait_for(lambda: _forker(s).template is not None)
    t = _forker(s).template
    assert t is not None
    return t


def _kill_a_worker(s: Supervisor) -> None:
    hung = s.schedule(T.sleep, args=(60,), timeout=0.05)
    with pytest.raises(TaskTimeout):
        hung.result(timeout=WAIT)


def _settled(s: Supervisor) -> set[int]:
    """The pids of the pool's workers, once no fork is asked and not answered."""
    wait_for(lambda: not _forker(s)._asked and all(
        p.process is not None for p in s._pool._procs.values()))  # type: ignore[attr-defined]
    return set(s._pool.pids().values())  # type: ignore[attr-defined]


def test_a_replacement_worker_has_the_tasks_module_before_its_first_task() -> None:
    import _preload_mod as P

    with Supervisor(workers=1) as s:
        _, imported_here = s.submit(P.where).result(timeout=WAIT)
        assert imported_here  # forked before the template knew the module
        t = _template_of(s)
        wait_for(lambda: "_preload_mod" in t.imported)
        before = _settled(s)  # forked before the import (the spare among them)
        for _ in range(len(before) + 2):
            _kill_a_worker(s)
            pid, imported_here = s.submit(P.where).result(timeout=WAIT)
            if pid not in before:
                break
        else:
            raise AssertionError("no worker forked after the import ran a task")
        assert _parent(pid) == t.pid
        assert not imported_here  # it came with the fork: no import on its first task
        assert _forker(s).deaths == 0 and _forker(s).template is t


@pytest.mark.parametrize("how", ["hang", "thread", "process"])
def test_a_module_harmful_to_import_is_not_preloaded_and_nothing_stalls(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TW_PRELOAD_BAD", how)
    import _preload_bad as B

    with Supervisor(workers=1) as s:
        s.submit(T.pid).result(timeout=WAIT)
        t = _template_of(s)
        forked_workers_only(s, 1)
        before = _settled(s)
        _kill_a_worker(s)  # a fresh worker's first task names the module
        assert s.submit(B.value).result(timeout=WAIT) == 42
        wait_for(lambda: "_preload_bad" in {*_forker(s).wanted, *_forker(s).refused})
        if how == "hang":
            # The probe hangs for PROBE_TIMEOUT; forks are served meanwhile.
            _kill_a_worker(s)
            pid = s.submit(T.pid).result(timeout=WAIT)
            assert _parent(pid) == t.pid and pid not in before
            assert "_preload_bad" not in _forker(s).refused  # the probe still runs
        wait_for(lambda: "_preload_bad" in _forker(s).refused)
        assert "_preload_bad" not in t.imported and "_preload_bad" not in _forker(s).wanted
        assert _forker(s).template is t and _forker(s).deaths == 0
        _kill_a_worker(s)
        assert _parent(s.submit(T.pid).result(timeout=WAIT)) == t.pid
        assert s.submit(B.value).result(timeout=WAIT) == 42
    # (the leak fixture checks that no probe, nor what it started, is left)


def test_a_template_that_gets_a_thread_from_a_module_restarts_without_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TW_PRELOAD_BAD", "thread-in-template")
    monkeypatch.setenv("TW_PRELOAD_SUPERVISOR", str(os.getpid()))
    import _preload_bad as B
    import _preload_mod as P

    with Supervisor(workers=1) as s:
        s.submit(P.where).result(timeout=WAIT)
        old = _template_of(s)
        wait_for(lambda: "_preload_mod" in old.imported)
        _kill_a_worker(s)
        assert s.submit(B.value).result(timeout=WAIT) == 42
        # Its probe passes (no thread there); the template itself gets one and leaves.
        wait_for(lambda: "_preload_bad" in _forker(s).refused)
        wait_for(lambda: _forker(s).template is not None and _forker(s).template is not old)
        new = _template_of(s)
        assert gone(old.pid) and _forker(s).deaths == 0
        wait_for(lambda: "_preload_mod" in new.imported)  # the good one, imported anew
        assert "_preload_bad" not in new.imported
        for pid in list(s._pool.pids().values()):  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: _all_from(s, new.pid))
        assert s.submit(B.value).result(timeout=WAIT) == 42


def test_only_a_fresh_workers_first_runs_are_read_for_modules() -> None:
    with Supervisor(workers=1) as s:
        s.submit(T.pid).result(timeout=WAIT)
        wanted = dict(_forker(s).wanted)
        import _preload_mod as P

        s.submit(P.where).result(timeout=WAIT)  # the same worker's later run: not read
        assert _forker(s).wanted == wanted


def test_importable_names() -> None:
    assert _template.importable("pkg.mod") and _template.importable("_tasks")
    for bad in ("", "__main__", "__mp_main__.x", "a..b", "<stdin>", "a-b", "x" * 300):
        assert not _template.importable(bad)


@pytest.mark.parametrize("end", ["shutdown", "template-killed"])
def test_a_hanging_probe_goes_with_its_template(
    end: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TW_PRELOAD_BAD", "hang")
    import _preload_bad as B

    s = Supervisor(workers=1)
    try:
        s.submit(T.pid).result(timeout=WAIT)
        t = _template_of(s)
        forked_workers_only(s, 1)
        _kill_a_worker(s)
        assert s.submit(B.value).result(timeout=WAIT) == 42

        def probes() -> list[int]:
            """The template's children that lead a process group of their own: the probe
            (a worker, even one forked a moment ago and not listed yet, is in the
            template's group)."""
            try:
                kids = psutil.Process(t.pid).children()
            except psutil.NoSuchProcess:
                return []
            found = []
            for k in kids:
                try:
                    if os.getpgid(k.pid) == k.pid:
                        found.append(k.pid)
                except ProcessLookupError:
                    continue
            return found

        seen: list[int] = []

        def one_probe() -> bool:
            seen[:] = probes()
            return len(seen) == 1

        wait_for(one_probe)
        (probe,) = seen
        assert "_preload_bad" not in _forker(s).refused  # it hangs: not decided yet
        if end == "template-killed":
            os.kill(t.pid, signal.SIGKILL)
            wait_for(lambda: gone(probe), timeout=PROBE_LIMIT)
            assert s.submit(T.square, 2).result(timeout=WAIT) == 4
    finally:
        s.shutdown(wait=True)
    wait_for(lambda: gone(probe), timeout=PROBE_LIMIT)


PROBE_LIMIT = _template.PROBE_TIMEOUT / 2  # it goes before its own timeout would end it


@pytest.fixture
def sigchld_restored() -> Iterator[None]:
    """The modules below ignore SIGCHLD when imported, here too: put it back after."""
    before = signal.getsignal(signal.SIGCHLD)
    yield
    signal.signal(signal.SIGCHLD, before)


@pytest.mark.usefixtures("sigchld_restored")
def test_a_preloaded_task_module_that_ignores_sigchld_keeps_exit_statuses() -> None:
    import _sigchld_task as M

    with Supervisor(workers=1) as s:
        s.submit(T.pid).result(timeout=WAIT)
        t = _template_of(s)
        _kill_a_worker(s)  # a fresh worker's first task names the module
        assert s.submit(M.sigchld_ignored).result(timeout=WAIT) is True
        wait_for(lambda: "_sigchld_task" in t.imported)
        for _ in range(3):
            with pytest.raises(WorkerCrashed, match="exited with code 3"):
                s.submit(T.exit_with, 3).result(timeout=WAIT)
        # Forked after the import, a worker sees SIGCHLD as the module left it.
        assert s.submit(M.sigchld_ignored).result(timeout=WAIT) is True
        assert _forker(s).template is t and _forker(s).deaths == 0
