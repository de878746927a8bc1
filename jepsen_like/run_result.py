"""What a jepsen_like run is asked to do (`JepsenOptions`) and what it found (`RunResult`),
in both runtimes: the simulator (jepsen_like/runner.py) and node processes
(jepsen_like/real_runtime.py). The report (jepsen_like/report.py) and the
`raftlite jepsen` command (commands/jepsen.py) read results; they live here, apart from
either runtime, so that no runtime imports the other or the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..core.raft import SAFE, UnsafeSwitches
from .history import Event, Verdict, pair_operations, to_json_value
from .nemesis_schedule import NEMESIS_CHOICES
from ..sim.nemesis import NemesisInterval
from .workloads import WORKLOADS

__all__ = ["JepsenOptions", "RunResult"]


@dataclass(frozen=True, slots=True, kw_only=True)
class JepsenOptions:
    workload: str = "register"
    nemesis: tuple[str, ...] = ()
    time_limit_s: float = 10.0
    seed: int = 1
    nodes: int = 3
    concurrency: int = 5
    rate_per_s: float = 100.0
    operation_timeout_ms: float = 3000.0
    nemesis_interval_ms: tuple[float, float] = (300.0, 2000.0)
    nemesis_duration_ms: tuple[float, float] = (200.0, 3000.0)
    checker_time_limit_s: float = 30.0
    quiet_period_s: float = 3.0
    setup_timeout_s: float = 30.0
    unsafe: UnsafeSwitches = SAFE   # test-only deliberate bugs (core/raft.py)
    raft_checker: bool = True       # the raft safety checkers after every step
    # Simulator only: crash a node right after it grants a vote (sim/crash_after_vote.py),
    # the teeth of the vote_before_persist switch.
    crash_after_vote: bool = False

    def validate(self) -> "JepsenOptions":
        if self.workload not in WORKLOADS:
            raise ValueError(f"unknown workload {self.workload!r}; choose from {', '.join(WORKLOADS)}")
        unknown = [kind for kind in self.nemesis if kind not in NEMESIS_CHOICES]
        if unknown:
            raise ValueError(f"unknown nemesis {', '.join(unknown)}")
        if not self.time_limit_s > 0:
            raise ValueError("the time limit must be positive")
        if self.nodes < 1 or self.concurrency < 1 or not self.rate_per_s > 0:
            raise ValueError("nodes, concurrency and rate must be positive")
        return self


@dataclass
class RunResult:
    options: JepsenOptions
    events: list[Event]
    verdict: Verdict | None
    problems: list[str]
    intervals: list[NemesisInterval]
    heal_ms: float | None
    simulated_ms: float
    wall_seconds: float
    faults: dict[str, int] = field(default_factory=dict)
    status: dict[int, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)   # paths, once written
    origin_ms: float = 0.0   # simulation time of the history's time zero (intervals are in simulation time)
    runtime: str = "sim"     # "real": node processes (jepsen_like/real_runtime.py), wall-clock time

    @property
    def valid(self) -> bool | str:
        if self.problems or self.verdict is None or self.verdict.valid is False:
            return False
        return self.verdict.valid

    def counts(self) -> dict[str, int]:
        counts = {"invoke": 0, "ok": 0, "fail": 0, "info": 0}
        for event in self.events:
            if isinstance(event.process, int):
                counts[event.type] += 1
        return counts

    def latencies_ms(self) -> list[tuple[float, float, str, str, Any]]:
        """(invoke time s, latency ms, completion type, f, process) of each completed operation."""
        found = []
        for operation in pair_operations(self.events):
            if not isinstance(operation.process, int) or operation.complete is None:
                continue
            start, end = operation.invoke.time or 0, operation.complete.time or 0
            found.append((start / 1e9, (end - start) / 1e6, operation.type, str(operation.f), operation.process))
        return found

    def summary(self) -> str:
        options, counts = self.options, self.counts()
        nemesis = ",".join(options.nemesis) or "none"
        verdict = self.verdict.valid if self.verdict is not None else "not checked"
        clock = "simulated s" if self.runtime == "sim" else f"s of history on {options.nodes} node processes,"
        lines = [
            f"jepsen {options.workload} seed {options.seed} nemesis {nemesis}: {self.simulated_ms / 1000:.1f} "
            f"{clock} in {self.wall_seconds:.1f} wall s",
            f"operations {counts['invoke']}: ok {counts['ok']}, fail {counts['fail']}, info {counts['info']}; "
            f"faults " + (", ".join(f"{kind}={count}" for kind, count in sorted(self.faults.items())) or "none"),
            f"checker: {verdict}",
        ]
        if self.verdict is not None:
            for anomaly in self.verdict.anomalies[:5]:
                lines.append(f"  ANOMALY {anomaly.kind}: {anomaly.description[:300]}")
        for problem in self.problems[:10]:
            lines.append(f"  PROBLEM {problem[:300]}")
        lines.append(f"valid: {json.dumps(self.valid)}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        options = self.options
        return {
            "valid": self.valid,
            "workload": options.workload,
            "runtime": self.runtime,
            "seed": options.seed,
            "nemesis": list(options.nemesis),
            "time_limit_s": options.time_limit_s,
            "unsafe": list(options.unsafe.enabled()),
            "checker": self.verdict.to_json() if self.verdict is not None else None,
            "problems": list(self.problems),
            "operations": self.counts(),
            "faults": dict(sorted(self.faults.items())),
            "nemesis_intervals": [
                {**interval.to_json(), "start_s": round((interval.start_ms - self.origin_ms) / 1000, 6),
                 "end_s": round((interval.end_ms - self.origin_ms) / 1000, 6)}
                for interval in self.intervals
            ],
            "final_heal_ms": self.heal_ms,
            "simulated_s": round(self.simulated_ms / 1000, 3),
            "wall_s": round(self.wall_seconds, 3),
            "nodes": to_json_value({str(node): status for node, status in self.status.items()}),
        }
