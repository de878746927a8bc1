"""jepsen_like against real node processes: ``raftlite jepsen --runtime real``.

Theory of operation
-------------------
`run_jepsen_real` starts N `raftlite node` processes on 127.0.0.1 (node 1 bootstraps,
the others join it; each in its own process session, killed by PID at the end), runs
the same workloads as the simulator (raftlite.jepsen_like.workloads: the operation
*plans* are shared, only the driver differs) through real dqlite-protocol clients in
threads, with wall-clock time, and a nemesis that acts on the processes:

    partition          cut directed links: isolate a node, random halves, one-way,
                       bridge and majorities ring (5 nodes or more)
    leader-partition   isolate the node that currently leads
    kill               SIGKILL one node, a minority, a majority or all, restart later
    pause              SIGSTOP a node (often the leader), SIGCONT later
    corrupt            SIGKILL a node, damage its raft files at rest (flip bytes of
                       its metadata, truncate its metadata, or empty a closed segment),
                       start it: it must refuse to start (exit 1, naming the file);
                       then its files are put back as they were and it starts again

The node processes are raftlite.process_cluster's (`RealCluster` adds the proxies).
Partitions need no root: every node dials each peer through a `LinkProxy` of its own
(one per directed link src -> dst), told so by its `--dial-via` option (raftlite.io.node's
`dial_via`: the transport dials that address for that peer). A cut link black-holes: the proxy keeps
accepting and reading what src sends and drops it (src notices only by raft's timeouts,
as with a real partition); the healed link closes those black-holed connections so src
dials afresh. Clients reach every node directly, as Jepsen's control node does.

One fault at a time, as Jepsen's usual schedule does: wait a drawn interval, inject,
wait a drawn duration, undo. At the time limit the fault under way is undone (the final
heal), the operations under way finish or time out, the workload's final operations run
(retried until ok: a cluster that cannot serve them fails the liveness check), and every
node must converge: the same applied index, and the same rows in every table of a DUMP
taken from each node. A node process that exits when no nemesis meant it to, or a node
log that records a halt or an invariant failure, is a problem that makes the run invalid.

Faults and client timing come from real clocks and the scheduler, so unlike the
simulator a seed fixes the nemesis' and the workload's choices, not the history.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..actors.database import Execute, Query
from ..client.connection import Connection, ConnectionBroken, RequestFailed
from ..core.raft_log_format import METADATA_FILES, segment_first_index, snapshot_index_of
from ..core.wire import WireProtocolError
from .history import Event, HistoryError, Keyword
from .run_result import RunResult
from .workloads import DATABASE, Workload, make_workload
from ..process_cluster import ClusterError, NotConverged, ProcessCluster, free_ports
from ..sim.nemesis import NemesisError, NemesisInterval, parse_kind_list
from ..sim.network import bridge, halves, isolate, majorities_ring, one_way
from ..sim.rng import derive_rng

__all__ = [
    "LinkProxy",
    "REAL_NEMESIS_CHOICES",
    "RealCluster",
    "parse_real_nemesis",
    "run_jepsen_real",
]

REAL_NEMESIS_CHOICES = ("partition", "leader-partition", "kill", "pause", "corrupt")
NOT_LEADER = 10250
LEADERSHIP_LOST = 10506
DISCOVERY_TIMEOUT_S = 1.0
START_TIMEOUT_S = 60.0
REFUSAL_TIMEOUT_S = 30.0      # a node started on damaged files must exit within this
CONVERGENCE_TIMEOUT_S = 60.0
MONITOR_INTERVAL_S = 0.1


class RealRunError(Exception):
    """The cluster could not be set up (the message says why)."""


def parse_real_nemesis(text: str) -> tuple[str, ...]:
    """'all', 'none', '' or a comma list of the real runtime's nemesis kinds."""
    return parse_kind_list(text, REAL_NEMESIS_CHOICES, "nemesis", NemesisError, where=" for --runtime real")


# --------------------------------------------------------------------------------------
# The fault-injecting proxy: one listener per directed link
# --------------------------------------------------------------------------------------

@dataclass(eq=False)
class _Proxied:
    """One connection src dialled through a link's proxy."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    black_holed: bool = False


@dataclass(eq=False)
class _Link:
    src: int
    dst: int
    target: tuple[str, int]
    server: asyncio.base_events.Server | None = None
    port: int = 0
    cut: bool = False
    connections: set = field(default_factory=set)


class LinkProxy:
    """A TCP proxy per directed link between nodes, on its own asyncio thread.

    `dial_via(src)` is what node src must dial for each peer (its `--dial-via`);
    `cut(pairs)` black-holes links (src, dst), `heal()` restores
    every link."""

    def __init__(self, addresses: dict[int, str]) -> None:
        self.addresses = dict(addresses)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="link-proxy", daemon=True)
        self.thread.start()
        self.links: dict[tuple[int, int], _Link] = {}
        self._call(self._open_all())

    def _call(self, coroutine, timeout_s: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    async def _open_all(self) -> None:
        for src in self.addresses:
            for dst, address in self.addresses.items():
                if src == dst:
                    continue
                host, port = address.rsplit(":", 1)
                link = _Link(src=src, dst=dst, target=(host, int(port)))
                link.server = await asyncio.start_server(lambda r, w, link=link: self._accept(link, r, w),
                                                         "127.0.0.1", 0)
                link.port = link.server.sockets[0].getsockname()[1]
                self.links[(src, dst)] = link

    def dial_via(self, src: int) -> dict[int, str]:
        return {dst: f"127.0.0.1:{link.port}" for (s, dst), link in self.links.items() if s == src}

    def blocked(self) -> frozenset[tuple[int, int]]:
        return frozenset(pair for pair, link in self.links.items() if link.cut)

    def cut(self, pairs: Iterable[tuple[int, int]]) -> None:
        self._call(self._cut(frozenset(pairs)))

    def heal(self) -> None:
        self._call(self._heal())

    def close(self) -> None:
        if not self.loop.is_running():
            return
        try:
            self._call(self._close_all())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()

    async def _accept(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Proxied(client=writer, black_holed=link.cut)
        link.connections.add(connection)
        try:
            if not connection.black_holed:
                try:
                    upstream_reader, connection.upstream = await asyncio.open_connection(*link.target)
                except OSError:
                    return   # dst is down: src sees the connection close, as it would
                backwards = asyncio.ensure_future(self._pump_back(connection, upstream_reader))
            else:
                backwards = None
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if connection.black_holed or connection.upstream is None:
                    continue   # cut: what src sends is lost
                connection.upstream.write(data)
                await connection.upstream.drain()
            if backwards is not None:
                backwards.cancel()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            link.connections.discard(connection)
            _close(connection.upstream)
            _close(writer)

    @staticmethod
    async def _pump_back(connection: _Proxied, upstream_reader: asyncio.StreamReader) -> None:
        try:
            while data := await upstream_reader.read(65536):
                if not connection.black_holed:
                    connection.client.write(data)
                    await connection.client.drain()
        except (OSError, asyncio.CancelledError):
            return
        if not connection.black_holed:
            _close(connection.client)   # dst went away: src notices, as it would directly

    async def _cut(self, pairs: frozenset[tuple[int, int]]) -> None:
        for pair in pairs:
            link = self.links[pair]
            link.cut = True
            for connection in list(link.connections):
                connection.black_holed = True
                _close(connection.upstream)   # dst sees the stream end; src keeps writing into nothing
                connection.upstream = None

    async def _heal(self) -> None:
        for link in self.links.values():
            if not link.cut:
                continue
            link.cut = False
            for connection in list(link.connections):
                if connection.black_holed:
                    _close(connection.client)   # src redials, through a healed link

    async def _close_all(self) -> None:
        for link in self.links.values():
            link.server.close()
            for connection in list(link.connections):
                _close(connection.client)
                _close(connection.upstream)


def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        try:
            writer.close()
        except (OSError, RuntimeError):
            pass


# --------------------------------------------------------------------------------------
# The cluster: node processes, each dialling its peers through the proxy
# --------------------------------------------------------------------------------------

class RealCluster(ProcessCluster):
    """N node processes on loopback (raftlite.process_cluster), each dialling its peers
    through a `LinkProxy`; `partition` and `heal` act on the proxy's links."""

    def __init__(self, directory: Path, nodes: int = 3, *, election_timeout_ms: float = 1000.0) -> None:
        if election_timeout_ms < 1000.0:
            raise ValueError("real runs use election timeouts of at least 1000 ms")
        addresses = {node_id: f"127.0.0.1:{port}" for node_id, port in zip(range(1, nodes + 1), free_ports(nodes))}
        self.proxy = LinkProxy(addresses)
        super().__init__(directory, addresses=addresses, election_timeout_ms=election_timeout_ms,
                         dial_via={node_id: self.proxy.dial_via(node_id) for node_id in addresses})

    def close(self) -> None:
        """SIGKILL every node process by PID (paused ones too), stop the proxies."""
        super().close()
        self.proxy.close()

    def partition(self, blocked: Iterable[tuple[int, int]]) -> None:
        self.proxy.cut(blocked)

    def heal(self) -> None:
        self.proxy.heal()


# --------------------------------------------------------------------------------------
# The history, with wall-clock time
# --------------------------------------------------------------------------------------

class RealHistoryRecorder:
    """Events in the order clients saw them (thread-safe), stamped with monotonic time
    since the workload started."""

    def __init__(self) -> None:
        self.origin_ns = time.monotonic_ns()
        self.events: list[Event] = []
        self.lock = threading.Lock()

    def now_ms(self) -> float:
        return (time.monotonic_ns() - self.origin_ns) / 1e6

    def record(self, kind: str, process: Any, f: str, value: Any, *, error: str | None = None) -> None:
        extra = ((Keyword("error"), error),) if error else ()
        with self.lock:
            self.events.append(Event(type=kind, f=Keyword(f), value=value, process=process, index=len(self.events),
                                     time=time.monotonic_ns() - self.origin_ns, extra=extra))

    def nemesis(self, kind: str, f: str, value: Any) -> None:
        with self.lock:
            self.events.append(Event(type="info", f=Keyword(f), value=value, process=Keyword("nemesis"),
                                     index=len(self.events), time=time.monotonic_ns() - self.origin_ns,
                                     extra=((Keyword("kind"), kind),)))


# --------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------

class _Session:
    """One worker's connection to the node it believes leads, with the database open."""

    def __init__(self, connection, db_id: int) -> None:
        self.connection = connection
        self.db_id = db_id

    def close(self) -> None:
        self.connection.close()


def _connect_leader(addresses: Sequence[str], rng: random.Random, timeout_s: float) -> _Session | None:
    """Ask the nodes (in a random order) who leads, and open the database there."""
    order = list(addresses)
    rng.shuffle(order)
    for address in order:
        try:
            with Connection.connect(address, timeout_s=DISCOVERY_TIMEOUT_S) as probe:
                leader = probe.leader()
            if leader is None or not leader.address:
                continue
            connection = Connection.connect(leader.address, timeout_s=timeout_s)
            try:
                return _Session(connection, connection.open(DATABASE))
            except BaseException:
                connection.close()
                raise
        except (ConnectionBroken, RequestFailed, OSError, WireProtocolError):
            continue
    return None


class _Outcome(Exception):
    def __init__(self, kind: str, error: str) -> None:
        super().__init__(error)
        self.kind = kind
        self.error = error


def run_plan(session: _Session, plan, deadline: float) -> tuple[str, Any]:
    """Run an operation plan (workloads.Plan) on one session; raises _Outcome for fail
    or info, as the simulator's driver judges answers."""
    answer = None
    try:
        while True:
            try:
                request = plan.send(answer)
            except StopIteration as finished:
                return finished.value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Outcome("info", "timed out")
            session.connection.timeout_s = remaining
            try:
                if isinstance(request, Execute):
                    answer = session.connection.exec_sql(session.db_id, request.sql, request.params)
                elif isinstance(request, Query):
                    answer = session.connection.query_sql(session.db_id, request.sql, request.params)
                else:
                    raise TypeError(f"a plan yielded {type(request).__name__}")
            except RequestFailed as error:
                kind = "info" if error.code == LEADERSHIP_LOST else "fail"
                raise _Outcome(kind, str(error)) from None   # RequestFailed says "(code N)" itself
            except (ConnectionBroken, OSError, WireProtocolError) as error:
                raise _Outcome("info", f"{type(error).__name__}: {error}") from None
    finally:
        plan.close()


class RealWorkloadDriver:
    """The workload's processes, one thread each, against the cluster's nodes."""

    def __init__(self, cluster: RealCluster, workload: Workload, recorder: RealHistoryRecorder, *, seed: int,
                 concurrency: int, rate_per_s: float, operation_timeout_ms: float) -> None:
        self.cluster = cluster
        self.workload = workload
        self.recorder = recorder
        self.seed = seed
        self.concurrency = concurrency
        self.rate_per_s = rate_per_s
        self.operation_timeout_s = operation_timeout_ms / 1000.0
        self.processes = list(range(concurrency))
        self.counts = {"invoke": 0, "ok": 0, "fail": 0, "info": 0}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for slot in range(self.concurrency):
            thread = threading.Thread(target=self._run, args=(slot,), name=f"jepsen-client-{slot}", daemon=True)
            self.threads.append(thread)
            thread.start()

    def stop(self, timeout_s: float) -> bool:
        """Stop generating; wait for the operations under way; True when all threads ended."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self.threads)

    def _run(self, slot: int) -> None:
        rng = derive_rng(self.seed, f"jepsen-real-client/{slot}")
        mean_s = self.concurrency / self.rate_per_s
        session: _Session | None = None
        try:
            self.stop_event.wait(rng.uniform(0.0, 2.0 * mean_s))
            while not self.stop_event.is_set():
                if session is None:
                    session = _connect_leader(self.cluster.addresses(), rng, self.operation_timeout_s)
                    if session is None:
                        self.stop_event.wait(0.05)   # nobody leads: ask again shortly
                        continue
                with self.lock:
                    f, value, plan = self.workload.next_operation()
                kind = self.run_operation(slot, f, value, plan, session)
                if kind != "ok":
                    session.close()
                    session = None
                self.stop_event.wait(rng.uniform(0.0, 2.0 * mean_s))
        finally:
            if session is not None:
                session.close()

    def run_operation(self, slot: int, f: str, value: Any, plan, session: _Session) -> str:
        """Invoke, run and complete one operation; returns its completion type. After
        anything but ok the caller drops the session (a transaction left open on the
        node is rolled back when its connection closes)."""
        process = self.processes[slot]
        self.recorder.record("invoke", process, f, value)
        deadline = time.monotonic() + self.operation_timeout_s
        error = None
        try:
            kind, result = run_plan(session, plan, deadline)
        except _Outcome as outcome:
            kind, result, error = outcome.kind, None, outcome.error
        self.recorder.record(kind, process, f, result if result is not None else value, error=error)
        with self.lock:
            self.counts["invoke"] += 1
            self.counts[kind] += 1
            if kind == "info":
                self.processes[slot] += self.concurrency   # the process is gone; a new one takes its place
        return kind

    def run_final_operations(self, limit_s: float) -> list[str]:
        """The workload's final operations, each retried until ok within `limit_s`."""
        problems = []
        rng = derive_rng(self.seed, "jepsen-real-final")
        for f, value, make_plan in self.workload.final_operations():
            deadline = time.monotonic() + limit_s
            attempts, kind = 0, None
            while time.monotonic() < deadline:
                session = _connect_leader(self.cluster.addresses(), rng, self.operation_timeout_s)
                if session is None:
                    time.sleep(0.25)
                    continue
                attempts += 1
                try:
                    kind = self.run_operation(0, f, value, make_plan(), session)
                finally:
                    session.close()
                if kind == "ok":
                    break
                time.sleep(0.25)
            if kind != "ok":
                problems.append(f"liveness: the final {f} did not succeed in {attempts} attempts "
                                f"within {limit_s:.0f} s of the heal")
        return problems


# --------------------------------------------------------------------------------------
# The nemesis
# --------------------------------------------------------------------------------------

class RealNemesis:
    """One fault at a time on the cluster's processes and links, from a seeded RNG, on
    its own thread; records intervals and announces them to the history."""

    def __init__(self, cluster: RealCluster, kinds: Sequence[str], recorder: RealHistoryRecorder, *, seed: int,
                 interval_ms: tuple[float, float], duration_ms: tuple[float, float]) -> None:
        self.cluster = cluster
        self.kinds = tuple(kinds)
        self.recorder = recorder
        self.rng = derive_rng(seed, "jepsen-real-nemesis")
        self.interval_ms = interval_ms
        self.duration_ms = duration_ms
        self.intervals: list[NemesisInterval] = []
        self.injected: dict[str, int] = {}
        self.problems: list[str] = []
        self.expected_refusals: dict[int, int] = {}   # node -> starts on damaged files it refused
        self.heal_ms: float | None = None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="jepsen-nemesis", daemon=True)

    def start(self) -> None:
        if self.kinds:
            self.thread.start()

    def stop_and_heal(self) -> None:
        """The final heal: undo the fault under way, and anything left."""
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(REFUSAL_TIMEOUT_S + 30.0)
        self.heal_ms = self.recorder.now_ms()
        self.recorder.nemesis("heal", "final-heal", "every fault undone")
        self.cluster.heal()
        for node in self.cluster.nodes.values():
            node.resume()
            if not node.alive and not node.unexpected_exit_reported:
                node.start()

    def _run(self) -> None:
        while not self.stop_event.wait(self.rng.uniform(*self.interval_ms) / 1000.0):
            kind = self.rng.choice(self.kinds)
            duration_s = self.rng.uniform(*self.duration_ms) / 1000.0
            self.injected[kind] = self.injected.get(kind, 0) + 1
            start = self.recorder.now_ms()
            try:
                description, undo = getattr(self, "_" + kind.replace("-", "_"))(duration_s)
            except Exception as error:   # the nemesis itself broke: say so, never hide it
                self.problems.append(f"nemesis {kind} failed: {type(error).__name__}: {error}")
                return
            self.recorder.nemesis(kind, f"start-{kind}", description)
            if undo is not None:
                self.stop_event.wait(duration_s)
                try:
                    undo()
                except Exception as error:
                    self.problems.append(f"nemesis {kind} could not undo: {type(error).__name__}: {error}")
                    return
            end = self.recorder.now_ms()
            self.intervals.append(NemesisInterval(kind=kind, start_ms=start, end_ms=end, description=description))
            self.recorder.nemesis(kind, f"stop-{kind}", description)

    def _leader_id(self) -> int | None:
        found = self.cluster.leader()
        return found[0] if found is not None else None

    def _partition(self, _duration_s: float):
        nodes, rng = sorted(self.cluster.nodes), self.rng
        shapes = ["isolate", "halves", "one-way"] + (["majorities-ring", "bridge"] if len(nodes) >= 5 else [])
        shape = rng.choice(shapes)
        if shape == "isolate":
            node = rng.choice(nodes)
            blocked, what = isolate(node, nodes), f"isolate n{node}"
        elif shape == "halves":
            blocked = halves(nodes, rng)
            what = "halves " + " | ".join(_sides(blocked, nodes))
        elif shape == "majorities-ring":
            blocked, what = majorities_ring(nodes, rng), "majorities ring"
        elif shape == "bridge":
            blocked = bridge(nodes, rng)
            what = "bridge " + " | ".join(_sides(blocked, nodes))
        else:
            node = rng.choice(nodes)
            others = [n for n in nodes if n != node]
            if rng.random() < 0.5:
                blocked, what = one_way([node], others), f"one-way: n{node} cannot send"
            else:
                blocked, what = one_way(others, [node]), f"one-way: n{node} cannot hear"
        self.cluster.partition(blocked)
        return f"partition {what} ({len(blocked)} directed links cut)", self.cluster.heal

    def _leader_partition(self, _duration_s: float):
        leader = self._leader_id()
        if leader is None:
            return "leader-partition: no leader to isolate", None
        self.cluster.partition(isolate(leader, sorted(self.cluster.nodes)))
        return f"isolate leader n{leader}", self.cluster.heal

    def _kill(self, _duration_s: float):
        candidates = [n for n, node in self.cluster.nodes.items() if node.alive]
        size = len(self.cluster.nodes)
        how_many = {"one": 1, "minority": max(1, (size - 1) // 2), "majority": size // 2 + 1, "all": size}
        target = self.rng.choice(("one", "one", "minority", "majority", "all"))
        leader = self._leader_id() if target == "one" and self.rng.random() < 0.5 else None
        victims = [leader] if leader in candidates else \
            sorted(self.rng.sample(candidates, min(len(candidates), how_many[target])))
        for node_id in victims:
            self.cluster.nodes[node_id].kill()

        def restart() -> None:
            for node_id in victims:
                self.cluster.nodes[node_id].start()

        label = "the leader" if leader in victims else target
        return f"kill -9 {label}: " + ", ".join(f"n{n}" for n in victims), restart

    def _pause(self, _duration_s: float):
        leader = self._leader_id()
        running = [n for n, node in self.cluster.nodes.items() if node.alive and not node.paused]
        node_id = leader if leader is not None and self.rng.random() < 0.5 else self.rng.choice(running)
        node = self.cluster.nodes[node_id]
        node.pause()
        return f"SIGSTOP n{node_id}" + (" (the leader)" if node_id == leader else ""), node.resume

    def _corrupt(self, _duration_s: float):
        node_id = self.rng.choice(sorted(self.cluster.nodes))
        node = self.cluster.nodes[node_id]
        node.kill()
        backup = node.data_dir.with_name(node.data_dir.name + ".before-corruption")
        shutil.rmtree(backup, ignore_errors=True)
        shutil.copytree(node.data_dir, backup)
        damage, named = damage_raft_files(node.data_dir, self.rng)
        node.start(expect_up=False)   # it must refuse to start
        try:
            status = node.process.wait(REFUSAL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            status = None
        if status != 1:
            self.problems.append(
                f"n{node_id} started on damaged storage ({damage}) and did not refuse "
                f"(exit status {status}, expected 1):\n{node.log_tail()}")
            node.kill()
        else:
            self.expected_refusals[node_id] = self.expected_refusals.get(node_id, 0) + 1
            if named not in node.log_tail(5):
                self.problems.append(f"n{node_id} refused damaged storage ({damage}) without naming the file:\n"
                                     f"{node.log_tail(5)}")

        def restore() -> None:
            shutil.rmtree(node.data_dir)
            shutil.copytree(backup, node.data_dir)
            shutil.rmtree(backup, ignore_errors=True)
            node.start()

        return f"n{node_id}: {damage}; refused to start (exit {status}); files restored", restore


def _sides(blocked: frozenset[tuple[int, int]], nodes: Sequence[int]) -> list[str]:
    """The groups of nodes that still talk to each other, for a description."""
    groups: list[set[int]] = []
    for node in nodes:
        for group in groups:
            if all((node, other) not in blocked and (other, node) not in blocked for other in group):
                group.add(node)
                break
        else:
            groups.append({node})
    return [" ".join(f"n{n}" for n in sorted(group)) for group in groups]


def damage_raft_files(data_dir: Path, rng: random.Random) -> tuple[str, str]:
    """Damage a stopped node's raft files so that, by docs/architecture.md §3, it must refuse to
    start: flip bytes in (or truncate) every metadata file holding data (one good copy
    would be enough to start), or empty a closed segment the snapshot does not cover.
    Returns (what was done, the file the refusal must name)."""
    names = os.listdir(data_dir)
    snapshot_index = max((index for name in names if (index := snapshot_index_of(name)) is not None), default=0)
    segments = sorted((first, name) for name in names if (first := segment_first_index(name)) is not None)
    # A closed segment is needed unless its successor starts within the snapshot.
    closed = [name for position, (first, name) in enumerate(segments[:-1])
              if segments[position + 1][0] > snapshot_index + 1]
    metadata = [name for name in METADATA_FILES
                if name in names and (data_dir / name).read_bytes().strip(b"\0")]
    choices = ["flip-metadata", "truncate-metadata"] + (["empty-segment"] if closed else [])
    how = rng.choice(choices) if metadata else "empty-segment"
    if how == "empty-segment":
        name = rng.choice(closed)
        os.truncate(data_dir / name, 0)
        return f"emptied {name}, a closed segment", name
    for name in metadata:
        path = data_dir / name
        data = bytearray(path.read_bytes())
        if how == "truncate-metadata":
            os.truncate(path, rng.randint(1, 12))
        else:
            position = rng.randrange(12, 24)   # inside the record: its checksum no longer matches
            data[position] ^= 0xFF
            path.write_bytes(bytes(data))
    verb = "truncated" if how == "truncate-metadata" else "flipped a byte in"
    return f"{verb} {' and '.join(metadata)} (every metadata copy)", metadata[0]


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------

class _Monitor:
    """Notices a node process that exits while nothing meant it to."""

    def __init__(self, cluster: RealCluster) -> None:
        self.cluster = cluster
        self.problems: list[str] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="jepsen-monitor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(5)
        self.check()

    def _run(self) -> None:
        while not self.stop_event.wait(MONITOR_INTERVAL_S):
            self.check()

    def check(self) -> None:
        for node in self.cluster.nodes.values():
            with node.lock:
                process = node.process
                if not node.expected_up or process is None or process.poll() is None:
                    continue
                node.unexpected_exit_reported = True
                node.expected_up = False
                self.problems.append(f"node {node.node_id} (PID {process.pid}) exited unexpectedly with status "
                                     f"{process.returncode}:\n{node.log_tail()}")


REFUSAL_LOG_LINE = ": halted: refusing to start: corrupt raft storage"


def _log_problems(cluster: RealCluster, expected_refusals: dict[int, int]) -> list[str]:
    """A halt or an invariant failure in a node's log, except the refusals to start on
    the files the corrupt nemesis damaged."""
    problems = []
    for node in cluster.nodes.values():
        refusals = expected_refusals.get(node.node_id, 0)
        for line in node.log_text().splitlines():
            if REFUSAL_LOG_LINE in line and refusals > 0:
                refusals -= 1
                continue
            if "InvariantViolation" in line or ": halted: " in line:
                problems.append(f"node {node.node_id} logged: {line.strip()[:300]}")
                break
    return problems


def _convergence_problems(cluster: RealCluster) -> tuple[list[str], dict[int, dict]]:
    try:
        commit = cluster.wait_converged(CONVERGENCE_TIMEOUT_S, nodes=sorted(cluster.nodes))
    except NotConverged as error:
        return [str(error)], {}
    dumps, problems = {}, []
    for node_id in sorted(cluster.nodes):
        try:
            dumps[node_id] = cluster.dump_tables(node_id, database=DATABASE)
        except Exception as error:
            problems.append(f"DUMP of node {node_id} failed: {type(error).__name__}: {error}")
    first = next(iter(dumps.items()), None)
    for node_id, tables in dumps.items():
        if tables != first[1]:
            counts = {table: len(rows) for table, rows in tables.items()}
            problems.append(f"node {node_id}'s DUMP differs from node {first[0]}'s (rows per table {counts} vs "
                            f"{ {table: len(rows) for table, rows in first[1].items()} })")
    return problems, {node_id: {"applied_index": commit, "rows": {table: len(rows) for table, rows in tables.items()}}
                      for node_id, tables in dumps.items()}


def run_jepsen_real(options, directory: str | os.PathLike, *, election_timeout_ms: float = 1000.0,
                    progress: Callable[[str], None] | None = None):
    """One run against real node processes in `directory` (node data and logs stay there
    as evidence); returns a RunResult (jepsen_like/run_result.py) with ``runtime == "real"``."""
    unknown = [kind for kind in options.nemesis if kind not in REAL_NEMESIS_CHOICES]
    if unknown:
        raise ValueError(f"unknown nemesis {', '.join(unknown)} for the real runtime")
    replace(options, nemesis=()).validate()
    started = time.perf_counter()
    say = progress or (lambda _line: None)
    problems: list[str] = []
    cluster = RealCluster(Path(directory), options.nodes, election_timeout_ms=election_timeout_ms)
    workload = make_workload(options.workload, options.seed)
    recorder = RealHistoryRecorder()
    nemesis = RealNemesis(cluster, options.nemesis, recorder, seed=options.seed,
                          interval_ms=options.nemesis_interval_ms, duration_ms=options.nemesis_duration_ms)
    driver = RealWorkloadDriver(cluster, workload, recorder, seed=options.seed, concurrency=options.concurrency,
                                rate_per_s=options.rate_per_s, operation_timeout_ms=options.operation_timeout_ms)
    monitor = _Monitor(cluster)
    status: dict[int, dict] = {}
    try:
        say(f"  starting {options.nodes} node processes in {directory} ...")
        cluster.start(max(START_TIMEOUT_S, options.setup_timeout_s))
        monitor.start()
        _create_schema(cluster, workload, options)
        recorder.origin_ns = time.monotonic_ns()
        say("  cluster up, schema created; running the workload")
        driver.start()
        nemesis.start()
        end = time.monotonic() + options.time_limit_s
        while time.monotonic() < end:
            time.sleep(min(max(1.0, options.time_limit_s / 10), max(0.0, end - time.monotonic())))
            counts = driver.counts
            say(f"  {recorder.now_ms() / 1000:6.1f}/{options.time_limit_s:g} s  ops {counts['invoke']:5d} "
                f"(ok {counts['ok']}, fail {counts['fail']}, info {counts['info']})")
        nemesis.stop_and_heal()
        if not driver.stop(options.operation_timeout_ms / 1000.0 + 10.0):
            problems.append("client threads did not stop after the heal")
        problems.extend(driver.run_final_operations(20.0 * 2 * election_timeout_ms / 1000.0))
        time.sleep(options.quiet_period_s)
        convergence, status = _convergence_problems(cluster)
        problems.extend(convergence)
    except (RealRunError, ClusterError) as error:
        problems.append(f"setup: {error}")
    finally:
        nemesis.stop_event.set()
        driver.stop_event.set()
        monitor.stop()
        problems[:0] = monitor.problems + nemesis.problems
        problems.extend(_log_problems(cluster, nemesis.expected_refusals))
        cluster.close()
    events = list(recorder.events)
    verdict = None
    try:
        verdict = workload.check(events, time_limit_s=options.checker_time_limit_s)
    except HistoryError as error:
        problems.append(f"the history could not be checked: {error}")
    elapsed_ms = recorder.now_ms()
    return RunResult(options=options, events=events, verdict=verdict, problems=problems,
                     intervals=list(nemesis.intervals), heal_ms=nemesis.heal_ms, simulated_ms=elapsed_ms,
                     wall_seconds=time.perf_counter() - started, faults=dict(nemesis.injected),
                     status=status, origin_ms=0.0, runtime="real")


def _create_schema(cluster: RealCluster, workload: Workload, options) -> None:
    """The schema exists before any fault; retried while the leader settles."""
    rng = derive_rng(options.seed, "jepsen-real-setup")
    deadline = time.monotonic() + options.setup_timeout_s
    last_error = "no leader"
    for statement in workload.schema:
        while True:
            if time.monotonic() > deadline:
                raise RealRunError(f"could not create the schema: {last_error}")
            session = _connect_leader(cluster.addresses(), rng, 10.0)
            if session is None:
                time.sleep(0.1)
                continue
            try:
                session.connection.exec_sql(session.db_id, statement)   # idempotent statements
                break
            except (RequestFailed, ConnectionBroken, OSError, WireProtocolError) as error:
                last_error = str(error)
                time.sleep(0.1)
            finally:
                session.close()
