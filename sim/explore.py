"""Exhaustive, bounded exploration of a tiny raft cluster (a TLC / stateright-style
model checker over the pure core).

What is explored
----------------
A few pure `Raft` cores (core/raft.py), driven exactly as the Ready contract says, over
every interleaving of these actions, breadth first:

- ``deliver M``: a message in flight (any of them, in any order) is stepped into its
  destination;
- ``lose M``: a message in flight disappears;
- ``persist N``: node N's oldest Ready that needs persisting becomes durable. Its
  ``messages_after_persist`` then leave (a message addressed to N itself, a
  candidate's own vote, is stepped back into N) and the Ready is advanced;
- ``crash N``: node N, while it holds unsynced Readys, loses them and everything in
  memory, and restarts as a fresh `Raft` built from its durable hard state and log;
- ``timeout N``: N's election timeout fires (``campaign()``), while its term is below
  the term bound; one action per node instead of individual ticks keeps branching small;
- ``propose N``: leader N appends a client command (a bounded number per path);
- ``heartbeat N``: leader N ticks once and broadcasts heartbeats (a bounded number per
  path, none by default: they only help recover from losses).

Each node's durable state (the hard state and log exactly as the persisted Readys left
them) is modelled apart from its in-memory state. A node takes every Ready as soon as
it has one (as actors/raft_node.py does), sends ``ready.messages`` at once, and queues
the Ready; Readys complete in order, so a Ready that needs no persist waits behind an
earlier one that does.

What is checked, in every state reached
---------------------------------------
- election safety: at most one leader per term. A per-path record of who led which
  term is part of the state, so a leader that crashed and forgot its term still
  counts against a second leader of that term;
- log matching: any two logs (in memory or durable, on any nodes) holding an entry
  with the same index and term hold the same entries up to it;
- state machine safety and leader completeness, against a per-path record of what was
  committed (each index's entry term, and the earliest term it was known committed in):
  a committed entry is never replaced, and a leader of term T holds every entry
  committed in a term before T (not those committed later: a delayed vote may elect a
  leader of an older term after a newer one committed);
- the core's own invariants (an `InvariantViolation` raised while stepping).

Breadth first, the first violation found has a shortest path; it is printed action by
action with the cluster's state at the end.

Why it is fast
--------------
A node's reaction to an input depends only on that node's state, so node transitions
are memoized: ``(node state id, input) -> (new node state id, messages sent)``. A
global state is then a flat tuple of small integers (node state ids, the sorted ids of
the messages in flight, the leaders record and the bound counters), cheap to hash and
to compare. The full, generic freezing of a node's state (every attribute of the
`Raft` object, so a field added to the core later is covered without changes here)
is paid once per distinct node state, not once per global state.

Everything iterates in a fixed order (node ids, message ids in order of first
appearance), so the count of distinct states depends only on the code and the bounds.
"""

import dataclasses
import sys
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterator, TextIO

from ..core.invariant import InvariantViolation, invariant
from ..core.raft import Raft, RaftSettings, Ready, State, UnsafeSwitches
from ..core.raft_messages import (
    AppendRequest, AppendResponse, HeartbeatRequest, HeartbeatResponse, TimeoutNow, VoteRequest, VoteResponse,
)
from ..core.raft_types import Configuration, Entry, EntryKind, HardState, Role

__all__ = [
    "ExploreBounds", "ExploreResult", "Violation", "add_explore_parser", "describe_message", "explore",
    "run_explore_command", "unsafe_switch_names",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExploreBounds:
    """The limits of one exploration (all stated in its output)."""

    nodes: int = 3
    depth_max: int = 10              # actions per path
    term_max: int = 3                # no node campaigns beyond this term
    proposals_max: int = 1           # client commands per path
    crashes_max: int = 1             # crash-and-restart actions per path
    heartbeats_max: int = 0          # leader heartbeat rounds per path
    message_copies_max: int = 1      # identical messages in flight at once; a further copy is lost
    loss: bool = True                # explore losing each message in flight
    pre_vote: bool = False           # campaign through pre-vote (longer paths per election)
    states_max: int | None = None    # stop after this many distinct states (None: no limit)
    unsafe: UnsafeSwitches = UnsafeSwitches()

    def validate(self) -> "ExploreBounds":
        for name in ("nodes", "depth_max", "term_max", "message_copies_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("proposals_max", "crashes_max", "heartbeats_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.states_max is not None and self.states_max < 1:
            raise ValueError("states_max must be at least 1")
        return self

    def describe(self) -> str:
        unsafe = ",".join(self.unsafe.enabled()) or "none"
        return (
            f"nodes={self.nodes} depth<={self.depth_max} term<={self.term_max} proposals<={self.proposals_max} "
            f"crashes<={self.crashes_max} heartbeats<={self.heartbeats_max} "
            f"copies<={self.message_copies_max} loss={'on' if self.loss else 'off'} "
            f"pre-vote={'on' if self.pre_vote else 'off'} unsafe={unsafe}"
            + (f" states<={self.states_max:,}" if self.states_max is not None else "")
        )


def unsafe_switch_names() -> tuple[str, ...]:
    """The names `UnsafeSwitches` accepts (only those read by core/raft.py change anything here)."""
    return tuple(field.name for field in dataclasses.fields(UnsafeSwitches))


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str                          # "election safety", "log matching", "state machine safety", ...
    message: str
    path: tuple[str, ...]              # the actions from the initial state, described
    final_state: tuple[str, ...]       # the cluster at the violation, one line per item


@dataclass(frozen=True, slots=True)
class ExploreResult:
    bounds: ExploreBounds
    states: int                        # distinct global states reached (the initial one included)
    transitions: int                   # actions taken (successors generated)
    node_states: int                   # distinct single-node states
    highest_term_led: int              # coverage: the highest term any node led (0: no leader)
    highest_commit: int                # coverage: the highest commit index any node reached
    depth_reached: int                 # deepest level holding a new state
    exhausted: bool                    # no new state within the bounds: the bounded space is covered
    stopped_by_states_max: bool
    violation: Violation | None
    wall_seconds: float

    @property
    def ok(self) -> bool:
        return self.violation is None

    def render(self) -> str:
        lines = [f"bounds: {self.bounds.describe()}"]
        if self.violation is not None:
            violation = self.violation
            lines.append(f"VIOLATION ({violation.kind}): {violation.message}")
            lines.append(f"path ({len(violation.path)} actions):")
            lines += [f"  {number:>3}. {step}" for number, step in enumerate(violation.path, 1)]
            lines.append("state at the violation:")
            lines += [f"  {line}" for line in violation.final_state]
        if self.exhausted:
            coverage = "every state within the bounds explored"
        elif self.stopped_by_states_max:
            coverage = "stopped at the state limit"
        elif self.violation is not None:
            coverage = "stopped at the first violation"
        else:
            coverage = f"stopped at depth {self.bounds.depth_max}"
        rate = self.states / self.wall_seconds if self.wall_seconds > 0 else 0.0
        lines.append(
            f"{'VIOLATION' if self.violation else 'ok'}: {self.states:,} distinct states "
            f"({self.node_states:,} distinct node states, {self.transitions:,} transitions), "
            f"depth reached {self.depth_reached}, {coverage}; {self.wall_seconds:.1f} s wall, {rate:,.0f} states/s"
        )
        lines.append(f"reached: leaders up to term {self.highest_term_led}, commit index up to {self.highest_commit}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Freezing and copying a node's state


class _NoJitterRng:
    """The core asks its RNG only for election-timeout jitter. Elections here are explicit
    `timeout` actions, so jitter is irrelevant; a stateless stand-in keeps it out of the
    state (and makes copying a core cheap)."""

    def randrange(self, stop: int) -> int:
        return 0


_NO_JITTER = _NoJitterRng()

# Attributes of a `Raft` that are the same for every node state of one exploration
# (settings) or stateless (the RNG stand-in): left out of a node's frozen key.
_CONSTANT_ATTRIBUTES = frozenset({"settings", "rng"})

_PRIMITIVE_TYPES = (int, str, bytes, bool, float, type(None))


def _freeze(value: Any) -> Any:
    """A hashable value made only of primitives and tuples that equals another's exactly
    when the two states are the same (dicts keep their iteration order: it can change
    the order in which a node sends)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, _PRIMITIVE_TYPES):
        return value
    kind = type(value)
    if kind in (tuple, list, deque):
        return tuple(_freeze(item) for item in value)
    if kind is dict:
        return tuple((_freeze(key), _freeze(item)) for key, item in value.items())
    if kind is bytearray:
        return bytes(value)
    if dataclasses.is_dataclass(value):
        return (kind.__name__,) + tuple(_freeze(getattr(value, field.name)) for field in dataclasses.fields(value))
    raise TypeError(f"sim/explore.py cannot freeze a {kind.__name__}: teach _freeze about it")


def _copy_mutable(value: Any) -> Any:
    """A copy sharing nothing mutable with `value` (immutable parts are shared)."""
    if isinstance(value, (Enum, *_PRIMITIVE_TYPES)) or value is _NO_JITTER:
        return value
    kind = type(value)
    if kind is list:
        return [_copy_mutable(item) for item in value]
    if kind is dict:
        return {key: _copy_mutable(item) for key, item in value.items()}
    if kind is deque:
        return deque(_copy_mutable(item) for item in value)
    if kind is tuple:
        return tuple(_copy_mutable(item) for item in value)
    if kind is bytearray:
        return bytearray(value)
    if dataclasses.is_dataclass(value):
        if kind.__dataclass_params__.frozen:
            return value
        copy = object.__new__(kind)
        for field in dataclasses.fields(value):
            object.__setattr__(copy, field.name, _copy_mutable(getattr(value, field.name)))
        return copy
    raise TypeError(f"sim/explore.py cannot copy a {kind.__name__}: teach _copy_mutable about it")


def _clone_raft(raft: Raft) -> Raft:
    clone = object.__new__(Raft)
    clone.__dict__.update({
        name: value if name in _CONSTANT_ATTRIBUTES else _copy_mutable(value) for name, value in raft.__dict__.items()
    })
    return clone


# ----------------------------------------------------------------------------------------
# One node: its core, its queue of Readys handed out, and its durable state


@dataclass(slots=True, eq=False)
class _NodeModel:
    """One node's state. Never mutated once built: a transition clones the core."""

    raft: Raft
    pending: tuple[Ready, ...]           # handed out, not yet completed (the head needs persisting)
    durable_hard_state: HardState
    durable_log: tuple[Entry, ...]
    leader_term: int = 0                 # the term it leads, 0 when not leading
    term: int = 0
    logs_id: int = 0                     # interned (log in memory, durable log): what log matching reads
    committed_terms: tuple[int, ...] = ()  # the terms of the entries it knows committed (index i at i - 1)


def _strip_sent(ready: Ready) -> Ready:
    """A queued Ready without the messages already sent: they no longer matter to the
    node, and keeping them would tell apart states that behave identically."""
    return dataclasses.replace(ready, messages=()) if ready.messages else ready


def _complete(raft: Raft, ready: Ready, outbox: list) -> None:
    """Ready contract steps 2 to 4 for a durable Ready."""
    for destination, message in ready.messages_after_persist:
        if destination == raft.id:
            raft.step(raft.id, message)        # a candidate's own vote, now durable
        else:
            outbox.append((raft.id, destination, message))
    raft.advance(ready)


def _settle(raft: Raft, pending: list[Ready], outbox: list) -> None:
    """Take every Ready the core has (as the node actor does after each input): send its
    `messages` at once, queue it, and complete queued Readys that need no persist once
    everything before them is durable."""
    while True:
        while pending and not pending[0].needs_persist():
            _complete(raft, pending.pop(0), outbox)
        if not raft.has_ready():
            return
        ready = raft.ready()
        if ready.snapshot is not None:
            raise InvariantViolation("sim/explore.py models no snapshots (none occur without compaction)")
        outbox.extend((raft.id, destination, message) for destination, message in ready.messages)
        pending.append(_strip_sent(ready))


def _persist(durable_log: tuple[Entry, ...], ready: Ready) -> tuple[Entry, ...]:
    """The durable log after `ready` is written (no compaction: index i sits at i - 1)."""
    log = durable_log
    if ready.truncate_after is not None:
        log = log[: ready.truncate_after]
    if ready.entries:
        first = ready.entries[0].index
        log = log[: first - 1] + tuple(ready.entries)
    return log


def _log_mismatch(left: tuple[Entry, ...], right: tuple[Entry, ...]) -> int | None:
    """The highest index where both logs hold an entry of the same term while their
    prefixes up to it differ (a log matching violation), else None. Checking the highest
    index with equal terms suffices: equal prefixes there imply equal prefixes below."""
    for index in range(min(len(left), len(right)), 0, -1):
        if left[index - 1].term == right[index - 1].term:
            return None if left[:index] == right[:index] else index
    return None


# ----------------------------------------------------------------------------------------
# Describing messages, actions and states (for the violation report)


def _entries_text(entries: tuple[Entry, ...]) -> str:
    return "[" + " ".join(
        f"{entry.index}@{entry.term}" + (f":{entry.data.decode()}" if entry.kind == EntryKind.NORMAL else "")
        for entry in entries
    ) + "]"


def describe_message(source: int, destination: int, message: Any) -> str:
    route = f"n{source}->n{destination}"
    match message:
        case VoteRequest():
            flags = " pre-vote" if message.pre_vote else ""
            last = f"{message.last_log_index}@{message.last_log_term}"
            return f"{route} VoteRequest(term={message.term} last={last}{flags})"
        case VoteResponse():
            flags = " pre-vote" if message.pre_vote else ""
            return f"{route} VoteResponse(term={message.term} {'granted' if message.granted else 'refused'}{flags})"
        case AppendRequest():
            return (f"{route} AppendRequest(term={message.term} prev={message.prev_index}@{message.prev_term} "
                    f"entries={_entries_text(message.entries)} commit={message.commit})")
        case AppendResponse():
            verdict = "ok" if message.success else "reject"
            return f"{route} AppendResponse(term={message.term} {verdict} index={message.index})"
        case HeartbeatRequest():
            return f"{route} Heartbeat(term={message.term} commit={message.commit})"
        case HeartbeatResponse():
            return f"{route} HeartbeatResponse(term={message.term} last={message.last_index})"
        case TimeoutNow():
            return f"{route} TimeoutNow(term={message.term})"
    return f"{route} {message!r}"


def _describe_node(node_id: int, model: _NodeModel) -> str:
    raft = model.raft
    vote = raft.vote if raft.vote is not None else "-"
    durable_vote = model.durable_hard_state.vote if model.durable_hard_state.vote is not None else "-"
    return (
        f"n{node_id}: {raft.state.value} term={raft.term} vote={vote} commit={raft.commit} "
        f"log={_entries_text(tuple(raft.entries))}"
        f" | durable term={model.durable_hard_state.term} vote={durable_vote} log={_entries_text(model.durable_log)}"
        f" | unsynced Readys={len(model.pending)}"
    )


# ----------------------------------------------------------------------------------------
# The explorer

# Inputs to a node (the second half of a memoized transition's key).
_PERSIST = ("persist",)
_CRASH = ("crash",)
_TIMEOUT = ("timeout",)
_HEARTBEAT = ("heartbeat",)


class _Explorer:
    def __init__(self, bounds: ExploreBounds) -> None:
        self.bounds = bounds.validate()
        self.settings = RaftSettings(pre_vote=bounds.pre_vote, check_quorum=False, unsafe=bounds.unsafe).validate()
        self.node_ids = tuple(range(1, bounds.nodes + 1))
        self.configuration = Configuration.of({node: Role.VOTER for node in self.node_ids})
        self.bootstrap_log = (Entry(1, 1, EntryKind.CONFIG, self.configuration.encode()),)
        # Interned node states and messages: a global state refers to them by index.
        self.node_models: list[_NodeModel] = []
        self.node_model_ids: dict[Any, int] = {}
        self.messages: list[tuple[int, int, Any]] = []
        self.message_ids: dict[Any, int] = {}
        # (node state id, input) -> (new node state id, ids of messages sent) or a str (a broken core invariant)
        self.transitions: dict[tuple, tuple[int, tuple[int, ...]] | str] = {}
        # Interned (log in memory, durable log) pairs, and log matching verdicts on them.
        self.logs: list[tuple[tuple[Entry, ...], tuple[Entry, ...]]] = []
        self.logs_ids: dict[Any, int] = {}
        self.pair_checks: dict[tuple[int, int, int, int], str | None] = {}
        # (committed record, node state id) -> (new record, violation) and -> violation
        self.commit_merges: dict[tuple[tuple, int], tuple[tuple, str | None]] = {}
        self.leader_checks: dict[tuple[tuple, int], str | None] = {}

    # -- interning ---------------------------------------------------------------------

    def _intern_message(self, source: int, destination: int, message: Any) -> int:
        key = (source, destination, _freeze(message))
        known = self.message_ids.get(key)
        if known is None:
            known = self.message_ids[key] = len(self.messages)
            self.messages.append((source, destination, message))
        return known

    def _intern_node(self, raft: Raft, pending: list[Ready], durable_hard_state: HardState,
                     durable_log: tuple[Entry, ...]) -> int:
        key = (
            tuple((name, _freeze(value)) for name, value in sorted(raft.__dict__.items())
                  if name not in _CONSTANT_ATTRIBUTES),
            _freeze(pending), _freeze(durable_hard_state), _freeze(durable_log),
        )
        known = self.node_model_ids.get(key)
        if known is None:
            memory_log = tuple(raft.entries)
            logs_key = (_freeze(memory_log), key[3])
            logs_id = self.logs_ids.get(logs_key)
            if logs_id is None:
                logs_id = self.logs_ids[logs_key] = len(self.logs)
                self.logs.append((memory_log, durable_log))
            known = self.node_model_ids[key] = len(self.node_models)
            self.node_models.append(_NodeModel(
                raft=raft, pending=tuple(pending), durable_hard_state=durable_hard_state, durable_log=durable_log,
                leader_term=raft.term if raft.state == State.LEADER else 0, term=raft.term, logs_id=logs_id,
                committed_terms=tuple(entry.term for entry in raft.entries[: raft.commit - raft.log_base_index]),
            ))
        return known

    def _restart(self, node_id: int, hard_state: HardState, log: tuple[Entry, ...]) -> tuple[int, tuple[int, ...]]:
        """A fresh core from durable state only (what a crash leaves)."""
        raft = Raft(node_id, settings=self.settings, rng=_NO_JITTER, configuration=self.configuration,
                    hard_state=hard_state, entries=log)
        pending: list[Ready] = []
        outbox: list = []
        _settle(raft, pending, outbox)
        sent = tuple(self._intern_message(*item) for item in outbox)
        return self._intern_node(raft, pending, hard_state, log), sent

    # -- one node's transition (memoized) ----------------------------------------------

    def _transition(self, model_id: int, node_input: tuple) -> tuple[int, tuple[int, ...]] | str:
        key = (model_id, node_input)
        known = self.transitions.get(key)
        if known is None:
            try:
                known = self._compute_transition(self.node_models[model_id], node_input)
            except InvariantViolation as error:
                known = str(error)
            self.transitions[key] = known
        return known

    def _compute_transition(self, model: _NodeModel, node_input: tuple) -> tuple[int, tuple[int, ...]]:
        node_id = model.raft.id
        if node_input is _CRASH:
            return self._restart(node_id, model.durable_hard_state, model.durable_log)
        raft = _clone_raft(model.raft)
        pending = list(model.pending)
        hard_state, log = model.durable_hard_state, model.durable_log
        outbox: list = []
        match node_input[0]:
            case "deliver":
                source, _, message = self.messages[node_input[1]]
                raft.step(source, message)
            case "persist":
                ready = pending.pop(0)
                hard_state = ready.hard_state or hard_state
                log = _persist(log, ready)
                _complete(raft, ready, outbox)
            case "timeout":
                raft.campaign()
            case "propose":
                raft.propose(node_input[1])
            case "heartbeat":
                raft.tick()
            case _:
                raise ValueError(f"unknown input {node_input!r}")
        _settle(raft, pending, outbox)
        sent = tuple(self._intern_message(*item) for item in outbox)
        return self._intern_node(raft, pending, hard_state, log), sent

    # -- log matching (memoized on the logs, not on whole node states) ----------------

    def _check_logs(self, first_node: int, first_logs_id: int, second_node: int, second_logs_id: int) -> str | None:
        """Log matching between every log of two nodes (in memory and durable); a node
        compared with itself checks its log in memory against its durable log."""
        key = (first_node, first_logs_id, second_node, second_logs_id)
        known = self.pair_checks.get(key, False)
        if known is False:
            known = None
            first_logs = tuple(zip(("memory", "durable"), self.logs[first_logs_id]))
            second_logs = tuple(zip(("memory", "durable"), self.logs[second_logs_id]))
            if first_node == second_node:
                first_logs, second_logs = first_logs[:1], second_logs[1:]
            for first_where, first_log in first_logs:
                for second_where, second_log in second_logs:
                    index = _log_mismatch(first_log, second_log)
                    if index is not None and known is None:
                        known = (f"n{first_node} ({first_where}) and n{second_node} ({second_where}) hold an entry of "
                                 f"term {first_log[index - 1].term} at index {index} but differ up to it")
            self.pair_checks[key] = known
        return known

    def _check_log_matching(self, nodes: tuple[int, ...] | list[int], changed_position: int | None) -> str | None:
        """Log matching in a state whose parent passed it: only the logs of the node at
        `changed_position` need comparing again (every pair when None)."""
        models = self.node_models
        positions = range(len(nodes)) if changed_position is None else (changed_position,)
        for position in positions:
            for other_position in range(len(nodes)):
                if changed_position is None and other_position < position:
                    continue   # that pair was compared from the other side
                first, second = sorted(((position + 1, models[nodes[position]].logs_id),
                                        (other_position + 1, models[nodes[other_position]].logs_id)))
                violation = self._check_logs(*first, *second)
                if violation is not None:
                    return violation
        return None

    # -- what was committed (a per-path record) ---------------------------------------

    def _merge_commits(self, record: tuple, model_id: int, node: int) -> tuple[tuple, str | None]:
        """Merge what node `node` (in state `model_id`) knows committed into the path's
        record of committed entries ((entry term, earliest term it was known committed)
        per index); a committed entry is never replaced (state machine safety)."""
        key = (record, model_id)
        known = self.commit_merges.get(key)
        if known is None:
            model = self.node_models[model_id]
            merged = list(record)
            violation = None
            for position, entry_term in enumerate(model.committed_terms):
                if position >= len(merged):
                    merged.append((entry_term, model.term))
                elif merged[position][0] != entry_term:
                    violation = (f"index {position + 1} was committed with term {merged[position][0]}, "
                                 f"n{node} now holds term {entry_term} there as committed")
                    break
                elif model.term < merged[position][1]:
                    merged[position] = (entry_term, model.term)
            merged_record = tuple(merged)
            # The very same object when nothing was learnt: callers test identity.
            known = self.commit_merges[key] = (record if merged_record == record else merged_record, violation)
        return known

    def _check_leader_completeness(self, record: tuple, model_id: int, node: int) -> str | None:
        """A leader of term T holds every entry committed in a term before T (not those
        committed later: a delayed vote may elect a leader of an older term after a
        newer one committed)."""
        key = (record, model_id)
        known = self.leader_checks.get(key, False)
        if known is False:
            known = None
            model = self.node_models[model_id]
            log = model.raft.entries
            for position, (entry_term, commit_term) in enumerate(record):
                if commit_term < model.leader_term and (position >= len(log) or log[position].term != entry_term):
                    known = (f"n{node} leads term {model.leader_term} without the entry {position + 1}@{entry_term} "
                             f"committed in term {commit_term}")
                    break
            self.leader_checks[key] = known
        return known

    def _check_commits(
        self, record: tuple, nodes: list[int], changed_position: int,
    ) -> tuple[tuple, str | None, str | None]:
        """(the path's new record of committed entries, violation kind, violation) after
        the node at `changed_position` moved to its new state in `nodes`."""
        models = self.node_models
        changed = models[nodes[changed_position]]
        merged = record
        if changed.committed_terms:
            merged, violation = self._merge_commits(record, nodes[changed_position], changed_position + 1)
            if violation is not None:
                return merged, "state machine safety", violation
        # A grown record concerns every leader; an unchanged one only a node that changed.
        for position, model_id in enumerate(nodes):
            if models[model_id].leader_term and (merged is not record or position == changed_position):
                violation = self._check_leader_completeness(merged, model_id, position + 1)
                if violation is not None:
                    return merged, "leader completeness", violation
        return merged, None, None

    # -- global states -----------------------------------------------------------------
    # A global state is the tuple (node state id per node..., messages in flight (sorted
    # ids, one per copy), leaders record (sorted (term, node) pairs), committed record
    # ((entry term, commit term) per index), proposals made, crashes made, heartbeats made).

    def initial_state(self) -> tuple:
        node_states = []
        in_flight: list[int] = []
        for node_id in self.node_ids:
            model_id, sent = self._restart(node_id, HardState(term=1), self.bootstrap_log)
            node_states.append(model_id)
            in_flight.extend(sent)
        return (*node_states, tuple(sorted(in_flight)), (), (), 0, 0, 0)

    def actions(self, state: tuple) -> Iterator[tuple]:
        """Every action enabled in `state`, in a fixed order."""
        bounds = self.bounds
        count = bounds.nodes
        in_flight = state[count]
        proposals, crashes, heartbeats = state[count + 3 :]
        distinct = sorted(set(in_flight))
        for message_id in distinct:
            yield ("deliver", message_id)
        if bounds.loss:
            for message_id in distinct:
                yield ("lose", message_id)
        for position in range(count):
            model = self.node_models[state[position]]
            if model.pending:
                yield ("persist", position)
                if crashes < bounds.crashes_max:
                    yield ("crash", position)
            if model.leader_term:
                if proposals < bounds.proposals_max:
                    yield ("propose", position)
                if heartbeats < bounds.heartbeats_max:
                    yield ("heartbeat", position)
            elif model.term < bounds.term_max:
                yield ("timeout", position)

    def successor(self, state: tuple, action: tuple) -> tuple[tuple | None, str | None, str | None]:
        """(next state, violation kind, violation message); the state is None when a
        core invariant broke (there is no next state)."""
        count = self.bounds.nodes
        in_flight = list(state[count])
        leaders = state[count + 1]
        committed = state[count + 2]
        proposals, crashes, heartbeats = state[count + 3 :]
        kind = action[0]
        if kind == "lose":
            in_flight.remove(action[1])
            return (*state[:count], tuple(in_flight), leaders, committed, proposals, crashes, heartbeats), None, None
        if kind == "deliver":
            message_id = action[1]
            in_flight.remove(message_id)
            position = self.messages[message_id][1] - 1
            node_input: tuple = action
        else:
            position = action[1]
            if kind == "persist":
                node_input = _PERSIST
            elif kind == "crash":
                node_input = _CRASH
                crashes += 1
            elif kind == "timeout":
                node_input = _TIMEOUT
            elif kind == "propose":
                proposals += 1
                node_input = ("propose", b"p%d" % proposals)
            else:
                heartbeats += 1
                node_input = _HEARTBEAT
        old_model_id = state[position]
        outcome = self.transitions.get((old_model_id, node_input))
        if outcome is None:
            outcome = self._transition(old_model_id, node_input)
        if outcome.__class__ is str:
            return None, "raft invariant", f"n{position + 1}: {outcome}"
        new_model_id, sent = outcome
        copies_max = self.bounds.message_copies_max
        for message_id in sent:
            # A copy beyond the bound is lost: loss is one of the explored behaviours anyway.
            if in_flight.count(message_id) < copies_max:
                in_flight.append(message_id)
        in_flight.sort()
        nodes = list(state[:count])
        nodes[position] = new_model_id
        violation_kind = violation = None
        leader_term = self.node_models[new_model_id].leader_term
        node = position + 1
        if leader_term and (leader_term, node) not in leaders:
            for term, other in leaders:
                if term == leader_term:
                    violation_kind = "election safety"
                    violation = f"nodes {other} and {node} both led term {term}"
            leaders = tuple(sorted(leaders + ((leader_term, node),)))
        if violation is None and self.node_models[new_model_id].logs_id != self.node_models[old_model_id].logs_id:
            violation = self._check_log_matching(nodes, position)
            if violation is not None:
                violation_kind = "log matching"
        if violation is None and (committed or self.node_models[new_model_id].committed_terms):
            committed, violation_kind, violation = self._check_commits(committed, nodes, position)
        return (*nodes, tuple(in_flight), leaders, committed, proposals, crashes, heartbeats), violation_kind, violation

    # -- reports -----------------------------------------------------------------------

    def describe_action(self, state: tuple, action: tuple) -> str:
        kind = action[0]
        if kind in ("deliver", "lose"):
            return f"{'deliver' if kind == 'deliver' else 'lose'} {describe_message(*self.messages[action[1]])}"
        node = action[1] + 1
        model = self.node_models[state[action[1]]]
        if kind == "persist":
            ready = model.pending[0]
            parts = []
            if ready.hard_state is not None:
                vote = ready.hard_state.vote if ready.hard_state.vote is not None else "-"
                parts.append(f"term={ready.hard_state.term} vote={vote}")
            if ready.truncate_after is not None:
                parts.append(f"truncate after {ready.truncate_after}")
            if ready.entries:
                parts.append(f"entries {_entries_text(ready.entries)}")
            return f"persist n{node} ({', '.join(parts)})"
        if kind == "crash":
            return f"crash n{node} (loses {len(model.pending)} unsynced Ready(s)), restart from durable state"
        if kind == "timeout":
            return f"timeout n{node} (campaigns from term {model.term})"
        if kind == "propose":
            return f"propose on n{node}"
        return f"heartbeat n{node}"

    def describe_changes(self, before: tuple, after: tuple) -> str:
        notes = []
        for position in range(self.bounds.nodes):
            old = self.node_models[before[position]].raft
            new = self.node_models[after[position]].raft
            if (old.state, old.term) != (new.state, new.term):
                notes.append(f"n{position + 1} {new.state.value} term {new.term}")
        return f"   -> {', '.join(notes)}" if notes else ""

    def describe_state(self, state: tuple) -> tuple[str, ...]:
        count = self.bounds.nodes
        lines = [_describe_node(position + 1, self.node_models[state[position]]) for position in range(count)]
        leaders = ", ".join(f"term {term}: n{node}" for term, node in state[count + 1]) or "none"
        lines.append(f"leaders so far: {leaders}")
        committed = " ".join(f"{index}@{entry_term}(in term {commit_term})"
                             for index, (entry_term, commit_term) in enumerate(state[count + 2], 1)) or "none"
        lines.append(f"committed so far: {committed}")
        lines.append(f"in flight: {len(state[count])} message(s)")
        lines += [f"  {describe_message(*self.messages[message_id])}" for message_id in state[count]]
        return tuple(lines)

    def replay(self, actions: list[tuple]) -> tuple[tuple[str, ...], tuple]:
        """Describe each action of a path from the initial state, and the final state."""
        state = self.initial_state()
        lines = []
        for action in actions:
            description = self.describe_action(state, action)
            following, _, _ = self.successor(state, action)
            if following is None:
                lines.append(description + "   -> a core invariant breaks")
                break
            lines.append(description + self.describe_changes(state, following))
            state = following
        return tuple(lines), state


def _path_of(trail) -> list[tuple]:
    actions = []
    while trail is not None:
        action, trail = trail
        actions.append(action)
    actions.reverse()
    return actions


def explore(
    bounds: ExploreBounds, *, progress: TextIO | None = sys.stderr, progress_interval_s: float = 2.0,
) -> ExploreResult:
    """Breadth-first search of every state within `bounds`; stops at the first violation."""
    started = time.perf_counter()
    explorer = _Explorer(bounds)
    initial = explorer.initial_state()
    initial_violation = explorer._check_log_matching(initial[: bounds.nodes], None)
    invariant(initial_violation is None, f"the initial state breaks log matching: {initial_violation}")
    seen = {initial}
    frontier: list[tuple[tuple, Any]] = [(initial, None)]   # (state, trail: (action, parent trail) or None)
    transitions = 0
    states_expanded = 0
    depth_reached = 0
    next_report = started + progress_interval_s
    violation: Violation | None = None
    stopped_by_states_max = False
    states_max = bounds.states_max
    depth = 0
    while frontier and depth < bounds.depth_max and violation is None and not stopped_by_states_max:
        depth += 1
        next_frontier: list[tuple[tuple, Any]] = []
        for state, trail in frontier:
            for action in explorer.actions(state):
                transitions += 1
                following, violation_kind, message = explorer.successor(state, action)
                if following is not None:
                    known_states = len(seen)
                    seen.add(following)   # one hash instead of two for `in` then `add`
                    if len(seen) == known_states:
                        continue
                    next_frontier.append((following, (action, trail)))
                if message is not None:
                    path, final = explorer.replay(_path_of((action, trail)))
                    violation = Violation(violation_kind, message, path, explorer.describe_state(final))
                    break
                if states_max is not None and len(seen) >= states_max:
                    stopped_by_states_max = True
                    break
            if violation is not None or stopped_by_states_max:
                break
            states_expanded += 1
            if progress is not None and states_expanded & 0xFF == 0:
                now = time.perf_counter()
                if now >= next_report:
                    next_report = now + progress_interval_s
                    elapsed = now - started
                    print(f"  depth {depth}: {len(seen):,} states, frontier {len(next_frontier):,}, "
                          f"{len(seen) / elapsed:,.0f} states/s, {elapsed:.0f} s", file=progress, flush=True)
        if next_frontier:
            depth_reached = depth
        frontier = next_frontier
    return ExploreResult(
        bounds=bounds, states=len(seen), transitions=transitions, node_states=len(explorer.node_models),
        highest_term_led=max(model.leader_term for model in explorer.node_models),
        highest_commit=max(model.raft.commit for model in explorer.node_models),
        depth_reached=depth_reached, exhausted=not frontier and violation is None and not stopped_by_states_max,
        stopped_by_states_max=stopped_by_states_max, violation=violation, wall_seconds=time.perf_counter() - started,
    )


# ----------------------------------------------------------------------------------------
# `raftlite sim explore`


def _unsafe_switches(text: str) -> UnsafeSwitches:
    """argparse type: a comma list of `UnsafeSwitches` names (hyphens or underscores)."""
    import argparse

    names = [name.strip().replace("-", "_") for name in text.split(",") if name.strip()]
    known = unsafe_switch_names()
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown unsafe switch {', '.join(unknown) or repr(text)}; choose from {', '.join(known)}")
    return UnsafeSwitches(**{name: True for name in names})


def add_explore_parser(sim_commands, positive_int, non_negative_int) -> None:
    defaults = ExploreBounds()
    parser = sim_commands.add_parser(
        "explore", help="exhaustive, bounded exploration of a tiny cluster of raft cores (model checking)",
        description="Breadth-first search over every interleaving of message delivery and loss, persist "
                    "completion, crash with unsynced state, election timeouts and client proposals of a few pure "
                    "raft cores; checks election safety and log matching in every state. Exit status 0: no "
                    "violation within the bounds; 1: a violation (its shortest path is printed).")
    parser.add_argument("--nodes", type=positive_int, default=defaults.nodes)
    parser.add_argument("--depth", type=positive_int, default=defaults.depth_max, help="actions per path")
    parser.add_argument("--max-term", type=positive_int, default=defaults.term_max, help="no campaign beyond this term")
    parser.add_argument("--proposals", type=non_negative_int, default=defaults.proposals_max,
                        help="client proposals per path")
    parser.add_argument("--crashes", type=non_negative_int, default=defaults.crashes_max,
                        help="crashes (with unsynced state lost) per path")
    parser.add_argument("--heartbeats", type=non_negative_int, default=defaults.heartbeats_max,
                        help="leader heartbeat rounds per path")
    parser.add_argument("--copies", type=positive_int, default=defaults.message_copies_max,
                        help="identical messages in flight at once")
    parser.add_argument("--no-loss", action="store_true", help="do not explore message loss")
    parser.add_argument("--pre-vote", action="store_true", help="campaign through pre-vote (much larger space)")
    parser.add_argument("--max-states", type=positive_int, default=None, help="stop after this many distinct states")
    parser.add_argument("--unsafe", type=_unsafe_switches, default=UnsafeSwitches(), metavar="SWITCH[,SWITCH]",
                        help="enable deliberate bugs (core/raft.py UnsafeSwitches), e.g. self_vote_before_persist")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run_explore_command(args) -> int:
    bounds = ExploreBounds(
        nodes=args.nodes, depth_max=args.depth, term_max=args.max_term, proposals_max=args.proposals,
        crashes_max=args.crashes, heartbeats_max=args.heartbeats, message_copies_max=args.copies,
        loss=not args.no_loss, pre_vote=args.pre_vote, states_max=args.max_states, unsafe=args.unsafe,
    )
    progress = None if args.quiet else sys.stderr
    if progress is not None:
        print(f"exploring {bounds.describe()}", file=progress, flush=True)
    result = explore(bounds, progress=progress)
    print(result.render())
    return 0 if result.ok else 1
