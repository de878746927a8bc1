"""`make demo` runs `raftlite demo`: a real 3-node cluster surviving a leader kill."""

import subprocess
import sys

import pytest


@pytest.mark.timeout(120)
def test_the_demo_passes_and_leaves_no_process_behind():
    completed = subprocess.run([sys.executable, "-m", "raftlite", "demo"], capture_output=True, text=True, timeout=110)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    assert "identical on every node" in out and "caught up: all 8 rows on all 3 nodes" in out
    assert "6. stopped: node 1 stopped, node 2 stopped, node 3 stopped" in out   # SIGTERM sufficed
    assert "demo passed" in out
