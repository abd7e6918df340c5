"""The core: every supervision decision, with no threads, no I/O and no clock of its own.

Owns: the runs and workers as the supervisor sees them (``model``), the deadline heap's
entry kinds and the timing constants (``timers``), assignment, prefetch and take-back
(``dispatch``), the inputs, watchdogs, retries and worker lifecycle (``engine.Core``,
whose base is ``dispatch.Dispatcher``), and the recurring jobs' rules (``jobs``).
One way in: ``Core.handle(item, now) -> list[Action]``, ``item`` a command of ``model``
or an event of ``pool.base``.

May import: the package's plain modules (``_errors``, ``_policy``, ``_states``) and the
event dataclasses of ``pool.base`` (data only). Never ``driver``, nor any other part of
``pool``. Inside: ``model`` and ``timers`` import nothing of the core; ``jobs`` and
``dispatch`` import them; ``engine`` imports all four.
"""
