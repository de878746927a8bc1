"""Mutual TLS end to end: three nodes whose every connection is TLS (peers, joining,
dqlite clients); the DB-API client with the cluster's CA and a client certificate works,
a plain-TCP client and a client with a foreign CA get nothing."""

import ssl

import pytest
import trustme   # a test dependency (pyproject's test extras)

import raftlite
from raftlite.client.connection import Connection, ConnectionBroken
from raftlite.io.transport import TlsSettings
from raftlite_inprocess import InProcessCluster


class TlsCluster(InProcessCluster):
    def __init__(self, directory, tls: TlsSettings) -> None:
        super().__init__(directory)
        self.tls = tls

    def start_node(self, node_id: int):
        from raftlite.io.node import Node

        join = () if node_id == 1 else (self.addresses[0],)
        node = Node(node_id=node_id, address=self.addresses[node_id - 1], data_dir=str(self.directory / f"node{node_id}"),
                    join=join, config=self.config, tls=self.tls)
        self.run(node.start())
        self.nodes[node_id] = node
        return node


@pytest.mark.timeout(120)
def test_a_tls_cluster_serves_tls_clients_only(tmp_path):
    authority = trustme.CA()
    node_certificate = authority.issue_cert("127.0.0.1", "localhost")
    paths = {name: str(tmp_path / f"{name}.pem") for name in ("ca", "chain", "key")}
    authority.cert_pem.write_to_path(paths["ca"])
    node_certificate.private_key_pem.write_to_path(paths["key"])
    with open(paths["chain"], "wb") as chain:
        for blob in node_certificate.cert_chain_pems:
            chain.write(blob.bytes())
    tls = TlsSettings.from_files(certificate_chain_file=paths["chain"], private_key_file=paths["key"], ca_file=paths["ca"])
    cluster = TlsCluster(tmp_path, tls).start()
    try:
        client_context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=paths["ca"])
        authority.issue_cert("client").configure_cert(client_context)
        connection = raftlite.connect(cluster.addresses, database="secure", ssl_context=client_context, autocommit=True)
        connection.execute("CREATE TABLE t (k)")
        connection.execute("INSERT INTO t VALUES (1), (2)")
        assert connection.execute("SELECT count(*) FROM t").fetchall() == [(2,)]
        assert len(connection.cluster()) == 3
        connection.close()

        with pytest.raises(ConnectionBroken):        # plain TCP: the node closes it
            with Connection.connect(cluster.address(1), timeout_s=5) as plain:
                plain.leader()
        foreign = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=paths["ca"])
        trustme.CA().issue_cert("intruder").configure_cert(foreign)   # a certificate our CA never signed
        with pytest.raises(ConnectionBroken):
            with Connection.connect(cluster.address(1), timeout_s=5, ssl_context=foreign) as intruder:
                intruder.leader()
    finally:
        cluster.close()
