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
included). Exit status 0 when every check held.
"""

import hashlib
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import apsw

from raftlite.client.connection import Connection, ConnectionBroken, RequestFailed
from raftlite.io.node_command import NodeCommandError, start_cluster, start_node_process, stop_cluster

__all__ = ["run_demo"]

DEMO_DATABASE = "demo"
WAIT_S = 30.0


class DemoFailed(Exception):
    pass


def _free_addresses(count: int) -> dict[int, str]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return {i + 1: f"127.0.0.1:{sock.getsockname()[1]}" for i, sock in enumerate(sockets)}
    finally:
        for sock in sockets:
            sock.close()


def _leader(addresses: dict[int, str], skip: int | None = None) -> tuple[int, str]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for node_id, address in addresses.items():
            if node_id == skip:
                continue
            try:
                with Connection.connect(address, timeout_s=2) as connection:
                    leader = connection.leader()
            except (ConnectionBroken, RequestFailed, OSError):
                continue
            if leader is not None and leader.node_id != skip:
                return leader.node_id, leader.address
        time.sleep(0.1)
    raise DemoFailed(f"no leader within {WAIT_S:.0f} s")


def _write(address: str, statements: list[tuple[str, tuple]]) -> None:
    with Connection.connect(address, timeout_s=10) as connection:
        db = connection.open(DEMO_DATABASE)
        for sql, params in statements:
            connection.exec_sql(db, sql, params)


def _rows_of_dump(address: str, scratch: Path) -> tuple[list[tuple], str]:
    """(rows, sha256 of the database image) from a DUMP of one node."""
    with Connection.connect(address, timeout_s=10) as connection:
        files = connection.dump(DEMO_DATABASE)
    scratch.mkdir(parents=True, exist_ok=True)
    for file in files:
        (scratch / file.name).write_bytes(file.data)
    database = apsw.Connection(str(scratch / files[0].name), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        if database.execute("PRAGMA integrity_check").get != "ok":
            raise DemoFailed(f"the DUMP of {address} fails integrity_check")
        rows = [tuple(row) for row in database.execute("SELECT id, lucky, token, written_at FROM events ORDER BY id")]
    finally:
        database.close()
    return rows, hashlib.sha256(files[0].data).hexdigest()[:16]


def _show_replicas(addresses: dict[int, str], scratch: Path, expected_rows: int) -> list[tuple]:
    """Wait until every node's DUMP holds `expected_rows` rows; they must be identical."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            seen = {node: _rows_of_dump(address, scratch / f"node{node}") for node, address in addresses.items()}
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
    addresses = _free_addresses(3)
    started = time.monotonic()
    ok = False
    try:
        print("1. starting a 3-node cluster on 127.0.0.1")
        elapsed = start_cluster(directory, addresses, report=lambda line: print("   " + line))
        for node, address in addresses.items():
            print(f"    node {node} at {address}")
        print(f"    formed in {elapsed:.1f} s")

        leader, leader_address = _leader(addresses)
        print(f"2. node {leader} leads; writing rows with random(), randomblob() and datetime('now')")
        _write(leader_address, [("CREATE TABLE events (id INTEGER PRIMARY KEY, lucky, token, written_at)", ())])
        _insert(leader_address, 1, 5)

        print("3. DUMP of every node (followers included):")
        _show_replicas(addresses, directory / "dumps-1", 5)

        pid = int((directory / f"node{leader}.pid").read_text())
        print(f"4. killing the leader, node {leader} (SIGKILL, pid {pid})")
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        new_leader, new_address = _leader(addresses, skip=leader)
        print(f"    node {new_leader} leads after {time.monotonic() - killed_at:.1f} s; writing more rows through it")
        _insert(new_address, 6, 3)
        survivors = {n: a for n, a in addresses.items() if n != leader}
        _show_replicas(survivors, directory / "dumps-2", 8)

        print(f"5. restarting node {leader}")
        start_node_process(directory, leader, addresses[leader], None, election_timeout_ms=1000.0)
        rows = _show_replicas(addresses, directory / "dumps-3", 8)
        print(f"    node {leader} caught up: all {len(rows)} rows on all 3 nodes")
        ok = True
    except (DemoFailed, NodeCommandError, ConnectionBroken, RequestFailed) as error:
        print(f"demo failed: {error}; node logs in {directory}")
        keep = True
    finally:
        outcome = stop_cluster(directory)
        print("6. stopped: " + ", ".join(f"node {n} {how}" for n, how in sorted(outcome.items())))
        if keep:
            print(f"   files kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    if ok:
        print(f"demo passed in {time.monotonic() - started:.1f} s")
    return 0 if ok else 1
