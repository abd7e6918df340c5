"""Argument checking in one place: the caller's arguments are checked (in the caller's
thread, so that a mistake raises at the call) and come back as typed options."""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import pickle
import time
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

import cloudpickle
import loky

from .._policy import (
    ANCHOR,
    MAX_SECONDS,
    OVERLAP,
    Anchor,
    Overlap,
    Policy,
    normalize,
    seconds,
)
from ..core.model import MIN_INTERVAL, CronTrigger
from ..pool import _wire


@dataclass(frozen=True, slots=True)
class SupervisorOptions:
    defaults: Policy  # every task's policy, but what a call overrides
    workers: int
    max_tasks_per_worker: int | None
    max_memory_per_worker: int | None
    init_payload: bytes | None  # the initializer and its arguments, pickled
    keep_finished: int
    keep_finished_bytes: int


def supervisor_options(
    workers: int | None,
    max_tasks_per_worker: int | None,
    max_memory_per_worker: int | None,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
    keep_finished: int,
    keep_finished_bytes: int,
    policy: dict[str, Any],
) -> SupervisorOptions:
    """``Supervisor(...)``'s arguments, checked; numpy integers and the like become ints."""
    defaults = Policy().with_overrides(normalize(policy))
    if workers is None:
        workers = loky.cpu_count()
    if not whole(workers) or workers < 1:
        raise ValueError(f"workers must be a whole number >= 1, not {workers!r}")
    workers = int(workers)  # numpy integers and the like: a plain int from here on
    if max_tasks_per_worker is not None and (
        not whole(max_tasks_per_worker) or max_tasks_per_worker < 1
    ):
        raise ValueError(
            f"max_tasks_per_worker must be a whole number >= 1, not {max_tasks_per_worker!r}"
        )
    if max_tasks_per_worker is not None:
        max_tasks_per_worker = int(max_tasks_per_worker)
    if not whole(keep_finished) or keep_finished < 0:
        raise ValueError(f"keep_finished must be a whole number >= 0, not {keep_finished!r}")
    keep_finished = int(keep_finished)
    if not whole(keep_finished_bytes) or keep_finished_bytes < 0:
        raise ValueError(
            f"keep_finished_bytes must be a whole number >= 0, not {keep_finished_bytes!r}"
        )
    keep_finished_bytes = int(keep_finished_bytes)
    if max_memory_per_worker is not None and (
        not whole(max_memory_per_worker) or max_memory_per_worker < 1
    ):
        raise ValueError(
            f"max_memory_per_worker must be a number of bytes >= 1, "
            f"not {max_memory_per_worker!r}"
        )
    if max_memory_per_worker is not None:
        max_memory_per_worker = int(max_memory_per_worker)
    init_payload = None
    if initializer is not None:
        if not callable(initializer):
            raise TypeError(f"initializer must be callable, not {initializer!r}")
        init_payload = pickle_call(initializer, tuple(initargs), None, "initializer")
    return SupervisorOptions(defaults, workers, max_tasks_per_worker, max_memory_per_worker,
                             init_payload, keep_finished, keep_finished_bytes)


@dataclass(frozen=True, slots=True)
class JobOptions:
    policy: Policy  # each run's
    every: float | None
    cron: CronTrigger | None
    overlap: Overlap
    anchor: Anchor
    max_runs: int | None
    until: float | None  # a time.time() timestamp


def job_options(
    defaults: Policy, every: Any, cron: str | None, policy: dict[str, Any]
) -> JobOptions:
    """A recurring ``schedule(...)``'s trigger, rules and policy, checked (``policy`` is
    the call's keywords: the job's own rules are taken out of it)."""
    if every is not None and cron is not None:
        raise ValueError("give every or cron, not both")
    job_opts = {k: policy.pop(k) for k in ("overlap", "anchor", "max_runs", "until")
                if k in policy}
    pol = defaults.with_overrides(normalize(policy))
    interval = None
    trigger = None
    if every is not None:
        interval = seconds("every", every)
        if interval < MIN_INTERVAL:
            raise ValueError(
                f"every must be at least 1 ms (a shorter interval is a runaway loop), "
                f"not {every!r}"
            )
    else:
        assert cron is not None
        trigger = CronTrigger(cron)
    overlap = job_opts.get("overlap", "skip")
    if overlap not in OVERLAP:
        raise ValueError(f"overlap must be one of {', '.join(OVERLAP)}, not {overlap!r}")
    overlap = cast(Overlap, overlap)
    anchor = job_opts.get("anchor", "start")
    if anchor not in ANCHOR:
        raise ValueError(f"anchor must be one of {', '.join(ANCHOR)}, not {anchor!r}")
    anchor = cast(Anchor, anchor)
    max_runs = job_opts.get("max_runs")
    if max_runs is not None and (not whole(max_runs) or max_runs < 1):
        raise ValueError(f"max_runs must be a whole number >= 1, not {max_runs!r}")
    if max_runs is not None:
        max_runs = int(max_runs)
    until = job_opts.get("until")
    until_wall = None if until is None else timestamp(until, "until")
    return JobOptions(pol, interval, trigger, overlap, anchor, max_runs, until_wall)


def timestamp(at: datetime | float, name: str = "at") -> float:
    """A ``time.time()`` timestamp; one beyond MAX_SECONDS from now is clamped there."""
    if isinstance(at, datetime):
        try:
            return at.timestamp()  # naive datetimes are local time, as datetime does
        except (ValueError, OverflowError, OSError):
            # The ends of datetime's range (datetime.max/min, naive, in a local zone that
            # moves them past year 9999 or before year 1): "never", or long ago.
            return time.time() + MAX_SECONDS if at.year > 1970 else 0.0
    wall = None
    if not isinstance(at, bool) and isinstance(at, (numbers.Real, Decimal)):
        with contextlib.suppress(ValueError, OverflowError):
            wall = float(at)
    if wall is None or not math.isfinite(wall):
        raise TypeError(
            f"{name} must be a datetime or a finite time.time() timestamp, not {at!r}"
        )
    return min(wall, time.time() + MAX_SECONDS)


def pickle_call(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any] | None, what: str
) -> bytes:
    """Pickle a call in the caller's thread, so that what cannot travel fails here."""
    call = (fn, args, kwargs) if kwargs is not None else (fn, args)
    # The stdlib pickler is several times faster than cloudpickle, but it pickles
    # functions by reference, and a worker cannot import __main__: anything that
    # names __main__ goes by value through cloudpickle.
    try:
        data = pickle.dumps(call, protocol=5)
    except Exception:
        pass
    else:
        if b"__main__" not in data:
            return _within_frame_limit(data, fn, what)
    try:
        data = cloudpickle.dumps(call, protocol=5)
    except Exception as exc:
        raise TypeError(
            f"the {what} cannot be sent to a worker process: cloudpickle failed to pickle "
            f"{getattr(fn, '__qualname__', fn)!r} or its arguments: {type(exc).__name__}: {exc}"
        ) from exc
    return _within_frame_limit(data, fn, what)


def _within_frame_limit(data: bytes, fn: Callable[..., Any], what: str) -> bytes:
    if len(data) > _wire.MAX_FRAME - _wire.FRAME_SLACK:
        limit = _wire.payload_limit()
        raise ValueError(
            f"the {what} is too large to send to a worker process: "
            f"{getattr(fn, '__qualname__', fn)!r} and its arguments pickle to {len(data)} "
            f"bytes, over the worker channel's frame limit ({limit} bytes); pass a path or "
            f"a shared-memory name instead of the data"
        )
    return data


# Weak keys: the cache must not keep a callable (and all it references) alive.
_SIGNATURES: weakref.WeakKeyDictionary[Any, inspect.Signature | None] = (
    weakref.WeakKeyDictionary()
)


def check_binding(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Raise TypeError now, in the caller's thread, if the arguments cannot bind to ``fn``."""
    code = getattr(fn, "__code__", None)
    if (
        code is not None
        and not kwargs
        and type(fn).__name__ == "function"
        and not code.co_flags & 0x0C  # no *args, no **kwargs
        and not code.co_kwonlyargcount
    ):
        # Fast path for plain functions called positionally.
        n_defaults = len(getattr(fn, "__defaults__", None) or ())
        if code.co_argcount - n_defaults <= len(args) <= code.co_argcount:
            return
    target, bound = fn, args
    if type(fn) is types.MethodType:
        # ``obj.method`` is a new object each time: cache its function, bind its self.
        target, bound = fn.__func__, (fn.__self__, *args)
    try:
        sig = _SIGNATURES[target]
    except (KeyError, TypeError):
        sig = _signature(target)
        with contextlib.suppress(TypeError):  # not weakly referenceable: not cached
            if len(_SIGNATURES) > 4096:
                _SIGNATURES.clear()
            _SIGNATURES[target] = sig
    if sig is None:
        return
    try:
        sig.bind(*bound, **kwargs)
    except TypeError as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        raise TypeError(f"arguments do not match {name}{sig}: {exc}") from None


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    """The signature of what a worker will call: a decorator's wrapper's own, not that of
    the function it names in ``__wrapped__`` (the wrapper may add, inject or drop
    arguments; one taking ``*args, **kwargs`` binds anything). A wrapper with no
    signature of its own (a C one, such as ``functools.lru_cache``'s) passes the call
    through: the wrapped function's signature is checked then."""
    for follow_wrapped in (False, True):
        try:
            return inspect.signature(fn, follow_wrapped=follow_wrapped)
        except (ValueError, TypeError):
            continue
    return None  # builtins without a signature: the worker will tell


def whole(value: object) -> bool:
    """A count: any integral number (numpy's included), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
