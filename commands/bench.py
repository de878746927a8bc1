"""`raftlite bench`: a local raftlite cluster (real node processes) under a key/value
load through dqlite's wire protocol, optionally side by side with Debian's
`dqlite-benchmark` in the same invocation.

    raftlite bench --workload kvwrite|kvreadwrite --workers W --duration S --nodes N
                   --key-size 32 --value-size 1024 [--vs-dqlite] [--runs R]
                   [--client asyncio|threads] [--profile DIR] [--keep]

Theory of operation
-------------------
The workload is dqlite-benchmark's (go-dqlite `benchmark/worker.go`): a table
`model (key TEXT, value TEXT, UNIQUE(key))`; kvwrite is `INSERT OR REPLACE` of a new
random key of `key_size` letters and a value of `value_size` characters (half one
repeated letter, half random letters); kvreadwrite flips a coin per operation and, once
the worker has written a key, reads one of its own keys back with
`SELECT value FROM model WHERE key = ?`. Each worker has its own connection to the
leader, prepares its statements once and then sends EXEC / QUERY, as go-dqlite's
database/sql driver does. Latencies are those of successful operations (as in
dqlite-benchmark's result files); failures are counted by kind.

One run = a fresh cluster: raftlite.process_cluster's `ProcessCluster` or three `dqlite-benchmark`
processes (the first is the driver: it bootstraps, leads and runs the workers in its
own process), the load for `duration_s`, then the processes are stopped by PID. With
`--vs-dqlite` and `--runs R`, runs alternate raftlite, dqlite, raftlite, ... so that
the noise of a shared machine falls on both; the summary gives medians and ratios.

Resource accounting, measured the same way for both systems: a monitor thread samples
every duration/10 (0.25 .. 1 s) each process's CPU time (/proc/PID/stat utime+stime), its
block-device writes (/proc/PID/io write_bytes) and the bytes sent on TCP sockets between
two cluster processes (`ss -tinp`: tcp_info bytes_sent), i.e. peer (raft) traffic, not
client traffic. The per-operation figures use the samples that bracket the steady part
of the run (the first and last `WINDOW_MARGIN_FRACTION` of the operations' time span are
left out) and the successful operations whose start time falls between them.
"""

import argparse
import array
import asyncio
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..argument_types import positive_int
from ..client.connection import AsyncConnection, Connection, ConnectionBroken, RequestFailed
from ..core.wire import WireProtocolError
from ..io import event_loop
from ..process_cluster import ClusterError, ProcessCluster, free_ports

__all__ = [
    "BenchError", "BenchSettings", "RunResult", "Summary", "compare", "register", "render_comparison",
    "render_run", "run", "run_dqlite", "run_raftlite", "summarize",
]

WORKLOADS = ("kvwrite", "kvreadwrite")
CLIENTS = ("asyncio", "threads")
DATABASE_NAME = "benchmark"
SCHEMA_SQL = "CREATE TABLE IF NOT EXISTS model (key TEXT, value TEXT, UNIQUE(key))"
WRITE_SQL = "INSERT OR REPLACE INTO model(key, value) VALUES(?, ?)"
READ_SQL = "SELECT value FROM model WHERE key = ?"
DQLITE_BENCHMARK = "dqlite-benchmark"
SAMPLE_INTERVAL_S_MIN = 0.25
SAMPLE_INTERVAL_S_MAX = 1.0
WINDOW_MARGIN_FRACTION = 0.1
REQUEST_TIMEOUT_S = 10.0
RECONNECT_PAUSE_S = 0.05
DQLITE_READY_TIMEOUT_S = 60.0
DQLITE_EXIT_GRACE_S = 60.0
PROCESS_STOP_GRACE_S = 10.0
PROFILE_RATE_HZ = 100
PROFILE_TOP = 20
ERROR_TEXT_CHARS_MAX = 80

_LETTERS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_TO_LETTERS = bytes(_LETTERS[i % len(_LETTERS)] for i in range(256))

Report = Callable[[str], None]


class BenchError(Exception):
    """A user mistake or an environment problem, reported in one line (exit 2)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchSettings:
    workload: str = "kvwrite"
    workers: int = 1
    duration_s: int = 10
    nodes: int = 3
    key_size: int = 32
    value_size: int = 1024
    runs: int = 1
    vs_dqlite: bool = False
    client: str = "asyncio"
    profile_dir: Path | None = None
    keep: bool = False
    progress_interval_s: float | None = None  # default: duration / 10, at least 1 s

    def validate(self) -> "BenchSettings":
        if self.workload not in WORKLOADS:
            raise BenchError(f"unknown workload {self.workload!r}; choose from {', '.join(WORKLOADS)}")
        if self.client not in CLIENTS:
            raise BenchError(f"unknown client {self.client!r}; choose from {', '.join(CLIENTS)}")
        for name in ("workers", "duration_s", "nodes", "key_size", "value_size", "runs"):
            if getattr(self, name) < 1:
                raise BenchError(f"--{name.removesuffix('_s').replace('_', '-')} must be at least 1")
        if self.vs_dqlite and shutil.which(DQLITE_BENCHMARK) is None:
            raise BenchError(f"--vs-dqlite needs `{DQLITE_BENCHMARK}` (Debian: apt-get install go-dqlite)")
        if self.profile_dir is not None and _py_spy() is None:
            raise BenchError("--profile needs py-spy (pip install py-spy)")
        return self

    @property
    def progress_every_s(self) -> float:
        return self.progress_interval_s or max(1.0, self.duration_s / 10)


# -- results -------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class RunResult:
    """One run of one system. `cpu_us_per_op` and `disk_bytes_per_op` are per process
    role ("leader", "follower 2", "client", ...); `peer_bytes_per_op` is all the bytes
    sent between cluster processes divided by the successful operations in the window."""

    system: str
    workload: str
    workers: int
    nodes: int
    duration_s: float
    ops: int
    errors: dict[str, int]
    latency_ms: dict[str, float]           # p50, p90, p99, max, mean
    cpu_us_per_op: dict[str, float] = field(default_factory=dict)
    disk_bytes_per_op: dict[str, float] = field(default_factory=dict)
    peer_bytes_per_op: float | None = None
    machine_cpu_us_per_op: float | None = None
    window_ops: int = 0
    window_s: float = 0.0
    client: str = ""
    profile: dict[str, "ProfileSummary"] = field(default_factory=dict)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.duration_s if self.duration_s else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def errors_per_s(self) -> float:
        return self.error_count / self.duration_s if self.duration_s else 0.0

    @property
    def cpu_us_per_op_total(self) -> float | None:
        return sum(self.cpu_us_per_op.values()) if self.cpu_us_per_op else None

    def to_json(self) -> dict:
        data = asdict(self)
        data.update(ops_per_s=self.ops_per_s, errors_per_s=self.errors_per_s)
        return data


def _latency_figures(latencies_s: Sequence[float]) -> dict[str, float]:
    if not latencies_s:
        return {}
    ordered = sorted(latencies_s)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000.0

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": ordered[-1] * 1000.0,
            "mean": statistics.fmean(ordered) * 1000.0}


def _error_kind(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_TEXT_CHARS_MAX else text[:ERROR_TEXT_CHARS_MAX - 3] + "..."


# -- the workload ---------------------------------------------------------------------------


class _Workload:
    """One worker's operation generator (dqlite-benchmark's kvwrite / kvreadwrite)."""

    def __init__(self, settings: BenchSettings, seed: int) -> None:
        self.reads = settings.workload == "kvreadwrite"
        self.key_size = settings.key_size
        self.value_size = settings.value_size
        self.keys: list[str] = []
        self.random = random.Random(seed)

    def _letters(self, count: int) -> str:
        return os.urandom(count).translate(_TO_LETTERS).decode("ascii")

    def next(self) -> tuple[bool, tuple[str, ...]]:
        """(is_write, parameters)."""
        if self.reads and self.keys and self.random.random() < 0.5:
            return False, (self.keys[self.random.randrange(len(self.keys))],)
        half = self.value_size // 2
        value = self._letters(1) * half + self._letters(self.value_size - half)
        return True, (self._letters(self.key_size), value)

    def written(self, parameters: tuple[str, ...]) -> None:
        if self.reads:
            self.keys.append(parameters[0])


class _Recorder:
    """Successful operations (start time, latency) and failures by kind, of all workers.
    Appends are atomic under the GIL, so threads share it without a lock."""

    def __init__(self) -> None:
        self.starts_ns = array.array("q")
        self.latencies_s = array.array("d")
        self.errors: Counter[str] = Counter()
        self.error_count = 0

    def ok(self, start_ns: int, latency_s: float) -> None:
        self.starts_ns.append(start_ns)
        self.latencies_s.append(latency_s)

    def failed(self, kind: str) -> None:
        self.errors[kind] += 1
        self.error_count += 1


# -- process accounting -----------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float | None:
    """CPU time all CPUs spent not idle (/proc/stat), any process and the kernel's
    workers (fsync writeback, network softirqs) included."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _write_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/io", encoding="ascii") as io_file:
            for line in io_file:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


_SS_USERS = re.compile(r"pid=(\d+)")
_SS_BYTES_SENT = re.compile(r"\bbytes_sent:(\d+)")


def _socket_bytes_sent(pids: set[int]) -> dict[tuple[str, str], tuple[int, int]] | None:
    """{(local, remote): (owner pid, bytes sent)} for established TCP sockets of `pids`,
    or None when `ss` is unavailable."""
    try:
        output = subprocess.run(["ss", "-tinpH", "state", "established"], capture_output=True, text=True,
                                timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    sockets: dict[tuple[str, str], tuple[int, int]] = {}
    current: tuple[tuple[str, str], int] | None = None
    for line in output.splitlines():
        if not line.startswith((" ", "\t")):
            current = None
            parts = line.split()
            owners = {int(pid) for pid in _SS_USERS.findall(line)} & pids
            if len(parts) >= 4 and owners:
                current = ((parts[2], parts[3]), owners.pop())
            continue
        if current is not None:
            match = _SS_BYTES_SENT.search(line)
            sockets[current[0]] = (current[1], int(match.group(1)) if match else 0)
            current = None
    return sockets


@dataclass(slots=True)
class _Sample:
    time_ns: int
    machine_busy_s: float | None
    cpu_s: dict[str, float | None]
    write_bytes: dict[str, int | None]
    sockets: dict[tuple[str, str], tuple[int, int]] | None


class _Monitor:
    """Samples CPU, disk writes and peer socket bytes of named processes in a thread."""

    def __init__(self, roles: dict[str, int], cluster_pids: set[int], duration_s: float) -> None:
        self.interval_s = min(SAMPLE_INTERVAL_S_MAX, max(SAMPLE_INTERVAL_S_MIN, duration_s / 10))
        self.roles = roles
        self.cluster_pids = cluster_pids
        self.samples: list[_Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)
        self.has_ss = shutil.which("ss") is not None

    def sample(self) -> None:
        self.samples.append(_Sample(
            time_ns=time.time_ns(),
            machine_busy_s=_machine_busy_seconds(),
            cpu_s={role: _cpu_seconds(pid) for role, pid in self.roles.items()},
            write_bytes={role: _write_bytes(pid) for role, pid in self.roles.items()},
            sockets=_socket_bytes_sent(self.cluster_pids) if self.has_ss else None,
        ))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> "_Monitor":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *_exception: object) -> None:
        self._stop.set()
        self._thread.join()

    def account(self, result: RunResult, starts_ns: Sequence[int]) -> None:
        """Fills the per-operation figures of `result` from the samples bracketing the
        steady part of the run."""
        if not starts_ns or len(self.samples) < 2:
            return
        first, last = min(starts_ns), max(starts_ns)
        margin = int((last - first) * WINDOW_MARGIN_FRACTION)
        inside = [sample for sample in self.samples if first + margin <= sample.time_ns <= last - margin]
        if len(inside) < 2:
            inside = [sample for sample in self.samples if first <= sample.time_ns <= last] or self.samples
            if len(inside) < 2:
                inside = [self.samples[0], self.samples[-1]]
        begin, end = inside[0], inside[-1]
        operations = sum(1 for start in starts_ns if begin.time_ns <= start < end.time_ns)
        if operations == 0:
            return
        result.window_ops = operations
        result.window_s = (end.time_ns - begin.time_ns) / 1e9
        for role in self.roles:
            before, after = begin.cpu_s.get(role), end.cpu_s.get(role)
            if before is not None and after is not None:
                result.cpu_us_per_op[role] = (after - before) * 1e6 / operations
            written_before, written_after = begin.write_bytes.get(role), end.write_bytes.get(role)
            if written_before is not None and written_after is not None and role != "client":
                result.disk_bytes_per_op[role] = (written_after - written_before) / operations
        if begin.machine_busy_s is not None and end.machine_busy_s is not None:
            result.machine_cpu_us_per_op = (end.machine_busy_s - begin.machine_busy_s) * 1e6 / operations
        if begin.sockets is not None and end.sockets is not None:
            result.peer_bytes_per_op = _peer_bytes(begin.sockets, end.sockets) / operations


def _peer_bytes(before: dict[tuple[str, str], tuple[int, int]],
                after: dict[tuple[str, str], tuple[int, int]]) -> int:
    """Bytes sent on sockets whose other end belongs to another cluster process."""
    owner_of_endpoint = {local: pid for (local, _remote), (pid, _sent) in after.items()}
    total = 0
    for (local, remote), (pid, sent) in after.items():
        other = owner_of_endpoint.get(remote)
        if other is None or other == pid:
            continue
        total += sent - before.get((local, remote), (pid, 0))[1]
    return total


# -- profiling (py-spy) ------------------------------------------------------------------------


def _py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class _Profiler:
    """py-spy record on some processes for a time, in collapsed-stack ("raw") format."""

    def __init__(self, directory: Path, targets: dict[str, int], seconds: float) -> None:
        self.directory = directory
        self.targets = targets
        self.seconds = max(1, int(seconds))
        self.processes: dict[str, subprocess.Popen] = {}

    def path(self, role: str) -> Path:
        return self.directory / f"{role.replace(' ', '-')}.txt"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        executable = _py_spy()
        for role, pid in self.targets.items():
            self.processes[role] = subprocess.Popen(
                [executable, "record", "-p", str(pid), "-d", str(self.seconds), "-r", str(PROFILE_RATE_HZ),
                 "--format", "raw", "-o", str(self.path(role))],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            )

    def finish(self) -> dict[str, "ProfileSummary"]:
        summaries = {}
        for role, process in self.processes.items():
            try:
                process.wait(timeout=self.seconds + 30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if self.path(role).exists():
                summaries[role] = summarize_profile(self.path(role).read_text(errors="replace"))
        return summaries

    def kill(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match.group("file")
    if "/lib/python" in path:
        path = path[path.rfind("/lib/python") + len("/lib/"):]
    else:
        path = _package_relative(path)
    return f"{match.group('function')} ({path})"


# (function name's last part, file name) of the frames where a thread waits, not works.
_IDLE_LEAVES = {("select", "selectors.py"), ("wait", "threading.py"), ("join", "threading.py"),
                ("_wait_for_tstate_lock", "threading.py")}


@dataclass(frozen=True, slots=True, kw_only=True)
class ProfileSummary:
    """Where a process spent its busy samples: `busy_percent` of all samples were not
    waiting in the event loop's select (or a thread wait); `by_self` and `by_total` give
    (function (file), percent of busy samples), by self time and by inclusive time (the
    latter only raftlite's own functions below the runtime's entry points)."""

    samples: int
    busy_percent: float
    by_self: tuple[tuple[str, float], ...]
    by_total: tuple[tuple[str, float], ...]


def _is_idle(leaf: str) -> bool:
    function, _, file = leaf.partition(" (")
    return (function.rsplit(".", 1)[-1], file.rstrip(")").rsplit("/", 1)[-1]) in _IDLE_LEAVES


def _package_relative(path: str) -> str:
    """"main/io/disk.py" (py-spy names files after their sys.path entry) -> "io/disk.py"."""
    for prefix in _OWN_PREFIXES:
        if path.startswith(prefix):
            return path
        found = path.find("/" + prefix)
        if found >= 0:
            return path[found + 1:]
    return path


def summarize_profile(collapsed: str, top: int = PROFILE_TOP) -> ProfileSummary:
    """Summarizes py-spy's raw (collapsed stacks) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    samples = busy = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";")
                  if frame and not frame.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        if _is_idle(frames[-1]):
            continue
        busy += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if busy == 0:
        return ProfileSummary(samples=samples, busy_percent=0.0, by_self=(), by_total=())
    ours = [(name, count) for name, count in inclusive.most_common()
            if name.split(" (", 1)[-1].startswith(_OWN_PREFIXES) and count < 0.9 * busy]
    return ProfileSummary(
        samples=samples, busy_percent=100.0 * busy / samples,
        by_self=tuple((name, 100.0 * count / busy) for name, count in own.most_common(top)),
        by_total=tuple((name, 100.0 * count / busy) for name, count in ours[:top]),
    )


_OWN_PREFIXES = tuple(f"{folder}/" for folder in ("actors", "core", "io", "client", "sim", "jepsen_like", "commands"))


# -- raftlite ---------------------------------------------------------------------------------


class _Progress:
    def __init__(self, label: str, settings: BenchSettings, report: Report) -> None:
        self.label = label
        self.every_s = settings.progress_every_s
        self.report = report
        self.last_ops = 0
        self.last_time = time.monotonic()
        self.started = self.last_time

    def tick(self, ops: int, errors: int) -> None:
        now = time.monotonic()
        rate = (ops - self.last_ops) / (now - self.last_time) if now > self.last_time else 0.0
        self.report(f"  [{self.label}] {now - self.started:5.1f} s: {ops:,} ops ({rate:,.0f} ops/s), {errors:,} errors")
        self.last_ops, self.last_time = ops, now


async def _async_worker(index: int, address: str, settings: BenchSettings, recorder: _Recorder,
                        stop_at: float) -> None:
    workload = _Workload(settings, seed=index)
    connection = None
    while time.monotonic() < stop_at:
        try:
            if connection is None or connection.closed:
                connection = await AsyncConnection.connect(address, timeout_s=REQUEST_TIMEOUT_S)
                db = await connection.open(DATABASE_NAME)
                write_id = (await connection.prepare(db, WRITE_SQL)).stmt_id
                read_id = (await connection.prepare(db, READ_SQL)).stmt_id if workload.reads else 0
            is_write, parameters = workload.next()
            start_ns = time.time_ns()
            started = time.perf_counter()
            if is_write:
                await connection.exec(db, write_id, parameters)
                workload.written(parameters)
            else:
                await connection.query(db, read_id, parameters)
            recorder.ok(start_ns, time.perf_counter() - started)
        except RequestFailed as error:
            recorder.failed(_error_kind(f"{error.code} {error.message}"))
        except (ConnectionBroken, WireProtocolError) as error:
            recorder.failed(_error_kind(f"connection: {type(error).__name__}"))
            await asyncio.sleep(RECONNECT_PAUSE_S)
    if connection is not None:
        await connection.wait_closed()


async def _async_load(address: str, settings: BenchSettings, recorder: _Recorder, progress: _Progress) -> None:
    stop_at = time.monotonic() + settings.duration_s
    workers = [asyncio.create_task(_async_worker(index, address, settings, recorder, stop_at))
               for index in range(settings.workers)]
    while not all(worker.done() for worker in workers):
        done, _ = await asyncio.wait(workers, timeout=progress.every_s)
        if len(done) < len(workers):
            progress.tick(len(recorder.latencies_s), recorder.error_count)
    for worker in workers:
        worker.result()


def _thread_worker(index: int, address: str, settings: BenchSettings, recorder: _Recorder, stop_at: float) -> None:
    workload = _Workload(settings, seed=index)
    connection = None
    try:
        while time.monotonic() < stop_at:
            try:
                if connection is None or connection.closed:
                    connection = Connection.connect(address, timeout_s=REQUEST_TIMEOUT_S)
                    db = connection.open(DATABASE_NAME)
                    write_id = connection.prepare(db, WRITE_SQL).stmt_id
                    read_id = connection.prepare(db, READ_SQL).stmt_id if workload.reads else 0
                is_write, parameters = workload.next()
                start_ns = time.time_ns()
                started = time.perf_counter()
                if is_write:
                    connection.exec(db, write_id, parameters)
                    workload.written(parameters)
                else:
                    connection.query(db, read_id, parameters)
                recorder.ok(start_ns, time.perf_counter() - started)
            except RequestFailed as error:
                recorder.failed(_error_kind(f"{error.code} {error.message}"))
            except (ConnectionBroken, WireProtocolError) as error:
                recorder.failed(_error_kind(f"connection: {type(error).__name__}"))
                time.sleep(RECONNECT_PAUSE_S)
    finally:
        if connection is not None:
            connection.close()


def _threaded_load(address: str, settings: BenchSettings, recorder: _Recorder, progress: _Progress) -> None:
    stop_at = time.monotonic() + settings.duration_s
    threads = [threading.Thread(target=_thread_worker, args=(index, address, settings, recorder, stop_at),
                                name=f"bench-worker-{index}", daemon=True) for index in range(settings.workers)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        threads[0].join(timeout=0.0)
        deadline = time.monotonic() + progress.every_s
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in threads):
            progress.tick(len(recorder.latencies_s), recorder.error_count)


def _create_schema(address: str) -> None:
    with Connection.connect(address, timeout_s=REQUEST_TIMEOUT_S) as connection:
        db = connection.open(DATABASE_NAME)
        connection.exec_sql(db, SCHEMA_SQL)


def run_raftlite(settings: BenchSettings, directory: Path, report: Report, *, run_label: str = "raftlite") -> RunResult:
    """One run against a fresh raftlite cluster started from `directory`."""
    cluster = ProcessCluster(directory, settings.nodes)
    profiler = None
    try:
        try:
            cluster.start()
            leader_id = cluster.wait_leader()
        except ClusterError as error:
            raise BenchError(str(error)) from None
        leader_address = cluster.address(leader_id)
        report(f"  [{run_label}] cluster of {settings.nodes} up in {cluster.formed_in_s:.1f} s; leader node {leader_id} "
               f"at {leader_address}; {settings.workers} workers ({settings.client}) for {settings.duration_s} s")
        _create_schema(leader_address)
        pids = {node_id: node.pid for node_id, node in cluster.nodes.items()}
        roles = {("leader" if node_id == leader_id else f"follower {node_id}"): pid for node_id, pid in pids.items()}
        roles["client"] = os.getpid()
        recorder = _Recorder()
        progress = _Progress(run_label, settings, report)
        if settings.profile_dir is not None:
            margin = settings.duration_s * WINDOW_MARGIN_FRACTION
            targets = {role: pid for role, pid in roles.items() if role in ("leader", "client")}
            followers = [role for role in roles if role.startswith("follower")]
            if followers:
                targets[followers[0]] = roles[followers[0]]
            profiler = _Profiler(settings.profile_dir / f"{run_label}-w{settings.workers}", targets,
                                 settings.duration_s - 2 * margin)
        with _Monitor(roles, set(pids.values()), settings.duration_s) as monitor:
            if profiler is not None:
                threading.Timer(settings.duration_s * WINDOW_MARGIN_FRACTION, profiler.start).start()
            if settings.client == "asyncio":
                event_loop.run(_async_load(leader_address, settings, recorder, progress))
            else:
                _threaded_load(leader_address, settings, recorder, progress)
        result = RunResult(
            system="raftlite", workload=settings.workload, workers=settings.workers, nodes=settings.nodes,
            duration_s=float(settings.duration_s), ops=len(recorder.latencies_s), errors=dict(recorder.errors),
            latency_ms=_latency_figures(recorder.latencies_s), client=settings.client,
        )
        monitor.account(result, recorder.starts_ns)
        if profiler is not None:
            result.profile = profiler.finish()
        return result
    finally:
        if profiler is not None:
            profiler.kill()
        cluster.stop()


# -- dqlite (Debian's dqlite-benchmark) ----------------------------------------------------------


_DQLITE_MEASUREMENT = re.compile(r"^(\d+) (\d+\.\d+)$")


def parse_dqlite_results(results_dir: Path) -> tuple[list[int], list[float], Counter[str]]:
    """(start times ns, latencies s, errors by kind) of every worker's result files
    (`n`, `n_err`, then "measurements [timestamp in ns] [ms]" and "errors" sections)."""
    starts, latencies, errors = [], [], Counter()
    for path in sorted(results_dir.iterdir()):
        section = None
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("measurements"):
                section = "measurements"
                continue
            if line == "errors":
                section = "errors"
                continue
            if not line.strip() or section is None:
                continue
            if section == "measurements":
                match = _DQLITE_MEASUREMENT.match(line.strip())
                if match:
                    starts.append(int(match.group(1)))
                    latencies.append(float(match.group(2)) / 1000.0)
            else:
                _timestamp, _, message = line.partition(" ")
                errors[_error_kind(message)] += 1
    return starts, latencies, errors


def _terminate(processes: Sequence[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + PROCESS_STOP_GRACE_S
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_dqlite(settings: BenchSettings, directory: Path, report: Report, *, run_label: str = "dqlite") -> RunResult:
    """One run of `dqlite-benchmark` with the same parameters: node 1 is the driver (it
    bootstraps, leads and runs the workers), the others join it."""
    executable = shutil.which(DQLITE_BENCHMARK)
    if executable is None:
        raise BenchError(f"`{DQLITE_BENCHMARK}` not found (Debian: apt-get install go-dqlite)")
    directory.mkdir(parents=True, exist_ok=True)
    addresses = [f"127.0.0.1:{port}" for port in free_ports(settings.nodes)]
    processes: list[subprocess.Popen] = []
    logs = [directory / f"dqlite{index}.log" for index in range(1, settings.nodes + 1)]

    def launch(index: int, extra: list[str]) -> subprocess.Popen:
        with open(logs[index], "wb") as log:
            process = subprocess.Popen(
                [executable, "--db", addresses[index], "-D", str(directory / f"dir{index + 1}"), *extra],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        processes.append(process)
        return process

    try:
        driver = launch(0, ["--driver", "--cluster", ",".join(addresses), "--duration", str(settings.duration_s),
                            "--workers", str(settings.workers), "--workload", settings.workload,
                            "--key-size", str(settings.key_size), "--value-size", str(settings.value_size)])
        for index in range(1, settings.nodes):
            launch(index, ["--join", addresses[0]])
        roles = {"leader+client": driver.pid}
        roles.update({f"follower {index + 1}": process.pid for index, process in enumerate(processes[1:], start=1)})
        # The driver starts its workers as soon as it sees every node in the cluster,
        # which may be before the joiners say they are ready: sample from the start.
        with _Monitor(roles, {process.pid for process in processes}, settings.duration_s) as monitor:
            started = time.monotonic()
            while not all("ready" in logs[index].read_text(errors="replace") for index in range(1, settings.nodes)):
                if any(process.poll() is not None for process in processes):
                    raise BenchError(f"a dqlite-benchmark process exited during start-up; logs in {directory}")
                if time.monotonic() - started > DQLITE_READY_TIMEOUT_S:
                    raise BenchError(f"the dqlite cluster did not form within {DQLITE_READY_TIMEOUT_S:.0f} s; "
                                     f"logs in {directory}")
                time.sleep(0.05)
            report(f"  [{run_label}] cluster of {settings.nodes} up in {time.monotonic() - started:.1f} s; "
                   f"driver (leader + {settings.workers} workers) at {addresses[0]} for {settings.duration_s} s")
            progress = _Progress(run_label, settings, report)
            deadline = time.monotonic() + settings.duration_s + DQLITE_EXIT_GRACE_S
            while driver.poll() is None:
                if time.monotonic() > deadline:
                    raise BenchError(f"dqlite-benchmark did not finish in time; logs in {directory}")
                try:
                    driver.wait(timeout=progress.every_s)
                except subprocess.TimeoutExpired:
                    progress.report(f"  [{run_label}] {time.monotonic() - progress.started:5.1f} s: running "
                                    f"(dqlite-benchmark reports at the end)")
        monitor.samples = [sample for sample in monitor.samples if sample.cpu_s.get("leader+client") is not None]
        if driver.returncode != 0:
            raise BenchError(f"dqlite-benchmark failed (exit {driver.returncode}); see {logs[0]}")
        results_dir = directory / "dir1" / addresses[0] / "results"
        if not results_dir.is_dir():
            raise BenchError(f"dqlite-benchmark wrote no results under {results_dir}")
        starts, latencies, errors = parse_dqlite_results(results_dir)
        result = RunResult(
            system="dqlite", workload=settings.workload, workers=settings.workers, nodes=settings.nodes,
            duration_s=float(settings.duration_s), ops=len(latencies), errors=dict(errors),
            latency_ms=_latency_figures(latencies), client="go-dqlite (in the driver)",
        )
        monitor.account(result, starts)
        return result
    finally:
        _terminate(processes)


# -- runs, summaries, comparison ----------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Summary:
    """Medians over the runs of one system."""

    system: str
    runs: int
    ops_per_s: float
    errors_per_s: float
    latency_ms: dict[str, float]
    cpu_us_per_op: dict[str, float]
    peer_bytes_per_op: float | None
    disk_bytes_per_op: dict[str, float]
    errors: dict[str, int]
    machine_cpu_us_per_op: float | None = None

    @property
    def cpu_us_per_op_total(self) -> float | None:
        return sum(self.cpu_us_per_op.values()) if self.cpu_us_per_op else None


def _median_of(dicts: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = [key for key in dicts[0]] if dicts else []
    return {key: statistics.median(d[key] for d in dicts if key in d) for key in keys if any(key in d for d in dicts)}


def summarize(results: Sequence[RunResult]) -> Summary:
    errors: Counter[str] = Counter()
    for result in results:
        errors.update(result.errors)
    peers = [result.peer_bytes_per_op for result in results if result.peer_bytes_per_op is not None]
    machine = [result.machine_cpu_us_per_op for result in results if result.machine_cpu_us_per_op is not None]
    return Summary(
        system=results[0].system, runs=len(results),
        ops_per_s=statistics.median(result.ops_per_s for result in results),
        errors_per_s=statistics.median(result.errors_per_s for result in results),
        latency_ms=_median_of([result.latency_ms for result in results if result.latency_ms]),
        cpu_us_per_op=_median_of([result.cpu_us_per_op for result in results if result.cpu_us_per_op]),
        peer_bytes_per_op=statistics.median(peers) if peers else None,
        disk_bytes_per_op=_median_of([result.disk_bytes_per_op for result in results if result.disk_bytes_per_op]),
        errors=dict(errors),
        machine_cpu_us_per_op=statistics.median(machine) if machine else None,
    )


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render_run(result: RunResult) -> str:
    figures = result.latency_ms
    lines = [
        f"{result.system}: {result.workload}, {result.nodes} nodes, {result.workers} workers, {result.duration_s:.0f} s",
        f"  throughput   {result.ops_per_s:,.1f} ops/s ({result.ops:,} ops)",
        "  latency ms   " + ("  ".join(f"{name} {figures[name]:.2f}" for name in ("p50", "p90", "p99", "max"))
                             if figures else "no successful operation"),
    ]
    if result.errors:
        kinds = ", ".join(f"{kind}: {count:,}" for kind, count in sorted(result.errors.items(), key=lambda kv: -kv[1]))
        lines.append(f"  errors       {result.error_count:,} ({result.errors_per_s:,.1f}/s): {kinds}")
    else:
        lines.append("  errors       0")
    if result.cpu_us_per_op:
        lines.append("  cpu µs/op    " + "  ".join(f"{role} {value:,.0f}" for role, value in result.cpu_us_per_op.items())
                     + f"  total {result.cpu_us_per_op_total:,.0f}"
                     + f"   (window {result.window_s:.1f} s, {result.window_ops:,} ops)")
    if result.machine_cpu_us_per_op is not None:
        lines.append(f"  machine cpu  {result.machine_cpu_us_per_op:,.0f} µs/op (every process and kernel worker "
                     f"on the machine, {os.cpu_count()} CPUs)")
    if result.peer_bytes_per_op is not None:
        lines.append(f"  peer bytes/op {result.peer_bytes_per_op:,.0f}")
    if result.disk_bytes_per_op:
        lines.append("  disk bytes/op " + "  ".join(f"{role} {value:,.0f}" for role, value in result.disk_bytes_per_op.items()))
    for role, profile in result.profile.items():
        lines.append(f"  profile of the {role} (py-spy, {profile.samples} samples, busy {profile.busy_percent:.0f}%; "
                     f"% of busy samples)")
        lines.append("    by self time:")
        lines.extend(f"      {percent:5.1f}%  {name}" for name, percent in profile.by_self)
        lines.append("    by total time (raftlite's functions):")
        lines.extend(f"      {percent:5.1f}%  {name}" for name, percent in profile.by_total)
    return "\n".join(lines)


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def _role_total(values: dict[str, float], prefix: str) -> float | None:
    chosen = [value for role, value in values.items() if role.startswith(prefix)]
    return sum(chosen) if chosen else None


def render_comparison(raftlite: Summary, dqlite: Summary | None) -> str:
    """A table of medians, raftlite beside dqlite with raftlite/dqlite ratios."""
    rows: list[tuple[str, float | None, float | None, int]] = [
        ("ops/s", raftlite.ops_per_s, dqlite and dqlite.ops_per_s, 1),
        ("errors/s", raftlite.errors_per_s, dqlite and dqlite.errors_per_s, 1),
    ]
    for name in ("p50", "p90", "p99", "max"):
        rows.append((f"latency {name} ms", raftlite.latency_ms.get(name), dqlite and dqlite.latency_ms.get(name), 2))
    rows.append(("cpu µs/op, all", raftlite.cpu_us_per_op_total, dqlite and dqlite.cpu_us_per_op_total, 0))
    rows.append(("cpu µs/op, followers", _role_total(raftlite.cpu_us_per_op, "follower"),
                 dqlite and _role_total(dqlite.cpu_us_per_op, "follower"), 0))
    rows.append(("cpu µs/op, machine", raftlite.machine_cpu_us_per_op, dqlite and dqlite.machine_cpu_us_per_op, 0))
    rows.append(("peer bytes/op", raftlite.peer_bytes_per_op, dqlite and dqlite.peer_bytes_per_op, 0))
    rows.append(("disk bytes/op, all", sum(raftlite.disk_bytes_per_op.values()) or None,
                 dqlite and (sum(dqlite.disk_bytes_per_op.values()) or None), 0))
    width = max(len(row[0]) for row in rows)
    header = f"  {'median of ' + str(raftlite.runs) + ' run(s)':<{width}}  {'raftlite':>12}"
    if dqlite is not None:
        header += f"  {'dqlite':>12}  {'ratio':>7}"
    lines = [header]
    for name, ours, theirs, digits in rows:
        line = f"  {name:<{width}}  {_fmt(ours, digits):>12}"
        if dqlite is not None:
            line += f"  {_fmt(theirs, digits):>12}  {_ratio(ours, theirs):>7}"
        lines.append(line)
    return "\n".join(lines)


def compare(settings: BenchSettings, report: Report = print) -> tuple[list[RunResult], list[RunResult]]:
    """`settings.runs` runs of raftlite (and of dqlite with `vs_dqlite`), alternating;
    every run in a fresh scratch directory, removed afterwards unless `keep`."""
    ours: list[RunResult] = []
    theirs: list[RunResult] = []
    for run in range(1, settings.runs + 1):
        systems = [("raftlite", run_raftlite, ours)]
        if settings.vs_dqlite:
            systems.append(("dqlite", run_dqlite, theirs))
        for name, runner, into in systems:
            directory = Path(tempfile.mkdtemp(prefix=f"raftlite-bench-{name}-"))
            label = name if settings.runs == 1 else f"{name} {run}/{settings.runs}"
            failed = True
            try:
                result = runner(settings, directory, report, run_label=label)
                failed = False
            finally:
                if settings.keep or failed:
                    report(f"  [{label}] files kept in {directory}")
                else:
                    shutil.rmtree(directory, ignore_errors=True)
            into.append(result)
            report(render_run(result))
    return ours, theirs


# -- the command ---------------------------------------------------------------------------------


def register(commands) -> None:
    bench = commands.add_parser("bench", help="a local cluster under a key/value load (optionally beside dqlite)")
    bench.add_argument("--workload", choices=WORKLOADS, default="kvwrite")
    bench.add_argument("--workers", type=positive_int, default=1, help="concurrent clients (default 1)")
    bench.add_argument("--duration", type=positive_int, default=10, help="seconds of load per run (default 10)")
    bench.add_argument("--nodes", type=positive_int, default=3)
    bench.add_argument("--key-size", type=positive_int, default=32, help="bytes (default 32)")
    bench.add_argument("--value-size", type=positive_int, default=1024, help="bytes (default 1024)")
    bench.add_argument("--runs", type=positive_int, default=1, help="runs per system, alternating (default 1)")
    bench.add_argument("--vs-dqlite", action="store_true", help="also run Debian's dqlite-benchmark; print ratios")
    bench.add_argument("--client", choices=CLIENTS, default="asyncio",
                       help="how the raftlite workers run in this process (default asyncio)")
    bench.add_argument("--profile", metavar="DIR", help="py-spy the leader, a follower and the client into DIR")
    bench.add_argument("--json", metavar="FILE", help="also write every run and the summaries as JSON to FILE")
    bench.add_argument("--keep", action="store_true", help="keep the clusters' files and logs")
    bench.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = BenchSettings(
            workload=args.workload, workers=args.workers, duration_s=args.duration, nodes=args.nodes,
            key_size=args.key_size, value_size=args.value_size, runs=args.runs, vs_dqlite=args.vs_dqlite,
            client=args.client, profile_dir=Path(args.profile) if args.profile else None, keep=args.keep,
        ).validate()
        if args.json:
            try:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).touch()
            except OSError as error:
                raise BenchError(f"cannot write {args.json}: {error.strerror or error}") from None
        print(f"raftlite bench: {settings.workload}, {settings.nodes} nodes, {settings.workers} workers, "
              f"{settings.duration_s} s x {settings.runs} run(s)" + (", beside dqlite" if settings.vs_dqlite else ""),
              flush=True)
        ours, theirs = compare(settings, report=lambda line: print(line, flush=True))
    except BenchError as error:
        print(f"raftlite bench: {error}", file=sys.stderr)
        return 2
    summary = summarize(ours)
    other = summarize(theirs) if theirs else None
    print()
    print(render_comparison(summary, other))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "settings": {key: (str(value) if isinstance(value, Path) else value)
                         for key, value in asdict(settings).items()},
            "raftlite": [result.to_json() for result in ours],
            "dqlite": [result.to_json() for result in theirs],
        }, indent=2))
    return 0
