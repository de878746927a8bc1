"""jepsen_like against real `raftlite node` processes on 127.0.0.1: a short run with
partitions and kills that must be valid, the proxy really cutting links, the monitor
noticing a node that dies on its own, and the `--runtime real` command.

Every process runs in its own session on free loopback ports and is killed by PID when
the test ends (the fixtures and `run_jepsen_real` do it, also on failure)."""

import json
import os
import signal
import time

import pytest

from raftlite.cli import main
from raftlite.jepsen_like.history import parse_history
from raftlite.jepsen_like.real_runtime import _Monitor, damage_raft_files, parse_real_nemesis
from raftlite.sim.network import isolate, one_way
from raftlite.sim.rng import derive_rng

pytest_plugins = ["raftlite.jepsen_like.pytest_plugin"]


@pytest.mark.timeout(150)
def test_real_run_with_partitions_and_kills_is_valid(jepsen_run):
    from raftlite.jepsen_like.pytest_plugin import assert_valid

    result = jepsen_run(runtime="real", workload="register", nemesis="partition,leader-partition,kill", seed=3,
                        time_limit_s=20.0, operation_timeout_ms=5000.0)
    assert_valid(result)
    assert result.runtime == "real"
    assert result.counts()["ok"] > 200, result.summary()
    assert result.faults.get("kill", 0) + result.faults.get("partition", 0) + \
        result.faults.get("leader-partition", 0) >= 4, result.faults
    kinds = {interval.kind for interval in result.intervals}
    assert "kill" in kinds and kinds & {"partition", "leader-partition"}, result.intervals
    # Converged: every node applied the same index and its DUMP holds the same rows.
    assert len(result.status) == 3
    assert len({status["applied_index"] for status in result.status.values()}) == 1
    assert len({json.dumps(status["rows"]) for status in result.status.values()}) == 1
    verdict = json.loads(open(result.outputs["verdict"]).read())
    assert verdict["runtime"] == "real" and verdict["valid"] is True


@pytest.mark.timeout(120)
def test_proxy_partitions_elect_a_new_leader_and_the_monitor_notices_deaths(real_cluster):
    cluster = real_cluster(nodes=3)
    old, old_status = _wait_leader(cluster)
    # Isolating the leader through the proxies: the others elect one of themselves.
    cluster.partition(isolate(old, sorted(cluster.nodes)))
    new, new_status = _wait_leader(cluster, exclude=old, after_term=old_status["term"])
    assert new != old
    cluster.heal()
    # Healed: the old leader follows the new one (a higher term), and all converge.
    cluster.wait_converged(30.0, nodes=sorted(cluster.nodes))   # NotConverged names the applied indexes
    assert cluster.nodes[old].status()["role"] == "follower"
    # One-way: a follower that cannot send loses nothing the others need; still converges.
    follower = next(n for n in cluster.nodes if n != new)
    cluster.partition(one_way([follower], [n for n in cluster.nodes if n != follower]))
    assert cluster.proxy.blocked() == frozenset((follower, n) for n in cluster.nodes if n != follower)
    cluster.heal()
    assert cluster.proxy.blocked() == frozenset()
    # A node that dies when no nemesis meant it to is reported, with its log.
    monitor = _Monitor(cluster)
    monitor.check()
    assert monitor.problems == []
    victim = cluster.nodes[follower]
    os.kill(victim.pid, signal.SIGKILL)
    victim.process.wait(10)
    monitor.check()
    assert len(monitor.problems) == 1 and f"node {follower}" in monitor.problems[0]
    assert "exited unexpectedly with status -9" in monitor.problems[0]


@pytest.mark.timeout(120)
def test_damaged_files_are_refused_then_restored(real_cluster):
    cluster = real_cluster(nodes=3)
    leader, _ = _wait_leader(cluster)
    node = cluster.nodes[next(n for n in cluster.nodes if n != leader)]
    node.kill()
    backup = {name: (node.data_dir / name).read_bytes() for name in os.listdir(node.data_dir)
              if (node.data_dir / name).is_file()}
    what, named = damage_raft_files(node.data_dir, derive_rng(1, "test-damage"))
    node.start(expect_up=False)
    assert node.process.wait(30) == 1, node.log_tail()
    assert named in node.log_tail(5) and "refusing to start" in node.log_tail(5), (what, node.log_tail())
    for name, data in backup.items():
        (node.data_dir / name).write_bytes(data)
    node.start()
    cluster.wait_converged(30.0, nodes=sorted(cluster.nodes))   # NotConverged names the applied indexes


@pytest.mark.timeout(150)
def test_command_runtime_real_smoke(tmp_path, capsys):
    out = tmp_path / "run"
    status = main(["jepsen", "--runtime", "real", "--workload", "append", "--nemesis", "pause,corrupt",
                   "--time-limit", "10", "--seed", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.out + captured.err
    assert "valid: true" in captured.out and "node processes" in captured.err
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["runtime"] == "real" and verdict["valid"] is True and verdict["nemesis"] == ["pause", "corrupt"]
    assert sum(verdict["faults"].values()) >= 2
    events = parse_history((out / "history.edn").read_text())
    assert sum(1 for e in events if e.type == "invoke") == verdict["operations"]["invoke"] > 50
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert sorted(path.name for path in (out / "cluster").glob("node*.log")) == ["node1.log", "node2.log", "node3.log"]
    refusals = [i for i in verdict["nemesis_intervals"] if i["kind"] == "corrupt"]
    assert all("refused to start (exit 1)" in i["description"] for i in refusals)


def test_real_nemesis_names_are_checked():
    assert parse_real_nemesis("all") == ("partition", "leader-partition", "kill", "pause", "corrupt")
    assert parse_real_nemesis("kill, pause,kill") == ("kill", "pause")
    with pytest.raises(ValueError, match="unknown nemesis clock for --runtime real"):
        parse_real_nemesis("kill,clock")


def _wait_leader(cluster, *, exclude=None, after_term=0, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for node_id, status in cluster.statuses().items():
            if node_id != exclude and status.get("role") == "leader" and status.get("term", 0) > after_term:
                return node_id, status
        time.sleep(0.1)
    raise AssertionError(f"no leader (other than {exclude}) after term {after_term}\n{cluster.logs()}")
