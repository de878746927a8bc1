"""Liveness mode (TigerBeetle's VOPR): a quorum core healed at the end of chaos must
commit a fresh write within the budget, and the recovery time is measured at the very
event that delivers the probe's reply, not on a polling step."""

import math

import pytest

import raftlite.sim.liveness as liveness
from raftlite.cli import main
from raftlite.sim.nemesis import NEMESIS_KINDS
from raftlite.sim.run import run_simulation
from raftlite.sim.simulation import NodeState

SEEDS = range(1, 9)


def _liveness_run(seed: int, **options):
    summary, sim = run_simulation(seed=seed, nodes=3, duration_ms=8000.0, nemesis=NEMESIS_KINDS, actor="raft",
                                  liveness=True, **options)
    sim.close()
    return summary, sim


@pytest.mark.timeout(200)
def test_a_majority_core_commits_and_the_recovery_time_is_measured_exactly():
    times = []
    for seed in SEEDS:
        summary, sim = _liveness_run(seed)
        assert summary.ok, (seed, summary.violation, summary.problems)
        voters = 3   # the core is a majority of the voters in play (founders, or more after a change)
        assert summary.liveness_core is not None and len(summary.liveness_core) >= voters // 2 + 1
        assert summary.recovery_ms is not None and summary.recovery_ms <= 10 * 2 * sim.config.election_timeout_ms
        times.append(summary.recovery_ms)
    # The old loop stepped 10 ms at a time: every time was a multiple of 10 ms. Measured at
    # the reply's delivery, times carry the network's and the disk's own fractions.
    assert not all(math.isclose(t % 10.0, 0.0, abs_tol=1e-9) or math.isclose(t % 10.0, 10.0, abs_tol=1e-9)
                   for t in times), times
    assert len({round(t, 6) for t in times}) > 1


def test_the_recovery_time_ends_at_the_reply_that_acknowledges_the_probe(monkeypatch):
    delivered = []
    original = liveness.RecoveryProbe._on_reply

    def record(self, node, client, response):
        if client in self.pending and self.committed_at_ms is None:
            delivered.append((self.sim.now_ms, response))
        original(self, node, client, response)

    monkeypatch.setattr(liveness.RecoveryProbe, "_on_reply", record)
    summary, sim = _liveness_run(2)
    assert summary.ok
    heal_ms = 8000.0
    success_times = [time for time, response in delivered if type(response).__name__ == "ProposeResult"]
    assert success_times and summary.recovery_ms == pytest.approx(success_times[0] - heal_ms, abs=1e-9)


@pytest.mark.timeout(120)
def test_a_minority_core_cannot_commit_and_liveness_mode_reports_it(monkeypatch):
    # A core of one node, and every node outside it down for good: no quorum can form.
    original = liveness.LivenessMode.heal_core

    def heal_a_minority_and_stop_the_rest(self):
        original(self)
        for node in self.sim.node_ids:
            if node not in self.core and self.sim.nodes[node].state in (NodeState.UP, NodeState.PAUSED):
                self.sim.crash(node)

    monkeypatch.setattr(liveness.LivenessMode, "heal_core", heal_a_minority_and_stop_the_rest)
    summary, sim = _liveness_run(1, liveness_core_size=1)
    assert summary.liveness_core is not None and len(summary.liveness_core) == 1
    assert summary.recovery_ms is None
    assert any(p.startswith(f"liveness: the core {list(summary.liveness_core)} committed no write") for p in summary.problems)
    assert not summary.ok


def test_the_default_mode_also_measures_recovery_exactly():
    summary, sim = run_simulation(seed=4, nodes=3, duration_ms=6000.0, nemesis=NEMESIS_KINDS, actor="raft")
    sim.close()
    assert summary.ok and summary.liveness_core is None
    assert summary.recovery_ms is not None and not math.isclose(summary.recovery_ms % 10.0, 0.0, abs_tol=1e-9)


def test_sim_check_liveness_prints_recovery_stats(capsys):
    code = main(["sim", "check", "--seeds", "1..3", "--nodes", "3", "--nemesis", "all", "--liveness"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    line = [line for line in printed.splitlines() if line.startswith("recovery, liveness mode")]
    assert len(line) == 1 and " p50 " in line[0] and " max " in line[0] and "over 3 runs" in line[0]


def test_liveness_mode_with_the_database_actor_is_a_usage_error(capsys):
    code = main(["sim", "check", "--seeds", "1", "--actor", "database", "--liveness"])
    assert code == 2
    assert "--liveness runs the raft actor only" in capsys.readouterr().err


def test_liveness_runs_are_deterministic():
    first, _ = _liveness_run(5)
    second, _ = _liveness_run(5)
    assert first.trace_hash == second.trace_hash and first.recovery_ms == second.recovery_ms
    assert first.liveness_core == second.liveness_core
