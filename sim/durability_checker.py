"""The durability checker: every message a node sends is judged, at the moment of the
Send, against what that node's simulated disk has made durable.

Why a checker at the Send, not only after crashes: a message that depends on state the
sender has not yet made durable (a vote, an acknowledgement, a leader's first append of
a new term) is only dangerous when a crash also lands in the window between the send
and the persist, and a sweep seldom puts one exactly there. Judging every Send needs no
such luck: the window being open is the bug.

What "durable" means here is read from the `SimDisk`, never from the node's own
bookkeeping (which records a write when it is requested): the durable images of the
metadata files (term, vote), of the log segments (entries) and of the snapshot files.
The rules (etcd-io/raft's persist-then-send; the Raft thesis §3.8):

- no message carries a term above the sender's durable term, except pre-vote requests
  and granted pre-votes, which carry a future term by design and promise nothing;
- a granted vote for term T is durable: the durable term is above T, or it is T and
  the durable vote names the candidate;
- a node leads term T only once its durable hard state is (T, itself) or later: the
  self-vote it counted is durable (checked after every step);
- a successful append acknowledgement for index i: entry i, with the term the sender's
  log holds at i, is in a durable segment, or i is covered by a durable snapshot;
- a finished snapshot acknowledgement for index i: a durable snapshot reaches i, or the
  durable log holds entry i.

A violation raises `SimulationFailure` (as every checker does), naming the rule.
"""

import bisect
from dataclasses import dataclass, field
from typing import Any

import msgpack

from ..core.raft import State
from ..core.raft_log_format import METADATA_FILES, decode_metadata, segment_first_index, snapshot_index_of
from ..core.raft_messages import AppendResponse, SnapshotResponse, VoteRequest, VoteResponse
from ..core.raft_types import HardState
from ..core.records import RECORD_HEADER_BYTES, RECORD_MAGIC, record_at
from .disk import SimDisk, SimFile
from .simulation import Simulation, SimulationFailure

__all__ = ["DurabilityChecker", "DurableView"]

def _durable_record(data: bytearray, offset: int) -> tuple[bytes, int] | None:
    """The payload of the valid record at `offset` and the offset after it, or None (a
    torn or missing record: nothing from here on is durable)."""
    payload = record_at(data, offset)
    return None if payload is None else (payload, offset + RECORD_HEADER_BYTES + len(payload))


@dataclass(slots=True, eq=False)   # hashed by identity: the token of its file observer
class _Segment:
    """The durable records of one segment file, read incrementally."""

    file: SimFile
    first_index: int                 # from the file's name
    damaged_at_rest: bool            # the nemesis flipped a bit in it (Simulation.corrupted)
    terms: dict[int, int] = field(default_factory=dict)   # index -> term
    parsed_end: int = 0
    skipped_damage: bool = False     # a damaged record was stepped over

    def refresh(self) -> None:
        changed = self.file.take_durable_change(self)
        if changed is None:
            return
        if changed < self.parsed_end:
            # Something already read was rewritten (a truncation, a torn rewrite after a
            # crash): read the file again from the start.
            self.terms, self.parsed_end, self.skipped_damage = {}, 0, False
        data = self.file.durable
        offset = self.parsed_end
        while True:
            record = _durable_record(data, offset)
            if record is None and self.damaged_at_rest:
                # A bit flipped at rest is not a torn tail: step over the damaged record
                # to the next valid one, if any (what it held is then unknown, not absent).
                record = self._next_valid_record(data, offset)
            if record is None:
                break   # a torn or unwritten tail: nothing from here on is durable
            payload, end = record
            offset = self.parsed_end = end
            try:
                decoded = msgpack.unpackb(payload, raw=False)
            except Exception:  # noqa: BLE001 - an undecodable record holds nothing usable
                self.skipped_damage = True
                continue
            if decoded and isinstance(decoded[0], list):   # a batch: [term, index, kind, data]...
                for term, index, _kind, _data in decoded:
                    self.terms[index] = term

    def _next_valid_record(self, data: bytearray, offset: int) -> tuple[bytes, int] | None:
        search_from = offset + 1
        while (candidate := data.find(RECORD_MAGIC, search_from)) >= 0:
            record = _durable_record(data, candidate)
            if record is not None:
                self.skipped_damage = True
                return record
            search_from = candidate + 1
        return None

    def term_at(self, index: int) -> int | None | object:
        """The durable term at `index`; None if absent; UNKNOWN if damage at rest hides it."""
        term = self.terms.get(index)
        if term is None and self.skipped_damage:
            return UNKNOWN
        return term


UNKNOWN = object()   # a durable entry hidden by damage at rest: the checker cannot judge


class DurableView:
    """What one node's simulated disk holds durably, re-read only where it changed."""

    def __init__(self, disk: SimDisk, damaged_at_rest) -> None:
        self.disk = disk
        self.damaged_at_rest = damaged_at_rest   # (file name) -> bool
        self.segments: dict[str, _Segment] = {}
        self.metadata: dict[str, tuple[SimFile, tuple[int, HardState] | None]] = {}

    def hard_state(self) -> HardState:
        best: tuple[int, HardState] | None = None
        for name in METADATA_FILES:
            file = self.disk.files.get(name)
            if file is None:
                continue
            cached = self.metadata.get(name)
            changed = file.take_durable_change(self)
            if cached is None or cached[0] is not file or changed is not None:
                # Metadata files are one small record: decoded whole whenever they change.
                cached = (file, decode_metadata(name, bytes(file.durable)) if file.durable.strip(b"\0") else None)
                self.metadata[name] = cached
            decoded = cached[1]
            if decoded is not None and (best is None or decoded[0] > best[0]):
                best = decoded
        return best[1] if best is not None else HardState()

    def snapshot_index(self) -> int:
        indexes = [index for name in self.disk.files if (index := snapshot_index_of(name)) is not None]
        return max(indexes, default=0)

    def term_at(self, index: int) -> int | None | object:
        """The term of the durable entry at `index` in the segment that holds it, None if
        there is none, UNKNOWN if damage at rest hides it."""
        named = sorted((first, name) for name in self.disk.files if (first := segment_first_index(name)) is not None)
        position = bisect.bisect_right([first for first, _ in named], index) - 1
        if position < 0:
            return None
        first, name = named[position]
        file = self.disk.files[name]
        segment = self.segments.get(name)
        damaged = self.damaged_at_rest(name)
        if segment is None or segment.file is not file or segment.damaged_at_rest != damaged:
            segment = self.segments[name] = _Segment(file, first, damaged)
        segment.refresh()
        return segment.term_at(index)


class DurabilityChecker:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.views: dict[int, DurableView] = {}
        self.checked_sends = 0
        self.violations = 0
        self.leaderships_checked: set[tuple[int, int, int]] = set()   # (node, life, term)

    def attach(self) -> "DurabilityChecker":
        self.sim.send_observers.append(self.on_send)
        self.sim.checkers.append(self)
        return self

    def view(self, node_id: int) -> DurableView:
        disk = self.sim.nodes[node_id].disk
        view = self.views.get(node_id)
        if view is None or view.disk is not disk:
            corrupted = self.sim.corrupted
            view = self.views[node_id] = DurableView(
                disk, lambda name: any(node_id in nodes for (file, _), nodes in corrupted.items() if file == name),
            )
        return view

    def fail(self, message: str) -> None:
        self.violations += 1
        raise SimulationFailure(self.sim.seed, self.sim.now_ms, f"durability: {message}")

    # -- at every Send -------------------------------------------------------------------

    def on_send(self, src: int, dst: int, message: Any) -> None:
        term = getattr(message, "term", None)
        if term is None:
            return   # not a raft message (e.g. the heartbeat actor's)
        self.checked_sends += 1
        kind = type(message)
        if kind is VoteRequest and message.pre_vote:
            return
        if kind is VoteResponse and message.pre_vote and message.granted:
            return
        view = self.view(src)
        durable = view.hard_state()
        name = kind.__name__
        if term > durable.term:
            self.fail(f"node {src} sent {name} of term {term} to node {dst} while its durable term is {durable.term}")
        if kind is VoteResponse and message.granted and not message.pre_vote:
            if durable.term == term and durable.vote != dst:
                self.fail(f"node {src} granted node {dst} its vote in term {term}, but its durable vote is {durable.vote}")
        elif kind is AppendResponse and message.success:
            self._check_entry_durable(src, view, message.index, term, name)
        elif kind is SnapshotResponse and message.done:
            if view.snapshot_index() < message.index:
                self._check_entry_durable(src, view, message.index, term, name)

    def _check_entry_durable(self, src: int, view: DurableView, index: int, acknowledged_in: int, what: str) -> None:
        """`acknowledged_in`: the term the acknowledgement was given in (its leader's)."""
        if index == 0 or index <= view.snapshot_index():
            return
        raft = getattr(self.sim.nodes[src].actor, "raft", None)
        expected = raft.term_at(index) if raft is not None else None
        durable = view.term_at(index)
        if durable is UNKNOWN:
            return
        if durable is None:
            self.fail(f"node {src} acknowledged index {index} ({what}) before that entry was durable")
        if raft is not None and raft.term > acknowledged_in and durable <= acknowledged_in:
            # Given in an earlier term, for the entry then in the log (durable now); a newer
            # leader has since replaced it in memory, and that truncation persists later.
            return
        if expected is not None and durable != expected:
            self.fail(f"node {src} acknowledged index {index} of term {expected} ({what}), "
                      f"but its durable log holds term {durable} there")

    # -- after every step ----------------------------------------------------------------

    def __call__(self, sim: Simulation) -> None:
        """A leader of term T counted its own vote: that vote must be durable. Checked at
        the first step in which a node leads a term (durable state never goes back
        within one life of a node)."""
        for node_id in sim.node_ids:
            node = sim.nodes[node_id]
            raft = getattr(node.actor, "raft", None)
            if raft is None or raft.state != State.LEADER:
                continue
            leadership = (node_id, node.incarnation, raft.term)
            if leadership in self.leaderships_checked:
                continue
            self.leaderships_checked.add(leadership)
            durable = self.view(node_id).hard_state()
            if durable.term < raft.term or (durable.term == raft.term and durable.vote != node_id):
                self.fail(f"node {node_id} leads term {raft.term} with durable term {durable.term} "
                          f"and vote {durable.vote}: it counted a vote that is not durable")
