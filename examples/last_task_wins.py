"""Last task wins: tasks that share a ``key`` are one stream.

Shows:
- ``on_conflict="supersede"`` (the default with a key): a newer task kills the older
  running one (its process dies, it ends SUPERSEDED) and ``TaskSuperseded.winner_id``
  names the newer task;
- ``debounce=``: a burst of calls (keystrokes) runs only the last one, after a pause;
- ``on_conflict="queue"``: one task of the key at a time, in order;
- ``on_conflict="drop"``: while one is live, a new call returns that one instead.

Run it with:  python examples/last_task_wins.py
"""

from __future__ import annotations

import itertools
import os
import time

from taskwarden import Supervisor, TaskSuperseded


def render(text: str, seconds: float = 0.0) -> str:
    time.sleep(seconds)
    return f"rendered {text!r} in worker {os.getpid()}"


def migrate(step: int) -> tuple[int, float, float]:
    start = time.time()
    time.sleep(0.1)
    return step, start, time.time()


def refresh_cache() -> str:
    time.sleep(0.3)
    return f"cache refreshed by worker {os.getpid()}"


def main() -> None:
    with Supervisor(workers=2) as sup:
        # Supersede: the newer render kills the one still running.
        old = sup.schedule(render, args=("draft", 60), key="preview")
        while old.state != "RUNNING":
            time.sleep(0.01)
        new = sup.schedule(render, args=("final",), key="preview")
        print(f"supersede: new -> {new.result()}")
        try:
            old.result()
        except TaskSuperseded as exc:
            print(f"supersede: old -> {old.state}, worker {old.worker_pid} killed; "
                  f"winner_id == new.id: {exc.winner_id == new.id}")

        # Debounce: one call per keystroke, only the last runs once typing pauses.
        typed = [
            sup.schedule(render, args=(text,), key="search", debounce=0.3)
            for text in ("t", "ta", "tas", "task")
        ]
        last = typed[-1].result()
        print(f"debounce:  {[t.state.value for t in typed]} -> {last}")

        # Queue: one migration at a time, in the order given.
        steps = [sup.schedule(migrate, args=(i,), key="db", on_conflict="queue")
                 for i in range(3)]
        results = [t.result() for t in steps]
        in_order = all(a[2] <= b[1] for a, b in itertools.pairwise(results))
        print(f"queue:     steps {[r[0] for r in results]} ran one after another: {in_order}")

        # Drop: while a refresh is live, asking again returns the same task.
        first = sup.schedule(refresh_cache, key="cache", on_conflict="drop")
        again = sup.schedule(refresh_cache, key="cache", on_conflict="drop")
        print(f"drop:      second call returned the live task: {again is first}; "
              f"{first.result()}")
        after = sup.schedule(refresh_cache, key="cache", on_conflict="drop")
        print(f"drop:      once it finished, a new call starts a new task: {after is not first}; "
              f"{after.result()}")


if __name__ == "__main__":
    main()
