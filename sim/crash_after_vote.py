"""A targeted simulator nemesis: crash voters the moment they grant a vote.

Theory of operation
-------------------
Raft's election safety rests on a voter remembering its vote across a crash: the vote
must be durable before the candidate hears of it (docs/architecture.md §2, etcd-io/raft's
persist-then-send rule). A random crash almost never lands in the sub-millisecond window
between "vote sent" and "vote synced", so the fourth unsafe switch
(`UnsafeSwitches.vote_before_persist`) would go unnoticed by the ordinary nemeses.

`CrashAfterVote` provokes an election, aims at that window, and then gives the
forgetful voters a chance to vote again in the same term. One strike:

1. isolate the current leader (as the leader-partition nemesis does), so the others
   elect a new one;
2. (it wraps the simulation's `transmit`, keeping what it does) when a node sends a
   granted, real (not pre-) `VoteResponse` for a term T, crash that node at the same
   simulated instant, after the response left but before any disk completion of that
   step, with crash mode ``lose`` (every write not yet synced is lost), and restart it
   at once (messages in flight to the old process are lost, as with TCP); so for every
   voter of the candidate in T;
3. when that candidate first acts as leader of T, heal the old leader's partition and
   isolate the new leader instead, for `isolate_ms`, so the others hear nothing more of
   term T from it; then heal.

In the safe build the voters remember voting in T, so the next election is in T + 1.
With `vote_before_persist` they restart in an earlier term with no vote, elect one of
themselves (or the old leader) in T again, and term T has two leaders: the raft checker
reports an election-safety violation (and a write acknowledged by one of them may be
lost).

A strike starts every `cooldown_ms` after the previous one healed, from `from_ms` until
`until_ms`. Strikes are recorded as `NemesisInterval`s (``isolate-leader``,
``crash-after-vote`` (instant), ``isolate-new-leader``) and announced to observers like
the scheduled nemeses' faults. Everything is deterministic for a seed. Used alone: the
other nemeses' heals would cut its partitions short.
"""

from __future__ import annotations

from typing import Any, Callable

from ..core.raft import State
from ..core.raft_messages import VoteResponse
from .nemesis import NemesisInterval
from .network import isolate
from .simulation import NodeState, Simulation

__all__ = ["CrashAfterVote"]

CRASH_KIND = "crash-after-vote"
ISOLATE_LEADER_KIND = "isolate-leader"
ISOLATE_KIND = "isolate-new-leader"


class CrashAfterVote:
    """Provoke an election, crash each voter right after it grants a vote (losing
    unsynced writes) and restart it at once, isolate the winner when it starts to lead."""

    def __init__(self, sim: Simulation, *, isolate_ms: float | None = None, cooldown_ms: float | None = None,
                 from_ms: float = 0.0, until_ms: float | None = None) -> None:
        self.sim = sim
        election_ms = sim.config.election_timeout_ms
        self.isolate_ms = isolate_ms if isolate_ms is not None else 4.0 * election_ms
        self.cooldown_ms = cooldown_ms if cooldown_ms is not None else 4.0 * election_ms
        self.until_ms = until_ms
        self.crashes = 0
        self.isolations = 0
        self.intervals: list[NemesisInterval] = []
        self.observers: list[Callable[[str, str, str], None]] = []
        self.armed_after_term: int | None = None     # a strike waits for a vote in a later term
        self.strike: tuple[int, int] | None = None   # (candidate, term) under way
        self.round = 0
        original = sim.transmit

        def transmit(src: int, dst: int, message: Any) -> None:
            original(src, dst, message)
            if isinstance(message, VoteResponse) and message.granted and not message.pre_vote:
                self._granted(src, dst, message.term)
            elif self.strike is not None and self.strike[0] == src:
                self._maybe_isolate(src)

        sim.transmit = transmit
        if from_ms != float("inf"):
            self.start(from_ms)

    def start(self, at_ms: float) -> None:
        self.sim.call_later(max(0.0, at_ms - self.sim.now_ms), self._provoke, self.round)

    def _active(self) -> bool:
        return self.until_ms is None or self.sim.now_ms < self.until_ms

    def _leader(self) -> tuple[int, int] | None:
        leader = self.sim.leader()
        return None if leader is None else (leader, self.sim.nodes[leader].actor.raft.term)

    def _provoke(self, round_number: int) -> None:
        if round_number != self.round or not self._active():
            return
        found = self._leader()
        if found is None:
            self.sim.call_later(self.sim.config.election_timeout_ms, self._provoke, round_number)
            return
        leader, term = found
        self.sim.partition(isolate(leader, self.sim.node_ids), ISOLATE_LEADER_KIND)
        self._record(ISOLATE_LEADER_KIND, self.isolate_ms, f"isolate leader n{leader} (term {term})")
        self.armed_after_term = term
        # If no strike completes in time, give up this round.
        self.sim.call_later(self.isolate_ms, self._end_round, round_number)

    def _granted(self, voter: int, candidate: int, term: int) -> None:
        if self.strike is None:
            if self.armed_after_term is None or term <= self.armed_after_term or not self._active():
                return
            self.strike = (candidate, term)
            self.armed_after_term = None
        elif self.strike != (candidate, term):
            return
        node = self.sim.nodes[voter]
        # After the current step (the response is already on its way), before its disk writes complete.
        self.sim.call_later(0.0, self._crash, voter, node.incarnation, candidate, term)

    def _crash(self, voter: int, incarnation: int, candidate: int, term: int) -> None:
        node = self.sim.nodes[voter]
        if node.incarnation != incarnation or node.state != NodeState.UP:
            return
        self.sim.crash(voter, "lose")
        self.sim.restart(voter)
        self.crashes += 1
        self._record(CRASH_KIND, 0.0, f"crash n{voter} right after it voted for n{candidate} in term {term} "
                                      f"(unsynced writes lost), restart it")

    def _maybe_isolate(self, candidate: int) -> None:
        raft = getattr(self.sim.nodes[candidate].actor, "raft", None)
        if raft is None or raft.state != State.LEADER or raft.term != self.strike[1]:
            return
        term = self.strike[1]
        self.strike = None
        self.sim.heal()
        self.sim.partition(isolate(candidate, self.sim.node_ids), ISOLATE_KIND)
        self.isolations += 1
        self._record(ISOLATE_KIND, self.isolate_ms, f"isolate n{candidate}, new leader of term {term}")
        self.round += 1
        self.sim.call_later(self.isolate_ms, self._end_round, self.round)

    def _end_round(self, round_number: int) -> None:
        if round_number != self.round:
            return
        self.sim.heal()
        self.strike, self.armed_after_term = None, None
        self.round += 1
        self.start(self.sim.now_ms + self.cooldown_ms)

    def _record(self, kind: str, duration_ms: float, description: str) -> None:
        now = self.sim.now_ms
        self.intervals.append(NemesisInterval(kind=kind, start_ms=now, end_ms=now + duration_ms,
                                              description=description))
        for observer in self.observers:
            observer(kind, f"start-{kind}", description)
