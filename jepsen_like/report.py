"""The HTML report of a jepsen_like run: verdict, plots shaded by nemesis intervals, timeline.

Theory of operation
-------------------
`render_report(result)` returns one self-contained HTML page (no external files):

- the verdict (valid / invalid / unknown), the anomalies the checker named, the other
  problems (invariants, halts, convergence, liveness);
- latency of every completed operation against the time it was invoked, and throughput
  (completions per time bin, by outcome), each with the nemesis intervals shaded and
  the final heal marked, as Jepsen's latency-raw and rate graphs are;
- a per-process timeline: one row per process, one bar per operation from invocation
  to completion, coloured by outcome (info bars run to the end: their effect may land
  at any later moment);
- the nemesis intervals as a table.

Plots are drawn with matplotlib (an optional extra) as PNG images embedded in base64.
Without matplotlib the same data is shown as plain HTML tables (throughput per bin with
the faults active in it, latency percentiles per function, a per-process summary), so
the report never depends on it.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

from .run_result import RunResult

__all__ = ["matplotlib_available", "render_report"]

OUTCOME_COLOURS = {"ok": "#2a9d4b", "fail": "#d1495b", "info": "#f0a202"}
NEMESIS_COLOURS = {
    "partition": "#7b9acc", "leader-partition": "#4a6fa5", "clog": "#9bc1bc", "noise": "#c7b8ea",
    "crash": "#e07a5f", "kill": "#b5563f", "pause": "#f2cc8f", "clock": "#81b29a", "disk": "#a8a29e",
    "membership": "#e5989b", "transfer": "#6d6875",
}


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def render_report(result: "RunResult", *, plots: bool | None = None) -> str:
    """The report page. `plots=None` draws them when matplotlib is installed."""
    if plots is None:
        plots = matplotlib_available()
    options = result.options
    operations = result.latencies_ms()
    counts = result.counts()
    valid = result.valid
    verdict_class = {True: "valid", False: "invalid"}.get(valid, "unknown")
    parts = [
        "<!DOCTYPE html>",
        "<html><head><meta charset='utf-8'>",
        f"<title>raftlite jepsen: {_e(options.workload)} seed {options.seed}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
        ".valid{color:#2a9d4b}.invalid{color:#d1495b}.unknown{color:#f0a202}"
        "pre{background:#f6f6f6;padding:1em;overflow-x:auto}</style></head><body>",
        f"<h1>raftlite jepsen: {_e(options.workload)}</h1>",
        f"<p class='{verdict_class}'><b>valid: {_e(json.dumps(valid))}</b></p>",
        "<table>",
        _row("runtime", "sim (deterministic)" if _simulated(result) else "real (node processes)"),
        _row("seed", options.seed),
        _row("nemesis", ", ".join(options.nemesis) or "none"),
        _row("time limit", f"{options.time_limit_s:g} {_seconds(result)}"),
        _row("nodes / processes", f"{options.nodes} / {options.concurrency}"),
        _row("unsafe switches", ", ".join(options.unsafe.enabled()) or "none (the safe build)"),
        _row("operations", f"{counts['invoke']} (ok {counts['ok']}, fail {counts['fail']}, info {counts['info']})"),
        _row("faults", ", ".join(f"{kind} {count}" for kind, count in sorted(result.faults.items())) or "none"),
        _row("final heal", f"{result.heal_ms / 1000:.2f} s" if result.heal_ms is not None else "-"),
        _row("simulated / wall" if _simulated(result) else "run time / wall",
             f"{result.simulated_ms / 1000:.1f} s / {result.wall_seconds:.1f} s"),
        "</table>",
    ]
    parts.append("<h2>Checker</h2>")
    if result.verdict is None:
        parts.append("<p>The history was not checked.</p>")
    else:
        parts.append(f"<p>checker valid: <b>{_e(json.dumps(result.verdict.valid))}</b></p>")
        if result.verdict.anomalies:
            parts.append("<table><tr><th>anomaly</th><th>description</th></tr>")
            for anomaly in result.verdict.anomalies[:50]:
                parts.append(f"<tr><td>{_e(anomaly.kind)}</td><td>{_e(anomaly.description)}</td></tr>")
            parts.append("</table>")
    if result.problems:
        parts.append("<h2>Problems</h2><ul>")
        parts.extend(f"<li>{_e(problem)}</li>" for problem in result.problems)
        parts.append("</ul>")
    if plots:
        parts.append("<h2>Latency</h2>")
        parts.append(_image(_latency_figure(result, operations)))
        parts.append("<h2>Throughput</h2>")
        parts.append(_image(_throughput_figure(result, operations)))
        parts.append("<h2>Processes</h2>")
        parts.append(_image(_timeline_figure(result, operations)))
    else:
        parts.append("<p><i>matplotlib is not installed: tables instead of plots "
                     "(pip install matplotlib, or raftlite's plots extra).</i></p>")
        parts.append("<h2>Throughput</h2>")
        parts.append(_throughput_table(result, operations))
        parts.append("<h2>Latency</h2>")
        parts.append(_latency_table(operations))
        parts.append("<h2>Processes</h2>")
        parts.append(_process_table(operations))
    parts.append("<h2>Nemesis</h2>")
    parts.append(_nemesis_table(result))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# -- helpers ----------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(str(value))


def _row(name: str, value: Any) -> str:
    return f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>"


def _bin_seconds(result: "RunResult") -> float:
    span = max(1.0, result.options.time_limit_s)
    return 1.0 if span <= 60 else span / 60


def _end_seconds(result: "RunResult", operations: list) -> float:
    latest = max((start + latency / 1000 for start, latency, *_ in operations), default=0.0)
    return max(latest, result.options.time_limit_s)


def _nemesis_table(result: "RunResult") -> str:
    if not result.intervals:
        return "<p>No faults were injected.</p>"
    rows = ["<table><tr><th>kind</th><th>start (s)</th><th>end (s)</th><th>what</th></tr>"]
    origin = _origin_ms(result)
    for interval in result.intervals:
        rows.append(f"<tr><td>{_e(interval.kind)}</td><td>{(interval.start_ms - origin) / 1000:.2f}</td>"
                    f"<td>{(interval.end_ms - origin) / 1000:.2f}</td><td>{_e(interval.description)}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _origin_ms(result: "RunResult") -> float:
    """Intervals are in simulation time; the history's times start with the workload."""
    return result.origin_ms


def _throughput_table(result: "RunResult", operations: list) -> str:
    width = _bin_seconds(result)
    end = _end_seconds(result, operations)
    bins = int(end // width) + 1
    table = [[0, 0, 0] for _ in range(bins)]
    for start, latency, kind, *_ in operations:
        index = min(bins - 1, int((start + latency / 1000) // width))
        table[index][("ok", "fail", "info").index(kind)] += 1
    origin = _origin_ms(result)
    rows = ["<table><tr><th>from (s)</th><th>ok/s</th><th>fail/s</th><th>info/s</th><th>faults active</th></tr>"]
    for index, (ok, fail, info) in enumerate(table):
        low, high = index * width, (index + 1) * width
        active = sorted({interval.kind for interval in result.intervals
                         if (interval.start_ms - origin) / 1000 < high
                         and max(interval.end_ms, interval.start_ms + 1) / 1000 - origin / 1000 > low})
        rows.append(f"<tr><td>{low:.1f}</td><td>{ok / width:.1f}</td><td>{fail / width:.1f}</td>"
                    f"<td>{info / width:.1f}</td><td>{_e(', '.join(active))}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _latency_table(operations: list) -> str:
    by_function: dict[str, list[float]] = {}
    for _, latency, kind, f, _ in operations:
        if kind == "ok":
            by_function.setdefault(f, []).append(latency)
    if not by_function:
        return "<p>No operation completed ok.</p>"
    rows = ["<table><tr><th>f</th><th>ok ops</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>max ms</th></tr>"]
    for f, values in sorted(by_function.items()):
        rows.append(f"<tr><td>{_e(f)}</td><td>{len(values)}</td><td>{_percentile(values, 0.5):.2f}</td>"
                    f"<td>{_percentile(values, 0.95):.2f}</td><td>{_percentile(values, 0.99):.2f}</td>"
                    f"<td>{max(values):.2f}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _process_table(operations: list) -> str:
    processes: dict[Any, list] = {}
    for start, latency, kind, f, process in operations:
        entry = processes.setdefault(process, [0, 0, 0, start, start])
        entry[("ok", "fail", "info").index(kind)] += 1
        entry[3] = min(entry[3], start)
        entry[4] = max(entry[4], start + latency / 1000)
    rows = ["<table><tr><th>process</th><th>ok</th><th>fail</th><th>info</th><th>first (s)</th><th>last (s)</th></tr>"]
    for process in sorted(processes, key=repr):
        ok, fail, info, first, last = processes[process]
        rows.append(f"<tr><td>{_e(process)}</td><td>{ok}</td><td>{fail}</td><td>{info}</td>"
                    f"<td>{first:.2f}</td><td>{last:.2f}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


# -- plots ------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _shade(axes, result: "RunResult") -> None:
    origin = _origin_ms(result)
    seen = set()
    for interval in result.intervals:
        start = (interval.start_ms - origin) / 1000
        end = (interval.end_ms - origin) / 1000
        colour = NEMESIS_COLOURS.get(interval.kind, "#999999")
        label = interval.kind if interval.kind not in seen else None
        seen.add(interval.kind)
        if end > start:
            axes.axvspan(start, end, color=colour, alpha=0.25, label=label, linewidth=0)
        else:
            axes.axvline(start, color=colour, alpha=0.8, linewidth=1, label=label)
    if result.heal_ms is not None:
        axes.axvline(result.heal_ms / 1000, color="black", linestyle="--", linewidth=1, label="final heal")


def _image(figure) -> str:
    pyplot = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    pyplot.close(figure)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<img alt='plot' src='data:image/png;base64,{encoded}'>"


def _simulated(result: "RunResult") -> bool:
    return getattr(result, "runtime", "sim") == "sim"


def _seconds(result: "RunResult") -> str:
    """The unit of the run's clock: the simulator's time, or the wall clock."""
    return "simulated s" if _simulated(result) else "s"


def _latency_figure(result: "RunResult", operations: list):
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(11, 4))
    _shade(axes, result)
    for kind, colour in OUTCOME_COLOURS.items():
        points = [(start, max(latency, 0.01)) for start, latency, k, *_ in operations if k == kind]
        if points:
            axes.scatter([p[0] for p in points], [p[1] for p in points], s=6, color=colour, label=kind, alpha=0.7)
    axes.set_yscale("log")
    return _over_time(figure, axes, result, "latency (ms)")


def _throughput_figure(result: "RunResult", operations: list):
    pyplot = _pyplot()
    width = _bin_seconds(result)
    end = _end_seconds(result, operations)
    bins = int(end // width) + 1
    figure, axes = pyplot.subplots(figsize=(11, 3.5))
    _shade(axes, result)
    for kind, colour in OUTCOME_COLOURS.items():
        counts = [0] * bins
        for start, latency, k, *_ in operations:
            if k == kind:
                counts[min(bins - 1, int((start + latency / 1000) // width))] += 1
        axes.plot([(index + 0.5) * width for index in range(bins)], [count / width for count in counts],
                  color=colour, label=kind, marker=".")
    return _over_time(figure, axes, result, "completions per s")


def _over_time(figure, axes, result: "RunResult", ylabel: str):
    """Label a figure drawn against the run's clock, with the outcomes' legend."""
    axes.set_xlabel(f"time ({_seconds(result)})")
    axes.set_ylabel(ylabel)
    axes.legend(loc="upper right", fontsize="small", ncol=4)
    return figure


def _timeline_figure(result: "RunResult", operations: list):
    pyplot = _pyplot()
    processes = sorted({process for *_, process in operations}, key=repr)
    row = {process: index for index, process in enumerate(processes)}
    end = _end_seconds(result, operations)
    figure, axes = pyplot.subplots(figsize=(11, max(2.5, 0.25 * len(processes) + 1)))
    _shade(axes, result)
    for kind, colour in OUTCOME_COLOURS.items():
        segments = [(start, (end - start) if kind == "info" else max(latency / 1000, 0.002))
                    for start, latency, k, f, process in operations if k == kind]
        rows = [row[process] for start, latency, k, f, process in operations if k == kind]
        for (start, length), y in zip(segments, rows):
            axes.broken_barh([(start, length)], (y - 0.35, 0.7), color=colour, alpha=0.35 if kind == "info" else 0.9)
    axes.set_yticks(range(len(processes)))
    axes.set_yticklabels([str(process) for process in processes], fontsize="small")
    axes.set_ylabel("process")
    axes.set_xlabel(f"time ({_seconds(result)})")
    axes.set_xlim(0, end)
    return figure
