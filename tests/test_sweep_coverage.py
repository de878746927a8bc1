"""Coverage you can see: unreached paths fail a judged sweep, reads are checked
(a planted stale read is caught over a fixed seed range that the safe build passes), and
the membership and transfer faults fire without a safety violation."""

import io

import pytest

from raftlite.cli import main
from raftlite.core.raft import UnsafeSwitches
from raftlite.sim.nemesis import NEMESIS_KINDS
from raftlite.sim.run import run_simulation
from raftlite.sim.sweep import sweep

# The standard budget itself is judged in tests/test_raft_sweep.py: each 50-seed chunk
# with 3 nodes must reach every named path (one sweep serves both).


def test_a_sweep_below_the_standard_budget_is_not_judged_and_prints_its_counts(capsys):
    code = main(["sim", "check", "--seeds", "1..2", "--nodes", "3", "--nemesis", "all", "--fault-points", "none"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "coverage (times each path was reached):" in printed
    assert "read-checked" in printed
    assert "COVERAGE FAILED" not in printed


def test_an_unreached_path_fails_a_judged_sweep(monkeypatch):
    # A path nothing can reach (the database's checkpoint race in a raft sweep) made
    # required for the raft actor: the judged sweep must fail, with a clear line.
    import raftlite.sim.coverage as coverage

    paths = tuple(
        coverage.CoveragePath(path.name, path.description, path.actors + ("raft",))
        if path.name == "checkpoint-waits-for-snapshot" else path
        for path in coverage.PATHS
    )
    monkeypatch.setattr(coverage, "PATHS", paths)
    monkeypatch.setitem(coverage.STANDARD_BUDGET, "raft", (1, 3))
    out = io.StringIO()
    result = sweep(seeds=range(1, 2), nodes=3, nemesis=NEMESIS_KINDS, nemesis_text="all", duration_s=3.0,
                   progress=None, out=out)
    assert result.failures == []
    assert "checkpoint-waits-for-snapshot" in result.coverage_missing
    assert not result.ok
    failed_line = [line for line in result.render().splitlines() if line.startswith("COVERAGE FAILED")]
    assert len(failed_line) == 1 and "checkpoint-waits-for-snapshot" in failed_line[0]


READ_SEEDS = range(1, 11)


def _runs(unsafe: UnsafeSwitches):
    for seed in READ_SEEDS:
        summary, sim = run_simulation(seed=seed, nodes=3, duration_ms=6000.0, nemesis=NEMESIS_KINDS, actor="raft",
                                      unsafe=unsafe)
        sim.close()
        yield summary


@pytest.mark.timeout(200)
def test_the_read_check_catches_a_read_served_without_read_index_where_the_safe_build_passes():
    planted = list(_runs(UnsafeSwitches(read_without_read_index=True)))
    caught = [s.seed for s in planted if s.violation and "read linearizability: stale read" in s.violation]
    # Followers answer at once from what they applied: nearly every seed shows it.
    assert len(caught) >= len(READ_SEEDS) // 2, [s.violation for s in planted]
    safe = list(_runs(UnsafeSwitches()))
    assert [s.seed for s in safe if not s.ok] == [], [(s.seed, s.violation, s.problems) for s in safe if not s.ok]
    assert all(s.coverage["read-checked"] > 0 for s in safe)


@pytest.mark.timeout(200)
def test_membership_transfer_and_leader_partition_faults_fire_and_the_safe_build_passes():
    totals: dict[str, int] = {}
    for seed in range(1, 9):
        summary, sim = run_simulation(seed=seed, nodes=3, duration_ms=10000.0, actor="raft",
                                      nemesis=("membership", "transfer", "leader-partition"))
        sim.close()
        assert summary.ok, (seed, summary.violation, summary.problems)
        assert len(sim.node_ids) == 4   # the extra, non-founding node to add
        for name in ("membership", "transfer", "leader-partition"):
            totals[name] = totals.get(name, 0) + summary.faults.get(name, 0)
        for name, count in summary.coverage.items():
            totals[name] = totals.get(name, 0) + count
    assert totals["membership"] > 0 and totals["transfer"] > 0 and totals["leader-partition"] > 0
    for path in ("voter-removed", "non-voter-added", "removed-node-rejoined-as-voter", "membership-change-refused",
                 "leadership-transferred", "leader-sees-higher-term"):
        assert totals[path] > 0, (path, totals)


def test_membership_events_replay_from_their_recorded_parameters():
    summary, sim = run_simulation(seed=3, nodes=3, duration_ms=8000.0, actor="raft",
                                  nemesis=("membership", "transfer"))
    sim.close()
    events = [e for e in summary.fault_events if e.kind in ("membership", "transfer")]
    assert events
    replayed, sim = run_simulation(seed=3, nodes=3, duration_ms=8000.0, actor="raft", nemesis=(), replay=events)
    sim.close()
    assert replayed.trace_hash == summary.trace_hash
