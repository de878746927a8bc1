"""Raft safety checkers that run beside a simulation, after every step.

TigerBeetle's state checker in spirit: the simulator sees every node's state, so the
properties of the Raft paper's Figure 3 are checked directly, not inferred:

- election safety: at most one leader per term (ever, not just at one instant);
- log matching: two entries with the same index and term hold the same command;
- leader completeness: a new leader of term T holds every entry committed in a term
  before T (an entry committed in a *later* term may rightly be missing: a delayed vote
  can still elect a leader of term 3 after term 4 committed something);
- state-machine safety: every node applies the same entry at each index;
- durability: an entry acknowledged to a client is never lost — every node that
  applies that index applies exactly it, and every later leader holds it.

A violation raises `SimulationFailure` with the seed, so the run can be replayed.
"""

import hashlib
from typing import Any

from ..core.raft import State
from ..core.raft_types import Entry, Role
from .simulation import SimulationFailure, Simulation

__all__ = ["RaftChecker", "entry_digest"]


def entry_digest(entry: Entry) -> bytes:
    return hashlib.blake2b(bytes([entry.kind]) + entry.data, digest_size=12).digest()


class RaftChecker:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.leader_of_term: dict[int, int] = {}
        self.leaders_announced: set[int] = set()
        self.known: dict[tuple[int, int], bytes] = {}         # (index, term) -> digest
        self.committed: dict[int, tuple[int, bytes]] = {}     # index -> (term, digest)
        # index -> the lowest term of a node seen holding it committed: the entry was
        # committed in that term or earlier.
        self.committed_by_term: dict[int, int] = {}
        self.applied: dict[int, tuple[int, bytes]] = {}       # index -> (term, digest)
        self.acknowledged: dict[int, tuple[int, bytes]] = {}  # index -> (term, digest)
        self.checked_commit: dict[tuple[int, int], int] = {}  # (node, life) -> commit checked
        self.checked_last: dict[tuple[int, int], tuple[int, int]] = {}
        self.leaders_checked: set[tuple[int, int, int]] = set()  # (node, life, term)
        self.violations = 0

    def attach(self) -> "RaftChecker":
        self.sim.checkers.append(self)
        return self

    def instrument(self, node_id: int, actor: Any) -> None:
        """Hook an actor's apply/acknowledge observers (called when a node starts)."""
        actor.on_apply = self._on_apply
        actor.on_acknowledge = self._on_acknowledge

    def fail(self, message: str) -> None:
        self.violations += 1
        raise SimulationFailure(self.sim.seed, self.sim.now_ms, message)

    # -- observers -----------------------------------------------------------------------

    def _on_apply(self, node: int, entry: Entry) -> None:
        record = (entry.term, entry_digest(entry))
        first = self.applied.setdefault(entry.index, record)
        if first != record:
            self.fail(f"state-machine safety: node {node} applied term {entry.term} at index {entry.index}, "
                      f"another node applied term {first[0]}")
        acknowledged = self.acknowledged.get(entry.index)
        if acknowledged is not None and acknowledged != record:
            self.fail(f"durability: node {node} applied a different entry at acknowledged index {entry.index}")

    def _on_acknowledge(self, node: int, entry: Entry) -> None:
        self.acknowledged[entry.index] = (entry.term, entry_digest(entry))

    # -- after every step ----------------------------------------------------------------

    def __call__(self, sim: Simulation) -> None:
        for node_id in sim.node_ids:
            node = sim.nodes[node_id]
            actor = node.actor
            raft = getattr(actor, "raft", None)
            if raft is None:
                continue
            key = (node_id, node.incarnation)
            if raft.state == State.LEADER:
                self._check_leader(node_id, key, raft)
            self._check_log(key, raft)
            self._check_commit(node_id, key, raft)

    def _check_leader(self, node_id: int, key: tuple[int, int], raft) -> None:
        leader = self.leader_of_term.setdefault(raft.term, node_id)
        if leader == node_id and raft.term not in self.leaders_announced:
            self.leaders_announced.add(raft.term)
            self.sim.trace.record(self.sim.now_ms, node_id, "leader", {"term": raft.term})
        if leader != node_id:
            self.fail(f"election safety: nodes {leader} and {node_id} both led term {raft.term}")
        marker = (node_id, key[1], raft.term)
        if marker in self.leaders_checked:
            return
        self.leaders_checked.add(marker)
        for index, (term, digest) in self.committed.items():
            if index <= raft.log_base_index or self.committed_by_term[index] >= raft.term:
                continue
            if raft.term_at(index) != term or entry_digest(raft.entry(index)) != digest:
                self.fail(f"leader completeness: node {node_id}, leader of term {raft.term}, "
                          f"lacks committed entry {index} (term {term})")

    def _check_log(self, key: tuple[int, int], raft) -> None:
        # Incremental log matching: look at entries appended since the last look (all of
        # them again after a truncation, detected by a changed (last index, last term)).
        last = (raft.last_index, raft.last_term)
        previous = self.checked_last.get(key)
        if previous == last:
            return
        start = raft.log_base_index + 1
        if previous is not None and previous[0] <= raft.last_index and raft.term_at(previous[0]) == previous[1]:
            start = max(start, previous[0] + 1)
        for index in range(start, raft.last_index + 1):
            entry = raft.entry(index)
            digest = entry_digest(entry)
            first = self.known.setdefault((index, entry.term), digest)
            if first != digest:
                self.fail(f"log matching: two different entries at index {index} in term {entry.term}")
        self.checked_last[key] = last

    def _check_commit(self, node_id: int, key: tuple[int, int], raft) -> None:
        start = max(self.checked_commit.get(key, 0), raft.log_base_index)
        for index in range(start + 1, raft.commit + 1):
            entry = raft.entry(index)
            record = (entry.term, entry_digest(entry))
            first = self.committed.setdefault(index, record)
            known_by = self.committed_by_term.get(index)
            if known_by is None or raft.term < known_by:
                self.committed_by_term[index] = raft.term
            if first != record:
                self.fail(f"commit safety: node {node_id} committed term {entry.term} at index {index}, "
                          f"another node committed term {first[0]}")
        self.checked_commit[key] = max(start, raft.commit)

    # -- at the end ----------------------------------------------------------------------

    def check_convergence(self) -> list[str]:
        """After the final heal and a quiet period: live nodes agree and hold every
        acknowledged entry. Returns problems (empty when all is well)."""
        problems = []
        live = [n for n in self.sim.node_ids if getattr(self.sim.nodes[n].actor, "raft", None) is not None]
        leaders = [n for n in live if self.sim.nodes[n].actor.raft.state == State.LEADER]
        if len(leaders) != 1:
            problems.append(f"liveness: {len(leaders)} leaders after the quiet period")
        highest_ack = max(self.acknowledged, default=0)
        # Who must follow the log is the leader's to say: a removed node that missed its
        # removal still believes it is a voter. Spares receive no log at all.
        leader_configuration = self.sim.nodes[leaders[0]].actor.raft.configuration if len(leaders) == 1 else None
        for node_id in live:
            raft = self.sim.nodes[node_id].actor.raft
            role = (leader_configuration or raft.configuration).role(node_id)
            if role is None or role == Role.SPARE:
                continue  # removed members and spares are not expected to follow the log
            if highest_ack and raft.commit < highest_ack:
                problems.append(f"node {node_id} commit {raft.commit} is behind acknowledged index {highest_ack}")
        return problems
