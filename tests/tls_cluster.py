"""A three-node in-process cluster whose every connection is mutual TLS, and the PEM files
and contexts its tests need (tests/test_tls_cluster.py, tests/test_tls_roles.py).
Importable by name: tests/conftest.py puts tests/ on sys.path."""

import secrets
import ssl
from pathlib import Path

import trustme   # a test dependency (pyproject's test extras)

from raftlite.io.node import Node
from raftlite.io.transport import TlsSettings
from raftlite_inprocess import InProcessCluster


class TlsCluster(InProcessCluster):
    def __init__(self, directory, tls: TlsSettings) -> None:
        super().__init__(directory)
        self.tls = tls
        self.cluster_key = secrets.token_bytes(32)   # with TLS, peers must also prove the cluster key

    def start_node(self, node_id: int):
        join = () if node_id == 1 else (self.addresses[0],)
        node = Node(node_id=node_id, address=self.addresses[node_id - 1], data_dir=str(self.directory / f"node{node_id}"),
                    join=join, config=self.config, tls=self.tls, cluster_key=self.cluster_key)
        self.run(node.start())
        self.nodes[node_id] = node
        return node


def node_tls_settings(
    authority: trustme.CA, directory: Path, *, unit: str | None = None, require_roles: bool = False,
) -> tuple[TlsSettings, str]:
    """The TLS settings of a node whose certificate (for 127.0.0.1 and localhost) has the
    OU `unit` (None: trustme's own, a role-less "Testing cert #..."), and the CA file."""
    certificate = authority.issue_cert("127.0.0.1", "localhost", common_name="node", organization_unit_name=unit)
    paths = {name: str(directory / f"{name}.pem") for name in ("ca", "chain", "key")}
    authority.cert_pem.write_to_path(paths["ca"])
    certificate.private_key_pem.write_to_path(paths["key"])
    with open(paths["chain"], "wb") as chain:
        chain.writelines(blob.bytes() for blob in certificate.cert_chain_pems)
    tls = TlsSettings.from_files(certificate_chain_file=paths["chain"], private_key_file=paths["key"], ca_file=paths["ca"],
                                 require_roles=require_roles)
    return tls, paths["ca"]


def client_context(authority: trustme.CA, ca_file: str, name: str, *, unit: str | None = None) -> ssl.SSLContext:
    """A client-side context trusting the cluster's CA, presenting a certificate for
    `name` with the OU `unit` (None: trustme's role-less default)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    authority.issue_cert(name, common_name=name, organization_unit_name=unit).configure_cert(context)
    return context
