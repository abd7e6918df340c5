"""The core's records (a run, a worker, a recurring job), the commands the driver gives
the core and the actions the core returns. Plain data: no behaviour but its own shape."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any, Generic, Literal, TypeVar, overload

from croniter import croniter

from .._policy import Anchor, Overlap, Policy
from .._states import JobState, TaskState

_S = TaskState


class RunMore:
    """What only some runs need (a run started, timed, keyed, of a job, cancelled while
    queued on a worker, ended...): made on demand, so that a run that merely waits for
    its time (a million of them) costs its few common fields and no more."""

    __slots__ = (
        "attempts",
        "blocked",
        "cancel_error",
        "cancel_pending",
        "deadline",
        "finished_at",
        "gen",
        "hb_reason",
        "job",
        "last_beat",
        "not_before",
        "progress",
        "started_at",
        "stealing",
        "tb",
        "value",
        "value_ok",
        "wall_due",
        "worker",
        "worker_pid",
    )

    def __init__(self) -> None:
        self.gen = 0  # bumped to make its timers stale (see Run)
        self.worker: Worker | None = None
        self.attempts = 0
        self.started_at: float | None = None
        self.worker_pid: int | None = None
        self.finished_at: float | None = None
        self.blocked = False
        # A cancel asked while the run sits on a worker, not started: the state and error
        # it ends with once the worker confirms the skip (or its process is killed).
        self.cancel_error: BaseException | None = None
        self.cancel_pending: TaskState | None = None
        self.deadline: float | None = None
        self.hb_reason: str | None = None
        self.job: JobRec | None = None
        self.last_beat = 0.0
        self.not_before: float | None = None  # a timed start: the worker begins no earlier
        self.progress: Any = None
        self.stealing = False
        self.tb: str | None = None
        self.value: Any = None
        self.value_ok = False
        self.wall_due: float | None = None


_T = TypeVar("_T")


class _More(Generic[_T]):
    """A field of ``Run`` kept in its ``RunMore``: reads give the default until it is
    made (by the first write of any such field)."""

    __slots__ = ("default", "name")

    def __init__(self, default: _T) -> None:
        self.default = default
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, run: None, owner: type) -> _More[_T]: ...

    @overload
    def __get__(self, run: Run, owner: type) -> _T: ...

    def __get__(self, run: Run | None, owner: type) -> _T | _More[_T]:
        if run is None:
            return self
        more = run.more
        if more is None:
            return self.default
        value: _T = getattr(more, self.name)
        return value

    def __set__(self, run: Run, value: _T) -> None:
        more = run.more
        if more is None:
            if value is self.default:
                return  # already so: no RunMore made for it
            more = run.more = RunMore()
        setattr(more, self.name, value)


NOT_ARMED = -math.inf  # Run.armed of a run never armed (never in Core._starts)


# A plain scheduled run (the supervisor's default policy, no key, no job, not on the wall
# clock, due later) as the driver hands it over: ``(due, seq, payload)``. The core keeps
# it so until it comes due or a command names it (its START key ``(due, seq)`` in one
# heap, its payload by seq), and makes its Run then (``Core.seed_run``). Nothing of it is
# tracked by the garbage collector: a million scheduled tasks, half the objects for each
# collection to walk.
Seed = tuple[float, int, bytes]


class Run:
    """One task as the core sees it (the driver's Task is found by ``seq``).

    The fields every run has are its own; the others (``RunMore``) are made when one
    of them is first set, and read as their defaults until then. Code on a hot path
    reads ``run.more`` once instead of several of them."""

    __slots__ = ("armed", "due", "more", "payload", "policy", "seq", "state")

    def __init__(self, seq: int, payload: bytes, policy: Policy, due: float = 0.0) -> None:
        self.seq = seq
        self.payload = payload
        self.policy = policy
        self.state = _S.PENDING
        # When it may start (monotonic). A new run's: as its call read it, 0.0 for "at
        # once" (see AddMany).
        self.due = due
        self.more: RunMore | None = None
        # The run is its own first START entry (see Core._arm): the due it was armed
        # for then, its place in the heap, never changed after (NOT_ARMED: not yet).
        self.armed = NOT_ARMED

    # Its timers (deadline, heartbeat, grace, skip) are stale once ``gen`` has moved on
    # (its START entry goes by its state and due: see Core._arm).
    gen = _More(0)
    worker: _More[Worker | None] = _More(None)  # the worker it was handed to
    attempts = _More(0)  # how many times it was started
    started_at: _More[float | None] = _More(None)  # the latest attempt's start
    worker_pid: _More[int | None] = _More(None)  # the latest attempt's worker process
    # When it ended (a run cancelled in bulk at shutdown, with none of these fields,
    # ends at its Cancelled action's ``at``).
    finished_at: _More[float | None] = _More(None)
    blocked = _More(False)  # a keyed run waiting for its turn (on_conflict="queue")
    cancel_error: _More[BaseException | None] = _More(None)
    cancel_pending: _More[TaskState | None] = _More(None)  # see RunMore
    deadline: _More[float | None] = _More(None)  # the hard time limit of the current attempt
    hb_reason: _More[str | None] = _More(None)  # why it timed out (a limit, a missed heartbeat)
    job: _More[JobRec | None] = _More(None)
    last_beat = _More(0.0)
    not_before: _More[float | None] = _More(None)
    progress: _More[Any] = _More(None)
    stealing = _More(False)  # taken back from the worker it was prefetched on
    tb: _More[str | None] = _More(None)
    value: _More[Any] = _More(None)
    value_ok = _More(False)
    wall_due: _More[float | None] = _More(None)

    def __lt__(self, other: Run | Rearm) -> bool:
        # As a START entry (Core._starts): by the time it was armed for, then by seq.
        a, b = self.armed, other.armed
        return a < b or (a == b and self.seq < other.seq)

    def __repr__(self) -> str:
        return f"<Run {self.seq} {self.state.value}>"


class Rearm:
    """A START entry for a run armed again (moved to another time, or SCHEDULED anew
    after an attempt): the run itself is its first entry, and its heap key cannot change
    while it may still sit in the heap."""

    __slots__ = ("armed", "run", "seq")

    def __init__(self, run: Run) -> None:
        self.armed = run.due
        self.seq = run.seq
        self.run = run

    def __lt__(self, other: Run | Rearm) -> bool:
        a, b = self.armed, other.armed
        return a < b or (a == b and self.seq < other.seq)


class Worker:
    __slots__ = ("done_count", "gen", "inflight", "pid", "ready", "retiring", "wid")

    def __init__(self, wid: int) -> None:
        self.wid = wid
        self.pid: int | None = None
        self.ready = False
        self.retiring = False
        self.inflight: deque[Run] = deque()
        self.done_count = 0
        self.gen = 0  # its BOOT timer is stale once it is ready

    def __repr__(self) -> str:
        return f"<Worker {self.wid} ready={self.ready} inflight={len(self.inflight)}>"


MIN_INTERVAL = 0.001
RUNS_KEPT = 100


class CronTrigger:
    """Next fire times of a cron expression, on the wall clock, in a time zone."""

    def __init__(self, expression: str, tz: tzinfo | None = None) -> None:
        if not isinstance(expression, str) or not croniter.is_valid(expression):
            raise ValueError(f"invalid cron expression: {expression!r}")
        self.expression = expression
        self.tz = tz

    def next_after(self, wall: float) -> float:
        start = datetime.fromtimestamp(wall, self.tz) if self.tz else datetime.fromtimestamp(
            wall).astimezone()
        return float(croniter(self.expression, start).get_next(float))


class JobRec:
    """One recurring job as the engine sees it (the driver's Job is found by ``seq``)."""

    def __init__(
        self,
        seq: int,
        payload: bytes,
        policy: Policy,
        *,
        every: float | None = None,
        cron: CronTrigger | None = None,
        anchor: Anchor = "start",
        overlap: Overlap = "skip",
        max_runs: int | None = None,
        until: float | None = None,  # wall-clock timestamp
    ) -> None:
        if (every is None) == (cron is None):
            raise ValueError("a job needs every or cron, not both")
        if every is not None and every < MIN_INTERVAL:
            raise ValueError(f"every must be at least {MIN_INTERVAL * 1000:g} ms, not {every!r}")
        self.seq = seq
        self.payload = payload
        self.policy = policy
        self.every = every
        self.cron = cron
        self.anchor = anchor
        self.overlap = overlap
        self.max_runs = max_runs
        self.until = until
        self.state = JobState.ACTIVE
        self.gen = 0
        self.due: float | None = None  # monotonic time of the next run
        self.wall_due: float | None = None  # the same on the wall clock, for cron and `at`
        self.started = 0
        self.live: list[Run] = []
        self.queued = False
        self.runs: deque[Run] = deque(maxlen=RUNS_KEPT)
        self.latest: Run | None = None


# Actions (the driver matches on the first element).
@dataclass(slots=True)
class Spawn:
    wid: int


@dataclass(slots=True)
class Send:
    wid: int
    runs: list[Run]


@dataclass(slots=True)
class Skip:
    wid: int
    seq: int


@dataclass(slots=True)
class Kill:
    wid: int
    run: Run | None = None  # the run it was executing: resolved once the process is gone
    also: tuple[Run, ...] = ()  # cancelled runs it held that may have begun: the same


@dataclass(slots=True)
class Interrupt:
    wid: int
    seq: int


@dataclass(slots=True)
class Stop:
    wid: int


@dataclass(slots=True)
class Resolve:
    run: Run


@dataclass(slots=True)
class Cancelled:
    """Scheduled runs cancelled together at shutdown, all at ``at``: each has ended
    CANCELLED as a Resolve would say (value: None; the driver gives each task its own
    TaskCancelled). The driver publishes and resolves them in bulk."""

    runs: list[Run]
    at: float
    # Seeds (see ``Seed``) cancelled with them: no Run was ever made for these.
    seqs: list[int] = field(default_factory=list)


@dataclass(slots=True)
class JobChanged:
    """A job's state or next run changed: the driver publishes it to the Job."""

    job: JobRec


@dataclass(slots=True)
class NewRun:
    """A recurring job started a run (already added): the driver makes its Task."""

    job: JobRec
    run: Run


@dataclass(slots=True)
class Note:
    """A supervision event for the driver to log (kill and why, crash, retry, replacement,
    broken pool): the core decides what is worth telling, the driver does the I/O."""

    level: int
    text: str


Action = (Spawn | Send | Skip | Kill | Interrupt | Stop | Resolve | Cancelled | JobChanged | NewRun
          | Note)


# Commands: what the driver asks of the core, besides the pool's events. A command
# with an answer carries it back in its ``answer`` field.
@dataclass(slots=True)
class Start:
    """Start the pool's processes."""


@dataclass(slots=True)
class Add:
    """A new run, due at ``due`` (monotonic; None: now), following the wall clock to
    ``wall_due`` if given. ``answer``: the run that stands for the call (see Core.add)."""

    run: Run
    due: float | None = None
    wall_due: float | None = None
    answer: Run | None = None


@dataclass(slots=True)
class AddMany:
    """New runs, in order: ``Add`` of each, due at its own ``due`` (a time not later than
    now, such as the default 0.0: at once), following the wall clock to its ``wall_due``
    if that is set, with the one dispatch after them all. The driver hands over the new
    tasks of a round so (a million ``schedule()`` calls in a row are a use case). A
    ``Seed`` among them is a plain scheduled run that gets no Run until it must."""

    runs: list[Run | Seed]


@dataclass(slots=True)
class AddJob:
    job: JobRec
    first_due: float | None = None
    first_wall: float | None = None


@dataclass(slots=True)
class Cancel:
    """Cancel a run; ``answer`` as ``Core.cancel`` returns it. ``run`` None: the run
    of seed ``seq`` (see ``Seed``), made for it (False if there is none any more)."""

    run: Run | None
    answer: bool | None = None
    seq: int = 0


@dataclass(slots=True)
class Reschedule:
    """Move a run that has not started; ``answer``: whether it moved. ``run`` None: as
    for ``Cancel``."""

    run: Run | None
    due: float
    wall_due: float | None = None
    answer: bool = False
    seq: int = 0


JobOp = Literal["pause", "resume", "kick", "cancel", "reschedule"]


@dataclass(slots=True)
class JobControl:
    """Pause, resume, kick, cancel or reschedule a job; ``answer``: whether it applied."""

    job: JobRec
    op: JobOp
    kill_running: bool = False  # cancel: the running runs are killed too
    due: float | None = None  # reschedule: the next run's time
    wall_due: float | None = None
    answer: bool = False


@dataclass(slots=True)
class Close:
    """Shutdown: scheduled runs are cancelled, pending ones too if ``cancel_pending``."""

    cancel_pending: bool


@dataclass(slots=True)
class Tick:
    """Time went by: fire the timers due."""


@dataclass(slots=True)
class ClockChanged:
    """The wall clock stepped (or the machine slept): wall = monotonic + ``wall_offset``."""

    wall_offset: float


TICK = Tick()
Command = (Start | Add | AddMany | AddJob | Cancel | Reschedule | JobControl | Close | Tick
           | ClockChanged)


