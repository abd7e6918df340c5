"""``taskwarden run`` against hyperfine, on the same commands, in one command.

    python benchmarks/cli_vs_hyperfine.py            # about a minute
    python benchmarks/cli_vs_hyperfine.py --quick    # fewer runs
    python benchmarks/cli_vs_hyperfine.py --json out.json

Workloads: ``python3 -c pass``, ``sleep 0.2``, a fixed 0.3 s of CPU work
(``cli_workloads/cpu.py``) and a print-heavy script (``cli_workloads/prints.py``,
200,000 lines). Each is measured three ways, in alternating rounds so that a
drift of the machine touches all three alike:

- *floor*: this script starts the command itself (``subprocess.Popen``, stdout
  to /dev/null, no shell) and times start to exit: what the command costs;
- *hyperfine*: ``hyperfine -N`` (no shell), its default ``--output null``;
- *taskwarden*: ``taskwarden run -c CMD`` with its default ``--output null`` (a
  command without shell syntax runs without a shell there too).

It prints each tool's mean ± sd and median, the ratio of the means
(taskwarden / hyperfine) over all rounds, the same ratio round by round
(its median and range: the spread a single comparison would have), each
tool's overhead over the floor, and the load average at the start and the
end; it writes JSON (``benchmarks/results/cli_vs_hyperfine.json`` unless
``--json``). Without hyperfine installed (Debian: ``apt-get install
hyperfine``) it says so and measures taskwarden against the floor alone.
``python3`` is whatever PATH finds (a pyenv shim, say): the JSON names it.

On a loaded machine the spread between rounds hides a few per cent. So it
also measures taskwarden's own cost run by run: ``run_measured`` (what a
worker does for one run: start, wait, sample the tree, sweep) alternated
with a bare ``Popen`` + ``wait4`` of the same command in this one process,
each pair's ratio taken at once, so that a change of load touches both
sides of a pair alike (``--paired N`` pairs per workload, 0 to skip). With
each pair it takes the CPU this process spent in ``run_measured`` (start,
samples, sweep: ``getrusage``): unlike times, that hardly moves with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = {
    "python3 -c pass": "python3 -c pass",
    "sleep 0.2": "sleep 0.2",
    "cpu 0.3 s": f"python3 {os.path.join(HERE, 'cli_workloads', 'cpu.py')}",
    "print-heavy": f"python3 {os.path.join(HERE, 'cli_workloads', 'prints.py')}",
}
WARMUP = 2


def floor(command: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command.split(), stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return times


def hyperfine(command: str, runs: int, directory: str) -> list[float]:
    out = os.path.join(directory, "hyperfine.json")
    subprocess.run(
        ["hyperfine", "-N", "--style", "none", "--warmup", str(WARMUP), "--runs", str(runs),
         "--export-json", out, command],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    with open(out) as f:
        times: list[float] = json.load(f)["results"][0]["times"]
    return times


def taskwarden(command: str, runs: int, directory: str) -> list[float]:
    out = os.path.join(directory, "taskwarden.json")
    subprocess.run(
        [sys.executable, "-m", "taskwarden", "run", "--warmup", str(WARMUP), "--repeat",
         str(runs), "--export-json", out, "-c", command],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    with open(out) as f:
        report = json.load(f)
    return [
        r["wall_seconds"] for r in report["runs"] if not r["warmup"] and r["state"] == "COMPLETED"
    ]


def paired(command: str, pairs: int, directory: str) -> dict[str, Any]:
    """taskwarden's in-worker measurement against a bare start and wait, run by run."""
    from taskwarden.cli._runner import RunSpec, run_measured

    argv = tuple(command.split())
    spec = RunSpec(
        command=argv, shell=False, cwd=os.getcwd(), stderr_path=os.path.join(directory, "err"),
        stats_path=os.path.join(directory, "stats"), run_id="cli-vs-hyperfine",
    )  # fmt: skip
    bare: list[float] = []
    measured: list[float] = []
    own_cpu: list[float] = []  # this process's CPU over each run_measured call
    for i in range(pairs):
        for side in ("taskwarden", "bare") if i % 2 == 0 else ("bare", "taskwarden"):
            if side == "bare":
                started = time.monotonic()
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
                os.wait4(proc.pid, 0)
                bare.append(time.monotonic() - started)
                proc.returncode = 0  # reaped above
            else:
                before = resource.getrusage(resource.RUSAGE_SELF)
                measured.append(run_measured(spec, lambda progress: None)["wall"])
                after = resource.getrusage(resource.RUSAGE_SELF)
                own_cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    ratios = [m / b for m, b in zip(measured, bare, strict=True)]
    quartiles = statistics.quantiles(ratios, n=4)
    return {
        "pairs": pairs,
        "bare_median": statistics.median(bare),
        "taskwarden_median": statistics.median(measured),
        "ratio_median": statistics.median(ratios),
        "ratio_quartiles": [quartiles[0], quartiles[2]],
        "own_cpu_mean": statistics.fmean(own_cpu),
    }


def runs_for(name: str, quick: bool) -> int:
    full = {"python3 -c pass": 60, "sleep 0.2": 10, "cpu 0.3 s": 10, "print-heavy": 20}[name]
    return max(5, full // 3) if quick else full


def summary(times: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(times),
        "stddev": statistics.stdev(times) if len(times) > 1 else 0.0,
        "median": statistics.median(times),
        "runs": len(times),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, one round")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds (10)")
    parser.add_argument(
        "--paired", type=int, default=30, help="run-by-run pairs per workload (30; 0: skip)"
    )
    parser.add_argument("--json", default=os.path.join(HERE, "results", "cli_vs_hyperfine.json"))
    options = parser.parse_args()
    have_hyperfine = shutil.which("hyperfine") is not None
    if not have_hyperfine:
        print(
            "hyperfine is not installed (Debian: apt-get install hyperfine): "
            "measuring taskwarden against the floor only."
        )
    rounds = 1 if options.quick else options.rounds
    tools = ["floor", *(["hyperfine"] if have_hyperfine else []), "taskwarden"]
    raw: dict[str, dict[str, list[float]]] = {w: {t: [] for t in tools} for w in WORKLOADS}
    # Each round's mean per workload and tool, for the round-by-round ratios.
    by_round: dict[str, dict[str, list[float]]] = {w: {t: [] for t in tools} for w in WORKLOADS}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as directory:
        for round_ in range(rounds):
            for name, command in WORKLOADS.items():
                runs = max(3, runs_for(name, options.quick) // rounds)
                order = tools if round_ % 2 == 0 else list(reversed(tools))
                for tool in order:
                    if tool == "floor":
                        times = floor(command, runs)
                    elif tool == "hyperfine":
                        times = hyperfine(command, runs, directory)
                    else:
                        times = taskwarden(command, runs, directory)
                    raw[name][tool].extend(times)
                    by_round[name][tool].append(statistics.fmean(times))
                print(f"round {round_ + 1}/{rounds}: {name} done", file=sys.stderr)
        paired_results = {
            name: paired(command, options.paired, directory)
            for name, command in WORKLOADS.items()
            if options.paired > 1
        }
    load_end = os.getloadavg()
    results: dict[str, Any] = {}
    header = f"{'workload':<16} " + " ".join(f"{t + ' mean ± sd (median)':>34}" for t in tools)
    if have_hyperfine:
        header += f" {'tw/hf':>6} {'per round: median [min-max]':>28} {'hf overhead':>12}"
    header += f" {'tw overhead':>12}"
    print(f"load average: {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end")
    print(header)
    for name in WORKLOADS:
        stats = {tool: summary(raw[name][tool]) for tool in tools}
        cells = [
            f"{1000 * s['mean']:>8.1f} ± {1000 * s['stddev']:>5.1f} ({1000 * s['median']:>6.1f}) ms"
            for s in stats.values()
        ]
        line = f"{name:<16} " + " ".join(f"{c:>34}" for c in cells)
        entry: dict[str, Any] = {"command": WORKLOADS[name], "tools": stats}
        base = stats["floor"]["mean"]
        if have_hyperfine:
            ratio = stats["taskwarden"]["mean"] / stats["hyperfine"]["mean"]
            per_round = [
                tw / hf
                for tw, hf in zip(
                    by_round[name]["taskwarden"], by_round[name]["hyperfine"], strict=True
                )
            ]
            entry["ratio_taskwarden_to_hyperfine"] = ratio
            entry["ratio_per_round"] = per_round
            entry["ratio_per_round_median"] = statistics.median(per_round)
            entry["hyperfine_overhead_seconds"] = stats["hyperfine"]["mean"] - base
            spread = (
                f"{statistics.median(per_round):.3f} [{min(per_round):.3f}-{max(per_round):.3f}]"
            )
            line += f" {ratio:>6.3f} {spread:>28}"
            line += f" {1000 * (stats['hyperfine']['mean'] - base):>9.1f} ms"
        entry["taskwarden_overhead_seconds"] = stats["taskwarden"]["mean"] - base
        line += f" {1000 * (stats['taskwarden']['mean'] - base):>9.1f} ms"
        results[name] = entry
        print(line)
    if paired_results:
        print(
            "\ntaskwarden's own cost, run by run (run_measured against a bare Popen + wait4,"
            " alternated):"
        )
        for name, entry in paired_results.items():
            low, high = entry["ratio_quartiles"]
            print(
                f"{name:<16} {entry['pairs']} pairs: medians {1000 * entry['bare_median']:.1f} ms"
                f" bare, {1000 * entry['taskwarden_median']:.1f} ms taskwarden;"
                f" paired ratio median {entry['ratio_median']:.3f}"
                f" (quartiles {low:.3f}-{high:.3f});"
                f" taskwarden's own CPU {1000 * entry['own_cpu_mean']:.1f} ms a run (mean)"
            )
            results[name]["paired_with_bare"] = entry
    document = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "load_average_start": list(load_start),
            "load_average_end": list(load_end),
            "python3": os.path.realpath(shutil.which("python3") or "python3"),
            "hyperfine": subprocess.run(
                ["hyperfine", "--version"], capture_output=True, text=True
            ).stdout.strip()
            if have_hyperfine
            else None,
        },
        "rounds": rounds,
        "results": results,
        "raw": raw,
    }
    os.makedirs(os.path.dirname(os.path.abspath(options.json)), exist_ok=True)
    with open(options.json, "w") as f:
        json.dump(document, f, indent=2)
    print(f"wrote {options.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
