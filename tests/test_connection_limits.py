"""Running out of file descriptors (issue 14, item 3): real node processes started with a
low RLIMIT_NOFILE, flooded with dqlite clients. Before the limit existed, 400 clients
against `ulimit -n 300` stopped the leader (an SQLite open failed inside the actor)."""

import asyncio
import select
import socket
import time

import pytest
from raftlite.actors.config import Config
from raftlite.actors.database_requests import SQLITE_CANTOPEN
from raftlite.client.connection import Connection, ConnectionBroken, RequestFailed
from raftlite.core.wire import FailureResponse, ResponseReader, encode_handshake
from raftlite.io.admin import ADMIN_MAGIC
from raftlite.io.transport import (
    FD_RESERVE,
    FDS_PER_CLIENT,
    Transport,
    TransportSettings,
    client_sockets_default,
)
from raftlite.process_cluster import ProcessCluster

pytestmark = pytest.mark.timeout(120)

NOFILE = 256
FLOOD = 600


def test_a_client_flood_past_the_descriptor_limit_is_refused_and_no_node_stops(tmp_path):
    limit = client_sockets_default(NOFILE)
    cluster = ProcessCluster(tmp_path, 3)
    for node in cluster.nodes.values():
        node.nofile_limit = NOFILE
    clients: list[Connection] = []
    try:
        cluster.start()
        leader = cluster.wait_leader()
        address = cluster.address(leader)
        admitted = refused = 0
        for number in range(FLOOD):
            client = Connection.connect(address, timeout_s=10)
            clients.append(client)
            try:
                # Each admitted client also holds an SQLite connection (two descriptors).
                db = client.open("flood")
                client.exec_sql(db, "CREATE TABLE IF NOT EXISTS t (n INTEGER)")
                admitted += 1
            except RequestFailed as failure:
                assert failure.code == SQLITE_CANTOPEN and "too many client connections" in failure.message, failure
                refused += 1
            except ConnectionBroken as error:   # closed at once: refused too, and never a hang
                refused += 1
                assert "closed" in str(error) or "reset" in str(error), error
        assert admitted == limit and refused == FLOOD - limit, (admitted, refused)
        assert all(node.alive for node in cluster.nodes.values()), cluster.logs()

        for client in clients:
            client.close()
        clients.clear()

        # Sockets that never say what they are: past pending_sockets_max closed at once,
        # or, beyond the process's descriptors, accepted and closed by the event loop.
        host, port = address.rsplit(":", 1)
        silent = [socket.create_connection((host, int(port)), timeout=10) for _ in range(FLOOD)]
        try:
            closed_at_once = sum(_closed_within(sock, 1.0) for sock in silent)
            assert closed_at_once >= FLOOD - 32 - limit, closed_at_once
            assert all(node.alive for node in cluster.nodes.values()), cluster.logs()
        finally:
            for sock in silent:
                sock.close()

        with Connection.connect(address, timeout_s=10) as client:
            db = client.open("flood")
            client.exec_sql(db, "INSERT INTO t VALUES (42)")
            rows = client.query_sql(db, "SELECT count(*) FROM t WHERE n = 42").rows
            assert [tuple(row) for row in rows] == [(1,)]
        assert all(node.alive for node in cluster.nodes.values()), cluster.logs()
        logs = "\n".join(node.log_text() for node in cluster.nodes.values())
        assert "stopping the node" not in logs
        assert "refused a client connection: all" in logs
    finally:
        for client in clients:
            client.close()
        cluster.close()


def _closed_within(sock: socket.socket, timeout_s: float) -> bool:
    """Whether the server closed `sock` (end of file or reset) within `timeout_s`."""
    if not select.select([sock], [], [], timeout_s)[0]:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionError:
        return True


def test_the_default_limit_follows_the_descriptor_limit():
    assert client_sockets_default(1024) == (1024 - FD_RESERVE) // FDS_PER_CLIENT == 298
    assert client_sockets_default(FD_RESERVE) == 1   # never zero: one client can always try


async def _read_until_closed(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    received = b""
    async with asyncio.timeout(timeout_s):
        while chunk := await reader.read(65536):
            received += chunk
    return received


def test_limits_and_the_handshake_timeout_on_one_transport():
    """Past client_sockets_max a dqlite client reads one FAILURE and the end of the
    connection; past admin_sockets_max an admin connection is closed; a connection that
    sends no first word is closed after handshake_timeout_ms. Slots free up on close."""
    async def scenario():
        async def hold_until_closed(reader, writer, *version):
            writer.write(b"served")
            await writer.drain()
            await reader.read()   # until the client closes

        config = Config(election_timeout_ms=1000.0, heartbeat_interval_ms=100.0)
        settings = TransportSettings(client_sockets_max=2, admin_sockets_max=1, pending_sockets_max=2,
                                     handshake_timeout_ms=300.0)
        node = Transport(node_id=1, address="127.0.0.1:0", config=config, on_peer_message=lambda *_: None,
                         on_admin_connection=hold_until_closed, client_protocol_handler=hold_until_closed,
                         settings=settings)
        host, port = (await node.listen()).rsplit(":", 1)
        opened = []

        async def connect(word: bytes):
            reader, writer = await asyncio.open_connection(host, int(port))
            opened.append(writer)
            writer.write(word)
            return reader, writer

        try:
            for _ in range(2):
                reader, _writer = await connect(encode_handshake())
                assert await reader.readexactly(6) == b"served"
            reader, _writer = await connect(encode_handshake())
            answer = ResponseReader()
            answer.feed(await _read_until_closed(reader, 5))
            failure = answer.next_response()
            assert isinstance(failure, FailureResponse) and failure.code == SQLITE_CANTOPEN, failure
            assert "too many client connections" in failure.message and answer.next_response() is None
            assert node.stats["clients_refused"] == 1

            reader, _writer = await connect(ADMIN_MAGIC)
            assert await reader.readexactly(6) == b"served"
            reader, _writer = await connect(ADMIN_MAGIC)
            assert await _read_until_closed(reader, 5) == b"" and node.stats["admin_refused"] == 1

            # A client that closes frees its slot for the next.
            opened[0].close()
            await asyncio.sleep(0.2)
            reader, _writer = await connect(encode_handshake())
            assert await reader.readexactly(6) == b"served"

            # Silent after connecting: closed once the handshake timeout passes; past
            # pending_sockets_max, closed at once.
            started = time.monotonic()
            silent = [(await connect(b""))[0] for _ in range(3)]
            assert await _read_until_closed(silent[2], 0.2) == b"" and node.stats["pending_refused"] == 1
            for reader in silent[:2]:
                assert await _read_until_closed(reader, 5) == b""
            assert 0.25 < time.monotonic() - started < 3
        finally:
            for writer in opened:
                writer.close()
            await node.close()

    asyncio.run(scenario())
