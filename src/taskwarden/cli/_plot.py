"""``--plot FILE``: a whisker plot and a histogram of each target's completed runs.

matplotlib is an optional extra (``pip install 'taskwarden[plot]'``), imported
only here and only when ``--plot`` is given; ``_args`` checks for it before any
run starts, so that a missing matplotlib costs no benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from taskwarden.cli._display import time_unit
from taskwarden.cli._records import TargetSummary


def write_plot(path: str, summaries: Sequence[TargetSummary]) -> None:
    """Save the figure to ``path`` (the format follows its suffix: svg, png, pdf)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    shown = [s for s in summaries if s.walls]
    if not shown:
        raise ValueError("no completed runs to plot")
    name, scale = time_unit(min((s.wall for s in shown if s.wall), key=lambda t: t.mean))
    data = [[w * scale for w in s.walls] for s in shown]
    labels = [s.target.label for s in shown]
    figure: Any
    figure, (whiskers, histogram) = plt.subplots(
        1, 2, figsize=(11, max(3.0, 0.6 * len(shown) + 2.0)), layout="constrained"
    )
    # Vertical, labels set apart: boxplot's own label and orientation keywords have been
    # renamed across matplotlib versions.
    whiskers.boxplot(data, showmeans=True)
    whiskers.set_xticks(range(1, len(labels) + 1), labels, rotation=20, ha="right")
    whiskers.set_ylabel(f"wall time [{name}]")
    whiskers.set_title("completed runs")
    # The same bins for every target, so that their bars line up.
    low, high = min(min(v) for v in data), max(max(v) for v in data)
    count = min(40, max(8, max(len(v) for v in data) // 2))
    edges = [low + (high - low) * i / count for i in range(count + 1)] if high > low else count
    for values, label in zip(data, labels, strict=True):
        histogram.hist(values, bins=edges, alpha=0.6, label=label)
    histogram.set_xlabel(f"wall time [{name}]")
    histogram.set_ylabel("runs")
    histogram.set_title("distribution")
    histogram.legend(fontsize="small")
    try:
        figure.savefig(path)
    finally:
        plt.close(figure)
