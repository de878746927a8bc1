"""The simulator's output depends only on (seed, code)."""

import os
import subprocess
import sys

import pytest

from raftlite.sim.nemesis import NEMESIS_KINDS
from raftlite.sim.run import run_simulation

pytestmark = pytest.mark.timeout(120)


def trace_hash(seed: int) -> str:
    summary, sim = run_simulation(seed=seed, nodes=5, duration_ms=8_000, nemesis=NEMESIS_KINDS, quiet_period_ms=2_000)
    sim.close()
    return summary.trace_hash


def test_same_seed_gives_the_same_trace_and_different_seeds_differ():
    first, again, other = trace_hash(11), trace_hash(11), trace_hash(12)
    assert first == again
    assert first != other


def test_same_seed_in_separate_processes_with_different_hash_seeds():
    hashes = []
    for hash_seed in ("0", "4242"):
        environment = dict(os.environ, PYTHONHASHSEED=hash_seed)
        result = subprocess.run(
            [sys.executable, "-m", "raftlite", "sim", "run", "--seed", "11", "--nodes", "5",
             "--duration", "8", "--nemesis", "all"],
            capture_output=True, text=True, env=environment, timeout=100,
        )
        assert result.returncode == 0, result.stderr
        hashes.append(result.stdout.strip().splitlines()[-1])
    assert hashes[0] == hashes[1]
    assert hashes[0].startswith("trace hash ")


def test_trace_file_lines_reproduce_the_hash_inputs(tmp_path):
    path_a, path_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path in (path_a, path_b):
        with open(path, "w") as sink:
            run_simulation(seed=5, nodes=3, duration_ms=3_000, nemesis=NEMESIS_KINDS, trace_sink=sink, quiet_period_ms=500)
    assert path_a.read_bytes() == path_b.read_bytes()
    assert path_a.read_text().count("\n") > 300


def test_database_runs_repeat_exactly_across_processes():
    """random(), randomblob(), datetime('now') and the WAL salts follow the seed."""
    hashes = []
    for hash_seed in ("1", "777"):
        environment = dict(os.environ, PYTHONHASHSEED=hash_seed)
        result = subprocess.run(
            [sys.executable, "-m", "raftlite", "sim", "run", "--actor", "database", "--seed", "5", "--nodes", "3",
             "--duration", "5", "--nemesis", "all"],
            capture_output=True, text=True, env=environment, timeout=100,
        )
        assert result.returncode == 0, result.stderr
        assert "PROBLEM" not in result.stdout and "VIOLATION" not in result.stdout, result.stdout
        hashes.append(result.stdout.strip().splitlines()[-1])
    assert hashes[0] == hashes[1]
