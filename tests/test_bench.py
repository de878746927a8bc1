"""`raftlite bench`: a short real run prints its figures with zero errors (not a timed
assertion), user mistakes get one line, and the parsers of dqlite-benchmark's result
files and of py-spy's output read what those tools write."""

import json
import signal
import subprocess
import sys

import pytest

from raftlite.commands.bench import parse_dqlite_results, summarize_profile

pytestmark = pytest.mark.timeout(90)


def _bench(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    """Runs `raftlite bench`; on a timeout, SIGINT first so that it stops its cluster."""
    process = subprocess.Popen([sys.executable, "-m", "raftlite", "bench", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        try:
            stdout, stderr = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        pytest.fail(f"raftlite bench ran past {timeout_s} s:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_a_short_run_prints_throughput_latencies_and_zero_errors(tmp_path):
    report = tmp_path / "bench.json"
    result = _bench("--nodes", "3", "--workers", "2", "--duration", "2", "--json", str(report))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[raftlite]" in out and "ops/s" in out                       # progress lines
    assert "throughput" in out and "latency ms   p50" in out and "p99" in out and "max" in out
    assert "errors       0" in out
    assert "cpu µs/op    leader" in out and "client" in out
    run = json.loads(report.read_text())["raftlite"][0]
    assert run["ops"] > 0 and run["errors"] == {}
    assert set(run["latency_ms"]) >= {"p50", "p90", "p99", "max"}
    assert run["cpu_us_per_op"]["leader"] > 0


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "expected a positive number, got 0"),
    (["--workload", "bank"], "invalid choice"),
    (["--duration", "1.5"], "expected a whole number"),
])
def test_user_mistakes_get_one_line_and_status_2(args, message):
    result = _bench(*args, timeout_s=30)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_dqlite_benchmark_result_files_are_read(tmp_path):
    (tmp_path / "0-exec-1700000000").write_text(
        "n 2\nn_err 1\navg [ms] 1.500000\nmax [ms] 2.000000\nmin [ms] 1.000000\n"
        "measurements [timestamp in ns] [ms]\n1700000000000000000 1.000000\n1700000000100000000 2.000000\n\n"
        "errors\n1700000000050000000 database is locked\n\n")
    (tmp_path / "1-exec-1700000000").write_text(
        "n 1\nn_err 0\navg [ms] 3.000000\nmax [ms] 3.000000\nmin [ms] 3.000000\n"
        "measurements [timestamp in ns] [ms]\n1700000000200000000 3.000000\n\nerrors\n\n")
    starts, latencies, errors = parse_dqlite_results(tmp_path)
    assert sorted(starts) == [1700000000000000000, 1700000000100000000, 1700000000200000000]
    assert sorted(latencies) == [0.001, 0.002, 0.003]
    assert errors == {"database is locked": 1}


def test_py_spy_stacks_are_summarized_without_idle_samples():
    collapsed = "\n".join([
        "main (main/io/node.py:1);select (selectors.py:10);EpollSelector.select (selectors.py:469) 50",
        "main (main/io/node.py:1);_run (main/actors/database.py:5);xWrite (main/actors/sqlite_capture.py:9) 30",
        "main (main/io/node.py:1);_run (main/actors/database.py:5) 10",
        "main (main/io/node.py:1);send (main/io/transport.py:7) 10",
    ])
    summary = summarize_profile(collapsed)
    assert summary.samples == 100 and summary.busy_percent == pytest.approx(50.0)
    assert summary.by_self[0] == ("xWrite (actors/sqlite_capture.py)", pytest.approx(60.0))
    assert ("_run (actors/database.py)", pytest.approx(80.0)) in summary.by_total
