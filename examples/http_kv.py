"""An HTTP key/value service over an embedded raftlite node (in the manner of dqlite's
dqlite-demo).

Each process embeds one raftlite node (`raftlite.Node`) and serves HTTP:

    GET    /KEY          the value (404 if missing)
    PUT    /KEY  (body)  store the body as the value
    DELETE /KEY          remove it

Any process answers any request: the raftlite client it uses finds the cluster's leader,
so a PUT sent to a follower's HTTP port is written through the leader.

Run three of them (the first bootstraps, the others join it):

    python examples/http_kv.py --id 1 --raft 127.0.0.1:9001 --http 127.0.0.1:8001 --data-dir /tmp/kv1
    python examples/http_kv.py --id 2 --raft 127.0.0.1:9002 --http 127.0.0.1:8002 --data-dir /tmp/kv2 --join 127.0.0.1:9001
    python examples/http_kv.py --id 3 --raft 127.0.0.1:9003 --http 127.0.0.1:8003 --data-dir /tmp/kv3 --join 127.0.0.1:9001
    curl -X PUT -d hello http://127.0.0.1:8002/greeting
    curl http://127.0.0.1:8003/greeting

The HTTP side is a deliberately small HTTP/1.1 server on asyncio streams (one request per
connection), to keep the example free of dependencies; a real service would use a web
framework. Ctrl-C (SIGINT) or SIGTERM stops the node gracefully.
"""

import argparse
import asyncio
import signal
import sys

import raftlite
from raftlite.client import aio
from raftlite.client.errors import Error as DatabaseError

REQUEST_BYTES_MAX = 1 << 20
SCHEMA = "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)"


class KeyValueService:
    def __init__(self, node: "raftlite.Node", cluster_addresses: list[str]) -> None:
        self.node = node
        self.cluster_addresses = cluster_addresses
        self.database = None

    async def connection(self):
        if self.database is None:
            self.database = await aio.connect(self.cluster_addresses, database="kv", timeout=10.0, autocommit=True)
            await self.database.execute(SCHEMA)
        return self.database

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await self._answer(reader)
        except (asyncio.IncompleteReadError, ValueError) as error:
            status, body = 400, f"bad request: {error}\n".encode()
        except DatabaseError as error:
            self.database = None   # reconnect next time (the leader may have moved)
            status, body = 503, f"database unavailable: {error}\n".encode()
        reason = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  503: "Service Unavailable"}[status]
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > REQUEST_BYTES_MAX:
            raise ValueError("headers too long")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _version = request_line.split(" ", 2)
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines if line)}
        length = int(headers.get("content-length", "0"))
        if not 0 <= length <= REQUEST_BYTES_MAX:
            raise ValueError("body too long")
        body = await reader.readexactly(length)
        key = path.lstrip("/")
        if not key:
            raise ValueError("no key in the path")
        database = await self.connection()
        if method == "GET":
            cursor = await database.execute("SELECT value FROM kv WHERE key = ?", (key,))
            row = await cursor.fetchone()
            return (200, bytes(row[0])) if row is not None else (404, b"")
        if method == "PUT":
            await database.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, body))
            return 204, b""
        if method == "DELETE":
            await database.execute("DELETE FROM kv WHERE key = ?", (key,))
            return 204, b""
        return 405, b""


async def serve(args: argparse.Namespace) -> int:
    join = [address for address in args.join.split(",") if address]
    node = raftlite.Node(node_id=args.id, address=args.raft, data_dir=args.data_dir, join=join)
    await node.start()
    service = KeyValueService(node, [args.raft, *join])
    host, port = args.http.rsplit(":", 1)
    server = await asyncio.start_server(service.handle, host, int(port))
    print(f"node {args.id}: raft and dqlite protocol on {args.raft}, HTTP on {args.http}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()
    if service.database is not None:
        await service.database.close()
    await node.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="an HTTP key/value service over an embedded raftlite node")
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--raft", required=True, help="HOST:PORT of the raftlite node")
    parser.add_argument("--http", required=True, help="HOST:PORT of the HTTP service")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--join", default="", help="comma list of raft addresses to join (omit on the first node)")
    return asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
