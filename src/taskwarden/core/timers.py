"""The core's timers: the kinds of entry its deadline heap holds, and its timing constants.

The heap (``Core._heap``) holds ``(when, counter, kind, obj, gen)``: ``obj`` is a Run, a
Worker or a JobRec whose ``gen`` must still equal ``gen`` (else the entry is stale), or
for CALLBACK a callable taking the time. The scheduled starts (START), up to millions,
have a heap of their own (``Core._starts``), ordered by ``(armed, seq)``: a run is its own
first entry (``Run.armed``, the due it was armed for, fixed from then on), and a run armed
again gets a small ``Rearm``. An entry fires ``lead`` before its time if the run is still
SCHEDULED for that time.
"""

from __future__ import annotations

from dataclasses import dataclass

# Heap entry kinds.
START = 0  # a scheduled run becomes due
DEADLINE = 1  # a running run's hard time limit
BEAT = 2  # a running run's heartbeat deadline
GRACE = 3  # the grace after an in-task TaskTimeout has run out
SKIP_WAIT = 4  # a cancelled prefetched run reached the head: did the worker skip it?
CALLBACK = 5  # an opaque timer: a callable, run when due
JOB = 6  # a recurring job's next run
BOOT = 7  # a worker's start-up has taken too long (obj: the Worker)

SKIP_ACK_WAIT = 0.05
# A worker told to stop, or leaving over its memory limit, is killed if it is still
# there this long after (an atexit hook or a process a task left behind holds it).
STOP_WAIT = 5.0
REPLACE_DELAY = 0.02
# A timed start is handed to a worker this early, with the exact time to begin: the worker
# waits out the rest itself, so neither the loop's nor the worker's wake-up makes it late.
LEAD = 0.01
# Runs prefetched behind a head that has run this long may be taken back by an idle worker.
STEAL_AFTER = 0.002
# A worker process that has not reported READY this long after its spawn is killed
# (its initializer hangs); this many in a row dying or killed before READY break the pool.
BOOT_LIMIT = 300.0
BOOT_STRIKES = 3
# A run waiting for a worker that is still starting ends TIMED_OUT once its time limit
# has passed, but never sooner than this (a normal start, on a busy machine).
BOOT_ALLOWANCE = 5.0


@dataclass(frozen=True, slots=True)
class Timings:
    """The core's timing constants (seconds): tests pass short ones instead of sleeping."""

    skip_ack_wait: float = SKIP_ACK_WAIT
    stop_wait: float = STOP_WAIT
    replace_delay: float = REPLACE_DELAY
    lead: float = LEAD
    steal_after: float = STEAL_AFTER
    boot_limit: float = BOOT_LIMIT
    boot_strikes: int = BOOT_STRIKES
    boot_allowance: float = BOOT_ALLOWANCE
    # While starts follow the wall clock, the driver compares it with the monotonic
    # clock this often (a step or a suspend is then noticed): see ``ClockChanged``.
    wall_check: float = 60.0


