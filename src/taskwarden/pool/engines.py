"""Which engine runs the workers: chosen once, at ``Supervisor(engine=...)``.

``"local"`` (the default): worker processes on this machine (``LokyPool``); it
opens no network port. ``"ray"``: one Ray actor per worker slot, anywhere in a
Ray cluster (``RayPool``; ``pip install 'taskwarden[ray]'``).
"""

from __future__ import annotations

from typing import Any, Literal

from .base import Pool

Engine = Literal["local", "ray"]
ENGINES: tuple[Engine, ...] = ("local", "ray")


def check_engine(engine: object, ray_address: object, ray_options: object) -> Engine:
    """Validate the engine keywords of ``Supervisor()`` (before anything starts)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}, not {engine!r}")
    if engine != "ray" and (ray_address is not None or ray_options is not None):
        raise ValueError("ray_address and ray_options go with engine='ray'")
    if ray_address is not None and not isinstance(ray_address, str):
        raise TypeError(f"ray_address must be a str (e.g. 'auto'), not {ray_address!r}")
    if ray_options is not None and not isinstance(ray_options, dict):
        raise TypeError(f"ray_options must be a dict of actor options, not {ray_options!r}")
    if engine == "ray":
        from .ray_pool import import_ray

        import_ray()  # without Ray: an ImportError that says how to install it
    return engine


def spare_workers(engine: Engine) -> int:
    """How many started workers the core keeps beyond ``workers``. Locally one spare
    replaces a killed worker at once. On Ray, none: a spare actor would hold a slot's
    resources (on a cluster sized for ``workers`` it could not even be placed), and a
    killed worker's actor starts the replacement process itself."""
    return 0 if engine == "ray" else 1


def replace_delay(engine: Engine) -> float | None:
    """How long after a kill the core asks for the replacement worker (None: the core's
    default). The default waits a little so that a fresh interpreter's start does not
    compete with the spare taking over; a worker forked from the template is ready in a
    few milliseconds, so the local engine with a template asks at once."""
    if engine == "local":
        from ._template import supported

        return 0.0 if supported() else None
    return None


def default_workers(engine: Engine, ray_address: str | None) -> int:
    """``workers=None``: this machine's CPUs, or the Ray cluster's (Ray started if need be)."""
    if engine == "ray":
        from .ray_pool import connect_ray

        ray = connect_ray(ray_address)
        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    import loky

    return int(loky.cpu_count())


def make_pool(
    engine: Engine,
    id_base: int,
    init_payload: bytes | None,
    max_memory: int | None,
    *,
    ray_address: str | None = None,
    ray_options: dict[str, Any] | None = None,
) -> Pool:
    if engine == "ray":
        from .ray_pool import RayPool

        return RayPool(id_base, init_payload, max_memory,
                       ray_address=ray_address, ray_options=ray_options)
    from .loky_pool import LokyPool

    return LokyPool(id_base, init_payload, max_memory)
