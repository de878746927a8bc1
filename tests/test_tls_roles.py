"""A TLS certificate grants only its role (io/tls_roles.py, README "Peer authentication"):
OU=raftlite-client may read and write but not change membership nor speak the admin or
peer protocol; OU=raftlite-admin may change membership and use the admin protocol but is
no peer; OU=raftlite-node may do everything (the nodes themselves use it); a certificate
without a role counts as a node's unless roles are required."""

import argparse
import asyncio
import logging
import socket
import ssl
import time

import pytest
import trustme   # a test dependency (pyproject's test extras)

import raftlite
from raftlite.actors.contract import StatusRequest, StatusResponse
from raftlite.actors.database import SQLITE_AUTH
from raftlite.actors.dqlite_session import DqliteSession, SendBytes, SubmitRequest
from raftlite.cli import main as raftlite_main
from raftlite.client.connection import Connection, ConnectionBroken, RequestFailed
from raftlite.commands.node import _tls_settings
from raftlite.core.raft_types import Role
from raftlite.core.wire import (
    AddRequest, AssignRequest, FailureResponse, RemoveRequest, ResponseReader, TransferRequest, WeightRequest,
    encode_handshake, encode_request,
)
from raftlite.io.admin import AdminClient, AdminError, parse_address
from raftlite.io.tls_roles import CertificateRole, Operation, certificate_roles
from raftlite.io.transport import PEER_AUTH_MAGIC, PEER_MAGIC
from tls_cluster import TlsCluster, client_context, node_tls_settings

NODE, ADMIN, CLIENT = "raftlite-node", "raftlite-admin", "raftlite-client"


def _subject(*units: str, common_name: str = "x") -> dict:
    return {"subject": tuple((("organizationalUnitName", unit),) for unit in units)
            + (((("commonName", common_name),),))}


# -- the mapping, without a cluster -------------------------------------------------------

@pytest.mark.timeout(10)
def test_organizational_units_map_to_roles_and_roles_to_operations():
    client = certificate_roles(_subject(CLIENT), require_roles=False)
    assert client.roles == {CertificateRole.CLIENT} and client.marked
    assert [op for op in Operation if client.allows(op)] == [Operation.CLIENT]
    refusal = client.refusal(Operation.MEMBERSHIP)
    assert "CN=x, OU=raftlite-client" in refusal and "node or admin role" in refusal and "OU=raftlite-admin" in refusal

    admin = certificate_roles(_subject(ADMIN), require_roles=True)
    assert {op for op in Operation if admin.allows(op)} == {Operation.ADMIN, Operation.CLIENT, Operation.MEMBERSHIP}
    assert "needs the node role" in admin.refusal(Operation.PEER)
    node = certificate_roles(_subject(NODE), require_roles=True)
    assert all(node.allows(op) for op in Operation)

    # Several OUs: their grants add up; other OUs (a department, say) are ignored.
    both = certificate_roles(_subject("accounting", CLIENT, ADMIN), require_roles=True)
    assert both.roles == {CertificateRole.CLIENT, CertificateRole.ADMIN} and both.allows(Operation.MEMBERSHIP)

    # A misspelt role grants nothing, even where role-less certificates count as a node's.
    typo = certificate_roles(_subject("raftlite-nodes"), require_roles=False)
    assert typo.marked and not typo.roles and not typo.allows(Operation.CLIENT)
    assert "unknown role OU=raftlite-nodes" in typo.refusal(Operation.CLIENT)

    # No role: a node's (compatibility), or nothing when roles are required.
    assert certificate_roles(_subject("Testing cert #1"), require_roles=False).roles == {CertificateRole.NODE}
    unmarked = certificate_roles(_subject("Testing cert #1"), require_roles=True)
    assert not unmarked.roles and "--tls-require-roles" in unmarked.refusal(Operation.CLIENT)
    assert not certificate_roles(None, require_roles=True).allows(Operation.CLIENT)


class _Addresses:
    def __init__(self) -> None:
        self.address = "127.0.0.1:1"
        self.peers: dict[int, str] = {}


@pytest.mark.timeout(10)
def test_the_session_refuses_membership_requests_without_reaching_the_actor():
    refusal = certificate_roles(_subject(CLIENT), require_roles=False).refusal(Operation.MEMBERSHIP)
    session = DqliteSession(addresses=_Addresses(), message_bytes_max=1 << 20, heartbeat_timeout_ms=1000,
                            membership_refused=refusal)
    requests = [AddRequest(node_id=4, address="127.0.0.1:2"), AssignRequest(node_id=2, role=1), RemoveRequest(node_id=2),
                TransferRequest(node_id=2), WeightRequest(weight=3)]
    effects = session.receive_bytes(encode_handshake(1) + b"".join(encode_request(r) for r in requests))
    while session.ready:
        effects += session.step()
    assert not [e for e in effects if isinstance(e, SubmitRequest)]
    reader = ResponseReader(message_bytes_max=1 << 20)
    reader.feed(b"".join(e.data for e in effects if isinstance(e, SendBytes)))
    answers = [reader.next_response() for _ in requests]
    assert all(isinstance(a, FailureResponse) and a.code == SQLITE_AUTH == 23 for a in answers)
    assert [a.message.split()[0] for a in answers] == ["ADD", "ASSIGN", "REMOVE", "TRANSFER", "WEIGHT"]
    assert all("needs the node or admin role" in a.message for a in answers)
    assert session.metadata.weight == 0


# -- on a cluster ----------------------------------------------------------------------

def _terms(cluster) -> dict[int, int]:
    return {n: node.status()["term"] for n, node in cluster.nodes.items()}


def _members(cluster) -> list:
    with _connect(cluster, cluster.node_context) as connection:
        return sorted((member.node_id, member.role) for member in connection.cluster())


def _connect(cluster, context) -> Connection:
    """A client connection to the leader, presenting `context`'s certificate."""
    return Connection.connect(cluster.address(cluster.leader()), timeout_s=10, ssl_context=context)


def _admin_status(cluster, context, node_id: int):
    async def ask():
        client = AdminClient(cluster.address(node_id), ssl_context=context, timeout_seconds=5)
        try:
            return await client.request(StatusRequest())
        finally:
            await client.close()
    return asyncio.run(ask())


def _knock_as_peer(cluster, context, node_id: int, magic: bytes) -> bytes:
    """Opens a TLS connection with `context`, sends a peer word and a hello's worth of
    bytes; what the node sent back before closing."""
    host, port = parse_address(cluster.address(node_id))
    with socket.create_connection((host, port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls_socket:
            tls_socket.sendall(magic + bytes(64))
            received = b""
            try:
                while chunk := tls_socket.recv(4096):
                    received += chunk
            except (ConnectionResetError, ssl.SSLError):
                pass   # closed with our hello unread: a reset instead of an end of stream
            return received


def _wait(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _start(tmp_path, authority, *, unit: str | None, require_roles: bool = False) -> TlsCluster:
    tls, ca_file = node_tls_settings(authority, tmp_path, unit=unit, require_roles=require_roles)
    cluster = TlsCluster(tmp_path, tls)
    cluster.ca_file = ca_file
    cluster.node_context = client_context(authority, ca_file, "operator-node", unit=unit)
    return cluster.start()


@pytest.mark.real_cluster
@pytest.mark.timeout(60)
def test_each_role_gets_only_its_operations(tmp_path):
    authority = trustme.CA()
    cluster = _start(tmp_path, authority, unit=NODE)   # the nodes' own peer links and joins: the node role works
    try:
        client = client_context(authority, cluster.ca_file, "app", unit=CLIENT)
        admin = client_context(authority, cluster.ca_file, "operator", unit=ADMIN)
        leader = cluster.leader()
        others = sorted(n for n in cluster.nodes if n != leader)

        # A client certificate reads and writes, through any node ...
        db = raftlite.connect(cluster.addresses, database="roles", ssl_context=client, autocommit=True)
        db.execute("CREATE TABLE t (k)")
        db.execute("INSERT INTO t VALUES (1), (2)")
        assert db.execute("SELECT count(*) FROM t").fetchall() == [(2,)]
        db.close()
        members, terms = _members(cluster), _terms(cluster)
        assert members == [(1, Role.VOTER), (2, Role.VOTER), (3, Role.VOTER)]
        # ... but its membership requests are refused, with the role it lacks, and not run.
        with _connect(cluster, client) as connection:
            assert connection.leader().node_id == leader and len(connection.cluster()) == 3
            for attempt in (lambda: connection.add(9, "127.0.0.1:1"), lambda: connection.assign(others[0], 1),
                            lambda: connection.remove(others[0]), lambda: connection.transfer(others[0]),
                            lambda: connection.weight(7)):
                with pytest.raises(RequestFailed) as refused:
                    attempt()
                assert refused.value.code == SQLITE_AUTH
                assert "refused: the certificate CN=app, OU=raftlite-client" in refused.value.message
                assert "needs the node or admin role (OU=raftlite-node or OU=raftlite-admin)" in refused.value.message
            assert connection.leader().node_id == leader   # the connection stays usable
        time.sleep(0.5)
        assert _members(cluster) == members and _terms(cluster) == terms and cluster.leader() == leader

        # A client certificate on the admin word and on the peer words is closed, and counted.
        stats = cluster.nodes[leader].runtime.transport.stats
        refused_before, auth_failures_before = stats["role_refused"], stats["peer_auth_failures"]
        with pytest.raises(AdminError):
            _admin_status(cluster, client, leader)
        for magic in (PEER_AUTH_MAGIC, PEER_MAGIC):
            assert _knock_as_peer(cluster, client, leader, magic) == b""   # no answer to its hello: closed at once
        assert stats["role_refused"] == refused_before + 3
        assert stats["peer_auth_failures"] == auth_failures_before   # refused before the key was even asked for
        assert cluster.nodes[leader].status()["connections"]["role_refused"] == refused_before + 3
        time.sleep(0.3)
        assert _terms(cluster) == terms and cluster.leader() == leader

        # An admin certificate: the admin protocol, ASSIGN and TRANSFER, but not the peer protocol.
        assert isinstance(_admin_status(cluster, admin, leader), StatusResponse)
        assert _knock_as_peer(cluster, admin, leader, PEER_AUTH_MAGIC) == b""
        assert stats["role_refused"] == refused_before + 4
        with _connect(cluster, admin) as connection:
            connection.assign(others[1], int(Role.STANDBY))
            _wait(lambda: dict(_members(cluster))[others[1]] == Role.STANDBY)
            connection.assign(others[1], int(Role.VOTER))
            _wait(lambda: dict(_members(cluster))[others[1]] == Role.VOTER)
            connection.transfer(others[0])
        _wait(lambda: cluster.leader() == others[0])

        # A node certificate may do all of it (its peer use is the cluster itself).
        assert isinstance(_admin_status(cluster, cluster.node_context, others[0]), StatusResponse)
        with _connect(cluster, cluster.node_context) as connection:
            connection.transfer(leader)
        _wait(lambda: cluster.leader() == leader)

        # A misspelt role grants nothing, not even the client protocol.
        typo = client_context(authority, cluster.ca_file, "typo", unit="raftlite-clients")
        with pytest.raises(ConnectionBroken):
            with Connection.connect(cluster.address(leader), timeout_s=5, ssl_context=typo) as connection:
                connection.leader()
    finally:
        cluster.close()


@pytest.mark.real_cluster
@pytest.mark.timeout(60)
def test_certificates_without_a_role_keep_full_access_with_one_warning(tmp_path, caplog):
    authority = trustme.CA()
    caplog.set_level(logging.WARNING, logger="raftlite.io.tls_roles")
    cluster = _start(tmp_path, authority, unit=None)   # trustme's OU "Testing cert #...": no raftlite role
    try:
        leader = cluster.leader()
        target = min(n for n in cluster.nodes if n != leader)
        old_style = client_context(authority, cluster.ca_file, "old-client", unit=None)
        with _connect(cluster, old_style) as connection:
            connection.transfer(target)   # as before roles: a membership request is run
        _wait(lambda: cluster.leader() == target)
        assert isinstance(_admin_status(cluster, old_style, target), StatusResponse)
        warnings = [r for r in caplog.records if "a certificate without a role connected" in r.getMessage()]
        # Once per node start (each node sees its peers' certificates), however many connections.
        assert 1 <= len(warnings) <= len(cluster.nodes)
        assert len({r.getMessage().split(":")[0] for r in warnings}) == len(warnings)
        assert "--tls-require-roles" in warnings[0].getMessage()
    finally:
        cluster.close()


@pytest.mark.real_cluster
@pytest.mark.timeout(60)
def test_required_roles_refuse_a_certificate_without_one(tmp_path):
    authority = trustme.CA()
    cluster = _start(tmp_path, authority, unit=NODE, require_roles=True)
    try:
        leader = cluster.leader()
        with _connect(cluster, client_context(authority, cluster.ca_file, "app", unit=CLIENT)) as connection:
            assert connection.leader().node_id == leader
        stats = cluster.nodes[leader].runtime.transport.stats
        refused_before = stats["role_refused"]
        old_style = client_context(authority, cluster.ca_file, "old-client", unit=None)
        with pytest.raises(ConnectionBroken):
            with _connect(cluster, old_style) as connection:
                connection.leader()
        with pytest.raises(AdminError):
            _admin_status(cluster, old_style, leader)
        assert stats["role_refused"] == refused_before + 2
    finally:
        cluster.close()


@pytest.mark.timeout(10)
def test_the_require_roles_option(tmp_path, capsys):
    code = raftlite_main(["node", "--id", "1", "--address", "127.0.0.1:1", "--data-dir", str(tmp_path / "n"),
                          "--tls-require-roles"])
    assert code == 2
    assert "--tls-require-roles needs TLS" in capsys.readouterr().err
    assert not (tmp_path / "n").exists()
    node_tls_settings(trustme.CA(), tmp_path)   # writes ca.pem, chain.pem, key.pem
    files = {"tls_cert": str(tmp_path / "chain.pem"), "tls_key": str(tmp_path / "key.pem"), "tls_ca": str(tmp_path / "ca.pem")}
    for flag in (True, False):
        assert _tls_settings(argparse.Namespace(**files, tls_require_roles=flag)).require_roles is flag
