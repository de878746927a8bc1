"""Identity on disk and joins that end (issue 14, items 2 and 6; io/identity.py, io/node.py).

The data directory records its node id, its cluster id and its member address; starting
it under another id, joining it to another cluster or running a second live node under
one id exits 2 with a one-line message. A join gives up after --join-timeout (exit 1)
saying why: unreachable, not a raftlite node, no leader; joining itself exits 2 at
once. The process tests run real `raftlite node` processes on 127.0.0.1 (free ports),
each waited for or killed by PID.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from raftlite.io.identity import (
    IDENTITY_FILE, IdentityMismatch, NodeIdentity, check_identity, check_node_addresses, read_identity,
    write_identity,
)
from raftlite.io.node import Node
from raftlite.process_cluster import free_ports

from cluster_helpers import ProcessCluster

pytestmark = pytest.mark.timeout(120)

JOIN_TIMEOUT_S = 2.0
# A node process needs a few seconds to import and start on a busy machine.
EXIT_WITHIN_S = 30.0


def run_node(*arguments: str, timeout_s: float = EXIT_WITHIN_S) -> tuple[int, str, float]:
    """Run `raftlite node ARGUMENTS` to its exit: (exit status, stderr, seconds taken).
    subprocess.run kills the process if it outlives `timeout_s`."""
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "raftlite", "node", *arguments], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as expired:   # killed by subprocess.run; say what it printed
        stderr = expired.stderr.decode(errors="replace") if isinstance(expired.stderr, bytes) else expired.stderr
        pytest.fail(f"raftlite node {' '.join(arguments)} still running after {timeout_s:g} s; its stderr:\n"
                    f"{(stderr or '')[-4000:]}")
    return done.returncode, done.stderr, time.monotonic() - started


def last_line(stderr: str) -> str:
    """The one line `raftlite node` prints when it exits for a reason (log lines aside)."""
    return [line for line in stderr.splitlines() if line.startswith("raftlite node")][-1]


def wait_listening(address: str, timeout_s: float = EXIT_WITHIN_S) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {address} after {timeout_s} s")


# -- without processes ---------------------------------------------------------------------


def test_identity_round_trips_and_leaves_no_temporary_file(tmp_path):
    identity = NodeIdentity(node_id=2, cluster_id="c0ffee", address="127.0.0.1:9002")
    write_identity(str(tmp_path), identity)
    assert read_identity(str(tmp_path)) == identity
    assert os.listdir(tmp_path) == [IDENTITY_FILE]
    adopted = NodeIdentity(node_id=2, cluster_id=None, address="127.0.0.1:9002")
    write_identity(str(tmp_path), adopted)
    assert read_identity(str(tmp_path)) == adopted
    assert read_identity(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("text", ["", "{", '{"node_id": 2}', '{"node_id": "2", "cluster_id": null, "address": "a:1"}',
                                  '{"node_id": 0, "cluster_id": null, "address": "a:1"}'])
def test_an_unreadable_identity_file_is_refused_not_replaced(tmp_path, text):
    (tmp_path / IDENTITY_FILE).write_text(text)
    with pytest.raises(IdentityMismatch, match="is not a raftlite identity file"):
        read_identity(str(tmp_path))
    assert (tmp_path / IDENTITY_FILE).read_text() == text


def test_another_id_or_cluster_is_refused():
    recorded = NodeIdentity(node_id=2, cluster_id="one", address="127.0.0.1:9002")
    check_identity(recorded, node_id=2, data_dir="d", cluster_id="one")
    check_identity(recorded, node_id=2, data_dir="d", cluster_id=None)   # a contact that does not know its cluster
    with pytest.raises(IdentityMismatch, match="belongs to node 2, not node 5"):
        check_identity(recorded, node_id=5, data_dir="d")
    with pytest.raises(IdentityMismatch, match="belongs to cluster one, but .* are cluster two"):
        check_identity(recorded, node_id=2, data_dir="d", cluster_id="two")
    # An adopted directory (cluster unknown) cannot tell clusters apart.
    check_identity(NodeIdentity(node_id=2, cluster_id=None, address="a:1"), node_id=2, data_dir="d", cluster_id="two")


@pytest.mark.parametrize(("address", "advertise", "join", "message"), [
    ("0.0.0.0:9001", None, (), "--address 0.0.0.0:9001 is a wildcard"),
    ("[::]:9001", None, (), r"--address \[::\]:9001 is a wildcard"),
    ("127.0.0.1:0", None, (), "--address 127.0.0.1:0 has port 0"),
    ("0.0.0.0:9001", "0.0.0.0:9001", (), "--advertise 0.0.0.0:9001 is a wildcard"),
    ("0.0.0.0:0", "10.0.0.5:9001", (), "--address 0.0.0.0:0 has port 0"),
    ("127.0.0.1:9001", None, ("127.0.0.1:9002", "127.0.0.1:9001"), "--join 127.0.0.1:9001 is this node's own"),
    ("0.0.0.0:9001", "10.0.0.5:9001", ("10.0.0.5:9001",), "--join 10.0.0.5:9001 is this node's own"),
])
def test_addresses_must_be_dialable_and_not_joined_to_themselves(tmp_path, address, advertise, join, message):
    with pytest.raises(ValueError, match=message):
        check_node_addresses(address, advertise, join)
    with pytest.raises(ValueError, match=message):
        Node(node_id=1, address=address, advertise=advertise, join=join, data_dir=str(tmp_path))


def test_a_wildcard_bind_records_the_advertised_address(tmp_path):
    node = Node(node_id=1, address="0.0.0.0:9001", advertise="10.0.0.5:9001", data_dir=str(tmp_path))
    assert node.advertised_address == "10.0.0.5:9001"
    node.cluster_id = "c"
    assert node._identity_record() == NodeIdentity(node_id=1, cluster_id="c", address="10.0.0.5:9001")


def test_a_joining_node_records_the_first_cluster_and_refuses_another(tmp_path):
    node = Node(node_id=4, address="127.0.0.1:9004", data_dir=str(tmp_path), join=["127.0.0.1:9001"])
    node._record_cluster("first")
    assert read_identity(str(tmp_path)) == NodeIdentity(node_id=4, cluster_id="first", address="127.0.0.1:9004")
    node._record_cluster("first")   # every later contact is checked against it
    with pytest.raises(IdentityMismatch, match="belongs to cluster first"):
        node._record_cluster("second")
    assert read_identity(str(tmp_path)).cluster_id == "first"


# -- node processes ------------------------------------------------------------------------


@pytest.fixture
def cluster_directory(tmp_path):
    clusters = []

    def make(size: int) -> ProcessCluster:
        cluster = ProcessCluster(tmp_path / f"cluster{len(clusters)}", size=size)
        clusters.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.close()


def test_identity_is_recorded_and_another_id_or_a_twin_exits_2(cluster_directory, tmp_path):
    cluster = cluster_directory(2)
    one, two = (read_identity(str(cluster.nodes[n].data_dir)) for n in (1, 2))
    assert one.node_id == 1 and two.node_id == 2
    assert one.cluster_id and two.cluster_id == one.cluster_id   # learned from the leader at the join
    assert two.address == cluster.address(2)

    # Node 2's data directory restarted under --id 5.
    cluster.nodes[2].terminate()
    status, stderr, _ = run_node("--id", "5", "--address", cluster.address(2), "--data-dir",
                                 str(cluster.nodes[2].data_dir), "--join", cluster.address(1))
    assert status == 2, stderr
    assert last_line(stderr) == (f"raftlite node: data directory {cluster.nodes[2].data_dir} belongs to node 2, "
                                 "not node 5: start it with --id 2, or give node 5 a new, empty data directory")
    assert read_identity(str(cluster.nodes[2].data_dir)) == two

    # Node 2 running again; its identity elsewhere, started at another address: a twin.
    cluster.restart(2)
    cluster.wait_voters({1, 2}, 60)
    twin_directory = tmp_path / "twin"
    write_identity(str(twin_directory), two)
    status, stderr, _ = run_node("--id", "2", "--address", f"127.0.0.1:{free_ports(1)[0]}",
                                 "--data-dir", str(twin_directory))
    assert status == 2, stderr
    assert f"node 2 of this cluster is already running at {cluster.address(2)}" in last_line(stderr)


def test_a_wildcard_address_without_advertise_exits_2(tmp_path):
    port = free_ports(1)[0]
    status, stderr, _ = run_node("--id", "1", "--address", f"0.0.0.0:{port}", "--data-dir", str(tmp_path / "d"))
    assert status == 2, stderr
    assert last_line(stderr).startswith(f"raftlite node: --address 0.0.0.0:{port} is a wildcard")
    assert not (tmp_path / "d" / IDENTITY_FILE).exists()


def test_joining_a_dead_port_gives_up_with_unreachable(tmp_path):
    own, dead = (f"127.0.0.1:{port}" for port in free_ports(2))
    status, stderr, took_s = run_node("--id", "3", "--address", own, "--join", dead, "--data-dir", str(tmp_path / "d"),
                                      "--join-timeout", str(JOIN_TIMEOUT_S))
    assert status == 1, stderr
    assert last_line(stderr) == (f"raftlite node 3: gave up joining after {JOIN_TIMEOUT_S:g} s: {dead}: unreachable "
                                 f"(cannot connect to {dead}: [Errno 111] Connection refused)")
    # Tried about four times a second, logged once.
    assert sum("cannot join through" in line for line in stderr.splitlines()) == 1, stderr
    assert took_s < EXIT_WITHIN_S


class NotRaftlite:
    """A TCP server that answers anything with an HTTP error and closes, as a web server
    does with a request it cannot parse."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                try:
                    connection.recv(64)
                    connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_joining_a_port_that_is_not_raftlite_gives_up_with_the_reason(tmp_path):
    server = NotRaftlite()
    try:
        status, stderr, _ = run_node("--id", "3", "--address", f"127.0.0.1:{free_ports(1)[0]}", "--join",
                                     server.address, "--data-dir", str(tmp_path / "d"),
                                     "--join-timeout", str(JOIN_TIMEOUT_S))
    finally:
        server.close()
    assert status == 1, stderr
    assert last_line(stderr).startswith(f"raftlite node 3: gave up joining after {JOIN_TIMEOUT_S:g} s: "
                                        f"{server.address}: not a raftlite node")
    assert sum("cannot join through" in line for line in stderr.splitlines()) == 1, stderr


def test_joining_through_a_node_that_knows_no_leader_gives_up_with_no_leader(tmp_path):
    stuck_address, dead, own = (f"127.0.0.1:{port}" for port in free_ports(3))
    # A node that is itself waiting to join (a dead port): up, but in no cluster.
    stuck = subprocess.Popen([sys.executable, "-m", "raftlite", "node", "--id", "7", "--address", stuck_address,
                              "--join", dead, "--data-dir", str(tmp_path / "stuck"), "--join-timeout", "100"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(stuck_address)
        status, stderr, _ = run_node("--id", "3", "--address", own, "--join", stuck_address,
                                     "--data-dir", str(tmp_path / "d"), "--join-timeout", str(JOIN_TIMEOUT_S))
    finally:
        stuck.kill()
        stuck.wait(10)
    assert status == 1, stderr
    assert last_line(stderr).startswith(f"raftlite node 3: gave up joining after {JOIN_TIMEOUT_S:g} s: "
                                        f"{stuck_address}: no leader: node 7 there knows none")


def test_joining_itself_exits_2_at_once(tmp_path):
    port = free_ports(1)[0]
    status, stderr, _ = run_node("--id", "3", "--address", f"127.0.0.1:{port}", "--join", f"127.0.0.1:{port}",
                                 "--data-dir", str(tmp_path / "d"))
    assert status == 2, stderr
    assert "--join 127.0.0.1:%d is this node's own address" % port in last_line(stderr)
    # Another spelling of its own address: found when the node answers as itself.
    status, stderr, _ = run_node("--id", "3", "--address", f"127.0.0.1:{port}", "--join", f"localhost:{port}",
                                 "--data-dir", str(tmp_path / "d"), "--join-timeout", "20")
    assert status == 2, stderr
    assert last_line(stderr) == (f"raftlite node 3: --join localhost:{port} reaches this node itself: a node cannot "
                                 "join itself; give the address of a member of the cluster it should join")


def test_a_directory_of_another_cluster_exits_2_and_join_on_an_initialized_one_is_ignored(cluster_directory, tmp_path):
    cluster = cluster_directory(1)
    # A directory that began joining another cluster (its identity says so).
    elsewhere = tmp_path / "elsewhere"
    write_identity(str(elsewhere), NodeIdentity(node_id=3, cluster_id="another-cluster", address="127.0.0.1:1"))
    own = f"127.0.0.1:{free_ports(1)[0]}"
    status, stderr, _ = run_node("--id", "3", "--address", own, "--join", cluster.address(1),
                                 "--data-dir", str(elsewhere), "--join-timeout", "20")
    assert status == 2, stderr
    cluster_id = read_identity(str(cluster.nodes[1].data_dir)).cluster_id
    assert f"belongs to cluster another-cluster, but the nodes it was pointed at are cluster {cluster_id}" \
        in last_line(stderr)

    # --join given to an initialized node: it starts as it is, and says so.
    node = cluster.nodes[1]
    node.terminate()
    node.start(join=(f"127.0.0.1:{free_ports(1)[0]}",))
    cluster.wait_voters({1}, 60)
    assert "--join ignored: data directory" in node.log_text()


def test_a_directory_without_identity_file_is_adopted(cluster_directory):
    cluster = cluster_directory(1)
    node = cluster.nodes[1]
    node.terminate()
    (Path(node.data_dir) / IDENTITY_FILE).unlink()
    cluster.restart(1)
    cluster.wait_voters({1}, 60)
    assert json.loads((Path(node.data_dir) / IDENTITY_FILE).read_text()) == {
        "node_id": 1, "cluster_id": None, "address": cluster.address(1)}
    assert "has no identity file (an earlier raftlite wrote it): adopted as node 1" in node.log_text()
