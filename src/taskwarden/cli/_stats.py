"""Statistics of run times: summary, relative speed, outliers, Welch's t-test.

Pure functions over lists of seconds, no I/O: the table, the exports and
``taskwarden compare`` all read their numbers from here.

- ``Timing.of(values)``: mean, sample standard deviation (n - 1), median,
  min, max.
- ``relative_speed``: each target's mean over the fastest mean, with the
  uncertainty propagated from both standard deviations (independent
  variables), as hyperfine computes it.
- ``outliers``: modified Z-scores (Iglewicz and Hoaglin: 0.6745 times the
  distance to the median over the median absolute deviation); a score above
  14 is an outlier, hyperfine's threshold.
- ``welch``: Welch's two-sample t-test (unequal variances), the p-value from
  the Student t distribution through the regularised incomplete beta
  function, so that ``compare`` needs no SciPy.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

OUTLIER_THRESHOLD = 14.0
SIGNIFICANCE = 0.05  # p below this: the change is significant (95 %)


@dataclass(frozen=True)
class Timing:
    """Summary of some measurements, in seconds."""

    count: int
    mean: float
    stddev: float | None  # None for a single value
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Timing | None:
        if not values:
            return None
        return cls(
            count=len(values),
            mean=statistics.fmean(values),
            stddev=statistics.stdev(values) if len(values) > 1 else None,
            median=statistics.median(values),
            low=min(values),
            high=max(values),
        )

    def to_json(self) -> dict[str, float | int | None]:
        return {
            "count": self.count,
            "mean": self.mean,
            "stddev": self.stddev,
            "median": self.median,
            "min": self.low,
            "max": self.high,
        }


@dataclass(frozen=True)
class Relative:
    """How many times slower than the fastest target (1.0 for the fastest itself)."""

    ratio: float
    stddev: float | None
    fastest: bool


def relative_speed(means: Sequence[tuple[float, float | None]]) -> list[Relative | None]:
    """For each (mean, stddev), the ratio to the smallest mean and its uncertainty.

    ``None`` where no ratio makes sense (no fastest with a positive mean).
    """
    positive = [mean for mean, _ in means if mean > 0]
    if not positive:
        return [None for _ in means]
    best = min(range(len(means)), key=lambda i: means[i][0] if means[i][0] > 0 else math.inf)
    best_mean, best_sd = means[best]
    out: list[Relative | None] = []
    for i, (mean, sd) in enumerate(means):
        if mean <= 0:
            out.append(None)
            continue
        ratio = mean / best_mean
        spread = None
        if sd is not None and best_sd is not None:
            spread = ratio * math.sqrt((sd / mean) ** 2 + (best_sd / best_mean) ** 2)
        out.append(Relative(ratio, spread, i == best))
    return out


def modified_z_scores(values: Sequence[float]) -> list[float]:
    """0.6745 (x - median) / MAD for each value; all 0 when the MAD is 0."""
    if len(values) < 3:
        return [0.0 for _ in values]
    median = statistics.median(values)
    mad = statistics.median([abs(v - median) for v in values])
    if mad == 0:
        return [0.0 for _ in values]
    return [0.6745 * (v - median) / mad for v in values]


def outliers(values: Sequence[float]) -> list[int]:
    """Indices of the statistical outliers among ``values``."""
    return [i for i, z in enumerate(modified_z_scores(values)) if abs(z) > OUTLIER_THRESHOLD]


@dataclass(frozen=True)
class TTest:
    t: float
    df: float
    p: float  # two-sided

    @property
    def significant(self) -> bool:
        return self.p < SIGNIFICANCE


def welch(a: Sequence[float], b: Sequence[float]) -> TTest | None:
    """Welch's t-test of "a and b have the same mean"; None with fewer than 2 values each."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(b) - statistics.fmean(a)
    if va + vb == 0:  # no spread at all: equal, or certainly different
        if diff == 0:
            return TTest(0.0, math.inf, 1.0)
        return TTest(math.copysign(math.inf, diff), math.inf, 0.0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return TTest(t, df, student_t_two_sided(t, df))


def student_t_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    x = df / (df + t * t)
    return min(1.0, max(0.0, incomplete_beta(df / 2, 0.5, x)))


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), by its continued fraction."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    # The continued fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry
    # I_x(a, b) = 1 - I_{1-x}(b, a) on the other side.
    if x > (a + 1) / (a + b + 2):
        return 1.0 - incomplete_beta(b, a, 1.0 - x)
    return math.exp(log_front) * _beta_fraction(a, b, x) / a


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Lentz's method for the continued fraction of I_x(a, b)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-12:
            break
    return result
