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

Whole runs, as `raftlite sim run` makes them (what `raftlite sim shrink` prints):

    nodes N actor=raft seed=S config=swarm [unsafe=SWITCH,...] [checkers=all|end-to-end]
                                the seed's swarm config; unsafe switches of core/raft.py
    load interval-ms=MS until-ms=MS         the run's client load (proposals to random nodes)
    fault TIME-MS KIND key=value ...        schedule one fault event (see below), in time order
    heal-at MS                  start the schedule; at MS every fault is undone
    finish [quiet-ms=MS]        after the heal: a write must commit, then the checks of
                                convergence (as at the end of `sim run`)

Fault events (`raftlite.sim.nemesis.EVENT_PARAMETERS`), every parameter explicit:

    partition shape=W blocked=1>2,2>1,... duration-ms=MS | clog node=N duration-ms=MS
    noise loss=P duplicate=P reorder=P duration-ms=MS | crash node=N mode=M restart-ms=MS
    pause node=N duration-ms=MS | skew node=N ms=MS | drift node=N rate=R duration-ms=MS
    disk-eio node=N count=C | disk-full node=N duration-ms=MS | corrupt node=N
    slow-persist node=N extra-ms=MS duration-ms=MS ordinal=K       (fault points: fire at
    crash-after-send node=N mode=M restart-ms=MS ordinal=K          the node's first chance
    crash-before-sync node=N mode=M restart-ms=MS ordinal=K         at or after the time)
    metadata-eio node=N ordinal=K

A safety violation stops the run: the command that hit it prints `SAFETY VIOLATION` and
the checker's name, and every later command is skipped.
"""

import json
from typing import Callable

from ..actors.config import Config
from ..actors.heartbeat import StatusRequest
from ..actors.raft_node import ChangeMembership, Propose, Read, TransferLeadership
from ..core.raft_types import Role
from ..core.records import scan_records
from .fault_points import FaultPoints
from .nemesis import FaultEvent, Nemesis
from .network import bridge, halves, isolate, majorities_ring, one_way, symmetric_cut
from .run import (
    ACTORS, CHECKER_SETS, UnsafeSwitchError, attach_checkers, build_simulation, finish_run, parse_unsafe, run_config,
    start_load, violation_checker,
)
from .simulation import Simulation, SimulationFailure
from .trace import TIMELINE_EVENTS, Trace, format_timeline_line

__all__ = ["ScenarioError", "ScenarioRunner", "execute_script", "run_script"]

SEPARATOR = "----"


class ScenarioError(Exception):
    pass


def _options(words: list[str]) -> dict[str, str]:
    options = {}
    for word in words:
        key, equals, value = word.partition("=")
        if not equals:
            raise ScenarioError(f"expected key=value, got {word!r}")
        options[key] = value
    return options


def _ints(words: list[str]) -> list[int]:
    try:
        return [int(word) for word in words]
    except ValueError:
        raise ScenarioError(f"expected node ids, got {' '.join(words)!r}") from None


class ScenarioRunner:
    def __init__(self) -> None:
        self.sim: Simulation | None = None
        self.actor = "heartbeat"
        self.checker = None
        self.load = None
        self.scheduled: list[FaultEvent] = []
        self.nemesis: Nemesis | None = None
        self.violation: str | None = None   # a safety violation stops the run
        self.problems: list[str] = []       # what `finish` found wrong (liveness, convergence)
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
            "load": self._load, "fault": self._fault, "heal-at": self._heal_at, "finish": self._finish,
        }
        self.clients: list = []

    def execute(self, line: str) -> str:
        words = line.split()
        name, arguments = words[0], words[1:]
        if name not in self.commands:
            raise ScenarioError(f"unknown command {name!r}")
        if name != "nodes" and self.sim is None:
            raise ScenarioError("the first command must be `nodes N`")
        if self.violation is not None:
            return "skipped: the run stopped at the safety violation above"
        if self.sim is not None:
            self.window_start = self.sim.trace.count
        try:
            return self.commands[name](arguments) or "ok"
        except SimulationFailure as failure:
            self.violation = str(failure)
            lines = self._events_since(self.window_start)
            lines.append(f"SAFETY VIOLATION ({violation_checker(self.violation)}): {self.violation}")
            return "\n".join(lines)
        except (ValueError, IndexError) as error:
            raise ScenarioError(f"bad arguments for {name}: {error}") from None

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
        if self.sim is not None:
            raise ScenarioError("`nodes` comes once, first")
        count = _ints(words[:1])[0]
        options = _options(words[1:])
        known = {"seed", "actor", "extra", "heartbeat-ms", "timeout-ms", "snapshot-entries", "trailing-entries",
                 "chunk-bytes", "append-entries", "config", "unsafe", "checkers"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ScenarioError(f"unknown nodes option {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
        extra = int(options.get("extra", 0))
        seed = int(options.get("seed", 1))
        self.actor = options.get("actor", "heartbeat")
        if self.actor not in ACTORS:
            raise ScenarioError(f"unknown actor {self.actor!r}; choose from {', '.join(sorted(ACTORS))}")
        if options.get("config", "script") == "swarm":
            # The seed's swarm settings, exactly as `raftlite sim run` gives them.
            config = run_config(seed, self.actor)
        elif options.get("config", "script") == "script":
            config = Config(
                heartbeat_interval_ms=float(options.get("heartbeat-ms", 100)),
                election_timeout_ms=float(options.get("timeout-ms", 1000)),
                snapshot_threshold_entries=int(options.get("snapshot-entries", 1024)),
                snapshot_trailing_entries=int(options.get("trailing-entries", 128)),
                snapshot_chunk_bytes=int(options.get("chunk-bytes", 256 << 10)),
                append_entries_max=int(options.get("append-entries", 512)),
            )
        else:
            raise ScenarioError("config is swarm (the seed's, as `sim run` draws it) or script (the options given)")
        try:
            unsafe = parse_unsafe([options.get("unsafe", "")])
        except UnsafeSwitchError as error:
            raise ScenarioError(str(error)) from None
        checkers = options.get("checkers", "all")
        if checkers not in CHECKER_SETS:
            raise ScenarioError(f"checkers is one of {', '.join(CHECKER_SETS)}")
        self.sim = build_simulation(seed=seed, nodes=count, extra_nodes=extra, actor=self.actor, config=config,
                                    unsafe=unsafe, trace=Trace(keep=True))
        self.checker = attach_checkers(self.sim, self.actor, checkers)
        self.sim.start()
        return self._window()

    # -- whole runs: a client load, a fault schedule, the final heal and the judgement ----

    def _load(self, words: list[str]) -> str:
        options = _options(words)
        if self.load is not None:
            raise ScenarioError("a script has one load")
        if set(options) - {"interval-ms", "until-ms"} or "until-ms" not in options:
            raise ScenarioError("usage: load interval-ms=MS until-ms=MS")
        self.load = start_load(self.sim, self.actor, float(options.get("interval-ms", 20)), float(options["until-ms"]))
        if self.load is None:
            raise ScenarioError(f"the {self.actor} actor has no client load")
        return "ok"

    def _fault(self, words: list[str]) -> str:
        if self.nemesis is not None:
            raise ScenarioError("faults are scheduled before `heal-at`")
        try:
            event = FaultEvent.parse(words)
        except ValueError as error:
            raise ScenarioError(str(error)) from None
        if event.time_ms < self.sim.now_ms:
            raise ScenarioError(f"fault at {event.time_ms!r} ms is in the past (now {self.sim.now_ms!r} ms)")
        if event.node is not None and event.node not in self.sim.nodes:
            raise ScenarioError(f"no node {event.node}")
        if self.scheduled and event.time_ms < self.scheduled[-1].time_ms:
            raise ScenarioError("faults are listed in time order")
        self.scheduled.append(event)
        return "ok"

    def _heal_at(self, words: list[str]) -> str:
        if self.nemesis is not None:
            raise ScenarioError("`heal-at` comes once")
        heal_at_ms = float(words[0])
        points = FaultPoints(self.sim, replay=self.scheduled)
        self.nemesis = Nemesis(self.sim, (), replay=self.scheduled, fault_points=points)
        self.nemesis.start(heal_at_ms=heal_at_ms)
        return f"{len(self.scheduled)} faults scheduled, the final heal at {heal_at_ms:g} ms"

    def _finish(self, words: list[str]) -> str:
        options = _options(words)
        quiet = float(options["quiet-ms"]) if "quiet-ms" in options else None
        recovery_ms, problems = finish_run(self.sim, self.checker, self.load, self.actor, quiet)
        self.problems.extend(problems)
        lines = self._events_since(self.window_start)
        if self.checker is not None:
            lines.append(f"a write committed {recovery_ms:.0f} ms after the final heal" if recovery_ms is not None
                         else "no write committed after the final heal")
        lines.extend(f"PROBLEM: {problem}" for problem in problems)
        return "\n".join(lines) or "ok"

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


def execute_script(text: str) -> tuple[str, ScenarioRunner, list[str]]:
    """Execute a scenario script: (the script with every command's actual output, the
    runner (its `violation` and `problems`), the errors as "line N: message")."""
    runner = ScenarioRunner()
    output: list[str] = []
    errors: list[str] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.strip() or line.startswith("#"):
            output.append(line)
            continue
        number = index
        # Skip the old expected output: the separator and lines up to a blank line.
        if index < len(lines) and lines[index] == SEPARATOR:
            index += 1
            while index < len(lines) and lines[index].strip():
                index += 1
        try:
            result = runner.execute(line)
        except ScenarioError as error:
            result = f"error: {error}"
            errors.append(f"line {number}: {error}")
        output.extend([line, SEPARATOR, result])
        if index >= len(lines) or lines[index].strip():
            output.append("")
    return "\n".join(output).rstrip("\n") + "\n", runner, errors


def run_script(text: str) -> str:
    """Execute a scenario script; return it with every command's actual output."""
    return execute_script(text)[0]
