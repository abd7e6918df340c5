"""A cold start (issue 12): what a worker process imports and builds before its READY, the
public names imported on first use, and the first worker's process started by the
Supervisor's constructor."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from typing import Any

import psutil
import pytest

import taskwarden
from taskwarden import CurrentTask, Supervisor
from taskwarden._taskside import CurrentTask as _CurrentTask
from taskwarden.driver._reactor import Reactor
from taskwarden.pool import _wire
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
