"""Peer authentication (issue 14, build item 1): the handshake of raftlite.io.peer_auth
as pure functions (good key, wrong key, replayed and reflected transcripts, truncated
messages, rotation), the key file, and real `raftlite node` processes: a forged
HeartbeatResponse of term 1000 moves no term in a keyed cluster (it does in an unkeyed
one: the forgery is real), a peer with the wrong key is refused while the cluster goes
on, and a key rotation node by node keeps writes committing."""

import asyncio
import os
import re
import secrets
import socket
import stat
import struct
import subprocess
import sys
import time

import pytest

from raftlite.actors.config import Config
from raftlite.core.peer_codec import RAFT_CODEC
from raftlite.core.raft_messages import HeartbeatResponse
from raftlite.io.admin import parse_address
from raftlite.io.peer_auth import (
    ANSWER_BYTES, ClusterKeys, PeerAuthError, create_cluster_key_file, dialler_finish, dialler_hello, key_id,
    load_cluster_key_file, server_answer, server_finish,
)
from raftlite.io.transport import PEER_AUTH_MAGIC, PEER_MAGIC, Transport, TransportSettings

from raftlite.client.connection import RequestFailed

from cluster_helpers import LEADERSHIP_LOST, TABLE_SQL, ClusterError, ProcessCluster

OLD, NEW, OTHER = (ClusterKeys((secrets.token_bytes(32),)) for _ in range(3))
DIALLER, SERVER = 2, 1


def handshake(dialler_keys: ClusterKeys, server_keys: ClusterKeys, expected_server: int = SERVER) -> tuple[int, bytes]:
    """A whole handshake in memory: (the id the server authenticated, the chosen key id)."""
    hello, dialler_state = dialler_hello(dialler_keys, DIALLER)
    answer, server_state = server_answer(server_keys, SERVER, hello)
    proof = dialler_finish(dialler_state, answer, expected_server)
    return server_finish(server_state, proof), server_state.chosen_id


# -- the handshake, without processes ----------------------------------------------------------

def test_the_same_key_authenticates_both_ends():
    assert handshake(OLD, OLD) == (DIALLER, key_id(OLD.keys[0]))


def test_a_wrong_key_is_refused_by_both_ends():
    hello, dialler_state = dialler_hello(OTHER, DIALLER)
    answer, server_state = server_answer(OLD, SERVER, hello)
    assert server_state is None and answer[0] != 0 and len(answer) == ANSWER_BYTES
    with pytest.raises(PeerAuthError, match="none of this node's cluster keys"):
        dialler_finish(dialler_state, answer, SERVER)


def test_knowing_the_key_id_is_not_knowing_the_key():
    # An eavesdropper copies a real hello's key id; the server answers, but without the
    # key no proof passes, and the server's answer cannot be used by a dialler lacking it.
    genuine_hello, _ = dialler_hello(OLD, DIALLER)
    forged_hello = struct.pack("<Q", 7) + secrets.token_bytes(32) + genuine_hello[40:]
    answer, server_state = server_answer(OLD, SERVER, forged_hello)
    assert server_state is not None
    with pytest.raises(PeerAuthError, match="proof of the cluster key is wrong"):
        server_finish(server_state, secrets.token_bytes(32))
    # Nor may a server without the key answer for it.
    pretend = ClusterKeys((secrets.token_bytes(32),))
    _, honest = dialler_hello(OLD, DIALLER)
    forged_answer = bytes([0]) + struct.pack("<Q", SERVER) + secrets.token_bytes(32) + key_id(OLD.keys[0]) + secrets.token_bytes(32)
    with pytest.raises(PeerAuthError, match="proof of the cluster key is wrong"):
        dialler_finish(honest, forged_answer, SERVER)
    assert pretend.by_id(key_id(OLD.keys[0])) is None


def test_a_replayed_transcript_is_refused():
    hello, dialler_state = dialler_hello(OLD, DIALLER)
    answer, _ = server_answer(OLD, SERVER, hello)
    recorded_proof = dialler_finish(dialler_state, answer, SERVER)
    # The recording replayed to the server: it picks a fresh nonce, so the old proof fails.
    _, fresh_state = server_answer(OLD, SERVER, hello)
    with pytest.raises(PeerAuthError):
        server_finish(fresh_state, recorded_proof)
    # The recorded answer replayed to a new dialler (a fresh nonce) fails too.
    _, new_dialler = dialler_hello(OLD, DIALLER)
    with pytest.raises(PeerAuthError):
        dialler_finish(new_dialler, answer, SERVER)


def test_the_servers_proof_reflected_back_is_refused():
    hello, _ = dialler_hello(OLD, DIALLER)
    answer, server_state = server_answer(OLD, SERVER, hello)
    with pytest.raises(PeerAuthError):
        server_finish(server_state, answer[-32:])


def test_the_node_ids_are_bound():
    with pytest.raises(PeerAuthError, match="is node 1, not node 3"):
        handshake(OLD, OLD, expected_server=3)
    hello, dialler_state = dialler_hello(OLD, DIALLER)
    answer, server_state = server_answer(OLD, SERVER, hello)
    proof = dialler_finish(dialler_state, answer, SERVER)
    tampered = hello[:0] + struct.pack("<Q", 9) + hello[8:]   # the claimed dialler id changed in flight
    _, tampered_state = server_answer(OLD, SERVER, tampered)
    with pytest.raises(PeerAuthError):
        server_finish(tampered_state, proof)


def test_truncated_messages_are_refused():
    hello, dialler_state = dialler_hello(OLD, DIALLER)
    for cut in (0, 10, len(hello) - 1):
        with pytest.raises(PeerAuthError, match="truncated"):
            server_answer(OLD, SERVER, hello[:cut])
    answer, server_state = server_answer(OLD, SERVER, hello)
    with pytest.raises(PeerAuthError, match="truncated"):
        dialler_finish(dialler_state, answer[:-1], SERVER)
    proof = dialler_finish(dialler_state, answer, SERVER)
    with pytest.raises(PeerAuthError, match="truncated"):
        server_finish(server_state, proof[:16])
    too_many_ids = hello[:40] + bytes([9]) + hello[41:]
    with pytest.raises(PeerAuthError):
        server_answer(OLD, SERVER, too_many_ids)


def test_rotation_accepts_the_previous_key_and_prefers_the_current():
    rotating = ClusterKeys(NEW.keys + OLD.keys)
    assert handshake(rotating, OLD) == (DIALLER, key_id(OLD.keys[0]))
    assert handshake(OLD, rotating) == (DIALLER, key_id(OLD.keys[0]))
    assert handshake(rotating, rotating) == (DIALLER, key_id(NEW.keys[0]))
    assert handshake(NEW, rotating) == (DIALLER, key_id(NEW.keys[0]))
    with pytest.raises(PeerAuthError):
        handshake(NEW, OLD)


def test_the_key_file(tmp_path):
    path = str(tmp_path / "cluster.key")
    created = create_cluster_key_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(created.keys[0]) == 32 and load_cluster_key_file(path) == created
    with pytest.raises(FileExistsError):
        create_cluster_key_file(path)   # never overwrites a key
    rotating = tmp_path / "rotating.key"
    rotating.write_text(f"# current\n{NEW.keys[0].hex()}\n\n{OLD.keys[0].hex()}  # previous\n")
    assert load_cluster_key_file(str(rotating)) == ClusterKeys(NEW.keys + OLD.keys)
    for text, message in (("zz\n", "line 1: not a hex key"), ("# nothing\n", "holds no key"),
                          ("ab\n", "at least 16 bytes"), ("\n".join([NEW.keys[0].hex()] * 3), "1 or 2 keys")):
        rotating.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_cluster_key_file(str(rotating))
    with pytest.raises(ValueError, match="does not exist"):
        load_cluster_key_file(str(tmp_path / "missing"))


# -- two transports in one process ---------------------------------------------------------------

class BytesCodec:
    def encode(self, message):
        return bytes(message)

    def decode(self, data):
        return bytes(data)


def test_transports_deliver_only_from_authenticated_peers_under_their_proven_id():
    async def scenario():
        received: list[tuple[int, bytes]] = []

        def transport(node_id, keys, on_message=lambda *_: None):
            return Transport(node_id=node_id, address="127.0.0.1:0", config=Config(), on_peer_message=on_message,
                             codec=BytesCodec(), cluster_keys=keys,
                             settings=TransportSettings(reconnect_delay_ms=20.0, reconnect_delay_max_ms=100.0))

        server = transport(2, OLD, lambda src, message: received.append((src, message)))
        address = await server.listen()
        member, outsider, misdirected = transport(1, OLD), transport(3, OTHER), transport(4, OLD)
        try:
            member.set_peers({2: address})
            outsider.set_peers({2: address})
            misdirected.set_peers({5: address})   # node 2 listens there, not node 5
            for _ in range(100):
                member.send(2, b"from-1")
                outsider.send(2, b"from-3")
                misdirected.send(5, b"from-4")
                await asyncio.sleep(0.02)
            assert received and set(received) == {(1, b"from-1")}
            assert server.stats["peer_auth_failures"] >= 1 and outsider.stats["peer_auth_failures"] >= 1
            assert misdirected.stats["peer_auth_failures"] >= 1 and not misdirected.peer_connected(5)
            assert member.peer_connected(2) and not outsider.peer_connected(2)
        finally:
            for each in (member, outsider, misdirected, server):
                await each.close()

    asyncio.run(scenario())


def test_authentication_failures_are_counted_and_warned_about_once_a_minute_per_host(caplog):
    transport = Transport(node_id=1, address="127.0.0.1:0", config=Config(), on_peer_message=lambda *_: None)
    with caplog.at_level("WARNING", logger="raftlite.io.transport"):
        for _ in range(500):
            transport._auth_failed("10.0.0.1", "refused a peer connection")
        transport._auth_failed("10.0.0.2", "refused a peer connection")
        transport.auth_warned_at["10.0.0.1"] -= 61   # a minute later
        transport._auth_failed("10.0.0.1", "refused a peer connection")
    warnings = [record.getMessage() for record in caplog.records]
    assert transport.stats["peer_auth_failures"] == 502
    assert len(warnings) == 3, warnings
    assert "[from 10.0.0.1] (499 more from 10.0.0.1 since the last warning)" in warnings[2]


# -- real node processes ------------------------------------------------------------------------

def forged_heartbeat_response(claimed_id: int, term: int = 1000) -> bytes:
    payload = RAFT_CODEC.encode(HeartbeatResponse(term=term, sequence=1, last_index=1))
    return PEER_MAGIC + struct.pack("<Q", claimed_id) + struct.pack(">IB", len(payload), 1) + payload


def send_forgeries(address: str, packet: bytes, seconds: float) -> int:
    """Open connection after connection to `address`, each sending `packet`; how many."""
    host, port = parse_address(address)
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1) as connection:
                connection.sendall(packet)
                sent += 1
        except OSError:
            pass
        time.sleep(0.01)
    return sent


def terms(cluster: ProcessCluster) -> dict[int, int]:
    return {node_id: status["term"] for node_id, status in cluster.statuses().items()}


def dial_with_key(address: str, keys: ClusterKeys, dialler_id: int, expected_server: int) -> str:
    """Run the dialler's side of the handshake by hand; how it ended."""
    host, port = parse_address(address)
    with socket.create_connection((host, port), timeout=5) as connection:
        hello, state = dialler_hello(keys, dialler_id)
        connection.sendall(PEER_AUTH_MAGIC + hello)
        answer = b""
        while len(answer) < ANSWER_BYTES:
            part = connection.recv(ANSWER_BYTES - len(answer))
            if not part:
                return "closed"
            answer += part
        try:
            dialler_finish(state, answer, expected_server)
        except PeerAuthError as error:
            return str(error)
        return "authenticated"


def write_surely(cluster: ProcessCluster, key: str, timeout_s: float = 30.0) -> None:
    """Write `key`, again after an outcome-unknown leadership change (a restart's hand-over
    can cut a write short); the write is idempotent."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            cluster.execute("INSERT OR REPLACE INTO kv VALUES (?, 'x')", (key,))
            return
        except RequestFailed as error:
            if error.code != LEADERSHIP_LOST or time.monotonic() > deadline:
                raise


@pytest.fixture(scope="module")
def keyed_cluster(tmp_path_factory):
    cluster = ProcessCluster(tmp_path_factory.mktemp("keyed") / "cluster")
    try:
        cluster.start()
        cluster.execute(TABLE_SQL)
        yield cluster
    finally:
        cluster.close()


@pytest.mark.timeout(90)
def test_a_forged_heartbeat_moves_no_term_in_a_keyed_cluster(keyed_cluster):
    cluster = keyed_cluster
    leader, status = cluster.wait_leader_status()
    before = terms(cluster)
    follower = min(node_id for node_id in cluster.nodes if node_id != leader)
    sent = send_forgeries(cluster.address(leader), forged_heartbeat_response(follower), 2.0)
    assert sent > 20
    time.sleep(0.5)
    assert terms(cluster) == before and before[leader] < 1000
    assert cluster.wait_leader() == leader
    cluster.execute("INSERT INTO kv VALUES ('after-forgery', 'x')")
    # Refused, and warned about once, not once per forgery.
    log = cluster.nodes[leader].log_text()
    assert log.count("refused an unauthenticated peer connection") == 1, log[-3000:]
    # ... and every refusal counted, in `raftlite status` (text and JSON).
    assert cluster.nodes[leader].status()["connections"]["peer_auth_failures"] >= sent
    shown = subprocess.run([sys.executable, "-m", "raftlite", "status", cluster.address(leader)],
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"connections: .*peer_auth_failures (\d+)", shown.stdout), shown.stdout
    assert int(re.search(r"peer_auth_failures (\d+)", shown.stdout).group(1)) >= sent


@pytest.mark.timeout(60)
def test_a_handshake_that_stalls_is_closed_within_seconds(keyed_cluster):
    leader = keyed_cluster.wait_leader()
    host, port = parse_address(keyed_cluster.address(leader))
    with socket.create_connection((host, port), timeout=10) as connection:
        connection.sendall(PEER_AUTH_MAGIC + b"\x02\x00")   # a hello cut short, then silence
        started = time.monotonic()
        assert connection.recv(1) == b""
        waited = time.monotonic() - started
    assert 2.0 < waited < 6.0, waited


@pytest.mark.timeout(60)
def test_the_forged_heartbeat_does_depose_an_unkeyed_leader(tmp_path):
    """The control: the same packet against nodes without a key takes the leader to term 1000."""
    cluster = ProcessCluster(tmp_path / "cluster", cluster_key=False)
    try:
        cluster.start()
        leader = cluster.wait_leader()
        follower = min(node_id for node_id in cluster.nodes if node_id != leader)
        send_forgeries(cluster.address(leader), forged_heartbeat_response(follower), 0.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and cluster.nodes[leader].status()["term"] < 1000:
            time.sleep(0.05)
        assert cluster.nodes[leader].status()["term"] >= 1000
    finally:
        cluster.close()


@pytest.mark.timeout(90)
def test_a_peer_with_the_wrong_key_is_refused(keyed_cluster, tmp_path):
    cluster = keyed_cluster
    leader, _ = cluster.wait_leader_status()
    before = terms(cluster)
    own = load_cluster_key_file(str(cluster.cluster_key_file))
    assert dial_with_key(cluster.address(leader), own, 2 if leader != 2 else 3, leader) == "authenticated"
    assert "none of this node's cluster keys" in dial_with_key(cluster.address(leader), OTHER, 9, leader)
    # A real node process with another key asks to join (the admin protocol is open, as
    # in dqlite): it is added as a spare, but the leader cannot authenticate it, so it
    # never receives a message and never becomes a voter; the cluster goes on.
    wrong_key = tmp_path / "wrong.key"
    create_cluster_key_file(str(wrong_key))
    intruder = cluster.add_node(9, data_dir=tmp_path / "node9")
    intruder.cluster_key_file = wrong_key
    intruder.join = (cluster.address(leader),)
    intruder.start(expect_up=False)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "cannot authenticate peer 9" not in cluster.nodes[leader].log_text():
            time.sleep(0.1)
        assert "the peer holds none of this node's cluster keys" in cluster.nodes[leader].log_text()
        assert "refused a peer connection: the dialler holds none" in intruder.log_text()
        cluster.execute("INSERT INTO kv VALUES ('after-wrong-key', 'x')")
        voters = {m["id"] for m in cluster.wait_leader_status()[1]["members"] if m["role"] == "voter"}
        assert voters == {1, 2, 3}
        assert {n: t for n, t in terms(cluster).items() if n in before} == before
    finally:
        intruder.kill()
        del cluster.nodes[9]


@pytest.mark.timeout(180)
def test_a_key_rotation_node_by_node_keeps_the_cluster_up(tmp_path):
    cluster = ProcessCluster(tmp_path / "cluster")
    try:
        cluster.start()
        cluster.execute(TABLE_SQL)
        old_hex = load_cluster_key_file(str(cluster.cluster_key_file)).keys[0].hex()
        new_hex = secrets.token_bytes(32).hex()
        written = 0
        for phase, text in (("new,old", f"{new_hex}\n{old_hex}\n"), ("new", f"{new_hex}\n")):
            for node_id, node in sorted(cluster.nodes.items()):
                key_file = tmp_path / f"node{node_id}-{phase.replace(',', '-')}.key"
                key_file.write_text(text)
                key_file.chmod(0o600)
                node.cluster_key_file = key_file
                node.terminate()
                node.start()
                cluster.wait_voters(set(cluster.nodes), 30)
                cluster.wait_converged(30)
                written += 1
                write_surely(cluster, f"{phase}-{node_id}")
        assert len(cluster.kv_rows(cluster.wait_leader())) == written
        # No node ever failed to authenticate another during the rotation.
        for node in cluster.nodes.values():
            assert "cannot authenticate" not in node.log_text(), node.log_text()
            assert "refused a peer" not in node.log_text(), node.log_text()
        leader = cluster.wait_leader()
        # The old key is retired: a peer holding only it is refused now.
        assert "none of this node's cluster keys" in dial_with_key(
            cluster.address(leader), ClusterKeys((bytes.fromhex(old_hex),)), 7, leader)
        assert dial_with_key(cluster.address(leader), ClusterKeys((bytes.fromhex(new_hex),)), 7, leader) == "authenticated"
    except ClusterError:
        raise ClusterError(cluster.logs()) from None
    finally:
        cluster.close()
