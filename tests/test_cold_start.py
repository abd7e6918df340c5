"""A cold start (issue 12): what a worker process imports and builds before its READY, and
the public names imported on first use."""

from __future__ import annotations

import pickle
import subprocess
import sys
from typing import Any

import pytest

import taskwarden
from taskwarden import CurrentTask
from taskwarden._taskside import CurrentTask as _CurrentTask
from taskwarden.pool import _wire


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
