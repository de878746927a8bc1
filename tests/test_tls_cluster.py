"""Mutual TLS end to end: three nodes whose every connection is TLS (peers, joining,
dqlite clients); the DB-API client with the cluster's CA and a client certificate works,
a plain-TCP client and a client with a foreign CA get nothing, and a client certificate
cannot speak the peer protocol (peers must also prove the cluster key)."""

import socket
import ssl
import struct
import time

import pytest
import trustme   # a test dependency (pyproject's test extras)

import raftlite
from raftlite.client.connection import Connection, ConnectionBroken
from raftlite.core.peer_codec import RAFT_CODEC
from raftlite.core.raft_messages import HeartbeatResponse
from raftlite.io.admin import parse_address
from raftlite.io.node import Node
from raftlite.io.transport import PEER_MAGIC
from tls_cluster import TlsCluster, node_tls_settings


@pytest.mark.timeout(120)
def test_a_tls_cluster_serves_tls_clients_only(tmp_path):
    authority = trustme.CA()
    tls, ca_file = node_tls_settings(authority, tmp_path)
    cluster = TlsCluster(tmp_path, tls).start()
    try:
        client_context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
        authority.issue_cert("client").configure_cert(client_context)
        connection = raftlite.connect(cluster.addresses, database="secure", ssl_context=client_context, autocommit=True)
        connection.execute("CREATE TABLE t (k)")
        connection.execute("INSERT INTO t VALUES (1), (2)")
        assert connection.execute("SELECT count(*) FROM t").fetchall() == [(2,)]
        assert len(connection.cluster()) == 3
        connection.close()

        # A client certificate is not a peer: the forged HeartbeatResponse of term 1000
        # (issue 14) sent over mutual TLS with it moves no term.
        leader = cluster.leader()
        terms = {n: node.status()["term"] for n, node in cluster.nodes.items()}
        payload = RAFT_CODEC.encode(HeartbeatResponse(term=1000, sequence=1, last_index=1))
        forged = PEER_MAGIC + struct.pack("<Q", 3 if leader != 3 else 2) + struct.pack(">IB", len(payload), 1) + payload
        host, port = parse_address(cluster.address(leader))
        for _ in range(20):
            with socket.create_connection((host, port), timeout=5) as raw:
                with client_context.wrap_socket(raw, server_hostname=host) as tls_socket:
                    tls_socket.sendall(forged)
                    assert tls_socket.recv(1) == b""   # the node closed it
        time.sleep(0.3)
        assert {n: node.status()["term"] for n, node in cluster.nodes.items()} == terms
        with pytest.raises(ValueError, match="cluster key"):
            Node(node_id=9, address="127.0.0.1:1", data_dir=str(tmp_path / "nokey"), tls=tls)

        with pytest.raises(ConnectionBroken):        # plain TCP: the node closes it
            with Connection.connect(cluster.address(1), timeout_s=5) as plain:
                plain.leader()
        foreign = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
        trustme.CA().issue_cert("intruder").configure_cert(foreign)   # a certificate our CA never signed
        with pytest.raises(ConnectionBroken):
            with Connection.connect(cluster.address(1), timeout_s=5, ssl_context=foreign) as intruder:
                intruder.leader()
    finally:
        cluster.close()
