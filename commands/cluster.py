"""`raftlite cluster up|down`: a local cluster of node processes that outlives the command.

    raftlite cluster up --nodes 3 --base-port P --data-dir DIR
    raftlite cluster down DIR

`up` starts N `raftlite node` processes on 127.0.0.1 (node 1 bootstraps, the others
join it), each in its own process session, with `DIR/nodeI/` as data directory,
`DIR/nodeI.log` as log and `DIR/nodeI.pid` holding its PID; it waits until every node
is a voter and prints the addresses. The nodes share one cluster key, `DIR/cluster.key`
(created with mode 0600 unless it exists), which a node added later by hand must be given
with `--cluster-key-file DIR/cluster.key`. `down DIR` stops them (SIGTERM, then SIGKILL after
a grace period) by the PIDs in those files. raftlite.process_cluster does both.
"""

import argparse
from pathlib import Path

from ..argument_types import positive_float, positive_int
from ..process_cluster import ClusterError, ProcessCluster, running_pids
from . import CommandError

__all__ = ["register"]

CLUSTER_START_TIMEOUT_S = 60.0


def register(commands) -> None:
    cluster = commands.add_parser("cluster", help="start or stop a local cluster of node processes")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True, metavar="SUBCOMMAND")
    up = cluster_commands.add_parser("up", help="start N node processes on 127.0.0.1")
    up.add_argument("--nodes", type=positive_int, default=3)
    up.add_argument("--base-port", type=positive_int, default=9001)
    up.add_argument("--data-dir", required=True)
    up.add_argument("--election-timeout", type=positive_float, default=1000.0, metavar="MS")
    up.set_defaults(func=_up)
    down = cluster_commands.add_parser("down", help="stop the node processes of a local cluster")
    down.add_argument("data_dir", metavar="DIR")
    down.set_defaults(func=_down)


def _up(args: argparse.Namespace) -> int:
    directory = Path(args.data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    already = running_pids(directory)
    if already:
        raise CommandError(f"a cluster is already running from {directory} (PIDs {sorted(already.values())}); "
                           f"stop it with `raftlite cluster down {directory}`")
    addresses = {i: f"127.0.0.1:{args.base_port + i - 1}" for i in range(1, args.nodes + 1)}
    cluster = ProcessCluster(directory, addresses=addresses, election_timeout_ms=args.election_timeout,
                             pid_files=True)
    try:
        cluster.start(CLUSTER_START_TIMEOUT_S, report=print)
    except ClusterError as error:
        cluster.stop()
        raise CommandError(str(error)) from None
    print(f"cluster up in {cluster.formed_in_s:.1f} s: " + ", ".join(f"node {n} at {a}" for n, a in addresses.items()))
    print(f"stop it with: raftlite cluster down {directory}")
    return 0


def _down(args: argparse.Namespace) -> int:
    directory = Path(args.data_dir)
    if not directory.is_dir():
        raise CommandError(f"{directory} is not a directory")
    outcome = ProcessCluster.adopt(directory).stop()
    if not outcome:
        print(f"no running nodes in {directory}")
        return 0
    print(", ".join(f"node {n} {how}" for n, how in sorted(outcome.items())))
    return 0
