"""A raftlite node on the real runtime: the embedding API (`raftlite.Node`) and what
`raftlite node` runs.

Theory of operation
-------------------
A `Node` puts together the replicated-SQLite actor (`DatabaseNode`), the asyncio runtime
that drives it (`NodeRuntime`: real files, TCP) and the dqlite protocol server
(`WireServer`), all on one address.

Start-up follows dqlite's rules (docs/architecture.md §5):
- a node bootstraps a new one-node cluster only when no `join` addresses are given and
  its data directory was never initialized (it holds no raft state);
- a node given `join` addresses and never initialized asks the cluster to take it in,
  over the admin protocol (raftlite.io.admin): it finds the leader through any address,
  sends ADD (as a spare, with its address), then ASSIGN voter, which the leader answers
  once the node has caught up; until that is done it neither votes nor campaigns, and a
  join marker file keeps that so across restarts;
- ADD of an id that is already a member is refused: a node whose data was lost, started
  again under its old id, is refused and never votes (it might vote away entries its
  earlier self vouched for); it rejoins under a new id (docs/architecture.md §5);
- an initialized node just starts: its raft state says who it is; it never
  bootstraps again and never joins again (a `join` given to it is ignored, and logged).

Identity (raftlite.io.identity): the data directory records its node id, its cluster id
(a random UUID drawn at bootstrap; a joining node learns it from the node it joins
through, with `DescribeIdentity`, and records it before its ADD) and its member address.
Starting it under another id, or joining it to another cluster, raises IdentityMismatch
before anything runs. Two live nodes with one id: a node started at another address than
the recorded one first asks the recorded address (where the configuration, and so every
peer, reaches this id); if a live node of the same cluster answers there with the same
id, it refuses (IdentityMismatch). Members' addresses never change in the configuration,
so that is the one address a twin can be found at. A directory written before identity
files is adopted: the file is written at its first start, from the flags.

Addresses: `address` is where the node listens; `advertise` (default: `address`) is the
member address others dial, which goes into the configuration. It must be concrete: no
wildcard host, no port 0 (the configuration would name an address nobody can dial).

A join ends: until its ADD is taken it gives up after `join_timeout_s` (JoinFailed,
naming each address's last reason: unreachable, not a raftlite node, no answer, no
leader, refused), logging each distinct reason once; after the ADD, the promotion to
its role has JOIN_PROMOTION_TIMEOUT_S. A `join` address that is the node's own, or that
answers as this very process, is refused at once (IdentityMismatch).

Peer addresses travel in the raft configuration, so a node learns a new member's
address from the CONFIG entry that added it; a watcher keeps the transport's peer table
in step with the configuration.

Graceful stop (SIGTERM in `raftlite node`): a leader first hands leadership to a voter
and waits (bounded) for it to take over, so clients see a new leader at once instead
of after an election timeout; then everything is closed.
"""

import asyncio
import logging
import os
import uuid
from typing import Any, Callable, Mapping, Sequence

from ..actors.config import Config
from ..actors.contract import Client
from ..actors.database import LEADERSHIP_LOST, DatabaseNode, SessionClosed, SqlError
from ..actors.raft_node import (
    AllowVoting, ChangeMembership, ClientError, ClusterDescription, DescribeCluster, ProposeResult, TransferLeadership,
)
from ..core.raft import State
from ..core.raft_log_format import METADATA_FILES, segment_first_index, snapshot_index_of
from ..core.raft_types import Configuration, Role
from .admin import (
    AdminClient, AdminError, AdminFailure, AdminNoAnswer, AdminUnreachable, DescribeIdentity, IdentityDescription,
)
from .disk import RESERVED_PREFIX
from .identity import (
    IdentityMismatch, NodeIdentity, check_identity, check_node_addresses, new_cluster_id, read_identity,
    write_identity,
)
from .peer_auth import ClusterKeys
from .runtime import NodeRuntime, RuntimeState
from .transport import TlsSettings
from .wire_server import CLIENT_IDLE_TIMEOUT_DEFAULT_S, NodeMetadata, WireServer

__all__ = ["IdentityMismatch", "JoinFailed", "Node", "data_directory_initialized"]

log = logging.getLogger("raftlite.io.node")

PEER_WATCH_INTERVAL_S = 0.1
JOIN_RETRY_S = 0.5
JOIN_REQUEST_TIMEOUT_S = 10.0
JOIN_TIMEOUT_DEFAULT_S = 60.0
# How long a node started at a new address waits for its recorded address to answer, per
# try; a busy node that accepts but answers late is asked again until the window closes
# (a refused connection ends the probe at once: nothing listens there).
TWIN_PROBE_TIMEOUT_S = 2.0
TWIN_PROBE_WINDOW_S = 10.0
# A promotion waits for the node to catch up; generous, a big database takes a while.
JOIN_PROMOTION_TIMEOUT_S = 120.0
TRANSFER_WAIT_S = 5.0
# In the data directory while a join is under way (RESERVED_PREFIX keeps it out of
# raft storage): FRESH before any ADD was sent; ADD_MAY_HAVE_HAPPENED once one was.
JOIN_MARKER_FILE = RESERVED_PREFIX + "join-in-progress"
JOIN_MARKER_FRESH = "fresh"
JOIN_MARKER_ADD_MAY_HAVE_HAPPENED = "add-may-have-happened"


class JoinFailed(Exception):
    """The node could not be taken into the cluster (the reason says why)."""


def data_directory_initialized(data_dir: str) -> bool:
    """Whether the directory holds raft state (so the node must not bootstrap or join)."""
    try:
        names = os.listdir(data_dir)
    except FileNotFoundError:
        return False
    return any(
        name in METADATA_FILES or segment_first_index(name) is not None or snapshot_index_of(name) is not None
        for name in names
    )


class Node:
    """One raftlite node in the running asyncio loop.

        node = Node(node_id=1, address="127.0.0.1:9001", data_dir="/var/lib/raftlite/1")
        await node.start()
        ...
        await node.stop()

    Clients talk to it with dqlite's protocol (`raftlite.client`, the `dqlite` shell).
    """

    def __init__(
        self,
        *,
        node_id: int,
        address: str,
        data_dir: str,
        join: Sequence[str] = (),
        config: Config | None = None,
        tls: TlsSettings | None = None,
        disk_backend: str | None = None,
        role: Role = Role.VOTER,
        dial_via: Mapping[int, str] | None = None,
        advertise: str | None = None,
        join_timeout_s: float = JOIN_TIMEOUT_DEFAULT_S,
        cluster_key: bytes | Sequence[bytes] | None = None,
        client_idle_timeout_s: float = CLIENT_IDLE_TIMEOUT_DEFAULT_S,
    ) -> None:
        if node_id <= 0:
            raise ValueError(f"node id must be a positive number, got {node_id}")
        if not join_timeout_s > 0:
            raise ValueError(f"join timeout must be a positive number of seconds, got {join_timeout_s}")
        if not client_idle_timeout_s >= 0:
            raise ValueError(f"client idle timeout must be 0 (never) or a positive number of seconds, "
                             f"got {client_idle_timeout_s}")
        # A dqlite client connection idle this long is closed (0: never); io/wire_server.py.
        self.client_idle_timeout_s = client_idle_timeout_s
        check_node_addresses(address, advertise, join)
        # The member address: in the configuration, in ADD, in the identity file.
        self.advertised_address = advertise or address
        self.join_timeout_s = join_timeout_s
        # Random per process: a join that reaches this very process is told apart.
        self.instance = uuid.uuid4().hex
        self.cluster_id: str | None = None
        self._join_added = False
        # The cluster key (or current key first, then the previous one during a rotation):
        # peers prove it to each other (raftlite.io.peer_auth). A certificate the cluster
        # CA signed also goes to clients, so with TLS it cannot stand for a peer alone.
        self.cluster_keys = ClusterKeys.of(cluster_key) if cluster_key is not None else None
        if tls is not None and self.cluster_keys is None:
            raise ValueError("with TLS, peers must also prove the cluster key: give a cluster key (--cluster-key-file)")
        self.node_id = node_id
        self.address = address
        self.data_dir = data_dir
        self.join = tuple(join)
        self.config = (config or Config()).validate()
        self.tls = tls
        self.disk_backend = disk_backend
        self.role = role
        # {peer id: "host:port"} to dial instead of the peer's own address (a proxy in
        # between, e.g. toxiproxy or jepsen_like's LinkProxy); the peer keeps its identity.
        self.dial_via = dict(dial_via or {})
        self.metadata = NodeMetadata()
        self.runtime: NodeRuntime | None = None
        self.wire: WireServer | None = None
        self.tasks: list[asyncio.Task] = []
        self.joined = asyncio.Event()
        self.join_failed = asyncio.Event()
        self.join_error: BaseException | None = None
        # Addresses learned outside the configuration (a joining node must answer the
        # leader before it has the CONFIG entry that names it).
        self.learned_peers: dict[int, str] = {}

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving; IdentityMismatch (before anything runs) when the data directory
        is another node's, or a live node with this id answers at its recorded address."""
        recorded = read_identity(self.data_dir)
        initialized = data_directory_initialized(self.data_dir)
        if recorded is not None:
            check_identity(recorded, node_id=self.node_id, data_dir=self.data_dir)
            self.cluster_id = recorded.cluster_id
            if recorded.address != self.advertised_address:
                await self._refuse_if_running_elsewhere(recorded)
        joining = bool(self.join) and (not initialized or self._read_join_marker() is not None)
        if self.join and not joining:
            log.info("node %s: --join ignored: data directory %s is already initialized (its raft state says "
                     "which cluster it is in)", self.node_id, self.data_dir)
        if joining and self._read_join_marker() is None:
            self._write_join_marker(JOIN_MARKER_FRESH)
        bootstrap = None
        if not initialized and not self.join:
            bootstrap = Configuration.of({self.node_id: Role.VOTER}, {self.node_id: self.advertised_address})
            if recorded is None:
                # Recorded before any raft state exists: a crash in between bootstraps
                # again under the same cluster id.
                self.cluster_id = new_cluster_id()
                write_identity(self.data_dir, self._identity_record())
            log.info("node %s: bootstrapping a new cluster %s at %s", self.node_id, self.cluster_id,
                     self.advertised_address)
        elif initialized and recorded is None:
            write_identity(self.data_dir, self._identity_record())
            log.info("node %s: data directory %s has no identity file (an earlier raftlite wrote it): adopted as "
                     "node %s at %s, cluster id unknown", self.node_id, self.data_dir, self.node_id,
                     self.advertised_address)
        self.actor = _IdentifiedDatabaseNode(bootstrap=bootstrap, identity=self._describe_identity)
        # Until its own join completed, a joining node neither votes nor campaigns.
        self.actor.start_voting_blocked = joining
        self.wire = WireServer(
            None, message_bytes_max=self.config.message_bytes_max,
            heartbeat_timeout_ms=int(self.config.election_timeout_ms), metadata=self.metadata,
            idle_timeout_s=self.client_idle_timeout_s,
        )
        if self.cluster_keys is None:
            log.warning("node %s: no cluster key: any process that reaches %s can speak to it as a peer "
                        "(give --cluster-key-file)", self.node_id, self.address)
        self.runtime = NodeRuntime(
            node_id=self.node_id, address=self.address, data_dir=self.data_dir, actor=self.actor,
            config=self.config, tls=self.tls, client_protocol_handler=self.wire.serve,
            client_closed_message=SessionClosed(), disk_backend=self.disk_backend, cluster_keys=self.cluster_keys,
        )
        self.wire.runtime = self.runtime
        self.runtime.connection_stats.append(lambda: self.wire.stats)
        await self.runtime.start()
        self.tasks.append(asyncio.create_task(self._watch_peers(), name=f"peers-{self.node_id}"))
        if joining:
            self.tasks.append(asyncio.create_task(self._join_cluster(), name=f"join-{self.node_id}"))
        else:
            self.joined.set()

    async def stop(self, *, hand_over: bool = True) -> None:
        """Stop (idempotent). With `hand_over`, a leader first transfers leadership."""
        if self.runtime is None:
            return
        if hand_over and self.runtime.state == RuntimeState.RUNNING:
            await self._hand_over_leadership()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self.tasks.clear()
        await self.runtime.stop()

    async def wait_stopped(self) -> None:
        await self.runtime.wait_stopped()

    @property
    def running(self) -> bool:
        return self.runtime is not None and self.runtime.state == RuntimeState.RUNNING

    def status(self) -> dict[str, Any]:
        """Role, term, commit and applied index, leader, members and each follower's lag."""
        status = self.runtime.status() if self.runtime is not None else {"state": "new"}
        if self.running and getattr(self.actor, "raft", None) is not None:
            status.update(self.actor._full_status())
        return status

    # -- background tasks ----------------------------------------------------------------

    async def _watch_peers(self) -> None:
        """Keep the transport dialling every member of the configuration."""
        known: dict[int, str] | None = None
        if self.dial_via:
            log.info("node %s: dialling peers via %s", self.node_id, self.dial_via)
        while True:
            raft = getattr(self.actor, "raft", None)
            if raft is not None:
                peers = dict(self.learned_peers)
                peers.update(raft.configuration.addresses)
                peers.pop(self.node_id, None)
                peers.update({peer: address for peer, address in self.dial_via.items() if peer in peers})
                if peers != known:
                    known = peers
                    self.runtime.set_peers(peers)
            await asyncio.sleep(PEER_WATCH_INTERVAL_S)

    async def _join_cluster(self) -> None:
        """ADD this node (as a spare, with its address), then ASSIGN its role; then allow
        it to vote. The requests go over the admin protocol (raftlite.io.admin), as the
        actors' own `DescribeCluster` and `ChangeMembership`, the same requests the dqlite
        session turns LEADER, CLUSTER, ADD and ASSIGN into (actors/dqlite_session.py).
        The join marker remembers, across restarts, whether an ADD may have taken
        effect: only then is "already a member" this node's own earlier ADD. Otherwise
        the id belongs to a member whose data this node does not have (a wiped node
        restarted under its old id): it must never vote, and stays out.

        Until the ADD is taken, the join gives up after `join_timeout_s`; each address's
        reason for not getting through is logged when it first appears (not every try)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.join_timeout_s
        last_reasons: dict[str, str] = {}
        logged: set[tuple[str, str]] = set()
        promotion_bounded = False
        while loop.time() < deadline:
            for address in self.join:
                try:
                    await self._join_through(address, deadline)
                except (JoinFailed, IdentityMismatch) as error:
                    self._join_failed(error)
                    return
                except (_NotYet, OSError) as reason:   # OSError: the identity or marker file
                    last_reasons[address] = str(reason)
                    if (address, str(reason)) not in logged:
                        logged.add((address, str(reason)))
                        log.warning("node %s: cannot join through %s yet: %s", self.node_id, address, reason)
                    if self._join_added and not promotion_bounded:   # the promotion has its own bound
                        promotion_bounded = True
                        deadline = max(deadline, loop.time() + JOIN_PROMOTION_TIMEOUT_S)
                    continue
                log.info("node %s: joined the cluster as a %s", self.node_id, self.role.name.lower())
                self.joined.set()
                return
            await asyncio.sleep(max(0.0, min(JOIN_RETRY_S, deadline - loop.time())))
        what, waited_s = (("the promotion", JOIN_PROMOTION_TIMEOUT_S) if self._join_added
                          else ("joining", self.join_timeout_s))
        self._join_failed(JoinFailed(f"gave up {what} after {waited_s:g} s: " + "; ".join(
            f"{address}: {reason}" for address, reason in last_reasons.items())))

    def _join_failed(self, error: BaseException) -> None:
        self.join_error = error
        self.join_failed.set()
        log.error("node %s: %s", self.node_id, error)

    async def _join_through(self, address: str, deadline: float) -> None:
        """One try through `address`: find the leader, check the cluster, ADD, ASSIGN,
        allow voting. _NotYet when it did not get through (the reason)."""
        loop = asyncio.get_running_loop()
        timeout_s = JOIN_REQUEST_TIMEOUT_S if self._join_added else \
            max(0.1, min(JOIN_REQUEST_TIMEOUT_S, deadline - loop.time()))
        ssl_context = self._client_ssl()
        contacted = AdminClient(address, ssl_context=ssl_context, timeout_seconds=timeout_s)
        leader = contacted
        try:
            identity = await _ask(contacted, DescribeIdentity(), IdentityDescription)
            if identity.instance == self.instance:
                raise IdentityMismatch(f"--join {address} reaches this node itself: a node cannot join itself; "
                                       "give the address of a member of the cluster it should join")
            description = await _ask(contacted, DescribeCluster(), ClusterDescription)
            if description.leader is None:
                raise _NotYet(f"no leader: node {description.node_id} there knows none (it is not in a cluster "
                              "with a quorum, or one is being elected)")
            if description.leader != description.node_id:
                leader_address = _member_address(description, description.leader, address)
                if leader_address is None:
                    raise _NotYet(f"no leader: node {description.node_id} there names node {description.leader}, "
                                  "whose address it does not know")
                leader = AdminClient(leader_address, ssl_context=ssl_context, timeout_seconds=timeout_s)
                identity = await _ask(leader, DescribeIdentity(), IdentityDescription)
                description = await _ask(leader, DescribeCluster(), ClusterDescription)
                if description.leader != description.node_id:
                    raise _NotYet(f"no leader: node {description.node_id} at {leader_address} no longer leads")
            self._record_cluster(identity.cluster_id)
            for member, _, _ in description.members:
                member_address = _member_address(description, member, leader.address)
                if member != self.node_id and member_address:
                    self.learned_peers[member] = member_address
            try:
                if not self._join_added:
                    await self._add(leader)
                    self._join_added = True
                    log.info("node %s: added to the cluster as a spare", self.node_id)
                if self.role != Role.SPARE:
                    await _assign_tolerating_done(leader, self.node_id, Role(self.role))
            except _Refused as error:
                raise _NotYet(f"refused: {error}") from None
            except AdminError as error:
                raise _NotYet(f"the leader stopped answering: {error}") from None
        finally:
            await contacted.close()
            if leader is not contacted:
                await leader.close()
        await self._allow_voting()

    def _client_ssl(self):
        """The context this node dials with (its own certificate, the cluster CA)."""
        return self.tls.client_context if self.tls is not None else None

    async def _add(self, leader: AdminClient) -> None:
        """dqlite's ADD: this node as a spare, with its address, refused if its id is
        already a member. The marker is written once the request may have reached the
        leader (sent, whatever the outcome, unless the leader refused it before
        proposing it; "leadership lost" means it was proposed and may still commit)."""
        may_have_added = self._read_join_marker() == JOIN_MARKER_ADD_MAY_HAVE_HAPPENED
        add = ChangeMembership(node=self.node_id, role=Role.SPARE, address=self.advertised_address,
                               must_be_new=True)
        try:
            _expect(await leader.request(add), ProposeResult)
        except _Refused as error:
            if error.outcome_unknown:
                self._write_join_marker(JOIN_MARKER_ADD_MAY_HAVE_HAPPENED)   # it may still commit
                raise
            if "is already a member" not in str(error):
                raise   # refused: certainly not added
            if not may_have_added:
                raise JoinFailed(
                    f"node id {self.node_id} is already a member of the cluster, and this node's data directory "
                    f"never joined it: a node whose data was lost rejoins under a NEW id (remove {self.node_id} "
                    f"first). This node will not vote.") from None
            return
        except BaseException:
            self._write_join_marker(JOIN_MARKER_ADD_MAY_HAVE_HAPPENED)   # sent; the outcome is unknown
            raise
        self._write_join_marker(JOIN_MARKER_ADD_MAY_HAVE_HAPPENED)

    async def _allow_voting(self) -> None:
        replies: asyncio.Queue = asyncio.Queue()
        client = self.runtime.open_client(replies.put_nowait)
        try:
            self.runtime.submit(client, AllowVoting())
            await replies.get()
        finally:
            self.runtime.close_client(client)
        os.unlink(self._join_marker_path())

    def _identity_record(self) -> NodeIdentity:
        return NodeIdentity(node_id=self.node_id, cluster_id=self.cluster_id, address=self.advertised_address)

    def _describe_identity(self) -> IdentityDescription:
        return IdentityDescription(node_id=self.node_id, cluster_id=self.cluster_id, instance=self.instance)

    def _record_cluster(self, cluster_id: str | None) -> None:
        """A joining node's cluster: recorded at first contact; checked on every later
        one (IdentityMismatch when the contacted cluster is another one)."""
        recorded = read_identity(self.data_dir)
        if recorded is not None:
            check_identity(recorded, node_id=self.node_id, data_dir=self.data_dir, cluster_id=cluster_id)
            if recorded.cluster_id is not None:
                return
        self.cluster_id = cluster_id
        write_identity(self.data_dir, self._identity_record())

    async def _refuse_if_running_elsewhere(self, recorded: NodeIdentity) -> None:
        """IdentityMismatch if a live node of this cluster answers with this node's id at
        the recorded address (where every peer reaches this id): two nodes with one id
        would vote twice. No answer there: this node starts (with a warning)."""
        answer = None
        deadline = asyncio.get_running_loop().time() + TWIN_PROBE_WINDOW_S
        while True:
            try:
                async with AdminClient(recorded.address, ssl_context=self._client_ssl(),
                                       timeout_seconds=TWIN_PROBE_TIMEOUT_S) as other:
                    answer = await other.request(DescribeIdentity())
                break
            except AdminNoAnswer:
                if asyncio.get_running_loop().time() >= deadline:
                    break
            except (AdminError, ValueError):
                break
        if isinstance(answer, IdentityDescription) and answer.node_id == self.node_id \
                and answer.cluster_id == recorded.cluster_id and answer.instance != self.instance:
            raise IdentityMismatch(
                f"node {self.node_id} of this cluster is already running at {recorded.address}, the address the "
                f"cluster knows it by: two live nodes with one id would vote twice; stop that one first (or give "
                f"this node a new id and an empty data directory)")
        log.warning("node %s: started at %s, but the cluster knows this node at %s (recorded in %s): peers keep "
                    "dialling %s", self.node_id, self.advertised_address, recorded.address, self.data_dir,
                    recorded.address)

    def _join_marker_path(self) -> str:
        return os.path.join(self.data_dir, JOIN_MARKER_FILE)

    def _read_join_marker(self) -> str | None:
        try:
            with open(self._join_marker_path(), encoding="utf-8") as marker:
                return marker.read().strip()
        except FileNotFoundError:
            return None

    def _write_join_marker(self, state: str) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        path = self._join_marker_path()
        with open(path + ".tmp", "w", encoding="utf-8") as marker:
            marker.write(state + "\n")
            marker.flush()
            os.fsync(marker.fileno())
        os.replace(path + ".tmp", path)
        directory = os.open(self.data_dir, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    async def _hand_over_leadership(self) -> None:
        raft = getattr(self.actor, "raft", None)
        if raft is None or raft.state != State.LEADER:
            return
        voters = [node for node in raft.configuration.voters if node != self.node_id]
        if not voters:
            return
        # The most caught-up voter takes over fastest.
        target = max(voters, key=lambda node: raft.progress[node].match if node in raft.progress else -1)
        client = self.runtime.open_client(lambda reply: None)
        try:
            self.runtime.submit(client, TransferLeadership(target=target))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TRANSFER_WAIT_S
            while loop.time() < deadline and self.actor.raft.state == State.LEADER:
                await asyncio.sleep(0.02)
        finally:
            self.runtime.close_client(client)
        log.info("node %s: handed leadership over to node %s before stopping", self.node_id, target)



class _IdentifiedDatabaseNode(DatabaseNode):
    """The database actor of a real node, which also answers `DescribeIdentity` from any
    client: the identity is the io layer's (raftlite.io.identity); raft never sees it."""

    def __init__(self, *, identity: Callable[[], IdentityDescription], **options: Any) -> None:
        super().__init__(**options)
        self._identity = identity

    def on_message(self, src: Any, message: Any) -> None:
        if isinstance(message, DescribeIdentity) and isinstance(src, Client) and getattr(self, "ctx", None) is not None:
            self.ctx.reply(src, self._identity())
            return
        super().on_message(src, message)


class _NotYet(Exception):
    """One join try did not get through; the message is the reason (logged once)."""


async def _ask(client: AdminClient, request: Any, expected: type) -> Any:
    """`request`'s answer from `client`, or _NotYet saying why it could not be had
    (unreachable, no answer, not a raftlite node, refused)."""
    try:
        return _expect(await client.request(request), expected)
    except AdminUnreachable as error:
        raise _NotYet(f"unreachable ({error})") from None
    except AdminNoAnswer:
        # Not the timeout in the reason: it shrinks near the deadline, and each distinct
        # reason is logged.
        raise _NotYet(f"no answer from {client.address} (not a raftlite node, or overloaded)") from None
    except AdminError as error:
        raise _NotYet(f"not a raftlite node: it did not answer in raftlite's admin protocol ({error})") from None
    except _Refused as error:
        raise _NotYet(f"refused: {error}") from None


class _Refused(Exception):
    """The node answered a join request with a refusal (not leader, already a member,
    ...); the admin connection stays usable. `outcome_unknown`: the leader took the
    request and lost its leadership before answering, so it may still take effect."""

    def __init__(self, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


def _expect(response: Any, expected: type) -> Any:
    """`response` if it is the `expected` answer; otherwise _Refused with its reason."""
    if isinstance(response, expected):
        return response
    match response:
        case SqlError(code=code, message=message):
            raise _Refused(f"{message} (code {code})", outcome_unknown=code == LEADERSHIP_LOST)
        case ClientError(kind=kind, message=message):
            raise _Refused(message, outcome_unknown=kind == "leadership-lost")
        case AdminFailure(message=message):
            raise _Refused(message)
    raise _Refused(f"unexpected answer {type(response).__name__}")


def _member_address(description: ClusterDescription, node: int, described_by: str) -> str | None:
    """Where `node` is reached: its address in the configuration; for the node that gave
    the description, the address it was reached at if the configuration has none."""
    for member, _, address in description.members:
        if member == node and address:
            return address
    return described_by if node == description.node_id else None


async def _assign_tolerating_done(leader: AdminClient, node: int, role: Role) -> None:
    """dqlite's ASSIGN; "already has that role" means an earlier try worked. A promotion
    to voter is answered once the node has caught up."""
    try:
        _expect(await leader.request(ChangeMembership(node=node, role=role)), ProposeResult)
    except _Refused as error:
        if "already has that role" not in str(error):
            raise
