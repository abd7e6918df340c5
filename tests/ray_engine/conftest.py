"""A real local Ray for the Ray engine's tests: started once per test module, on loopback.

Ray binds its servers to the machine's network address unless told that this is
no cluster (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: every port then listens on
127.0.0.1, checked with ``ss -ltnp`` on Ray 2.60). Its token is handed over in
the environment, so that no ``~/.ray/auth_token`` is written, and its temporary
folder is one of ours, removed afterwards. Workers import the tests' task module
(``_tasks``) from the path the raylet is started with.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskwarden import Supervisor

# Ray reads these when it is imported (the first two in Python constants, the auth
# mode in its C++ config), so they are set before: for the whole test session, which
# is harmless to everything but Ray.
os.environ.update({
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # loopback only
    "RAY_ENABLE_AUTO_CONNECT": "0",  # no Ray started behind our back at exit
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": secrets.token_hex(32),  # in the environment: no ~/.ray/auth_token
    "RAY_USAGE_STATS_ENABLED": "0",  # nothing sent anywhere
})

try:
    import ray
except ModuleNotFoundError:  # the test modules skip themselves (importorskip)
    ray = None

TESTS = str(Path(__file__).resolve().parent.parent)
NUM_CPUS = 2
OBJECT_STORE = 80 * 1024 * 1024  # bytes: the smallest Ray accepts is 75 MiB


@contextlib.contextmanager
def ray_environment() -> Iterator[str]:
    """The environment Ray's processes start with; yields a temporary folder for Ray."""
    saved = dict(os.environ)
    paths = [TESTS, *(p for p in sys.path if p)]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    temp = tempfile.mkdtemp(prefix="tw-ray-")  # short: Ray puts unix sockets in it
    # Ray's default folder too (a Cluster writes its address file there): in ours.
    os.environ["RAY_TMPDIR"] = temp
    os.mkdir(os.path.join(temp, "ray"))
    try:
        yield temp
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray node (2 CPUs, no dashboard) for the whole test module."""
    with ray_environment() as temp:
        ray.init(
            num_cpus=NUM_CPUS,
            include_dashboard=False,
            object_store_memory=OBJECT_STORE,
            _temp_dir=temp,
            configure_logging=False,
            log_to_driver=False,
        )
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[tuple[Any, Any]]:
    """A Ray cluster of two nodes on this machine (``ray.cluster_utils.Cluster``): the
    head (1 CPU) and node B (1 CPU and a custom resource ``"b"``). Yields
    (cluster, node B)."""
    from ray.cluster_utils import Cluster

    with ray_environment() as temp:
        args = {"num_cpus": 1, "object_store_memory": OBJECT_STORE, "temp_dir": temp}
        cluster = Cluster(initialize_head=True,
                          head_node_args={**args, "include_dashboard": False})
        try:
            node_b = cluster.add_node(**args, resources={"b": 1})
            ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
            try:
                yield cluster, node_b
            finally:
                ray.shutdown()
        finally:
            cluster.shutdown()


@pytest.fixture(params=["unix-socket", "tcp"])
def rsup(local_ray: None, request: pytest.FixtureRequest,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[Supervisor]:
    """A two-worker supervisor on the local Ray, shut down after the test. Each test
    runs twice: with workers connected over the Unix socket (as on the supervisor's
    machine: signalled and killed from here), and over TCP (as on another node: the
    agent signals and kills)."""
    from taskwarden.pool import ray_pool

    monkeypatch.setattr(ray_pool, "UNIX_SOCKETS", request.param == "unix-socket")
    s = Supervisor(workers=2, engine="ray")
    yield s
    s.shutdown(wait=True, cancel_futures=True)
