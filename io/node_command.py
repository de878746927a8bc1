"""`raftlite node`, `raftlite status` and `raftlite cluster up|down`: real node processes.

    raftlite node --id N --address HOST:PORT --data-dir DIR [--join ADDR,...]
    raftlite status ADDR [--json]
    raftlite cluster up --nodes 3 --base-port P --data-dir DIR
    raftlite cluster down DIR

`raftlite node` runs one node in the foreground until SIGTERM or SIGINT, which stop it
gracefully (a leader first hands leadership over). Its log goes to stderr, one line per
event: `time level logger: message`, or with `--log-format json` one JSON object (time,
level, logger, node, message). Exit
status: 0 after a graceful stop, 1 when the node halted (e.g. corrupt storage: the
message names the file), 2 for a user mistake (bad flag, address in use, directory
already used by a running node).

`raftlite cluster up` starts N node processes on 127.0.0.1 (node 1 bootstraps, the
others join it), each in its own process session, with `DIR/nodeI/` as data directory,
`DIR/nodeI.log` as log and `DIR/nodeI.pid` holding its PID; it waits until every node
is a voter and prints the addresses. `raftlite cluster down DIR` stops them (SIGTERM,
then SIGKILL after a grace period) by the PIDs in those files.
"""

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from raftlite.io.event_loop import EVENT_LOOP_CHOICES, loop_factory

__all__ = ["NodeCommandError", "add_node_parsers", "run_node_command", "start_cluster", "start_node_process", "stop_cluster"]

CLUSTER_START_TIMEOUT_S = 60.0
CLUSTER_STOP_GRACE_S = 10.0
STATUS_TIMEOUT_S = 5.0


class NodeCommandError(Exception):
    """A user mistake or an environment problem, reported in one line (exit 2)."""


def add_node_parsers(commands, positive_int, positive_float) -> None:
    node = commands.add_parser("node", help="run one raftlite node (real runtime) in the foreground")
    node.add_argument("--id", type=positive_int, required=True, help="this node's id (unique in the cluster)")
    node.add_argument("--address", required=True, help="HOST:PORT to listen on (clients and peers)")
    node.add_argument("--data-dir", required=True, help="directory for raft state and SQLite files")
    node.add_argument("--join", default="", help="comma list of ADDRs of cluster members; omit to bootstrap")
    node.add_argument("--role", choices=("voter", "standby", "spare"), default="voter",
                      help="role to join with (default voter)")
    node.add_argument("--election-timeout", type=positive_float, default=1000.0, metavar="MS",
                      help="election timeout in milliseconds (default 1000)")
    node.add_argument("--heartbeat-interval", type=positive_float, default=100.0, metavar="MS",
                      help="heartbeat interval in milliseconds (default 100)")
    node.add_argument("--disk-backend", choices=("kernel-aio", "portable"), default=None,
                      help="disk I/O backend (default: kernel AIO when available)")
    node.add_argument("--event-loop", choices=EVENT_LOOP_CHOICES, default="auto",
                      help="asyncio event loop (default auto: uvloop when installed)")
    node.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    node.add_argument("--log-format", choices=("text", "json"), default="text",
                      help="text lines (default) or one JSON object per line (time, level, logger, node, message)")
    node.add_argument("--tls-cert", metavar="PEM", help="this node's certificate chain: TLS on every connection "
                      "(peers and clients must present certificates signed by --tls-ca)")
    node.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    node.add_argument("--tls-ca", metavar="PEM", help="the cluster's CA certificate")

    status = commands.add_parser("status", help="a node's role, term, commit and applied index, followers' lag")
    status.add_argument("address", help="HOST:PORT of the node")
    status.add_argument("--json", action="store_true", help="print JSON")

    cluster = commands.add_parser("cluster", help="start or stop a local cluster of node processes")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True, metavar="SUBCOMMAND")
    up = cluster_commands.add_parser("up", help="start N node processes on 127.0.0.1")
    up.add_argument("--nodes", type=positive_int, default=3)
    up.add_argument("--base-port", type=positive_int, default=9001)
    up.add_argument("--data-dir", required=True)
    up.add_argument("--election-timeout", type=positive_float, default=1000.0, metavar="MS")
    down = cluster_commands.add_parser("down", help="stop the node processes of a local cluster")
    down.add_argument("data_dir", metavar="DIR")


def run_node_command(args: argparse.Namespace) -> int:
    """Runs `node`, `status` or `cluster`; NodeCommandError becomes one line, exit 2."""
    try:
        if args.command == "node":
            return _run_node(args)
        if args.command == "status":
            return _show_status(args)
        if args.cluster_command == "up":
            return _cluster_up(args)
        return _cluster_down(args)
    except NodeCommandError as error:
        print(f"raftlite {args.command}: {error}", file=sys.stderr)
        return 2


# -- raftlite node ---------------------------------------------------------------------


def _run_node(args: argparse.Namespace) -> int:
    from raftlite.actors.config import Config, ConfigError
    from raftlite.core.raft_types import Role
    from raftlite.io.admin import parse_address
    from raftlite.io.node import Node

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLogFormatter(args.id) if args.log_format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), handlers=[handler])
    join = tuple(address.strip() for address in args.join.split(",") if address.strip())
    try:
        parse_address(args.address)
        for address in join:
            parse_address(address)
        config = Config(election_timeout_ms=args.election_timeout, heartbeat_interval_ms=args.heartbeat_interval).validate()
        tls = _tls_settings(args)
        factory = loop_factory(args.event_loop)
    except (ValueError, ConfigError) as error:
        raise NodeCommandError(str(error)) from None
    node = Node(node_id=args.id, address=args.address, data_dir=args.data_dir, join=join, config=config,
                disk_backend=args.disk_backend, role=Role[args.role.upper()], tls=tls)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_serve(node))


class _JsonLogFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def __init__(self, node_id: int) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        event = {"time": record.created, "level": record.levelname.lower(), "logger": record.name,
                 "node": self.node_id, "message": record.getMessage()}
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event)


def _tls_settings(args: argparse.Namespace):
    from raftlite.io.transport import TlsSettings

    given = [args.tls_cert, args.tls_key, args.tls_ca]
    if not any(given):
        return None
    if not all(given):
        raise ValueError("TLS needs all three of --tls-cert, --tls-key and --tls-ca")
    return TlsSettings.from_files(certificate_chain_file=args.tls_cert, private_key_file=args.tls_key, ca_file=args.tls_ca)


async def _serve(node) -> int:
    from raftlite.io.runtime import DataDirectoryInUse

    try:
        os.makedirs(node.data_dir, exist_ok=True)
        await node.start()
    except DataDirectoryInUse as error:
        raise NodeCommandError(str(error)) from None
    except OSError as error:
        raise NodeCommandError(f"cannot start node {node.node_id} on {node.address}: {error.strerror or error}") from None
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop_requested.set)
    stopped = asyncio.create_task(node.wait_stopped())
    requested = asyncio.create_task(stop_requested.wait())
    join_failed = asyncio.create_task(node.join_failed.wait())
    await asyncio.wait({stopped, requested, join_failed}, return_when=asyncio.FIRST_COMPLETED)
    if join_failed.done():
        print(f"raftlite node {node.node_id}: {node.join_error}", file=sys.stderr)
        requested.cancel()
        stopped.cancel()
        await node.stop(hand_over=False)
        return 1
    join_failed.cancel()
    if requested.done():
        logging.getLogger("raftlite.node").info("node %s: stopping (signal)", node.node_id)
        await node.stop(hand_over=True)
        stopped.cancel()
        return 0
    requested.cancel()
    runtime = node.runtime
    reason = runtime.halt_reason or (repr(runtime.failure) if runtime.failure else "stopped")
    print(f"raftlite node {node.node_id}: {reason}", file=sys.stderr)
    await node.stop(hand_over=False)
    return 1


# -- raftlite status -------------------------------------------------------------------


def _status_of(address: str) -> dict:
    from raftlite.io.admin import AdminError, node_status, parse_address

    try:
        parse_address(address)
        return node_status(address, timeout_seconds=STATUS_TIMEOUT_S)
    except (ValueError, AdminError) as error:
        raise NodeCommandError(str(error)) from None


def _show_status(args: argparse.Namespace) -> int:
    status = _status_of(args.address)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True, default=str))
        return 0
    print(f"node {status.get('node_id', '?')} at {args.address}: {status.get('role')} in term {status.get('term')}, "
          f"leader {status.get('leader')}")
    print(f"  commit {status.get('commit')}, applied {status.get('applied_index', status.get('applied'))}, "
          f"last log index {status.get('last')}")
    for member in status.get("members", []):
        print(f"  member {member['id']}: {member['role']} at {member['address']}")
    for follower, progress in status.get("followers", {}).items():
        print(f"  follower {follower}: matched {progress['match']}, lag {progress['lag']} entries")
    return 0


# -- raftlite cluster up / down ---------------------------------------------------------


def _pid_file(directory: Path, node_id: int) -> Path:
    return directory / f"node{node_id}.pid"


def _alive(pid: int) -> bool:
    try:
        # Our own child that exited is a zombie until reaped: reap it (no-op otherwise).
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"   # another's zombie
    except (OSError, IndexError):
        return True


def _running_pids(directory: Path) -> dict[int, int]:
    pids = {}
    for path in sorted(directory.glob("node*.pid")):
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            continue
        if _alive(pid):
            pids[int(path.stem[4:])] = pid
    return pids


def _cluster_up(args: argparse.Namespace) -> int:
    directory = Path(args.data_dir)
    addresses = {i: f"127.0.0.1:{args.base_port + i - 1}" for i in range(1, args.nodes + 1)}
    elapsed = start_cluster(directory, addresses, election_timeout_ms=args.election_timeout)
    print(f"cluster up in {elapsed:.1f} s: " + ", ".join(f"node {n} at {a}" for n, a in addresses.items()))
    print(f"stop it with: raftlite cluster down {directory}")
    return 0


def start_node_process(directory: Path, node_id: int, address: str, join: str | None, *,
                       election_timeout_ms: float) -> int:
    """Start one `raftlite node` process in its own session; returns its PID (also
    written to DIR/nodeI.pid; its log is DIR/nodeI.log)."""
    command = [sys.executable, "-m", "raftlite", "node", "--id", str(node_id), "--address", address,
               "--data-dir", str(directory / f"node{node_id}"), "--election-timeout", str(election_timeout_ms),
               "--heartbeat-interval", str(min(100.0, election_timeout_ms / 10))]
    if join:
        command += ["--join", join]
    with open(directory / f"node{node_id}.log", "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    _pid_file(directory, node_id).write_text(f"{process.pid}\n")
    return process.pid


def start_cluster(directory: Path, addresses: dict[int, str], *, election_timeout_ms: float = 1000.0,
                  report=print) -> float:
    """Start a node process per address (the first bootstraps, the others join it) and
    wait until all are voters; returns the seconds it took. NodeCommandError on failure
    (the processes started are stopped again)."""
    directory.mkdir(parents=True, exist_ok=True)
    already = _running_pids(directory)
    if already:
        raise NodeCommandError(f"a cluster is already running from {directory} (PIDs {sorted(already.values())}); "
                               f"stop it with `raftlite cluster down {directory}`")
    first = min(addresses)
    started = time.monotonic()
    for node_id, address in addresses.items():
        start_node_process(directory, node_id, address, None if node_id == first else addresses[first],
                           election_timeout_ms=election_timeout_ms)
    report(f"starting {len(addresses)} nodes from {directory} ...")
    deadline = started + CLUSTER_START_TIMEOUT_S
    last_report = 0.0
    while True:
        voters = _voters_seen(addresses[first])
        elapsed = time.monotonic() - started
        if voters == set(addresses):
            return elapsed
        for node_id in addresses:
            pid = int(_pid_file(directory, node_id).read_text())
            if not _alive(pid):
                _stop_all(directory)
                raise NodeCommandError(f"node {node_id} exited during start-up; see {directory / f'node{node_id}.log'}")
        if time.monotonic() > deadline:
            _stop_all(directory)
            raise NodeCommandError(f"the cluster did not form within {CLUSTER_START_TIMEOUT_S:.0f} s "
                                   f"(voters so far: {sorted(voters)}); logs in {directory}")
        if elapsed - last_report >= 1.0:
            last_report = elapsed
            report(f"  {elapsed:4.1f} s: {len(voters)}/{len(addresses)} voters")
        time.sleep(0.2)


def _voters_seen(address: str) -> set[int]:
    try:
        status = _status_of(address)
    except NodeCommandError:
        return set()
    return {member["id"] for member in status.get("members", []) if member["role"] == "voter"}


def stop_cluster(directory: Path) -> dict[int, str]:
    """SIGTERM every node process of DIR, SIGKILL what is left after a grace period."""
    return _stop_all(directory)


def _stop_all(directory: Path) -> dict[int, str]:
    pids = _running_pids(directory)
    outcome = {}
    for pid in pids.values():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + CLUSTER_STOP_GRACE_S
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids.values()):
        time.sleep(0.1)
    for node_id, pid in pids.items():
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            outcome[node_id] = "killed"
        else:
            outcome[node_id] = "stopped"
        _pid_file(directory, node_id).unlink(missing_ok=True)
    return outcome


def _cluster_down(args: argparse.Namespace) -> int:
    directory = Path(args.data_dir)
    if not directory.is_dir():
        raise NodeCommandError(f"{directory} is not a directory")
    outcome = _stop_all(directory)
    if not outcome:
        print(f"no running nodes in {directory}")
        return 0
    print(", ".join(f"node {n} {how}" for n, how in sorted(outcome.items())))
    return 0
