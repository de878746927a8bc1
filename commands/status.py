"""`raftlite status ADDR [--json]`: a node's role, term, commit and applied index, its
leader and members, and each follower's lag (from the admin protocol, io/admin.py)."""

import argparse
import json

from ..io.admin import AdminError, node_status, parse_address
from . import CommandError

__all__ = ["register"]

STATUS_TIMEOUT_S = 5.0


def register(commands) -> None:
    status = commands.add_parser("status", help="a node's role, term, commit and applied index, followers' lag")
    status.add_argument("address", help="HOST:PORT of the node")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        parse_address(args.address)
        status = node_status(args.address, timeout_seconds=STATUS_TIMEOUT_S)
    except (ValueError, AdminError) as error:
        raise CommandError(str(error)) from None
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
    storage = "failing" if status.get("storage_failing") else "ok"
    if status.get("disk_full"):
        storage += " (disk full)"
    print(f"  storage {storage}, {status.get('storage_errors', 0)} errors")
    # Limits hit, failed handshakes, idle clients closed, messages dropped: the counters an
    # operator acts on (the traffic counters are in --json).
    refused = {name: count for name, count in sorted(status.get("connections", {}).items())
               if count and any(word in name for word in ("refused", "failures", "closed", "dropped", "undecodable"))}
    if refused:
        print("  connections: " + ", ".join(f"{name} {count}" for name, count in refused.items()))
    return 0
