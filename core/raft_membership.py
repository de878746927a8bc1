"""Cluster membership for Raft: the history of configurations in the log, the rules
for the next change, and a promotion waiting for its node to catch up (etcd-io/raft's
confchange/, for single-server changes: Raft thesis §4.1).

A configuration takes effect as soon as its CONFIG entry is appended to a log, not
when it commits, and is reverted when that entry is truncated away. So a node keeps
the history of the configurations in its log (`history`: entry index, configuration;
oldest first): the base one (from the snapshot, or the bootstrap configuration) and
one per CONFIG entry after it. The latest is the configuration in force.

Changes go one server at a time: a change may be proposed only once the previous one
committed. A node becomes a voter only once it has caught up with the leader's log (a
voter far behind would stall commits): until then the promotion is pending, retried
as the node catches up and given up after a timeout, or when a client cancels it or
asks for another change (which takes its place rather than waiting behind it). A spare asked to vote first
becomes a standby, so that it receives the log.

The leader's Raft state machine (core/raft.py) asks what to propose and proposes it;
this is plain data, like core/raft_progress.py.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import ProposalDropped
from .raft_types import Configuration, Entry, EntryKind, Role, SnapshotMeta

__all__ = ["Membership"]


@dataclass(slots=True)
class Membership:
    history: list[tuple[int, Configuration]]   # (index of the CONFIG entry, configuration), oldest first
    pending_promotion: tuple[int, int] | None = None   # (node, ticks waited)

    @classmethod
    def from_log(cls, base_index: int, base: Configuration, entries: Sequence[Entry]) -> "Membership":
        """The history of a log: `base` (in force at `base_index`), then the CONFIG
        entries after it."""
        history = [(base_index, base)]
        for entry in entries:
            if entry.kind == EntryKind.CONFIG and entry.index > base_index:
                history.append((entry.index, Configuration.decode(entry.data)))
        return cls(history)

    @property
    def current(self) -> Configuration:
        return self.history[-1][1]

    @property
    def current_index(self) -> int:
        """The index of the entry holding the configuration in force."""
        return self.history[-1][0]

    def at(self, index: int) -> tuple[int, Configuration]:
        """The configuration in force at log `index`, with its entry's index."""
        for entry_index, configuration in reversed(self.history):
            if entry_index <= index:
                return entry_index, configuration
        return self.history[0]

    # -- following the log ---------------------------------------------------------------

    def appended(self, entry: Entry) -> None:
        if entry.kind == EntryKind.CONFIG:
            self.history.append((entry.index, Configuration.decode(entry.data)))

    def truncated_after(self, index: int) -> None:
        while self.history[-1][0] > index:
            self.history.pop()  # a configuration is reverted when its entry goes

    def restored(self, meta: SnapshotMeta, kept: Sequence[Entry]) -> None:
        """The log now starts with the snapshot `meta`, followed by the `kept` entries."""
        self.history = [(meta.configuration_index, meta.configuration)] + [
            (entry.index, Configuration.decode(entry.data)) for entry in kept if entry.kind == EntryKind.CONFIG
        ]

    # -- changes -------------------------------------------------------------------------

    def plan_change(
        self, node: int, role: Role | None, address: str | None, *, caught_up: bool,
    ) -> Configuration | None:
        """The configuration to propose so that `node` gets `role` (None removes it) and
        `address` when given; ProposalDropped when the change makes no sense. None when
        a promotion to voter must wait for the node to catch up (`caught_up` tells
        whether it has): the promotion is then pending, and a spare first becomes a
        standby (the configuration returned)."""
        configuration = self.current
        current = configuration.role(node)
        # Checked before "already has that role": removing a non-member is that too.
        if role is None and current is None:
            raise ProposalDropped(f"node {node} is not a member")
        if current == role and (address is None or address == configuration.address(node)):
            raise ProposalDropped(f"node {node} already has that role")
        if address is not None:
            # Two members at one address would each take the other's messages.
            holder = _member_at(configuration, address, other_than=node)
            if holder is not None:
                raise ProposalDropped(
                    f"address {address} is already node {holder}'s ({_role_name(configuration.role(holder))})")
        if role == Role.VOTER and current != Role.VOTER and not caught_up:
            if current is None:
                raise ProposalDropped(f"node {node} must join as a standby or spare before it can vote")
            self.pending_promotion = (node, 0)
            if current == Role.SPARE:
                return configuration.with_role(node, Role.STANDBY, address)
            return None
        return configuration.with_role(node, role, address)

    def cancel_promotion(self) -> int | None:
        """Give up the pending promotion (a client cancelled it, or another change takes
        its place); returns its node, or None when none was pending."""
        if self.pending_promotion is None:
            return None
        node, _ = self.pending_promotion
        self.pending_promotion = None
        return node

    def promotion_tick(self, timeout_ticks: int) -> bool:
        """One more tick waited for the pending promotion. True while it still waits;
        False when none is pending or it has now waited `timeout_ticks` (given up)."""
        if self.pending_promotion is None:
            return False
        node, waited = self.pending_promotion
        if waited + 1 >= timeout_ticks:
            self.pending_promotion = None
            return False
        self.pending_promotion = (node, waited + 1)
        return True

    def due_promotion(self, commit: int, caught_up: Callable[[int], bool]) -> Configuration | None:
        """The configuration promoting the pending node to voter, once the previous
        change committed and the node has caught up; the promotion is then no longer
        pending (nor when its node left the cluster meanwhile)."""
        if self.pending_promotion is None or self.current_index > commit:
            return None
        node, _ = self.pending_promotion
        if self.current.role(node) is None:
            self.pending_promotion = None
            return None
        if caught_up(node):
            self.pending_promotion = None
            return self.current.with_role(node, Role.VOTER)
        return None


def _member_at(configuration: Configuration, address: str, *, other_than: int) -> int | None:
    """The member other than `other_than` recorded at `address`, if any."""
    for member, member_address in configuration.addresses:
        if member != other_than and member_address == address and configuration.role(member) is not None:
            return member
    return None


def _role_name(role: Role | None) -> str:
    return "not a member" if role is None else Role(role).name.lower()
