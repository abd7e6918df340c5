"""A cold start (issue 12): what a worker process imports and builds before its READY, the
public names imported on first use, and the first worker's process started by the
Supervisor's constructor."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

import taskwarden
from taskwarden import CurrentTask, Supervisor
from taskwarden._taskside import CurrentTask as _CurrentTask
from taskwarden.driver._reactor import Reactor
from taskwarden.pool import _template, _wire
from taskwarden.pool.base import WorkerReady
from taskwarden.pool.loky_pool import LokyPool

import _tasks as T
from _live import WAIT, gone, wait_for


def _modules_after(code: str) -> set[str]:
    """The taskwarden modules a fresh interpreter holds after running ``code``."""
    show = "print(' '.join(m for m in sys.modules if m.startswith('taskwarden')))"
    out = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\n{show}"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    return set(out.split())


def test_a_worker_boots_without_the_supervisor_side() -> None:
    loaded = _modules_after("import taskwarden.pool._worker")
    assert loaded == {
        "taskwarden", "taskwarden._errors", "taskwarden._ids", "taskwarden._proctree",
        "taskwarden._taskside", "taskwarden.pool", "taskwarden.pool._wire",
        "taskwarden.pool._worker",
    }


def test_the_template_boots_without_the_supervisor_side() -> None:
    # (pool/base.py's event classes and pickletools are the supervisor's alone.)
    loaded = _modules_after("import taskwarden.pool._template, taskwarden.pool._worker\n"
                            "assert 'pickletools' not in sys.modules")
    assert loaded == _modules_after("import taskwarden.pool._worker") | {
        "taskwarden.pool._template"}


def test_importing_the_package_imports_none_of_its_modules() -> None:
    assert _modules_after("import taskwarden") == {"taskwarden"}


def test_every_public_name_resolves_on_first_use() -> None:
    loaded = _modules_after(
        "import taskwarden\n"
        "assert taskwarden.heartbeat() is None\n"
        "from taskwarden import *\n"
        "assert TaskState.FAILED == 'FAILED' and issubclass(TaskTimeout, TimeoutError)\n"
        "assert Supervisor.__module__ == 'taskwarden.driver.supervisor'"
    )
    assert {"taskwarden._states", "taskwarden.driver.supervisor"} <= loaded
    for name in taskwarden.__all__:
        assert getattr(taskwarden, name) is not None
        assert name in dir(taskwarden)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Superviser'"):
        taskwarden.Superviser  # noqa: B018
    assert not hasattr(taskwarden, "Superviser")


def test_current_task_is_an_immutable_value() -> None:
    info = CurrentTask(1 << 64, 7, 2, None, {"done": 3})
    assert CurrentTask is _CurrentTask
    assert info == CurrentTask(1 << 64, 7, 2, None, {"done": 3})
    assert info != CurrentTask(1 << 64, 7, 3, None, {"done": 3})
    assert info != (1 << 64, 7, 2, None, {"done": 3})
    assert (info.seq, info.attempt, info.deadline) == (7, 2, None)
    assert info.previous_progress == {"done": 3}
    assert info.id == taskwarden._ids.make_uuid(1 << 64, 7)
    assert repr(info) == (f"CurrentTask(id_base={1 << 64}, seq=7, attempt=2, deadline=None, "
                          "previous_progress={'done': 3})")
    assert pickle.loads(pickle.dumps(info)) == info
    assert hash(CurrentTask(0, 1, 1, 5.0, None)) == hash(CurrentTask(0, 1, 1, 5.0, None))
    with pytest.raises(AttributeError):
        info.attempt = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del info.seq  # type: ignore[misc]
    match info:
        case CurrentTask(_, seq, attempt):
            assert (seq, attempt) == (7, 2)


def test_a_wire_message_is_a_tuple_of_its_named_fields() -> None:
    done = _wire.Done(4, False, b"x", "tb", "ValueError", "bad", _wire.NO_PROGRESS)
    assert done == (4, False, b"x", "tb", "ValueError", "bad", b"")
    assert (done.seq, done.ok, done.tb, done.type_name, done.message) == (
        4, False, "tb", "ValueError", "bad")
    assert repr(_wire.Beating(3, None)) == "Beating(seq=3, progress=None)"
    assert repr(_wire.Stop()) == "Stop()"
    assert _wire.Ready._fields == ("pid",)
    with pytest.raises(AttributeError):
        _wire.Ready(1).pid = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        _wire.Ready(1).other = 2  # type: ignore[attr-defined]
    message: Any = _wire.decode(_wire.split_frames(bytearray(done.encode()))[0])
    match message:
        case _wire.Done(seq, ok, data):
            assert (seq, ok, data) == (4, False, b"x")
        case _:
            pytest.fail(f"decoded to {message!r}")


def test_a_pool_starts_its_first_worker_when_bound_and_kills_it_if_never_asked() -> None:
    pool = LokyPool(1 << 64, None)
    reactor = Reactor()
    try:
        pool.bind(reactor)
        first = pool._first
        assert first is not None
        pid = first[0].pid
        assert psutil.Process(pid).ppid() == os.getpid()
    finally:
        pool.close()
        reactor.close()
    assert pool._first is None
    assert gone(pid)


def test_the_first_worker_starts_the_usual_way_if_its_early_start_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    starts = []
    real = LokyPool._start_process

    def failing_once(self: LokyPool, wid: int) -> tuple[Any, Any]:
        starts.append(wid)
        if len(starts) == 1:
            raise OSError("no process for you")
        return real(self, wid)

    monkeypatch.setattr(LokyPool, "_start_process", failing_once)
    with Supervisor(workers=1) as s:
        pid = s.submit(T.pid).result(timeout=WAIT)
        # Started again by the spawner thread, the plain way, beside the template.
        assert starts == [1, 1]
        assert psutil.Process(pid).ppid() == os.getpid()
        wait_for(lambda: s.stats()["workers_alive"] == 2)
    assert gone(pid)


# ------------------------------------- the template waits for the first worker's start
def _ready_wids(events: list[Any]) -> list[int]:
    return [e.wid for e in events if isinstance(e, WorkerReady)]


@contextlib.contextmanager
def _bound_pool(monkeypatch: pytest.MonkeyPatch, *, beside: bool, workers: int
                ) -> Iterator[LokyPool]:
    """A pool bound to a reactor of its own, its template beside the first worker or held,
    its first ``workers`` workers asked for; closed (every process gone) after."""
    if not _template.supported():
        pytest.skip("no template on this platform")
    monkeypatch.setattr(LokyPool, "template_beside_first", beside)
    pool = LokyPool(1 << 64, None)
    reactor = Reactor()
    try:
        pool.bind(reactor)
        for wid in range(1, workers + 1):
            pool.spawn(wid)
        yield pool
    finally:
        pool.close()
        reactor.close()
    assert pool.alive() == 0


def _until_ready(pool: LokyPool, events: list[Any], wids: set[int],
                 check: Callable[[], None] = lambda: None) -> None:
    """Run the pool's side of the loop (its reactor's waits, its events into ``events``)
    until every worker in ``wids`` said READY; ``check`` after each round."""
    reactor = pool._reactor
    assert reactor is not None
    deadline = time.monotonic() + WAIT
    while not wids <= set(_ready_wids(events)):
        assert time.monotonic() < deadline, f"no READY from {wids}: {events}"
        reactor.wait(time.monotonic() + 0.05)
        events += pool.take_events()
        check()


@pytest.mark.parametrize("beside", [False, True])
def test_the_template_starts_beside_the_first_worker_or_once_it_is_ready(
    monkeypatch: pytest.MonkeyPatch, beside: bool
) -> None:
    events: list[Any] = []
    with _bound_pool(monkeypatch, beside=beside, workers=2) as pool:
        forker = pool._forker
        assert forker._waiting == [2]  # the second worker waits for the template
        assert forker.state == ("starting" if beside else "held")

        def held_until_the_first_ready() -> None:
            if not beside and 1 not in _ready_wids(events):
                # Held, with no process of its own, until the first worker said READY.
                assert forker.state == "held" and forker._thread is None

        _until_ready(pool, events, {1, 2}, held_until_the_first_ready)
        ready = _ready_wids(events)
        # (Side by side, either may be READY first: a forked worker is sometimes.)
        assert ready == [1, 2] if not beside else sorted(ready) == [1, 2], ready
        assert forker.forked(2) and not forker.forked(1)


def test_the_template_waits_for_the_first_worker_where_the_starts_outnumber_the_cpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from taskwarden.pool import loky_pool

    def beside(cpus: int, *, trackers: bool, init_payload: bytes | None = None) -> bool:
        monkeypatch.setattr(loky_pool, "cpu_count", lambda: cpus)
        pool = LokyPool(1 << 64, init_payload)
        pool._trackers_start = trackers
        return pool._beside_first()

    # The first worker and the template: two starts.
    assert not beside(1, trackers=False)
    assert beside(2, trackers=False)
    # A program's first worker brings loky's two resource trackers: four starts.
    assert not beside(2, trackers=True)
    assert not beside(3, trackers=True)
    assert beside(4, trackers=True)
    # With an initializer the first READY comes after it ran (it may take long).
    assert beside(1, trackers=True, init_payload=pickle.dumps((print, ())))
    monkeypatch.setattr(LokyPool, "template_beside_first", False)
    assert not beside(64, trackers=False)


def test_the_first_pool_of_a_program_knows_loky_starts_its_resource_trackers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from taskwarden.pool import loky_pool

    monkeypatch.setattr(loky_pool, "_started_any", False)
    pools = [LokyPool(1 << 64, None), LokyPool(1 << 64, None)]
    reactors = [Reactor(), Reactor()]
    try:
        for pool, reactor in zip(pools, reactors, strict=True):
            pool.bind(reactor)
        assert [p._trackers_start for p in pools] == [True, False]
    finally:
        for pool, reactor in zip(pools, reactors, strict=True):
            pool.close()
            reactor.close()


def test_a_first_worker_that_dies_before_ready_releases_the_template(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not _template.supported():
        pytest.skip("no template on this platform")
    monkeypatch.setattr(LokyPool, "template_beside_first", False)
    killed: list[int] = []
    real = LokyPool._start_process

    def dying_first(self: LokyPool, wid: int) -> tuple[Any, Any]:
        started = real(self, wid)
        if not killed:
            killed.append(started[0].pid)
            # Long before its READY (maybe before its exec: with loky's fork_exec in
            # Python, a SIGSEGV there has the parent's faulthandler print our stack).
            os.kill(started[0].pid, signal.SIGKILL)
        return started

    monkeypatch.setattr(LokyPool, "_start_process", dying_first)
    with Supervisor(workers=2) as s:
        assert s.submit(T.pid).result(timeout=WAIT) != killed[0]
        # The second worker and the spare come: the template started all the same.
        wait_for(lambda: s.stats()["workers_alive"] == 3)
        assert s._pool._forker.state == "up"  # type: ignore[attr-defined]
        assert s.stats()["workers_replaced"] >= 1
    assert gone(killed[0])


def test_a_run_skipped_before_the_first_ready_does_not_release_the_template(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A skip taken back before the worker's READY is an event naming the first worker,
    # but its start is not over: the template waits on for READY (or the worker's end).
    from taskwarden.driver._validate import pickle_call
    from taskwarden.pool.base import RunSkipped

    events: list[Any] = []
    with _bound_pool(monkeypatch, beside=False, workers=2) as pool:
        forker = pool._forker
        pool.send(1, [(7, pickle_call(T.pid, (), {}, "task"), None)])
        pool.skip(1, 7)
        events += pool.take_events()
        if 1 in _ready_wids(events):  # pragma: no cover - a first READY in microseconds
            pytest.skip("the first worker was READY before its skip")
        assert any(isinstance(e, RunSkipped) and e.wid == 1 for e in events), events
        assert forker.state == "held" and forker._thread is None

        def still_held() -> None:
            if 1 not in _ready_wids(events):
                assert forker.state == "held"

        _until_ready(pool, events, {1}, still_held)
        assert forker.state in ("starting", "up")  # released by READY
        _until_ready(pool, events, {2})
        assert forker.forked(2)


def test_a_pool_closed_while_its_template_is_held_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from taskwarden.pool.base import WorkerExited

    with _bound_pool(monkeypatch, beside=False, workers=3) as pool:
        forker = pool._forker
        first = pool.pids()[1]
        assert forker.state == "held" and forker._waiting == [2, 3]
        # A waiting worker given up: no process was made, and the template stays held
        # (its end is not the first worker's).
        assert pool.kill(3) is False
        events = pool.take_events()
        assert any(isinstance(e, WorkerExited) and e.wid == 3 for e in events), events
        # (Nothing was read yet: the loop's wait reads the channels.)
        assert forker.state == "held" and forker._waiting == [2]
    assert forker.state == "off" and not forker._waiting
    assert forker.template is None and forker._thread is None  # never started
    assert gone(first)
