"""The driver: the public objects (``Supervisor``, ``Task``, ``Job``) and the loop thread
that feeds the core and carries out its actions.

Owns: argument checking and pickling in the caller's thread, the queue of commands to
the loop, the loop itself (waiting on the pool, handing each event and command to
``Core.handle``, applying the actions it returns), the futures and the views of their
runs that callers read (published by the loop in one assignment each), the registry
behind ``get()``, and the done-callback thread.

Modules: ``supervisor`` (the Executor facade, the caller's side), ``_loop`` (the loop
thread's side), ``_validate`` (argument checks, returning typed options), ``task``,
``job`` (the handles callers hold).

May import: ``core`` and ``pool``, and the package's plain modules. ``task`` and ``job``
know their supervisor only through a Protocol of their own (``TaskOwner``,
``JobOwner``), so that ``supervisor`` imports them and not the other way round.
"""
