"""fsync'd append latency and throughput of the two disk backends, through the node's own
disk path (raftlite.io.disk.DiskExecutor on an asyncio loop, as a node runs it).

    python bench/disk_backends_bench.py [--directory DIR] [--seconds 2] [--sizes 4096,65536]

Each case appends records of one size to a fresh file the way raft storage writes a log
segment: a buffered Write at the end of the file, then a Sync (fdatasync); an append is
durable when its Sync completes. Cases, for each backend (kernel-aio, portable):

  serial      one append at a time: write, sync, wait, next (the latency of a lone commit)
  depth 8     8 appends in flight, each with its own sync (many writers, no batching)

Printed per case: appends done, p50 / p99 / max latency (submit to durable), appends/s,
MB/s, and "loop stall": the p99 / max lateness of a 1 ms ticker running on the same loop,
i.e. how long the loop could not serve the network (heartbeats) while the disk worked.
Progress goes to stderr, the table to stdout.
Numbers depend on the filesystem and device: run it on the disk your nodes will use.
"""

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time

from raftlite.actors.contract import Sync, Write
from raftlite.io import native
from raftlite.io.disk import DiskExecutor

BACKENDS = ("kernel-aio", "portable")
TICK_SECONDS = 0.001


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


class Appender:
    """Drives one DiskExecutor: `append(size)` resolves when the record is durable."""

    def __init__(self, directory: str, backend: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.waiting: dict[object, asyncio.Future] = {}
        self.disk = DiskExecutor(directory, self._deliver, backend=backend)
        self.disk.attach(self.loop)
        self.next_token = 0
        self.offset = 0

    def _deliver(self, token, result) -> None:
        future = self.waiting.pop(token)
        if result.ok:
            future.set_result(None)
        else:
            future.set_exception(OSError(f"{result.error} on {token}"))

    def _submit(self, command) -> asyncio.Future:
        future = self.loop.create_future()
        self.waiting[command.token] = future
        self.disk.submit(command)
        return future

    async def append(self, name: str, data: bytes) -> float:
        """Write + Sync; the seconds from the first submit until the Sync completed."""
        started = time.perf_counter()
        offset, self.offset = self.offset, self.offset + len(data)
        self.next_token += 2
        written = self._submit(Write(token=self.next_token, file=name, offset=offset, data=data))
        synced = self._submit(Sync(token=self.next_token + 1, file=name))
        await written
        await synced
        return time.perf_counter() - started

    def close(self) -> None:
        self.disk.close()


async def run_case(directory: str, backend: str, size: int, depth: int, seconds: float) -> dict:
    case_directory = tempfile.mkdtemp(prefix=f"{backend}-", dir=directory)
    appender = Appender(case_directory, backend)
    data = os.urandom(size)
    latencies: list[float] = []
    began = time.perf_counter()
    deadline = began + seconds

    stalls: list[float] = []

    async def worker() -> None:
        while time.perf_counter() < deadline:
            latencies.append(await appender.append("segment-bench", data))

    async def ticker() -> None:
        while time.perf_counter() < deadline:
            asked = time.perf_counter()
            await asyncio.sleep(TICK_SECONDS)
            stalls.append(max(0.0, time.perf_counter() - asked - TICK_SECONDS))

    try:
        await asyncio.gather(ticker(), *(worker() for _ in range(depth)))
        elapsed = time.perf_counter() - began
    finally:
        appender.close()
        shutil.rmtree(case_directory, ignore_errors=True)
    latencies.sort()
    return {
        "backend": backend, "case": "serial" if depth == 1 else f"depth {depth}", "size": size,
        "appends": len(latencies), "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3, "max_ms": latencies[-1] * 1e3,
        "per_second": len(latencies) / elapsed, "mb_per_second": len(latencies) * size / elapsed / 1e6,
        "stall_p99_ms": percentile(sorted(stalls), 0.99) * 1e3, "stall_max_ms": max(stalls) * 1e3,
    }


def format_table(results: list[dict]) -> str:
    header = ("backend", "case", "record", "appends", "p50 ms", "p99 ms", "max ms", "appends/s", "MB/s",
              "stall p99 ms", "stall max ms")
    rows = [header] + [
        (r["backend"], r["case"], f"{r['size'] // 1024} KiB", str(r["appends"]), f"{r['p50_ms']:.3f}",
         f"{r['p99_ms']:.3f}", f"{r['max_ms']:.2f}", f"{r['per_second']:,.0f}", f"{r['mb_per_second']:.1f}",
         f"{r['stall_p99_ms']:.2f}", f"{r['stall_max_ms']:.2f}")
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if i < 3 else cell.rjust(width) for i, (cell, width) in
                       enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--directory", default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per case (default 2)")
    parser.add_argument("--sizes", default="4096,65536", help="record sizes in bytes, comma-separated")
    parser.add_argument("--depths", default="1,8", help="appends in flight, comma-separated (1 = serial)")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    depths = [int(depth) for depth in args.depths.split(",")]
    backends = [backend for backend in BACKENDS if backend != "kernel-aio" or native.KERNEL_AIO_UNAVAILABLE_REASON is None]
    if "kernel-aio" not in backends:
        print(f"kernel-aio unavailable here: {native.KERNEL_AIO_UNAVAILABLE_REASON}", file=sys.stderr)
    directory = args.directory or tempfile.mkdtemp(prefix="raftlite-disk-bench-")
    cases = [(backend, size, depth) for backend in backends for size in sizes for depth in depths]
    results = []
    try:
        for number, (backend, size, depth) in enumerate(cases, 1):
            print(f"[{number}/{len(cases)}] {backend}, {size} B records, {depth} in flight, {args.seconds:g} s ...",
                  file=sys.stderr, flush=True)
            result = asyncio.run(run_case(directory, backend, size, depth, args.seconds))
            print(f"        {result['appends']} appends, p50 {result['p50_ms']:.3f} ms, "
                  f"{result['per_second']:,.0f}/s", file=sys.stderr, flush=True)
            results.append(result)
    finally:
        if args.directory is None:
            shutil.rmtree(directory, ignore_errors=True)
    print(f"durable appends (write + fdatasync) through DiskExecutor in {args.directory or 'a temporary directory'}")
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
