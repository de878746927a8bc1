"""`raftlite sim check`: many seeded runs of the raft actor under faults, with the safety
checkers on; any violation prints the seed, the command that replays it and the one that
shrinks it. The result sums how often each fault point fired over the sweep.

Seeds are independent, so a sweep spreads over processes: `jobs` local processes
(concurrent.futures), or a Dask cluster (`dask="local"` starts a distributed.LocalCluster;
an address joins a running scheduler, which dask-jobqueue or dask-kubernetes can feed
from SLURM, PBS or Kubernetes). Each worker runs one seed at a time in one thread: the
simulator steers SQLite's PRNG and VFS, which are process-wide. A run depends only on
its seed and the code, so every result is the same whatever the spread; only the order
in which seeds finish differs. `jsonl` receives one line per seed as it finishes, without
wall-clock figures, so two sweeps' files are identical once sorted by seed.
"""

import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Iterator, TextIO

from ..actors.config import Config
from ..core.raft import SAFE, UnsafeSwitches
from .coverage import coverage_report, judged, merge_counts
from .fault_points import FAULT_POINTS
from .liveness import recovery_stats
from .nemesis import NEMESIS_KINDS
from .run import RunSummary, run_simulation

__all__ = ["SweepResult", "SweepSettings", "check_seed", "parse_seed_range", "seed_record", "sweep"]


def parse_seed_range(text: str) -> range:
    """'A..B' (inclusive) or a single seed."""
    try:
        if ".." in text:
            first, last = (int(part) for part in text.split("..", 1))
        else:
            first = last = int(text)
    except ValueError:
        raise ValueError(f"seeds must look like 1..100 or 7, got {text!r}") from None
    if first < 0 or last < first:
        raise ValueError(f"empty or negative seed range {text!r}")
    return range(first, last + 1)


@dataclass
class SweepResult:
    runs: int
    failures: list[RunSummary]
    wall_seconds: float
    simulated_seconds: float
    # Fault point -> [seeds that enabled it, firings over the sweep].
    fault_points: dict[str, list[int]] = field(default_factory=dict)
    # Named path -> times reached over the sweep (sim/coverage.py), and whether the sweep
    # spent the standard budget (then a path never reached fails it).
    coverage: dict[str, int] = field(default_factory=dict)
    actor: str = "raft"
    coverage_judged: bool = False
    # Per seed that recovered: simulated ms from the final heal (or the liveness mode's
    # core heal) to the reply of the first committed write.
    recovery_ms: list[float] = field(default_factory=list)
    liveness: bool = False

    @property
    def coverage_missing(self) -> list[str]:
        """Paths the standard budget must reach but this sweep never did (empty when the
        sweep is below the standard budget: it is not judged then)."""
        if not self.coverage or not self.coverage_judged:
            return []
        return coverage_report(self.coverage, self.actor, True)[1]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.coverage_missing

    def render(self) -> str:
        lines = [
            f"{self.runs} seeds, {len(self.failures)} failing, {self.simulated_seconds:,.0f} simulated s "
            f"in {self.wall_seconds:.1f} wall s"
        ]
        if self.recovery_ms or self.liveness:
            mode = "liveness mode (a quorum core healed)" if self.liveness else "after the final heal"
            lines.append(f"recovery, {mode}: first write committed {recovery_stats(self.recovery_ms)}")
        if self.coverage:
            lines.extend(coverage_report(self.coverage, self.actor, self.coverage_judged)[0])
        if self.fault_points:
            lines.append("fault points: " + ", ".join(
                f"{name} fired {fired} times (enabled in {enabled} seeds)"
                for name, (enabled, fired) in self.fault_points.items()))
        return "\n".join(lines)


def replay_command(seed: int, nodes: int, nemesis: str, duration_s: float, actor: str = "raft", *,
                   fault_points: str = "none", unsafe: UnsafeSwitches = SAFE, checkers: str = "all",
                   subcommand: str = "run", liveness: bool = False) -> str:
    """The command line that runs this seed again exactly (or shrinks it)."""
    words = [f"raftlite sim {subcommand} --actor {actor} --seed {seed} --nodes {nodes} --nemesis {nemesis} "
             f"--duration {duration_s:g}"]
    if fault_points not in ("", "none"):
        words.append(f"--fault-points {fault_points}")
    words.extend(f"--unsafe {name}" for name in unsafe.enabled())
    if checkers != "all":
        words.append(f"--checkers {checkers}")
    if liveness:
        words.append("--liveness")
    return " ".join(words)


@dataclass(frozen=True)
class SweepSettings:
    """Everything one seed's run needs besides the seed (sent to worker processes)."""

    nodes: int
    nemesis: tuple[str, ...]
    duration_s: float
    config: Config | None = None
    actor: str = "raft"
    fault_points: tuple[str, ...] = ()
    unsafe: UnsafeSwitches = SAFE
    checkers: str = "all"
    liveness: bool = False


def check_seed(settings: SweepSettings, seed: int) -> RunSummary:
    """One seed of a sweep (a module-level function, so worker processes can run it)."""
    summary, sim = run_simulation(
        seed=seed, nodes=settings.nodes, duration_ms=settings.duration_s * 1000.0, nemesis=settings.nemesis,
        actor=settings.actor, config=settings.config, fault_points=settings.fault_points, unsafe=settings.unsafe,
        checkers=settings.checkers, liveness=settings.liveness,
    )
    sim.close()
    return summary


def seed_record(summary: RunSummary) -> dict[str, Any]:
    """A seed's result as one JSON object: what the run determined, no wall-clock figures."""
    return {
        "seed": summary.seed, "ok": summary.ok, "violation": summary.violation, "problems": list(summary.problems),
        "trace_hash": summary.trace_hash, "simulated_ms": summary.simulated_ms, "events": summary.events,
        "recovery_ms": summary.recovery_ms, "acknowledged": summary.acknowledged, "faults": summary.faults,
        "fault_points": {name: point["fired"] for name, point in summary.fault_points.items()},
        "coverage": summary.coverage,
    }


def _local_results(settings: SweepSettings, seeds: range, jobs: int) -> Iterator[RunSummary]:
    if jobs == 1:
        for seed in seeds:
            yield check_seed(settings, seed)
        return
    # spawn: a fresh interpreter per worker, so no SQLite or simulator state is inherited.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(check_seed, settings, seed) for seed in seeds]
        for future in as_completed(futures):
            yield future.result()


def _dask_results(settings: SweepSettings, seeds: range, jobs: int, address: str) -> Iterator[RunSummary]:
    # Dask is an optional extra (raftlite[sweeps]); the command line checks it is there.
    import distributed

    cluster = None
    if address == "local":
        cluster = distributed.LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
        client = distributed.Client(cluster)
    else:
        client = distributed.Client(address)
    try:
        futures = client.map(check_seed, [settings] * len(seeds), list(seeds), pure=False)
        for future in distributed.as_completed(futures):
            yield future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def sweep(
    *, seeds: range, nodes: int, nemesis: tuple[str, ...], nemesis_text: str, duration_s: float,
    config: Config | None = None, progress=sys.stderr, out=sys.stdout, actor: str = "raft",
    fault_points: tuple[str, ...] = (), fault_points_text: str = "none", unsafe: UnsafeSwitches = SAFE,
    checkers: str = "all", liveness: bool = False, jobs: int = 1, dask: str | None = None,
    jsonl: TextIO | None = None,
) -> SweepResult:
    """Run every seed (`jobs` processes, or on Dask) and sum up; failures are printed as
    they come, and listed in seed order in the result."""
    started = time.perf_counter()
    failures = []
    simulated = 0.0
    last_report = started
    point_totals: dict[str, list[int]] = {}
    coverage: dict[str, int] = {}
    recoveries: list[tuple[int, float]] = []
    settings = SweepSettings(nodes=nodes, nemesis=nemesis, duration_s=duration_s, config=config, actor=actor,
                             fault_points=fault_points, unsafe=unsafe, checkers=checkers, liveness=liveness)
    results = _local_results(settings, seeds, jobs) if dask is None else _dask_results(settings, seeds, jobs, dask)
    for position, summary in enumerate(results, 1):
        seed = summary.seed
        if jsonl is not None:
            jsonl.write(json.dumps(seed_record(summary), sort_keys=True) + "\n")
            jsonl.flush()
        merge_counts(coverage, summary.coverage)
        if summary.recovery_ms is not None:
            recoveries.append((seed, summary.recovery_ms))
        simulated += summary.simulated_ms / 1000.0
        for name, point in summary.fault_points.items():
            totals = point_totals.setdefault(name, [0, 0])
            totals[0] += 1
            totals[1] += point["fired"]
        if not summary.ok:
            failures.append(summary)
            options = dict(fault_points=fault_points_text, unsafe=unsafe, checkers=checkers)
            print(f"seed {seed} FAILED: {summary.violation or '; '.join(summary.problems)}", file=out)
            print(f"  replay: {replay_command(seed, nodes, nemesis_text, duration_s, actor, liveness=liveness, **options)}",
                  file=out)
            if summary.violation:
                print(f"  shrink: {replay_command(seed, nodes, nemesis_text, duration_s, actor, subcommand='shrink', **options)}",
                      file=out)
        now = time.perf_counter()
        if progress is not None and (now - last_report >= 2.0 or position == len(seeds)):
            last_report = now
            elapsed = now - started
            rate = position / elapsed
            eta = (len(seeds) - position) / rate if rate else 0.0
            print(f"  [{position}/{len(seeds)}] {rate:.1f} seeds/s, {len(failures)} failing, eta {eta:.0f} s", file=progress)
    failures.sort(key=lambda summary: summary.seed)
    ordered = {name: point_totals[name] for name in FAULT_POINTS if name in point_totals}
    all_nemeses = set(NEMESIS_KINDS) <= set(nemesis)
    return SweepResult(len(seeds), failures, time.perf_counter() - started, simulated, ordered, coverage=coverage,
                       actor=actor, coverage_judged=judged(actor, seeds, nodes, all_nemeses),
                       recovery_ms=[ms for _, ms in sorted(recoveries)], liveness=liveness)
