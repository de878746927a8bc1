"""`raftlite check` on histories as Elle and other tools write them: `[:r k nil]` for a
committed read of an empty list, ops without `:process` (accepted where no real-time
order is needed), output cut short by `| head`; and single error codes in messages."""

import json
import subprocess
import sys

import pytest

from raftlite.cli import main
from raftlite.client.errors import error_from_failure
from raftlite.client.connection import RequestFailed

pytestmark = pytest.mark.timeout(60)


def run(capsys, path, *args):
    status = main(["check", *map(str, args), str(path)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


ELLE_NIL = """\
{:type :invoke, :f :txn, :value [[:r :x nil]], :process 0}
{:type :ok, :f :txn, :value [[:r :x nil]], :process 0}
{:type :invoke, :f :txn, :value [[:append :x 1]], :process 1}
{:type :ok, :f :txn, :value [[:append :x 1]], :process 1}
{:type :invoke, :f :txn, :value [[:r :x nil]], :process 0}
{:type :ok, :f :txn, :value [[:r :x [1]]], :process 0}
"""


def test_a_nil_read_is_a_committed_read_of_an_empty_list(tmp_path, capsys):
    path = tmp_path / "nil.edn"
    path.write_text(ELLE_NIL)
    status, out, err = run(capsys, path, "--model", "list-append")
    assert status == 0, err
    assert json.loads(out)["valid"] is True
    # nil after a committed append is read as "empty": a stale read, caught in real time.
    path.write_text(ELLE_NIL.replace("[:r :x [1]]", "[:r :x nil]")
                    + "{:type :invoke, :f :txn, :value [[:r :x nil]], :process 2}\n"
                    + "{:type :ok, :f :txn, :value [[:r :x [1]]], :process 2}\n")
    status, out, _ = run(capsys, path, "--model", "list-append")
    assert status == 1 and json.loads(out)["anomalies"]


COMPLETIONS_ONLY = """\
{:type :ok, :f :txn, :value [[:append :x 1] [:r :y nil]]}
{:type :ok, :f :txn, :value [[:append :y 1] [:r :x nil]]}
{:type :ok, :f :txn, :value [[:r :x [1]] [:r :y [1]]]}
"""


def test_ops_without_process_are_judged_where_no_real_time_order_is_needed(tmp_path, capsys):
    path = tmp_path / "completions.edn"
    path.write_text(COMPLETIONS_ONLY)     # write skew: G2, found without any real-time order
    status, out, err = run(capsys, path, "--model", "list-append", "--consistency", "serializable")
    assert status == 1, err
    assert any(anomaly["kind"] == "G2" for anomaly in json.loads(out)["anomalies"])
    status, out, err = run(capsys, path, "--model", "list-append")
    assert status == 2 and out == "" and err.count("\n") == 1
    assert "3 op(s) have no :process" in err and "--consistency serializable" in err
    bank = tmp_path / "bank.edn"
    bank.write_text("{:type :ok, :f :read, :value {0 10, 1 10}}\n{:type :ok, :f :read, :value {0 5, 1 14}}\n")
    status, out, err = run(capsys, bank, "--model", "bank")
    assert status == 1 and json.loads(out)["anomalies"][0]["kind"] == "wrong-total", out
    status, _, err = run(capsys, bank, "--model", "cas-register")
    assert status == 2 and "which --model cas-register needs" in err
    invoke = tmp_path / "invoke.edn"
    invoke.write_text("{:type :invoke, :f :read, :value nil}\n")
    status, _, err = run(capsys, invoke, "--model", "bank")
    assert status == 2 and "an invocation needs :process" in err


def test_output_cut_short_by_head_ends_quietly(tmp_path):
    lines = []
    for number in range(400):
        lines.append(f"{{:type :ok, :f :read, :value {{0 {number}, 1 0}}}}")
    path = tmp_path / "long.edn"
    path.write_text("\n".join(lines) + "\n")
    result = subprocess.run(f"{sys.executable} -m raftlite check --model bank --total 0 {path} | head -c 50",
                            shell=True, capture_output=True, text=True, timeout=50)
    assert len(result.stdout) == 50
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


def test_error_codes_are_said_once_and_refusals_name_replication():
    assert str(RequestFailed(517, "database is locked")) == "database is locked (code 517)"
    refused = error_from_failure(23, "not authorized")
    assert str(refused).startswith("not authorized: the leader refuses statements that would break replication")
    assert refused.sqlite_errorname == "SQLITE_AUTH"
