"""The Ray engine on a two-node cluster on this machine: placement, and a node that dies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil
import pytest

from taskwarden import Supervisor, WorkerCrashed

import _tasks as T
from _live import WAIT, gone, read_pid, wait_for

pytest.importorskip("ray")  # the Ray engine's tests need Ray: pip install 'taskwarden[ray]'
pytestmark = pytest.mark.timeout(180)


def _raylet(node: Any) -> int:
    return int(node.all_processes["raylet"][0].process.pid)


def test_resource_requests_place_workers_on_the_node_that_has_them(
    two_nodes: tuple[Any, Any],
) -> None:
    _, node_b = two_nodes
    with Supervisor(workers=1, engine="ray", ray_options={"resources": {"b": 1}}) as sup:
        task = sup.submit(T.pid)
        worker = task.result(timeout=WAIT)
        agent = psutil.Process(worker).parent()
        assert agent.ppid() == _raylet(node_b)  # Ray started the agent on node B


def test_a_node_that_dies_fails_only_its_run_with_worker_crashed(
    two_nodes: tuple[Any, Any], tmp_path: Path
) -> None:
    cluster, node_b = two_nodes
    with Supervisor(workers=1, engine="ray", ray_options={"resources": {"b": 1}}) as sup:
        marker = tmp_path / "pid"
        task = sup.submit(T.touch_then_sleep, str(marker), 60)
        worker = read_pid(marker)
        wait_for(lambda: task.state == "RUNNING")
        cluster.remove_node(node_b, allow_graceful=False)
        with pytest.raises(WorkerCrashed):  # "killed by SIGKILL", or "the Ray actor ... died"
            task.result(timeout=WAIT)
        assert gone(worker)  # it dies with its agent
        sup.shutdown(wait=True, cancel_futures=True)  # the replacement has no node to go to
