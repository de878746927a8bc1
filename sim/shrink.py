"""`raftlite sim shrink`: a failing seed's faults minimized to the few that still fail.

A failing run records every fault it injected (nemesis events and fault-point firings,
`RunSummary.fault_events`). Delta debugging (Zeller and Hildebrandt's ddmin) replays
subsets of that list (`run_simulation(replay=...)`: nothing is drawn, each event carries
its parameters) and keeps a smaller one whenever its run still breaks a safety check (any
checker; the result names it). It ends 1-minimal: removing any single event left makes
the run pass. The shrunk list is then printed as a scenario script (`nodes ...
config=swarm`, `load`, one `fault` line per event, `heal-at`, `run`, `finish`) and that
script is run once more through `raftlite.sim.scenario`, so what is printed is known to
reproduce the violation with `raftlite sim script FILE`.

Replays that pass are cut short: a subset only counts if it fails by a little after the
original violation (`SETTLE_MS` later), which keeps each try to a fraction of a full run.
"""

import re
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence, TextIO

from ..core.raft import SAFE, UnsafeSwitches
from .nemesis import FaultEvent
from .run import RunSummary, run_simulation, violation_checker
from .scenario import execute_script

__all__ = ["ShrinkResult", "ddmin", "shrink", "shrunk_script"]

# How long after the original violation a replayed subset may take to fail.
SETTLE_MS = 2000.0
_VIOLATION_TIME = re.compile(r"^seed \d+ at ([0-9.]+) ms: ")


def ddmin(items: Sequence, fails: Callable[[list], bool], on_round: Callable[[int], None] | None = None) -> list:
    """The classic ddmin: a 1-minimal sublist of `items` (order kept) for which `fails`
    holds, assuming it holds for `items`. `on_round(len(current))` after each round."""
    current = list(items)
    if current and fails([]):
        return []
    granularity = 2
    while len(current) >= 2:
        size = len(current)
        bounds = [size * part // granularity for part in range(granularity + 1)]
        chunks = [current[bounds[part]:bounds[part + 1]] for part in range(granularity)]
        chunks = [chunk for chunk in chunks if chunk]
        reduced = False
        for chunk in chunks:
            if fails(chunk):
                current, granularity, reduced = chunk, 2, True
                break
        if not reduced:
            for index in range(len(chunks)):
                complement = [item for other, chunk in enumerate(chunks) if other != index for item in chunk]
                if fails(complement):
                    current, granularity, reduced = complement, max(granularity - 1, 2), True
                    break
        if on_round is not None:
            on_round(len(current))
        if not reduced:
            if granularity >= len(current):
                break
            granularity = min(len(current), granularity * 2)
    return current


@dataclass
class ShrinkResult:
    original: RunSummary
    events: tuple[FaultEvent, ...]     # the shrunk fault list
    violation: str | None              # of the shrunk run
    runs: int                          # simulations run (the original included)
    wall_seconds: float
    script: str                        # the scenario script, outputs filled in
    reproduced: bool                   # the script, run on its own, hits a violation

    def render(self) -> str:
        if self.original.violation is None:
            return f"seed {self.original.seed} does not break a safety check: nothing to shrink"
        return (
            f"shrunk {len(self.original.fault_events)} fault events to {len(self.events)} in {self.runs} runs "
            f"({self.wall_seconds:.1f} wall s); still failing: {violation_checker(self.violation or '')}"
            + ("" if self.reproduced else "; WARNING: the script did not reproduce it")
        )


def _violation_time(violation: str) -> float | None:
    match = _VIOLATION_TIME.match(violation)
    return float(match.group(1)) if match else None


def shrunk_script(*, seed: int, nodes: int, actor: str, duration_ms: float, unsafe: UnsafeSwitches,
                  checkers: str, events: Sequence[FaultEvent], header: Sequence[str] = (),
                  proposal_interval_ms: float = 20.0) -> str:
    """A scenario script that builds, loads, faults and judges the run as `run_simulation`
    with `replay=events` does."""
    options = [f"actor={actor}", f"seed={seed}", "config=swarm"]
    if unsafe != SAFE:
        options.append("unsafe=" + ",".join(unsafe.enabled()))
    if checkers != "all":
        options.append(f"checkers={checkers}")
    lines = [f"# {line}" for line in header]
    lines.append(f"nodes {nodes} " + " ".join(options))
    lines.append("")
    if actor in ("raft", "database"):
        lines += [f"load interval-ms={proposal_interval_ms:g} until-ms={duration_ms:g}", ""]
    for event in events:
        lines += [event.script_line(), ""]
    lines += [f"heal-at {duration_ms:g}", "", f"run {duration_ms:g}", "", "finish", ""]
    return "\n".join(lines)


def shrink(*, seed: int, nodes: int, duration_ms: float, nemesis: tuple[str, ...] = (),
           fault_points: tuple[str, ...] = (), unsafe: UnsafeSwitches = SAFE, actor: str = "raft",
           checkers: str = "all", command: str = "", progress: TextIO | None = sys.stderr) -> ShrinkResult:
    started = time.perf_counter()
    common = dict(seed=seed, nodes=nodes, duration_ms=duration_ms, nemesis=nemesis, actor=actor, unsafe=unsafe,
                  checkers=checkers)

    def say(text: str) -> None:
        if progress is not None:
            print(text, file=progress, flush=True)

    original, sim = run_simulation(fault_points=fault_points, **common)
    sim.close()
    runs = 1
    if original.violation is None:
        return ShrinkResult(original, (), None, runs, time.perf_counter() - started, "", False)
    events = original.fault_events
    say(f"seed {seed} fails with {len(events)} fault events: {original.violation}")
    violation_at = _violation_time(original.violation)
    stop_at = violation_at + SETTLE_MS if violation_at is not None else None
    outcomes: dict[tuple[int, ...], str | None] = {}
    positions = {id(event): position for position, event in enumerate(events)}

    def fails(subset: list) -> bool:
        nonlocal runs
        key = tuple(positions[id(event)] for event in subset)
        if key not in outcomes:
            summary, replayed = run_simulation(replay=subset, stop_at_ms=stop_at, **common)
            replayed.close()
            runs += 1
            outcomes[key] = summary.violation
        return outcomes[key] is not None

    rounds = 0

    def on_round(left: int) -> None:
        nonlocal rounds
        rounds += 1
        say(f"  round {rounds}: {left} events left, {runs} runs, {time.perf_counter() - started:.1f} s")

    shrunk = ddmin(events, fails, on_round) if fails(list(events)) else list(events)
    violation = outcomes.get(tuple(positions[id(event)] for event in shrunk)) or original.violation
    header = [
        f"{command}" if command else f"raftlite sim shrink --seed {seed}",
        f"{len(events)} fault events shrunk to {len(shrunk)} ({runs} runs); the run still fails:",
        f"{violation}",
        "Run it with: raftlite sim script FILE",
    ]
    script = shrunk_script(seed=seed, nodes=nodes, actor=actor, duration_ms=duration_ms, unsafe=unsafe,
                           checkers=checkers, events=shrunk, header=header)
    output, runner, errors = execute_script(script)
    if runner.sim is not None:
        runner.sim.close()
    reproduced = runner.violation is not None and not errors
    return ShrinkResult(original, tuple(shrunk), violation, runs, time.perf_counter() - started, output, reproduced)
