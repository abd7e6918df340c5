#!/usr/bin/env python
"""taskwarden against its peers, side by side, 2 workers each, on this machine.

    python benchmarks/run.py [--quick] [--json PATH] [--only NAMES] [--peers NAMES]

Each (benchmark, peer) cell runs in a fresh interpreter with a time budget;
the runner is a child subreaper, so any process a cell leaves behind is
found, reported and killed. Prints one table and writes JSON (plus a
Markdown copy of the table next to it).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _bench import BENCHMARKS, POOLS, Config  # noqa: E402
from _common import (  # noqa: E402
    CLEANUP_PROBLEMS,
    PEER_DESCRIPTIONS,
    PEERS,
    START_METHODS,
    NotSupported,
    describe,
    is_helper,
    kill_all,
    live_descendants,
    machine_info,
    versions,
)

DEFAULT_JSON = HERE / "results" / "latest.json"

# --------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Row:
    label: str
    bench: str
    key: str
    better: str  # "higher", "lower", or "" (no ratio)
    fallback: str | None = None  # bench whose figure a peer without this one is compared with


ROWS: tuple[Row, ...] = (
    Row("throughput, tasks/s", "throughput", "tasks_per_s", "higher"),
    Row("throughput, timeout=60 per task, tasks/s", "throughput_timeout", "tasks_per_s",
        "higher", fallback="throughput"),
    Row("submit rate (submit calls only), /s", "throughput", "submit_per_s", "higher"),
    Row("round trip p50, us", "latency", "p50_us", "lower"),
    Row("round trip p99, us", "latency", "p99_us", "lower"),
    Row("cold start to first result, ms", "cold_start", "cold_ms", "lower"),
    Row("a program's first cold start (with loky's resource trackers), ms", "cold_start",
        "first_ms", "lower"),
    Row("shutdown after cold start, ms", "cold_start", "shutdown_ms", "lower"),
    Row("timeout 0.2 s: result late by, ms", "kill_timeout", "lateness_ms", "lower"),
    Row("timeout 0.2 s: process gone after deadline, ms", "kill_timeout", "gone_ms", "lower"),
    Row("recovery: next task served after kill, ms", "kill_timeout", "recovery_ms", "lower"),
    Row("cancel running: process gone, ms", "cancel_running", "gone_ms", "lower"),
    # no ratio: pebble marks the future cancelled at once, before its process is gone
    Row("cancel running: future done, ms", "cancel_running", "done_ms", ""),
    Row("supersede (key): old process gone, ms", "supersede", "gone_ms", "lower"),
    Row("supersede (key): new result, ms", "supersede", "new_result_ms", "lower"),
    Row("timer 0.1 s: start late p50, ms", "timer", "p50_ms", "lower"),
    Row("timer 0.1 s: start late p99, ms", "timer", "p99_ms", "lower"),
    Row("timer 0.1 s: start late max, ms", "timer", "max_ms", "lower"),
    Row("timer 0.1 s: missed runs", "timer", "missed", ""),
    Row("timer, both cores busy: start late p50, ms", "timer_loaded", "p50_ms", "lower"),
    Row("timer, both cores busy: start late p99, ms", "timer_loaded", "p99_ms", "lower"),
    Row("timer, both cores busy: start late max, ms", "timer_loaded", "max_ms", "lower"),
    Row("schedule 100k far tasks, s", "heap_100k", "schedule_s", "lower"),
    Row("100k: memory per task, bytes", "heap_100k", "bytes_per_task", "lower"),
    Row("100k: idle supervisor CPU, %", "heap_100k", "idle_cpu_pct", ""),
    Row("100k: shutdown, s", "heap_100k", "shutdown_s", ""),
    Row("schedule 1M far tasks, s", "heap_1m", "schedule_s", "lower"),
    Row("1M: memory per task, bytes", "heap_1m", "bytes_per_task", "lower"),
    Row("1M: idle supervisor CPU, %", "heap_1m", "idle_cpu_pct", ""),
    Row("1M: shutdown, s", "heap_1m", "shutdown_s", ""),
    Row("heartbeat() in a task, us", "heartbeat", "heartbeat_us", ""),
    Row("heartbeat(progress) in a task, us", "heartbeat", "heartbeat_progress_us", ""),
    Row("hang storm, timeout=0.01: 100 tasks, half hang, s", "storm_10ms", "total_s", "lower"),
    Row("hang storm, timeout=0.01: times its floor", "storm_10ms", "x_floor", ""),
    Row("hang storm, timeout=0.05: 100 tasks, half hang, s", "storm_50ms", "total_s", "lower"),
    Row("hang storm, timeout=0.05: times its floor", "storm_50ms", "x_floor", ""),
    Row("replacement ready after a kill, spare used up, ms", "replacement", "ready_ms", "lower"),
    Row("kills per second sustained (every task hangs, timeout=0.01)", "kill_rate",
        "kills_per_s", "higher"),
    # no ratio: a difference of a few MiB is the figure (the target: within 16 MiB of PPE)
    Row("parent memory after 1,000 × 1 MiB results consumed and dropped, MiB",  # noqa: RUF001
        "big_results", "grown_mib", ""),
    Row("1,000 × 1 MiB results: peak while consuming, MiB", "big_results",  # noqa: RUF001
        "peak_mib", ""),
)

RATIO_PEERS = ("ppe", "loky", "pebble", "mp", "sched", "apscheduler")


# ------------------------------------------------------------------- cells


def cell_main(bench: str, peer: str, quick: bool, out: str) -> None:
    """Run one cell in this (fresh) interpreter and write its outcome to ``out``."""
    cfg = Config(quick=quick)
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"twbench-{bench}-") as tmp:
        try:
            res = {"status": "ok", "figures": BENCHMARKS[bench].fn(peer, cfg, tmp)}
        except NotSupported as e:
            res = {"status": "unsupported", "message": str(e)}
        except BaseException as e:
            res = {
                "status": "error",
                "message": error_message(e),
                "traceback": traceback.format_exc(),
            }
        res["elapsed_s"] = round(time.perf_counter() - t0, 2)
        if CLEANUP_PROBLEMS:
            res["cleanup_problems"] = list(CLEANUP_PROBLEMS)
        leftovers = [p for p in live_descendants() if not is_helper(p)]
        if leftovers:
            res["leftover_processes"] = describe(leftovers)
            kill_all(leftovers)
    with open(out, "w") as f:
        json.dump(res, f, default=str)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # do not wait for non-daemon threads of a pool that failed to stop


def error_message(e: BaseException) -> str:
    """``Type: message (at file:line in function)``, located in our own code."""
    msg = f"{type(e).__name__}: {e}".rstrip(": ")
    frames = [f for f in traceback.extract_tb(e.__traceback__) if str(HERE) in f.filename]
    if frames:
        f = frames[-1]
        msg += f" (at {Path(f.filename).name}:{f.lineno} in {f.name})"
    return msg


def become_subreaper() -> bool:
    """Orphans of our cells get re-parented to us, so we can find and reap them."""
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(36, 1, 0, 0, 0)) == 0  # PR_SET_CHILD_SUBREAPER
    return False


def reap_orphans(grace: float = 2.0) -> list[str]:
    """Wait briefly for stray descendants to exit, then kill and reap the rest."""
    end = time.monotonic() + grace
    stray = live_descendants()
    while stray and time.monotonic() < end:
        time.sleep(0.05)
        stray = live_descendants()
    killed = describe(stray)
    if stray:
        kill_all(stray)
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    return killed


def kill_cell(pid: int) -> None:
    import psutil

    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(pid)
        kill_all([*parent.children(recursive=True), parent])


def cell_env(workdir: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    # Bytecode caching as on a normal install, even where the environment turns it
    # off (PYTHONDONTWRITEBYTECODE): otherwise every spawned worker recompiles the
    # modules it imports and cold starts measure the compiler. The cache lives in
    # this run's scratch folder, never next to the sources (see ``warm_cache``).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = os.path.join(workdir, "pycache")
    return env


# Each pool once: what it and its processes import (loky's resource trackers' modules
# among them) is compiled into the run's cache before any cell is timed, as an
# installed package's modules are compiled at install. Without it, the first cell to
# start a kind of process compiles what the others then find cached.
_WARM = """
from _common import make_pool
from _tasks import identity
for peer in {peers!r}:
    pool = make_pool(peer)
    try:
        assert pool.result(pool.submit(identity, 1), 60) == 1
    finally:
        pool.close()
"""


WARM_BUDGET = 120.0  # seconds the warm-up may take


def run_logged(cmd: list[str], log: str, env: dict[str, str], budget: float,
               cwd: str | None = None) -> int | None:
    """Run ``cmd`` in a session of its own, its output into the file ``log`` (not a pipe:
    a process it left behind would hold a pipe open, and the wait would be for that
    process's end); its exit code, or None if it ran past ``budget`` seconds (then it
    is killed with all it started, as on Ctrl-C)."""
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd, start_new_session=True)
        try:
            return proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            kill_cell(proc.pid)
            proc.wait()
            return None
        except BaseException:  # Ctrl-C: leave nothing behind
            kill_cell(proc.pid)
            proc.wait()
            reap_orphans(0.5)
            raise


def warm_cache(workdir: str, peers: list[str]) -> str | None:
    """Run ``_WARM`` once (a fresh interpreter, see ``run_logged``); why it failed, or
    None. What it leaves is reaped here."""
    pools = [p for p in peers if p in POOLS]
    if not pools:
        return None
    log = os.path.join(workdir, "warm-up.log")
    cmd = [sys.executable, "-c", _WARM.format(peers=pools)]
    error: str | None = None
    try:
        code = run_logged(cmd, log, cell_env(workdir), WARM_BUDGET, cwd=workdir)
    except OSError as e:
        error = f"{type(e).__name__}: {e}"
    else:
        if code is None:
            error = f"it exceeded its {WARM_BUDGET:g} s budget (hung?)"
        elif code != 0:
            lines: list[str] = []
            with contextlib.suppress(OSError), open(log, errors="replace") as f:
                lines = [line for line in f.read().splitlines() if line.strip()]
            error = f"exit code {code}: " + (lines[-1] if lines else "no output")
    reap_orphans(0.5)
    if error is not None:
        print(f"  (warming the bytecode cache failed: {error}; cold starts may include "
              "compiling)", flush=True)
    return error


def run_cell(bench: str, peer: str, cfg: Config, workdir: str) -> dict[str, Any]:
    out = os.path.join(workdir, f"{bench}.{peer}.json")
    log = os.path.join(workdir, f"{bench}.{peer}.log")
    # ``-c``: the cell's __main__ has no file, so spawn/loky workers do not re-import
    # this harness as __mp_main__ (that would inflate their start-up times).
    boot = f"import sys; sys.path.insert(0, {str(HERE)!r}); import run; run.main(sys.argv[1:])"
    cmd = [sys.executable, "-c", boot, "--cell", f"{bench}:{peer}", "--cell-out", out]
    if cfg.quick:
        cmd.append("--quick")
    budget = BENCHMARKS[bench].budget_s
    t0 = time.perf_counter()
    code = run_logged(cmd, log, cell_env(workdir), budget)
    res: dict[str, Any]
    if code is None:
        res = {"status": "error", "message": f"cell exceeded its {budget:g} s budget (hung?)"}
    else:
        try:
            with open(out) as f:
                res = json.load(f)
        except (OSError, ValueError):
            res = {"status": "error", "message": f"cell died (exit code {code})"}
    res["wall_s"] = round(time.perf_counter() - t0, 2)
    orphans = reap_orphans()
    if orphans:
        res["orphans_killed"] = orphans
    if res["status"] == "error":
        with contextlib.suppress(OSError), open(log, errors="replace") as f:
            res["log_tail"] = f.read()[-3000:]
    return res


def merge_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell from its rounds: numeric figures are medians over rounds, and each
    round's figures are kept (``rounds``) for paired ratios."""
    if len(runs) == 1:
        return runs[0]
    bad = [r for r in runs if r["status"] != "ok"]
    if bad:
        return {**bad[0], "rounds_failed": f"{len(bad)} of {len(runs)}"}
    merged: dict[str, Any] = {**runs[-1], "wall_s": round(sum(r["wall_s"] for r in runs), 2)}
    figures: dict[str, Any] = {}
    for key, value in runs[0]["figures"].items():
        values = [r["figures"].get(key) for r in runs]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            figures[key] = statistics.median(values)
        else:
            figures[key] = value
    merged["figures"] = figures
    merged["rounds"] = [r["figures"] for r in runs]
    for key in ("cleanup_problems", "leftover_processes", "orphans_killed", "problems"):
        found = [x for r in runs for x in r.get(key, [])]
        if found:
            merged[key] = found
        else:
            merged.pop(key, None)
    return merged


# ------------------------------------------------------------------- table


def _rounds_text() -> str:
    """Which benchmarks run in interleaved rounds, for the legend."""
    by: dict[int, list[str]] = {}
    for name, spec in BENCHMARKS.items():
        if spec.rounds > 1:
            by.setdefault(spec.rounds, []).append(name.replace("_", " "))
    parts = []
    for n, names in sorted(by.items()):
        listed = ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1]
        parts.append(f"{listed} run in {n} interleaved rounds")
    return "; ".join(parts).capitalize()


def fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        a = abs(v)
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 1:
            return f"{v:.2f}"
        return f"{v:.3f}"
    return str(v)


def fmt_ratio(r: float) -> str:
    if r >= 10:
        return f"{r:.1f}"
    if r >= 0.1:
        return f"{r:.2f}"
    return f"{r:.2g}"


def figure(results: dict[str, Any], bench: str, peer: str, key: str) -> float | None:
    cell = results.get(bench, {}).get(peer)
    if not cell or cell.get("status") != "ok":
        return None
    v = cell["figures"].get(key)
    if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
        return float(v)
    return None


def paired_ratio(results: dict[str, Any], bench: str, peer: str, key: str,
                 better: str) -> float | None:
    """The median over rounds of taskwarden's figure against ``peer``'s in the same round."""
    cells = results.get(bench, {})
    tw, other = cells.get("taskwarden"), cells.get(peer)
    if not tw or not other or "rounds" not in tw or "rounds" not in other:
        return None
    ratios = []
    for a, b in zip(tw["rounds"], other["rounds"], strict=False):
        x, y = a.get(key), b.get(key)
        if not isinstance(x, (int, float)) or not isinstance(y, (int, float)) or x <= 0 or y <= 0:
            return None
        ratios.append(x / y if better == "higher" else y / x)
    return statistics.median(ratios) if ratios else None


def build_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows of cells, footnotes."""
    peers = [p for p in PEERS if any(p in results.get(r.bench, {}) for r in ROWS)]
    ratio_peers = [p for p in RATIO_PEERS if p in peers]
    header = ["benchmark", *[PEERS[p] for p in peers], *[f"tw vs {PEERS[p]}" for p in ratio_peers]]
    notes: list[str] = []
    note_ids: dict[str, int] = {}

    def note(text: str) -> str:
        if text not in note_ids:
            notes.append(text)
            note_ids[text] = len(notes)
        return f"[{note_ids[text]}]"

    rows: list[list[str]] = []
    for row in ROWS:
        if row.bench not in results:
            continue
        line = [row.label]
        for p in peers:
            cell = results[row.bench].get(p)
            if cell is None:
                line.append("")
            elif cell["status"] == "ok":
                v = cell["figures"].get(row.key)
                marks = [note(x) for x in cell.get("cleanup_problems", [])]
                if cell.get("problems"):
                    probs = "; ".join(cell["problems"][:3])
                    marks.append(note(f"{PEERS[p]} {row.bench}: {probs}"))
                if cell.get("leftover_processes") or cell.get("orphans_killed"):
                    marks.append(note(f"{PEERS[p]} {row.bench}: left processes behind (killed)"))
                line.append(" ".join([fmt(v), *marks]) if v is not None else "")
            elif cell["status"] == "unsupported":
                line.append("- " + note(cell["message"]))
            else:
                line.append("n/a " + note(f"{PEERS[p]} error: {cell['message']}"))
        tw = figure(results, row.bench, "taskwarden", row.key)
        for p in ratio_peers:
            peer_v = figure(results, row.bench, p, row.key)
            mark = ""
            if peer_v is None and row.fallback:
                peer_v = figure(results, row.fallback, p, row.key)
                mark = "*"
            if not row.better or tw is None or peer_v is None or tw <= 0 or peer_v <= 0:
                line.append("")
                continue
            ratio = paired_ratio(results, row.bench, p, row.key, row.better) if not mark else None
            if ratio is None:
                ratio = tw / peer_v if row.better == "higher" else peer_v / tw
            line.append(f"{fmt_ratio(ratio)}x{mark}")
        rows.append(line)
    return header, rows, notes


def render(results: dict[str, Any], meta: dict[str, Any]) -> tuple[str, str]:
    """(console text, markdown)."""
    header, rows, notes = build_table(results)
    m = meta["machine"]
    title = (f"taskwarden benchmarks - {m['date']} - Python {m['python']} - "
             f"{m['cpu_count']} CPUs ({m['cpu_model']}) - load {m['load_average']} - "
             f"{m['workers']} workers each{' - QUICK' if meta['config']['quick'] else ''}")
    legend = [
        "tw vs X: how many times better taskwarden is than X (throughput: tw/X; times: X/tw);"
        " >1 favours taskwarden. * = X has no per-task timeout: vs its plain throughput.",
        "Figures are medians over repeats; a noisy, shared 2-core machine: read ratios, "
        "not absolutes."
        + ("" if meta["config"]["quick"] else
           f" {_rounds_text()} (peer order rotated): their figures are medians over"
           " rounds, their ratios the medians of the ratios within each round."),
        "Peers: " + "; ".join(f"{PEERS[p]} = {d} [{START_METHODS[p]}]"
                              for p, d in PEER_DESCRIPTIONS.items()) + ".",
    ]
    # rich, if available, for the console
    try:
        import io

        from rich.console import Console
        from rich.table import Table

        table = Table(show_lines=False)
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
        for r in rows:
            table.add_row(*r)
        buf = io.StringIO()
        console = Console(file=buf, width=200,
                          force_terminal=False, color_system=None)
        console.print(table)
        text = title + "\n" + buf.getvalue()
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        text = "\n".join(lines) + "\n"
    text += "\n".join(legend) + "\n"
    if notes:
        text += "\n".join(f"[{i}] {n}" for i, n in enumerate(notes, 1)) + "\n"

    md = [f"**{title}**", "", "| " + " | ".join(header) + " |",
          "|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|"]
    md += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    md += [""] + [f"- {x}" for x in legend]
    md += [f"- [{i}] {n}" for i, n in enumerate(notes, 1)]
    return text, "\n".join(md) + "\n"


# -------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 repeat, shorter runs (~1 min)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON,
                    help=f"where to write the JSON results (default {DEFAULT_JSON})")
    ap.add_argument("--only", default="",
                    help="comma-separated benchmarks: " + ",".join(BENCHMARKS))
    ap.add_argument("--peers", default="", help="comma-separated peers: " + ",".join(PEERS))
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    ap.add_argument("--cell-out", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cell:
        bench, peer = args.cell.split(":", 1)
        cell_main(bench, peer, args.quick, args.cell_out)
        return 0  # not reached
    cfg = Config(quick=args.quick)
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    want_peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    for b in only:
        if b not in BENCHMARKS:
            sys.exit(f"unknown benchmark {b!r}; choose from {', '.join(BENCHMARKS)}")
    for p in want_peers:
        if p not in PEERS:
            sys.exit(f"unknown peer {p!r}; choose from {', '.join(PEERS)}")
    benches = only or [b for b, spec in BENCHMARKS.items() if spec.quick or not cfg.quick]

    become_subreaper()
    meta: dict[str, Any] = {
        "machine": machine_info(),
        "versions": versions(),
        "config": {"quick": cfg.quick, "repeats": cfg.repeats, "tasks": cfg.tasks,
                   "latency_n": cfg.latency_n, "cold_runs": cfg.cold_runs,
                   "kill_repeats": cfg.kill_repeats, "timer_s": cfg.timer_s,
                   "timer_loaded_s": cfg.timer_loaded_s,
                   "idle_s": cfg.idle_s, "benchmarks": benches},
        "start_methods": START_METHODS,
        "environment": {
            "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
            "cells": "fresh interpreter per cell; PYTHONDONTWRITEBYTECODE unset and "
                     "PYTHONPYCACHEPREFIX set to a per-run scratch folder",
        },
    }
    results: dict[str, dict[str, Any]] = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="twbench-") as workdir:
        warm_error = warm_cache(workdir, want_peers or list(POOLS))
        meta["environment"]["warm_cache"] = "ok" if warm_error is None else warm_error
        for b in benches:
            spec = BENCHMARKS[b]
            results[b] = {}
            for p, reason in spec.notes:
                if not want_peers or p in want_peers:
                    results[b][p] = {"status": "unsupported", "message": reason}
            peers = [p for p in spec.peers if not want_peers or p in want_peers]
            rounds = 1 if cfg.quick else spec.rounds
            cells: dict[str, list[dict[str, Any]]] = {p: [] for p in peers}
            for r in range(rounds if peers else 0):
                for p in peers[r % len(peers):] + peers[: r % len(peers)]:
                    label = f"{b} ({r + 1}/{rounds})" if rounds > 1 else b
                    print(f"  {label:<24} {PEERS[p]:<20}", end=" ", flush=True)
                    res = run_cell(b, p, cfg, workdir)
                    cells[p].append(res)
                    status = res["status"]
                    extra = res.get("message", "") if status != "ok" else ""
                    if res.get("leftover_processes") or res.get("orphans_killed"):
                        extra += " [left processes behind: killed]"
                    print(f"{res['wall_s']:6.1f} s  {status} {extra}".rstrip(), flush=True)
            for p, runs in cells.items():
                results[b][p] = merge_rounds(runs)
    meta["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["elapsed_s"] = round(time.perf_counter() - t_start, 1)

    text, md = render(results, meta)
    header, rows, notes = build_table(results)
    payload = {**meta, "results": results,
               "table": {"header": header, "rows": rows, "notes": notes}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    args.json.with_suffix(".md").write_text(md)
    print()
    print(text, end="")
    print(f"total {meta['elapsed_s']:.0f} s; wrote {args.json} and {args.json.with_suffix('.md')}")
    leaks = [f"{b}/{p}" for b, cells in results.items() for p, c in cells.items()
             if c.get("leftover_processes") or c.get("orphans_killed")]
    if leaks:
        print("processes left behind (killed) by: " + ", ".join(leaks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
