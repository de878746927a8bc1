"""`raftlite sim mutations`: a catalogue of planted bugs that proves the checkers' teeth.

Every entry of the catalogue is one unsafe switch (core/raft.py `UnsafeSwitches`): a
deliberate bug, one or two lines at the exact place of the correct code. For each, the
catalogue names the cheapest run that reaches it (actor, nodes, nemesis, fault points,
targeted drivers) and says why that run is needed. The command runs a fixed seed range
for every mutation and reports:

- with every checker on: the share of seeds caught, the first failing seed, and which
  checker fired first: the durability checker (sim/durability_checker.py, which judges
  every Send against the sender's synced disk and so catches the "before persist" bugs
  by construction) or an end-to-end one;
- with the durability checker off: the share caught by the end-to-end checkers alone
  (election safety, log matching, leader completeness, commit and state-machine safety,
  acknowledged-write durability from sim/raft_checkers.py; the read checks below and the
  database workload's write/read checks, sim/database_workload.py), and the first seed
  and checker;
- the safe build over the same seeds and runs: it must fail none (a false positive would
  make every catch meaningless).

The two passes are one run per seed: the durability checker is attached in a recording
mode (it notes its first violation and the time instead of stopping the run). Checkers
only observe, so that run is the very run without it (same seed, same trace); the
verdicts of both passes come from it: "with the durability checker" is whichever fired
first, "end to end" is what the other checkers found. A liveness problem (no write
committed after the heal, no single leader), a run cut off as a message storm
(`STEPS_MAX`) and a node refusing to start do not count as caught.

A raft invariant broken inside a live node (core/invariant.py: "truncating committed
entries", "two leaders in term", ...) does count end to end, labelled "node invariant"
in the table: the node stops itself on a safety verdict of the system's own checks
(docs/architecture.md §6), reached by the same run with no knowledge of the planted bug; it is not
a timeout and not a refusal to start. Counting it also makes such a stop in the safe
build a failure, which it must be. Where a checker can also see the harm, a driver aims
for that verdict (the stale-term append has one, see sim/targeted_drivers.py
PausedLeader).

Targeted drivers (what the standard load does not do, added where a mutation needs it):

- `RaftReads`: beside the raft load's steady reads at every node that believes it leads
  (sim/raft_load.py, with its read-linearizability check), one linearizable read
  (ReadIndex) at the very start of each leadership: before the new leader committed an
  entry of its term, where ReadIndex's own-term rule matters. Checked after the run: a read answered at index i misses no write
  acknowledged before the read was sent (index >= the write's), and its value is the
  digest state machine folded over the committed entries 1..i (never a state no
  committed log prefix had).
- `MembershipChurn`: at moments when the configuration is settled, the leader is asked to
  remove two other voters at the same instant while it is cut off from them (so a leader
  that accepted both changes would commit alone); after the cut heals, removed founders
  are added back one change at a time (standby, then voter). In the safe build the
  second change is refused and the isolated leader cannot commit.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

from ..core.raft_messages import AppendResponse
from ..actors.raft_node import ChangeMembership, DigestStateMachine, ProposeResult, Read, ReadResult
from ..core.raft import SAFE, State, UnsafeSwitches
from ..core.raft_types import Role
from .cluster_faults import CLUSTER_FAULT_KINDS
from .crash_after_vote import CrashAfterVote
from .durability_checker import DurabilityChecker
from .fault_points import FaultPoints, parse_fault_points, swarm_fault_points
from .nemesis import NEMESIS_KINDS, Nemesis
from .network import isolate, one_way, symmetric_cut
from .raft_checkers import entry_digest
from .rng import derive_rng
from .run import attach_checkers, build_simulation, finish_run, run_config, start_load
from .simulation import NodeState, Simulation, SimulationFailure
from .sweep import parse_seed_range
from .targeted_drivers import TARGETED_DRIVERS
from .trace import Trace

__all__ = [
    "CATALOGUE", "Mutation", "MutationRow", "Profile", "PROFILES", "SeedVerdict", "render_table", "run_catalogue",
    "run_seed",
]


# -- what a run needs ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Profile:
    """One kind of run: the safe build is swept once per profile."""

    name: str
    actor: str
    nodes: int
    nemesis: tuple[str, ...]
    fault_points: str   # as `--fault-points` takes them: "all", "none" or a comma list
    drivers: tuple[str, ...] = ()
    duration_s: float = 10.0

    def describe(self) -> str:
        nemesis = "all" if self.nemesis == NEMESIS_KINDS else ",".join(self.nemesis) or "none"
        points = self.fault_points
        drivers = "+" + ",".join(self.drivers) if self.drivers else ""
        return f"{self.actor} {self.nodes} nodes, nemesis {nemesis}, fault points {points}{drivers}"


PROFILES: dict[str, Profile] = {
    # Every nemesis and fault point (crash right after a send while a persist is in flight,
    # crash between write and sync, slow persists, EIO on the hard-state file), plus reads
    # at every node that believes it leads: the raft core's mutations live here.
    "raft": Profile("raft", "raft", 3, NEMESIS_KINDS, "all", ("reads",)),
    # Membership changes need a driver that asks for them. No partition nemesis: its heals
    # would cut the driver's own cut short.
    "membership": Profile("membership", "raft", 3, ("crash", "noise", "pause"), "all", ("membership",)),
    # Targeted: crash a follower right after it acknowledges entries the leader will
    # commit (unsynced writes lost), then isolate the leader (CrashAfterAcknowledgement).
    "crash-after-ack": Profile("crash-after-ack", "raft", 3, (), "none", ("crash-after-ack",)),
    # Targeted: crash each voter right after it grants a vote, isolate the winner
    # (sim/crash_after_vote.py CrashAfterVote).
    "crash-after-vote": Profile("crash-after-vote", "raft", 3, (), "none", ("crash-after-vote",)),
    # The SQLite state machine: its WAL, its client answers, its read and write checks.
    # (Without the membership/transfer/leader-partition faults, as `sim run` does for this
    # actor: the key-value load's replica checks compare every up node, removed ones too.)
    "database": Profile("database", "database", 3,
                        tuple(kind for kind in NEMESIS_KINDS if kind not in CLUSTER_FAULT_KINDS), "all"),
    # Targeted: isolate the leader, slow the disk of the node that campaigns, crash it
    # right after its first leader message while a persist is in flight, and let the
    # old leader campaign with only the crashed node to vote for it
    # (sim/targeted_drivers.py CrashNewLeader).
    "crash-new-leader": Profile("crash-new-leader", "raft", 3, (), "none", ("crash-new-leader",), 20.0),
    # Targeted: leaders in a row with divergent tails, Figure 8's shape on three nodes
    # (sim/targeted_drivers.py DivergentTails).
    "divergent-tails": Profile("divergent-tails", "raft", 3, (), "none", ("divergent-tails",), 20.0),
    # Targeted: a paused leader wakes as its successor's first entries land on a
    # follower (sim/targeted_drivers.py PausedLeader); reads at the first moment of each
    # leadership: the followers' commit index lags the paused leader's last commits.
    "paused-leader": Profile("paused-leader", "raft", 3, (), "none", ("paused-leader", "reads"), 20.0),
    # Targeted: two candidates of one term whose only voter is clogged, so that both
    # pre-votes pass at once (sim/targeted_drivers.py SplitVote).
    "split-vote": Profile("split-vote", "raft", 3, (), "none", ("split-vote",), 20.0),
    # The same driver on the SQLite state machine: a stale leader that executed (and,
    # broken, answered) transactions that a later leader overwrites, then applies the
    # later leader's pages as a follower.
    "database-divergent-tails": Profile("database-divergent-tails", "database", 3, (), "none",
                                        ("divergent-tails",), 20.0),
}


@dataclass(frozen=True, slots=True)
class Mutation:
    switch: str     # the UnsafeSwitches field that plants it
    profile: str    # the PROFILES entry that reaches it
    why: str        # why that run reaches it

    @property
    def unsafe(self) -> UnsafeSwitches:
        return UnsafeSwitches(**{self.switch: True})


CATALOGUE: tuple[Mutation, ...] = (
    Mutation("self_vote_before_persist", "crash-new-leader",
             "a new leader must crash before its term is durable, and a node that never heard of that term "
             "must then win it with the crashed node's vote: crash-new-leader"),
    Mutation("vote_before_persist", "crash-after-vote",
             "a voter must crash before its vote is durable, then vote again in the same term: crash-after-vote"),
    Mutation("append_ack_before_persist", "crash-after-ack",
             "the only follower holding a just-committed entry must lose it in a crash, then elect: crash-after-ack"),
    Mutation("commit_without_current_term", "divergent-tails",
             "Figure 8: a leader must see its old tail on a majority before any entry of its term, then a leader "
             "with a newer tail must win: divergent-tails"),
    Mutation("accept_stale_term_append", "paused-leader",
             "a deposed leader must still be sending appends after a new term began, while a follower holds "
             "the new leader's entries uncommitted: paused-leader"),
    Mutation("keep_conflicting_entries", "split-vote",
             "a follower must hold an uncommitted tail that a new leader overwrites: split-vote's old leader "
             "keeps a tail from its isolation and loses the election"),
    Mutation("commit_past_quorum", "divergent-tails",
             "the leader's lone entries must be overwritten: divergent-tails' isolated leaders run ahead alone"),
    Mutation("concurrent_membership_changes", "membership",
             "only a leader asked for two changes at once can break it: the membership driver"),
    Mutation("read_index_without_own_term_commit", "paused-leader",
             "a read must reach a new leader before its first commit while its commit index lags the old leader's: "
             "paused-leader stops a leader between its commit and the followers learning of it; reads at new leaders"),
    Mutation("read_without_read_index", "raft",
             "a read must reach a deposed leader that still believes it leads: reads at every leader, partitions"),
    Mutation("snapshot_ack_before_persist", "raft",
             "caught by the durability checker wherever an InstallSnapshot completes (small snapshot thresholds, "
             "crash-after-send); unobservable end to end here: a leader sends only a snapshot of what it applied, "
             "so the acknowledged index is already committed, durable on a quorum without this follower; "
             "forgetting it in a crash only leaves the follower behind (the leader's next append fails its "
             "consistency check and it sends again), and every later acknowledgement of that follower leaves "
             "after a persist that completes after the snapshot's (persists complete in order)"),
    Mutation("deposed_leader_keeps_wal", "database-divergent-tails",
             "only the database actor has a WAL; a leader must lose leadership with uncommitted transactions in it: "
             "divergent-tails' isolated leaders"),
    Mutation("acknowledge_before_commit", "database-divergent-tails",
             "the database actor answers clients; an answered write must then be lost in a leader change: "
             "divergent-tails' isolated leaders take writes a later leader overwrites"),
    Mutation("apply_past_commit", "divergent-tails",
             "an entry applied before commit must be overwritten by a new leader: divergent-tails"),
    Mutation("skip_fsync", "crash-after-ack",
             "a crash must drop acknowledged writes no fsync made durable, then the node must elect: crash-after-ack"),
    Mutation("vote_without_log_check", "crash-after-ack",
             "a node missing committed entries must campaign while the leader is away: crash-after-ack cuts one "
             "follower off, then isolates the leader"),
    Mutation("vote_twice_in_term", "split-vote",
             "two candidates must campaign in one term and ask the same voter: split-vote"),
)


# -- targeted drivers ------------------------------------------------------------------------


class RaftReads:
    """A linearizable read at the first moment of every leadership, with its check (see
    the module docstring; the raft load, sim/raft_load.py, sends the steady reads)."""

    def __init__(self, sim: Simulation, stop_at_ms: float) -> None:
        self.sim = sim
        self.stop_at_ms = stop_at_ms
        self.pending: dict[Any, tuple[float, int]] = {}   # client -> (sent at, node)
        self.reads: list[tuple[float, float, int, int, Any]] = []   # (sent, answered, node, index, value)
        self.acknowledged: list[tuple[float, int]] = []   # (answered at, index) of every write
        self.entries: dict[tuple[int, int, bytes], Any] = {}   # (index, term, digest) -> Entry
        self.leaderships_read: set[tuple[int, int, int]] = set()   # (node, life, term)

    def attach(self, checker) -> "RaftReads":
        self.checker = checker
        self.sim.reply_observers.append(self._on_reply)
        self.sim.actor_hooks.append(self._instrument)
        self.sim.checkers.append(self._after_step)
        return self

    def _instrument(self, node_id: int, actor: Any) -> None:
        observe = actor.on_apply

        def on_apply(node: int, entry) -> None:
            self.entries.setdefault((entry.index, entry.term, entry_digest(entry)), entry)
            if observe is not None:
                observe(node, entry)

        actor.on_apply = on_apply

    def start(self) -> None:
        pass   # reads go out from `_after_step`, as leaderships begin

    def _read(self, node: int) -> None:
        self.pending[self.sim.submit(node, Read())] = (self.sim.now_ms, node)

    def _after_step(self, sim: Simulation) -> None:
        # The first moment of a leadership: the new leader has not committed in its term.
        if sim.now_ms >= self.stop_at_ms:
            return
        for node in self.sim.leaders():
            raft = sim.nodes[node].actor.raft
            key = (node, sim.nodes[node].incarnation, raft.term)
            if key not in self.leaderships_read:
                self.leaderships_read.add(key)
                self._read(node)

    def _on_reply(self, node_id: int, client, response: Any) -> None:
        if isinstance(response, ProposeResult):
            self.acknowledged.append((self.sim.now_ms, response.index))
        elif isinstance(response, ReadResult) and client in self.pending:
            sent, node = self.pending.pop(client)
            self.reads.append((sent, self.sim.now_ms, node, response.index, response.value))

    def check(self) -> list[str]:
        problems = []
        acknowledged = sorted(self.acknowledged)
        committed = self.checker.committed
        highest_committed = max(committed, default=0)
        values: dict[int, Any] = {}
        wanted = sorted({index for _, _, _, index, _ in self.reads if index <= highest_committed})
        machine, position, known = DigestStateMachine(), 0, True
        for index in wanted:
            while known and position < index:
                position += 1
                record = committed.get(position)
                entry = self.entries.get((position, *record)) if record is not None else None
                if entry is None:
                    known = False   # an entry nobody was seen applying: the value cannot be judged
                else:
                    machine.apply(entry)
            if known:
                values[index] = machine.read()
        for sent, answered, node, index, value in self.reads:
            missed = [i for at, i in acknowledged if at < sent and i > index]
            if missed:
                problems.append(f"read linearizability: read sent at {sent:.1f} ms to node {node} answered at index "
                                f"{index}, missing write {missed[0]} acknowledged before it was sent")
            elif index > highest_committed:
                problems.append(f"read linearizability: read sent at {sent:.1f} ms to node {node} reflects index "
                                f"{index}, never committed")
            elif index in values and tuple(value) != tuple(values[index]):
                problems.append(f"read linearizability: read sent at {sent:.1f} ms to node {node} returned a state "
                                f"no committed prefix had at index {index}")
        return problems[:3] + ([f"... and {len(problems) - 3} more bad reads"] if len(problems) > 3 else [])


class MembershipChurn:
    """Two removals asked of an isolated leader at once, then the founders added back."""

    def __init__(self, sim: Simulation, stop_at_ms: float) -> None:
        self.sim = sim
        self.stop_at_ms = stop_at_ms
        self.founders = tuple(sim.node_ids)
        self.rng = derive_rng(sim.seed, "mutations/membership")
        election_ms = sim.config.election_timeout_ms
        self.cut_ms = 4.0 * election_ms
        self.cut: frozenset | None = None
        self.restore_request: tuple[Any, float] | None = None   # (client, sent at)
        self.strikes = 0

    def start(self) -> None:
        self.sim.call_later(self.rng.uniform(1000.0, 2000.0), self._tick)

    def _leader(self):
        leaders = self.sim.leaders()
        return (leaders[0], self.sim.nodes[leaders[0]].actor.raft) if leaders else (None, None)

    def _tick(self) -> None:
        if self.sim.now_ms >= self.stop_at_ms:
            self._end_cut()
            return
        self.sim.call_later(100.0, self._tick)
        if self.cut is not None:
            return
        node, raft = self._leader()
        if raft is None or raft.configuration_index > raft.commit or raft.term_at(raft.commit) != raft.term:
            return
        missing = [n for n in self.founders if raft.configuration.role(n) != Role.VOTER]
        if missing:
            self._restore(node, raft, missing[0])
        elif self.rng.random() < 0.1:
            self._strike(node, raft)

    def _restore(self, leader: int, raft, node: int) -> None:
        if self.restore_request is not None:
            client, sent = self.restore_request
            answered = bool(self.sim.replies.get(client))
            if not answered and self.sim.now_ms - sent < 2 * self.sim.config.election_timeout_ms:
                return
        role = Role.VOTER if raft.configuration.role(node) == Role.STANDBY else Role.STANDBY
        self.restore_request = (self.sim.submit(leader, ChangeMembership(node=node, role=role)), self.sim.now_ms)

    def _strike(self, leader: int, raft) -> None:
        others = [n for n in raft.configuration.voters if n != leader]
        if len(others) < 2:
            return
        removed = self.rng.sample(others, 2)
        self.strikes += 1
        self.cut = symmetric_cut([leader], removed)
        self.sim.partition(self.cut, "membership-cut")
        for node in removed:
            self.sim.submit(leader, ChangeMembership(node=node, role=None))
        self.sim.call_later(self.cut_ms, self._end_cut)

    def _end_cut(self) -> None:
        if self.cut is not None:
            network = self.sim.network
            network.blocked = network.blocked - self.cut
            self.sim.trace.record(self.sim.now_ms, None, "heal", {"kind": "membership-cut"})
            self.cut = None


class CrashAfterAcknowledgement:
    """Aims at the window between "acknowledged" and "durable" of an append.

    One strike: cut the leader's messages to one follower (so only the other follower
    gets what comes next); when the other follower acknowledges entries beyond the
    leader's commit index (the acknowledgement that lets the leader commit them), crash
    it at once with every unsynced write lost and restart it; a few milliseconds later
    (the acknowledgement has arrived and the leader answered its clients) isolate the
    leader for four election timeouts, so the two followers elect a leader from what
    they still hold. In the safe build the acknowledged entries were durable and survive
    the crash, and the follower holding them wins; with them forgotten, the new leader
    overwrites committed, acknowledged entries."""

    def __init__(self, sim: Simulation, stop_at_ms: float) -> None:
        self.sim = sim
        self.stop_at_ms = stop_at_ms
        self.rng = derive_rng(sim.seed, "mutations/crash-after-ack")
        self.isolate_ms = 4.0 * sim.config.election_timeout_ms
        self.cuts: list[frozenset] = []
        self.armed: tuple[int, int] | None = None   # (leader, follower cut off)
        self.strikes = 0
        sim.send_observers.append(self._on_send)

    def start(self) -> None:
        self.sim.call_later(1000.0, self._arm)

    def _arm(self) -> None:
        if self.sim.now_ms >= self.stop_at_ms:
            return
        leader = self.sim.leader()
        if leader is None:
            self.sim.call_later(100.0, self._arm)
            return
        follower = self.rng.choice([n for n in self.sim.node_ids if n != leader])
        self.armed = (leader, follower)
        self._cut(one_way([leader], [follower]), "cut-leader-to-follower")
        # No acknowledgement to strike at in time: give up this round.
        self.sim.call_later(2000.0, self._disarm, self.strikes)

    def _disarm(self, strikes: int) -> None:
        if self.armed is not None and self.strikes == strikes:
            self.armed = None
            self._heal()
            self.sim.call_later(500.0, self._arm)

    def _on_send(self, src: int, dst: int, message: Any) -> None:
        if (self.armed is None or type(message) is not AppendResponse or not message.success
                or dst != self.armed[0] or src == self.armed[1]):
            return
        leader = getattr(self.sim.nodes[dst].actor, "raft", None)
        if leader is None or leader.state != State.LEADER or message.index <= leader.commit:
            return
        self.strikes += 1
        self.armed = None
        self.sim.call_later(0.0, self._crash, src, self.sim.nodes[src].incarnation)
        self.sim.call_later(5.0, self._cut, isolate(dst, self.sim.node_ids), "isolate-leader-after-ack")
        self.sim.call_later(5.0 + self.isolate_ms, self._heal)
        self.sim.call_later(5.0 + 2 * self.isolate_ms, self._arm)

    def _crash(self, node_id: int, incarnation: int) -> None:
        node = self.sim.nodes[node_id]
        if node.incarnation == incarnation and node.state == NodeState.UP:
            self.sim.crash(node_id, "lose")
            self.sim.restart(node_id)

    def _cut(self, blocked: frozenset, label: str) -> None:
        self.cuts.append(blocked)
        self.sim.partition(blocked, label)

    def _heal(self) -> None:
        network = self.sim.network
        for blocked in self.cuts:
            network.blocked = network.blocked - blocked
        self.cuts.clear()
        self.sim.trace.record(self.sim.now_ms, None, "heal", {"kind": "crash-after-ack"})


# -- one seed ----------------------------------------------------------------------------


class RecordingDurabilityChecker(DurabilityChecker):
    """The durability checker, noting its first violation instead of stopping the run."""

    def __init__(self, sim: Simulation) -> None:
        super().__init__(sim)
        self.first: tuple[float, str] | None = None

    def fail(self, message: str) -> None:
        self.violations += 1
        if self.first is None:
            self.first = (self.sim.now_ms, f"durability: {message}")


# Steps (handler runs) one seed may take. A correct run of any profile takes about 10,000;
# a planted bug can set two nodes ping-ponging forever (a follower that keeps its
# conflicting entries yet acknowledges them: the leader re-sends, it acknowledges again),
# and one such seed took 13 minutes of wall time. Counted in steps, not seconds, so that
# where a run is cut off does not depend on the machine.
STEPS_MAX = 200_000


class RunawayRun(RuntimeError):
    """A run exceeded STEPS_MAX: a livelock, not a checker's verdict."""


def _step_budget(sim: Simulation) -> None:
    if sim.steps > STEPS_MAX:
        raise RunawayRun(f"more than {STEPS_MAX} steps by {sim.now_ms:.0f} ms (a message storm)")


@dataclass(frozen=True, slots=True)
class SeedVerdict:
    seed: int
    durability: tuple[float, str] | None   # the durability checker's first violation (time, message)
    end_to_end: tuple[float, str] | None   # the first end-to-end verdict (time, message)
    not_counted: tuple[str, ...] = ()      # liveness problems, message storms, crashes of the run
    wall_seconds: float = 0.0

    @property
    def caught_end_to_end(self) -> bool:
        return self.end_to_end is not None

    @property
    def caught(self) -> bool:
        return self.durability is not None or self.end_to_end is not None

    @property
    def first_checker(self) -> str | None:
        """Which checker fired first with every checker on."""
        if self.durability is not None and (self.end_to_end is None or self.durability[0] <= self.end_to_end[0]):
            return "durability"
        return checker_name(self.end_to_end[1]) if self.end_to_end is not None else None


def checker_name(verdict: str) -> str:
    """The checker a verdict message comes from."""
    text = verdict.split(" ms: ", 1)[1] if " ms: " in verdict else verdict
    head = text.split(":", 1)[0].strip()
    if head.startswith("node "):
        return "node invariant"   # "node N: <invariant>", raised inside the raft core
    if text.startswith("read sent at") or head == "read linearizability":
        return "read linearizability"
    if text.startswith(("acknowledged writes lost", "writes reported as failed")):
        return "acknowledged writes"
    if text.startswith(("replicas differ", "database files differ", "rows nobody wrote")):
        return "replica agreement"
    return head


def run_seed(profile: Profile, seed: int, unsafe: UnsafeSwitches = SAFE) -> SeedVerdict:
    """One seed of `profile` with `unsafe` planted, every checker on (the durability
    checker recording)."""
    started = time.perf_counter()
    duration_ms = profile.duration_s * 1000.0
    fault_points = parse_fault_points(profile.fault_points)
    config = run_config(seed, profile.actor)
    sim = build_simulation(seed=seed, nodes=profile.nodes, actor=profile.actor, config=config, unsafe=unsafe,
                           trace=Trace(keep=False))
    sim.checkers.append(_step_budget)
    # The end-to-end checkers, and the durability checker recording beside them (one
    # durability checker only: it consumes the disk's change markers as it reads).
    checker = attach_checkers(sim, profile.actor, checkers="end-to-end")
    durability = RecordingDurabilityChecker(sim).attach()
    reads = RaftReads(sim, duration_ms).attach(checker) if "reads" in profile.drivers else None
    churn = MembershipChurn(sim, duration_ms) if "membership" in profile.drivers else None
    if "crash-after-ack" in profile.drivers:
        churn = CrashAfterAcknowledgement(sim, duration_ms)
    if "crash-after-vote" in profile.drivers:
        CrashAfterVote(sim, from_ms=1000.0, until_ms=duration_ms)
    targeted = [TARGETED_DRIVERS[name](sim, duration_ms) for name in profile.drivers if name in TARGETED_DRIVERS]
    points = FaultPoints(sim, swarm_fault_points(seed, fault_points)) if fault_points else None
    chaos = Nemesis(sim, profile.nemesis, fault_points=points)
    end_to_end: tuple[float, str] | None = None
    not_counted: list[str] = []
    try:
        sim.start()
        load = start_load(sim, profile.actor, 20.0, duration_ms)
        if profile.actor == "database" and load is not None:
            # A driver's own writes are the workload's, so that their outcomes are checked too.
            for driver in targeted:
                driver.write = lambda node: load.probe(node)
        chaos.start(heal_at_ms=duration_ms)
        for driver in (reads, churn, *targeted):
            if driver is not None:
                driver.start()
        sim.run_until(duration_ms)
        _, problems = finish_run(sim, checker, load, profile.actor)
        if reads is not None:
            problems = list(problems) + reads.check()
        for problem in problems:
            # A node still behind the acknowledged index after the quiet period has lost
            # nothing (the writes are on a quorum): it is slow, a liveness matter.
            if problem.startswith("liveness") or "is behind acknowledged index" in problem:
                not_counted.append(problem)
            elif end_to_end is None:
                end_to_end = (sim.now_ms, problem)
    except SimulationFailure as failure:
        message = str(failure)
        # A checker's verdict, or a node stopping itself on a broken raft invariant (see
        # the module docstring: labelled "node invariant").
        end_to_end = (failure.time_ms if hasattr(failure, "time_ms") else sim.now_ms, message)
    except Exception as error:  # noqa: BLE001 - a planted bug may break a node in any way
        not_counted.append(f"run stopped by {type(error).__name__}: {error}")
    finally:
        sim.close()
    return SeedVerdict(seed, durability.first, end_to_end, tuple(not_counted), time.perf_counter() - started)


# -- the catalogue ------------------------------------------------------------------------


@dataclass
class MutationRow:
    name: str                  # a switch, or "(safe build: PROFILE)"
    profile: Profile
    verdicts: list[SeedVerdict] = field(default_factory=list)
    safe_build: bool = False

    @property
    def seeds_run(self) -> int:
        return len(self.verdicts)

    def caught(self) -> list[SeedVerdict]:
        return [v for v in self.verdicts if v.caught]

    def caught_end_to_end(self) -> list[SeedVerdict]:
        return [v for v in self.verdicts if v.caught_end_to_end]

    def first(self, end_to_end: bool) -> SeedVerdict | None:
        found = self.caught_end_to_end() if end_to_end else self.caught()
        return min(found, key=lambda v: v.seed) if found else None

    def checkers(self, end_to_end: bool) -> dict[str, int]:
        counts: dict[str, int] = {}
        for verdict in (self.caught_end_to_end() if end_to_end else self.caught()):
            name = checker_name(verdict.end_to_end[1]) if end_to_end else verdict.first_checker
            counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _seed_job(job: tuple[str, str | None, int]) -> SeedVerdict:
    profile_name, switch, seed = job
    unsafe = UnsafeSwitches(**{switch: True}) if switch else SAFE
    return run_seed(PROFILES[profile_name], seed, unsafe)


def _share(count: int, total: int) -> str:
    return f"{count}/{total} ({100.0 * count / total:.0f}%)" if total else "-"


def render_table(rows: Sequence[MutationRow]) -> str:
    header = ("mutation", "caught", "first", "first checker", "end to end", "first", "end-to-end checker")
    lines = []
    for row in rows:
        if row.safe_build:
            failing = row.caught()
            lines.append((row.name, _share(len(failing), row.seeds_run),
                          str(min(v.seed for v in failing)) if failing else "-",
                          ", ".join(f"{k} {v}" for k, v in row.checkers(False).items()) or "-", "", "", ""))
            continue
        first, first_e2e = row.first(False), row.first(True)
        lines.append((
            row.name, _share(len(row.caught()), row.seeds_run), str(first.seed) if first else "-",
            _top_checkers(row.checkers(False)),
            _share(len(row.caught_end_to_end()), row.seeds_run), str(first_e2e.seed) if first_e2e else "-",
            _top_checkers(row.checkers(True)),
        ))
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header))]
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths)), "-+-".join("-" * w for w in widths)]
    out += [" | ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines]
    return "\n".join(line.rstrip() for line in out)


def _top_checkers(counts: dict[str, int]) -> str:
    if not counts:
        return "-"
    items = list(counts.items())
    text = ", ".join(f"{name} {count}" for name, count in items[:2])
    return text + (f", +{len(items) - 2} more" if len(items) > 2 else "")


def run_catalogue(*, seeds: range, only: Sequence[str] = (), budget_seconds: float | None = None,
                  workers: int | None = None, progress=sys.stderr, safe_build: bool = True) -> list[MutationRow]:
    """Every selected mutation over `seeds` (at most `budget_seconds` of wall time each:
    then over the seeds run so far), then the safe build over the same seeds for every
    profile used. Seeds run in parallel on `workers` processes (default: one per core)."""
    mutations = [m for m in CATALOGUE if not only or m.switch in only]
    profiles = list(dict.fromkeys(m.profile for m in mutations))
    plan = [(m.switch, m.profile) for m in mutations]
    if safe_build:
        plan += [(None, name) for name in profiles]
    workers = workers or os.cpu_count() or 1
    rows: list[MutationRow] = []
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for position, (switch, profile_name) in enumerate(plan, 1):
            row = MutationRow(switch or f"(safe build: {profile_name})", PROFILES[profile_name], safe_build=switch is None)
            row_started = time.perf_counter()
            seed_list = list(seeds)
            # Batches of one seed per worker, so that a budget stops between batches.
            for batch_start in range(0, len(seed_list), workers):
                if budget_seconds is not None and time.perf_counter() - row_started >= budget_seconds:
                    break
                batch = [(profile_name, switch, seed) for seed in seed_list[batch_start : batch_start + workers]]
                row.verdicts.extend(pool.map(_seed_job, batch))
            rows.append(row)
            elapsed = time.perf_counter() - row_started
            total = time.perf_counter() - started
            eta = total / position * (len(plan) - position)
            if progress is not None:
                rate = row.seeds_run / elapsed if elapsed else 0.0
                counted = "failing" if row.safe_build else "caught"
                print(f"[{position}/{len(plan)}] {row.name}: {counted} {len(row.caught())}/{row.seeds_run}"
                      + ("" if row.safe_build else f", end to end {len(row.caught_end_to_end())}/{row.seeds_run}")
                      + f" ({elapsed:.0f} s, {rate:.1f} seeds/s, eta {eta:.0f} s)", file=progress, flush=True)
    return rows


def summarize(rows: Sequence[MutationRow], aim: float = 0.5) -> tuple[bool, list[str]]:
    """(every mutation caught with and without the durability checker and the safe build
    clean, the summary lines)."""
    lines = []
    mutations = [row for row in rows if not row.safe_build]
    safe = [row for row in rows if row.safe_build]
    missed = [row.name for row in mutations if not row.caught()]
    missed_e2e = [row.name for row in mutations if not row.caught_end_to_end()]
    below = [row.name for row in mutations if len(row.caught_end_to_end()) < aim * row.seeds_run]
    false_positives = [row.name for row in safe if row.caught()]
    lines.append(f"{len(mutations)} mutations: {len(mutations) - len(missed)} caught, "
                 f"{len(mutations) - len(missed_e2e)} caught end to end")
    if missed:
        lines.append("never caught: " + ", ".join(missed))
    if missed_e2e:
        lines.append("never caught end to end: " + ", ".join(missed_e2e))
    if below:
        lines.append(f"caught end to end on fewer than {aim:.0%} of seeds: " + ", ".join(below))
    for row in safe:
        lines.append(f"safe build, {row.profile.describe()}: {len(row.caught())} of {row.seeds_run} seeds failing")
    if false_positives:
        lines.append("FALSE POSITIVES in the safe build: " + ", ".join(false_positives))
    not_counted = sum(1 for row in mutations for v in row.verdicts if v.not_counted and not v.caught)
    if not_counted:
        lines.append(f"{not_counted} uncaught runs ended with a problem that does not count "
                     "(liveness, a message storm, a crash of the run)")
    ok = not missed and not missed_e2e and not false_positives
    return ok, lines


def render_catalogue() -> str:
    lines = []
    for mutation in CATALOGUE:
        lines.append(f"{mutation.switch}: {PROFILES[mutation.profile].describe()}; {mutation.why}")
    return "\n".join(lines)


def switch_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(UnsafeSwitches))


# -- the command line ---------------------------------------------------------------------


def add_mutations_parser(sim_commands) -> None:
    parser = sim_commands.add_parser(
        "mutations", help="run the catalogue of planted bugs (unsafe switches) against the checkers",
        description="Every planted bug over a seed range: caught with the durability checker, caught end to end "
                    "without it, and the safe build over the same seeds. Exit 0 only when every mutation is caught "
                    "both ways and the safe build passes.")
    parser.add_argument("--seeds", default="1..100", help="A..B (inclusive) or one seed (default: 1..100)")
    parser.add_argument("--only", default="", help="comma list of mutations (default: the whole catalogue)")
    parser.add_argument("--budget-seconds", type=float, default=None,
                        help="wall seconds per mutation at most: then the seeds run so far count")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    parser.add_argument("--list", action="store_true", help="print the catalogue and what each mutation needs")


def run_mutations_command(args, usage_error) -> int:
    if args.list:
        print(render_catalogue())
        return 0
    try:
        seeds = parse_seed_range(args.seeds)
    except ValueError as error:
        raise usage_error(str(error)) from None
    only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    known = {mutation.switch for mutation in CATALOGUE}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise usage_error(f"unknown mutation {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
    if args.budget_seconds is not None and args.budget_seconds <= 0:
        raise usage_error("--budget-seconds must be positive")
    if args.workers is not None and args.workers <= 0:
        raise usage_error("--workers must be positive")
    rows = run_catalogue(seeds=seeds, only=only, budget_seconds=args.budget_seconds, workers=args.workers)
    print(render_table(rows))
    ok, lines = summarize(rows)
    print()
    print("\n".join(lines))
    return 0 if ok else 1
