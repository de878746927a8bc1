"""A heartbeat failure detector: the small real actor that exercises every simulator fault.

It is not a stand-in for Raft; it is the simplest actor that touches every part of the
contract, so the simulator's faults can be observed through it:

- network: every `heartbeat_interval_ms` it sends `Heartbeat` to every peer and suspects
  a peer it has not heard from for `suspect_after_ms` (partitions, loss, clogging and
  pauses show up as suspicions; duplication and reordering as stale sequence numbers);
- disk: at start it reads its incarnation number back, increments it and writes it
  durably *before* sending anything (persist-then-send, the rule Raft's votes follow),
  and it appends every suspicion change to a checksummed journal, synced per change;
  restarting after a crash shows which journal bytes were durable, and a torn or
  corrupt journal is detected (torn tail: cut off; corruption: counted and reported);
- a corrupt incarnation file makes it refuse to start (`Halt`), as a storage engine must;
- clients: a `StatusRequest` is answered with a `Reply`.
"""

import struct
from dataclasses import dataclass
from typing import Any, Hashable, Mapping

from .contract import Client, Context, IoResult, NodeId, StatusRequest, StatusResponse
from ..core.records import encode_record, scan_records

__all__ = ["Heartbeat", "HeartbeatDetector", "StatusRequest", "StatusResponse"]

INCARNATION_FILE = "incarnation"
JOURNAL_FILE = "journal"
_JOURNAL_ENTRY = struct.Struct("<dBI")  # local time ms, event (1 suspect, 0 trust), peer


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    incarnation: int
    sequence: int


class HeartbeatDetector:
    def __init__(self, suspect_after_ms: float | None = None) -> None:
        self._suspect_after_override = suspect_after_ms

    # -- handlers ------------------------------------------------------------------------

    def on_start(self, ctx: Context) -> None:
        self.ctx = ctx
        self.suspect_after_ms = self._suspect_after_override or ctx.config.election_timeout_ms
        self.sequence = 0
        self.started = False  # heartbeats begin only once the incarnation is durable
        self.last_heard: dict[NodeId, float] = {}
        self.last_sequence: dict[NodeId, int] = {}
        self.peer_incarnation: dict[NodeId, int] = {}
        self.suspected: set[NodeId] = set()
        self.heartbeats_received = 0
        self.stale_heartbeats = 0
        self.disk_errors = 0
        self.journal_writes_pending = 0

        incarnation_bytes = ctx.files.get(INCARNATION_FILE, b"")
        scan = scan_records(incarnation_bytes)
        if incarnation_bytes and not scan.records:
            ctx.halt(f"{INCARNATION_FILE}: corrupt record at offset 0")
            return
        previous = int.from_bytes(scan.records[-1][1], "little") if scan.records else 0
        self.incarnation = previous + 1

        journal = ctx.files.get(JOURNAL_FILE, b"")
        journal_scan = scan_records(journal)
        self.journal_records_recovered = len(journal_scan.records)
        self.journal_corrupt_offset = journal_scan.corrupt_offset
        self.journal_torn_tail = journal_scan.torn_tail
        self.journal_end = journal_scan.valid_end
        if journal_scan.torn_tail:
            ctx.truncate(("truncate-journal",), JOURNAL_FILE, journal_scan.valid_end)
        elif journal_scan.corrupt_offset is not None:
            # Keep the journal as evidence; append after everything that is there.
            self.journal_end = len(journal)

        record = encode_record(self.incarnation.to_bytes(8, "little"))
        ctx.write(("incarnation",), INCARNATION_FILE, 0, record, durable=True)

    def on_message(self, src: NodeId | Client, message: Any) -> None:
        match message:
            case Heartbeat(incarnation=incarnation, sequence=sequence) if not isinstance(src, Client):
                self._on_heartbeat(src, incarnation, sequence)
            case StatusRequest() if isinstance(src, Client):
                self.ctx.reply(src, StatusResponse(node_id=self.ctx.node_id, status=self.status()))
            case _:
                # A peer's unknown message is dropped, never trusted; so is a heartbeat
                # from a client, or a status request from a peer (it has no reply path).
                pass

    def on_timer(self, timer: Hashable) -> None:
        if timer == "beat":
            self._beat()

    def on_io_done(self, token: Hashable, result: IoResult) -> None:
        if not result.ok:
            self.disk_errors += 1
        match token:
            case ("incarnation",):
                if result.ok:
                    self.started = True
                    self._beat()
                else:
                    # Without a durable incarnation we must not speak; try again later.
                    self.ctx.write(
                        ("incarnation",), INCARNATION_FILE, 0,
                        encode_record(self.incarnation.to_bytes(8, "little")), durable=True,
                    )
            case ("journal-sync", _):
                self.journal_writes_pending -= 1
            case _:
                pass

    # -- behaviour -----------------------------------------------------------------------

    def _beat(self) -> None:
        ctx = self.ctx
        now = ctx.now_ms()
        self.sequence += 1
        for peer in ctx.peers:
            ctx.send(peer, Heartbeat(incarnation=self.incarnation, sequence=self.sequence))
            heard = self.last_heard.get(peer)
            if peer not in self.suspected and (heard is None or now - heard > self.suspect_after_ms):
                if heard is not None or now > self.suspect_after_ms:
                    self._change(peer, suspect=True)
        ctx.set_timer("beat", ctx.config.heartbeat_interval_ms)

    def _on_heartbeat(self, src: NodeId, incarnation: int, sequence: int) -> None:
        if not self.started:
            return
        known_incarnation = self.peer_incarnation.get(src, 0)
        if incarnation < known_incarnation or (
            incarnation == known_incarnation and sequence <= self.last_sequence.get(src, 0)
        ):
            self.stale_heartbeats += 1  # duplicated or reordered by the network
            return
        self.heartbeats_received += 1
        self.peer_incarnation[src] = incarnation
        self.last_sequence[src] = sequence
        self.last_heard[src] = self.ctx.now_ms()
        if src in self.suspected:
            self._change(src, suspect=False)

    def _change(self, peer: NodeId, *, suspect: bool) -> None:
        if suspect:
            self.suspected.add(peer)
        else:
            self.suspected.discard(peer)
        entry = encode_record(_JOURNAL_ENTRY.pack(self.ctx.now_ms(), int(suspect), peer))
        self.ctx.write(("journal-write", self.journal_end), JOURNAL_FILE, self.journal_end, entry)
        self.journal_end += len(entry)
        self.journal_writes_pending += 1
        self.ctx.sync(("journal-sync", self.journal_end), JOURNAL_FILE)

    def status(self) -> Mapping[str, Any]:
        return {
            "incarnation": self.incarnation,
            "started": self.started,
            "suspected": sorted(self.suspected),
            "heartbeats": self.heartbeats_received,
            "stale": self.stale_heartbeats,
            "disk_errors": self.disk_errors,
            "journal_recovered": self.journal_records_recovered,
            "journal_torn_tail": self.journal_torn_tail,
            "journal_corrupt_offset": self.journal_corrupt_offset,
        }
