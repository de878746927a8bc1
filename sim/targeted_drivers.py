"""Targeted drivers: fault schedules aimed at one narrow window of the protocol.

A clock-driven nemesis crashes a node at some moment, whatever it is doing, and almost
never lands in the windows where the worst bugs of a replicated log hide (a term acted
on before it is durable, a leader's tail that two later leaders see differently). Each
driver here provokes a situation and then reacts to what the nodes *do* (a message they
send, a role they take), in the spirit of sim/crash_after_vote.py's
CrashAfterVote. They are built only from generic fault mechanisms (partitions, crashes
with unsynced writes lost, slow persists, timing) and know nothing of the unsafe
switches: a correct build runs through the very same schedule and must pass it, which
is what makes a catch in a broken build mean something.

Every choice comes from the driver's own derived stream (``targeted/NAME``), so a driver
does not shift the draws of the load, the network or the disks. Every fault is written
to the trace. Where a driver writes itself (a client that keeps writing to a stale
leader), it goes through `write(node)`, which the run sets to its workload's own kind of
write (a raft proposal, or a key-value insert whose outcome the database workload
checks); the default is a raft proposal. A driver is used alone (no random nemesis beside it: the nemesis' heals
would cut the driver's partitions short).
"""

from __future__ import annotations

from typing import Any, Callable

from ..core.raft import State
from ..actors.raft_node import Propose
from ..core.raft_messages import AppendRequest, AppendResponse, HeartbeatRequest, VoteRequest
from .network import isolate, one_way, symmetric_cut
from .rng import derive_rng
from .simulation import NodeState, Simulation

__all__ = [
    "TARGETED_DRIVERS", "CrashNewLeader", "DivergentTails", "PausedLeader", "SplitVote", "leader_with_own_commit",
    "propose_write",
]


def propose_write(sim: Simulation) -> Callable[[int], Any]:
    """The raft actor's client write: one proposal to `node`."""
    return lambda node: sim.submit(node, Propose(data=b"targeted-driver-write"))


def _raft(sim: Simulation, node_id: int):
    node = sim.nodes[node_id]
    if node.state != NodeState.UP:
        return None
    return getattr(node.actor, "raft", None)


def leader_with_own_commit(sim: Simulation) -> tuple[int, Any] | None:
    """The leader of a settled cluster: up, leading, and with an entry of its own term
    committed (its term is established everywhere that matters)."""
    for node_id in sim.node_ids:
        raft = _raft(sim, node_id)
        if raft is not None and raft.state == State.LEADER and raft.term_at(raft.commit) == raft.term:
            return node_id, raft
    return None


class _Partitions:
    """The driver's own partitions, healed without touching anyone else's."""

    def __init__(self, sim: Simulation, kind: str) -> None:
        self.sim = sim
        self.kind = kind
        self.cuts: dict[str, frozenset] = {}

    def cut(self, name: str, blocked: frozenset) -> None:
        self.cuts[name] = blocked
        self.sim.partition(blocked, f"{self.kind}/{name}")

    def heal(self, name: str | None = None) -> None:
        names = [name] if name is not None else list(self.cuts)
        network = self.sim.network
        for each in names:
            blocked = self.cuts.pop(each, None)
            if blocked is not None:
                network.blocked = network.blocked - blocked
                self.sim.trace.record(self.sim.now_ms, None, "heal", {"kind": f"{self.kind}/{each}"})
        # Two of the driver's cuts may share a link: what is still cut stays cut.
        for blocked in self.cuts.values():
            network.blocked = network.blocked | blocked


class _RoundDriver:
    """What every targeted driver shares: rounds ("strikes") on a settled cluster. A
    strike waits for a leader that has committed in its term, `_begin`s the round
    (the driver's own steps, which may end it early through `_end_round`); ending it
    undoes the driver's faults (`_undo`), heals its partitions, forgets the round's
    state (`_forget`) and strikes again after a cooldown. Callbacks carry the round
    number they belong to, so one of a finished round falls on the floor."""

    def __init__(self, sim: Simulation, stop_at_ms: float, name: str, *, settle_timeouts: float) -> None:
        self.sim = sim
        self.stop_at_ms = stop_at_ms
        self.rng = derive_rng(sim.seed, f"targeted/{name}")
        self.election_ms = sim.config.election_timeout_ms
        self.settle_ms = settle_timeouts * self.election_ms
        self.cooldown_ms = 2.0 * self.election_ms
        self.partitions = _Partitions(sim, name)
        self.round = 0
        self.strikes = 0

    def start(self) -> None:
        self.sim.call_later(self.rng.uniform(500.0, 1500.0), self._strike, self.round)

    def _strike(self, round_number: int) -> None:
        if round_number != self.round or self.sim.now_ms >= self.stop_at_ms:
            return
        found = leader_with_own_commit(self.sim)
        if found is None:
            self.sim.call_later(50.0, self._strike, round_number)
            return
        self._begin(round_number, *found)

    def _begin(self, round_number: int, leader: int, raft: Any) -> None:
        raise NotImplementedError

    def _end_round(self, round_number: int) -> None:
        if round_number != self.round:
            return
        self._undo()
        self.partitions.heal()
        self.round += 1
        self._forget()
        self.sim.call_later(self.cooldown_ms, self._strike, self.round)

    def _undo(self) -> None:
        """Undo the round's faults other than partitions (a slow disk, a pause)."""

    def _forget(self) -> None:
        """Drop the round's state."""


class CrashNewLeader(_RoundDriver):
    """Aims at the window between "a new leader acts in its term" and "that term (and
    what the leader wrote with it) is durable on the leader's disk".

    One strike, on a settled cluster with leader L of term T:

    1. isolate L (it keeps taking the load's writes, in term T, that nobody else gets);
    2. the first other node C to send a vote request for a term above T (pre-vote or
       real: it is about to campaign) gets a slow disk: every persist takes `slow_ms`
       longer (a slow-persist fault point aimed at a campaign), widening every window
       between "submitted" and "durable" of the campaign that follows;
    3. when C, leading, sends its first leader message of that term while one of its
       persists is still in flight, crash C right after the send with every unsynced
       write lost and restart it at once (the crash-after-send fault point);
    4. isolate the voters that heard of C's term (every node but L and C), and let L
       and C talk again as soon as L no longer leads (check-quorum steps it down), so
       that a node that never heard of C's term campaigns while C is the only voter
       it can reach;
    5. after `settle_ms`, heal, and strike again after a cooldown.

    A correct C made its term and vote durable before anything of the term left it, so
    after the restart it still holds term T+1 and its vote: L's campaign for T+1 fails
    and L moves on to T+2. A C that led T+1 on a vote not yet durable restarts in T with
    no vote, votes for L in T+1, and T+1 has two leaders (election safety)."""

    def __init__(self, sim: Simulation, stop_at_ms: float, *, name: str = "crash-new-leader") -> None:
        # settle: L's step-down and its own campaign, with room
        super().__init__(sim, stop_at_ms, name, settle_timeouts=5.0)
        self.phase: str | None = None
        self.old: tuple[int, int] | None = None     # (L, T)
        self.candidate: int | None = None
        self.slow_ms = 0.0
        # (self.strikes: crashes landed)
        sim.send_observers.append(self._on_send)

    # -- the strike ----------------------------------------------------------------------

    def _begin(self, round_number: int, leader: int, raft: Any) -> None:
        self.old = (leader, raft.term)
        # Drawn per strike: a slow disk of tens of milliseconds dwarfs a vote's round
        # trip (a millisecond or two), so the campaign's persists are still in flight
        # when the votes come back.
        self.slow_ms = round(self.rng.uniform(10.0, 60.0), 3)
        self.partitions.cut("isolate-leader", isolate(leader, self.sim.node_ids))
        self.phase = "campaign"
        self.sim.call_later(self.settle_ms + 2.0 * self.election_ms, self._end_round, round_number)

    def _on_send(self, src: int, dst: int, message: Any) -> None:
        if self.phase == "campaign":
            leader, term = self.old
            if type(message) is VoteRequest and src != leader and message.term > term:
                self.candidate = src
                self.sim.nodes[src].disk.persist_delay_ms = self.slow_ms
                self.sim.trace.record(self.sim.now_ms, src, "nemesis",
                                      {"fault": f"slow persists +{self.slow_ms} ms (campaigning)"})
                self.phase = "leading"
        elif (self.phase == "leading" and src == self.candidate
              and type(message) in (AppendRequest, HeartbeatRequest) and message.term > self.old[1]):
            self.phase = "crashing"
            # Once the sending handler has finished: the persists it submitted are in flight.
            self.sim.call_later(0.0, self._crash, src, self.sim.nodes[src].incarnation, self.round)

    def _crash(self, node_id: int, incarnation: int, round_number: int) -> None:
        node = self.sim.nodes[node_id]
        node.disk.persist_delay_ms = 0.0
        if (round_number != self.round or node.incarnation != incarnation or node.state != NodeState.UP
                or not node.disk.persisting):
            self.phase = None   # nothing in flight to lose: this strike has no window
            return
        self.strikes += 1
        self.sim.trace.record(self.sim.now_ms, node_id, "nemesis",
                              {"fault": "crash right after its first leader message, a persist in flight"})
        self.sim.crash(node_id, "lose")
        self.sim.restart(node_id)
        leader, _ = self.old
        self.partitions.heal()
        for voter in self.sim.node_ids:
            if voter not in (leader, node_id):
                self.partitions.cut(f"isolate-voter-{voter}", isolate(voter, self.sim.node_ids))
        self.partitions.cut("old-leader-from-crashed", symmetric_cut([leader], [node_id]))
        self.phase = "rejoin"
        self.sim.call_later(10.0, self._rejoin, round_number)

    def _rejoin(self, round_number: int) -> None:
        if round_number != self.round or self.phase != "rejoin":
            return
        leader, _ = self.old
        raft = _raft(self.sim, leader)
        if raft is not None and raft.state == State.LEADER:
            self.sim.call_later(10.0, self._rejoin, round_number)
            return
        # The old leader gave up leading: it now campaigns from an old term, and the
        # crashed node is the one voter it can reach.
        self.partitions.heal("old-leader-from-crashed")
        self.phase = "elect"
        self.sim.call_later(self.settle_ms, self._end_round, round_number)

    def _undo(self) -> None:
        if self.candidate is not None:
            self.sim.nodes[self.candidate].disk.persist_delay_ms = 0.0

    def _forget(self) -> None:
        self.phase, self.old, self.candidate = None, None, None


def _is_leader_message(message: Any) -> bool:
    return type(message) in (AppendRequest, HeartbeatRequest)


class DivergentTails(_RoundDriver):
    """Leaders in a row with divergent tails: the Raft paper's Figure 8, on three nodes.

    One strike, on a settled cluster with leader A of term T:

    1. isolate A, and let clients flood it with writes (a stale leader keeps accepting
       them): A's log grows a tail of term T, longer than one append batch, that nobody
       else has;
    2. the others elect B (term T' > T); the moment B sends its first leader message,
       isolate B (what it sent is lost), so B holds a tail of term T' nobody else has,
       and let A talk to the third node C again;
    3. A, with the longest log, wins a term U > T' with C's vote and replicates its old
       tail to C, one batch first: the moment C acknowledges entries of A's tail that
       are all of an earlier term than U (entries of term T now sit on a majority, none
       of term U does yet), cut A off (its later appends are lost; that acknowledgement
       still arrives), and let B talk to C again;
    4. B, whose last term T' beats the T of C's tail, wins a term above U with C's vote
       and overwrites the tail on C; after `settle_ms`, heal, and strike again after a
       cooldown.

    Raft allows the overwrite in 4: the tail of term T was never committed, because a
    leader commits only entries of its own term by counting replicas. A leader that
    committed A's tail on C's acknowledgement in 3 loses a committed entry in 4 (leader
    completeness, then commit safety). A follower that accepts appends from a leader of
    an older term, or keeps its own conflicting entries, or a leader that commits past
    the quorum, meets the same divergent tails at every step."""

    def __init__(self, sim: Simulation, stop_at_ms: float, *, name: str = "divergent-tails") -> None:
        super().__init__(sim, stop_at_ms, name, settle_timeouts=5.0)
        self.round_limit_ms = 12.0 * self.election_ms
        self.phase: str | None = None
        self.first: tuple[int, int] | None = None    # (A, T)
        self.second: tuple[int, int] | None = None   # (B, T')
        # (self.strikes: rounds that reached step 4)
        self.write = propose_write(sim)
        sim.send_observers.append(self._on_send)

    def _begin(self, round_number: int, leader: int, raft: Any) -> None:
        self.first = (leader, raft.term)
        self.partitions.cut("isolate-first", isolate(leader, self.sim.node_ids))
        # More writes than one append carries: A's first batch to C in step 3 then holds
        # only entries of term T (a batch that reached A's entry of term U would let A
        # commit correctly at once, and the window would be gone).
        flood = self.sim.config.append_entries_max + self.rng.randrange(4, 17)
        self.sim.trace.record(self.sim.now_ms, leader, "nemesis", {"fault": f"{flood} writes to the isolated leader"})
        for _ in range(flood):
            self.write(leader)
        self.phase = "second"
        self.sim.call_later(self.round_limit_ms, self._end_round, round_number)

    def _on_send(self, src: int, dst: int, message: Any) -> None:
        if self.phase == "second":
            first, term = self.first
            if src != first and _is_leader_message(message) and message.term > term:
                self.second = (src, message.term)
                # (Partitions are judged at delivery: what B just sent is lost.)
                self.partitions.cut("isolate-second", isolate(src, self.sim.node_ids))
                self.partitions.heal("isolate-first")
                self.phase = "third"
        elif self.phase == "third" and dst == self.first[0] and type(message) is AppendResponse and message.success:
            raft = _raft(self.sim, dst)
            if raft is None or raft.state != State.LEADER or raft.term <= self.second[1]:
                return
            acknowledged_term = raft.term_at(message.index)
            if message.index > raft.commit and acknowledged_term is not None and acknowledged_term < raft.term:
                first = self.first[0]
                # A's later appends are lost from now on; the acknowledgement still arrives.
                self.partitions.cut("first-silenced", one_way([first], [n for n in self.sim.node_ids if n != first]))
                self.phase = "fourth"
                self.sim.call_later(5.0, self._fourth, self.round)

    def _fourth(self, round_number: int) -> None:
        if round_number != self.round:
            return
        self.strikes += 1
        self.partitions.heal()
        self.partitions.cut("isolate-first", isolate(self.first[0], self.sim.node_ids))
        self.sim.call_later(self.settle_ms, self._end_round, round_number)

    def _forget(self) -> None:
        self.phase, self.first, self.second = None, None, None


class PausedLeader(_RoundDriver):
    """A leader paused (a long GC pause, a stopped VM) wakes up still believing it leads,
    just as its successor's first entries land on a follower.

    One strike, on a settled cluster with leader A of term T:

    1. pause A, and cut every link into A (when it wakes it hears nothing of what
       happened meanwhile);
    2. the others elect N (term T' > T); the moment a follower F acknowledges to N
       entries beyond the commit index F knows of (N will commit them on that
       acknowledgement; F learns so only from N's next message), hold N's messages to
       F for `hold_ms` (they are lost, N sends again later), cut A from N, resume A and
       give it a write: A, still leader of T, sends F appends of term T right away;
    3. after `hold_ms` N reaches F again; after `settle_ms`, heal, and strike again
       after a cooldown.

    A correct F refuses appends of a term older than its own. An F that accepts them
    replaces entries N has just committed with A's, and commits A's at N's next
    heartbeat (commit safety)."""

    def __init__(self, sim: Simulation, stop_at_ms: float, *, name: str = "paused-leader") -> None:
        super().__init__(sim, stop_at_ms, name, settle_timeouts=4.0)
        self.round_limit_ms = 6.0 * self.election_ms
        self.phase: str | None = None
        self.paused: tuple[int, int] | None = None   # (A, T)
        self.hold_ms = 0.0
        self.write = propose_write(sim)
        sim.send_observers.append(self._on_send)

    def _begin(self, round_number: int, leader: int, raft: Any) -> None:
        self.paused = (leader, raft.term)
        self.hold_ms = round(self.rng.uniform(5.0, 30.0), 3)
        self.sim.pause(leader)
        self.partitions.cut("into-paused", one_way([n for n in self.sim.node_ids if n != leader], [leader]))
        self.phase = "elect"
        self.sim.call_later(self.round_limit_ms, self._end_round, round_number)

    def _on_send(self, src: int, dst: int, message: Any) -> None:
        if self.phase != "elect" or type(message) is not AppendResponse or not message.success:
            return
        paused, term = self.paused
        if paused in (src, dst) or message.term <= term:
            return
        follower = _raft(self.sim, src)
        leader = _raft(self.sim, dst)
        if (follower is None or leader is None or leader.state != State.LEADER or leader.term != message.term
                or message.index <= follower.commit):
            return
        self.phase = "woken"
        self.strikes += 1
        # (Partitions are judged at delivery: N's messages already on their way to F are held too.)
        self.partitions.cut("new-leader-to-follower", one_way([dst], [src]))
        self.partitions.cut("paused-to-new-leader", one_way([paused], [dst]))
        self.sim.resume(paused)
        self.write(paused)
        self.sim.call_later(self.hold_ms, self._release, self.round)

    def _release(self, round_number: int) -> None:
        if round_number != self.round:
            return
        self.partitions.heal("new-leader-to-follower")
        self.sim.call_later(self.settle_ms, self._end_round, round_number)

    def _undo(self) -> None:
        if self.paused is not None:
            self.sim.resume(self.paused[0])

    def _forget(self) -> None:
        self.phase, self.paused = None, None


class SplitVote(_RoundDriver):
    """Two candidates in one term, both asking the same voter at the same moment.

    One strike, on a settled cluster with leader L of term T and followers V and X:

    1. cut every node off from every other, until L no longer leads (check-quorum
       steps it down): nobody wins an election meanwhile;
    2. let V talk to L and to X again (L and X stay apart), but clog V for `clog_ms`
       (two to three election timeouts): the pre-vote requests X and L send V meanwhile
       are held and arrive together when the clog ends; V grants both (neither log is
       behind V's), so L and X both campaign for the same term, V their only possible
       voter;
    3. after `settle_ms`, heal, and strike again after a cooldown.

    A correct V grants one real vote in that term; the other candidate loses. A V that
    votes twice in a term elects both (election safety)."""

    def __init__(self, sim: Simulation, stop_at_ms: float, *, name: str = "split-vote") -> None:
        super().__init__(sim, stop_at_ms, name, settle_timeouts=4.0)
        self.leader: int | None = None
        self.voter: int | None = None

    def _begin(self, round_number: int, leader: int, raft: Any) -> None:
        self.leader = leader
        self.voter = self.rng.choice([n for n in self.sim.node_ids if n != self.leader])
        for node in self.sim.node_ids:
            self.partitions.cut(f"isolate-{node}", isolate(node, self.sim.node_ids))
        self.sim.call_later(10.0, self._rejoin, round_number)
        self.sim.call_later(12.0 * self.election_ms, self._end_round, round_number)

    def _rejoin(self, round_number: int) -> None:
        if round_number != self.round:
            return
        raft = _raft(self.sim, self.leader)
        if raft is not None and raft.state == State.LEADER:
            self.sim.call_later(10.0, self._rejoin, round_number)
            return
        self.strikes += 1
        # Each of L and X campaigns within two election timeouts of its last one.
        clog_ms = round(self.rng.uniform(2.5, 3.5) * self.election_ms, 3)
        self.partitions.heal()
        others = [n for n in self.sim.node_ids if n not in (self.leader, self.voter)]
        self.partitions.cut("leader-from-others", symmetric_cut([self.leader], others))
        self.sim.clog(self.voter, clog_ms)

    def _forget(self) -> None:
        self.leader, self.voter = None, None


# Driver name (as a mutation profile lists it) -> constructor(sim, stop_at_ms).
TARGETED_DRIVERS: dict[str, Callable[[Simulation, float], Any]] = {
    "crash-new-leader": CrashNewLeader,
    "divergent-tails": DivergentTails,
    "paused-leader": PausedLeader,
    "split-vote": SplitVote,
}
