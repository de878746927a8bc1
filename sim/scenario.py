"""Scenario scripts: small text programs with golden output (etcd-io/raft's testdata style).

A script is a sequence of blocks. Each block is one command line, a `----` line, and
the command's expected output, ended by a blank line. Lines starting with `#` are
comments. `run_script` executes every command and returns the script with the actual
outputs filled in; a test compares that with the file, and RAFTLITE_REWRITE=1
regenerates the files for review.

Commands (node ids are integers, times are simulated milliseconds):

    nodes N [seed=S] [heartbeat-ms=H] [timeout-ms=T] [actor=heartbeat|raft] [extra=K]
          [snapshot-entries=E] [trailing-entries=T] [chunk-bytes=B] [append-entries=A]
                                create and start nodes
    run MS                      advance time; prints the faults and lifecycle events seen
    deliver [MS]                advance until no message is in flight (at most MS)
    status [FIELD ...]          each node's state and the chosen status fields
    partition A B | C D         symmetric cut between two groups
    one-way A B -> C D          messages from the left group to the right are lost
    isolate N | halves | majorities-ring | bridge     Jepsen's shapes (random ones seeded)
    heal
    network loss=P duplicate=P reorder=P latency-ms=X jitter-ms=X bandwidth=BYTES_PER_MS queue=BYTES
    clog N MS | crash N [keep|lose|tear|garbage] | restart N | pause N | resume N
    skew N MS | drift N RATE
    disk-eio N COUNT | disk-full N | disk-space N [BYTES] | corrupt N [FILE OFFSET BIT]
    files N                     the node's durable files: size and checksummed records
    trace [KIND ...]            trace events since the previous `trace` (filtered by kind)
    request N status            a client StatusRequest to node N and its reply

Raft actor (`nodes N actor=raft [extra=K]`: K more nodes that are not founding members):

    propose N TEXT [wait=MS]    a client proposal to node N; prints replies within MS (200)
    read N [wait=MS]            a linearizable read through node N
    transfer N TARGET           ask leader N to hand leadership to TARGET
    member N NODE ROLE          ask leader N to make NODE a voter/standby/spare, or remove it
    campaign N [force]          node N starts an election now (force: no pre-vote, no lease)
    replies                     replies that arrived since they were last printed
    log N                       node N's log as index:term:kind (kind n/c/- for normal/config/noop)
"""

import json
from typing import Callable

from raftlite.actors.config import Config
from raftlite.actors.heartbeat import StatusRequest
from raftlite.actors.raft_node import ChangeMembership, Propose, Read, TransferLeadership
from raftlite.core.raft_types import Role
from raftlite.sim.durability_checker import DurabilityChecker
from raftlite.sim.raft_checkers import RaftChecker
from raftlite.core.records import scan_records
from raftlite.sim.network import bridge, halves, isolate, majorities_ring, one_way, symmetric_cut
from raftlite.sim.run import ACTORS
from raftlite.sim.simulation import Simulation
from raftlite.sim.trace import TIMELINE_EVENTS, Trace, format_timeline_line

__all__ = ["ScenarioError", "ScenarioRunner", "run_script"]

SEPARATOR = "----"


class ScenarioError(Exception):
    pass


def _ints(words: list[str]) -> list[int]:
    try:
        return [int(word) for word in words]
    except ValueError:
        raise ScenarioError(f"expected node ids, got {' '.join(words)!r}") from None


class ScenarioRunner:
    def __init__(self) -> None:
        self.sim: Simulation | None = None
        self.trace_seen = 0
        self.window_start = 0
        self.commands: dict[str, Callable[[list[str]], str]] = {
            "nodes": self._nodes, "run": self._run, "deliver": self._deliver, "status": self._status,
            "partition": self._partition, "one-way": self._one_way, "isolate": self._isolate,
            "halves": lambda words: self._shape(halves, "halves"),
            "majorities-ring": lambda words: self._shape(majorities_ring, "majorities-ring"),
            "bridge": lambda words: self._shape(bridge, "bridge"),
            "heal": self._heal,
            "network": self._network, "clog": self._clog, "crash": self._crash, "restart": self._restart,
            "pause": self._pause, "resume": self._resume, "skew": self._skew, "drift": self._drift,
            "disk-eio": self._disk_eio, "disk-full": self._disk_full, "disk-space": self._disk_space,
            "corrupt": self._corrupt, "files": self._files, "trace": self._trace, "request": self._request,
            "propose": self._propose, "read": self._read, "transfer": self._transfer, "member": self._member,
            "replies": self._replies, "log": self._log, "campaign": self._campaign,
        }
        self.clients: list = []

    def execute(self, line: str) -> str:
        words = line.split()
        name, arguments = words[0], words[1:]
        if name not in self.commands:
            raise ScenarioError(f"unknown command {name!r}")
        if name != "nodes" and self.sim is None:
            raise ScenarioError("the first command must be `nodes N`")
        if self.sim is not None:
            self.window_start = self.sim.trace.count
        return self.commands[name](arguments) or "ok"

    # -- helpers -------------------------------------------------------------------------

    def _events_since(self, start: int, kinds=TIMELINE_EVENTS) -> list[str]:
        return [
            format_timeline_line(json.loads(line))
            for line in self.sim.trace.lines[start:]
            if json.loads(line)["ev"] in kinds
        ]

    def _window(self) -> str:
        return "\n".join(self._events_since(self.window_start))

    def _node(self, words: list[str], index: int = 0) -> int:
        if len(words) <= index:
            raise ScenarioError("missing node id")
        node_id = _ints([words[index]])[0]
        if node_id not in self.sim.nodes:
            raise ScenarioError(f"no node {node_id}")
        return node_id

    # -- commands ------------------------------------------------------------------------

    def _nodes(self, words: list[str]) -> str:
        count = _ints(words[:1])[0]
        options = dict(word.split("=", 1) for word in words[1:])
        extra = int(options.get("extra", 0))
        config = Config(
            heartbeat_interval_ms=float(options.get("heartbeat-ms", 100)),
            election_timeout_ms=float(options.get("timeout-ms", 1000)),
            snapshot_threshold_entries=int(options.get("snapshot-entries", 1024)),
            snapshot_trailing_entries=int(options.get("trailing-entries", 128)),
            snapshot_chunk_bytes=int(options.get("chunk-bytes", 256 << 10)),
            append_entries_max=int(options.get("append-entries", 512)),
        )
        self.sim = Simulation(
            seed=int(options.get("seed", 1)), node_ids=range(1, count + extra + 1),
            actor_factory=ACTORS[options.get("actor", "heartbeat")](list(range(1, count + 1))), config=config,
            trace=Trace(keep=True),
        )
        if options.get("actor") == "raft":
            checker = RaftChecker(self.sim).attach()
            self.sim.actor_hooks.append(checker.instrument)
            DurabilityChecker(self.sim).attach()
        self.sim.start()
        return self._window()

    def _run(self, words: list[str]) -> str:
        self.sim.run_for(float(words[0]))
        return self._window()

    def _deliver(self, words: list[str]) -> str:
        quiet = self.sim.run_until_quiet(float(words[0]) if words else 60_000.0)
        return self._window() or ("ok" if quiet else "messages still in flight")

    def _status(self, words: list[str]) -> str:
        lines = []
        for node_id, status in self.sim.status().items():
            fields = words or [key for key in status if key not in ("state", "lives")]
            details = " ".join(f"{key}={status[key]}" for key in fields if key in status)
            lines.append(f"n{node_id} {status['state']} {details}".rstrip())
        return "\n".join(lines)

    def _partition(self, words: list[str]) -> str:
        text = " ".join(words)
        if "|" not in text:
            raise ScenarioError("partition needs two groups: `partition 1 | 2 3`")
        left, right = text.split("|", 1)
        self.sim.partition(symmetric_cut(_ints(left.split()), _ints(right.split())), f"{left.strip()} | {right.strip()}")
        return self._window()

    def _one_way(self, words: list[str]) -> str:
        text = " ".join(words)
        if "->" not in text:
            raise ScenarioError("one-way needs a direction: `one-way 1 -> 2 3`")
        left, right = text.split("->", 1)
        self.sim.partition(one_way(_ints(left.split()), _ints(right.split())), f"{left.strip()} -> {right.strip()}")
        return self._window()

    def _isolate(self, words: list[str]) -> str:
        node_id = self._node(words)
        self.sim.partition(isolate(node_id, self.sim.node_ids), f"isolate {node_id}")
        return self._window()

    def _shape(self, make_partition, label: str) -> str:
        self.sim.partition(make_partition(self.sim.node_ids, self.sim.rng), label)
        return self._window()

    def _heal(self, words: list[str]) -> str:
        self.sim.heal()
        return self._window()

    def _network(self, words: list[str]) -> str:
        names = {
            "loss": "loss_probability", "duplicate": "duplicate_probability", "reorder": "reorder_probability",
            "latency-ms": "latency_ms", "jitter-ms": "jitter_ms", "bandwidth": "bandwidth_bytes_per_ms",
            "queue": "queue_bytes_max",
        }
        changes = {}
        for word in words:
            key, _, value = word.partition("=")
            if key not in names:
                raise ScenarioError(f"unknown network setting {key!r}")
            changes[names[key]] = int(value) if key == "queue" else float(value)
        self.sim.adjust_network(**changes)
        return self._window()

    def _clog(self, words: list[str]) -> str:
        self.sim.clog(self._node(words), float(words[1]))
        return self._window()

    def _crash(self, words: list[str]) -> str:
        self.sim.crash(self._node(words), words[1] if len(words) > 1 else None)
        return self._window()

    def _restart(self, words: list[str]) -> str:
        self.sim.restart(self._node(words))
        return self._window()

    def _pause(self, words: list[str]) -> str:
        self.sim.pause(self._node(words))
        return self._window()

    def _resume(self, words: list[str]) -> str:
        self.sim.resume(self._node(words))
        return self._window()

    def _skew(self, words: list[str]) -> str:
        self.sim.skew_clock(self._node(words), float(words[1]))
        return self._window()

    def _drift(self, words: list[str]) -> str:
        self.sim.drift_clock(self._node(words), float(words[1]))
        return self._window()

    def _disk_eio(self, words: list[str]) -> str:
        self.sim.disk_errors(self._node(words), int(words[1]) if len(words) > 1 else 1)
        return self._window()

    def _disk_full(self, words: list[str]) -> str:
        self.sim.fill_disk(self._node(words))
        return self._window()

    def _disk_space(self, words: list[str]) -> str:
        self.sim.disk_capacity(self._node(words), int(words[1]) if len(words) > 1 else None)
        return self._window()

    def _corrupt(self, words: list[str]) -> str:
        node_id = self._node(words)
        if len(words) >= 4:
            disk = self.sim.nodes[node_id].disk
            name, offset, bit = words[1], int(words[2]), int(words[3])
            file = disk.files.get(name)
            if file is None or offset >= len(file.durable):
                raise ScenarioError(f"n{node_id} has no durable byte {offset} in {name!r}")
            file.durable[offset] ^= 1 << bit
            file.data[offset] ^= 1 << bit
            self.sim.trace.record(self.sim.now_ms, node_id, "corrupt", {"flipped": [name, offset, bit]})
        else:
            self.sim.corrupt(node_id)
        return self._window()

    def _files(self, words: list[str]) -> str:
        disk = self.sim.nodes[self._node(words)].disk
        lines = []
        for name in sorted(disk.files):
            file = disk.files[name]
            scan = scan_records(bytes(file.durable))
            lines.append(
                f"{name}: {len(file.data)} bytes ({len(file.durable)} durable, {len(file.pending)} unsynced writes), "
                f"{len(scan.records)} records, torn_tail={scan.torn_tail}, corrupt_offset={scan.corrupt_offset}"
            )
        return "\n".join(lines) or "no files"

    def _trace(self, words: list[str]) -> str:
        start, self.trace_seen = self.trace_seen, self.sim.trace.count
        kinds = set(words) if words else None
        lines = [
            format_timeline_line(event)
            for event in map(json.loads, self.sim.trace.lines[start:])
            if kinds is None or event["ev"] in kinds
        ]
        return "\n".join(lines) or "no events"

    def _request(self, words: list[str]) -> str:
        node_id = self._node(words)
        if words[1:] != ["status"]:
            raise ScenarioError("only `request N status` is known to this actor")
        client = self.sim.submit(node_id, StatusRequest())
        self.sim.run_for(5.0)
        replies = self.sim.replies.pop(client)
        return "\n".join(repr(reply) for reply in replies) or "no reply"


    # -- raft requests -------------------------------------------------------------------

    def _submit(self, node_id: int, request, words: list[str]) -> str:
        options = dict(word.split("=", 1) for word in words if "=" in word)
        client = self.sim.submit(node_id, request)
        self.clients.append((node_id, client))
        self.sim.run_for(float(options.get("wait", 200)))
        return self._replies([])

    def _propose(self, words: list[str]) -> str:
        text = " ".join(word for word in words[1:] if "=" not in word)
        return self._submit(self._node(words), Propose(data=text.encode()), words[1:])

    def _read(self, words: list[str]) -> str:
        return self._submit(self._node(words), Read(), words[1:])

    def _transfer(self, words: list[str]) -> str:
        return self._submit(self._node(words), TransferLeadership(target=self._node(words, 1)), words[2:])

    def _member(self, words: list[str]) -> str:
        roles = {"voter": Role.VOTER, "standby": Role.STANDBY, "spare": Role.SPARE, "remove": None}
        if len(words) < 3 or words[2] not in roles:
            raise ScenarioError("usage: member N NODE voter|standby|spare|remove")
        request = ChangeMembership(node=_ints([words[1]])[0], role=roles[words[2]])
        return self._submit(self._node(words), request, words[3:])

    def _campaign(self, words: list[str]) -> str:
        node = self.sim.nodes[self._node(words)]
        actor = node.actor
        if getattr(actor, "raft", None) is None:
            raise ScenarioError(f"node {node.node_id} runs no raft")
        force = words[1:] == ["force"]

        def campaign() -> None:
            actor.raft.campaign(force=force)
            actor._process()

        node.input_now(campaign)
        return self._window()

    def _replies(self, words: list[str]) -> str:
        lines, waiting = [], []
        for node_id, client in self.clients:
            answers = self.sim.replies.get(client, [])
            if answers:
                lines.extend(f"n{node_id}: {answer!r}" for answer in answers)
                answers.clear()
                continue
            waiting.append((node_id, client))
        self.clients = waiting
        if waiting:
            lines.append(f"{len(waiting)} pending")
        return "\n".join(self._events_since(self.window_start) + lines) or "no replies"

    def _log(self, words: list[str]) -> str:
        raft = getattr(self.sim.nodes[self._node(words)].actor, "raft", None)
        if raft is None:
            return "not running"
        kinds = {0: "n", 1: "-", 2: "c"}
        entries = [f"{e.index}:{e.term}:{kinds[int(e.kind)]}" for e in raft.entries]
        base = f"[base {raft.log_base_index}:{raft.log_base_term}] " if raft.log_base_index else ""
        return base + (" ".join(entries) or "empty")


def run_script(text: str) -> str:
    """Execute a scenario script; return it with every command's actual output."""
    runner = ScenarioRunner()
    output: list[str] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.strip() or line.startswith("#"):
            output.append(line)
            continue
        # Skip the old expected output: the separator and lines up to a blank line.
        if index < len(lines) and lines[index] == SEPARATOR:
            index += 1
            while index < len(lines) and lines[index].strip():
                index += 1
        try:
            result = runner.execute(line)
        except ScenarioError as error:
            result = f"error: {error}"
        output.extend([line, SEPARATOR, result])
        if index >= len(lines) or lines[index].strip():
            output.append("")
    return "\n".join(output).rstrip("\n") + "\n"
