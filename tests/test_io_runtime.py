"""The real runtime: NodeRuntime drives actors over real TCP and real files.

Real time here, so every wait is bounded and timeouts are generous (elections take up to
two election timeouts of 1000 ms). Every test checks that no descriptor is left open.
"""

import asyncio
import os
import socket
import struct

import apsw
import pytest

from raftlite.actors.config import Config
from raftlite.actors.contract import StatusRequest, StatusResponse
from raftlite.actors.database import (
    DatabaseNode, Execute, ExecuteResult, Open, Opened, Query, QueryResult, SessionClosed,
)
from raftlite.actors.raft_node import Propose, ProposeResult, RaftNode, Read, ReadResult
from raftlite.core.invariant import InvariantViolation
from raftlite.core.peer_codec import RAFT_CODEC
from raftlite.core.raft_messages import AppendRequest, HeartbeatRequest
from raftlite.core.raft_types import Configuration, Entry, EntryKind, Role
from raftlite.io.admin import ADMIN_MAGIC, AdminClient, AdminError, AdminFailure
from raftlite.io.runtime import DataDirectoryInUse, NodeRuntime, RuntimeState
from raftlite.io.transport import (
    DQLITE_PROTOCOL_VERSION, DQLITE_PROTOCOL_VERSION_LEGACY, PEER_MAGIC, TlsSettings, Transport, TransportSettings,
)

CONFIG = Config(election_timeout_ms=1000.0, heartbeat_interval_ms=100.0)


def open_descriptors():
    return set(os.listdir("/proc/self/fd"))


def run(coroutine):
    """asyncio.run, and fail if the coroutine left a socket or file open."""
    before = open_descriptors()
    result = asyncio.run(coroutine)
    leaked = open_descriptors() - before
    assert not leaked, f"descriptors left open: {sorted(leaked)}"
    return result


async def eventually(predicate, what, timeout_seconds=15.0):
    for _ in range(int(timeout_seconds / 0.02)):
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_seconds} s waiting for {what}")


# -- a cluster of NodeRuntimes in this process ------------------------------------------------


class Cluster:
    def __init__(self, tmp_path, make_actor, size=3, **runtime_options):
        self.tmp_path = tmp_path
        self.make_actor = make_actor
        self.node_ids = list(range(1, size + 1))
        self.runtime_options = runtime_options
        self.runtimes: dict[int, NodeRuntime] = {}
        self.addresses: dict[int, str] = {}

    def _runtime(self, node_id, address):
        return NodeRuntime(
            node_id=node_id, address=address, data_dir=str(self.tmp_path / f"node{node_id}"),
            actor=self.make_actor(node_id), peers=self.addresses, config=CONFIG, **self.runtime_options,
        )

    async def start(self):
        # Free ports without a race: bind port 0 first, then tell everyone the addresses.
        for node_id in self.node_ids:
            runtime = self._runtime(node_id, "127.0.0.1:0")
            await runtime.start()
            self.runtimes[node_id] = runtime
            self.addresses[node_id] = runtime.address
        for runtime in self.runtimes.values():
            runtime.set_peers(self.addresses)

    async def stop(self, node_id):
        await self.runtimes[node_id].stop()

    async def restart(self, node_id):
        runtime = self._runtime(node_id, self.addresses[node_id])
        await runtime.start()
        self.runtimes[node_id] = runtime

    async def close(self):
        for runtime in self.runtimes.values():
            await runtime.stop()

    def running(self):
        return [n for n, runtime in self.runtimes.items() if runtime.state == RuntimeState.RUNNING]

    def leader(self):
        leaders = [n for n in self.running() if self.runtimes[n].status().get("role") == "leader"]
        return leaders[0] if len(leaders) == 1 else None

    def status(self, node_id):
        return self.runtimes[node_id].status()

    def failures(self):
        return {n: r.failure for n, r in self.runtimes.items() if r.failure is not None or r.halt_reason}


async def request_leader(cluster, message, attempts=50):
    """Send to whoever leads; retry only refusals that say nothing was applied."""
    for _ in range(attempts):
        leader = await eventually(cluster.leader, "a leader")
        try:
            async with AdminClient(cluster.addresses[leader]) as client:
                response = await client.request(message)
        except AdminError:
            await asyncio.sleep(0.1)
            continue
        if getattr(response, "kind", None) == "not-leader" or getattr(response, "code", None) == 10250:
            await asyncio.sleep(0.1)
            continue
        return leader, response
    raise AssertionError(f"no leader answered {message!r}")


def raft_actor(node_id):
    return RaftNode(bootstrap=Configuration.of({1: Role.VOTER, 2: Role.VOTER, 3: Role.VOTER}))


@pytest.mark.timeout(90)
def test_three_raft_nodes_elect_replicate_and_survive_a_follower_and_a_leader_stopping(tmp_path):
    async def scenario():
        cluster = Cluster(tmp_path, raft_actor)
        await cluster.start()
        try:
            leader = await eventually(cluster.leader, "a first leader")
            results = [(await request_leader(cluster, Propose(data=b"command %d" % n)))[1] for n in range(10)]
            assert all(isinstance(result, ProposeResult) for result in results)
            last = results[-1].index
            await eventually(lambda: all(cluster.status(n)["applied"] >= last for n in cluster.node_ids), "every node applied")
            digests = {cluster.runtimes[n].actor.state_machine.read() for n in cluster.node_ids}
            assert len(digests) == 1 and next(iter(digests))[0] == 10

            # A follower stops; the two others go on; it restarts from its directory and catches up.
            follower = next(n for n in cluster.node_ids if n != leader)
            await cluster.stop(follower)
            more = [(await request_leader(cluster, Propose(data=b"while away %d" % n)))[1] for n in range(5)]
            await cluster.restart(follower)
            target = more[-1].index
            await eventually(lambda: cluster.status(follower).get("applied", 0) >= target, "the restarted follower to catch up")
            assert cluster.runtimes[follower].actor.state_machine.read() == cluster.runtimes[leader].actor.state_machine.read()

            # The leader stops: a new one is elected and serves linearizable reads and writes.
            await cluster.stop(leader)
            new_leader, response = await request_leader(cluster, Propose(data=b"after the leader left"))
            assert new_leader != leader and isinstance(response, ProposeResult)
            _, read = await request_leader(cluster, Read())
            assert isinstance(read, ReadResult) and read.value[0] == 16
            async with AdminClient(cluster.addresses[follower]) as client:
                status = await client.request(StatusRequest())
            assert isinstance(status, StatusResponse) and status.node_id == follower
            assert not cluster.failures()
        finally:
            await cluster.close()

    run(scenario())


def database_actor(node_id):
    return DatabaseNode(bootstrap=Configuration.of({1: Role.VOTER, 2: Role.VOTER, 3: Role.VOTER}))


def rows_in(path):
    # SQLite's own VFS by name: the simulator, run earlier in this process, makes its
    # Python VFS the default, and through a Python VFS a read-only connection's close
    # reports the exclusive lock SQLite tries (and may not get) as an error.
    connection = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY, vfs="unix")
    try:
        return list(connection.execute("SELECT k, v FROM t ORDER BY k"))
    finally:
        connection.close()


@pytest.mark.timeout(120)
def test_three_database_nodes_replicate_sql_through_the_admin_protocol(tmp_path):
    async def scenario():
        cluster = Cluster(tmp_path, database_actor, client_closed_message=SessionClosed())
        await cluster.start()
        try:
            await eventually(cluster.leader, "a first leader")
            _, opened = await request_leader(cluster, Open(database="app"))
            assert opened == Opened(database="app")
            _, created = await request_leader(cluster, Execute(database="app", sql="CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)"))
            assert isinstance(created, ExecuteResult), created
            for key in range(20):
                _, inserted = await request_leader(cluster, Execute(database="app", sql="INSERT INTO t VALUES (?, ?)", params=(key, b"v%d" % key)))
                assert isinstance(inserted, ExecuteResult) and inserted.rows_affected == 1, inserted
            leader = cluster.leader()

            follower = next(n for n in cluster.node_ids if n != leader)
            await cluster.stop(follower)
            for key in range(20, 30):
                await request_leader(cluster, Execute(database="app", sql="INSERT INTO t VALUES (?, ?)", params=(key, b"late")))
            await cluster.restart(follower)
            commit = cluster.status(cluster.leader())["commit"]
            await eventually(lambda: cluster.status(follower).get("applied", 0) >= commit, "the follower to catch up")
            assert len(rows_in(os.path.join(cluster.runtimes[follower].scratch_dir, "app.sqlite"))) == 30

            await cluster.stop(leader)
            new_leader, inserted = await request_leader(cluster, Execute(database="app", sql="INSERT INTO t VALUES (100, 'new leader')"))
            assert new_leader != leader and isinstance(inserted, ExecuteResult)
            _, result = await request_leader(cluster, Query(database="app", sql="SELECT count(*), max(k) FROM t"))
            assert isinstance(result, QueryResult)
            assert (result.columns, result.rows) == (("count(*)", "max(k)"), ((31, 100),))
            assert not cluster.failures()
        finally:
            await cluster.close()

    run(scenario())


# -- one node's runtime semantics, with a small actor --------------------------------------------


class ProbeActor:
    """Records what the runtime hands it; Propose(data) requests drive it."""

    def __init__(self):
        self.events = []

    def on_start(self, ctx):
        self.ctx = ctx
        self.events.append(("start", sorted(ctx.files), ctx.peers, os.path.isdir(ctx.scratch_dir)))
        ctx.set_timer("once", 30)
        ctx.set_timer("cancelled", 30)
        ctx.cancel_timer("cancelled")
        ctx.set_timer("re-armed", 5000)
        ctx.set_timer("re-armed", 60)   # replaces the first: fires once, at 60 ms

    def on_timer(self, timer):
        self.events.append(("timer", timer))

    def on_message(self, src, message):
        match message:
            case Propose(data=b"boom"):
                raise InvariantViolation("the probe was told to break")
            case Propose(data=b"halt"):
                self.ctx.halt("told to halt")
                self.ctx.reply(src, ProposeResult(index=0, term=0))   # never sent: the node halted
            case Propose(data=b"write"):
                self.ctx.write("w", "probe-file", 0, b"payload", durable=True)
                self.ctx.read("r", "probe-file", 0, 100)
                self.pending_client = src
            case Propose(data=data):
                self.ctx.reply(src, ProposeResult(index=len(data), term=int(self.ctx.now_ms() >= 0), result=self.ctx.wall_clock_ms() > 1.7e12))
            case StatusRequest():
                self.ctx.reply(src, StatusResponse(node_id=self.ctx.node_id, status={"events": len(self.events)}))

    def on_io_done(self, token, result):
        self.events.append(("io", token, result.error, result.data))
        if token == "r":
            self.ctx.reply(self.pending_client, ProposeResult(index=len(result.data), term=0, result=result.data))

    def status(self):
        return {"events": len(self.events)}


@pytest.mark.timeout(30)
def test_timers_disk_replies_and_halt(tmp_path):
    async def scenario():
        (tmp_path / "old-file").write_bytes(b"kept")
        actor = ProbeActor()
        runtime = NodeRuntime(node_id=7, address="127.0.0.1:0", data_dir=str(tmp_path), actor=actor, peers={7: "x:1", 8: "127.0.0.1:1"})
        await runtime.start()
        try:
            assert actor.events[0] == ("start", ["old-file"], (8,), True)
            timers = lambda: [event for event in actor.events if event[0] == "timer"]
            await eventually(lambda: len(timers()) >= 2, "two timers")
            await asyncio.sleep(0.1)
            assert timers() == [("timer", "once"), ("timer", "re-armed")]
            async with AdminClient(runtime.address) as client:
                assert await client.request(Propose(data=b"abc")) == ProposeResult(index=3, term=1, result=True)
                answer = await client.request(Propose(data=b"write"))
                assert answer.result == b"payload"
                assert ("io", "w", None, None) in actor.events
                with pytest.raises(AdminError):
                    await client.request(Propose(data=b"halt"), timeout_seconds=1.0)
            await runtime.wait_stopped()
            assert runtime.halt_reason == "told to halt" and runtime.failure is None
        finally:
            await runtime.stop()
        assert (tmp_path / "probe-file").read_bytes() == b"payload"

    run(scenario())


@pytest.mark.timeout(30)
def test_an_exception_in_a_handler_stops_the_node_loudly(tmp_path, caplog):
    async def scenario():
        runtime = NodeRuntime(node_id=1, address="127.0.0.1:0", data_dir=str(tmp_path), actor=ProbeActor())
        await runtime.start()
        try:
            async with AdminClient(runtime.address) as client:
                with pytest.raises(AdminError):
                    await client.request(Propose(data=b"boom"), timeout_seconds=2.0)
            await asyncio.wait_for(runtime.wait_stopped(), 5)
            assert isinstance(runtime.failure, InvariantViolation)
            with pytest.raises(AdminError):   # nothing listens any more
                await AdminClient(runtime.address, timeout_seconds=1.0).request(StatusRequest())
        finally:
            await runtime.stop()

    run(scenario())
    assert "raised; stopping the node" in caplog.text


@pytest.mark.timeout(30)
def test_one_node_per_data_directory(tmp_path):
    async def scenario():
        first = NodeRuntime(node_id=1, address="127.0.0.1:0", data_dir=str(tmp_path), actor=ProbeActor())
        await first.start()
        try:
            second = NodeRuntime(node_id=2, address="127.0.0.1:0", data_dir=str(tmp_path), actor=ProbeActor())
            with pytest.raises(DataDirectoryInUse):
                await second.start()
        finally:
            await first.stop()
        third = NodeRuntime(node_id=3, address="127.0.0.1:0", data_dir=str(tmp_path), actor=ProbeActor())
        await third.start()   # free again once the first stopped
        await third.stop()

    run(scenario())


# -- the transport ------------------------------------------------------------------------------


class Inbox:
    def __init__(self):
        self.messages = []

    def __call__(self, src, message):
        self.messages.append((src, message))


async def transports(count, config=CONFIG, settings=TransportSettings(), tls=None, **options):
    inboxes = [Inbox() for _ in range(count)]
    nodes = [
        Transport(node_id=n + 1, address="127.0.0.1:0", config=config, on_peer_message=inboxes[n], settings=settings, tls=tls, **options)
        for n in range(count)
    ]
    for node in nodes:
        await node.listen()
    addresses = {n + 1: node.address for n, node in enumerate(nodes)}
    for node in nodes:
        node.set_peers(addresses)
    return nodes, inboxes


def big_append(size_bytes):
    return AppendRequest(term=1, prev_index=0, prev_term=0, entries=(Entry(1, 1, EntryKind.NORMAL, b"x" * size_bytes),), commit=0)


@pytest.mark.timeout(60)
def test_heartbeats_overtake_a_20_mb_append():
    async def scenario():
        (sender, receiver), (_, inbox) = await transports(2)
        try:
            assert sender.send(2, HeartbeatRequest(term=1, commit=0, sequence=0))
            await eventually(lambda: inbox.messages, "the connection")
            assert sender.send(2, big_append(20 << 20))
            for _ in range(10_000):
                if sender.stats["fragments_sent"] >= 3:
                    break
                await asyncio.sleep(0)
            # The append is on its way; heartbeats queued now go out between its fragments.
            for sequence in range(1, 11):
                assert sender.send(2, HeartbeatRequest(term=1, commit=0, sequence=sequence))
            await eventually(lambda: len(inbox.messages) == 12, "every message", 30)
            kinds = [type(message).__name__ for _, message in inbox.messages]
            assert kinds == ["HeartbeatRequest"] * 11 + ["AppendRequest"], kinds
            assert inbox.messages[-1][1] == big_append(20 << 20)
            assert sender.stats["fragments_sent"] >= (20 << 20) // TransportSettings().fragment_bytes
        finally:
            await sender.close()
            await receiver.close()

    run(scenario())


@pytest.mark.timeout(30)
def test_limits_bounded_queue_oversized_messages_and_reconnect_with_backoff():
    async def scenario():
        config = Config(election_timeout_ms=1000.0, heartbeat_interval_ms=100.0, outbound_queue_messages_max=10,
                        message_bytes_max=2 << 20, append_batch_bytes_max=1 << 20, transaction_bytes_max=1 << 20)
        inbox = Inbox()
        # A peer that is not listening yet: its address is reserved and closed.
        reserved = socket.socket()
        reserved.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{reserved.getsockname()[1]}"
        reserved.close()
        sender = Transport(node_id=1, address="127.0.0.1:0", config=config, on_peer_message=Inbox(),
                           settings=TransportSettings(reconnect_delay_ms=20, reconnect_delay_max_ms=100))
        await sender.listen()
        sender.set_peers({2: address})
        receiver = None
        try:
            sent = [sender.send(2, HeartbeatRequest(term=1, commit=0, sequence=n)) for n in range(25)]
            assert sent == [True] * 10 + [False] * 15 and sender.stats["dropped_queue_full"] == 15
            assert not sender.send(2, big_append(3 << 20)) and sender.stats["dropped_too_large"] == 1
            assert not sender.send(9, HeartbeatRequest(term=1, commit=0, sequence=0))
            await asyncio.sleep(0.3)   # several failed attempts
            receiver = Transport(node_id=2, address=address, config=config, on_peer_message=inbox)
            await receiver.listen()
            await eventually(lambda: len(inbox.messages) == 10, "the queued messages after the peer came up")
            assert [message.sequence for _, message in inbox.messages] == list(range(10))
            assert all(src == 1 for src, _ in inbox.messages)
            # The peer goes away and comes back: the link notices and reconnects.
            await receiver.close()
            receiver = Transport(node_id=2, address=address, config=config, on_peer_message=inbox)
            await receiver.listen()
            await eventually(lambda: sender.stats["connections_dialled"] >= 2, "a reconnection")
            await eventually(lambda: sender.peer_connected(2), "the new connection")
            assert sender.send(2, HeartbeatRequest(term=2, commit=0, sequence=99))
            await eventually(lambda: inbox.messages[-1][1].sequence == 99, "a message on the new connection")
        finally:
            await sender.close()
            if receiver is not None:
                await receiver.close()

    run(scenario())


async def closed_by_server(reader):
    """True once the server closed the connection (an EOF, or a reset when our unread
    bytes were still in its buffer)."""
    try:
        async with asyncio.timeout(5):
            return await reader.read(100) == b""
    except ConnectionResetError:
        return True


async def close_writer(writer):
    writer.close()
    try:
        await writer.wait_closed()
    except ConnectionError:
        pass   # the server reset it first


async def raw_connection(address):
    host, port = address.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


@pytest.mark.timeout(30)
def test_first_word_routing_and_hostile_peers():
    async def scenario():
        seen_versions = []

        async def dqlite_handler(reader, writer, version, roles):   # roles: None without TLS
            seen_versions.append(version)
            assert roles is None
            writer.write(b"dqlite here")
            await writer.drain()

        inbox = Inbox()
        # Peers may send max(message_bytes_max, 2 * transaction_bytes_max): 1 MiB here.
        config = Config(election_timeout_ms=1000.0, heartbeat_interval_ms=100.0, message_bytes_max=1 << 20,
                        append_batch_bytes_max=1 << 19, transaction_bytes_max=1 << 19)
        node = Transport(node_id=1, address="127.0.0.1:0", config=config, on_peer_message=inbox, client_protocol_handler=dqlite_handler)
        await node.listen()
        try:
            for version in (DQLITE_PROTOCOL_VERSION, DQLITE_PROTOCOL_VERSION_LEGACY):
                reader, writer = await raw_connection(node.address)
                writer.write(version.to_bytes(8, "little"))
                assert await asyncio.wait_for(reader.read(100), 5) == b"dqlite here"
                writer.close()
                await writer.wait_closed()
            assert seen_versions == [DQLITE_PROTOCOL_VERSION, DQLITE_PROTOCOL_VERSION_LEGACY]

            # Unknown words, and the admin word with no admin server: closed.
            for word in (b"GET / HT", ADMIN_MAGIC):
                reader, writer = await raw_connection(node.address)
                writer.write(word)
                assert await closed_by_server(reader)
                await close_writer(writer)

            # A peer sending garbage inside a well-formed frame: dropped, the stream goes on.
            reader, writer = await raw_connection(node.address)
            good = RAFT_CODEC.encode(HeartbeatRequest(term=3, commit=0, sequence=1))
            writer.write(PEER_MAGIC + struct.pack("<Q", 5))
            writer.write(struct.pack(">IB", 4, 1) + b"\x01\xc1\xc1\xc1")
            writer.write(struct.pack(">IB", len(good), 1) + good)
            await eventually(lambda: inbox.messages, "the good message")
            assert inbox.messages == [(5, HeartbeatRequest(term=3, commit=0, sequence=1))] and node.stats["undecodable"] == 1
            # A frame above message_bytes_max: closed before its body is read.
            writer.write(struct.pack(">IB", (1 << 20) + 1, 1))
            assert await closed_by_server(reader)
            await close_writer(writer)
            # Fragments adding up to more than the limit: closed too.
            reader, writer = await raw_connection(node.address)
            writer.write(PEER_MAGIC + struct.pack("<Q", 6))
            for _ in range(3):
                writer.write(struct.pack(">IB", 400_000, 2) + bytes(400_000))
            assert await closed_by_server(reader)
            await close_writer(writer)
        finally:
            await node.close()

    run(scenario())


@pytest.mark.timeout(30)
def test_admin_protocol_answers_a_bad_request_and_keeps_the_session(tmp_path):
    async def scenario():
        runtime = NodeRuntime(node_id=1, address="127.0.0.1:0", data_dir=str(tmp_path), actor=ProbeActor())
        await runtime.start()
        try:
            reader, writer = await raw_connection(runtime.address)
            writer.write(ADMIN_MAGIC + struct.pack(">I", 3) + b"\x01\xc1\xc1")
            (length,) = struct.unpack(">I", await reader.readexactly(4))
            from raftlite.io.admin import ADMIN_CODEC

            assert isinstance(ADMIN_CODEC.decode(await reader.readexactly(length)), AdminFailure)
            request = ADMIN_CODEC.encode(StatusRequest())
            writer.write(struct.pack(">I", len(request)) + request)
            (length,) = struct.unpack(">I", await reader.readexactly(4))
            assert ADMIN_CODEC.decode(await reader.readexactly(length)).node_id == 1
            writer.close()
            await writer.wait_closed()
        finally:
            await runtime.stop()

    run(scenario())


# -- mutual TLS ---------------------------------------------------------------------------------


@pytest.fixture
def certificates(tmp_path):
    trustme = pytest.importorskip("trustme", reason="trustme is a test extra")
    authority = trustme.CA()
    files = {}
    for name in ("node", "intruder"):
        issuer = authority if name == "node" else trustme.CA()   # the intruder's CA is not the cluster's
        certificate = issuer.issue_cert("127.0.0.1", "localhost")
        files[name] = tmp_path / f"{name}.pem"
        certificate.private_key_and_cert_chain_pem.write_to_path(str(files[name]))
        files[f"{name}-ca"] = tmp_path / f"{name}-ca.pem"
        issuer.cert_pem.write_to_path(str(files[f"{name}-ca"]))
    return files


def tls_from(files, name):
    return TlsSettings.from_files(
        certificate_chain_file=str(files[name]), private_key_file=str(files[name]), ca_file=str(files[f"{name}-ca"]),
    )


@pytest.mark.timeout(30)
def test_mutual_tls_between_peers_and_for_admin_clients(certificates, tmp_path):
    async def scenario():
        tls = tls_from(certificates, "node")
        (first, second), (_, inbox) = await transports(2, tls=tls)
        runtime = NodeRuntime(node_id=1, address="127.0.0.1:0", data_dir=str(tmp_path / "n"), actor=ProbeActor(), tls=tls)
        await runtime.start()
        try:
            assert first.send(2, HeartbeatRequest(term=1, commit=0, sequence=1))
            await eventually(lambda: inbox.messages, "a message over TLS")
            async with AdminClient(runtime.address, ssl_context=tls.client_context) as client:
                assert (await client.request(StatusRequest())).node_id == 1
            # Plain TCP, and TLS with a certificate from another CA, are both refused.
            with pytest.raises(AdminError):
                await AdminClient(runtime.address, timeout_seconds=2.0).request(StatusRequest())
            intruder = tls_from(certificates, "intruder")
            with pytest.raises(AdminError):
                await AdminClient(runtime.address, ssl_context=intruder.client_context, timeout_seconds=2.0).request(StatusRequest())
        finally:
            await runtime.stop()
            await first.close()
            await second.close()

    run(scenario())


def test_tls_settings_from_missing_files_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="TLS files unusable"):
        TlsSettings.from_files(certificate_chain_file=str(tmp_path / "no.pem"), private_key_file=str(tmp_path / "no.pem"), ca_file=str(tmp_path / "ca.pem"))


def test_bad_addresses_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        NodeRuntime(node_id=1, address="localhost", data_dir=str(tmp_path), actor=ProbeActor())
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        NodeRuntime(node_id=1, address="127.0.0.1:0", data_dir=str(tmp_path), actor=ProbeActor(), peers={2: "127.0.0.1:99999"})
