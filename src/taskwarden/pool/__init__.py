"""The pool layer: the engines that run tasks in workers, and the worker side.

Owns: the ``Pool`` and ``Reactor`` interfaces and the pool events
(``base.py``); the process engine (``loky_pool.py``); one worker's channel
as the supervisor sees it (``_channel.py``) and the wire messages both ends
speak (``_wire.py``); what runs inside a worker (``_worker.py``).

May import: the standard library, loky and cloudpickle, and of this package
only the layer-free modules (``_errors``, ``_ids``, ``_proctree``,
``_taskside``). It imports nothing of ``core/`` or ``driver/``: the driver
drives a pool through ``base.Pool`` and gives it the loop's ``base.Reactor``.
"""
