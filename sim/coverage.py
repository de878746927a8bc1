"""Coverage you can see: named interesting paths, counted each time a run reaches one
(Antithesis's "sometimes" assertions).

Why: a checker only judges what a run does. A sweep that never installs a snapshot over
a conflicting log cannot catch a bug in that code, however many seeds it runs; the
safety review found exactly such blind spots. Every path below is counted when a run
reaches it, the counts are printed with every sweep, and a sweep that spends at least
the standard budget fails when a path it should reach was never reached.

How paths are observed. The raft core never imports the simulator and pays nothing for
this module: everything is seen from the simulator's side.

- Each node's actor gets its `on_message`, `on_start` and `on_apply` wrapped when it
  (re)starts (`Simulation.actor_hooks`): a wrapper looks at the raft core's public state
  just before and just after the message is stepped, and only for the few message types
  a path needs (a type lookup per message otherwise).
- `Simulation.send_observers` see each message as it leaves a node.
- The client load and the nemesis call `Coverage.hit(name)` for what only they know.
- For the database actor, a check after every step looks at the leader's checkpoint
  and snapshot state.

The standard budget, in which every path required for the actor must be reached:
``raftlite sim check --seeds 1..50 --nodes 3 --nemesis all`` (raft). A sweep judges
coverage when it runs at least that many seeds with every nemesis kind on
(`STANDARD_BUDGET`); a smaller sweep prints the counts and says it is not judged.
Database sweeps print their counts but are not judged yet: their load does not reach
the cluster-aware faults (see sim/run.py), and the checkpoint race is not observable
from outside a step.
"""

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..actors.contract import Client
from ..actors.raft_node import ChangeMembership, ClientError, Propose, Read, TransferLeadership
from ..core.raft import State
from ..core.raft_messages import (
    AppendRequest, AppendResponse, HeartbeatResponse, SnapshotChunk, SnapshotResponse, TimeoutNow, VoteRequest,
    VoteResponse,
)
from ..core.raft_types import Configuration, Entry, EntryKind, Role
from .simulation import Simulation

__all__ = ["Coverage", "PATHS", "STANDARD_BUDGET", "CoveragePath", "attach_coverage", "coverage_report",
           "merge_counts", "required_paths"]


@dataclass(frozen=True, slots=True)
class CoveragePath:
    name: str
    description: str
    actors: tuple[str, ...]   # the actors whose standard budget must reach it


_RAFT = ("raft",)
_BOTH = ("raft", "database")

PATHS: tuple[CoveragePath, ...] = (
    CoveragePath("snapshot-over-conflicting-log",
                 "a follower installs a snapshot while its log holds uncommitted entries the snapshot's history "
                 "does not have", _RAFT),
    CoveragePath("snapshot-installed", "a follower installs a snapshot sent by the leader", _BOTH),
    CoveragePath("stale-leader-write", "a node that leads an old term (another node is in a higher term) "
                 "receives a write", _RAFT),
    CoveragePath("stale-leader-read", "a node that leads an old term receives a linearizable read", _RAFT),
    CoveragePath("vote-refused-stale-log", "a vote is refused because the candidate's log is less up to date",
                 _BOTH),
    CoveragePath("pre-vote-refused-by-lease", "a pre-vote is refused because the voter heard from a leader "
                 "within an election timeout", _BOTH),
    CoveragePath("higher-term-in-response", "a response carries a term higher than the receiver's", _BOTH),
    CoveragePath("leader-sees-higher-term", "a leader learns of a higher term from a response and steps down",
                 _BOTH),
    CoveragePath("append-acked-while-another-in-flight", "a leader gets an append acknowledged while later "
                 "appends to the same follower are still in flight (pipelining)", _BOTH),
    CoveragePath("append-acked-during-persist", "a follower acknowledges an append while another persist of "
                 "its own is in flight", _BOTH),
    CoveragePath("uncommitted-entries-truncated", "a follower truncates uncommitted entries that conflict with "
                 "the leader's log", _BOTH),
    CoveragePath("restart-applies-from-commit-hint", "a restarted node knows entries to be committed from its "
                 "persisted commit hint before it hears from a leader", _BOTH),
    CoveragePath("read-checked", "a linearizable read is answered and checked against the acknowledged "
                 "writes", _RAFT),
    CoveragePath("membership-change-requested", "a membership change reaches a node that believes it leads",
                 _RAFT),
    CoveragePath("membership-change-refused", "a membership change is refused (one change at a time, no own-term "
                 "commit yet, not the leader)", _RAFT),
    CoveragePath("voter-removed", "a configuration without a former voter is committed", _RAFT),
    CoveragePath("non-voter-added", "a configuration with a new standby or spare is committed", _RAFT),
    CoveragePath("removed-node-rejoined-as-voter", "a node removed earlier is a voter again in a committed "
                 "configuration", _RAFT),
    CoveragePath("leadership-transfer-requested", "a leadership transfer reaches a node that believes it leads",
                 _RAFT),
    CoveragePath("transfer-campaign", "a voter campaigns on TimeoutNow (leadership transfer)", _RAFT),
    CoveragePath("leadership-transferred", "the target of a leadership transfer becomes leader", _RAFT),
    # Not required yet: a database snapshot smaller than one apply step is read within one
    # handler, where a check after the step cannot see it (see the module's "left" note).
    CoveragePath("checkpoint-waits-for-snapshot", "a database leader has committed transactions only in its WAL "
                 "while it reads a snapshot (the checkpoint must wait for it)", ()),
)
PATH_NAMES = tuple(path.name for path in PATHS)

# actor -> (seeds, nodes): the smallest sweep, with every nemesis kind on, whose coverage
# is judged; it must reach every path required for the actor.
STANDARD_BUDGET: dict[str, tuple[int, int]] = {"raft": (50, 3)}


def required_paths(actor: str) -> tuple[str, ...]:
    return tuple(path.name for path in PATHS if actor in path.actors)


def merge_counts(total: dict[str, int], counts: dict[str, int]) -> None:
    for name, count in counts.items():
        total[name] = total.get(name, 0) + count


def coverage_report(counts: dict[str, int], actor: str, judged: bool) -> tuple[list[str], list[str]]:
    """(lines to print, paths required for `actor` but never reached)."""
    required = required_paths(actor)
    width = max(len(name) for name in PATH_NAMES)
    lines = ["coverage (times each path was reached):"]
    for path in PATHS:
        if path.name not in required and not counts.get(path.name):
            continue
        lines.append(f"  {path.name:<{width}}  {counts.get(path.name, 0):>8}")
    missing = [name for name in required if not counts.get(name)]
    if missing and judged:
        lines.append(f"COVERAGE FAILED: never reached within the standard budget: {', '.join(missing)}")
    elif missing:
        lines.append(f"coverage not judged (below the standard budget); not reached: {', '.join(missing)}")
    elif judged:
        lines.append("coverage judged (at least the standard budget): every required path reached")
    return lines, missing


class Coverage:
    """Counts of the named paths one run reached."""

    def __init__(self, sim: Simulation, checker: Any = None) -> None:
        self.sim = sim
        self.checker = checker   # RaftChecker: its committed record tells a conflicting log
        self.counts: dict[str, int] = {name: 0 for name in PATH_NAMES}
        # Terms in which a node campaigned on TimeoutNow: (node, term).
        self.transfer_terms: set[tuple[int, int]] = set()
        self.transfers_won: set[tuple[int, int]] = set()
        # The newest committed configuration seen applied (index, configuration), and
        # every node that was ever left out of one after being in it.
        self.configuration: tuple[int, Configuration | None] = (0, None)
        self.removed: set[int] = set()
        self.snapshot_reads_seen: set[tuple[int, int, int]] = set()
        self.membership_clients: set[Client] = set()   # waiting for an answer

    def hit(self, name: str) -> None:
        self.counts[name] += 1

    # -- wiring --------------------------------------------------------------------------

    def attach(self, actor_kind: str) -> "Coverage":
        """Observe every node from its next (re)start on (call before the nodes start)."""
        self.sim.actor_hooks.append(self._instrument)
        self.sim.send_observers.append(self._on_send)
        self.sim.reply_observers.append(self._on_reply)
        if actor_kind == "database":
            self.sim.checkers.append(self._database_step)
        return self

    def _instrument(self, node_id: int, actor: Any) -> None:
        if not hasattr(actor, "raft"):
            return
        on_message, on_start = actor.on_message, actor.on_start
        observers = self._observers

        def observed_on_message(src: Any, message: Any) -> None:
            observe = observers.get(type(message))
            raft = actor.raft
            if observe is None or raft is None:
                on_message(src, message)
                return
            after = observe(node_id, raft, src, message)
            on_message(src, message)
            if after is not None and actor.raft is not None:
                after(actor.raft)

        def observed_on_start(ctx: Any) -> None:
            on_start(ctx)
            raft = actor.raft
            if raft is not None and self.sim.nodes[node_id].incarnation > 1 and raft.commit > raft.log_base_index:
                self.hit("restart-applies-from-commit-hint")

        actor.on_message = observed_on_message
        actor.on_start = observed_on_start
        previous_apply = getattr(actor, "on_apply", None)

        def observed_on_apply(node: int, entry: Entry) -> None:
            if previous_apply is not None:
                previous_apply(node, entry)
            if entry.kind == EntryKind.CONFIG:
                self._configuration_applied(entry)

        actor.on_apply = observed_on_apply

    @property
    def _observers(self) -> dict[type, Callable]:
        observers = self.__dict__.get("_observer_table")
        if observers is None:
            observers = {
                SnapshotChunk: self._snapshot_chunk,
                VoteRequest: self._vote_request,
                AppendRequest: self._append_request,
                AppendResponse: self._append_response,
                HeartbeatResponse: self._response,
                SnapshotResponse: self._response,
                VoteResponse: self._vote_response,
                TimeoutNow: self._timeout_now,
                Propose: self._client_request,
                Read: self._client_request,
                ChangeMembership: self._client_request,
                TransferLeadership: self._client_request,
            }
            self.__dict__["_observer_table"] = observers
        return observers

    # -- before and after a message is stepped --------------------------------------------

    def _committed_term(self, index: int) -> int | None:
        if self.checker is None:
            return None
        record = self.checker.committed.get(index)
        return record[0] if record is not None else None

    def _snapshot_chunk(self, node: int, raft, src, message: SnapshotChunk):
        meta = message.meta
        if not message.done or meta.index <= raft.commit:
            return None
        # Log matching: the follower's log agrees with the snapshot's history up to the
        # last index both have iff it agrees at that index.
        last, commit = raft.last_index, raft.commit
        probe = min(last, meta.index)
        conflicting = False
        if last > commit and probe > commit:
            expected = meta.term if probe == meta.index else self._committed_term(probe)
            conflicting = expected is not None and raft.term_at(probe) != expected
        base_before = raft.log_base_index

        def after(raft_after) -> None:
            if raft_after.log_base_index == meta.index and base_before != meta.index:
                self.hit("snapshot-installed")
                if conflicting:
                    self.hit("snapshot-over-conflicting-log")

        return after

    def _vote_request(self, node: int, raft, src, message: VoteRequest):
        candidate_behind = (message.last_log_term < raft.last_term
                            or (message.last_log_term == raft.last_term and message.last_log_index < raft.last_index))
        if message.pre_vote:
            in_lease = (raft.settings.check_quorum and raft.leader is not None
                        and raft.election_elapsed < raft.settings.election_ticks)
            if message.term > raft.term and not message.transfer and in_lease and not candidate_behind:
                self.hit("pre-vote-refused-by-lease")
            return None
        if not candidate_behind:
            return None

        def after(raft_after) -> None:
            if raft_after.term == message.term and raft_after.vote != src:
                self.hit("vote-refused-stale-log")

        return after

    def _append_request(self, node: int, raft, src, message: AppendRequest):
        last, last_term, commit = raft.last_index, raft.last_term, raft.commit
        if last <= commit or not message.entries:
            return None

        def after(raft_after) -> None:
            if raft_after.log_base_index < last and raft_after.term_at(last) != last_term:
                self.hit("uncommitted-entries-truncated")

        return after

    def _response(self, node: int, raft, src, message):
        if message.term > raft.term:
            self.hit("higher-term-in-response")
            if raft.state == State.LEADER:
                self.hit("leader-sees-higher-term")
        return None

    def _append_response(self, node: int, raft, src, message: AppendResponse):
        self._response(node, raft, src, message)
        if message.success and message.term == raft.term and raft.state == State.LEADER:
            progress = raft.progress.get(src)
            if progress is not None and len(progress.inflight) >= 2 and message.index < progress.inflight[-1][0]:
                self.hit("append-acked-while-another-in-flight")
        return None

    def _vote_response(self, node: int, raft, src, message: VoteResponse):
        if not (message.pre_vote and message.granted):
            self._response(node, raft, src, message)
        if (node, message.term) not in self.transfer_terms or message.pre_vote:
            return None

        def after(raft_after) -> None:
            key = (node, raft_after.term)
            if raft_after.state == State.LEADER and key in self.transfer_terms and key not in self.transfers_won:
                self.transfers_won.add(key)
                self.hit("leadership-transferred")

        return after

    def _timeout_now(self, node: int, raft, src, message: TimeoutNow):
        def after(raft_after) -> None:
            if raft_after.state in (State.CANDIDATE, State.LEADER) and raft_after.term > message.term:
                self.hit("transfer-campaign")
                self.transfer_terms.add((node, raft_after.term))
                if raft_after.state == State.LEADER and (node, raft_after.term) not in self.transfers_won:
                    self.transfers_won.add((node, raft_after.term))
                    self.hit("leadership-transferred")

        return after

    def _client_request(self, node: int, raft, src, message):
        if not isinstance(src, Client):
            return None
        if type(message) is ChangeMembership:
            self.membership_clients.add(src)
        if raft.state != State.LEADER:
            return None
        if type(message) is ChangeMembership:
            self.hit("membership-change-requested")
            return None
        if type(message) is TransferLeadership:
            self.hit("leadership-transfer-requested")
            return None
        highest = max((getattr(self.sim.nodes[n].actor, "raft", None) or raft).term for n in self.sim.node_ids)
        if highest > raft.term:
            self.hit("stale-leader-read" if type(message) is Read else "stale-leader-write")
        return None

    # -- messages as they leave ----------------------------------------------------------

    def _on_send(self, src: int, dst: int, message: Any) -> None:
        if type(message) is AppendResponse and message.success:
            actor = self.sim.nodes[src].actor
            if actor is not None and getattr(actor, "group_in_flight", None) is not None:
                self.hit("append-acked-during-persist")

    def _on_reply(self, node: int, client: Client, response: Any) -> None:
        if client in self.membership_clients:
            self.membership_clients.discard(client)
            if isinstance(response, ClientError):
                self.hit("membership-change-refused")

    # -- committed configurations --------------------------------------------------------

    def _configuration_applied(self, entry: Entry) -> None:
        index, previous = self.configuration
        if entry.index <= index:
            return
        configuration = Configuration.decode(entry.data)
        self.configuration = (entry.index, configuration)
        if previous is None:
            return
        for node, role in previous.members:
            if configuration.role(node) is None:
                self.removed.add(node)
                if role == Role.VOTER:
                    self.hit("voter-removed")
        for node, role in configuration.members:
            if previous.role(node) is None and role in (Role.STANDBY, Role.SPARE):
                self.hit("non-voter-added")
            if role == Role.VOTER and previous.role(node) != Role.VOTER and node in self.removed:
                self.hit("removed-node-rejoined-as-voter")

    # -- the database actor, after every step ---------------------------------------------

    def _database_step(self, sim: Simulation) -> None:
        for node_id in sim.node_ids:
            actor = sim.nodes[node_id].actor
            snapshot_index = getattr(actor, "snapshot_in_progress", None)
            if snapshot_index is None or actor.raft is None or actor.raft.state != State.LEADER:
                continue
            machine = getattr(actor, "database_machine", None)
            if machine is not None and getattr(machine, "only_in_wal", None):
                key = (node_id, sim.nodes[node_id].incarnation, snapshot_index)
                if key not in self.snapshot_reads_seen:
                    self.snapshot_reads_seen.add(key)
                    self.hit("checkpoint-waits-for-snapshot")


def attach_coverage(sim: Simulation, actor: str, checker: Any = None) -> Coverage | None:
    """A run's coverage counter (None for actors without a raft core)."""
    if actor not in ("raft", "database"):
        return None
    return Coverage(sim, checker).attach(actor)


def judged(actor: str, seeds: Sequence[int], nodes: int, all_nemeses: bool) -> bool:
    """Whether a sweep spends at least the standard budget for `actor`."""
    budget = STANDARD_BUDGET.get(actor)
    return budget is not None and all_nemeses and len(seeds) >= budget[0] and nodes >= budget[1]
