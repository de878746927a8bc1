"""`raftlite demo` (what `make demo` runs): a real 3-node cluster on loopback survives the
loss of its leader.

Steps, each printed as it happens:
1. start 3 `raftlite node` processes (node 1 bootstraps, 2 and 3 join);
2. create a table and insert rows using random(), randomblob() and datetime('now'):
   non-deterministic SQL, replicated as the pages it wrote, not as its text;
3. DUMP the database from every node (followers included) and show the rows are
   byte-identical everywhere;
4. kill the leader with SIGKILL; show the new leader and keep writing through it;
5. restart the killed node and show it caught up (its DUMP matches again);
6. stop everything (SIGTERM; a leader hands over first).

Everything runs in a temporary directory removed at the end (`--keep` keeps it, logs
included). Exit status 0 when every check held. The processes are
raftlite.process_cluster's.
"""

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import apsw

from ..client.connection import Connection, ConnectionBroken, RequestFailed
from ..process_cluster import ClusterError, ProcessCluster

__all__ = ["register", "run_demo"]

DEMO_DATABASE = "demo"
WAIT_S = 30.0


class DemoFailed(Exception):
    pass


def register(commands) -> None:
    demo = commands.add_parser("demo", help="a real 3-node cluster on loopback surviving a leader kill")
    demo.add_argument("--keep", action="store_true", help="keep the cluster's files and logs")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_demo(keep=args.keep)


def _write(address: str, statements: list[tuple[str, tuple]]) -> None:
    with Connection.connect(address, timeout_s=10) as connection:
        db = connection.open(DEMO_DATABASE)
        for sql, params in statements:
            connection.exec_sql(db, sql, params)


def _rows_of_dump(cluster: ProcessCluster, node_id: int, scratch: Path) -> tuple[list[tuple], str]:
    """(rows, sha256 of the database image) from a DUMP of one node."""
    files = cluster.dump_files(node_id, DEMO_DATABASE)
    scratch.mkdir(parents=True, exist_ok=True)
    for file in files:
        (scratch / file.name).write_bytes(file.data)
    database = apsw.Connection(str(scratch / files[0].name), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        if database.execute("PRAGMA integrity_check").get != "ok":
            raise DemoFailed(f"the DUMP of {cluster.address(node_id)} fails integrity_check")
        rows = [tuple(row) for row in database.execute("SELECT id, lucky, token, written_at FROM events ORDER BY id")]
    finally:
        database.close()
    return rows, hashlib.sha256(files[0].data).hexdigest()[:16]


def _show_replicas(cluster: ProcessCluster, nodes: list[int], scratch: Path, expected_rows: int) -> list[tuple]:
    """Wait until every node's DUMP holds `expected_rows` rows; they must be identical."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            seen = {node: _rows_of_dump(cluster, node, scratch / f"node{node}") for node in nodes}
        except (ConnectionBroken, RequestFailed, apsw.SQLError):
            seen = {}   # a node still starting, or not yet holding the table
        if seen and all(len(rows) == expected_rows for rows, _ in seen.values()):
            break
        if time.monotonic() > deadline:
            counts = {node: len(rows) for node, (rows, _) in seen.items()}
            raise DemoFailed(f"replicas did not converge to {expected_rows} rows within {WAIT_S:.0f} s: {counts}")
        time.sleep(0.2)
    for node, (rows, digest) in seen.items():
        print(f"    node {node}: {len(rows)} rows, image sha256 {digest}, last row {rows[-1]}")
    if len({tuple(rows) for rows, _ in seen.values()}) != 1:
        raise DemoFailed("the replicas hold different rows")
    print("    identical on every node")
    return next(iter(seen.values()))[0]


def _insert(leader_address: str, first_id: int, count: int) -> None:
    _write(leader_address, [
        ("INSERT INTO events VALUES (?, abs(random()) % 1000, hex(randomblob(4)), datetime('now'))", (first_id + i,))
        for i in range(count)
    ])


def run_demo(*, keep: bool = False) -> int:
    directory = Path(tempfile.mkdtemp(prefix="raftlite-demo-"))
    cluster = ProcessCluster(directory, 3)
    started = time.monotonic()
    ok = False
    try:
        print("1. starting a 3-node cluster on 127.0.0.1")
        cluster.start(report=lambda line: print("   " + line))
        for node in cluster.nodes.values():
            print(f"    node {node.node_id} at {node.address}")
        print(f"    formed in {cluster.formed_in_s:.1f} s")

        leader = cluster.wait_leader(WAIT_S)
        leader_address = cluster.address(leader)
        print(f"2. node {leader} leads; writing rows with random(), randomblob() and datetime('now')")
        _write(leader_address, [("CREATE TABLE events (id INTEGER PRIMARY KEY, lucky, token, written_at)", ())])
        _insert(leader_address, 1, 5)

        print("3. DUMP of every node (followers included):")
        _show_replicas(cluster, list(cluster.nodes), directory / "dumps-1", 5)

        print(f"4. killing the leader, node {leader} (SIGKILL, pid {cluster.nodes[leader].pid})")
        cluster.nodes[leader].kill()
        killed_at = time.monotonic()
        new_leader = cluster.wait_leader(WAIT_S)
        print(f"    node {new_leader} leads after {time.monotonic() - killed_at:.1f} s; writing more rows through it")
        _insert(cluster.address(new_leader), 6, 3)
        survivors = [n for n in cluster.nodes if n != leader]
        _show_replicas(cluster, survivors, directory / "dumps-2", 8)

        print(f"5. restarting node {leader}")
        cluster.nodes[leader].start(join=())
        rows = _show_replicas(cluster, list(cluster.nodes), directory / "dumps-3", 8)
        print(f"    node {leader} caught up: all {len(rows)} rows on all 3 nodes")
        ok = True
    except (DemoFailed, ClusterError, ConnectionBroken, RequestFailed) as error:
        print(f"demo failed: {error}; node logs in {directory}")
        keep = True
    finally:
        outcome = cluster.stop()
        print("6. stopped: " + ", ".join(f"node {n} {how}" for n, how in sorted(outcome.items())))
        if keep:
            print(f"   files kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    if ok:
        print(f"demo passed in {time.monotonic() - started:.1f} s")
    return 0 if ok else 1
