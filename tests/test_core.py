"""The pure core, driven by hand with a fake clock: no threads, no processes."""

from __future__ import annotations

import functools
import operator

import pytest

from taskwarden import TaskCancelled, TaskState, TaskTimeout, WorkerCrashed
from taskwarden._policy import Policy
from taskwarden._states import InvalidTransition, check_task
from taskwarden.core import engine as E

from _harness import Harness


def test_a_run_goes_to_an_idle_worker_and_starts_at_once() -> None:
    h = Harness()
    run = h.run()
    assert h.sent() == {h.spawned[0]: [run.seq]}
    assert run.state is TaskState.RUNNING
    assert run.attempts == 1 and run.worker_pid == 10_000 + h.spawned[0]


def test_a_spare_worker_is_kept_but_not_used_while_slots_are_full() -> None:
    h = Harness(workers=2, prefetch=1)
    assert len(h.spawned) == 3  # two working + one spare
    a, b, c = h.run(), h.run(), h.run()
    sent = h.sent()
    assert sorted(functools.reduce(operator.iadd, sent.values(), [])) == [a.seq, b.seq]
    assert c.state is TaskState.PENDING and c.worker is None


def test_completion_resolves_and_hands_the_next_run_to_the_free_worker() -> None:
    h = Harness(workers=1, prefetch=1)
    a, b = h.run(), h.run()
    h.take()
    h.finish(a, 42)
    resolved = [x.run for x in h.take(E.Resolve)]
    assert resolved == [a] and a.state is TaskState.COMPLETED and a.value == 42
    assert b.state is TaskState.RUNNING


def test_prefetch_sends_queued_runs_in_one_batch_behind_a_young_head() -> None:
    h = Harness(workers=1, prefetch=4)
    runs = [h.run() for _ in range(6)]
    sent = h.sent()
    wid = h.spawned[0]
    assert sent[wid][0] == runs[0].seq
    h.take()
    # Head finished: the worker still holds prefetched runs; the next one is now running.
    h.finish(runs[0])
    assert runs[1].state is TaskState.RUNNING
    assert all(r.state is TaskState.PENDING for r in runs[2:])


def test_prefetched_runs_are_pending_until_they_reach_the_head() -> None:
    h = Harness(workers=1, prefetch=8)
    runs = [h.run() for _ in range(3)]
    assert runs[0].state is TaskState.RUNNING
    assert [r.state for r in runs[1:]] == [TaskState.PENDING, TaskState.PENDING]


def test_timeout_kills_the_worker_and_spawns_a_replacement() -> None:
    h = Harness(workers=1)
    run = h.run(timeout=5.0)
    wid = run.worker.wid if run.worker else -1
    h.take()
    h.tick(4.999)
    assert run.state is TaskState.RUNNING
    assert not any(isinstance(a, E.Kill) for a in h.actions)
    h.tick(0.001)
    assert [a.wid for a in h.actions if isinstance(a, E.Kill)] == [wid]
    assert run.state is TaskState.TIMED_OUT and isinstance(run.value, TaskTimeout)
    h.tick(E.REPLACE_DELAY)  # the replacement starts a moment later; the spare took over
    assert any(isinstance(a, E.Spawn) for a in h.actions)
    assert "timed out after 5 s" in str(run.value)


def test_the_core_asks_to_wake_exactly_at_the_next_deadline() -> None:
    h = Harness(workers=1)
    h.run(timeout=5.0)
    h.run(due_in=2.0)
    # A timed start is handed out LEAD early, with the exact time to begin.
    assert h.core.next_deadline() == pytest.approx(h.now + 2.0 - E.LEAD)


def test_a_timed_start_is_handed_out_early_with_the_time_to_begin() -> None:
    h = Harness(workers=1)
    run = h.run(due_in=2.0, timeout=1.0)
    due = h.now + 2.0
    h.tick(2.0 - E.LEAD)
    assert run.state is TaskState.RUNNING and run.not_before == pytest.approx(due)
    assert run.started_at == pytest.approx(due)
    assert run.deadline == pytest.approx(due + 1.0)  # the limit counts from the real start


def test_a_run_prefetched_behind_a_killed_head_is_dispatched_again_not_lost() -> None:
    h = Harness(workers=1, prefetch=4)
    head = h.run(timeout=1.0)
    behind = h.run()
    h.take()
    assert behind.worker is head.worker
    h.tick(1.0)
    assert head.state is TaskState.TIMED_OUT
    # The spare took over at once; the prefetched run went to it.
    assert behind.state is TaskState.RUNNING
    assert behind.worker is not None and behind.worker.wid != h.spawned[0]


def test_a_crash_fails_only_the_head_with_worker_crashed_naming_the_signal() -> None:
    h = Harness(workers=2, prefetch=1)
    a, b = h.run(), h.run()
    h.take()
    assert a.worker is not None
    h.core.worker_exited(a.worker.wid, -9, h.now)
    assert a.state is TaskState.FAILED and isinstance(a.value, WorkerCrashed)
    assert "SIGKILL" in str(a.value)
    assert b.state is TaskState.RUNNING
    assert h.core.replaced == 1


def test_exit_of_a_worker_we_killed_is_not_a_crash() -> None:
    h = Harness(workers=1)
    run = h.run(timeout=1.0)
    wid = run.worker.wid if run.worker else -1
    h.tick(1.0)
    other = h.run()
    h.core.worker_exited(wid, -9, h.now)
    assert other.state is TaskState.RUNNING


@pytest.mark.parametrize("where", ["scheduled", "pending", "prefetched", "running"])
def test_cancel_works_in_every_state_but_a_final_one(where: str) -> None:
    h = Harness(workers=1, prefetch=4)
    blocker = h.run()
    if where == "scheduled":
        run = h.run(due_in=10)
    elif where == "pending":
        h.core.prefetch = 1
        run = h.run()
    elif where == "prefetched":
        run = h.run()
        assert run.worker is not None and run.state is TaskState.PENDING
    else:
        run = blocker
    h.take()
    if where == "prefetched":
        # Not known until the worker answers: it may have begun the run already.
        assert h.core.cancel(run, h.now) is None
        acts = h.take()
        assert [a.seq for a in acts if isinstance(a, E.Skip)] == [run.seq]
        assert run.state is TaskState.PENDING
        assert h.core.cancel(run, h.now) is None and not h.take(E.Skip)  # asked once
        h.core.skipped(run.worker.wid if run.worker else -1, run.seq, h.now)
    else:
        assert h.core.cancel(run, h.now) is True
        acts = h.take()
    assert run.state is TaskState.CANCELLED and isinstance(run.value, TaskCancelled)
    if where == "running":
        assert any(isinstance(a, E.Kill) for a in acts)
    assert h.core.cancel(run, h.now) is False
    h.tick(100)
    assert run.state is TaskState.CANCELLED  # a scheduled one never starts


@pytest.mark.parametrize("first", [TaskState.SUPERSEDED, TaskState.CANCELLED])
def test_a_prefetched_run_cancelled_twice_ends_as_the_first_asked(first: TaskState) -> None:
    # A newer task of its key and a caller's cancel() both reach a run that waits on a
    # worker: the first one decides how it ends; the second waits for the same answer.
    h = Harness(workers=1, prefetch=4)
    h.run()
    run = h.run()
    second = TaskState.CANCELLED if first is TaskState.SUPERSEDED else TaskState.SUPERSEDED
    assert h.core.cancel(run, h.now, first) is None
    assert h.core.cancel(run, h.now, second) is None
    assert len(h.take(E.Skip)) == 1
    h.core.skipped(run.worker.wid if run.worker else -1, run.seq, h.now)
    assert run.state is first


def test_a_cancelled_prefetched_run_that_the_worker_starts_anyway_is_killed() -> None:
    h = Harness(workers=1, prefetch=4)
    head, behind = h.run(), h.run()
    h.core.cancel(behind, h.now)
    h.take()
    h.finish(head)  # the skip has not been acknowledged: behind may be running
    h.take()
    h.tick(E.SKIP_ACK_WAIT)
    assert any(isinstance(a, E.Kill) for a in h.actions)


def test_a_skip_acknowledgement_frees_the_worker() -> None:
    h = Harness(workers=1, prefetch=4)
    head, behind = h.run(), h.run()
    wid = head.worker.wid if head.worker else -1
    h.core.cancel(behind, h.now)
    h.core.skipped(wid, behind.seq, h.now)
    h.finish(head)
    assert h.core.busy == 0


def test_an_idle_worker_takes_back_runs_queued_behind_a_long_head() -> None:
    h = Harness(workers=2, prefetch=8)
    long_head = h.run()
    queued = [h.run() for _ in range(4)]
    # Both slots: the second worker took queued[0]; the rest were prefetched.
    h.take()
    other = queued[0]
    h.finish(other)
    h.take()
    h.tick(E.STEAL_AFTER)
    skips = [a for a in h.actions if isinstance(a, E.Skip)]
    assert skips, "the idle worker should take back work from the busy one"
    assert long_head.worker is not None
    for s in skips:
        h.core.skipped(s.wid, s.seq, h.now)
    stolen = [r for r in queued if r.seq in {s.seq for s in skips}]
    assert all(r.state is TaskState.RUNNING or r.worker is not long_head.worker for r in stolen)


def test_retries_rerun_after_an_exception_with_doubling_backoff() -> None:
    h = Harness(workers=1)
    run = h.run(retries=2, retry_delay=1.0)
    h.finish(run, ValueError("x"), ok=False)
    assert run.state is TaskState.SCHEDULED and run.due == pytest.approx(h.now + 1.0)
    h.tick(1.0)
    assert run.state is TaskState.RUNNING and run.attempts == 2
    h.finish(run, ValueError("x"), ok=False)
    assert run.due == pytest.approx(h.now + 2.0)
    h.tick(2.0)
    h.finish(run, ValueError("x"), ok=False)
    assert run.state is TaskState.FAILED and run.attempts == 3


def test_retry_on_narrows_which_errors_are_retried() -> None:
    h = Harness(workers=1)
    run = h.run(retries=3, retry_on=(KeyError,))
    h.finish(run, ValueError("x"), ok=False)
    assert run.state is TaskState.FAILED and run.attempts == 1


def test_a_timeout_is_retried_like_an_error() -> None:
    h = Harness(workers=1)
    run = h.run(timeout=1.0, retries=1)
    h.tick(1.0)
    assert run.state is TaskState.RUNNING and run.attempts == 2


def test_heartbeat_silence_kills_and_says_how_long() -> None:
    h = Harness(workers=1)
    run = h.run(heartbeat=1.0)
    wid = run.worker.wid if run.worker else -1
    h.tick(0.9)
    h.core.beat(wid, run.seq, 0.5, True, h.now)
    h.tick(0.9)
    assert run.state is TaskState.RUNNING and run.progress == 0.5
    h.tick(0.1)
    assert run.state is TaskState.TIMED_OUT
    assert "heartbeat" in str(run.value) and "silent for 1.000 s" in str(run.value)


def test_a_heartbeat_in_the_same_instant_as_its_deadline_keeps_the_task_alive() -> None:
    h = Harness(workers=1)
    run = h.run(heartbeat=1.0)
    wid = run.worker.wid if run.worker else -1
    h.now += 1.0
    h.core.beat(wid, run.seq, None, False, h.now)
    h.core.advance(h.now)
    assert run.state is TaskState.RUNNING


def test_grace_interrupts_first_and_kills_only_when_the_grace_runs_out() -> None:
    h = Harness(workers=1)
    run = h.run(timeout=1.0, grace=0.5)
    h.take()
    h.tick(1.0)
    assert [type(a) for a in h.actions if isinstance(a, (E.Interrupt, E.Kill))] == [E.Interrupt]
    assert run.state is TaskState.RUNNING
    h.tick(0.5)
    assert any(isinstance(a, E.Kill) for a in h.actions)
    assert run.state is TaskState.TIMED_OUT


def test_a_task_that_ends_within_its_grace_is_timed_out_without_a_kill() -> None:
    h = Harness(workers=1)
    run = h.run(timeout=1.0, grace=0.5)
    h.tick(1.0)
    h.finish(run, TaskTimeout("raised inside"), ok=False)
    h.take()
    h.tick(1.0)
    assert run.state is TaskState.TIMED_OUT
    assert not any(isinstance(a, E.Kill) for a in h.actions)


def test_a_scheduled_run_waits_for_its_time() -> None:
    h = Harness(workers=1)
    run = h.run(due_in=5.0)
    assert run.state is TaskState.SCHEDULED and h.core.scheduled == 1
    h.tick(4.0)
    assert run.state is TaskState.SCHEDULED
    h.tick(1.0)
    assert run.state is TaskState.RUNNING and h.core.scheduled == 0


def test_reschedule_moves_a_run_that_has_not_started_and_refuses_otherwise() -> None:
    h = Harness(workers=1)
    run = h.run(due_in=5.0)
    assert h.core.reschedule(run, h.now + 10.0, h.now) is True
    h.tick(6.0)
    assert run.state is TaskState.SCHEDULED
    h.tick(4.0)
    assert run.state is TaskState.RUNNING
    assert h.core.reschedule(run, h.now + 1.0, h.now) is False


def test_max_tasks_per_worker_retires_a_worker_and_starts_another() -> None:
    h = Harness(workers=1, prefetch=4, max_tasks_per_worker=2)
    runs = [h.run() for _ in range(3)]
    first = runs[0].worker
    assert first is not None
    assert runs[2].worker is None  # not prefetched past the worker's budget
    h.finish(runs[0])
    h.finish(runs[1])
    acts = h.take()
    assert any(isinstance(a, E.Stop) and a.wid == first.wid for a in acts)
    h.tick(E.REPLACE_DELAY)
    assert any(isinstance(a, E.Spawn) for a in h.actions)
    assert runs[2].state is TaskState.RUNNING and runs[2].worker is not first


def test_close_cancels_scheduled_runs_and_stops_idle_workers() -> None:
    h = Harness(workers=1)
    later = h.run(due_in=60.0)
    running = h.run()
    h.take()
    h.core.close(h.now, cancel_pending=False)
    stops = h.take(E.Stop)
    assert len(stops) == 1  # the idle spare, at once
    assert later.state is TaskState.CANCELLED
    assert running.state is TaskState.RUNNING
    h.finish(running)
    stops = h.take(E.Stop)
    assert len(stops) == 1 and h.core.idle()


def test_stats_count_runs_by_state() -> None:
    h = Harness(workers=1, prefetch=1)
    a, _b, _c = h.run(), h.run(), h.run(due_in=9)
    h.finish(a)
    s = h.core.stats()
    assert s["by_state"]["COMPLETED"] == 1
    assert s["by_state"]["RUNNING"] == 1
    assert s["by_state"]["SCHEDULED"] == 1 and s["scheduled"] == 1


def test_an_impossible_transition_raises() -> None:
    with pytest.raises(InvalidTransition):
        check_task(TaskState.COMPLETED, TaskState.RUNNING)


def test_initializer_failure_breaks_the_pool_like_process_pool_executor() -> None:
    h = Harness(workers=1, prefetch=1)
    h.run()
    waiting = h.run()
    h.core.initializer_failed("Traceback: boom", h.now)
    assert waiting.state is TaskState.FAILED and "initializer" in str(waiting.value)


# ------------------------------------------------------------------ keys
def test_supersede_kills_the_running_task_of_the_key_and_names_the_winner() -> None:
    h = Harness(workers=1)
    old = h.run(key="k")
    wid = old.worker.wid if old.worker else -1
    h.take()
    new = h.run(key="k")
    acts = h.take()
    assert [a.wid for a in acts if isinstance(a, E.Kill)] == [wid]
    assert old.state is TaskState.SUPERSEDED
    assert old.value.winner_id == str(new.seq) and str(new.seq) in str(old.value)
    assert new.state is TaskState.RUNNING  # on the spare, at once


def test_every_newer_task_of_a_key_supersedes_the_one_before() -> None:
    h = Harness(workers=2)
    runs = [h.run(key="k") for _ in range(4)]
    assert [r.state for r in runs[:3]] == [TaskState.SUPERSEDED] * 3
    assert not runs[-1].state.final  # it waits for a replacement worker, or runs
    assert list(h.core.streams["k"]) == [runs[-1]]


def test_supersede_makes_a_pending_task_of_the_key_superseded_without_a_kill() -> None:
    h = Harness(workers=1, prefetch=1)
    h.run()
    old = h.run(key="k")
    h.take()
    new = h.run(key="k")
    assert old.state is TaskState.SUPERSEDED and not h.take(E.Kill)
    assert new.state is TaskState.PENDING


def test_a_supersede_arriving_after_the_old_task_finished_changes_nothing() -> None:
    h = Harness(workers=1)
    old = h.run(key="k")
    h.finish(old, 1)
    h.take()
    new = h.run(key="k")
    assert old.state is TaskState.COMPLETED and not h.take(E.Kill)
    assert new.state is TaskState.RUNNING


def test_a_result_arriving_after_a_supersede_is_ignored() -> None:
    h = Harness(workers=1)
    old = h.run(key="k")
    wid = old.worker.wid if old.worker else -1
    h.run(key="k")
    h.core.done(wid, old.seq, True, "late", None, h.now)
    assert old.state is TaskState.SUPERSEDED


def test_queue_runs_one_task_of_the_key_at_a_time_in_order() -> None:
    h = Harness(workers=2)
    a = h.run(key="k", on_conflict="queue")
    b = h.run(key="k", on_conflict="queue")
    c = h.run(key="k", on_conflict="queue")
    assert a.state is TaskState.RUNNING
    assert b.state is TaskState.PENDING and c.state is TaskState.PENDING and b.worker is None
    h.finish(a)
    assert b.state is TaskState.RUNNING and c.state is TaskState.PENDING
    h.core.cancel(b, h.now)
    assert c.state is TaskState.RUNNING


def test_drop_returns_the_task_already_live() -> None:
    h = Harness(workers=1)
    a = h.run(key="k", on_conflict="drop")
    h.seq += 1
    b = E.Run(h.seq, b"", Policy(key="k", on_conflict="drop"))
    assert h.core.add(b, h.now) is a
    h.finish(a)
    h.seq += 1
    c = E.Run(h.seq, b"", Policy(key="k", on_conflict="drop"))
    assert h.core.add(c, h.now) is c


def test_debounce_waits_and_a_newer_task_in_the_window_waits_afresh() -> None:
    h = Harness(workers=1)
    a = h.run(key="k", debounce=1.0)
    h.tick(0.6)
    assert a.state is TaskState.SCHEDULED
    b = h.run(key="k", debounce=1.0)
    assert a.state is TaskState.SUPERSEDED
    h.tick(0.6)
    c = h.run(key="k", debounce=1.0)
    assert b.state is TaskState.SUPERSEDED and c.state is TaskState.SCHEDULED
    h.tick(0.6)
    assert c.state is TaskState.SCHEDULED
    h.tick(0.4)
    assert c.state is TaskState.RUNNING


def test_a_cancel_while_a_retry_waits_means_no_more_attempts() -> None:
    h = Harness(workers=1)
    run = h.run(retries=3, retry_delay=5.0)
    h.finish(run, ValueError("x"), ok=False)
    assert run.state is TaskState.SCHEDULED
    assert h.core.cancel(run, h.now) is True
    h.tick(60)
    assert run.state is TaskState.CANCELLED and run.attempts == 1


def test_a_worker_over_its_memory_limit_leaves_and_its_queued_runs_go_elsewhere() -> None:
    h = Harness(workers=1, prefetch=4)
    head, behind = h.run(), h.run()
    w = head.worker
    assert w is not None and behind.worker is w
    h.finish(head)  # behind is now presumed running on w...
    h.core.worker_retiring(w.wid, h.now)  # ...but w left before starting it
    assert behind.state is TaskState.RUNNING and behind.worker is not w
    assert behind.attempts == 1 and h.core.recycled == 1 and h.core.replaced == 0


# ------------------------------------------------- found by review and fuzzing
def test_rescheduling_a_task_waiting_its_turn_in_a_queue_keeps_it_waiting() -> None:
    h = Harness(workers=2)
    first = h.run(key="q", on_conflict="queue")
    second = h.run(key="q", on_conflict="queue", due_in=5.0)
    assert second.blocked
    assert h.core.reschedule(second, h.now + 0.2, h.now) is True
    h.tick(1.0)
    assert second.state is not TaskState.RUNNING  # its turn has not come
    h.finish(first)
    h.tick(0)
    assert second.state is TaskState.RUNNING


def test_a_broken_pool_fails_delayed_and_later_due_tasks_instead_of_hanging() -> None:
    h = Harness(workers=1)
    later = h.run(due_in=5.0)
    h.core.initializer_failed("Traceback: boom", h.now)
    h.tick(5.0)
    assert later.state is TaskState.FAILED
    h.seq += 1
    delayed = E.Run(h.seq, b"", Policy())
    delayed.state = TaskState.SCHEDULED  # as the driver makes a delayed task
    h.core.add(delayed, h.now, h.now + 1.0)
    assert delayed.state is TaskState.FAILED and not h.core.pending


def test_shutdown_cancels_a_scheduled_task_waiting_its_turn_in_a_queue() -> None:
    h = Harness(workers=1)
    h.run(key="q", on_conflict="queue")
    waiting = h.run(key="q", on_conflict="queue", due_in=5.0)
    h.core.close(h.now, cancel_pending=False)
    assert waiting.state is TaskState.CANCELLED


def test_shutdown_replaces_workers_that_leave_while_due_runs_still_wait() -> None:
    # Tasks already due run to completion at shutdown, even when every worker
    # that could run them retires (max_tasks_per_worker) or dies on the way.
    h = Harness(workers=1, prefetch=1, max_tasks_per_worker=1)
    a, b, c = h.run(), h.run(), h.run()
    h.take()
    h.core.close(h.now, cancel_pending=False)
    h.take()
    for run, nxt in ((a, b), (b, c)):
        h.finish(run)  # its worker retires: the next due run needs a new one
        spawned = [x.wid for x in h.take(E.Spawn)]
        h.tick(E.REPLACE_DELAY)
        spawned += [x.wid for x in h.actions if isinstance(x, E.Spawn)]
        assert len(spawned) <= 1  # never more than `workers` at shutdown, no spare
        for wid in spawned:
            h.core.worker_ready(wid, 20_000 + wid, h.now)
        assert nxt.state is TaskState.RUNNING, f"{nxt} stranded at shutdown"
        h.take()
    h.finish(c)
    ran = [a, b, c]
    assert [r.state for r in ran] == [TaskState.COMPLETED] * 3
    assert h.core.idle()


def test_shutdown_runs_a_queued_successor_that_comes_due_as_its_predecessor_ends() -> None:
    h = Harness(workers=1)
    first = h.run(key="q", on_conflict="queue")
    second = h.run(key="q", on_conflict="queue")
    h.take()
    h.core.close(h.now, cancel_pending=False)
    h.take()
    h.finish(first)
    assert second.state is TaskState.RUNNING, "the successor was stranded"
    stopped = {a.wid for a in h.core.actions if isinstance(a, E.Stop)}
    assert second.worker is not None and second.worker.wid not in stopped
    h.take()
    h.finish(second)
    assert h.core.idle() and h.take(E.Stop)


def test_a_worker_still_there_after_it_was_told_to_stop_is_killed() -> None:
    h = Harness(workers=1)
    h.core.close(h.now, cancel_pending=False)
    stopped = sorted(a.wid for a in h.take(E.Stop))
    assert len(stopped) == 2  # the worker and the spare
    h.core.worker_exited(stopped[0], 0, h.now + 0.01)  # this one leaves as told
    h.tick(E.STOP_WAIT - 0.001)
    assert not [a for a in h.actions if isinstance(a, E.Kill)]
    h.tick(0.002)
    assert [a.wid for a in h.actions if isinstance(a, E.Kill)] == [stopped[1]]


def test_a_worker_retiring_over_its_memory_limit_is_killed_if_it_lingers() -> None:
    h = Harness(workers=1, prefetch=1)
    run = h.run()
    wid = run.worker.wid if run.worker else -1
    h.finish(run)
    h.core.worker_retiring(wid, h.now)
    h.tick(E.STOP_WAIT)
    assert wid in [a.wid for a in h.actions if isinstance(a, E.Kill)]
