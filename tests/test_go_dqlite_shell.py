"""Debian's go-dqlite `dqlite` shell (a client nobody here wrote) against a raftlite
cluster (issue 6): SQL, .cluster, .leader, .describe, .weight, .dump, .remove.

Facts from go-dqlite 1.11.5's shell, checked live: every statement runs inside
BEGIN ... COMMIT; `.dump ADDR [DB]` dumps DB (default "db.bin") straight from that node
into the current directory; `.describe`/`.weight` go straight to the node named; `.remove
ADDR` finds the node in CLUSTER and sends REMOVE through the leader.
"""

import os
import shutil
import subprocess
import time

import apsw
import pytest

import dqlite_debian
from raftlite_inprocess import InProcessCluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def shell():
    dqlite_debian.ensure_dqlite_demo()    # go-dqlite ships both dqlite-demo and the dqlite shell
    path = shutil.which("dqlite")
    if path is None:
        pytest.fail("go-dqlite is installed but has no `dqlite` shell")
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = InProcessCluster(tmp_path_factory.mktemp("go-shell")).start()
    try:
        yield cluster
    finally:
        cluster.close()


def run_shell(shell, cluster, *arguments, cwd=None) -> str:
    servers = ",".join(cluster.address(n) for n in sorted(cluster.nodes) if cluster.nodes[n].running)
    completed = subprocess.run([shell, "-s", servers, *arguments], capture_output=True, text=True, timeout=60, cwd=cwd)
    assert completed.returncode == 0, f"dqlite {arguments}: {completed.stdout}{completed.stderr}"
    return completed.stdout.strip()


def test_sql_through_the_go_shell(shell, cluster):
    run_shell(shell, cluster, "app", "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT, r)")
    run_shell(shell, cluster, "app", "INSERT INTO t VALUES (1, 'one', random())")
    run_shell(shell, cluster, "app", "INSERT INTO t VALUES (2, 'two', randomblob(2))")
    rows = run_shell(shell, cluster, "app", "SELECT k, v FROM t ORDER BY k")
    assert rows.splitlines() == ["1|one", "2|two"]
    as_json = run_shell(shell, cluster, "-f", "json", "app", "SELECT k FROM t ORDER BY k")
    assert as_json.split() == ["1", "2"]


def test_cluster_and_leader(shell, cluster):
    lines = run_shell(shell, cluster, "app", ".cluster").splitlines()
    assert lines == [f"{n:x}|{cluster.address(n)}|voter" for n in (1, 2, 3)]
    assert run_shell(shell, cluster, "app", ".leader") == cluster.address(cluster.leader())


def test_describe_and_weight_go_to_the_node_named(shell, cluster):
    address = cluster.address(2)
    assert run_shell(shell, cluster, "app", f".describe {address}") == f"{address}|0|0"
    run_shell(shell, cluster, "app", f".weight {address} 5")
    assert run_shell(shell, cluster, "app", f".describe {address}") == f"{address}|0|5"
    assert cluster.nodes[2].metadata.weight == 5


def test_dump_from_a_follower(shell, cluster, tmp_path):
    run_shell(shell, cluster, "app", "CREATE TABLE IF NOT EXISTS dumped (k)")
    run_shell(shell, cluster, "app", "INSERT INTO dumped VALUES (42)")
    follower = next(n for n in (1, 2, 3) if n != cluster.leader())
    for _ in range(50):   # the follower applies within a heartbeat or two
        assert run_shell(shell, cluster, "app", f".dump {cluster.address(follower)} app", cwd=tmp_path) == "OK"
        assert sorted(os.listdir(tmp_path)) == ["app", "app-wal"]    # the database and its WAL
        database = apsw.Connection(str(tmp_path / "app"))
        try:
            assert database.execute("PRAGMA integrity_check").get == "ok"
            rows = [tuple(row) for row in database.execute("SELECT k FROM dumped")]
        finally:
            database.close()
        if rows:
            break
        time.sleep(0.1)
    assert rows == [(42,)]


def test_remove_last(shell, cluster):
    victim = next(n for n in (3, 2) if n != cluster.leader())
    run_shell(shell, cluster, "app", f".remove {cluster.address(victim)}")
    lines = run_shell(shell, cluster, "app", ".cluster").splitlines()
    assert f"{victim:x}|{cluster.address(victim)}|voter" not in lines and len(lines) == 2
