"""`raftlite check`: JSON verdicts, exit status 0/1/3, one-line errors with status 2."""

import json
import random
import subprocess
import sys

import pytest

from raftlite.cli import main
from raftlite.jepsen_like.history import Event, build_history, write_edn_history
from raftlite.jepsen_like.models import generate_register_history

pytestmark = pytest.mark.timeout(60)


def run(capsys, *args):
    status = main(["check", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def write(path, events):
    path.write_text(write_edn_history(events), encoding="utf-8")
    return path


def test_valid_register_history_exits_0(tmp_path, capsys):
    events = generate_register_history(random.Random(3), operations=200, processes=4, keys=2, info_probability=0.05)
    status, out, err = run(capsys, "--model", "cas-register", write(tmp_path / "h.edn", events))
    assert status == 0, err
    verdict = json.loads(out)
    assert verdict["valid"] is True and verdict["anomalies"] == [] and verdict["keys"] == 2


def test_invalid_history_exits_1_with_anomaly_and_excerpt(tmp_path, capsys):
    rows = [(0, "invoke", "write", 1), (0, "ok", "write", 1), (0, "invoke", "write", 2), (0, "ok", "write", 2),
            (1, "invoke", "read", None), (1, "ok", "read", 1)]
    status, out, _ = run(capsys, "--model", "register", write(tmp_path / "h.edn", build_history(rows)))
    assert status == 1
    verdict = json.loads(out)
    assert verdict["valid"] is False
    assert verdict["anomalies"][0]["kind"] == "nonlinearizable"
    assert {"index": 5, "type": "ok", "process": 1, "f": "read", "value": 1} in verdict["excerpt"]


def test_log_line_histories_are_detected(tmp_path, capsys):
    path = tmp_path / "etcd.log"
    path.write_text("INFO  jepsen.util - 0\t:invoke\t:write\t1\nINFO  jepsen.util - 0\t:ok\t:write\t1\n"
                    "INFO  jepsen.util - 1\t:invoke\t:cas\t[1 2]\nINFO  jepsen.util - 1\t:fail\t:cas\t[1 2]\n")
    assert run(capsys, "--model", "cas-register", path)[0] == 0
    assert run(capsys, "--model", "etcd-register", path)[0] == 1


def test_time_limit_reached_exits_3(tmp_path, capsys):
    rng = random.Random(11)
    events = generate_register_history(rng, operations=3000, processes=10, values=10**9, with_cas=False,
                                       info_probability=0.05)
    # One read returns the value of a write invoked after the read completed: refuting
    # that needs an exhaustive search, far longer than the limit.
    reads = [event for event in events if event.type == "ok" and event.f == "read"]
    victim = reads[len(reads) // 3]
    future = next(event for event in events if event.type == "invoke" and event.f == "write"
                  and event.index > victim.index + 50)
    events = [Event(type="ok", f=event.f, value=future.value, process=event.process, index=event.index)
              if event is victim else event for event in events]
    status, out, _ = run(capsys, "--model", "register", "--time-limit", "0.3", write(tmp_path / "h.edn", events))
    assert status == 3
    assert json.loads(out)["valid"] == "unknown"


def test_list_append_bank_and_set_models(tmp_path, capsys):
    txn = [(0, "invoke", "txn", [["append", "x", 1]]), (0, "ok", "txn", [["append", "x", 1]]),
           (1, "invoke", "txn", [["r", "x", None]]), (1, "ok", "txn", [["r", "x", []]]),
           (2, "invoke", "txn", [["r", "x", None]]), (2, "ok", "txn", [["r", "x", [1]]])]
    path = write(tmp_path / "append.edn", build_history(txn))
    status, out, _ = run(capsys, "--model", "list-append", path)
    assert status == 1 and json.loads(out)["anomalies"][0]["kind"] == "G-single-realtime"
    assert run(capsys, "--model", "list-append", "--consistency", "serializable", path)[0] == 0

    bank = [(0, "invoke", "read", None), (0, "ok", "read", {0: 10, 1: 10}),
            (0, "invoke", "read", None), (0, "ok", "read", {0: 10, 1: 9})]
    path = write(tmp_path / "bank.edn", build_history(bank))
    assert run(capsys, "--model", "bank", path)[0] == 1
    assert run(capsys, "--model", "bank", "--total", "19", path)[0] == 1
    assert run(capsys, "--model", "bank", "--total", "20", path)[0] == 1

    adds = [(0, "invoke", "add", 1), (0, "ok", "add", 1), (0, "invoke", "read", None), (0, "ok", "read", [1])]
    assert run(capsys, "--model", "set", write(tmp_path / "set.edn", build_history(adds)))[0] == 0
    assert run(capsys, "--model", "set", write(tmp_path / "none.edn", build_history(adds[:2])))[0] == 3


@pytest.mark.parametrize("content, extra, message", [
    (None, [], "no such history file"),
    ("this is not a history\n", [], "neither an EDN op map nor a Jepsen log line"),
    ("{:type :invoke, :f :read", [], "not valid EDN"),
    ("{:type :invoke, :f :txn, :value [[:r :x nil]], :process 0}\n", [], "has no operation 'txn'"),
    ("{:type :invoke, :f :read, :value nil, :process 0}\n", ["--initial-value", "{:a"], "--initial-value must be"),
])
def test_user_mistakes_print_one_line_and_exit_2(tmp_path, capsys, content, extra, message):
    path = tmp_path / "history.edn"
    if content is not None:
        path.write_text(content)
    status, out, err = run(capsys, "--model", "cas-register", *extra, path)
    assert status == 2 and out == ""
    assert err.startswith("raftlite: error: ") and err.count("\n") == 1 and message in err, err


def test_help_names_the_exit_statuses_and_bad_flags_exit_2():
    result = subprocess.run([sys.executable, "-m", "raftlite", "check", "--help"], capture_output=True, text=True,
                            timeout=50)
    assert result.returncode == 0
    assert "3 unknown" in result.stdout and "list-append" in result.stdout
    result = subprocess.run([sys.executable, "-m", "raftlite", "check", "--model", "cas-register", "--time-limit", "-1",
                             "x.edn"], capture_output=True, text=True, timeout=50)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "expected a positive number of seconds" in result.stderr
