"""cffi builder for `raftlite.io.native._aio`: Linux kernel AIO, eventfd and aligned memory.

Out-of-line API mode: setup.py names this file in `cffi_modules`, and setuptools compiles
the extension during `pip install`. It can also be built by hand:

    python -c "import _aio_build as b; b.ffibuilder.compile(verbose=True)"

Why C wrappers instead of declaring io_setup & co. directly: glibc exports no io_*
functions and libaio is not a dependency, so the wrappers call `syscall(SYS_io_*)`.
Why `struct iocb` / `struct io_event` stay opaque to Python: their field types
(`__u64`, `__kernel_rwf_t`) and field order (it depends on endianness) differ from what a
portable cdef could spell, and cffi's field checks would then warn or fail on some
compilers. A small fill-in function and a copy-out function keep all layout knowledge
in C; all policy (tokens, queue bounds, fallbacks) lives in Python.
"""

import cffi

CDEF = """
struct iocb { ...; };
struct io_event { ...; };

#define IOCB_CMD_PREAD ...
#define IOCB_CMD_PWRITE ...
#define IOCB_CMD_FDSYNC ...
#define IOCB_FLAG_RESFD ...
#define RWF_DSYNC ...
#define O_DIRECT ...
#define O_DSYNC ...
#define EFD_NONBLOCK ...
#define EFD_CLOEXEC ...

int raftlite_io_setup(unsigned int queue_depth, uint64_t *context_out);
int raftlite_io_destroy(uint64_t context);
void raftlite_iocb_prepare(struct iocb *iocb, int opcode, int fd, void *buffer,
                           uint64_t length, int64_t offset, uint64_t user_data,
                           int result_fd, int rw_flags);
long raftlite_io_submit(uint64_t context, long count, struct iocb **iocbs);
long raftlite_io_getevents(uint64_t context, long minimum, long maximum,
                           struct io_event *events, uint64_t *user_data_out,
                           int64_t *result_out, int64_t timeout_ns);

int raftlite_zero_pages(int fd, int64_t start, int64_t end);

int eventfd(unsigned int initial_value, int flags);
int posix_memalign(void **memory_out, size_t alignment, size_t size);
void free(void *memory);
"""

C_SOURCE = r"""
/* O_DIRECT needs _GNU_SOURCE; Python.h usually defines it already. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <linux/aio_abi.h>

/* linux/fs.h also defines RWF_DSYNC but clashes with glibc headers; the value is ABI. */
#ifndef RWF_DSYNC
#define RWF_DSYNC 0x00000002
#endif

/* Every wrapper returns a negative errno instead of setting errno, so Python never has
   to read errno after the call (cffi would make that racy with other C calls). */

static int raftlite_io_setup(unsigned int queue_depth, uint64_t *context_out)
{
    aio_context_t context = 0;
    if (syscall(SYS_io_setup, queue_depth, &context) < 0)
        return -errno;
    *context_out = (uint64_t)context;
    return 0;
}

static int raftlite_io_destroy(uint64_t context)
{
    if (syscall(SYS_io_destroy, (aio_context_t)context) < 0)
        return -errno;
    return 0;
}

static void raftlite_iocb_prepare(struct iocb *iocb, int opcode, int fd, void *buffer,
                                  uint64_t length, int64_t offset, uint64_t user_data,
                                  int result_fd, int rw_flags)
{
    memset(iocb, 0, sizeof *iocb);
    iocb->aio_data = user_data;
    iocb->aio_lio_opcode = (__u16)opcode;
    iocb->aio_fildes = (__u32)fd;
    iocb->aio_buf = (__u64)(uintptr_t)buffer;
    iocb->aio_nbytes = length;
    iocb->aio_offset = offset;
    iocb->aio_rw_flags = rw_flags;
    if (result_fd >= 0) {
        iocb->aio_flags = IOCB_FLAG_RESFD;
        iocb->aio_resfd = (__u32)result_fd;
    }
}

/* Writes zeros over [start, end) of `fd`, one 4 KiB page per write (the last one
   short), then fdatasync: see preallocate_zeroed for why page by page. */
static int raftlite_zero_pages(int fd, int64_t start, int64_t end)
{
    static const char zeros[4096];
    int64_t offset;
    for (offset = start; offset < end; offset += (int64_t)sizeof zeros) {
        size_t length = end - offset < (int64_t)sizeof zeros ? (size_t)(end - offset) : sizeof zeros;
        ssize_t written = pwrite(fd, zeros, length, offset);
        if (written != (ssize_t)length)
            return written < 0 ? -errno : -EIO;
    }
    return fdatasync(fd) == 0 ? 0 : -errno;
}

static long raftlite_io_submit(uint64_t context, long count, struct iocb **iocbs)
{
    long submitted = syscall(SYS_io_submit, (aio_context_t)context, count, iocbs);
    return submitted < 0 ? -errno : submitted;
}

/* timeout_ns < 0 waits without a deadline. Results are copied into plain arrays so
   Python never needs struct io_event's layout. */
static long raftlite_io_getevents(uint64_t context, long minimum, long maximum,
                                  struct io_event *events, uint64_t *user_data_out,
                                  int64_t *result_out, int64_t timeout_ns)
{
    struct timespec timeout;
    struct timespec *timeout_pointer = NULL;
    long count;
    long index;
    if (timeout_ns >= 0) {
        timeout.tv_sec = (time_t)(timeout_ns / 1000000000);
        timeout.tv_nsec = (long)(timeout_ns % 1000000000);
        timeout_pointer = &timeout;
    }
    count = syscall(SYS_io_getevents, (aio_context_t)context, minimum, maximum, events,
                    timeout_pointer);
    if (count < 0)
        return -errno;
    for (index = 0; index < count; index++) {
        user_data_out[index] = events[index].data;
        result_out[index] = events[index].res;
    }
    return count;
}
"""

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("raftlite.io.native._aio", C_SOURCE)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
