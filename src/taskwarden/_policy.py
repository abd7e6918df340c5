"""Policy keywords: validated once, at the call, in the caller's thread."""

from __future__ import annotations

import enum
import math
import numbers
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal
from typing import Any, Final, Literal, SupportsFloat, SupportsIndex, TypeAlias, get_args

OnConflict: TypeAlias = Literal["supersede", "queue", "drop"]
"""What a new task of a key does to the live one: ``"supersede"`` (last task wins: the
older is SUPERSEDED, killed if running), ``"queue"`` (one at a time, in order), ``"drop"``
(while one is pending or running, the call returns it)."""
Overlap: TypeAlias = Literal["skip", "queue", "parallel", "replace"]
"""A job's run that comes due while the previous one runs: ``"skip"`` it, ``"queue"`` it
behind, run both (``"parallel"``), or kill the previous (``"replace"``)."""
Anchor: TypeAlias = Literal["start", "end"]
"""A job's rate: from each run's scheduled start (``"start"``, fixed rate, no drift) or
from each run's end (``"end"``, fixed delay)."""
ON_CONFLICT: tuple[OnConflict, ...] = get_args(OnConflict)
OVERLAP: tuple[Overlap, ...] = get_args(Overlap)
ANCHOR: tuple[Anchor, ...] = get_args(Anchor)

# What the policy keywords take, as the signatures spell it out: a time is any real
# number (numpy, Fraction and Decimal too) or a timedelta, a count any integral number.
Seconds: TypeAlias = SupportsFloat | timedelta
Count: TypeAlias = SupportsIndex
RetryOn: TypeAlias = type[BaseException] | tuple[type[BaseException], ...]


class Unset(enum.Enum):
    """The default of a policy keyword: not given here, so the default applies
    (``timeout=None`` is given: no limit, whatever the Supervisor's default)."""

    UNSET = enum.auto()

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.UNSET


def given(**keywords: object) -> dict[str, Any]:
    """The keywords a call gave (those not left UNSET)."""
    return {name: value for name, value in keywords.items() if value is not UNSET}

MAX_RETRY_DELAY = 300.0
# A time further off than this (about 100 years) means "never", and is clamped to it:
# ``timeout=sys.maxsize`` is a common way to say "no limit", and must not overflow a timer.
MAX_SECONDS = 100 * 365.25 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Policy:
    timeout: float | None = None
    heartbeat: float | None = None
    grace: float | None = None
    retries: int = 0
    retry_delay: float = 0.0
    retry_on: tuple[type[BaseException], ...] | None = None
    key: str | None = None
    on_conflict: OnConflict = "supersede"
    debounce: float | None = None

    def with_overrides(self, overrides: dict[str, Any]) -> Policy:
        return replace(self, **overrides) if overrides else self


def seconds(name: str, value: object, *, allow_zero: bool = True) -> float:
    """A duration in seconds from any real number (int, float, numpy, Fraction, Decimal)
    or a timedelta; refuses NaN and negatives. Anything longer than MAX_SECONDS (about a
    century, ``inf`` and ``sys.maxsize`` included) is clamped to it."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Decimal)):
        raise TypeError(f"{name} must be a number of seconds or a timedelta, not {value!r}")
    try:
        result = float(value)
    except OverflowError:  # an int or Fraction past float's range
        result = -math.inf if value <= 0 else math.inf
    except (ValueError, ArithmeticError):  # Decimal('sNaN')
        result = math.nan
    if math.isnan(result):
        raise ValueError(f"{name} must be a number of seconds, not {value!r}")
    if result < 0 or (result == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, not {value!r}")
    return min(result, MAX_SECONDS)


def wait_seconds(timeout: SupportsFloat | None) -> float | None:
    """A caller's wait (``result(timeout=)``, ``map(timeout=)``) as threading takes it:
    any real number (Decimal and Fraction too) becomes a float; None waits for ever."""
    return None if timeout is None else float(timeout)


def normalize(given: dict[str, Any]) -> dict[str, Any]:
    """Validate the task policy keywords present in ``given``; returns clean values."""
    out: dict[str, Any] = {}
    for name in ("timeout", "heartbeat", "grace", "debounce"):
        if name in given and given[name] is not None:
            out[name] = seconds(name, given[name], allow_zero=name in ("grace", "debounce"))
        elif name in given:
            out[name] = None
    if "retry_delay" in given:
        out["retry_delay"] = seconds("retry_delay", given["retry_delay"])
    if "retries" in given:
        retries = given["retries"]
        if (isinstance(retries, bool) or not isinstance(retries, numbers.Integral)
                or retries < 0):
            raise ValueError(f"retries must be a whole number >= 0, not {retries!r}")
        out["retries"] = int(retries)
    if "retry_on" in given:
        retry_on = given["retry_on"]
        if retry_on is not None:
            if isinstance(retry_on, type):
                retry_on = (retry_on,)
            if not isinstance(retry_on, tuple) or not all(
                isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
            ):
                raise TypeError(f"retry_on must be a tuple of exception types, not {retry_on!r}")
        out["retry_on"] = retry_on
    if "key" in given:
        key = given["key"]
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key must be a str, not {key!r}")
        out["key"] = key
    if given.get("debounce") is not None and given.get("key") is None:
        raise ValueError("debounce needs a key: tasks sharing a key are one stream")
    if "on_conflict" in given:
        if given["on_conflict"] not in ON_CONFLICT:
            raise ValueError(
                f"on_conflict must be one of {', '.join(ON_CONFLICT)}, not {given['on_conflict']!r}"
            )
        out["on_conflict"] = given["on_conflict"]
    return out

