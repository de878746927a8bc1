"""`raftlite sim check`: many seeded runs of the raft actor under faults, with the safety
checkers on; any violation prints the seed and the command that replays it."""

import sys
import time
from dataclasses import dataclass

from raftlite.actors.config import Config
from raftlite.sim.run import RunSummary, run_simulation

__all__ = ["SweepResult", "parse_seed_range", "sweep"]


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

    def render(self) -> str:
        return (
            f"{self.runs} seeds, {len(self.failures)} failing, {self.simulated_seconds:,.0f} simulated s "
            f"in {self.wall_seconds:.1f} wall s"
        )


def replay_command(seed: int, nodes: int, nemesis: str, duration_s: float, actor: str = "raft") -> str:
    return f"raftlite sim run --actor {actor} --seed {seed} --nodes {nodes} --nemesis {nemesis} --duration {duration_s:g}"


def sweep(
    *, seeds: range, nodes: int, nemesis: tuple[str, ...], nemesis_text: str, duration_s: float,
    config: Config | None = None, progress=sys.stderr, out=sys.stdout, actor: str = "raft",
) -> SweepResult:
    started = time.perf_counter()
    failures = []
    simulated = 0.0
    last_report = started
    for position, seed in enumerate(seeds, 1):
        summary, sim = run_simulation(
            seed=seed, nodes=nodes, duration_ms=duration_s * 1000.0, nemesis=nemesis, actor=actor, config=config,
        )
        sim.close()
        simulated += summary.simulated_ms / 1000.0
        if not summary.ok:
            failures.append(summary)
            print(f"seed {seed} FAILED: {summary.violation or '; '.join(summary.problems)}", file=out)
            print(f"  replay: {replay_command(seed, nodes, nemesis_text, duration_s, actor)}", file=out)
        now = time.perf_counter()
        if progress is not None and (now - last_report >= 2.0 or position == len(seeds)):
            last_report = now
            elapsed = now - started
            rate = position / elapsed
            eta = (len(seeds) - position) / rate if rate else 0.0
            print(f"  [{position}/{len(seeds)}] {rate:.1f} seeds/s, {len(failures)} failing, eta {eta:.0f} s", file=progress)
    return SweepResult(len(seeds), failures, time.perf_counter() - started, simulated)
