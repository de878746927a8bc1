"""The `raftlite` command line: useful output, and clear errors without tracebacks."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)


def raftlite(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raftlite", *args], capture_output=True, text=True, timeout=50)


def test_sim_run_prints_a_summary_with_the_trace_hash(tmp_path):
    trace = tmp_path / "trace.jsonl"
    result = raftlite("sim", "run", "--seed", "3", "--nodes", "3", "--duration", "5", "--nemesis", "crash,partition",
                      "--trace", str(trace), "--timeline")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("trace hash ") and len(lines[-1].split()[-1]) == 64
    assert any(line.startswith("seed 3: 3 nodes") for line in lines)
    assert any(" crash " in line for line in lines)                   # the timeline
    assert trace.read_text().count("\n") > 100


@pytest.mark.parametrize(
    "args, message",
    [
        (["sim", "run", "--seed", "x"], "expected a whole number, got 'x'"),
        (["sim", "run", "--seed", "1", "--nodes", "0"], "expected a positive number, got 0"),
        (["sim", "run", "--seed", "1", "--nemesis", "crash,meteor"], "unknown nemesis meteor"),
        (["sim", "run", "--seed", "1", "--trace", "/nonexistent/dir/t.jsonl"], "cannot write trace file"),
        (["sim", "run", "--seed", "1", "--actor", "nope"], "unknown actor 'nope'"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_user_mistakes_get_one_clear_line_and_status_2(args, message):
    result = raftlite(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_sim_bench_reports_events_per_second():
    result = raftlite("sim", "bench", "--nodes", "3", "--duration", "2")
    assert result.returncode == 0, result.stderr
    assert "events/s" in result.stdout and "%]" in result.stderr   # figure + progress lines


def test_sim_demo_survives_a_leader_kill():
    result = raftlite("sim", "demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "killed the leader" in result.stdout
    assert "all three replicas hold the same 8 rows" in result.stdout


@pytest.mark.timeout(60)
def test_a_node_logs_json_lines_and_stops_gracefully_on_sigterm(tmp_path):
    import json
    import signal
    import subprocess
    import sys
    import time

    from raftlite_inprocess import free_ports

    (port,) = free_ports(1)
    process = subprocess.Popen(
        [sys.executable, "-m", "raftlite", "node", "--id", "1", "--address", f"127.0.0.1:{port}",
         "--data-dir", str(tmp_path / "data"), "--log-format", "json"],
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        first = json.loads(process.stderr.readline())
        assert first["level"] == "info" and first["node"] == 1 and "bootstrapping" in first["message"]
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        rest = [json.loads(line) for line in process.stderr.read().splitlines() if line.strip()]
        assert any("stopping" in event["message"] for event in rest)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
