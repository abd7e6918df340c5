"""The hang-prone workload of hang_prone.py, on a Ray cluster: the same watchdogs.

A time limit that kills, heartbeats that tell hung from slow, a grace period,
retries: each worker slot is a Ray actor placed by Ray (here with
``num_cpus=1`` each), and taskwarden's supervisor, in this process, keeps
the watchdogs. Needs Ray: ``pip install 'taskwarden[ray]'``.

Run it with:  python examples/ray_cluster.py          (starts a local Ray)

On a real cluster (taskwarden installed on every node):

    ray start --head                                  # on the head node
    ray start --address=<head-ip>:6379                # on every other node
    RAY_ADDRESS=<head-ip>:6379 python examples/ray_cluster.py

This folder is shipped to the nodes as Ray's ``working_dir``, so that they
can import the tasks (``hang_prone``) by name.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import hang_prone

from taskwarden import Supervisor

HERE = str(Path(__file__).resolve().parent)


def main() -> None:
    try:
        import ray
    except ImportError:
        sys.exit("this example needs Ray: pip install 'taskwarden[ray]'")
    address = os.environ.get("RAY_ADDRESS")
    runtime_env = {"working_dir": HERE, "excludes": ["scripts"]}
    if address:
        ray.init(address=address, runtime_env=runtime_env)
    else:
        # A local Ray, for a try: 2 CPUs, no dashboard, a small object store.
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 << 20,
                 runtime_env=runtime_env)
    try:
        # Each worker imports the tasks' module (and taskwarden's with it) as it starts,
        # so that no task's time limit or heartbeat pays for the import on its node.
        with Supervisor(workers=2, engine="ray", ray_options={"num_cpus": 1},
                        initializer=importlib.import_module, initargs=("hang_prone",)) as sup:
            hang_prone.run(sup, heartbeat=1.0)  # a busy node: more room than locally
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
