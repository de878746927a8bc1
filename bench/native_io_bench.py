"""Durable 4 KiB append latency and throughput for each raftlite.io.native backend.

    python bench/native_io_bench.py [--directory DIR] [--seconds-per-case 0.75]

Each case appends 4 KiB blocks to a preallocated, zero-filled file (as raft log segments
are written) and waits until each append is durable:

  dsync-write      one write with RWF_DSYNC per append (durable on completion)
  write+fdatasync  a plain write, then an fsync operation, per append
  dsync-write qd16 16 durable appends kept in flight (group-commit-like throughput)
  extending-file   dsync-write into a file that is NOT preallocated (the pitfall case)

"submit us" is the median time spent inside the submit call(s): the time an event loop
would be stalled. For the portable backend it is the whole I/O; for kernel AIO on an
O_DIRECT file it should be a few microseconds.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

from raftlite.io import native

BLOCK_BYTES = 4096
SEGMENT_BYTES = 64 << 20  # room for every append a case can make in its time budget


def percentile(sorted_values, fraction):
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def reap_one(backend):
    while True:
        completions = backend.reap(timeout_seconds=5.0)
        if completions:
            [completion] = completions
            completion.check()
            return completion


def run_serial(backend, fd, seconds, use_fsync):
    buffer = native.AlignedBuffer(BLOCK_BYTES)
    latencies, submit_times = [], []
    offset = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline and offset + BLOCK_BYTES <= SEGMENT_BYTES:
        buffer.view[:8] = offset.to_bytes(8, "little")
        started = time.perf_counter()
        backend.submit_write(fd, offset, buffer, token=offset, durable=not use_fsync)
        submit_time = time.perf_counter() - started
        reap_one(backend)
        if use_fsync:
            submit_started = time.perf_counter()
            backend.submit_fsync(fd, token="sync")
            submit_time += time.perf_counter() - submit_started
            reap_one(backend)
        latencies.append(time.perf_counter() - started)
        submit_times.append(submit_time)
        offset += BLOCK_BYTES
    return latencies, submit_times, sum(latencies)


def run_pipelined(backend, fd, seconds, depth):
    buffers = [native.AlignedBuffer(BLOCK_BYTES) for _ in range(depth)]
    free = list(range(depth))
    started_at = {}
    latencies, submit_times = [], []
    offset = 0
    began = time.perf_counter()
    deadline = began + seconds
    while True:
        while free and time.perf_counter() < deadline and offset + BLOCK_BYTES <= SEGMENT_BYTES:
            slot = free.pop()
            started = time.perf_counter()
            backend.submit_write(fd, offset, buffers[slot], token=slot, durable=True)
            submit_times.append(time.perf_counter() - started)
            started_at[slot] = started
            offset += BLOCK_BYTES
        if not started_at:
            break
        for completion in backend.reap(timeout_seconds=5.0):
            completion.check()
            latencies.append(time.perf_counter() - started_at.pop(completion.token))
            free.append(completion.token)
    return latencies, submit_times, time.perf_counter() - began


def measure(kind, directory, case, seconds):
    path = os.path.join(directory, f"{kind}-{case}.segment")
    fd = native.open_file(path, direct=True)
    try:
        if case != "extending-file":
            native.preallocate_zeroed(fd, SEGMENT_BYTES)
        with native.make_backend(kind, queue_depth=64) as backend:
            if case == "dsync-write qd16":
                latencies, submit_times, elapsed = run_pipelined(backend, fd, seconds, depth=16)
            else:
                latencies, submit_times, elapsed = run_serial(backend, fd, seconds, use_fsync=case == "write+fdatasync")
        direct = native.is_direct(fd)
    finally:
        os.close(fd)
        os.unlink(path)
    latencies.sort()
    return {
        "backend": kind,
        "case": case,
        "direct": direct,
        "appends": len(latencies),
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "appends_per_second": len(latencies) / elapsed,
        "submit_p50_us": statistics.median(submit_times) * 1e6,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--directory", help="where to put scratch files (default: the system temp dir)")
    parser.add_argument("--seconds-per-case", type=float, default=0.75)
    arguments = parser.parse_args()

    directory = tempfile.mkdtemp(prefix="raftlite-native-io-bench-", dir=arguments.directory)
    kinds = ["portable"]
    if native.KERNEL_AIO_UNAVAILABLE_REASON is None:
        kinds.insert(0, "kernel-aio")
    else:
        print(f"kernel-aio skipped: {native.KERNEL_AIO_UNAVAILABLE_REASON}", file=sys.stderr)
    cases = ["dsync-write", "write+fdatasync", "dsync-write qd16", "extending-file"]
    rows = []
    try:
        for kind in kinds:
            for case in cases:
                rows.append(measure(kind, directory, case, arguments.seconds_per_case))
    finally:
        shutil.rmtree(directory)

    print(f"default backend: {native.BACKEND_NAME}; directory: {directory} (O_DIRECT: {rows[0]['direct']})")
    header = f"{'backend':<11} {'case':<17} {'appends':>7} {'p50 ms':>7} {'p99 ms':>7} {'appends/s':>9} {'submit us':>9}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['backend']:<11} {row['case']:<17} {row['appends']:>7} {row['p50_ms']:>7.3f} "
            f"{row['p99_ms']:>7.3f} {row['appends_per_second']:>9.0f} {row['submit_p50_us']:>9.1f}"
        )


if __name__ == "__main__":
    main()
