"""Test helper: a real dqlite node from Debian's packages, on loopback.

`ensure_dqlite_demo()` finds `dqlite-demo` (package go-dqlite, which pulls libdqlite0)
and installs it with apt-get only when it is missing. Without root, the caller's tests
are skipped with the reason, except under CI (env `CI` set), where they fail: CI must
run them.

`DqliteNode.start(directory)` runs one `dqlite-demo` node in its own process session on
127.0.0.1 free ports; `stop()` kills it by its PID. Every wait is bounded.
"""

from dataclasses import dataclass
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from raftlite.process_cluster import free_ports

__all__ = ["DqliteNode", "ensure_dqlite_demo", "package_version"]

_INSTALL_TIMEOUT_S = 900
_START_TIMEOUT_S = 30.0


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: these tests must run)")
    pytest.skip(reason)


def _apt_get(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["apt-get", "-o", "DPkg::Lock::Timeout=300", *arguments],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        capture_output=True, text=True, timeout=_INSTALL_TIMEOUT_S,
    )


def ensure_dqlite_demo() -> str:
    """The path of `dqlite-demo`, installing Debian's go-dqlite when it is missing."""
    path = shutil.which("dqlite-demo")
    if path is not None:
        return path
    if shutil.which("apt-get") is None:
        _unavailable("dqlite-demo is missing and there is no apt-get to install go-dqlite")
    if os.geteuid() != 0:
        _unavailable("dqlite-demo is missing; installing Debian's go-dqlite needs root")
    result = _apt_get("install", "-y", "go-dqlite")
    if result.returncode != 0:  # a stale package index is the usual cause
        _apt_get("update")
        result = _apt_get("install", "-y", "go-dqlite")
    path = shutil.which("dqlite-demo")
    if path is None:
        _unavailable(f"apt-get install go-dqlite failed: {result.stderr.strip()[-400:]}")
    return path


def package_version(package: str) -> str:
    result = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                            capture_output=True, text=True, timeout=30)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


@dataclass
class DqliteNode:
    address: str        # the dqlite protocol address (host:port)
    process: subprocess.Popen
    log_path: Path

    @classmethod
    def start(cls, directory: Path) -> "DqliteNode":
        executable = ensure_dqlite_demo()
        directory.mkdir(parents=True, exist_ok=True)
        address, api_address = (f"127.0.0.1:{port}" for port in free_ports(2))
        log_path = directory / "dqlite-demo.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [executable, "--api", api_address, "--db", address, "--dir", str(directory / "data")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        node = cls(address=address, process=process, log_path=log_path)
        try:
            node._wait_until_leader()
        except BaseException:
            node.stop()
            raise
        return node

    def _wait_until_leader(self) -> None:
        # Imported here so that a broken client fails the tests, not the helper's import.
        from raftlite.client.connection import Connection, ConnectionBroken

        deadline = time.monotonic() + _START_TIMEOUT_S
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dqlite-demo exited with {self.process.returncode}: {self.log()}")
            try:
                with Connection.connect(self.address, timeout_s=2.0) as connection:
                    if connection.leader() is not None:
                        return
            except ConnectionBroken as error:
                last_error = error
            time.sleep(0.05)
        raise RuntimeError(f"dqlite-demo at {self.address} had no leader after {_START_TIMEOUT_S}s "
                           f"({last_error}): {self.log()}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Kills the node by its PID and reaps it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
