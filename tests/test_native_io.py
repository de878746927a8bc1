"""raftlite.io.native: both backends honour one completion-style contract.

Every behaviour is checked against the kernel-AIO backend and the portable one, on an
O_DIRECT file where the filesystem allows it and on a buffered file.
"""

import asyncio
import errno
import os
import pathlib
import select
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from raftlite.io import native

pytestmark = pytest.mark.timeout(30)

BLOCK = native.DIRECT_IO_ALIGNMENT
REAP_DEADLINE_SECONDS = 10.0

# An ext4-backed scratch root inside the checkout, for machines whose /tmp is tmpfs
# (tmpfs refuses O_DIRECT, so the direct path would otherwise go untested).
REPOSITORY_SCRATCH = pathlib.Path(__file__).resolve().parents[1] / ".pytest_tmp"


@pytest.fixture(params=["kernel-aio", "portable"])
def backend(request):
    if request.param == "kernel-aio" and native.KERNEL_AIO_UNAVAILABLE_REASON is not None:
        pytest.skip(f"kernel AIO unavailable: {native.KERNEL_AIO_UNAVAILABLE_REASON}")
    io_backend = native.make_backend(request.param, queue_depth=128)
    yield io_backend
    io_backend.close()


@pytest.fixture
def direct_directory(tmp_path):
    """A directory where O_DIRECT works: tmp_path, or a scratch dir in the checkout."""
    if native.supports_direct_io(tmp_path):
        yield tmp_path
        return
    created_root = not REPOSITORY_SCRATCH.exists()
    directory = REPOSITORY_SCRATCH / f"native-io-{uuid.uuid4().hex}"
    directory.mkdir(parents=True)
    try:
        if not native.supports_direct_io(directory):
            pytest.skip(f"neither {tmp_path} nor {directory} supports O_DIRECT")
        yield directory
    finally:
        shutil.rmtree(directory)
        if created_root:
            shutil.rmtree(REPOSITORY_SCRATCH, ignore_errors=True)


@pytest.fixture(params=["direct", "buffered"])
def data_file(request, direct_directory):
    """An open fd on a file preallocated with 1 MiB of zeros, O_DIRECT or not."""
    path = direct_directory / "segment"
    fd = native.open_file(str(path), direct=request.param == "direct")
    assert native.is_direct(fd) == (request.param == "direct")
    native.preallocate_zeroed(fd, 1 << 20)
    yield fd
    os.close(fd)


def reap_exactly(backend, count):
    """Reap until `count` completions arrived, failing after a deadline instead of hanging."""
    completions = []
    deadline = time.monotonic() + REAP_DEADLINE_SECONDS
    while len(completions) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(completions)} of {count} completions after {REAP_DEADLINE_SECONDS}s"
        completions.extend(backend.reap(timeout_seconds=min(remaining, 1.0)))
    assert backend.reap() == [], "more completions than operations submitted"
    assert backend.outstanding == 0
    return completions


def filled_block(byte_value, size=BLOCK):
    buffer = native.AlignedBuffer(size)
    buffer.view[:] = bytes([byte_value]) * size
    return buffer


def read_back(backend, fd, offset, size=BLOCK):
    buffer = native.AlignedBuffer(size)
    backend.submit_read(fd, offset, buffer, "read-back")
    [completion] = reap_exactly(backend, 1)
    assert completion.check() == size
    return bytes(buffer.view)


def test_write_then_read_back(backend, data_file):
    backend.submit_write(data_file, 3 * BLOCK, filled_block(0xAB), token="write")
    [completion] = reap_exactly(backend, 1)
    assert completion == native.Completion("write", BLOCK)
    assert completion.ok and completion.error is None and completion.errno is None
    assert read_back(backend, data_file, 3 * BLOCK) == b"\xab" * BLOCK
    assert read_back(backend, data_file, 2 * BLOCK) == bytes(BLOCK), "neighbouring block untouched"


def test_durable_write_completes_with_full_length(backend, data_file):
    backend.submit_write(data_file, 0, filled_block(0x11, 2 * BLOCK), token=("entry", 7), durable=True)
    [completion] = reap_exactly(backend, 1)
    assert completion.token == ("entry", 7)
    assert completion.check() == 2 * BLOCK
    assert read_back(backend, data_file, BLOCK) == b"\x11" * BLOCK


def test_fsync_completes(backend, data_file):
    backend.submit_write(data_file, 0, filled_block(0x22), token="write")
    reap_exactly(backend, 1)
    backend.submit_fsync(data_file, token="sync")
    [completion] = reap_exactly(backend, 1)
    assert completion == native.Completion("sync", 0)


def test_many_concurrent_submits_complete_with_their_own_tokens(backend, data_file):
    count = 64
    buffers = [filled_block(index) for index in range(count)]
    for index, buffer in enumerate(buffers):
        backend.submit_write(data_file, index * BLOCK, buffer, token=f"write-{index}", durable=index % 2 == 0)
    del buffers  # the backend must keep in-flight buffers alive on its own
    completions = reap_exactly(backend, count)
    assert sorted(completion.token for completion in completions) == sorted(f"write-{index}" for index in range(count))
    assert all(completion.result == BLOCK for completion in completions)
    contents = read_back(backend, data_file, 0, count * BLOCK)
    for index in range(count):
        assert contents[index * BLOCK : (index + 1) * BLOCK] == bytes([index]) * BLOCK


def test_queue_depth_is_a_hard_bound(backend, data_file):
    small = native.make_backend(backend.name, queue_depth=4)
    try:
        buffer = filled_block(0x33)
        for index in range(4):
            small.submit_write(data_file, index * BLOCK, buffer, token=index)
        with pytest.raises(native.QueueFull):
            small.submit_write(data_file, 4 * BLOCK, buffer, token=4)
        assert sorted(completion.token for completion in reap_exactly(small, 4)) == [0, 1, 2, 3]
        small.submit_fsync(data_file, token="after")
        assert reap_exactly(small, 1) == [native.Completion("after", 0)]
    finally:
        small.close()


def test_direct_io_misalignment_is_a_value_error_before_submission(backend, direct_directory):
    fd = native.open_file(str(direct_directory / "direct"), direct=True)
    try:
        assert native.is_direct(fd)
        native.preallocate_zeroed(fd, 16 * BLOCK)
        aligned = native.AlignedBuffer(2 * BLOCK)
        with pytest.raises(ValueError, match="buffer address"):
            backend.submit_write(fd, 0, aligned.view[1 : BLOCK + 1], token="misaligned-buffer")
        with pytest.raises(ValueError, match="offset 100"):
            backend.submit_write(fd, 100, aligned, token="misaligned-offset")
        with pytest.raises(ValueError, match="length 100"):
            backend.submit_read(fd, 0, aligned.view[:100], token="misaligned-length")
        with pytest.raises(ValueError, match="O_DIRECT"):
            backend.submit_write(fd, 0, bytearray(BLOCK + 1), token="bytearray")
        assert backend.outstanding == 0
        assert backend.reap() == []
        backend.submit_write(fd, BLOCK, aligned, token="aligned")
        assert reap_exactly(backend, 1) == [native.Completion("aligned", 2 * BLOCK)]
    finally:
        os.close(fd)


def test_buffered_files_accept_any_buffer(backend, tmp_path):
    fd = native.open_file(str(tmp_path / "buffered"), direct=False)
    try:
        backend.submit_write(fd, 5, b"hello", token="bytes")
        assert reap_exactly(backend, 1) == [native.Completion("bytes", 5)]
        target = bytearray(16)
        backend.submit_read(fd, 0, target, token="short-read")
        assert reap_exactly(backend, 1) == [native.Completion("short-read", 10)]
        assert bytes(target[:10]) == b"\0\0\0\0\0hello"
        with pytest.raises(ValueError, match="writable"):
            backend.submit_read(fd, 0, b"read-only", token="bytes-read")
        with pytest.raises(ValueError, match="offset"):
            backend.submit_write(fd, -1, b"x", token="negative")
        assert backend.outstanding == 0
    finally:
        os.close(fd)


def test_errors_are_completions_not_exceptions(backend, tmp_path):
    fd = os.open(tmp_path / "closed", os.O_RDWR | os.O_CREAT)
    os.close(fd)  # now a bad descriptor (nothing else opens one in between)
    backend.submit_write(fd, 0, filled_block(0x44), token="write")
    backend.submit_read(fd, 0, native.AlignedBuffer(BLOCK), token="read")
    backend.submit_fsync(fd, token="sync")
    completions = reap_exactly(backend, 3)
    assert {completion.token for completion in completions} == {"write", "read", "sync"}
    for completion in completions:
        assert not completion.ok
        assert completion.error == "EBADF"
        with pytest.raises(OSError) as raised:
            completion.check()
        assert raised.value.errno == completion.errno


def test_signal_descriptor_is_readable_only_while_completions_wait(backend, data_file):
    descriptor = backend.fileno()
    assert select.select([descriptor], [], [], 0) == ([], [], [])
    backend.submit_write(data_file, 0, filled_block(0x55), token="write", durable=True)
    readable, _, _ = select.select([descriptor], [], [], 5.0)
    assert readable == [descriptor]
    assert backend.reap() == [native.Completion("write", BLOCK)]
    assert select.select([descriptor], [], [], 0) == ([], [], [])


def test_drives_an_asyncio_loop_through_add_reader(backend, data_file):
    count = 32

    async def scenario():
        loop = asyncio.get_running_loop()
        waiting = {}

        def on_readable():
            for completion in backend.reap():
                waiting.pop(completion.token).set_result(completion.result)

        loop.add_reader(backend.fileno(), on_readable)
        try:
            for index in range(count):
                waiting[index] = loop.create_future()
                backend.submit_write(data_file, index * BLOCK, filled_block(index), token=index, durable=True)
            futures = list(waiting.values())
            results = await asyncio.wait_for(asyncio.gather(*futures), timeout=REAP_DEADLINE_SECONDS)
            waiting[count] = loop.create_future()
            backend.submit_fsync(data_file, token=count)
            sync_result = await asyncio.wait_for(waiting[count], timeout=REAP_DEADLINE_SECONDS)
        finally:
            loop.remove_reader(backend.fileno())
        return results, sync_result

    results, sync_result = asyncio.run(scenario())
    assert results == [BLOCK] * count
    assert sync_result == 0
    assert backend.outstanding == 0


def test_probe_answers_truthfully_on_tmpfs():
    """tmpfs refused O_DIRECT before Linux 6.6 and accepts it since: either way the probe
    must match what a real aligned write does, and leave no scratch file behind."""
    shared_memory = pathlib.Path("/dev/shm")
    if not shared_memory.is_dir() or not os.access(shared_memory, os.W_OK):
        pytest.skip("no writable /dev/shm")
    path = shared_memory / f"raftlite-native-io-{uuid.uuid4().hex}"
    fd = native.open_file(str(path), direct=True)
    try:
        assert native.is_direct(fd) == native.supports_direct_io(shared_memory)
        assert os.pwrite(fd, native.AlignedBuffer(BLOCK).view, 0) == BLOCK
    finally:
        os.close(fd)
        path.unlink()
    assert not any(entry.name.startswith(".raftlite-direct-probe") for entry in shared_memory.iterdir())


def test_filesystem_refusing_o_direct_gets_a_plain_file(tmp_path, monkeypatch):
    """Simulates tmpfs before Linux 6.6 (or any filesystem without O_DIRECT): open with
    O_DIRECT fails with EINVAL. The probe runs once per directory and is cached."""
    real_open = os.open
    direct_attempts = []

    def open_refusing_direct(path, flags, *args, **kwargs):
        if flags & os.O_DIRECT:
            direct_attempts.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_refusing_direct)
    descriptors = [native.open_file(str(tmp_path / f"file-{index}"), direct=True) for index in range(3)]
    monkeypatch.undo()
    try:
        assert [native.is_direct(fd) for fd in descriptors] == [False, False, False]
        assert len(direct_attempts) == 1, "probe once per directory, then use the cached answer"
        assert native.supports_direct_io(tmp_path) is False
    finally:
        for fd in descriptors:
            os.close(fd)
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["file-0", "file-1", "file-2"]


def test_preallocate_zeroed_keeps_existing_bytes(tmp_path):
    path = tmp_path / "segment"
    fd = native.open_file(str(path), direct=False)
    try:
        os.pwrite(fd, b"keep", 0)
        native.preallocate_zeroed(fd, 3 * BLOCK + 7)
        assert os.fstat(fd).st_size == 3 * BLOCK + 7
        assert os.pread(fd, 3 * BLOCK + 7, 0) == b"keep" + bytes(3 * BLOCK + 3)
        native.preallocate_zeroed(fd, BLOCK)  # smaller: nothing to do
        assert os.fstat(fd).st_size == 3 * BLOCK + 7
    finally:
        os.close(fd)


def test_preallocate_zeroed_direct_needs_aligned_sizes(direct_directory):
    fd = native.open_file(str(direct_directory / "direct-segment"), direct=True)
    try:
        with pytest.raises(ValueError, match="multiples of 4096"):
            native.preallocate_zeroed(fd, BLOCK + 1)
        native.preallocate_zeroed(fd, 300 * BLOCK)  # more than one zero chunk
        assert os.fstat(fd).st_size == 300 * BLOCK
        assert os.fstat(fd).st_blocks * 512 >= 300 * BLOCK, "zeros are written, not a sparse hole"
    finally:
        os.close(fd)


def test_backend_chosen_once_and_by_name():
    assert native.BACKEND_NAME == native.Backend.name
    assert native.BACKEND_NAME == ("kernel-aio" if native.KERNEL_AIO_UNAVAILABLE_REASON is None else "portable")
    with pytest.raises(ValueError, match="unknown backend"):
        native.make_backend("io_uring")
    with native.make_backend("portable") as portable:
        assert isinstance(portable, native.PortableIo)
    with pytest.raises(ValueError, match="closed"):
        portable.reap()


def test_aligned_buffer():
    buffer = native.AlignedBuffer(3 * BLOCK)
    assert len(buffer) == 3 * BLOCK
    assert buffer.address % BLOCK == 0
    assert bytes(buffer.view) == bytes(3 * BLOCK)
    assert not buffer.view.readonly
    with pytest.raises(ValueError):
        native.AlignedBuffer(0)
    with pytest.raises(ValueError):
        native.AlignedBuffer(BLOCK, alignment=3000)


def test_import_falls_back_to_portable_without_the_extension(tmp_path):
    """A checkout where `_aio` was never built still imports and does I/O."""
    program = f"""
import importlib.abc, sys

class HideExtension(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "raftlite.io.native._aio":
            raise ImportError("hidden by the test")
        return None

sys.meta_path.insert(0, HideExtension())
from raftlite.io import native
assert native.BACKEND_NAME == "portable", native.BACKEND_NAME
assert "not built" in native.KERNEL_AIO_UNAVAILABLE_REASON
try:
    native.make_backend("kernel-aio")
except OSError as error:
    assert "unavailable" in str(error)
else:
    raise AssertionError("kernel-aio must refuse without the extension")
buffer = native.AlignedBuffer(4096)
assert buffer.address % 4096 == 0
fd = native.open_file({str(tmp_path / "fallback")!r})
native.preallocate_zeroed(fd, 8192)
with native.make_backend() as backend:
    buffer.view[:] = b"z" * 4096
    backend.submit_write(fd, 4096, buffer, "write", durable=True)
    assert [completion.result for completion in backend.reap(timeout_seconds=5)] == [4096]
print("ok")
"""
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(path for path in sys.path if path))
    finished = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=20, env=environment
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "ok"
