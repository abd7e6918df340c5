"""The fake-clock harness for the pure core: a core, a fake clock, and a fake pool that
records what it was told. No threads, no processes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from taskwarden._policy import Policy
from taskwarden.core import engine as E
from taskwarden.core.jobs import JobRec


class Harness:
    """A core plus a fake clock, and a fake pool that records what it was told."""

    def __init__(self, workers: int = 2, **kw: Any) -> None:
        self.now = 1000.0
        self.seq = 0  # the last seq given out, by a test or by the core (a job's run)
        self._seqs = self._count()
        self.core = E.Core(workers, seqs=self._seqs, **kw)
        self.core.start(self.now)
        self.spawned = [a.wid for a in self.take(E.Spawn)]
        for wid in list(self.spawned):
            self.core.worker_ready(wid, 10_000 + wid, self.now)
            for spare in self.take(E.Spawn):  # the first ready worker starts the spare
                self.spawned.append(spare.wid)
                self.core.worker_ready(spare.wid, 10_000 + spare.wid, self.now)
        self.actions: list[E.Action] = []

    def _count(self) -> Iterator[int]:
        while True:
            self.seq += 1
            yield self.seq

    def take(self, kind: type | None = None) -> list[Any]:
        acts, self.core.actions = self.core.actions, []
        self.actions = acts
        return [a for a in acts if kind is None or isinstance(a, kind)]

    def run(self, due_in: float | None = None, **policy: Any) -> E.Run:
        run = E.Run(next(self._seqs), b"", Policy(**policy))
        self.core.add(run, self.now, None if due_in is None else self.now + due_in)
        return run

    def tick(self, dt: float) -> None:
        """Let time pass; what the core did is left in ``self.actions``."""
        self.now += dt
        self.core.advance(self.now)
        self.take()

    def sent(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for a in self.take(E.Send):
            out.setdefault(a.wid, []).extend(r.seq for r in a.runs)
        return out

    def finish(self, run: E.Run, value: Any = "ok", ok: bool = True) -> None:
        assert run.worker is not None
        self.core.done(run.worker.wid, run.seq, ok, value, None, self.now)


class JobHarness(Harness):
    def __init__(self, workers: int = 2, **kw: Any) -> None:
        super().__init__(workers, **kw)
        self.core.wall_offset = 1_700_000_000.0 - self.now

    def job(self, first_in: float | None = None, **kw: Any) -> JobRec:
        job = JobRec(next(self._seqs), b"", Policy(), **kw)
        first = None if first_in is None else self.now + first_in
        self.core.add_job(job, self.now, first)
        return job

    def finish_latest(self, job: JobRec) -> None:
        assert job.latest is not None
        self.finish(job.latest)

    @property
    def wall(self) -> float:
        return self.now + self.core.wall_offset
