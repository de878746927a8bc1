"""Membership errors on real `raftlite node` processes (issue 14, build item 7): the
refusals a dqlite client gets, and a removed node that stops saying why (loopback,
free ports, processes stopped by PID in the fixture's teardown)."""

import pytest

from raftlite.client.connection import Connection, RequestFailed

from cluster_helpers import ProcessCluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cluster(tmp_path):
    cluster = ProcessCluster(tmp_path / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def test_refusals_name_what_is_wrong(cluster):
    leader = cluster.wait_leader()
    with Connection.connect(cluster.address(leader)) as connection:
        with pytest.raises(RequestFailed, match="node 9 is not a member"):
            connection.remove(9)
        with pytest.raises(RequestFailed, match=rf"node {leader} is already a member \(voter at "):
            connection.add(leader, "127.0.0.1:1")
        with pytest.raises(RequestFailed, match=rf"address {cluster.address(leader)} is already node {leader}'s \(voter\)"):
            connection.add(7, cluster.address(leader))


def remove_a_follower(cluster) -> tuple[int, int, int]:
    """REMOVE a follower through the leader: (leader, removed node, its exit status)."""
    leader = cluster.wait_leader()
    victim = next(node for node in cluster.nodes if node != leader)
    with Connection.connect(cluster.address(leader)) as connection:
        connection.remove(victim)
    return leader, victim, cluster.nodes[victim].wait_exit(30)


def test_a_removed_node_stops_and_says_why(cluster):
    leader, victim, _ = remove_a_follower(cluster)
    log = cluster.nodes[victim].log_text()
    assert f"removed from the cluster: node {leader}, the leader in term " in log, log
    assert f"answered that node {victim} is not in its committed configuration" in log, log
    # The two remaining voters still elect and serve.
    assert cluster.wait_leader() != victim


def test_a_removed_node_exits_0(cluster):
    _, _, status = remove_a_follower(cluster)
    assert status == 0
