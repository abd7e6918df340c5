"""Scheduling and watchdogs: delayed tasks, a dead-man's switch, interval and cron jobs.

Shows:
- a one-shot task run after a delay (``SCHEDULED`` until its time);
- a dead-man's switch: ``kick()`` keeps postponing it; once the kicks stop it fires,
  and ``kick()`` returning False tells that it did;
- a recurring job (``every=0.2, delay=0``: starting now) run a few times, then cancelled;
- a cron job: its ``next_run_at``, then cancelled before it ever runs;
- the "do the work, then schedule yourself again" pattern: ``every=..., anchor="end"``.

Run it with:  python examples/scheduling.py
"""

from __future__ import annotations

import itertools
import time
from datetime import datetime

from taskwarden import Supervisor


def report(label: str) -> str:
    return f"{label} ran at {datetime.now():%H:%M:%S.%f}"[:-3]


def page_oncall() -> str:
    return "PAGED: no kick for 0.5 s"


def poll_queue() -> str:
    return f"polled at {datetime.now():%H:%M:%S.%f}"[:-3]


def refresh_tokens() -> float:
    time.sleep(0.1)  # the work takes a while; the next run waits 0.2 s after it ends
    return time.time()


def main() -> None:
    with Supervisor(workers=2) as sup:
        # A one-shot task after a delay.
        print(f"delayed:  scheduled at {datetime.now():%H:%M:%S.%f}"[:-3], end="")
        later = sup.schedule(report, args=("delayed task",), delay=0.3)
        print(f" ({later.state}); {later.result()}")

        # A dead-man's switch: fires unless it is kicked within 0.5 s.
        alarm = sup.schedule(page_oncall, delay=0.5)
        for _ in range(5):
            time.sleep(0.2)
            kicked = alarm.kick()  # True: postponed again by 0.5 s
        print(f"watchdog: kept alive by kicks for 1 s: kicked={kicked}, state={alarm.state}")
        print(f"watchdog: the kicks stop... {alarm.result()}")
        print(f"watchdog: kick() now returns {alarm.kick()}: it fired ({alarm.state})")

        # A recurring job, every 0.2 s starting now, stopped after a few runs.
        poll = sup.schedule(poll_queue, every=0.2, delay=0)
        while sum(run.done() for run in poll.runs) < 3:
            time.sleep(0.05)
        poll.cancel()
        print(f"every:    {[r.state.value for r in poll.runs]}, then {poll.state}; "
              f"latest result: {poll.result()!r}")

        # A cron job: every 5 minutes, local time.
        cron = sup.schedule(report, args=("cron job",), cron="*/5 * * * *")
        print(f"cron:     next run at {cron.next_run_at:%Y-%m-%d %H:%M %Z} ({cron.state})")
        cron.cancel()
        print(f"cron:     {cron.state}, next_run_at={cron.next_run_at}, runs={len(cron.runs)}")

        # Self-rescheduling: each run starts 0.2 s after the previous one ended.
        tokens = sup.schedule(refresh_tokens, every=0.2, delay=0, anchor="end")
        while len(tokens.runs) < 3 or not tokens.runs[2].done():
            time.sleep(0.05)
        tokens.cancel()
        runs = tokens.runs[:3]
        gaps = [
            b.started_at - a.finished_at
            for a, b in itertools.pairwise(runs)
            if a.finished_at is not None and b.started_at is not None
        ]
        print("anchor=end: idle gaps between runs:", [f"{g:.2f} s" for g in gaps])


if __name__ == "__main__":
    main()
