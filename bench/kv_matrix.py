"""The kvwrite matrix of issue 8: raftlite beside Debian's dqlite-benchmark at 1, 4, 16
and 64 workers (3 nodes on loopback, 32-byte keys, 1 KiB values).

    python bench/kv_matrix.py [--workers 1,4,16,64] [--duration 10] [--runs 2]
                              [--workload kvwrite] [--nodes 3] [--no-dqlite] [--output bench/results]

For every worker count, runs alternate raftlite, dqlite, raftlite, ... (`raftlite
bench --vs-dqlite --runs R`), and the medians go into a markdown table
(OUTPUT/<workload>-matrix.md), every run into JSON (OUTPUT/<workload>-matrix.json) and,
when matplotlib is importable (the optional `bench` extra), a plot of throughput and
p99 latency (OUTPUT/<workload>-matrix.png). Without matplotlib the table is all.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from raftlite.commands.bench import (
    BenchError, BenchSettings, WORKLOADS, Summary, compare, render_comparison, summarize,
)

ROOT = Path(__file__).resolve().parent.parent


def _worker_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of whole numbers, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive worker counts, got {text!r}")
    return counts


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _describe_machine() -> str:
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    try:
        dqlite = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libdqlite0"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or "unknown"
    except OSError:
        dqlite = "unknown"
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return (f"raftlite {commit}, libdqlite0 {dqlite}, Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs, load average at start {load}")


def _cell(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _ratio(ours: float | None, theirs: float | None) -> str:
    return "–" if ours is None or not theirs else f"{ours / theirs:.2f}×"


def _followers_cpu(summary: Summary) -> float | None:
    values = [value for role, value in summary.cpu_us_per_op.items() if role.startswith("follower")]
    return sum(values) if values else None


def _leader_cpu(summary: Summary) -> float | None:
    values = [value for role, value in summary.cpu_us_per_op.items() if role.startswith("leader")]
    return sum(values) if values else None


def markdown_table(rows: list[tuple[int, Summary, Summary | None]], header: str) -> str:
    lines = [header, "",
             "| workers | raftlite ops/s | dqlite ops/s | ratio | raftlite p50 / p99 ms | dqlite p50 / p99 ms "
             "| raftlite errors/s | dqlite errors/s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for workers, ours, theirs in rows:
        lines.append(
            f"| {workers} | {_cell(ours.ops_per_s)} | {_cell(theirs and theirs.ops_per_s)} "
            f"| {_ratio(ours.ops_per_s, theirs and theirs.ops_per_s)} "
            f"| {_cell(ours.latency_ms.get('p50'), 2)} / {_cell(ours.latency_ms.get('p99'), 2)} "
            f"| {_cell(theirs and theirs.latency_ms.get('p50'), 2)} / {_cell(theirs and theirs.latency_ms.get('p99'), 2)} "
            f"| {_cell(ours.errors_per_s, 1)} | {_cell(theirs and theirs.errors_per_s, 1)} |")
    lines += ["", "Cost per successful operation (medians; CPU from /proc/PID/stat over the steady part of the run; "
              "dqlite's leader process also runs its client; peer = bytes sent between cluster processes):", "",
              "| workers | raftlite cpu µs/op leader / followers / client | dqlite cpu µs/op leader+client / followers "
              "| raftlite / dqlite machine cpu µs/op | raftlite / dqlite peer bytes/op | raftlite / dqlite disk bytes/op |",
              "|---:|---:|---:|---:|---:|---:|"]
    for workers, ours, theirs in rows:
        lines.append(
            f"| {workers} | {_cell(_leader_cpu(ours))} / {_cell(_followers_cpu(ours))} / "
            f"{_cell(ours.cpu_us_per_op.get('client'))} "
            f"| {_cell(theirs and _leader_cpu(theirs))} / {_cell(theirs and _followers_cpu(theirs))} "
            f"| {_cell(ours.machine_cpu_us_per_op)} / {_cell(theirs and theirs.machine_cpu_us_per_op)} "
            f"| {_cell(ours.peer_bytes_per_op)} / {_cell(theirs and theirs.peer_bytes_per_op)} "
            f"| {_cell(sum(ours.disk_bytes_per_op.values()) or None)} / "
            f"{_cell(theirs and (sum(theirs.disk_bytes_per_op.values()) or None))} |")
    errors = sorted({kind for _, ours, theirs in rows for summary in (ours, theirs) if summary
                     for kind in summary.errors})
    if errors:
        lines += ["", "Errors by kind (all runs):", ""]
        for workers, ours, theirs in rows:
            for summary in (ours, theirs):
                if summary and summary.errors:
                    kinds = ", ".join(f"{kind}: {count:,}" for kind, count in sorted(summary.errors.items()))
                    lines.append(f"- {summary.system}, {workers} workers: {kinds}")
    return "\n".join(lines) + "\n"


def plot(rows: list[tuple[int, Summary, Summary | None]], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        return False
    workers = [row[0] for row in rows]
    figure, (throughput, latency) = pyplot.subplots(1, 2, figsize=(10, 4))
    for index, system in ((1, "raftlite"), (2, "dqlite")):
        summaries = [row[index] for row in rows]
        if any(summary is None for summary in summaries):
            continue
        throughput.plot(workers, [summary.ops_per_s for summary in summaries], marker="o", label=system)
        latency.plot(workers, [summary.latency_ms.get("p99", float("nan")) for summary in summaries], marker="o",
                     label=system)
    for axes, label in ((throughput, "successful ops/s"), (latency, "p99 latency of successes, ms")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(workers, [str(count) for count in workers])
        axes.set_xlabel("workers")
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
        axes.legend()
    throughput.set_ylim(bottom=0)
    latency.set_yscale("log")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=_worker_counts, default=[1, 4, 16, 64], help="comma list (default 1,4,16,64)")
    parser.add_argument("--duration", type=_positive, default=10, help="seconds per run (default 10)")
    parser.add_argument("--runs", type=_positive, default=2, help="runs per system and worker count (default 2)")
    parser.add_argument("--workload", choices=WORKLOADS, default="kvwrite")
    parser.add_argument("--nodes", type=_positive, default=3)
    parser.add_argument("--no-dqlite", action="store_true", help="raftlite only")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results"), help="directory (default bench/results)")
    args = parser.parse_args()

    output = Path(args.output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"kv_matrix: cannot create {output}: {error.strerror or error}", file=sys.stderr)
        return 2
    machine = _describe_machine()
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    print(f"kv_matrix: {args.workload}, workers {args.workers}, {args.duration} s x {args.runs} run(s) per system; "
          f"{machine}", flush=True)
    rows: list[tuple[int, Summary, Summary | None]] = []
    runs_json = []
    try:
        for workers in args.workers:
            settings = BenchSettings(workload=args.workload, workers=workers, duration_s=args.duration,
                                     nodes=args.nodes, runs=args.runs, vs_dqlite=not args.no_dqlite).validate()
            ours, theirs = compare(settings, report=lambda line: print(line, flush=True))
            ours_summary = summarize(ours)
            theirs_summary = summarize(theirs) if theirs else None
            print(render_comparison(ours_summary, theirs_summary), flush=True)
            rows.append((workers, ours_summary, theirs_summary))
            runs_json.append({"workers": workers, "raftlite": [result.to_json() for result in ours],
                              "dqlite": [result.to_json() for result in theirs]})
    except BenchError as error:
        print(f"kv_matrix: {error}", file=sys.stderr)
        return 2
    header = (f"# {args.workload}: raftlite vs dqlite, {args.nodes} nodes on loopback\n\n"
              f"{started}; {args.duration} s per run, median of {args.runs} alternating run(s) per cell; {machine}.\n"
              f"Command: `python bench/kv_matrix.py --workers {','.join(map(str, args.workers))} "
              f"--duration {args.duration} --runs {args.runs} --workload {args.workload}`. Latencies are those of "
              f"successful operations (as dqlite-benchmark reports them).")
    table = markdown_table(rows, header)
    stem = output / f"{args.workload}-matrix"
    stem.with_suffix(".md").write_text(table)
    stem.with_suffix(".json").write_text(json.dumps({"started": started, "machine": machine, "runs": runs_json},
                                                    indent=2))
    print()
    print(table)
    if plot(rows, stem.with_suffix(".png"), f"{args.workload}, {args.nodes} nodes: raftlite vs dqlite"):
        print(f"written: {stem}.md, {stem}.json, {stem}.png")
    else:
        print(f"written: {stem}.md, {stem}.json (no plot: matplotlib is not installed; "
              f"pip install matplotlib, the optional `bench` extra)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
