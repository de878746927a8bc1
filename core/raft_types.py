"""Values shared by the raft core, its durable storage and the node actor."""

from dataclasses import dataclass
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
    """Members and their roles, as sorted (node_id, role) pairs (a frozen, ordered value)."""

    members: tuple[tuple[int, Role], ...] = ()

    @classmethod
    def of(cls, roles: dict[int, Role]) -> "Configuration":
        return cls(tuple(sorted((node, Role(role)) for node, role in roles.items())))

    def role(self, node: int) -> Role | None:
        for member, role in self.members:
            if member == node:
                return role
        return None

    def with_role(self, node: int, role: Role | None) -> "Configuration":
        roles = dict(self.members)
        if role is None:
            roles.pop(node, None)
        else:
            roles[node] = role
        return Configuration.of(roles)

    @property
    def voters(self) -> tuple[int, ...]:
        return tuple(node for node, role in self.members if role == Role.VOTER)

    @property
    def replicas(self) -> tuple[int, ...]:
        """Nodes that receive the log: voters and standbys."""
        return tuple(node for node, role in self.members if role in (Role.VOTER, Role.STANDBY))

    @property
    def nodes(self) -> tuple[int, ...]:
        return tuple(node for node, _ in self.members)

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def encode(self) -> bytes:
        return b"".join(node.to_bytes(8, "little") + bytes([role]) for node, role in self.members)

    @classmethod
    def decode(cls, data: bytes) -> "Configuration":
        if len(data) % 9:
            raise ValueError(f"configuration of {len(data)} bytes is not a whole number of members")
        return cls(tuple(
            (int.from_bytes(data[i : i + 8], "little"), Role(data[i + 8])) for i in range(0, len(data), 9)
        ))


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
