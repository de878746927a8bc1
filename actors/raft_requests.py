"""What a client may ask of a raft node, and what it gets back: one home for every request
and answer type of the raft node actor (actors/raft_node.py).

A new request is one dataclass here plus its case in `RaftNode._handle_client`; the
runtimes that carry requests over a connection (io/admin.py, io/wire_server.py) and the
simulator's drivers (sim/) import them from here. The database's own requests are in
actors/database_requests.py. `StatusRequest`/`StatusResponse` are answered by every actor,
so they are defined with the actor contract (actors/contract.py) and named here too.

A proposal is answered only once its entry is committed and applied; if leadership is
lost while it is in the log, it fails with "leadership-lost" (outcome unknown); if it
never entered the log, with "not-leader" or "dropped" (certainly not applied).
"""

from dataclasses import dataclass
from typing import Any

from ..core.errors import LeadershipLost, NotLeader, RaftError
from ..core.raft_types import Role
from .contract import NodeId, StatusRequest, StatusResponse

__all__ = [
    "AllowVoting", "ChangeMembership", "ClientError", "ClusterDescription", "DescribeCluster", "Propose",
    "ProposeResult", "Read", "ReadResult", "StatusRequest", "StatusResponse", "TransferLeadership", "client_error",
]


# -- requests ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Propose:
    """Append `data` to the log; answered with a ProposeResult once applied."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Read:
    """A linearizable read of the state machine (ReadIndex)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangeMembership:
    node: NodeId
    role: Role | None  # None removes the node
    address: str | None = None   # where the node is reached ("host:port"); kept if None
    must_be_new: bool = False    # refuse if the node is already a member (dqlite's ADD)


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferLeadership:
    target: NodeId


@dataclass(frozen=True, slots=True, kw_only=True)
class AllowVoting:
    """The node's own join completed: from now on it may vote and campaign (see
    `RaftNode.start_voting_blocked`). Answered with a ProposeResult."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DescribeCluster:
    """Who leads and who is a member, as this node knows it (not linearizable: any node
    answers at once, as dqlite's LEADER and CLUSTER requests do)."""


# -- answers -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterDescription:
    node_id: NodeId
    leader: NodeId | None
    term: int
    members: tuple[tuple[NodeId, Role, str | None], ...]   # (node, role, address)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProposeResult:
    index: int
    term: int
    result: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadResult:
    index: int
    value: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientError:
    """A refusal: `kind` is "not-leader" (certainly not applied), "leadership-lost"
    (outcome unknown), "dropped" (refused before entering the log) or "bad-request"."""

    kind: str
    message: str
    leader: NodeId | None = None


def client_error(error: RaftError) -> ClientError:
    """The raft node's answer to a request the core refused with `error`."""
    if isinstance(error, NotLeader):
        return ClientError(kind="not-leader", message=str(error), leader=error.leader_hint)
    if isinstance(error, LeadershipLost):
        return ClientError(kind="leadership-lost", message=str(error))
    return ClientError(kind="dropped", message=str(error))
