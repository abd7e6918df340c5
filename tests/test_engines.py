"""Choosing the engine at construction: the keywords, Ray missing, and no port locally."""

from __future__ import annotations

import sys

import psutil
import pytest

from taskwarden import Supervisor

import _tasks as T
from _live import WAIT


def test_an_unknown_engine_is_refused() -> None:
    with pytest.raises(ValueError, match="engine must be one of 'local', 'ray'"):
        Supervisor(workers=1, engine="dask")  # type: ignore[arg-type]


def test_ray_keywords_go_with_the_ray_engine_only() -> None:
    with pytest.raises(ValueError, match="go with engine='ray'"):
        Supervisor(workers=1, ray_address="auto")
    with pytest.raises(ValueError, match="go with engine='ray'"):
        Supervisor(workers=1, ray_options={"num_cpus": 1})


def test_without_ray_the_ray_engine_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray: ImportError
    with pytest.raises(ImportError, match=r"pip install 'taskwarden\[ray\]'"):
        Supervisor(workers=1, engine="ray")


def test_the_local_engine_opens_no_port() -> None:
    with Supervisor(workers=2, engine="local") as sup:
        assert sup.submit(T.square, 3).result(timeout=WAIT) == 9
        pids = {sup.submit(T.pid).result(timeout=WAIT) for _ in range(10)}
        procs = [psutil.Process(), *(psutil.Process(p) for p in pids)]
        for proc in procs:
            # net_connections() is psutil 6's name; 5.9 (the declared floor) has connections()
            listing = getattr(proc, "net_connections", None) or proc.connections
            inet = listing(kind="inet")
            assert inet == [], f"process {proc.pid} has network sockets: {inet}"
