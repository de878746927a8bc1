"""examples/http_kv.py: three processes embedding raftlite nodes serve a key/value API;
a value PUT through one process is read back through the others."""

import http.client
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raftlite_inprocess import free_ports

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "http_kv.py"


def request(address: str, method: str, key: str, body: bytes | None = None) -> tuple[int, bytes]:
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        connection.request(method, "/" + key, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.timeout(120)
def test_three_embedded_nodes_serve_one_key_value_store(tmp_path):
    ports = free_ports(6)
    raft = [f"127.0.0.1:{p}" for p in ports[:3]]
    web = [f"127.0.0.1:{p}" for p in ports[3:]]
    processes = []
    try:
        for i in range(3):
            command = [sys.executable, str(EXAMPLE), "--id", str(i + 1), "--raft", raft[i], "--http", web[i],
                       "--data-dir", str(tmp_path / f"kv{i + 1}")]
            if i:
                command += ["--join", raft[0]]
            log = open(tmp_path / f"kv{i + 1}.log", "wb")
            processes.append(subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True))
        deadline = time.monotonic() + 60
        while True:
            try:
                status, _ = request(web[1], "PUT", "greeting", b"hello")
                if status == 204:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "kv2.log").read_text()
            time.sleep(0.3)
        for address in web:
            for _ in range(50):   # followers serve reads through the leader: at once
                status, body = request(address, "GET", "greeting")
                if status == 200:
                    break
                time.sleep(0.1)
            assert (status, body) == (200, b"hello")
        assert request(web[2], "DELETE", "greeting")[0] == 204
        assert request(web[0], "GET", "greeting")[0] == 404
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
