"""The pool layer: the engines that run tasks in workers, and the worker side.

Owns: the ``Pool`` and ``Reactor`` interfaces and the pool events
(``base.py``); the choice of engine (``engines.py``); the process engine
(``loky_pool.py``) and the template process it forks its workers from
(``_template.py``); the Ray engine (``ray_pool.py``: an agent actor per slot,
``_ray_agent.py``, whose child ``_ray_child.py`` runs the worker loop, both
connecting back as ``_ray_link.py`` says); one worker's channel
as the supervisor sees it (``_channel.py``) and the wire messages both ends
speak (``_wire.py``); what runs inside a worker (``_worker.py``).

May import: the standard library, loky and cloudpickle (and Ray, in the Ray
engine's modules only, on first use: it is an optional extra), and of this package
only the layer-free modules (``_errors``, ``_ids``, ``_proctree``,
``_taskside``). It imports nothing of ``core/`` or ``driver/``: the driver
drives a pool through ``base.Pool`` and gives it the loop's ``base.Reactor``.
"""
