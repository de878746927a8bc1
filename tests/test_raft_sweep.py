"""Randomized raft sweeps under every fault kind and every fault point, with the safety
checkers after every step (the durability checker at every Send) and the liveness check
after the final heal. `make test` runs a few minutes' worth, in chunks that pytest-xdist
spreads over both cores; `make test-slow` runs 2,000 seeds for 3 and for 5 nodes."""

import io

import pytest

from raftlite.sim.fault_points import FAULT_POINTS
from raftlite.sim.nemesis import NEMESIS_KINDS
from raftlite.sim.sweep import sweep


def run_sweep(seeds: range, nodes: int) -> None:
    out = io.StringIO()
    result = sweep(seeds=seeds, nodes=nodes, nemesis=NEMESIS_KINDS, nemesis_text="all", duration_s=10.0,
                   fault_points=FAULT_POINTS, fault_points_text="all", progress=None, out=out)
    assert result.failures == [], out.getvalue()
    assert result.runs == len(seeds)
    # A chunk of at least the standard budget (sim/coverage.py: 50 seeds, 3 nodes, every
    # nemesis) is judged: every named path must have been reached in it.
    if len(seeds) >= 50 and nodes == 3:
        assert result.coverage_judged and result.coverage_missing == [], result.render()


def chunks(nodes: int, first: int, last: int, size: int) -> list[tuple[int, range]]:
    return [(nodes, range(start, min(start + size, last + 1))) for start in range(first, last + 1, size)]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("nodes, seeds", chunks(3, 1, 150, 50) + chunks(5, 1, 75, 25),
                         ids=lambda value: f"{value.start}..{value.stop - 1}" if isinstance(value, range) else f"n{value}")
def test_sweep_finds_no_violation(nodes, seeds):
    run_sweep(seeds, nodes)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("nodes, seeds", chunks(3, 10_001, 12_000, 250) + chunks(5, 10_001, 12_000, 250),
                         ids=lambda value: f"{value.start}..{value.stop - 1}" if isinstance(value, range) else f"n{value}")
def test_two_thousand_seed_sweep(nodes, seeds):
    run_sweep(seeds, nodes)


def test_sweep_failures_print_the_replay_command(monkeypatch):
    import raftlite.sim.sweep as sweep_module
    from raftlite.sim.run import RunSummary

    def failing_run(**kwargs):
        class Closable:
            def close(self):
                pass
        summary = RunSummary(seed=kwargs["seed"], nodes=kwargs["nodes"], simulated_ms=1.0, wall_seconds=1.0, events=1,
                             trace_events=1, trace_hash="0" * 64, faults={}, status={}, violation="election safety: test")
        return summary, Closable()

    monkeypatch.setattr(sweep_module, "run_simulation", failing_run)
    out = io.StringIO()
    result = sweep(seeds=range(7, 8), nodes=3, nemesis=NEMESIS_KINDS, nemesis_text="all", duration_s=10.0,
                   progress=None, out=out)
    assert len(result.failures) == 1
    assert "seed 7 FAILED: election safety: test" in out.getvalue()
    assert "raftlite sim run --actor raft --seed 7 --nodes 3 --nemesis all --duration 10" in out.getvalue()
