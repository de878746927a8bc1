"""dqlite-protocol clients in the simulator, through the same session the real server
runs (actors/dqlite_session.py).

    host = DqliteHost(sim)
    connection = host.connect(node_id)
    connection.call(OpenRequest(name="app"))                     # -> DbResponse(db_id=0)
    connection.call(ExecSqlRequest(db_id=0, sql="CREATE TABLE t (a)", params=()))

Why: io/wire_server.py is only an asyncio shell around `DqliteSession`; this module is
the simulator's shell around it, so a client that speaks dqlite's wire protocol (bytes,
encoded with core/wire.py) runs against a simulated cluster under simulated time and
faults, deterministically. sim/client.py, by contrast, sends actor messages directly.

How a connection maps onto the simulator:
- bytes the client sends reach the session at once (the session runs "on the node");
  its `SubmitRequest`s become `Simulation.submit` to the node, as one client session
  (they arrive after `client_latency_ms`, and may be lost if the node is down);
- the node's replies reach the session through `Simulation.reply_observers`, and its
  answers are appended to the connection's inbox (`take()`); a paged result is sent
  whole (there is no socket to fill), every request is answered as soon as it is ready;
- `StartTimer` is a `Simulation.call_later` (TRANSFER's polls and deadline);
- closing the connection (either side) tells the node `SessionClosed`; a crash or a
  restart of the node kills the connection (its process is gone), as a TCP reset would.

The simulation's existing runs do not use this module, so their traces are unchanged.
"""

from collections.abc import Mapping

from ..actors.contract import Client
from ..actors.dqlite_session import (
    CloseConnection, DqliteSession, EndSession, NodeMetadata, SendBytes, StartTimer, SubmitRequest,
)
from ..core.wire import (
    MESSAGE_BYTES_MAX_DEFAULT, ResponseReader, RowsResponse, encode_handshake, encode_request,
)
from .simulation import Simulation

__all__ = ["DqliteHost", "SimDqliteConnection", "SimConnectionClosed", "node_address"]


class SimConnectionClosed(Exception):
    """The connection closed (the node closed it, or the node crashed or restarted)."""


def node_address(node_id: int) -> str:
    """The dqlite address a simulated node is known by."""
    return f"node{node_id}:9001"


class _NodeAddresses:
    """What the session reports for LEADER and CLUSTER when the configuration has no
    address for a member."""

    def __init__(self, node_id: int, node_ids: tuple[int, ...]) -> None:
        self.address = node_address(node_id)
        self.peers: Mapping[int, str] = {node: node_address(node) for node in node_ids if node != node_id}


class DqliteHost:
    """Attaches dqlite sessions to a simulation's nodes: one per `connect`."""

    def __init__(self, sim: Simulation, *, message_bytes_max: int = MESSAGE_BYTES_MAX_DEFAULT,
                 heartbeat_timeout_ms: int = 15_000, transfer_timeout_ms: float = 10_000.0) -> None:
        self.sim = sim
        self.message_bytes_max = message_bytes_max
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.transfer_timeout_ms = transfer_timeout_ms
        self.metadata = {node: NodeMetadata() for node in sim.node_ids}   # node-local, as on real nodes
        self.connections: dict[Client, "SimDqliteConnection"] = {}
        sim.reply_observers.append(self._on_reply)

    def node_of(self, address: str) -> int:
        """The node a dqlite address names (as LEADER and CLUSTER answer it)."""
        for node in self.sim.node_ids:
            if node_address(node) == address:
                return node
        raise KeyError(f"no simulated node at {address!r}")

    def connect(self, node_id: int) -> "SimDqliteConnection":
        """A new connection to `node_id`, its handshake sent."""
        self.sim._next_client += 1   # client ids are the simulation's, shared with its other clients
        client = Client(self.sim._next_client)
        session = DqliteSession(
            addresses=_NodeAddresses(node_id, self.sim.node_ids), message_bytes_max=self.message_bytes_max,
            heartbeat_timeout_ms=self.heartbeat_timeout_ms, transfer_timeout_ms=self.transfer_timeout_ms,
            metadata=self.metadata[node_id],
        )
        connection = SimDqliteConnection(self, node_id, client, session)
        self.connections[client] = connection
        connection.send(encode_handshake())
        return connection

    def _on_reply(self, node_id: int, client: Client, response) -> None:
        connection = self.connections.get(client)
        if connection is not None and connection.node_id == node_id:
            connection._on_reply(response)


class SimDqliteConnection:
    """One client connection to a simulated node: bytes in with `send`, the node's bytes
    out with `take`, or one request at a time with `call`."""

    def __init__(self, host: DqliteHost, node_id: int, client: Client, session: DqliteSession) -> None:
        self.host = host
        self.sim = host.sim
        self.node_id = node_id
        self.client = client
        self.session = session
        self.incarnation = self.sim.nodes[node_id].incarnation
        self.inbox = bytearray()
        self.closed = False
        self._responses = ResponseReader(message_bytes_max=1 << 30)

    @property
    def alive(self) -> bool:
        """Open, and the node process it was opened to still runs."""
        if not self.closed and self.sim.nodes[self.node_id].incarnation != self.incarnation:
            self._reset()
        return not self.closed

    # -- the client's side -----------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Bytes from the client (b"" closes the client's side)."""
        if not self.alive:
            raise SimConnectionClosed(f"the connection to node {self.node_id} is closed")
        self._apply(self.session.receive_bytes(data))
        self._answer_ready()

    def take(self) -> bytes:
        """The bytes the node sent since the last call."""
        data = bytes(self.inbox)
        self.inbox.clear()
        return data

    def call(self, request, *, timeout_ms: float = 5_000.0, step_ms: float = 1.0):
        """Sends `request` and runs the simulation until its whole answer is in (a
        paged result's batches joined into one RowsResponse). Raises TimeoutError after
        `timeout_ms` of simulated time, SimConnectionClosed if the connection dies."""
        self.send(encode_request(request))
        deadline = self.sim.now_ms + timeout_ms
        batches: list[RowsResponse] = []
        while True:
            self._responses.feed(self.take())
            while (response := self._responses.next_response()) is not None:
                if not isinstance(response, RowsResponse):
                    return response
                batches.append(response)
                if not response.more:
                    return RowsResponse(columns=response.columns,
                                        rows=tuple(row for batch in batches for row in batch.rows))
            if not self.alive:
                raise SimConnectionClosed(f"the connection to node {self.node_id} closed while waiting")
            if self.sim.now_ms >= deadline:
                raise TimeoutError(f"no answer from node {self.node_id} within {timeout_ms:.0f} ms")
            self.sim.run_for(step_ms)

    def close(self) -> None:
        """The client closes the connection: the node hears SessionClosed."""
        if self.alive:
            self.closed = True
            self._apply(self.session.close())

    # -- the session's side ----------------------------------------------------------------

    def _on_reply(self, response) -> None:
        token = self.session.awaiting_reply
        if token is None or not self.alive:
            return
        self._apply(self.session.on_reply(token, response))
        self._answer_ready()

    def _on_timer(self, token: int) -> None:
        if self.alive:
            self._apply(self.session.on_timer(token))
            self._answer_ready()

    def _answer_ready(self) -> None:
        """No socket to wait for: every batch and every ready request goes at once."""
        while not self.closed and (self.session.sending_rows or self.session.ready):
            if self.session.sending_rows:
                self._apply(self.session.next_rows())
            else:
                self._apply(self.session.step())

    def _apply(self, effects: list) -> None:
        for effect in effects:
            match effect:
                case SendBytes(data=data):
                    self.inbox += data
                case SubmitRequest(message=message):
                    self.sim.submit(self.node_id, message, client=self.client)
                case StartTimer(token=token, delay_ms=delay_ms):
                    self.sim.call_later(delay_ms, self._on_timer, token)
                case CloseConnection():
                    self.closed = True
                    self._apply(self.session.close())
                case EndSession(message=message):
                    self.sim.submit(self.node_id, message, client=self.client)

    def _reset(self) -> None:
        """The node's process died: the connection is gone and so is the session's state
        on the node (nothing to tell it)."""
        self.closed = True
        self.session.close()
