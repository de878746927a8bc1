"""Randomized raft sweeps under every fault kind, with the safety checkers after every
step and the liveness check after the final heal. `make test` runs a few minutes'
worth; `make test-slow` runs 1,000 seeds for 3 and for 5 nodes."""

import io

import pytest

from raftlite.sim.nemesis import NEMESIS_KINDS
from raftlite.sim.sweep import sweep


def run_sweep(seeds: range, nodes: int) -> None:
    out = io.StringIO()
    result = sweep(seeds=seeds, nodes=nodes, nemesis=NEMESIS_KINDS, nemesis_text="all", duration_s=10.0,
                   progress=None, out=out)
    assert result.failures == [], out.getvalue()
    assert result.runs == len(seeds)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("nodes, seeds", [(3, range(1, 601)), (5, range(1, 351))])
def test_sweep_finds_no_violation(nodes, seeds):
    run_sweep(seeds, nodes)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("nodes", [3, 5])
def test_thousand_seed_sweep(nodes):
    run_sweep(range(10_001, 11_001), nodes)


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
