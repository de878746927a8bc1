"""`raftlite node`: run one node (real runtime) in the foreground.

    raftlite node --id N --address HOST:PORT --data-dir DIR [--join ADDR,...]
                  [--advertise HOST:PORT] [--join-timeout S]
                  [--dial-via NODE=HOST:PORT,...] [--cluster-key-file FILE]
                  [--client-idle-timeout S]

It runs until SIGTERM or SIGINT, which stop it gracefully (a leader first hands
leadership over). Its log goes to stderr, one line per event: `time level logger:
message`, or with `--log-format json` one JSON object (time, level, logger, node,
message). Exit status: 0 after a graceful stop or once the cluster removed the node, 1
when the node halted (e.g. corrupt
storage: the message names the file; a join that gave up: the message says why), 2 for
a user mistake (bad flag, address in use, directory already used by a running node,
directory of another node id or cluster, another live node with this id, a join that
reaches the node itself).
"""

import argparse
import asyncio
import json
import logging
import math
import os
import signal
import sys

from ..actors.config import Config, ConfigError
from ..argument_types import positive_float, positive_int
from ..core.raft import REMOVED_FROM_CLUSTER
from ..core.raft_types import Role
from ..io.admin import parse_address
from ..io.event_loop import EVENT_LOOP_CHOICES, loop_factory
from ..io.identity import IdentityMismatch, check_node_addresses
from ..io.node import JOIN_TIMEOUT_DEFAULT_S, Node, data_directory_initialized
from ..io.peer_auth import ClusterKeys, create_cluster_key_file, key_file_too_open, load_cluster_key_file
from ..io.runtime import DataDirectoryInUse
from ..io.transport import TlsSettings
from ..io.wire_server import CLIENT_IDLE_TIMEOUT_DEFAULT_S
from . import CommandError

__all__ = ["parse_dial_via", "register"]


def register(commands) -> None:
    node = commands.add_parser("node", help="run one raftlite node (real runtime) in the foreground")
    node.add_argument("--id", type=positive_int, required=True, help="this node's id (unique in the cluster)")
    node.add_argument("--address", required=True, help="HOST:PORT to listen on (clients and peers); a concrete "
                      "address, unless --advertise is given")
    node.add_argument("--advertise", metavar="HOST:PORT", default=None,
                      help="the address other nodes and clients dial, recorded as this member's address "
                           "(default --address; needed when --address is a wildcard such as 0.0.0.0:9001)")
    node.add_argument("--data-dir", required=True, help="directory for raft state and SQLite files")
    node.add_argument("--join", default="", help="comma list of ADDRs of cluster members; omit to bootstrap")
    node.add_argument("--join-timeout", type=positive_float, default=JOIN_TIMEOUT_DEFAULT_S, metavar="S",
                      help=f"give up joining after S seconds (exit 1, with the reason; default "
                           f"{JOIN_TIMEOUT_DEFAULT_S:g})")
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
    node.add_argument("--tls-require-roles", action="store_true",
                      help="refuse a certificate that carries no raftlite role (OU=raftlite-node, raftlite-admin or "
                           "raftlite-client); without it such a certificate counts as a node's (full access)")
    node.add_argument("--dial-via", default="", metavar="NODE=HOST:PORT,...",
                      help="dial a peer through a proxy, e.g. toxiproxy: for peer NODE connect to HOST:PORT "
                           "instead of the peer's own address")
    node.add_argument("--cluster-key-file", metavar="FILE",
                      help="the cluster key peers must prove (one hex key per line, current first, then the "
                           "previous one during a rotation); a bootstrapping node creates FILE when it does not "
                           "exist, every other node must be given a copy; without it peers are not authenticated")
    node.add_argument("--client-idle-timeout", type=_idle_timeout_seconds, default=CLIENT_IDLE_TIMEOUT_DEFAULT_S,
                      metavar="S", help=f"close a dqlite client connection idle for S seconds (no request being "
                                        f"answered, nothing received; its open transaction is rolled back), so idle "
                                        f"sockets cannot hold the connection limit; 0: never (default "
                                        f"{CLIENT_IDLE_TIMEOUT_DEFAULT_S:g})")
    node.set_defaults(func=run)


def _idle_timeout_seconds(text: str) -> float:
    """--client-idle-timeout's value: 0 (never) or a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds (0: never), got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected 0 (never) or a positive number of seconds, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLogFormatter(args.id) if args.log_format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), handlers=[handler])
    join = tuple(address.strip() for address in args.join.split(",") if address.strip())
    try:
        parse_address(args.address)
        for address in join:
            parse_address(address)
        check_node_addresses(args.address, args.advertise, join)
        dial_via = parse_dial_via(args.dial_via)
        config = Config(election_timeout_ms=args.election_timeout, heartbeat_interval_ms=args.heartbeat_interval).validate()
        tls = _tls_settings(args)
        if tls is not None and args.cluster_key_file is None:
            raise ValueError("with TLS, peers must also prove the cluster key: give --cluster-key-file")
        factory = loop_factory(args.event_loop)
        keys = _cluster_keys(args.cluster_key_file, bootstrapping=not join and not data_directory_initialized(args.data_dir))
    except (ValueError, ConfigError) as error:
        raise CommandError(str(error)) from None
    node = Node(node_id=args.id, address=args.address, advertise=args.advertise, join_timeout_s=args.join_timeout,
                data_dir=args.data_dir, join=join, config=config,
                disk_backend=args.disk_backend, role=Role[args.role.upper()], tls=tls, dial_via=dial_via,
                cluster_key=keys.keys if keys is not None else None, client_idle_timeout_s=args.client_idle_timeout)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_serve(node))


def parse_dial_via(text: str) -> dict[int, str]:
    """'2=127.0.0.1:7002,3=127.0.0.1:7003' -> {2: '127.0.0.1:7002', 3: '127.0.0.1:7003'};
    ValueError with a clear message."""
    dial_via = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        peer, separator, address = item.partition("=")
        if not separator or not peer.strip().isdigit() or int(peer) <= 0:
            raise ValueError(f"--dial-via {item!r} is not NODE=HOST:PORT (NODE a positive node id)")
        parse_address(address.strip())
        dial_via[int(peer)] = address.strip()
    return dial_via


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


def _cluster_keys(path: str | None, *, bootstrapping: bool) -> ClusterKeys | None:
    """The keys of --cluster-key-file; a bootstrapping node creates the file (mode 0600)
    when it does not exist. ValueError with a one-line message."""
    if path is None:
        return None
    if not os.path.exists(path):
        if not bootstrapping:
            raise ValueError(f"cluster key file {path} does not exist: only a node that bootstraps a new cluster "
                             "creates one; give this node a copy of the cluster's key file")
        try:
            keys = create_cluster_key_file(path)
        except OSError as error:
            raise ValueError(f"cannot create cluster key file {path}: {error.strerror or error}") from None
        logging.getLogger("raftlite.node").info("created cluster key file %s: copy it to every node that joins", path)
        return keys
    if key_file_too_open(path):
        logging.getLogger("raftlite.node").warning("cluster key file %s can be read by other users (chmod 600 it)", path)
    return load_cluster_key_file(path)


def _tls_settings(args: argparse.Namespace) -> TlsSettings | None:
    given = [args.tls_cert, args.tls_key, args.tls_ca]
    if not any(given):
        if args.tls_require_roles:
            raise ValueError("--tls-require-roles needs TLS: give --tls-cert, --tls-key and --tls-ca")
        return None
    if not all(given):
        raise ValueError("TLS needs all three of --tls-cert, --tls-key and --tls-ca")
    return TlsSettings.from_files(certificate_chain_file=args.tls_cert, private_key_file=args.tls_key, ca_file=args.tls_ca,
                                  require_roles=args.tls_require_roles)


async def _serve(node: Node) -> int:
    try:
        os.makedirs(node.data_dir, exist_ok=True)
        await node.start()
    except (DataDirectoryInUse, IdentityMismatch) as error:
        raise CommandError(str(error)) from None
    except OSError as error:
        raise CommandError(f"cannot start node {node.node_id} on {node.address}: {error.strerror or error}") from None
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
        return 2 if isinstance(node.join_error, IdentityMismatch) else 1
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
    # A node the cluster removed has ended its work: exit 0, so a supervisor that
    # restarts failed services does not start it again.
    return 0 if reason.startswith(REMOVED_FROM_CLUSTER) else 1
