"""Durable raft storage on the simulated disk: crashes, torn tails, corruption, retries."""

import random

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from raftlite.actors.contract import Context, IoResult, Write
from raftlite.actors.raft_storage import RaftStorage
from raftlite.core.raft_log_format import (
    FORMAT_VERSION,
    StorageCorruption,
    UnsupportedFormatVersion,
    encode_metadata,
    encode_segment_header,
    recover,
    segment_file_name,
    snapshot_file_name,
)
from raftlite.core.raft_types import Configuration, Entry, EntryKind, HardState, Role, Snapshot, SnapshotMeta
from raftlite.core.records import encode_record
from raftlite.sim.disk import CRASH_MODES
from raftlite.sim.simulation import Simulation
from raftlite.sim.trace import Trace

pytestmark = pytest.mark.timeout(120)

CONFIGURATION = Configuration.of({1: Role.VOTER, 2: Role.VOTER, 3: Role.STANDBY})


# -- a small test actor driving RaftStorage ------------------------------------------------


class StorageNode:
    """Test actor: recovers at start, then runs the storage calls the test sends it."""

    def __init__(self, segment_bytes_max: int, writes: list):
        self.segment_bytes_max = segment_bytes_max
        self.writes = writes  # every Write command ever emitted, across incarnations

    def on_start(self, ctx: Context) -> None:
        self.ctx = ctx
        self.recovered = recover(ctx.files)
        self.storage = RaftStorage(ctx, self.recovered, segment_bytes_max=self.segment_bytes_max)
        self.completed: list = []
        self.results: list = []
        self._note_commands()

    def on_message(self, src, action) -> None:
        action(self)
        self._note_commands()

    def on_timer(self, timer) -> None:
        pass

    def on_io_done(self, token, result: IoResult) -> None:
        self.results.append((token, result))
        self.completed.extend(self.storage.on_io_done(token, result))
        self._note_commands()

    def _note_commands(self) -> None:
        self.writes.extend(command for command in self.ctx.out if isinstance(command, Write))

    def status(self):
        return self.storage.status()


def storage_sim(seed=1, segment_bytes_max=1 << 20, files=None):
    writes: list = []
    sim = Simulation(
        seed=seed, node_ids=[1], actor_factory=lambda n: StorageNode(segment_bytes_max, writes), trace=Trace(keep=False),
    )
    if files:
        disk = sim.node(1).disk
        for name, data in files.items():
            disk._write(name, 0, data, True)
    sim.start()
    sim.writes = writes
    return sim


def act(sim, action) -> None:
    sim.node(1).input("on_message", ("test", action))


def persist(sim, group_id, **request) -> None:
    act(sim, lambda node: node.completed.extend(node.storage.persist(group_id, **request)))


def node(sim) -> StorageNode:
    return sim.actor(1)


def settle(sim, ms=500.0) -> None:
    sim.run_for(ms)


def step_until(sim, predicate, limit=10_000) -> None:
    for _ in range(limit):
        if predicate():
            return
        sim.env.step()
    raise AssertionError("condition never became true")


def make_entries(first, count, term, size=40, salt=0) -> list[Entry]:
    rng = random.Random(first * 1_000_003 + term * 7919 + salt)
    return [
        Entry(term=term, index=index, kind=EntryKind.NORMAL, data=rng.randbytes(size))
        for index in range(first, first + count)
    ]


def snapshot_at(index, term, data=b"state") -> Snapshot:
    return Snapshot(SnapshotMeta(index=index, term=term, configuration=CONFIGURATION, configuration_index=1), data)


def durable(sim) -> dict[str, bytes]:
    return sim.node(1).disk.durable_files()


def apply_repairs(files, recovered) -> dict[str, bytes]:
    files = dict(files)
    for name, size in recovered.repairs:
        files[name] = files[name][:size]
    for name in recovered.stale_files:
        files.pop(name, None)
    return files


# -- (a) completed groups survive every crash mode exactly ------------------------------------


@pytest.mark.parametrize("mode", CRASH_MODES)
def test_completed_groups_survive_any_crash_exactly(mode):
    sim = storage_sim(segment_bytes_max=600)
    log = make_entries(1, 12, term=1)
    persist(sim, "g1", hard_state=HardState(1, 1), entries=log[:5])
    persist(sim, "g2", entries=log[5:9])
    persist(sim, "g3", hard_state=HardState(2, None), entries=log[9:])
    settle(sim)
    assert node(sim).completed == ["g1", "g2", "g3"]
    assert len(node(sim).storage.segment_files) > 1   # rolled over at least once
    sim.crash(1, mode)
    recovered = recover(durable(sim))
    assert recovered.entries == log
    assert recovered.hard_state == HardState(2, None) and recovered.metadata_version == 2
    assert recovered.repairs == [] and recovered.stale_files == []
    # And the node keeps going from there.
    sim.restart(1)
    more = make_entries(13, 3, term=2)
    persist(sim, "g4", entries=more)
    settle(sim)
    assert node(sim).completed == ["g4"]
    sim.crash(1, mode)
    assert recover(durable(sim)).entries == log + more


class Model:
    """The log, snapshot and hard state after each issued group, to judge a crash against."""

    def __init__(self, recovered):
        snapshot = recovered.snapshot
        base_snapshot = snapshot.meta.index if snapshot is not None else 0
        self.snapshots = {base_snapshot: snapshot}
        self.base = ({entry.index: entry for entry in recovered.entries}, None, base_snapshot)
        self.groups: list[tuple[dict, int | None, int]] = []  # (log, entries cut after, snapshot index)
        self.hard_states = {recovered.metadata_version: recovered.hard_state}
        self.metadata_version = recovered.metadata_version
        self.version_after: list[int] = []
        self.base_version = recovered.metadata_version

    def log(self) -> dict:
        return dict((self.groups[-1] if self.groups else self.base)[0])

    def snapshot_index(self) -> int:
        return (self.groups[-1] if self.groups else self.base)[2]

    def add(self, *, hard_state=None, entries=(), truncate_after=None, snapshot=None):
        log, cut, snapshot_index = self.log(), truncate_after, self.snapshot_index()
        if truncate_after is not None:
            log = {index: entry for index, entry in log.items() if index <= truncate_after}
        if snapshot is not None:
            snapshot_index = snapshot.meta.index
            self.snapshots[snapshot_index] = snapshot
            if snapshot_index >= max(log, default=0):
                log, cut = {}, snapshot_index if cut is None else min(cut, snapshot_index)  # replaced
        for entry in entries:
            log[entry.index] = entry
        if hard_state is not None:
            self.metadata_version += 1
            self.hard_states[self.metadata_version] = hard_state
        self.groups.append((log, cut, snapshot_index))
        self.version_after.append(self.metadata_version)

    def check(self, recovered, completed: int) -> None:
        """What a crash may leave: every completed group, and pieces of later ones only."""
        durable_log, _, durable_snapshot = self.groups[completed - 1] if completed else self.base
        later = self.groups[completed:]
        snapshot_index = recovered.snapshot.meta.index if recovered.snapshot is not None else 0
        assert snapshot_index >= durable_snapshot
        assert snapshot_index in [durable_snapshot] + [group[2] for group in later]
        assert recovered.snapshot == self.snapshots[snapshot_index]
        cuts = [cut for _, cut, _ in later if cut is not None]
        keep_through = min([max(durable_log, default=0)] + cuts)
        got = {entry.index: entry for entry in recovered.entries}
        assert not got or min(got) == snapshot_index + 1 or snapshot_index == 0
        for index in range(max(min(durable_log, default=1), snapshot_index + 1), keep_through + 1):
            assert got.get(index) == durable_log[index], f"completed entry {index} lost or changed"
        for index, entry in got.items():
            candidates = [durable_log.get(index)] + [log.get(index) for log, _, _ in later]
            assert entry in candidates, f"entry {index} holds content no group wrote there"
        durable_version = self.version_after[completed - 1] if completed else self.base_version
        assert durable_version <= recovered.metadata_version <= self.metadata_version
        assert recovered.hard_state == self.hard_states[recovered.metadata_version]

    def expect(self, recovered) -> None:
        """Everything completed: recovery gives exactly the last group's state."""
        snapshot_index = self.snapshot_index()
        assert recovered.snapshot == self.snapshots[snapshot_index]
        assert {e.index: e for e in recovered.entries} == {i: e for i, e in self.log().items() if i > snapshot_index}
        assert recovered.hard_state == self.hard_states[self.metadata_version]


@pytest.mark.parametrize("mode", CRASH_MODES)
def test_crashes_in_flight_keep_every_completed_group(mode):
    for seed in range(1, 16):
        sim = storage_sim(seed=seed, segment_bytes_max=700)
        model = Model(node(sim).recovered)
        rng = random.Random(seed)
        index, term = 0, 1
        for group in range(12):
            request = {}
            if index > 3 and rng.random() < 0.25:
                request["truncate_after"] = index = index - rng.randint(1, 3)
                term += 1
            if rng.random() < 0.4:
                request["hard_state"] = HardState(term, rng.choice([None, 1, 2]))
            count = rng.randint(1, 4)
            request["entries"] = make_entries(index + 1, count, term, size=rng.randint(10, 300), salt=seed)
            index += count
            persist(sim, group, **request)
            model.add(**request)
        sim.run_for(rng.uniform(0.0, 25.0))
        completed = len(node(sim).completed)
        assert node(sim).completed == list(range(completed))
        sim.crash(1, mode)
        recovered = recover(durable(sim))
        model.check(recovered, completed)
        assert recover(apply_repairs(durable(sim), recovered)).repairs == []


# -- (b) a torn tail is cut off ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["tear", "garbage"])
def test_a_torn_tail_is_repaired(mode):
    for seed in range(1, 40):
        sim = storage_sim(seed=seed)
        first = make_entries(1, 4, term=1, size=100)
        persist(sim, "first", entries=first)
        settle(sim)
        second = make_entries(5, 3, term=1, size=900)  # several sectors: tears can split it
        persist(sim, "second", entries=second)
        # The first group took the header and one durable write; the second group's
        # durable write is in flight when the node crashes.
        assert len(node(sim).results) == 2 and node(sim).completed == ["first"]
        segment = node(sim).storage.segment_files[-1]
        batch_start = node(sim).storage._segments[-1].batches[-1].start
        sim.crash(1, mode)
        files = durable(sim)
        recovered = recover(files)
        if not recovered.repairs:
            assert recovered.entries in (first, first + second)  # kept whole, or lost whole
            continue
        assert recovered.entries == first
        assert recovered.repairs == [(segment, batch_start)]
        repaired = apply_repairs(files, recovered)
        again = recover(repaired)
        assert again.repairs == [] and again.entries == first
        # The node repairs it itself on restart, then appends where the torn batch was.
        sim.restart(1)
        assert node(sim).recovered.repairs == [(segment, batch_start)]
        persist(sim, "third", entries=second)
        settle(sim)
        assert node(sim).completed == ["third"]
        final = recover(durable(sim))
        assert final.entries == first + second and final.repairs == []
        return
    pytest.fail("no seed tore the tail")


# -- (c) corruption is refused, naming file and offset ---------------------------------------


def flip(files, name, offset) -> dict[str, bytes]:
    files = dict(files)
    data = bytearray(files[name])
    data[offset] ^= 0x10
    files[name] = bytes(data)
    return files


def written_log(segment_bytes_max=1 << 20, groups=4):
    sim = storage_sim(segment_bytes_max=segment_bytes_max)
    for group in range(groups):
        persist(sim, group, entries=make_entries(group * 3 + 1, 3, term=1, size=120))
    settle(sim)
    assert node(sim).completed == list(range(groups))
    return sim


def test_a_flipped_bit_in_a_batch_followed_by_a_valid_batch_is_corruption():
    sim = written_log()
    storage = node(sim).storage
    (segment,) = storage._segments
    second = segment.batches[1]
    middle = (second.start + second.end) // 2
    assert storage.locate(segment.file, middle) in range(4, 7)
    assert storage.batch_at(segment.file, middle) == (4, 6)
    with pytest.raises(StorageCorruption) as caught:
        recover(flip(durable(sim), segment.file, middle))
    assert caught.value.file == segment.file and caught.value.offset == second.start
    assert segment.file in str(caught.value) and f"offset {second.start}" in str(caught.value)


def test_a_flipped_bit_in_a_closed_segment_is_corruption_even_in_its_last_batch():
    sim = written_log(segment_bytes_max=400)
    storage = node(sim).storage
    closed = storage._segments[0]
    assert len(storage._segments) > 1
    last_batch = closed.batches[-1]
    with pytest.raises(StorageCorruption) as caught:
        recover(flip(durable(sim), closed.file, last_batch.end - 1))
    assert caught.value.file == closed.file and caught.value.offset == last_batch.start
    assert "closed segment" in str(caught.value)


def test_a_flipped_bit_in_the_newest_snapshot_is_corruption():
    sim = written_log()
    persist(sim, "snap", snapshot=snapshot_at(6, 1, data=bytes(300)))
    settle(sim)
    assert node(sim).completed[-1] == "snap"
    name = snapshot_file_name(6)
    files = durable(sim)
    assert recover(files).snapshot == snapshot_at(6, 1, data=bytes(300))
    with pytest.raises(StorageCorruption) as caught:
        recover(flip(files, name, 100))
    assert caught.value.file == name and caught.value.offset == 0 and name in str(caught.value)


def test_the_simulators_corruption_guard_can_use_locate():
    sim = written_log()
    storage = node(sim).storage
    segment = storage._segments[0]
    assert storage.locate(segment.file, 0) is None               # the header
    assert storage.locate("metadata1", 0) is None
    assert [storage.locate(segment.file, offset) for offset in segment.batches[0].entry_offsets] == [1, 2, 3]
    assert storage.locate(segment.file, segment.batches[0].start) == 1  # record framing
    # A guard that spares the last batch: every flip it allows is caught as corruption.
    sim.corruption_guard = lambda n, file, offset: storage.locate(file, offset) is not None \
        and storage.batch_at(file, offset)[1] != storage.last_index
    flipped = sim.corrupt(1)
    assert flipped is not None
    with pytest.raises(StorageCorruption) as caught:
        recover(durable(sim))
    assert caught.value.file == flipped[0]


@pytest.mark.parametrize("missing, refusal", [
    (1, "gap"),
    # Entries 1..k went into a snapshot that is now missing: starting from the rest
    # would apply later entries to an empty state machine.
    (0, "after no snapshot"),
])
def test_a_log_with_a_segment_missing_is_refused(missing, refusal):
    sim = written_log(segment_bytes_max=400)
    files = durable(sim)
    del files[node(sim).storage.segment_files[missing]]
    with pytest.raises(StorageCorruption, match=refusal):
        recover(files)


def test_unknown_versions_and_misnamed_segments_are_refused():
    future = {segment_file_name(1): encode_record(msgpack.packb([FORMAT_VERSION + 1, 1]))}
    with pytest.raises(UnsupportedFormatVersion, match="format version 2"):
        recover(future)
    with pytest.raises(UnsupportedFormatVersion):
        recover({"metadata1": encode_record((FORMAT_VERSION + 1).to_bytes(4, "little") + bytes(25))})
    misnamed = {segment_file_name(5): encode_segment_header(4)}
    with pytest.raises(StorageCorruption, match="header says first index 4"):
        recover(misnamed)


# -- (d) metadata survives a crash between its two writes --------------------------------------


def test_metadata_survives_a_torn_newest_version():
    files = {}
    for version, hard_state in enumerate([HardState(1, 1), HardState(2, None), HardState(3, 2)], start=1):
        files["metadata1" if version % 2 else "metadata2"] = encode_metadata(version, hard_state)
    assert (recover(files).metadata_version, recover(files).hard_state) == (3, HardState(3, 2))
    newest = encode_metadata(4, HardState(4, 3))   # goes to metadata2, over version 2
    for cut in range(1, len(newest)):
        for tail in (bytes(len(newest) - cut), random.Random(cut).randbytes(len(newest) - cut)):
            if newest[:cut] + tail == newest:
                continue  # the "lost" bytes were zeros anyway: the write is whole
            torn = dict(files, metadata2=newest[:cut] + tail)
            recovered = recover(torn)
            assert (recovered.metadata_version, recovered.hard_state) == (3, HardState(3, 2))
    recovered = recover(dict(files, metadata2=newest))
    assert (recovered.metadata_version, recovered.hard_state) == (4, HardState(4, 3))
    # Both copies unreadable: the vote is lost, and the node must not start.
    with pytest.raises(StorageCorruption, match="metadata"):
        recover({"metadata1": newest[:10] + bytes(31), "metadata2": b"\xff" * 41})
    with pytest.raises(StorageCorruption, match="metadata1"):
        recover({"metadata1": newest[:-1] + b"\x00"})


@pytest.mark.parametrize("mode", CRASH_MODES)
def test_metadata_under_crashes_is_the_last_completed_version_or_the_next(mode):
    for seed in range(1, 12):
        sim = storage_sim(seed=seed)
        states = {0: HardState()}
        for version in range(1, 7):
            states[version] = HardState(version, version % 3 or None)
            persist(sim, version, hard_state=states[version])
        sim.run_for(random.Random(seed).uniform(0, 8))
        completed = len(node(sim).completed)
        sim.crash(1, mode)
        recovered = recover(durable(sim))
        assert recovered.metadata_version in (completed, completed + 1)
        assert recovered.hard_state == states[recovered.metadata_version]


# -- (e) truncation ------------------------------------------------------------------------------


@pytest.mark.parametrize("truncate_after", [3, 5, 1, 0, 11])
def test_truncate_then_append_survives_recovery(truncate_after):
    sim = storage_sim(segment_bytes_max=500)
    log = []
    for group in range(4):  # batches 1-3, 4-6, 7-9, 10-12 over a few segments
        batch = make_entries(group * 3 + 1, 3, term=1, size=90)
        log += batch
        persist(sim, group, entries=batch)
    replacement = make_entries(truncate_after + 1, 4, term=2, size=70)
    persist(sim, "replace", truncate_after=truncate_after, entries=replacement, hard_state=HardState(2, 3))
    settle(sim)
    assert node(sim).completed == [0, 1, 2, 3, "replace"]
    expected = log[:truncate_after] + replacement
    assert node(sim).storage.last_index == expected[-1].index
    recovered = recover(durable(sim))
    assert recovered.entries == expected and recovered.repairs == [] and recovered.stale_files == []
    sim.crash(1, "garbage")
    sim.restart(1)
    assert node(sim).recovered.entries == expected
    # Truncating again after a restart rewrites from recovered entries.
    persist(sim, "again", truncate_after=truncate_after + 2, entries=make_entries(truncate_after + 3, 1, term=3))
    settle(sim)
    sim.crash(1, "lose")
    assert recover(durable(sim)).entries == expected[:truncate_after + 2] + make_entries(truncate_after + 3, 1, term=3)


# -- (f) EIO: retry rewrites the same bytes --------------------------------------------------------


def assert_same_bytes_at_same_places(writes):
    seen = {}
    for write in writes:
        key = (write.file, write.offset)
        assert seen.setdefault(key, write.data) == write.data, f"different bytes rewritten at {key}"


def test_eio_on_a_write_then_retry_rewrites_the_same_bytes():
    sim = storage_sim()
    persist(sim, "first", entries=make_entries(1, 3, term=1))
    settle(sim)
    sim.disk_errors(1, 1)
    second = make_entries(4, 3, term=1)
    persist(sim, "second", entries=second, hard_state=HardState(1, 1))
    persist(sim, "third", entries=make_entries(7, 2, term=1))
    settle(sim)
    storage = node(sim).storage
    assert storage.failed and storage.error == "EIO" and node(sim).completed == ["first"]
    writes_before = len(sim.writes)
    act(sim, lambda n: n.storage.retry())
    settle(sim)
    assert not storage.failed and node(sim).completed == ["first", "second", "third"]
    assert len(sim.writes) > writes_before
    assert_same_bytes_at_same_places(sim.writes)
    sim.crash(1, "lose")
    assert recover(durable(sim)).entries == make_entries(1, 3, term=1) + second + make_entries(7, 2, term=1)


def test_eio_on_a_durable_write_then_retry_rewrites_the_same_bytes():
    sim = storage_sim()
    persist(sim, "first", entries=make_entries(1, 3, term=1))
    settle(sim)
    sim.disk_errors(1, 1)   # the batch write (write + fsync in one operation) fails
    persist(sim, "second", entries=make_entries(4, 3, term=1))
    settle(sim)
    storage = node(sim).storage
    failures = [result.error for _, result in node(sim).results if not result.ok]
    assert failures == ["EIO"] and storage.failed and node(sim).completed == ["first"]
    # Later groups queue behind the failure: nothing is reordered past it.
    persist(sim, "third", entries=make_entries(7, 1, term=1))
    settle(sim)
    assert node(sim).completed == ["first"]
    act(sim, lambda n: n.storage.retry())
    settle(sim)
    assert node(sim).completed == ["first", "second", "third"]
    assert_same_bytes_at_same_places(sim.writes)
    sim.crash(1, "lose")
    assert recover(durable(sim)).entries == make_entries(1, 3, term=1) + make_entries(4, 3, term=1) + make_entries(7, 1, term=1)


def test_retry_waits_for_operations_still_in_flight():
    sim = storage_sim()
    persist(sim, "open", entries=make_entries(1, 1, term=1))
    settle(sim)
    sim.disk_errors(1, 1)
    persist(sim, "g", entries=make_entries(2, 2, term=1), hard_state=HardState(1, 1))
    step_until(sim, lambda: node(sim).storage.failed)
    assert node(sim).storage._in_flight                  # the metadata write is still out
    act(sim, lambda n: n.storage.retry())
    assert node(sim).storage._retry_requested
    settle(sim)
    assert node(sim).completed == ["open", "g"] and not node(sim).storage.failed


# -- (g) ENOSPC ---------------------------------------------------------------------------------


def test_enospc_fails_the_group_until_space_returns():
    sim = storage_sim()
    persist(sim, "first", entries=make_entries(1, 3, term=1))
    settle(sim)
    sim.fill_disk(1)
    persist(sim, "second", entries=make_entries(4, 3, term=1))
    settle(sim)
    storage = node(sim).storage
    assert storage.failed and storage.error == "ENOSPC" and node(sim).completed == ["first"]
    act(sim, lambda n: n.storage.retry())   # still full: fails again, never skips
    settle(sim)
    assert storage.failed and node(sim).completed == ["first"]
    sim.disk_capacity(1, None)
    act(sim, lambda n: n.storage.retry())
    settle(sim)
    assert not storage.failed and node(sim).completed == ["first", "second"]
    assert_same_bytes_at_same_places(sim.writes)
    sim.crash(1, "lose")
    assert recover(durable(sim)).entries == make_entries(1, 6, term=1)[:3] + make_entries(4, 3, term=1)


# -- (h) snapshots and compaction -------------------------------------------------------------------


def test_snapshot_within_the_log_then_compaction():
    sim = storage_sim(segment_bytes_max=400)
    log = []
    for group in range(6):
        batch = make_entries(group * 3 + 1, 3, term=1, size=100)
        log += batch
        persist(sim, group, entries=batch)
    persist(sim, "snap", snapshot=snapshot_at(10, 1))
    settle(sim)
    storage = node(sim).storage
    segments_before = list(storage.segment_files)
    assert len(segments_before) >= 4 and storage.snapshot_index == 10
    assert segments_before == [name for name in durable(sim) if name.startswith("segment-")]  # trailing log kept
    recovered = recover(durable(sim))
    assert recovered.snapshot == snapshot_at(10, 1) and recovered.entries == log[10:]
    stale = [segment.file for segment in storage._segments[:-1] if segment.last_index <= 10]
    assert recovered.stale_files == stale
    act(sim, lambda n: n.storage.compact(10))
    settle(sim)
    files = durable(sim)
    assert not set(stale) & set(files)
    assert storage.first_index > 1
    recovered = recover(files)
    assert recovered.entries == log[10:] and recovered.stale_files == [] and recovered.repairs == []
    # A newer snapshot replaces the older file.
    persist(sim, "snap2", snapshot=snapshot_at(15, 1, data=b"newer"))
    settle(sim)
    assert snapshot_file_name(10) not in durable(sim)
    assert recover(durable(sim)).snapshot.data == b"newer"


def test_installing_a_snapshot_beyond_the_log_replaces_it():
    sim = storage_sim(segment_bytes_max=400)
    for group in range(3):
        persist(sim, group, entries=make_entries(group * 3 + 1, 3, term=1, size=100))
    settle(sim)
    old_segments = {name: data for name, data in durable(sim).items() if name.startswith("segment-")}
    assert len(old_segments) == 3
    persist(sim, "install", truncate_after=4, snapshot=snapshot_at(100, 5))
    after = make_entries(101, 2, term=5)
    persist(sim, "after", entries=after)
    settle(sim)
    assert node(sim).completed == [0, 1, 2, "install", "after"]
    files = durable(sim)
    assert sorted(name for name in files if name.startswith("segment-")) == [segment_file_name(101)]
    recovered = recover(files)
    assert recovered.snapshot == snapshot_at(100, 5) and recovered.entries == after
    # A crash between the snapshot's rename and the deletions leaves stale segments only.
    recovered = recover(dict(files, **old_segments))
    assert recovered.entries == after and recovered.stale_files == sorted(old_segments)
    before_append = {name: data for name, data in files.items() if not name.startswith("segment-")}
    recovered = recover(dict(before_append, **old_segments))
    assert recovered.entries == [] and recovered.stale_files == sorted(old_segments)


def test_truncation_inside_a_batch_that_straddles_the_snapshot():
    sim = storage_sim()
    log = make_entries(1, 10, term=1)
    persist(sim, "log", entries=log)               # one batch 1..10
    persist(sim, "snap", snapshot=snapshot_at(4, 1))
    persist(sim, "cut", truncate_after=6, entries=make_entries(7, 2, term=2))
    settle(sim)
    assert node(sim).completed == ["log", "snap", "cut"]
    files = durable(sim)
    assert segment_file_name(5) in files and segment_file_name(1) not in files
    assert recover(files).entries == log[4:6] + make_entries(7, 2, term=2)
    sim.restart(1)
    persist(sim, "cut-again", truncate_after=5)
    settle(sim)
    assert recover(durable(sim)).entries == log[4:5]


# -- (i) random histories: recovery matches the model of completed groups (and snapshots) ---------------------------


appends = st.tuples(st.just("append"), st.integers(1, 5), st.integers(0, 400))
actions = st.lists(
    st.one_of(
        appends,
        appends,  # twice: logs grow between crashes
        st.tuples(st.just("truncate"), st.integers(0, 6), st.integers(1, 3)),
        st.tuples(st.just("hard"), st.integers(0, 1), st.sampled_from([None, 1, 2, 3])),
        st.tuples(st.just("run"), st.floats(0.0, 6.0), st.just(None)),
        st.tuples(st.just("crash"), st.sampled_from(CRASH_MODES), st.floats(0.0, 4.0)),
        st.tuples(st.just("eio"), st.integers(1, 2), st.just(None)),
        st.tuples(st.just("snapshot"), st.integers(-3, 6), st.booleans()),
    ),
    min_size=10, max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(actions, st.integers(0, 2**16))
def test_random_histories_recover_to_the_model(history, seed):
    sim = storage_sim(seed=seed, segment_bytes_max=900)
    model = Model(node(sim).recovered)
    term, group = 1, 0
    for kind, first, second in history:
        if kind == "crash":
            sim.run_for(second)
            completed = len(node(sim).completed)
            sim.crash(1, first)
            recovered = recover(durable(sim))
            model.check(recovered, completed)
            sim.restart(1)
            model = Model(node(sim).recovered)
            term = max([term, recovered.hard_state.term] + [e.term for e in recovered.entries])
            continue
        if kind == "run":
            sim.run_for(first)
            act(sim, lambda n: n.storage.retry())
            continue
        if kind == "eio":
            sim.disk_errors(1, first)
            continue
        request = {}
        storage = node(sim).storage
        last = storage.last_index
        if kind == "snapshot":
            index = last - first
            if index <= storage.snapshot_index:
                continue
            persist(sim, group, snapshot=snapshot_at(index, term, data=bytes([group % 256]) * 50))
            model.add(snapshot=snapshot_at(index, term, data=bytes([group % 256]) * 50))
            group += 1
            if second:
                act(sim, lambda n: n.storage.compact(n.storage.snapshot_index))
            continue
        if kind == "append":
            request["entries"] = make_entries(last + 1, first, term, size=second, salt=seed)
        elif kind == "truncate":
            term += 1
            point = max(last - first, storage.snapshot_index)
            request["truncate_after"] = point
            request["entries"] = make_entries(point + 1, second, term, salt=seed)
        else:
            term += first
            request["hard_state"] = HardState(term, second)
        persist(sim, group, **request)
        model.add(**request)
        group += 1
    settle(sim, 100)
    for _ in range(100):  # retry until the injected EIO budget is spent
        if not node(sim).storage.failed:
            break
        act(sim, lambda n: n.storage.retry())
        settle(sim, 100)
    completed_ids = node(sim).completed
    assert len(completed_ids) == len(model.groups)
    sim.crash(1, "garbage")
    model.expect(recover(durable(sim)))
