"""raftlite.io.native: completion-style disk I/O: Linux kernel AIO through cffi, or a portable fallback."""

if __name__ != "raftlite.io.native":
    # The repository root is the package `raftlite`; importing this folder under its
    # bare name would create a second copy of every module in it.
    raise ImportError(
        f"import this package as 'raftlite.io.native', not '{__name__}' "
        "(install raftlite, e.g. `pip install -e .`, and import it by its full name)"
    )

# Theory of operation (after TigerBeetle's src/io.zig, "platform I/O chosen once"):
#
# Callers submit an operation with a token and later reap `Completion(token, result)`
# values over buffers they own and keep unchanged until then. With kernel AIO a submit
# returns before the disk has done the work. Two backends share one interface:
#
# - `KernelAio`: Linux kernel AIO (io_setup / io_submit / io_getevents) through the cffi
#   extension `_aio`. Each iocb carries IOCB_FLAG_RESFD, so the kernel bumps an eventfd per
#   completion and an asyncio loop can watch `backend.fileno()` with `add_reader`. With an
#   O_DIRECT file, aligned buffers and RWF_DSYNC a write is durable when it completes.
# - `PortableIo`: os.pwritev / os.preadv / os.fdatasync performed at submit time; the
#   completion is queued and signalled through an eventfd (or a pipe), so the very same
#   event-loop code drives it.
#
# `Backend` is chosen once, at import: kernel AIO when the extension imports and io_setup
# works, otherwise the portable one. Importing this package never fails because the
# extension was not built.

import dataclasses
import errno as errno_codes
import itertools
import math
import mmap
import os
import select
import sys
import threading

try:
    import cffi
except ImportError:  # cffi is a declared dependency; tolerate its absence anyway.
    cffi = None

__all__ = [
    "AlignedBuffer",
    "Backend",
    "BACKEND_NAME",
    "Completion",
    "DIRECT_IO_ALIGNMENT",
    "KERNEL_AIO_UNAVAILABLE_REASON",
    "KernelAio",
    "PortableIo",
    "QUEUE_DEPTH_DEFAULT",
    "QueueFull",
    "is_direct",
    "make_backend",
    "open_file",
    "preallocate_zeroed",
    "supports_direct_io",
]

# O_DIRECT demands that buffer address, file offset and length be multiples of the
# device's logical block size (512 or 4096). 4096 satisfies both, and it is the page size
# on x86_64 and the usual one on aarch64.
DIRECT_IO_ALIGNMENT = 4096

# Bounded, like every queue in raftlite: at most this many operations may be submitted
# and not yet reaped. io_setup reserves at least this many kernel completion slots.
QUEUE_DEPTH_DEFAULT = 256

# Linux-only flag; 0 elsewhere makes every file "not direct" instead of failing.
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def _load_native():
    """Import the extension and check that the kernel really offers AIO.

    Returns (ffi, lib, None) or (None, None, reason). Never raises: a missing build, a
    kernel without CONFIG_AIO, a seccomp filter or an exhausted fs.aio-max-nr all mean
    "use the portable backend".
    """
    try:
        from . import _aio
    except ImportError as error:
        return None, None, f"raftlite.io.native._aio is not built or cannot load ({error})"
    context = _aio.ffi.new("uint64_t *")
    status = _aio.lib.raftlite_io_setup(1, context)
    if status < 0:
        return None, None, f"io_setup failed: {_errno_name(-status)} ({os.strerror(-status)})"
    _aio.lib.raftlite_io_destroy(context[0])
    return _aio.ffi, _aio.lib, None


def _errno_name(code):
    return errno_codes.errorcode.get(code, f"errno {code}")


_native_ffi, _native_lib, KERNEL_AIO_UNAVAILABLE_REASON = _load_native()

# Buffer addresses are needed by both backends (to check O_DIRECT alignment before
# submitting). An ABI-mode FFI computes them when the extension is missing.
_ffi = _native_ffi if _native_ffi is not None else (cffi.FFI() if cffi is not None else None)


class QueueFull(RuntimeError):
    """More operations submitted than the backend's queue depth; reap completions first."""


@dataclasses.dataclass(frozen=True, slots=True)
class Completion:
    """The outcome of one submitted operation.

    `result` is what the kernel reports: the number of bytes transferred (0 for fsync),
    or a negative errno. `error` names the errno ("EBADF", "EIO", ...) or is None.
    """

    token: object
    result: int

    @property
    def ok(self):
        return self.result >= 0

    @property
    def errno(self):
        return -self.result if self.result < 0 else None

    @property
    def error(self):
        return _errno_name(-self.result) if self.result < 0 else None

    def check(self):
        """Return `result`, or raise the OSError it stands for."""
        if self.result < 0:
            raise OSError(-self.result, os.strerror(-self.result))
        return self.result


class AlignedBuffer:
    """Caller-owned memory aligned to `alignment` bytes, zero-filled, usable for O_DIRECT.

    Allocated with posix_memalign when the native extension is available, otherwise with
    an anonymous mmap (page-aligned). `view` is a writable memoryview over the whole
    buffer; slices of it (`buffer.view[:8192]`) may be submitted too. The memory is freed
    when the buffer and every view of it are gone; backends keep what they were given
    alive until its completion is reaped.
    """

    __slots__ = ("size", "alignment", "_memory", "_pointer", "view")

    def __init__(self, size, alignment=DIRECT_IO_ALIGNMENT):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"alignment must be a power of two, got {alignment}")
        self.size = size
        self.alignment = alignment
        if _native_lib is not None:
            pointer_out = _native_ffi.new("void **")
            # posix_memalign wants a multiple of sizeof(void *); any power of two >= 8 is.
            memory_alignment = max(alignment, _native_ffi.sizeof("void *"))
            status = _native_lib.posix_memalign(pointer_out, memory_alignment, size)
            if status != 0:
                raise OSError(status, os.strerror(status))
            # The gc destructor frees the memory once no cdata, buffer or memoryview
            # refers to it any more (ffi.buffer keeps the pointer alive).
            pointer = _native_ffi.cast("char *", pointer_out[0])
            self._pointer = _native_ffi.gc(pointer, _native_lib.free)
            self._memory = _native_ffi.buffer(self._pointer, size)
            self.view = memoryview(self._memory)
            # posix_memalign does not zero, and stale heap bytes must never reach the disk.
            self.view[:] = bytes(size)
        else:
            if alignment > mmap.PAGESIZE:
                raise ValueError(f"without the native extension alignment is at most the page size ({mmap.PAGESIZE})")
            self._pointer = None
            self._memory = mmap.mmap(-1, size)  # anonymous: page-aligned and zero-filled
            self.view = memoryview(self._memory)

    def __len__(self):
        return self.size

    @property
    def address(self):
        """The start address, for diagnostics and alignment checks."""
        return _buffer_address(self.view)

    def __repr__(self):
        return f"AlignedBuffer(size={self.size}, alignment={self.alignment})"


def _as_memoryview(buffer):
    """A flat byte view of an AlignedBuffer or any object with the buffer protocol."""
    view = buffer.view if isinstance(buffer, AlignedBuffer) else memoryview(buffer)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")  # raises TypeError for non-contiguous memory
    return view


def _buffer_address(view):
    if _ffi is None:
        return None
    return int(_ffi.cast("uintptr_t", _ffi.from_buffer("char[]", view)))


def is_direct(fd):
    """True if `fd` was opened with O_DIRECT (so its I/O must be aligned)."""
    return bool(_file_status_flags(fd) & _O_DIRECT)


def _file_status_flags(fd):
    import fcntl  # local: fcntl is only needed here, and is POSIX-only

    return fcntl.fcntl(fd, fcntl.F_GETFL)


def _check_request(fd, offset, view, writable):
    """Reject what would fail or corrupt memory, before anything is submitted."""
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative int, got {offset!r}")
    if writable and view.readonly:
        raise ValueError("a read needs a writable buffer (an AlignedBuffer, bytearray or writable memoryview)")
    try:
        direct = _file_status_flags(fd) & _O_DIRECT
    except OSError:
        return  # a bad fd is reported through its completion, as the kernel would
    if not direct:
        return
    address = _buffer_address(view)
    problems = []
    if address is not None and address % DIRECT_IO_ALIGNMENT:
        problems.append(f"buffer address {address:#x}")
    if offset % DIRECT_IO_ALIGNMENT:
        problems.append(f"offset {offset}")
    if len(view) % DIRECT_IO_ALIGNMENT:
        problems.append(f"length {len(view)}")
    if problems:
        raise ValueError(
            f"fd {fd} is O_DIRECT: {', '.join(problems)} not a multiple of {DIRECT_IO_ALIGNMENT} "
            "(use an AlignedBuffer and aligned offsets and lengths)"
        )


class _CompletionSignal:
    """A file descriptor that becomes readable when completions are waiting.

    An eventfd when available (the kernel backend hands it to the kernel through
    IOCB_FLAG_RESFD); a non-blocking pipe otherwise.
    """

    def __init__(self, eventfd=None):
        self.pipe_write_fd = None
        if eventfd is not None:
            self.fd = eventfd
        elif hasattr(os, "eventfd"):
            self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:
            self.fd, self.pipe_write_fd = _nonblocking_pipe()

    def notify(self):
        try:
            if self.pipe_write_fd is None:
                os.write(self.fd, (1).to_bytes(8, sys.byteorder))  # eventfd: add 1 to the counter
            else:
                os.write(self.pipe_write_fd, b"\x01")
        except BlockingIOError:
            pass  # already signalled: the counter or the pipe is full, a reader will come

    def drain(self):
        try:
            while True:
                if not os.read(self.fd, 8 if self.pipe_write_fd is None else 4096):
                    return
                if self.pipe_write_fd is None:
                    return  # one read resets an eventfd counter to zero
        except BlockingIOError:
            pass

    def wait(self, timeout_seconds):
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return bool(poller.poll(max(0, math.ceil(timeout_seconds * 1000))))

    def close(self):
        for fd in (self.fd, self.pipe_write_fd):
            if fd is not None:
                os.close(fd)
        self.fd = self.pipe_write_fd = None


def _nonblocking_pipe():
    read_fd, write_fd = os.pipe()
    for fd in (read_fd, write_fd):
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
    return read_fd, write_fd


class _BackendBase:
    """What both backends share: bounds, the completion signal, the reap loop shape."""

    name = "abstract"

    def __init__(self, queue_depth):
        if queue_depth <= 0:
            raise ValueError(f"queue_depth must be positive, got {queue_depth}")
        self.queue_depth = queue_depth
        self._outstanding = 0  # submitted and not yet reaped
        self._ready = []  # completions produced in Python (errors, fallbacks, portable I/O)
        self._signal = None

    @property
    def outstanding(self):
        """Operations submitted and not yet returned by reap()."""
        return self._outstanding

    def fileno(self):
        """A descriptor that is readable while completions are waiting to be reaped."""
        if self._signal is None:
            raise ValueError("backend is closed")
        return self._signal.fd

    def _reserve(self):
        if self._signal is None:
            raise ValueError("backend is closed")
        if self._outstanding >= self.queue_depth:
            raise QueueFull(f"{self._outstanding} operations outstanding (queue_depth={self.queue_depth}); reap first")
        self._outstanding += 1

    def _complete_now(self, token, result):
        self._ready.append(Completion(token, result))
        self._signal.notify()

    def reap(self, timeout_seconds=0.0):
        """Return the completions that are ready, oldest first, as a list.

        Never blocks when `timeout_seconds` is 0; otherwise waits up to that long for at
        least one completion. Failures are completions with a negative result, never
        exceptions.
        """
        if self._signal is None:
            raise ValueError("backend is closed")
        completions = self._collect()
        if not completions and timeout_seconds > 0 and self._outstanding:
            if self._signal.wait(timeout_seconds):
                completions = self._collect()
        self._outstanding -= len(completions)
        return completions

    def _collect(self):
        raise NotImplementedError

    def close(self):
        raise NotImplementedError

    def __enter__(self):
        return self

    def __del__(self):
        # A forgotten backend must not leak its kernel AIO context: fs.aio-max-nr is
        # system-wide. Explicit close() is still the rule.
        try:
            self.close()
        except Exception:
            pass

    def __exit__(self, *exception):
        self.close()


class PortableIo(_BackendBase):
    """pwrite / pread / fdatasync done synchronously at submit, completed through reap().

    Same interface as KernelAio, so the runtime and tests do not care which one runs.
    Each submit blocks for the duration of its I/O; that is the price of portability.
    """

    name = "portable"

    def __init__(self, queue_depth=QUEUE_DEPTH_DEFAULT):
        super().__init__(queue_depth)
        self._signal = _CompletionSignal()
        # None = not tried yet; pwritev(RWF_DSYNC) saves one syscall per durable write.
        self._dsync_flag_supported = None if hasattr(os, "RWF_DSYNC") else False

    def submit_write(self, fd, offset, buffer, token, durable=False):
        """Write all of `buffer` at `offset`; durable=True completes only once it is on stable storage."""
        view = _as_memoryview(buffer)
        _check_request(fd, offset, view, writable=False)
        self._reserve()
        self._complete_now(token, self._write(fd, offset, view, durable))

    def _write(self, fd, offset, view, durable):
        try:
            if durable and self._dsync_flag_supported is not False:
                try:
                    written = os.pwritev(fd, [view], offset, os.RWF_DSYNC)
                    self._dsync_flag_supported = True
                    return written
                except OSError as error:
                    if error.errno not in (errno_codes.EOPNOTSUPP, errno_codes.EINVAL) or self._dsync_flag_supported:
                        raise
                    self._dsync_flag_supported = False
            written = os.pwrite(fd, view, offset)
            if durable:
                os.fdatasync(fd)
            return written
        except OSError as error:
            return -error.errno

    def submit_read(self, fd, offset, buffer, token):
        """Read up to len(buffer) bytes at `offset` into `buffer`; result is the count read."""
        view = _as_memoryview(buffer)
        _check_request(fd, offset, view, writable=True)
        self._reserve()
        try:
            result = os.preadv(fd, [view], offset)
        except OSError as error:
            result = -error.errno
        self._complete_now(token, result)

    def submit_fsync(self, fd, token):
        """fdatasync(fd): every write completed before this submit becomes durable."""
        self._reserve()
        self._complete_now(token, _fdatasync_result(fd))

    def submit_write_fsync(self, fd, offset, buffer, token):
        """A write, then fdatasync: the bytes written, or the first error."""
        self.submit_write(fd, offset, buffer, token, durable=True)

    def _collect(self):
        self._signal.drain()
        completions, self._ready = self._ready, []
        return completions

    def close(self):
        """Release the signal descriptor; pending completions are dropped."""
        if self._signal is not None:
            self._signal.close()
            self._signal = None
            self._ready = []


@dataclasses.dataclass(slots=True)
class _Pair:
    """A write+fsync submitted together: one completion once both halves are back."""
    token: object
    results: list = dataclasses.field(default_factory=lambda: [None, None])   # write, fsync

    def combined(self):
        written, synced = self.results
        if written < 0:
            return written
        return synced if synced < 0 else written


@dataclasses.dataclass(slots=True)
class _InFlight:
    token: object
    iocb: object  # the kernel copies it at submit; kept only so its memory outlives the call
    keepalive: object  # cdata from ffi.from_buffer: pins the caller's buffer until reaped


class KernelAio(_BackendBase):
    """Linux kernel AIO: io_submit returns at once, the eventfd signals completions.

    Writes return quickly only for O_DIRECT files within already allocated, zeroed space
    (see `preallocate_zeroed`): a write that extends the file, or any buffered write, is
    performed inside io_submit. Not thread-safe: one backend per event loop.
    """

    name = "kernel-aio"

    def __init__(self, queue_depth=QUEUE_DEPTH_DEFAULT):
        if _native_lib is None:
            raise OSError(errno_codes.ENOSYS, f"kernel AIO unavailable: {KERNEL_AIO_UNAVAILABLE_REASON}")
        super().__init__(queue_depth)
        ffi, lib = _native_ffi, _native_lib
        self._ffi, self._lib = ffi, lib
        context = ffi.new("uint64_t *")
        # Twice the bound: a write+fsync pair (submit_write_fsync) is one operation here
        # but two requests for the kernel.
        kernel_depth = 2 * queue_depth
        status = lib.raftlite_io_setup(kernel_depth, context)
        if status < 0:
            raise OSError(-status, f"io_setup({queue_depth}): {os.strerror(-status)}")
        self._context = context[0]
        eventfd = lib.eventfd(0, lib.EFD_NONBLOCK | lib.EFD_CLOEXEC)
        if eventfd < 0:
            code = ffi.errno
            lib.raftlite_io_destroy(self._context)
            raise OSError(code, f"eventfd: {os.strerror(code)}")
        self._signal = _CompletionSignal(eventfd=eventfd)
        self._in_flight = {}  # aio_data -> _InFlight
        self._user_data = itertools.count(1)
        # Reused arrays for io_getevents, sized to the queue bound.
        self._kernel_depth = kernel_depth
        self._events = ffi.new("struct io_event[]", kernel_depth)
        self._event_user_data = ffi.new("uint64_t[]", kernel_depth)
        self._event_results = ffi.new("int64_t[]", kernel_depth)
        self._iocb_pointer = ffi.new("struct iocb *[1]")
        self._iocb_pair = ffi.new("struct iocb *[2]")
        # Kernels before 4.18 reject IOCB_CMD_FDSYNC with EINVAL; after the first such
        # refusal, fsync runs synchronously in submit_fsync.
        self._fdsync_supported = True

    def submit_write(self, fd, offset, buffer, token, durable=False):
        """Write all of `buffer` at `offset`; durable=True sets RWF_DSYNC (durable on completion)."""
        view = _as_memoryview(buffer)
        _check_request(fd, offset, view, writable=False)
        flags = self._lib.RWF_DSYNC if durable else 0
        self._submit(self._lib.IOCB_CMD_PWRITE, fd, offset, view, token, flags)

    def submit_read(self, fd, offset, buffer, token):
        """Read up to len(buffer) bytes at `offset` into `buffer`; result is the count read."""
        view = _as_memoryview(buffer)
        _check_request(fd, offset, view, writable=True)
        self._submit(self._lib.IOCB_CMD_PREAD, fd, offset, view, token, 0)

    def submit_write_fsync(self, fd, offset, buffer, token):
        """A buffered write and then fdatasync of the file, in one io_submit.

        io_submit takes the requests in array order, and a buffered write is done (copied
        into the page cache) inside the call, before the FDSYNC request is even queued:
        so the fsync covers the write. One completion: the bytes written once both are
        done, or the first error. The point is one system call and one completion per
        durable append instead of two round trips through the loop."""
        view = _as_memoryview(buffer)
        _check_request(fd, offset, view, writable=False)
        if not self._fdsync_supported or not len(view):
            self._submit(self._lib.IOCB_CMD_PWRITE, fd, offset, view, token, self._lib.RWF_DSYNC)
            return
        ffi, lib = self._ffi, self._lib
        keepalive = ffi.from_buffer("char[]", view)
        self._reserve()
        pair = _Pair(token)
        write_data, sync_data = next(self._user_data), next(self._user_data)
        write_iocb, sync_iocb = ffi.new("struct iocb *"), ffi.new("struct iocb *")
        # A buffered write is complete when io_submit returns, so its completion needs no
        # wake-up of its own: it is collected with the fsync's (saves a loop iteration).
        # An O_DIRECT write may finish after the fsync, so it does signal.
        try:
            write_signal = self._signal.fd if is_direct(fd) else -1
        except OSError:
            write_signal = self._signal.fd
        lib.raftlite_iocb_prepare(write_iocb, lib.IOCB_CMD_PWRITE, fd, keepalive, len(view), offset, write_data, write_signal, 0)
        lib.raftlite_iocb_prepare(sync_iocb, lib.IOCB_CMD_FDSYNC, fd, ffi.NULL, 0, 0, sync_data, self._signal.fd, 0)
        self._iocb_pair[0], self._iocb_pair[1] = write_iocb, sync_iocb
        while True:
            submitted = lib.raftlite_io_submit(self._context, 2, self._iocb_pair)
            if submitted != -errno_codes.EINTR:
                break
        if submitted < 1:
            # Nothing was taken: report it as the write's failure.
            self._complete_now(token, submitted if submitted < 0 else -errno_codes.EAGAIN)
            return
        self._in_flight[write_data] = _InFlight(pair, write_iocb, keepalive)
        if submitted == 2:
            self._in_flight[sync_data] = _InFlight(pair, sync_iocb, None)
            return
        # Only the write was taken (the kernel refused the fsync request): a synchronous
        # fdatasync stands in; it runs after the buffered write, which is already done.
        pair.results[1] = _fdatasync_result(fd)

    def submit_fsync(self, fd, token):
        """fdatasync(fd) as IOCB_CMD_FDSYNC: every write completed before this submit becomes durable."""
        if self._fdsync_supported:
            self._submit(self._lib.IOCB_CMD_FDSYNC, fd, 0, None, token, 0)
        else:
            self._reserve()
            self._complete_now(token, _fdatasync_result(fd))

    def _submit(self, opcode, fd, offset, view, token, rw_flags):
        ffi = self._ffi
        if view is not None and len(view):
            keepalive = ffi.from_buffer("char[]", view, require_writable=opcode == self._lib.IOCB_CMD_PREAD)
            pointer = keepalive
        else:
            keepalive, pointer = None, ffi.NULL
        length = len(view) if view is not None else 0
        self._reserve()  # after everything that may raise, so a refused call costs no slot
        user_data = next(self._user_data)
        iocb = ffi.new("struct iocb *")
        self._lib.raftlite_iocb_prepare(iocb, opcode, fd, pointer, length, offset, user_data, self._signal.fd, rw_flags)
        self._iocb_pointer[0] = iocb
        while True:
            submitted = self._lib.raftlite_io_submit(self._context, 1, self._iocb_pointer)
            if submitted != -errno_codes.EINTR:
                break
        if submitted == 1:
            self._in_flight[user_data] = _InFlight(token, iocb, keepalive)
            return
        # io_submit refused the request (EBADF, EINVAL, EAGAIN, ...): report it the way
        # the kernel reports failures after submission, as a completion.
        if opcode == self._lib.IOCB_CMD_FDSYNC and submitted == -errno_codes.EINVAL:
            result = _fdatasync_result(fd)
            if result == 0:
                self._fdsync_supported = False  # the file can be synced; this kernel lacks aio fsync
            self._complete_now(token, result)
            return
        self._complete_now(token, submitted if submitted < 0 else -errno_codes.EAGAIN)

    def _collect(self):
        self._signal.drain()
        completions, self._ready = self._ready, []
        lib = self._lib
        while self._in_flight:
            while True:
                count = lib.raftlite_io_getevents(
                    self._context, 0, self.queue_depth, self._events, self._event_user_data, self._event_results, 0
                )
                if count != -errno_codes.EINTR:
                    break
            if count < 0:
                raise OSError(-count, f"io_getevents: {os.strerror(-count)}")
            for index in range(count):
                in_flight = self._in_flight.pop(self._event_user_data[index], None)
                if in_flight is None:
                    raise RuntimeError(f"kernel completed unknown request {self._event_user_data[index]}")
                result = int(self._event_results[index])
                token = in_flight.token
                if type(token) is _Pair:
                    token.results[0 if in_flight.keepalive is not None else 1] = result
                    if None in token.results:
                        continue   # the other half is still out
                    token, result = token.token, token.combined()
                completions.append(Completion(token, result))
            if count < self._kernel_depth:
                break
        return completions

    def close(self):
        """Destroy the AIO context and close the eventfd.

        io_destroy waits for operations still in flight, so buffers are no longer in use
        when it returns; their completions are dropped.
        """
        if self._signal is None:
            return
        status = self._lib.raftlite_io_destroy(self._context)
        self._in_flight.clear()
        self._ready = []
        self._signal.close()
        self._signal = None
        if status < 0:
            raise OSError(-status, f"io_destroy: {os.strerror(-status)}")


def _fdatasync_result(fd):
    try:
        os.fdatasync(fd)
        return 0
    except OSError as error:
        return -error.errno


Backend = KernelAio if KERNEL_AIO_UNAVAILABLE_REASON is None else PortableIo
BACKEND_NAME = Backend.name

_BACKENDS_BY_NAME = {KernelAio.name: KernelAio, PortableIo.name: PortableIo}


def make_backend(kind=None, queue_depth=QUEUE_DEPTH_DEFAULT):
    """A new backend: the import-time choice by default, or "kernel-aio" / "portable" by name."""
    if kind is None:
        return Backend(queue_depth)
    try:
        backend_class = _BACKENDS_BY_NAME[kind]
    except KeyError:
        raise ValueError(f"unknown backend {kind!r}; choose one of {sorted(_BACKENDS_BY_NAME)}") from None
    return backend_class(queue_depth)


# Per-directory answer of the O_DIRECT probe. Keyed by (st_dev, directory real path) so a
# bind mount or symlink that leads to the same place is not probed twice.
_direct_io_by_directory = {}
_direct_io_lock = threading.Lock()


def supports_direct_io(directory):
    """Whether files in `directory` accept aligned O_DIRECT writes (probed once, cached).

    Opening with O_DIRECT is not proof enough (some filesystems accept the flag and fail
    the first write), so the probe writes one aligned block to a scratch file.
    """
    directory = os.path.realpath(directory)
    key = (os.stat(directory).st_dev, directory)
    with _direct_io_lock:
        if key not in _direct_io_by_directory:
            answer = _probe_direct_io(directory)
            if answer is not None:
                _direct_io_by_directory[key] = answer
            return bool(answer)
        return _direct_io_by_directory[key]


def _probe_direct_io(directory):
    """True / False when the filesystem answered; None when the probe itself could not run."""
    if not _O_DIRECT:
        return False
    path = os.path.join(directory, f".raftlite-direct-probe-{os.getpid()}-{threading.get_ident()}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_DIRECT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        return False if error.errno in (errno_codes.EINVAL, errno_codes.EOPNOTSUPP) else None
    try:
        block = AlignedBuffer(DIRECT_IO_ALIGNMENT)
        return os.pwrite(fd, block.view, 0) == DIRECT_IO_ALIGNMENT
    except OSError as error:
        return False if error.errno in (errno_codes.EINVAL, errno_codes.EOPNOTSUPP) else None
    finally:
        os.close(fd)
        os.unlink(path)


def open_file(path, direct=True, flags=os.O_RDWR | os.O_CREAT, mode=0o644):
    """Open `path` and return its fd, with O_DIRECT only where the filesystem supports it.

    `direct=True` asks for O_DIRECT; tmpfs and some others refuse it, and then the file is
    opened without (check with `is_direct(fd)`). O_CLOEXEC is always added.
    """
    flags |= os.O_CLOEXEC
    if direct and supports_direct_io(os.path.dirname(os.path.abspath(path))):
        flags |= _O_DIRECT
    return os.open(path, flags, mode)


_ZERO_CHUNK_BYTES = 1 << 20


def preallocate_zeroed(fd, size):
    """Grow the file to `size` bytes of written zeros, durably; existing bytes are kept.

    Why zeros are written and not just fallocated: an fallocated range is "unwritten" in
    ext4/XFS, and the first write into it still changes metadata; a write that extends
    the file blocks inside io_submit. Into a written, zeroed range an O_DIRECT write
    neither blocks at submit nor touches metadata. Call it ahead of need (it writes
    `size` bytes and syncs), e.g. in an executor while the previous segment fills.
    """
    if size < 0:
        raise ValueError(f"size must be non-negative, got {size}")
    current_size = os.fstat(fd).st_size
    if size <= current_size:
        return
    direct = is_direct(fd)
    if direct and (current_size % DIRECT_IO_ALIGNMENT or size % DIRECT_IO_ALIGNMENT):
        raise ValueError(
            f"fd {fd} is O_DIRECT: current size {current_size} and target size {size} "
            f"must be multiples of {DIRECT_IO_ALIGNMENT}"
        )
    try:
        # Reserve the space first so a full disk fails here, fast, and not mid-zeroing.
        os.posix_fallocate(fd, current_size, size - current_size)
    except OSError as error:
        if error.errno not in (errno_codes.EOPNOTSUPP, errno_codes.EINVAL, errno_codes.ENOSYS):
            raise
    if not direct:
        # A buffered file is zeroed one 4 KiB page per write: after one big write the
        # page cache keeps the file in large folios, and a small append then dirties, and
        # its fsync writes back, a whole folio (measured: 2 MiB per 13 KiB append). The
        # native loop also runs without the GIL, so a background thread costs the loop
        # nothing.
        if _native_lib is not None:
            result = _native_lib.raftlite_zero_pages(fd, current_size, size)
            if result < 0:
                raise OSError(-result, f"zero-filling: {os.strerror(-result)}")
            return
        page = bytes(DIRECT_IO_ALIGNMENT)
        for offset in range(current_size, size, len(page)):
            os.pwrite(fd, page[: size - offset], offset)
        os.fdatasync(fd)
        return
    zeros = AlignedBuffer(min(_ZERO_CHUNK_BYTES, _round_up(size - current_size, DIRECT_IO_ALIGNMENT)))
    offset = current_size
    while offset < size:
        chunk = min(len(zeros), size - offset)
        written = os.pwrite(fd, zeros.view[:chunk], offset)
        if written <= 0:
            raise OSError(errno_codes.EIO, f"short write while zero-filling at offset {offset}")
        offset += written
    os.fdatasync(fd)


def _round_up(value, multiple):
    return (value + multiple - 1) // multiple * multiple
