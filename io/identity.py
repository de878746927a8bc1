"""Who a data directory belongs to: its node id, its cluster id and its member address.

Theory of operation
-------------------
Raft state says what a node voted for and what it logged, not whose that state is. A
data directory started under another `--id` would hand one node's votes and log to
another (an impersonator that can decide an election twice); one joining a second
cluster would mix two histories. So the directory records, in a small JSON file
(`IDENTITY_FILE`, kept out of raft storage by its RESERVED_PREFIX):

    {"node_id": 2, "cluster_id": "5d0c…", "address": "10.0.0.2:9001"}

- `cluster_id` is a random UUID drawn when a cluster is bootstrapped; a joining node
  learns it from the node it asks to take it in (the admin protocol's
  `DescribeIdentity`, raftlite.io.admin) and records it before it sends its ADD;
- `address` is the member's address as the raft configuration holds it (the advertised
  address): a member's address never changes in the configuration, so it is where the
  cluster's other members dial this node.

The file is written durably (write a temporary file, fsync it, rename it over the old
one, fsync the directory), so a crash leaves the old file or the new one, never half of
one. Start-up compares it with the flags (`check_identity`): another node id is refused;
so is a join whose contacts answer with another cluster id.

A directory written by a raftlite that kept no identity file is adopted: the file is
written on its first start from the flags (`--id`, the advertised address), with the
cluster id unknown (null): such a node cannot tell its own cluster from another one;
nodes that join it later record null too.
"""

import json
import os
import uuid
from dataclasses import asdict, dataclass
from typing import Sequence

from .admin import parse_address
from .disk import RESERVED_PREFIX

__all__ = [
    "IDENTITY_FILE", "IdentityMismatch", "NodeIdentity", "check_concrete_address", "check_identity",
    "check_node_addresses", "new_cluster_id", "read_identity", "write_identity",
]

IDENTITY_FILE = RESERVED_PREFIX + "identity"
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "0:0:0:0:0:0:0:0", "*"})


class IdentityMismatch(Exception):
    """The data directory belongs to another node or another cluster, another live node
    has this id, or a join reaches the node itself (a user mistake: `raftlite node`
    exits with status 2)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeIdentity:
    node_id: int
    cluster_id: str | None   # None: adopted from a directory written before identity files
    address: str


def new_cluster_id() -> str:
    return str(uuid.uuid4())


def identity_path(data_dir: str) -> str:
    return os.path.join(data_dir, IDENTITY_FILE)


def read_identity(data_dir: str) -> NodeIdentity | None:
    """The recorded identity, None when there is none; IdentityMismatch (naming the
    file) when it cannot be read as one: it is never silently replaced."""
    path = identity_path(data_dir)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        return None
    try:
        fields = json.loads(text)
        node_id, cluster_id, address = fields["node_id"], fields["cluster_id"], fields["address"]
        if type(node_id) is not int or node_id <= 0 or not isinstance(address, str) \
                or not (cluster_id is None or isinstance(cluster_id, str)):
            raise ValueError("a field has the wrong type")
    except (ValueError, KeyError, TypeError) as error:
        raise IdentityMismatch(f"{path} is not a raftlite identity file ({error}); "
                               "it names the node this directory belongs to, so fix or restore it") from None
    return NodeIdentity(node_id=node_id, cluster_id=cluster_id, address=address)


def write_identity(data_dir: str, identity: NodeIdentity) -> None:
    """Record `identity` durably (tmp + fsync + rename + fsync of the directory)."""
    os.makedirs(data_dir, exist_ok=True)
    path = identity_path(data_dir)
    with open(path + ".tmp", "w", encoding="utf-8") as file:
        file.write(json.dumps(asdict(identity)) + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(path + ".tmp", path)
    directory = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def check_identity(recorded: NodeIdentity, *, node_id: int, data_dir: str, cluster_id: str | None = None) -> None:
    """IdentityMismatch unless `recorded` is node `node_id`'s (and, when both are known,
    of cluster `cluster_id`)."""
    if recorded.node_id != node_id:
        raise IdentityMismatch(
            f"data directory {data_dir} belongs to node {recorded.node_id}, not node {node_id}: start it with "
            f"--id {recorded.node_id}, or give node {node_id} a new, empty data directory")
    if cluster_id is not None and recorded.cluster_id is not None and cluster_id != recorded.cluster_id:
        raise IdentityMismatch(
            f"data directory {data_dir} belongs to cluster {recorded.cluster_id}, but the nodes it was pointed at "
            f"are cluster {cluster_id}: a node joins one cluster only; give it a new, empty data directory")


def check_concrete_address(address: str, *, flag: str = "--address") -> None:
    """ValueError unless `address` is a HOST:PORT others can dial: no wildcard host
    (0.0.0.0, ::) and no port 0, which only the bind would resolve."""
    host, port = parse_address(address)
    if host in _WILDCARD_HOSTS:
        raise ValueError(f"{flag} {address} is a wildcard: other nodes cannot dial it; give a concrete HOST:PORT "
                         "(to listen on every interface, add --advertise HOST:PORT, the address others dial)")
    if port == 0:
        raise ValueError(f"{flag} {address} has port 0: other nodes cannot dial it; give a concrete port")


def check_node_addresses(address: str, advertise: str | None, join: Sequence[str]) -> None:
    """ValueError (one line, naming the flag) unless the member address (`advertise`, or
    `address` without it) is concrete, the listening port is not 0, and no `join`
    address is the node's own (a node cannot join itself)."""
    if advertise is None:
        check_concrete_address(address)
    else:
        check_concrete_address(advertise, flag="--advertise")
        if parse_address(address)[1] == 0:
            raise ValueError(f"--address {address} has port 0: give the port to listen on")
    own_addresses = {parse_address(address), parse_address(advertise or address)}
    for contact in join:
        if parse_address(contact) in own_addresses:
            raise ValueError(f"--join {contact} is this node's own address: a node cannot join itself; "
                             "give the address of a member of the cluster it should join")
