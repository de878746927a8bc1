"""The real disk executor (raftlite.io.disk) keeps SimDisk's semantics on both native
backends, and the raft storage runs on it."""

import asyncio
import contextlib
import os
import random
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from raftlite.actors.contract import Delete, IoResult, Read, Rename, Sync, Truncate, Write
from raftlite.io import native
from raftlite.io.disk import DiskExecutor, read_durable_files
from raftlite.sim.disk import SimDisk

BACKENDS = ["portable"] + (["kernel-aio"] if native.KERNEL_AIO_UNAVAILABLE_REASON is None else [])


class Harness:
    """Runs an executor on a fresh event loop and collects its completions."""

    def __init__(self, directory, backend):
        self.loop = asyncio.new_event_loop()
        self.completions = []
        self.executor = DiskExecutor(str(directory), self.completions_append, backend=backend)
        self.executor.attach(self.loop)

    def completions_append(self, token, result):
        self.completions.append((token, result))

    def run(self, commands, timeout_seconds=10.0):
        """Submit every command; return results in completion order once all arrived."""
        start = len(self.completions)

        async def wait():
            for command in commands:
                self.executor.submit(command)
            for _ in range(int(timeout_seconds * 1000)):
                if len(self.completions) - start >= len(commands):
                    return
                await asyncio.sleep(0.001)
            raise TimeoutError(f"{len(self.completions) - start} of {len(commands)} completions")

        self.loop.run_until_complete(wait())
        return self.completions[start:]

    def one(self, command):
        ((token, result),) = self.run([command])
        assert token == command.token
        return result

    def close(self):
        self.executor.close()
        self.loop.close()


@pytest.fixture(params=BACKENDS)
def disk(request, tmp_path):
    harness = Harness(tmp_path, request.param)
    yield harness
    harness.close()


def test_write_sync_and_read_back_after_restart(disk, tmp_path):
    assert disk.one(Write(token=1, file="segment-1", offset=0, data=b"hello")).ok
    assert disk.one(Write(token=2, file="segment-1", offset=10, data=b"world")).ok
    assert disk.one(Sync(token=3, file="segment-1")).ok
    assert disk.one(Write(token=4, file="meta", offset=0, data=b"vote", durable=True)).ok
    assert disk.one(Read(token=5, file="segment-1", offset=3, length=100)) == IoResult(data=b"lo\0\0\0\0\0world")
    disk.close()
    # A restart reads every data file back (what Context.files holds).
    assert read_durable_files(str(tmp_path)) == {"meta": b"vote", "segment-1": b"hello\0\0\0\0\0world"}
    reopened = Harness(tmp_path, disk.executor.backend_name)
    try:
        assert reopened.executor.durable_files()["segment-1"] == b"hello\0\0\0\0\0world"
        assert reopened.one(Read(token=6, file="meta", offset=0, length=4)) == IoResult(data=b"vote")
    finally:
        reopened.close()


def test_truncate_rename_delete(disk, tmp_path):
    disk.run([Write(token=1, file="a", offset=0, data=b"0123456789"), Write(token=2, file="b", offset=0, data=b"old")])
    assert disk.one(Truncate(token=3, file="a", size=4)).ok
    assert disk.one(Read(token=4, file="a", offset=0, length=10)).data == b"0123"
    assert disk.one(Truncate(token=5, file="a", size=6)).ok   # grows with zeros
    assert disk.one(Read(token=6, file="a", offset=0, length=10)).data == b"0123\0\0"
    assert disk.one(Rename(token=7, source="a", target="b")).ok   # replaces the target
    assert disk.one(Read(token=8, file="b", offset=0, length=10)).data == b"0123\0\0"
    assert disk.one(Read(token=9, file="a", offset=0, length=1)) == IoResult(error="ENOENT")
    assert disk.one(Write(token=10, file="b", offset=6, data=b"!")).ok   # the renamed fd still works
    assert disk.one(Delete(token=11, file="b")).ok
    assert disk.one(Delete(token=12, file="b")) == IoResult(error="ENOENT")
    assert disk.one(Rename(token=13, source="nothing", target="c")) == IoResult(error="ENOENT")
    assert disk.one(Sync(token=14, file="nothing")) == IoResult(error="ENOENT")
    assert sorted(os.listdir(tmp_path)) == []


def test_bad_names_are_einval_not_exceptions(disk, tmp_path):
    for number, name in enumerate(["", ".", "..", "sub/file", "../escape", ".raftlite-lock", "nul\0byte"]):
        assert disk.one(Write(token=number, file=name, offset=0, data=b"x")) == IoResult(error="EINVAL")
    assert disk.one(Write(token="negative", file="f", offset=-1, data=b"x")) == IoResult(error="EINVAL")
    assert disk.one(Read(token="length", file="f", offset=0, length=-5)) == IoResult(error="EINVAL")
    assert os.listdir(tmp_path) == []


def test_completions_arrive_in_submission_order(disk):
    disk.run([Write(token=f"create{number}", file=f"f{number}", offset=0, data=b"") for number in range(5)])
    commands = []
    for number in range(300):   # more than the backend's queue depth
        file = f"f{number % 5}"
        match number % 4:
            case 0:
                commands.append(Write(token=number, file=file, offset=number, data=bytes([number % 256]) * 100, durable=number % 8 == 0))
            case 1:
                commands.append(Sync(token=number, file=file))
            case 2:
                commands.append(Read(token=number, file=file, offset=0, length=10))
            case 3:
                commands.append(Truncate(token=number, file=file, size=number))
    results = disk.run(commands)
    assert [token for token, _ in results] == list(range(300))
    assert all(result.ok for _, result in results)


def test_a_read_never_sees_a_write_submitted_after_it(disk):
    # Kernel AIO may finish a buffered read after a later write to the same range has
    # landed; the executor runs operations on one file one at a time.
    disk.run([Truncate(token="t", file="a", size=12_000), Truncate(token="u", file="a", size=6_000)])
    model = bytearray(6_000)
    for round_number in range(20):
        results = dict(disk.run([
            Read(token="read", file="a", offset=4_000, length=6_000),
            Write(token="write", file="a", offset=4_100, data=bytes([round_number + 1]) * 3_000),
        ]))
        assert results["read"].data == bytes(model[4_000:10_000])
        model[4_100:7_100] = bytes([round_number + 1]) * 3_000


def test_a_big_write_and_read(disk):
    data = random.Random(7).randbytes(20 << 20)
    assert disk.one(Write(token=1, file="big", offset=4096, data=data, durable=True)).ok
    assert disk.one(Read(token=2, file="big", offset=4096, length=len(data))).data == data
    # Preallocation (where the filesystem offers it) reserved the space ahead, and kept
    # the visible size exact.
    assert disk.executor.preallocated_bytes >= len(data) or not disk.executor.preallocate
    assert disk.one(Read(token=3, file="big", offset=0, length=len(data) + 10_000)).data == bytes(4096) + data


@contextlib.contextmanager
def small_filesystem(path):
    """A 256 KiB tmpfs at `path` (needs root): a real disk that fills up."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)], capture_output=True
    ).returncode == 0 if os.geteuid() == 0 else False
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_disk_is_enospc_and_recovers(tmp_path, backend):
    target = tmp_path / "small"
    with small_filesystem(target) as mounted:
        if not mounted:
            # Without root: /dev/full answers every write with ENOSPC (portable backend;
            # kernel AIO refuses character devices with EINVAL, so only a tmpfs shows it).
            if backend != "portable":
                pytest.skip("mounting a small tmpfs needs root")
            target.rmdir()
            target.mkdir()
            os.symlink("/dev/full", target / "full")
            harness = Harness(target, backend)
            try:
                assert harness.one(Write(token=1, file="full", offset=0, data=b"x" * 10)) == IoResult(error="ENOSPC")
            finally:
                harness.close()
            return
        harness = Harness(target, backend)
        try:
            results = harness.run([Write(token=n, file=f"seg{n}", offset=0, data=b"x" * 100_000, durable=True) for n in range(4)])
            errors = [result.error for _, result in results]
            assert errors[:2] == [None, None] and "ENOSPC" in errors, errors
            # The executor keeps working: free space, and the same write succeeds.
            assert harness.one(Delete(token="free", file="seg0")).ok
            assert harness.one(Write(token="again", file="seg3", offset=0, data=b"y" * 100_000, durable=True)).ok
            assert harness.one(Read(token="check", file="seg3", offset=0, length=100_000)).data == b"y" * 100_000
        finally:
            harness.close()


# -- the same operations on SimDisk and on the real disk give the same answers --------------

NAMES = ("a", "b", "c")
operations = st.lists(
    st.one_of(
        st.builds(lambda f, o, n, d: ("write", f, o, n, d), st.sampled_from(NAMES), st.integers(0, 9000), st.integers(0, 5000), st.booleans()),
        st.builds(lambda f, o, n: ("read", f, o, n), st.sampled_from(NAMES), st.integers(0, 12000), st.integers(0, 6000)),
        st.builds(lambda f: ("sync", f), st.sampled_from(NAMES)),
        st.builds(lambda f, s: ("truncate", f, s), st.sampled_from(NAMES), st.integers(0, 12000)),
        st.builds(lambda f, t: ("rename", f, t), st.sampled_from(NAMES), st.sampled_from(NAMES)),
        st.builds(lambda f: ("delete", f), st.sampled_from(NAMES)),
    ),
    max_size=40,
)


def _command(token, operation, fill):
    match operation:
        case ("write", file, offset, length, durable):
            return Write(token=token, file=file, offset=offset, data=bytes([fill % 251 + 1]) * length, durable=durable)
        case ("read", file, offset, length):
            return Read(token=token, file=file, offset=offset, length=length)
        case ("sync", file):
            return Sync(token=token, file=file)
        case ("truncate", file, size):
            return Truncate(token=token, file=file, size=size)
        case ("rename", source, target):
            return Rename(token=token, source=source, target=target)
        case ("delete", file):
            return Delete(token=token, file=file)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.timeout(300)
@settings(max_examples=40)
@given(operations=operations)
def test_same_results_as_the_simulated_disk(tmp_path_factory, backend, operations):
    directory = tmp_path_factory.mktemp("model")
    model = SimDisk(random.Random(0))
    harness = Harness(directory, backend)
    try:
        commands = [_command(number, operation, number) for number, operation in enumerate(operations)]
        expected = [model.perform(command) for command in commands]
        actual = [result for _, result in harness.run(commands)]
        assert actual == expected
    finally:
        harness.close()
    # Everything is synced in this comparison's terms once the node stops cleanly: what the
    # directory holds is the model's volatile view.
    assert read_durable_files(str(directory)) == {name: bytes(file.data) for name, file in sorted(model.files.items())}


# -- the raft storage on the real disk ------------------------------------------------------


def _open_descriptors():
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.timeout(60)
def test_a_single_node_raft_cluster_keeps_its_log_across_restarts(tmp_path, backend):
    from raftlite.actors.config import Config
    from raftlite.actors.contract import StatusRequest
    from raftlite.actors.raft_node import Propose, ProposeResult, RaftNode, Read, ReadResult
    from raftlite.core.raft_types import Configuration, Role
    from raftlite.io.admin import AdminClient
    from raftlite.io.runtime import NodeRuntime

    config = Config(election_timeout_ms=200.0, heartbeat_interval_ms=50.0)
    founders = Configuration.of({1: Role.VOTER})

    async def life(proposals):
        runtime = NodeRuntime(
            node_id=1, address="127.0.0.1:0", data_dir=str(tmp_path), actor=RaftNode(bootstrap=founders),
            config=config, disk_backend=backend,
        )
        await runtime.start()
        try:
            assert runtime.disk.backend_name == backend
            async with AdminClient(runtime.address) as client:
                for _ in range(200):
                    status = (await client.request(StatusRequest())).status
                    if status["role"] == "leader":
                        break
                    await asyncio.sleep(0.02)
                assert status["role"] == "leader"
                results = [await client.request(Propose(data=data)) for data in proposals]
                assert all(isinstance(result, ProposeResult) for result in results)
                read = await client.request(Read())
                assert isinstance(read, ReadResult)
                return status, results, read
        finally:
            await runtime.stop()

    before = _open_descriptors()
    status, first, read = asyncio.run(life([b"one", b"two", b"three"]))
    assert read.value[0] == 3
    from raftlite.core.raft_log_format import METADATA_FILES, segment_file_name

    files = read_durable_files(str(tmp_path))
    assert segment_file_name(1) in files and set(METADATA_FILES) & set(files)
    status, second, read = asyncio.run(life([b"four"]))
    # The restarted node found its log: the new entry follows the old ones, and the
    # state machine was rebuilt from it (four commands applied, in order).
    assert status["last"] >= first[-1].index
    assert second[0].index > first[-1].index
    assert read.value[0] == 4
    assert _open_descriptors() == before


# -- zero-filled spares for new segments ---------------------------------------------------


def _wait_for(harness, predicate, timeout_s=10.0):
    async def wait():
        for _ in range(int(timeout_s * 1000)):
            if predicate():
                return
            await asyncio.sleep(0.001)
        raise TimeoutError("condition never became true")

    harness.loop.run_until_complete(wait())


@pytest.mark.parametrize("backend", BACKENDS)
def test_new_segments_start_as_zero_filled_spares(tmp_path, backend):
    from raftlite.io.disk import SPARE_PREFIX, ZeroFilledFiles

    (tmp_path / f"{SPARE_PREFIX}7").write_bytes(b"left by an earlier run")
    harness = Harness.__new__(Harness)
    harness.loop = asyncio.new_event_loop()
    harness.completions = []
    harness.executor = DiskExecutor(str(tmp_path), harness.completions_append, backend=backend,
                                    zero_filled=ZeroFilledFiles(lambda name: name.startswith("seg-"), 64 << 10))
    assert not (tmp_path / f"{SPARE_PREFIX}7").exists()   # a leftover may be unfinished: gone
    harness.executor.attach(harness.loop)
    try:
        _wait_for(harness, lambda: harness.executor.helper.spares)
        assert harness.one(Write(token=1, file="seg-1", offset=0, data=b"header", durable=True)).ok
        assert harness.one(Write(token=2, file="seg-1", offset=6, data=b"batch", durable=True)).ok
        assert harness.one(Write(token=3, file="other", offset=0, data=b"meta", durable=True)).ok
        assert (tmp_path / "seg-1").read_bytes() == b"headerbatch" + bytes((64 << 10) - 11)
        assert (tmp_path / "other").read_bytes() == b"meta"   # not a segment: as written
        # The next spare is made in the background; the next segment gets it.
        _wait_for(harness, lambda: harness.executor.helper.spares)
        assert harness.one(Write(token=4, file="seg-2", offset=0, data=b"x" * (80 << 10), durable=True)).ok
        assert (tmp_path / "seg-2").read_bytes() == b"x" * (80 << 10)   # past the spare: extended
        assert set(read_durable_files(str(tmp_path))) == {"seg-1", "seg-2", "other"}
    finally:
        harness.close()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(SPARE_PREFIX)]


def test_raft_storage_recovers_segments_with_a_zero_tail(tmp_path):
    # A segment made from a spare ends in zeros: recovery reads them as its end, and the
    # next append goes where the records stop.
    from raftlite.core.raft_log_format import encode_batch, encode_segment_header, recover, segment_file_name
    from raftlite.core.raft_types import Entry, EntryKind

    entries = [Entry(term=1, index=index, kind=EntryKind.NORMAL, data=bytes([index]) * 50) for index in (1, 2, 3)]
    header = encode_segment_header(1)
    content = header + encode_batch(entries).record
    recovered = recover({segment_file_name(1): content + bytes(4096)})
    assert recovered.entries == entries and recovered.repairs == []
    assert recovered.segments[0].size == len(content)
