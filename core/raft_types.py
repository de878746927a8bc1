"""Values shared by the raft core, its durable storage and the node actor."""

from dataclasses import dataclass, field
from enum import IntEnum

__all__ = ["Configuration", "Entry", "EntryKind", "HardState", "Role", "Snapshot", "SnapshotMeta"]


class EntryKind(IntEnum):
    NORMAL = 0   # application command (a proposal)
    NOOP = 1     # appended by every new leader: commits the entries of earlier terms
    CONFIG = 2   # a new membership configuration (data = Configuration.encode())


class Role(IntEnum):
    VOTER = 0    # replicates, votes, counts in the quorum
    STANDBY = 1  # replicates, never votes, never counts in the quorum
    SPARE = 2    # neither: a known member that gets no log


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    kind: EntryKind
    data: bytes = b""

    def wire_bytes(self) -> int:
        return 24 + len(self.data)


@dataclass(frozen=True, slots=True)
class HardState:
    """What raft must persist before it speaks: the current term and its vote in it."""

    term: int = 0
    vote: int | None = None


@dataclass(frozen=True, slots=True)
class Configuration:
    """Members and their roles, as sorted (node_id, role) pairs, and the address each
    member is reached at, as sorted (node_id, "host:port") pairs (a frozen, ordered
    value). Addresses travel with the configuration, as in dqlite, so every node (a
    new leader included) can reach a member it never heard of at start. The simulator
    leaves them empty: its network is addressed by node id."""

    members: tuple[tuple[int, Role], ...] = ()
    addresses: tuple[tuple[int, str], ...] = ()
    # Derived once (raft asks for them on every step): the voters, and the replicas
    # (nodes that receive the log: voters and standbys).
    voters: tuple[int, ...] = field(init=False, repr=False, compare=False)
    replicas: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "voters", tuple(node for node, role in self.members if role == Role.VOTER))
        object.__setattr__(self, "replicas", tuple(
            node for node, role in self.members if role in (Role.VOTER, Role.STANDBY)))

    @classmethod
    def of(cls, roles: dict[int, Role], addresses: dict[int, str] | None = None) -> "Configuration":
        members = tuple(sorted((node, Role(role)) for node, role in roles.items()))
        known = {node: address for node, address in (addresses or {}).items() if node in roles}
        return cls(members, tuple(sorted(known.items())))

    def role(self, node: int) -> Role | None:
        for member, role in self.members:
            if member == node:
                return role
        return None

    def address(self, node: int) -> str | None:
        for member, address in self.addresses:
            if member == node:
                return address
        return None

    def with_role(self, node: int, role: Role | None, address: str | None = None) -> "Configuration":
        """`node` gets `role` (None removes it, address included); `address`, when given,
        becomes its address."""
        roles = dict(self.members)
        addresses = dict(self.addresses)
        if role is None:
            roles.pop(node, None)
        else:
            roles[node] = role
        if address is not None:
            addresses[node] = address
        return Configuration.of(roles, addresses)

    @property
    def nodes(self) -> tuple[int, ...]:
        return tuple(node for node, _ in self.members)

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    # Encoding: nine bytes per member (node id, role) - the format of configurations
    # without addresses - followed, when there are addresses, by one record per address:
    # node id (8 bytes), length (2 bytes), UTF-8 text. A marker byte 0xff (never a
    # role) separates the two parts.
    def encode(self) -> bytes:
        members = b"".join(node.to_bytes(8, "little") + bytes([role]) for node, role in self.members)
        if not self.addresses:
            return members
        tail = b"".join(
            node.to_bytes(8, "little") + len(text := address.encode()).to_bytes(2, "little") + text
            for node, address in self.addresses
        )
        return members + len(self.members).to_bytes(8, "little") + b"\xff" + tail

    @classmethod
    def decode(cls, data: bytes) -> "Configuration":
        members: list[tuple[int, Role]] = []
        addresses: list[tuple[int, str]] = []
        offset = 0
        while offset < len(data):
            if len(data) - offset < 9:
                raise ValueError(f"configuration of {len(data)} bytes ends inside a member")
            node, role = int.from_bytes(data[offset : offset + 8], "little"), data[offset + 8]
            offset += 9
            if role == 0xFF:
                if node != len(members):
                    raise ValueError("configuration address marker does not match its member count")
                break
            members.append((node, Role(role)))
        while offset < len(data):
            if len(data) - offset < 10:
                raise ValueError("configuration ends inside an address")
            node = int.from_bytes(data[offset : offset + 8], "little")
            length = int.from_bytes(data[offset + 8 : offset + 10], "little")
            text = data[offset + 10 : offset + 10 + length]
            if len(text) != length:
                raise ValueError("configuration ends inside an address")
            addresses.append((node, text.decode()))
            offset += 10 + length
        return cls(tuple(members), tuple(addresses))


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int
    term: int
    configuration: Configuration
    # Index of the CONFIG entry that made `configuration` (0: the bootstrap one).
    configuration_index: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    meta: SnapshotMeta
    data: bytes

    def wire_bytes(self) -> int:
        return 64 + len(self.data)
